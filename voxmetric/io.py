"""Read and write volumes (NRRD, NIfTI, MHA/MHD, DICOM series) and Slicer ``.seg.nrrd`` files.

Arrays come back ``(z, y, x)`` with LPS geometry (see :mod:`voxmetric.volume`). Every writer
goes through :func:`voxmetric.files.atomic_path` (a temporary file in the target folder, fsync,
rename; an existing file is replaced only with ``overwrite=True``; DESIGN.md rule 7).
Segmentation files are read and written with ``slicerio`` (segment names, label values,
colours, layers and SNOMED CT terminology as Slicer stores them).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import GeometryError, InputError, SegmentNotFoundError
from .files import atomic_path
from .volume import Volume, resample_to

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")

# -- segment descriptions ----------------------------------------------------------------------
_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMY = "SCT^123037004^Anatomical Structure"


def _term(code: str, meaning: str, modifier: str = "^^") -> str:
    """A Slicer TerminologyEntry string for an anatomical structure with SNOMED CT ``code``."""
    return f"{_CONTEXT}~{_ANATOMY}~SCT^{code}^{meaning}~{modifier}~Anatomic codes - DICOM master list~^^~^^"


# name (lower case) -> (terminology, colour 0..1). Femoral heads use the SNOMED CT "Femur" code
# with a laterality modifier, as TotalSegmentator does.
_KNOWN: dict[str, tuple[str, tuple[float, float, float]]] = {
    "prostate": (_term("41216001", "Prostate"), (0.847, 0.573, 0.498)),
    "bladder": (_term("89837001", "Urinary bladder"), (0.847, 0.733, 0.404)),
    "rectum": (_term("34402009", "Rectum"), (0.561, 0.376, 0.267)),
    "femoral head left": (_term("71341001", "Femur", "SCT^7771000^Left"), (0.945, 0.839, 0.569)),
    "femoral head right": (_term("71341001", "Femur", "SCT^24028007^Right"), (0.878, 0.769, 0.490)),
}
_ALIASES = {"urinary bladder": "bladder", "femur head left": "femoral head left",
            "femur head right": "femoral head right", "left femoral head": "femoral head left",
            "right femoral head": "femoral head right"}


@dataclass
class SegmentInfo:
    """One segment: ``name``, ``label_value`` in its layer, ``color`` RGB 0..1, Slicer
    ``terminology`` entry string (or None) and ``layer`` index."""

    name: str
    label_value: int
    color: tuple[float, float, float]
    terminology: str | None = None
    layer: int = 0


def segment_info(name: str, label_value: int, layer: int = 0) -> SegmentInfo:
    """SNOMED-coded :class:`SegmentInfo` for the known pelvic organs, a plain one otherwise."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in _KNOWN:
        term, color = _KNOWN[key]
        return SegmentInfo(name, int(label_value), color, term, layer)
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    color = tuple(float(v) for v in np.round(0.3 + 0.7 * rng.random(3), 3))
    return SegmentInfo(name, int(label_value), color, None, layer)  # type: ignore[arg-type]


PROSTATE: SegmentInfo = segment_info("Prostate", 1)


@dataclass
class Segmentation:
    """Segments stored as labelmaps: ``labelmap`` is layer 0 (z, y, x); ``extra_layers`` hold
    layers 1, 2, ... (Slicer stores overlapping segments in separate layers), same grid."""

    labelmap: Volume
    segments: list[SegmentInfo]
    extra_layers: list[Volume] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    def layer(self, index: int) -> Volume:
        """Labelmap of layer ``index`` (0 = :attr:`labelmap`)."""
        return self.labelmap if index == 0 else self.extra_layers[index - 1]

    def find(self, name: str) -> SegmentInfo:
        """The segment called ``name`` (case-insensitive); SegmentNotFoundError otherwise."""
        for s in self.segments:
            if s.name.strip().lower() == name.strip().lower():
                return s
        available = ", ".join(repr(n) for n in self.names) or "none"
        raise SegmentNotFoundError(
            f"No segment named {name!r}. Available segments: {available}. "
            "Pass one of these names (e.g. --segment NAME)."
        )

    def mask(self, name: str) -> Volume:
        """uint8 0/1 mask (z, y, x) of segment ``name`` (case-insensitive)."""
        return self.mask_of(self.find(name))

    def mask_of(self, info: SegmentInfo) -> Volume:
        """uint8 0/1 mask (z, y, x) of the segment described by ``info``."""
        lm = self.layer(info.layer)
        return lm.with_array((lm.array == info.label_value).astype(np.uint8))


# -- helpers ------------------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in (".seg.nrrd", ".nii.gz"):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def _check_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"File not found: {p}. Check the path and spelling.")
    if p.is_file() and p.stat().st_size == 0:
        raise InputError(f"The file {p} is empty (0 bytes); it was probably not fully written or copied.")
    return p


def _read_sitk(path: Path, series: str | int | None = None) -> sitk.Image:
    if series is not None and not path.is_dir():
        raise InputError(f"A series choice ({series!r}) applies to a DICOM folder; {path} is a file.")
    try:
        if path.is_dir():
            return _read_dicom_series(path, series)
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else ""
        raise InputError(
            f"Cannot read {path} as an image ({first}). Use a NRRD, NIfTI, MHA/MHD file or a "
            "DICOM series folder."
        ) from None
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() == 2 or (img.GetDimension() == 3 and min(img.GetSize()) < 2):
        raise InputError(
            f"{path} is a 2D image (size {img.GetSize()}). Load a 3D CT or MR volume with at "
            "least 2 slices, not a single slice (for DICOM, pass the folder holding the whole series)."
        )
    if img.GetDimension() != 3:
        raise InputError(f"{path} is a {img.GetDimension()}D image of size {img.GetSize()}; load one 3D volume.")
    return img


def _read_dicom_series(folder: Path, series: str | int | None = None) -> sitk.Image:
    """One DICOM series of ``folder`` (recursive): ``series`` (UID or 1-based index) or the one
    the rules of :mod:`voxmetric.dicom` choose (a SeriesChoiceWarning names it when the folder
    holds several); slices in position order."""
    from .dicom import read_series_image

    return read_series_image(folder, series)


class _ImageBuffer:
    """Keeps a SimpleITK image alive for the numpy array that views its voxel buffer, so a read
    costs one copy of the scan in memory, not two (the array is writable: the image is ours)."""

    def __init__(self, img: sitk.Image) -> None:
        self._img = img
        iface = dict(sitk.GetArrayViewFromImage(img).__array_interface__)
        iface["data"] = (iface["data"][0], False)
        self.__array_interface__ = iface


def _volume_from_sitk(img: sitk.Image, path: Path) -> Volume:
    try:
        if img.GetDimension() == 3 and img.GetNumberOfComponentsPerPixel() == 1:
            return Volume(np.asarray(_ImageBuffer(img)), np.array(img.GetSpacing()), np.array(img.GetOrigin()),
                          np.array(img.GetDirection()).reshape(3, 3))
        return Volume.from_sitk(img)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def _write_failure(text: str, path: Path) -> OSError:
    """The OSError a failed ITK write stands for (ITK keeps no errno): a full disk when it says
    so or the disk has (almost) no room left, a permission problem when it says so."""
    import errno
    import shutil

    try:
        full = shutil.disk_usage(path.parent).free < (1 << 20)
    except OSError:
        full = False
    code = (errno.ENOSPC if "no space" in text.lower() or full else
            errno.EACCES if "permission denied" in text.lower() else errno.EIO)
    last = text.strip().splitlines()[-1][:200] if text.strip() else "write failed"
    return OSError(code, os.strerror(code) if code != errno.EIO else last, str(path))


def _sitk_write(img: sitk.Image, path: Path) -> None:
    """SimpleITK's writer, with its failures as OSErrors. ITK's NIfTI writer reports a short
    write only on stderr, so a NIfTI file is read back before it counts as written."""
    try:
        sitk.WriteImage(img, str(path), useCompression=True)
    except RuntimeError as e:
        raise _write_failure(str(e), path) from e
    if path.name.lower().endswith((".nii", ".nii.gz")) and not _complete_nifti(path, img):
        raise _write_failure("the file was not written completely", path)


def _complete_nifti(path: Path, img: sitk.Image) -> bool:
    """True when the NIfTI file holds all of ``img``'s voxel bytes (after a 348-byte header);
    a .nii.gz is decompressed to its end (a truncated gzip stream is an error here, while ITK
    reads the missing part as zeros)."""
    import gzip
    import zlib

    need = 348 + int(np.prod(img.GetSize())) * img.GetNumberOfComponentsPerPixel() \
        * sitk.GetArrayViewFromImage(img).itemsize
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size >= need
    got = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                got += len(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    return got >= need


# -- volumes ------------------------------------------------------------------------------------
def read_volume(path: str | Path, series: str | int | None = None) -> Volume:
    """Read a 3D image (.nrrd/.nhdr, .nii/.nii.gz, .mha/.mhd, DICOM series folder) → Volume.

    A DICOM folder gives the series ``series`` (UID or 1-based index of
    :func:`voxmetric.dicom.list_series`) or, when None, the one its documented rules choose.
    A ``.seg.nrrd`` gives its layer-0 labelmap. Non-finite voxels are replaced by the smallest
    finite value. InputError for a missing, empty, unreadable, 2D, all-NaN or constant image.
    """
    p = _check_file(path)
    if _suffix(p) == ".seg.nrrd":
        return read_segmentation(p).labelmap
    vol = _volume_from_sitk(_read_sitk(p, series), p)
    a = vol.array
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.any():
            raise InputError(f"{p} holds no valid numbers (every voxel is NaN or infinite). Re-export the image.")
        if not finite.all():
            a = np.where(finite, a, a[finite].min()).astype(a.dtype)
            vol = vol.with_array(a)
    lo, hi = a.min(), a.max()
    if lo == hi:
        raise InputError(
            f"{p} is blank: every voxel has the value {lo}. Check that the right file or series was exported."
        )
    return vol


def write_volume(vol: Volume, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write ``vol`` to .nrrd / .nii / .nii.gz / .mha (compressed, atomic; an existing file is
    an OutputError unless ``overwrite``); returns the path."""
    p = Path(path).expanduser()
    suf = _suffix(p)
    if suf not in WRITE_SUFFIXES:
        raise InputError(f"Cannot write {p.name}: use one of {', '.join(WRITE_SUFFIXES)} (or write_segmentation for .seg.nrrd).")
    img = vol.to_sitk()
    with atomic_path(p, overwrite=overwrite, suffix=suf) as tmp:
        _sitk_write(img, tmp)
    return p


# -- segmentations ------------------------------------------------------------------------------
def _from_ijk(voxels: np.ndarray, ijk_to_lps: np.ndarray) -> Volume:
    """slicerio voxels (i, j, k) + 4×4 IJK→LPS → Volume (z, y, x)."""
    m = np.asarray(ijk_to_lps, float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    return Volume(np.ascontiguousarray(voxels.transpose(2, 1, 0)), spacing, m[:3, 3], m[:3, :3] / spacing)


def _is_slicer_segmentation(p: Path) -> bool:
    """True for a .seg.nrrd or a .nrrd whose header holds Slicer ``SegmentN_`` fields."""
    if _suffix(p) == ".seg.nrrd":
        return True
    if _suffix(p) != ".nrrd":
        return False
    import nrrd

    try:
        header = nrrd.read_header(str(p))
    except Exception:  # not a readable NRRD header: let the image reader report it
        return False
    return any(re.match(r"Segment\d+_", k) for k in header)


def _read_seg_nrrd(p: Path) -> Segmentation:
    """A Slicer segmentation (layers, segment metadata) via slicerio."""
    import slicerio

    try:
        seg = slicerio.read_segmentation(str(p))
    except Exception as e:  # slicerio/pynrrd raise IOError, NRRDError, ValueError ...
        raise InputError(f"Cannot read {p} as a segmentation ({str(e)[:200]}). Save it from Slicer as .seg.nrrd.") from None
    voxels = np.asarray(seg["voxels"])
    layers = [voxels] if voxels.ndim == 3 else list(voxels)
    vols = [_from_ijk(v, seg["ijkToLPS"]) for v in layers]
    reference = _reference_geometry(seg)
    if reference is not None:  # a cropped file (Slicer's default, ours too): back onto the reference grid
        vols = [_expand(v, reference) for v in vols]
    from slicerio.segmentation import terminology_entry_to_string

    infos = []
    for i, s in enumerate(seg.get("segments", [])):
        term = terminology_entry_to_string(s["terminology"]) if "terminology" in s else None
        color = tuple(float(c) for c in s.get("color", segment_info(s.get("name", ""), 1).color))
        infos.append(SegmentInfo(s.get("name", s.get("id", f"Segment {i + 1}")), int(s.get("labelValue", 1)),
                                 color, term, int(s.get("layer", 0))))  # type: ignore[arg-type]
    return Segmentation(vols[0], infos, vols[1:])


_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS <-> RAS
_GEOMETRY = "Reference image geometry"


def _geometry_string(grid: Volume) -> str:
    """Slicer's serialised image geometry of ``grid``: IJK→RAS 4×4 (row-major) and the extent."""
    m = _RAS @ np.asarray(grid.index_to_physical_matrix, float)
    extent = [v for n in grid.size_xyz for v in (0, int(n) - 1)]
    return "".join(f"{float(v):.17g};" for v in m.ravel()) + "".join(f"{v};" for v in extent)


def _reference_geometry(seg: dict) -> Volume | None:
    """The reference image grid a .seg.nrrd records ("Reference image geometry" conversion
    parameter, extent from 0), as an empty uint8 Volume; None when absent or unreadable."""
    params = {p.get("name"): p.get("value") for p in seg.get("conversionParameters", []) or []}
    text = params.get(_GEOMETRY)
    if not text:
        return None
    try:
        values = [float(v) for v in str(text).strip().strip(";").split(";")]
    except ValueError:
        return None
    if len(values) != 22 or values[16] != 0 or values[18] != 0 or values[20] != 0:
        return None
    m = _RAS @ np.array(values[:16]).reshape(4, 4)
    size = np.array(values[17:22:2], int) + 1  # x, y, z
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(size < 1) or np.any(spacing <= 0):
        return None
    try:
        return Volume(np.broadcast_to(np.uint8(0), tuple(size[::-1])), spacing, m[:3, 3], m[:3, :3] / spacing)
    except InputError:
        return None


def _expand(vol: Volume, reference: Volume) -> Volume:
    """``vol`` pasted into the ``reference`` grid when it is a whole-voxel sub-extent of it (same
    spacing and direction); ``vol`` unchanged otherwise."""
    if vol.same_grid(reference):
        return vol
    shift = reference.physical_to_index(vol.origin)  # x, y, z
    lo = np.round(shift).astype(int)
    if not (np.allclose(vol.spacing, reference.spacing, atol=1e-3) and np.allclose(vol.direction, reference.direction, atol=1e-3)
            and np.allclose(shift, lo, atol=1e-2) and np.all(lo >= 0) and np.all(lo + vol.size_xyz <= reference.size_xyz)):
        return vol
    out = np.zeros(reference.shape, vol.array.dtype)
    z, y, x = (slice(int(a), int(a) + n) for a, n in zip(lo[::-1], vol.shape))
    out[z, y, x] = vol.array
    return Volume(out, reference.spacing, reference.origin, reference.direction)


def _labelmap_segmentation(p: Path) -> Segmentation:
    """A plain integer labelmap file → segments "Label 1", "Label 2", ... (by label value)."""
    vol = _volume_from_sitk(_read_sitk(p), p)
    a = vol.array
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise InputError(f"{p} is not a labelmap: it holds non-integer values. Pass a label image or a .seg.nrrd.")
        vol = vol.with_array(a.astype(np.int32))
    values = [int(v) for v in np.unique(vol.array) if v != 0]
    return Segmentation(vol, [segment_info(f"Label {v}", v) for v in values])


def read_segmentation(path: str | Path) -> Segmentation:
    """Read a Slicer .seg.nrrd (names, label values, colours, layers, terminology) or a plain
    labelmap image (segments "Label <value>")."""
    p = _check_file(path)
    return _read_seg_nrrd(p) if p.is_file() and _is_slicer_segmentation(p) else _labelmap_segmentation(p)


def _on_reference(mask: Volume, reference: Volume) -> Volume:
    """Put ``mask`` on ``reference``'s grid when it is a sub-/super-extent of it (same spacing,
    direction, whole-voxel offset); GeometryError otherwise."""
    if mask.same_grid(reference):
        return mask
    shift = reference.physical_to_index(mask.origin)
    if (np.allclose(mask.spacing, reference.spacing, atol=1e-3)
            and np.allclose(mask.direction, reference.direction, atol=1e-3)
            and np.allclose(shift, np.round(shift), atol=1e-2)):
        out = resample_to(mask, reference, is_label=True)
        return out.with_array(out.array.astype(np.uint8))
    reference.check_same_grid(mask, "image and label")
    raise GeometryError("The image and label do not share a voxel grid.")  # pragma: no cover


def read_segment_mask(path: str | Path, segment: str | None = None, reference: Volume | None = None) -> Volume:
    """uint8 0/1 mask (z, y, x) of one segment (case-insensitive name; None = the only or the
    first non-empty segment), optionally put on ``reference``'s grid (see :func:`_on_reference`)."""
    seg = read_segmentation(path)
    if segment is None:
        if not seg.segments:
            raise SegmentNotFoundError(f"{path} holds no segments (the label is empty). Draw or export the label first.")
        masks = [seg.mask_of(s) for s in seg.segments]
        mask = next((m for m in masks if m.array.any()), masks[0])
    else:
        mask = seg.mask(segment)
    return mask if reference is None else _on_reference(mask, reference)


def read_label_map(path: str | Path, segments: Sequence[str] = (), reference: Volume | None = None
                   ) -> tuple[Volume, tuple[str, ...]]:
    """uint8 label map (z, y, x) of several segments: voxels of ``segments[k]`` get value k + 1
    (an earlier segment wins where segments overlap); returns it with the segment names as the
    file spells them. No ``segments``: the only / first non-empty segment, as
    :func:`read_segment_mask`. Optionally put on ``reference``'s grid."""
    seg = read_segmentation(path)
    if not segments:
        if not seg.segments:
            raise SegmentNotFoundError(f"{path} holds no segments (the label is empty). Draw or export the label first.")
        infos = [next((s for s in seg.segments if seg.mask_of(s).array.any()), seg.segments[0])]
    else:
        infos = [seg.find(name) for name in segments]
    labels = np.zeros(seg.labelmap.shape, np.uint8)
    for k, info in reversed(list(enumerate(infos))):  # the first listed is painted last: it wins
        labels[seg.mask_of(info).array > 0] = k + 1
    out = seg.labelmap.with_array(labels)
    return (out if reference is None else _on_reference(out, reference)), tuple(i.name for i in infos)


def write_segmentation(path: str | Path, labelmap: Volume | Sequence[Volume], segments: Sequence[SegmentInfo], *,
                       crop: bool = False, overwrite: bool = True) -> Path:
    """Write a Slicer .seg.nrrd (atomic; an existing file is an OutputError unless
    ``overwrite``). ``labelmap`` is one Volume (layer 0) or one per layer, all on one grid; each
    :class:`SegmentInfo` names a label value in its layer. ``crop=True`` stores only the labelled
    voxels' bounding box (at least one voxel), as Slicer itself saves segmentations: the file
    records the full grid as its reference image geometry and the box's offset in it
    (``Segmentation_ReferenceImageExtentOffset``), so Slicer and :func:`read_segmentation` put it
    back on that grid."""
    import slicerio
    from slicerio.segmentation import terminology_entry_from_string

    p = Path(path).expanduser()
    if not p.name.lower().endswith(".seg.nrrd"):
        raise InputError(f"A segmentation file name must end in .seg.nrrd, got {p.name}.")
    layers = [labelmap] if isinstance(labelmap, Volume) else list(labelmap)
    for lm in layers[1:]:
        layers[0].check_same_grid(lm, "segmentation layers")
    full = layers[0]
    offset = np.zeros(3, int)  # x, y, z
    if crop:
        nz = [np.flatnonzero(np.any([np.asarray(lm.array).any(axis=tuple(a for a in range(3) if a != axis))
                                     for lm in layers], axis=0)) for axis in range(3)]
        lo = np.array([a[0] if a.size else 0 for a in nz])  # z, y, x
        hi = np.array([a[-1] if a.size else 0 for a in nz])
        offset = lo[::-1].copy()
        cut = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))
        layers = [Volume(np.asarray(lm.array)[cut], lm.spacing, lm.index_to_physical(offset.astype(float)), lm.direction)
                  for lm in layers]
    for k, lm in enumerate(layers):
        if not np.issubdtype(lm.array.dtype, np.integer) and lm.array.dtype != bool:
            raise InputError(f"Labelmap layer {k} must hold integers, got {lm.array.dtype}.")
        known = {s.label_value for s in segments if s.layer == k}
        extra = sorted(set(int(v) for v in np.unique(lm.array)) - known - {0})
        if extra:
            raise InputError(f"Label values {extra} in layer {k} have no SegmentInfo; describe every label.")
    if any(s.layer >= len(layers) or s.layer < 0 for s in segments):
        raise InputError(f"A segment refers to a layer outside 0..{len(layers) - 1}.")
    top = max((int(lm.array.max()) for lm in layers), default=0)
    dtype = np.uint8 if top <= 255 else np.uint16
    vox = np.stack([lm.array.astype(dtype).transpose(2, 1, 0) for lm in layers])
    segs = []
    for i, s in enumerate(segments):
        d = {"id": f"Segment_{i + 1}", "name": s.name, "labelValue": int(s.label_value), "layer": int(s.layer),
             "color": [float(c) for c in s.color], "nameAutoGenerated": False, "colorAutoGenerated": False}
        if s.terminology:
            d["terminology"] = terminology_entry_from_string(s.terminology)
        segs.append(d)
    seg = {"voxels": vox[0] if len(layers) == 1 else vox, "ijkToLPS": layers[0].index_to_physical_matrix,
           "containedRepresentationNames": ["Binary labelmap"], "segments": segs}
    if crop:
        seg["referenceImageExtentOffset"] = [int(v) for v in offset]
        seg["conversionParameters"] = [{"name": _GEOMETRY, "value": _geometry_string(full),
                                        "description": "Image geometry description string determining the geometry "
                                                       "of the labelmap that is created in course of conversion."}]
    with atomic_path(p, overwrite=overwrite, suffix=".seg.nrrd") as tmp:
        slicerio.write_segmentation(str(tmp), seg, compression_level=6)
    return p


