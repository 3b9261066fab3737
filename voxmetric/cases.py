"""Cases and manifests: which image goes with which label, checked before any work starts.

A *case* is an image file plus a label file (a ``.seg.nrrd`` with a named segment, or a plain
labelmap). :func:`load_cases` finds cases in a folder or a ``manifest.json``;
:func:`validate_cases` checks every case from file headers, so that training fails at once with
a message naming the case, not an hour later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import io as vio
from .errors import GeometryError, InputError, SegmentNotFoundError, VoxMetricError
from .files import write_text
from .volume import Volume

MANIFEST_FORMAT = "voxmetric-cases/1"
IMAGE_SUFFIXES = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")
MODALITIES = ("ct", "mr")
_EXPECTED_NAMES = (
    "an image and its label per case, e.g. case001.nrrd + case001.seg.nrrd, or "
    "case001.nii.gz + case001_label.nii.gz (images: .nrrd .nhdr .nii .nii.gz .mha .mhd), "
    f"or a manifest.json ({{\"format\": \"{MANIFEST_FORMAT}\", \"cases\": [...]}})"
)


# ---- records and manifests ------------------------------------------------------------------
@dataclass
class CaseRecord:
    """One case: ``image`` file (or DICOM folder), ``label`` file (None = unlabelled),
    ``segment`` name(s) inside the label, comma-separated for several classes ("Prostate,Bladder";
    None = the only / first non-empty one), ``modality`` "ct" | "mr" (None = guess from the
    intensities)."""

    id: str
    image: Path
    label: Path | None = None
    segment: str | None = None
    modality: str | None = None

    @property
    def segments(self) -> tuple[str, ...]:
        """The segment names, in class order (class k + 1 = ``segments[k]``)."""
        return split_segments(self.segment)


def split_segments(text: str | None) -> tuple[str, ...]:
    """``"Prostate, Bladder"`` → ("Prostate", "Bladder"); None or "" → (). InputError on a
    name given twice."""
    names = tuple(p.strip() for p in (text or "").split(",") if p.strip())
    low = [n.casefold() for n in names]
    dup = sorted({n for n in names if low.count(n.casefold()) > 1})
    if dup:
        raise InputError(f"Segment {dup[0]!r} is listed twice in {text!r}; name each class once.")
    return names


def load_cases(source: str | Path, segment: str | None = None, *, require_labels: bool = True) -> list[CaseRecord]:
    """Cases from a folder (image + label pairs, or a ``manifest.json`` inside) or a manifest.

    ``segment`` (comma-separated names for several classes) is used for every case; it wins over
    the segment a manifest entry names (the user's explicit choice). Raises InputError when
    nothing is found (saying which file names are expected) or when labels are missing.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist. Pass a folder holding {_EXPECTED_NAMES}.")
    if path.is_file():
        return read_manifest(path, segment, require_labels=require_labels)
    if (path / "manifest.json").is_file():
        return read_manifest(path / "manifest.json", segment, require_labels=require_labels)
    return _scan_folder(path, segment, require_labels)


def _image_suffix(name: str) -> str | None:
    low = name.lower()
    return next((s for s in IMAGE_SUFFIXES if low.endswith(s)), None)


def _scan_folder(folder: Path, segment: str | None, require_labels: bool) -> list[CaseRecord]:
    images: dict[str, Path] = {}
    seg_labels: dict[str, Path] = {}
    plain_labels: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        if f.name.lower().endswith(".seg.nrrd"):
            seg_labels[f.name[: -len(".seg.nrrd")]] = f
            continue
        suffix = _image_suffix(f.name)
        if suffix is None:
            continue
        stem = f.name[: -len(suffix)]
        if stem.lower().endswith("_label"):
            plain_labels[stem[: -len("_label")]] = f
        elif stem in images:
            raise InputError(
                f"Two images for case '{stem}' in {folder}: {images[stem].name} and {f.name}. "
                "Keep one, or list the cases in a manifest.json."
            )
        else:
            images[stem] = f
    if not images:
        found = sorted(p.name for p in [*seg_labels.values(), *plain_labels.values()])
        extra = f" (found only label files: {', '.join(found[:5])})" if found else ""
        raise InputError(f"No cases found in {folder}{extra}. Expected {_EXPECTED_NAMES}.")
    labels = {**plain_labels, **seg_labels}  # a .seg.nrrd wins over X_label.*
    missing = [name for name in images if name not in labels]
    if require_labels and missing:
        shown = ", ".join(f"{m} ({images[m].name})" for m in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InputError(
            f"{len(missing)} case(s) in {folder} have no label: {shown}{more}. Add "
            f"'<case>.seg.nrrd' or '<case>_label<ext>' next to each image, or list the cases in a manifest.json."
        )
    return [CaseRecord(name, images[name], labels.get(name), segment, None) for name in sorted(images)]


def read_manifest(path: str | Path, segment: str | None = None, *, require_labels: bool = True) -> list[CaseRecord]:
    """Cases listed in a ``manifest.json`` (format ``voxmetric-cases/1``; paths relative to it)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"Cannot read the case manifest {path}: {e}. Expected JSON like {_manifest_example()}.") from e
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("cases"), list):
        raise InputError(f"{path} is not a VoxMetric case manifest. Expected {_manifest_example()}.")
    if not data["cases"]:
        raise InputError(f"No cases found in the manifest {path}: its \"cases\" list is empty.")
    root = path.parent
    records: list[CaseRecord] = []
    problems: list[str] = []
    for n, entry in enumerate(data["cases"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise InputError(f"Case #{n} in {path} has no \"image\" path. Expected {_manifest_example()}.")
        image = (root / entry["image"]).expanduser()
        label = (root / entry["label"]).expanduser() if isinstance(entry.get("label"), str) else None
        case_id = str(entry.get("id") or image.name[: -len(_image_suffix(image.name) or "")] or f"case{n:03d}")
        modality = entry.get("modality")
        if modality is not None and str(modality).lower() not in MODALITIES:
            raise InputError(f"Case '{case_id}' in {path}: modality {modality!r} is not one of {MODALITIES}.")
        seg = segment or entry.get("segment")
        records.append(CaseRecord(case_id, image, label, seg, modality and str(modality).lower()))
        if not image.exists():
            problems.append(f"{case_id}: image {image} does not exist")
        if label is None and require_labels:
            problems.append(f"{case_id}: no \"label\" given")
        elif label is not None and not label.exists():
            problems.append(f"{case_id}: label {label} does not exist")
    ids = [r.id for r in records]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"Case ids repeat in {path}: {', '.join(dup)}. Give each case a unique \"id\".")
    if problems:
        raise InputError(f"The manifest {path} lists files that cannot be used: " + "; ".join(problems[:10])
                         + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "") + ".")
    return records


def _manifest_example() -> str:
    return (f'{{"format": "{MANIFEST_FORMAT}", "cases": [{{"id": "case000", "image": "case000.nrrd", '
            '"label": "case000.seg.nrrd", "modality": "ct", "segment": "Prostate"}]}')


def write_manifest(records: Sequence[CaseRecord], path: str | Path, *, overwrite: bool = True) -> Path:
    """Write ``records`` as a ``manifest.json`` (atomic; an existing file is an OutputError unless
    ``overwrite``). Paths inside the manifest's folder are stored relative to it, others absolute."""
    path = Path(path)
    root = path.parent.resolve()

    def rel(p: Path) -> str:
        p = Path(p).resolve()
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)

    cases = []
    for r in records:
        entry: dict[str, str] = {"id": r.id, "image": rel(r.image)}
        if r.label is not None:
            entry["label"] = rel(r.label)
        if r.modality:
            entry["modality"] = r.modality
        if r.segment:
            entry["segment"] = r.segment
        cases.append(entry)
    text = json.dumps({"format": MANIFEST_FORMAT, "cases": cases}, indent=1) + "\n"
    return write_text(path, text, overwrite=overwrite)


# ---- eager validation from headers ----------------------------------------------------------
def _header_volume(path: Path) -> Volume | None:
    """A zero-memory Volume with the grid from ``path``'s header (None for a DICOM folder or a
    non-3D file, which :mod:`voxmetric.io` reports when it reads the voxels)."""
    if path.is_dir():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"Cannot read the header of {path}: {str(e).strip().splitlines()[-1]}") from e
    if reader.GetDimension() != 3:
        return None
    size = reader.GetSize()
    return Volume(np.broadcast_to(np.zeros((), np.uint8), size[::-1]), reader.GetSpacing(), reader.GetOrigin(),
                  np.array(reader.GetDirection()).reshape(3, 3))


def _seg_header(path: Path) -> tuple[list[dict], np.ndarray]:
    """(segments metadata, 4×4 ijk→LPS) of a ``.seg.nrrd`` without reading its voxels."""
    import slicerio

    try:
        h = slicerio.read_segmentation(str(path), skip_voxels=True)
    except Exception as e:  # slicerio raises assorted errors on broken headers
        raise InputError(f"Cannot read the segmentation header of {path}: {e}") from e
    return list(h.get("segments", [])), np.asarray(h["ijkToLPS"], dtype=float)


def _match_segment(names: Sequence[str], wanted: str) -> int | None:
    low = [n.lower() for n in names]
    return low.index(wanted.lower()) if wanted.lower() in low else None


def _check_record(r: CaseRecord, require_labels: bool) -> list[VoxMetricError]:
    if not Path(r.image).exists():
        return [InputError(f"case '{r.id}': the image {r.image} does not exist.")]
    if r.label is None:
        return [InputError(f"case '{r.id}' has no label file; add one or pass it in the manifest.")] if require_labels else []
    label = Path(r.label)
    if not label.exists():
        return [InputError(f"case '{r.id}': the label {label} does not exist.")]
    image = _header_volume(Path(r.image))
    is_seg = label.name.lower().endswith(".seg.nrrd")
    segments: list[dict] = []
    ijk = np.eye(4)
    if is_seg:
        segments, ijk = _seg_header(label)
    elif label.is_file() and label.name.lower().endswith(".nrrd"):  # a .nrrd may hold Slicer segments too
        try:
            segments, ijk = _seg_header(label)
        except InputError:
            pass  # not a segmentation: the image reader reports what is wrong
    if is_seg or segments:  # a Slicer segmentation
        names = [str(s.get("name", s.get("id", "?"))) for s in segments]
        shown = ", ".join(repr(n) for n in names) or "none"
        if not names:
            return [InputError(f"case '{r.id}': {label.name} holds no segments. Segment the case or remove it.")]
        if not r.segments and len(names) > 1:
            return [SegmentNotFoundError(
                f"case '{r.id}': no segment name given and {label.name} holds several segments: {shown}. "
                "Pass the segment(s) to train on (--segment NAME[,NAME...] or \"segment\" in the manifest).")]
        wanted = r.segments or (names[0],)
        found = [_match_segment(names, w) for w in wanted]
        missing = [w for w, i in zip(wanted, found) if i is None]
        if missing:
            return [SegmentNotFoundError(
                f"case '{r.id}': segment '{missing[0]}' is not in {label.name}; its segments are: {shown}. "
                "Pick one of these names or rename the segment in Slicer.")]
        extents = [segments[i].get("extent") for i in found if i is not None]
        if all(e is not None and len(e) == 6 and any(e[2 * k + 1] < e[2 * k] for k in range(3)) for e in extents):
            what = f"segment {wanted[0]!r} in {label.name} is" if len(wanted) == 1 else \
                f"segments {', '.join(repr(w) for w in wanted)} in {label.name} are"
            return [InputError(f"case '{r.id}': {what} empty. Draw the segment or remove the case.")]
        if image is not None:
            spacing = np.linalg.norm(ijk[:3, :3], axis=0)
            direction = ijk[:3, :3] / spacing
            offset = image.physical_to_index(ijk[:3, 3])  # label origin in image voxel units
            if not (np.allclose(spacing, image.spacing, rtol=1e-3, atol=1e-4)
                    and np.allclose(direction, image.direction, atol=1e-3)
                    and np.allclose(offset, np.round(offset), atol=1e-2)):
                return [GeometryError(
                    f"case '{r.id}': {label.name} is not on the image's voxel grid (label spacing "
                    f"{tuple(np.round(spacing, 4))} mm vs image {tuple(np.round(image.spacing, 4))} mm, or a rotated/"
                    "shifted grid). Export the segmentation with the image as reference geometry.")]
        return []
    lab = _header_volume(label)
    if image is not None and lab is not None:
        try:
            image.check_same_grid(lab, what=f"image and label of case '{r.id}'")
        except GeometryError as e:
            return [e]
    if r.segments:  # a plain labelmap names its segments "Label <value>": needs the voxels
        names = vio.read_segmentation(label).names
        missing = [w for w in r.segments if _match_segment(names, w) is None]
        if missing:
            shown = ", ".join(repr(n) for n in names) or "none (the label is empty)"
            return [SegmentNotFoundError(
                f"case '{r.id}': segment '{missing[0]}' is not in {label.name}; its segments are: {shown}. "
                "A plain labelmap's segments are named 'Label <value>'; pass one of these names.")]
    return []


def load_unlabeled(source: str | Path) -> list[CaseRecord]:
    """Images without labels (semi-supervised training) from a folder of images or a manifest;
    label files found beside them are ignored. Ids get a ``u-`` prefix so that they never clash
    with the labelled cases'. InputError when there are none."""
    from dataclasses import replace

    records = load_cases(source, require_labels=False)
    return [replace(r, id=f"u-{r.id}", label=None, segment=None) for r in records]


def validate_unlabeled(records: Sequence[CaseRecord], labelled: Sequence[CaseRecord] = ()) -> None:
    """Check unlabeled images before training, from their headers: each exists and is a readable
    3D image (a DICOM folder is read later), and no image is also a labelled case. One
    InputError lists every problem. (That they share the labelled cases' modality is checked
    when they are prepared, :func:`voxmetric.training.train`.)"""
    problems: list[str] = []
    seen = {Path(r.image).resolve() for r in labelled}
    for r in records:
        path = Path(r.image)
        if not path.exists():
            problems.append(f"{r.id}: {path} does not exist")
            continue
        if path.resolve() in seen:
            problems.append(f"{r.id}: {path.name} is also a labelled case")
            continue
        if path.is_dir():
            continue
        try:
            if _header_volume(path) is None:
                problems.append(f"{r.id}: {path.name} is not a 3D image")
        except InputError as e:
            problems.append(f"{r.id}: {e}")
    if problems:
        raise InputError(f"{len(problems)} unlabeled image(s) cannot be used: " + " | ".join(problems[:10])
                         + (f" | and {len(problems) - 10} more" if len(problems) > 10 else "")
                         + ". Remove them from the unlabeled folder or manifest.")


def validate_cases(records: Sequence[CaseRecord], *, require_labels: bool = True) -> None:
    """Check every case from file headers (no voxel data) so training fails before it starts:
    files exist, the segment is present (SegmentNotFoundError naming the case and listing its
    segments), the segment is not empty (when the header records its extent), and image and
    label share a voxel grid (GeometryError). All problems are reported in one error whose type
    is that of the first problem."""
    if not records:
        raise InputError(f"No cases given. Expected {_EXPECTED_NAMES}.")
    problems: list[VoxMetricError] = []
    for r in records:
        try:
            problems += _check_record(r, require_labels)
        except VoxMetricError as e:  # an unreadable header
            problems.append(type(e)(f"case '{r.id}': {e}"))
    if problems:
        lines = [str(p) for p in problems]
        more = f" | and {len(lines) - 10} more" if len(lines) > 10 else ""
        head = lines[0] if len(lines) == 1 else f"{len(lines)} cases cannot be used: " + " | ".join(lines[:10]) + more
        raise type(problems[0])(head[0].upper() + head[1:])
