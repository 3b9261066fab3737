"""DICOM in and out: list the image series of a study folder, choose one by documented rules,
read it, and write a segmentation as DICOM SEG or as an RT Structure Set.

**Series choice** (:func:`select_series`; README "DICOM"). A folder (searched recursively) may
hold several series. An explicit choice (series UID, or 1-based index in :func:`list_series`'s
order) is always honoured. Otherwise: a folder with one image series uses it; with several, the
candidates are series that (1) are CT or MR, (2) have complete geometry (≥ 2 slices, one image
per slice position, one orientation, one size, uniform slice spacing with no missing slices),
(3) are not a localizer / scout / survey and (4) are not derived (ADC, FA, MIP, MPR,
subtraction...). Candidates are ranked by: axial first (slice normal within 30° of
superior-inferior), then for MR a T2 series (its description says T2), then most slices. When
the best two rank equal (e.g. two axial T2 series with the same slice count) there is no
winner: :class:`SeriesChoiceError` asks for an explicit choice and lists the series. DICOM SEG,
RT Structure Sets, dose, reports and other non-image objects in the folder are ignored.

**Output.** :func:`write_dicom_seg` writes a binary DICOM Segmentation with highdicom (every
segment with its SNOMED CT category/type from the segment's Slicer terminology, recommended
colour, source series and frames referenced). :func:`write_rtstruct` writes an RT Structure Set
with **pydicom** (one ROI per segment with name, colour and SNOMED CT identification code;
closed planar contours on every source slice holding the segment, each referencing that
slice's SOP instance). Why pydicom and not rt-utils: highdicom has no RT Structure Set class;
rt-utils pulls in OpenCV (tens of MB), had its last release in 2023, and traces contours
through the centres of boundary pixels, so a reader that fills the polygon loses half of every
boundary pixel and handles holes poorly. Here the contours are the 0.5 iso-lines of the mask
(marching squares, ``contourpy``): filling them with the even-odd rule (holes are separate
contours) gives back exactly the voxels whose centres are inside the mask. Both writers need
the ``dicom`` extra (``pip install "voxmetric[dicom]"``); reading series needs only SimpleITK.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import io
from .errors import GeometryError, InputError, VoxMetricError
from .files import atomic_path
from .volume import Volume


class SeriesChoiceError(InputError):
    """A DICOM folder holds several series and none wins by the rules, or the chosen one is unknown."""


class SeriesChoiceWarning(UserWarning):
    """Which series of a several-series DICOM folder was read (and why)."""


# -- listing ------------------------------------------------------------------------------------
_NON_IMAGE = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "PR", "SR", "KO", "REG", "DOC",
              "RWV", "FID", "PLAN", "AU", "ECG"}
_LOCALIZER = re.compile(r"locali[sz]er|scout|survey|topogram|scanogram|surview|pilot|(?<![a-z])loc(?![a-z])|"
                        r"3[ -]?plane|tri[ -]?plane", re.I)
_DERIVED = re.compile(r"(?<![a-z])(adc|fa|tracew|trace|mip|mpr|sub|subtraction|calc|colfa|dadc|exp)(?![a-z])|"
                      r"apparent diffusion|reformat", re.I)
_T2 = re.compile(r"(?<![a-z0-9])t2(?![*a-z0-9])|t2w", re.I)
_TAGS = {"sop_class": "0008|0016", "sop_uid": "0008|0018", "image_type": "0008|0008", "modality": "0008|0060",
         "description": "0008|103e", "protocol": "0018|1030", "study_uid": "0020|000d", "uid": "0020|000e",
         "number": "0020|0011", "for_uid": "0020|0052", "position": "0020|0032", "orientation": "0020|0037",
         "pixel_spacing": "0028|0030", "rows": "0028|0010", "cols": "0028|0011", "frames": "0028|0008",
         "thickness": "0018|0050"}


@dataclass(frozen=True)
class SeriesInfo:
    """One image series of a folder. ``index`` is 1-based in :func:`list_series` order;
    ``files`` / ``sop_uids`` are ordered by slice position along the slice normal (= the
    volume's z); ``size`` (x, y, z) voxels, ``spacing`` (x, y, z) mm, ``origin`` LPS mm of the
    first voxel, ``direction`` 3×3 columns = x, y, z axes in LPS (None when ``problem``).
    ``problem`` says why the series cannot be read as one volume (None = it can)."""

    index: int
    uid: str
    description: str
    modality: str
    number: int | None
    study_uid: str
    frame_of_reference_uid: str
    image_type: str
    files: tuple[Path, ...]
    sop_uids: tuple[str, ...]
    sop_class_uid: str
    size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    origin: tuple[float, float, float] | None
    direction: np.ndarray | None
    orientation: str
    localizer: bool
    derived: bool
    problem: str | None

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def t2(self) -> bool:
        return bool(_T2.search(self.description))

    def grid(self) -> Volume:
        """A zero-memory Volume with this series' grid (InputError when it has a problem)."""
        if self.problem is not None or self.spacing is None:
            raise InputError(f"Series #{self.index} ({self.label}) cannot be read as one volume: {self.problem}.")
        return Volume(np.broadcast_to(np.zeros((), np.uint8), self.size[::-1]), np.asarray(self.spacing),
                      np.asarray(self.origin), np.asarray(self.direction))

    @property
    def label(self) -> str:
        return f"{self.modality} '{self.description or 'no description'}'"

    def summary(self) -> str:
        """One line: index, modality, description, size, spacing, orientation, UID."""
        sp = "×".join(f"{v:.3g}" for v in self.spacing) + " mm" if self.spacing else "?"
        return (f"#{self.index} {self.label}, {self.size[0]}×{self.size[1]}×{self.size[2]} voxels, {sp}, "
                f"{self.orientation}, series UID {self.uid}")


@dataclass(frozen=True)
class SeriesChoice:
    """The series to read, why (``reason``), and all series of the folder (``all``)."""

    series: SeriesInfo
    reason: str
    all: tuple[SeriesInfo, ...]
    automatic: bool


def _is_dicom(path: Path) -> bool:
    """DICM magic at byte 128, or a .dcm/.ima name (old files without preamble)."""
    if path.suffix.lower() in (".dcm", ".ima", ".dicom"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _headers(folder: Path) -> list[dict[str, str]]:
    """Header fields (:data:`_TAGS`) of every DICOM image file under ``folder`` (recursive)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    out = []
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if not _is_dicom(f):
                continue
            reader.SetFileName(str(f))
            try:
                reader.ReadImageInformation()
            except RuntimeError:  # no pixel data (RT Structure Set, SR, ...) or not DICOM
                continue
            h = {k: reader.GetMetaData(t).strip() if reader.HasMetaDataKey(t) else "" for k, t in _TAGS.items()}
            if h["modality"].upper() in _NON_IMAGE or not h["uid"] or not h["rows"]:
                continue
            h["file"] = str(f)
            out.append(h)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    return out


def _floats(text: str, n: int) -> np.ndarray | None:
    try:
        v = np.array([float(x) for x in text.split("\\")], float)
    except ValueError:
        return None
    return v if v.shape == (n,) and np.all(np.isfinite(v)) else None


def _summarise(index: int, uid: str, hs: list[dict[str, str]]) -> SeriesInfo:
    """Geometry, flags and problem of one series from its files' headers."""
    first = hs[0]
    image_type = first["image_type"].upper()
    text = f"{first['description']} {first['protocol']}"
    n = len(hs)
    orients: list[np.ndarray] = []  # distinct orientations (1e-3 tolerance)
    for v in (_floats(h["orientation"], 6) for h in hs):
        if v is not None and not any(np.allclose(v, u, atol=1e-3) for u in orients):
            orients.append(v)
    positions = [_floats(h["position"], 3) for h in hs]
    sizes = {(h["rows"], h["cols"]) for h in hs}
    problem, orientation = None, "?"
    geometry: dict[str, object] = {"spacing": None, "origin": None, "direction": None}
    order = list(range(n))
    n_pos = n
    if len(orients) > 1:
        problem, orientation = f"images in {len(orients)} different orientations", "mixed"
    elif not orients or any(p is None for p in positions):
        problem = "image position or orientation missing from the headers"
    elif len(sizes) > 1:
        problem = f"images of {len(sizes)} different sizes"
    elif any(h["frames"] not in ("", "1") for h in hs):
        problem = "multi-frame (enhanced) images: export the series as single-frame images"
    row, col, normal = np.eye(3)
    o = _floats(first["orientation"], 6)
    if orients and o is not None:
        row, col = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
        normal = np.cross(row, col)
        if orientation != "mixed":
            axis = int(np.argmax(np.abs(normal)))
            orientation = ("sagittal", "coronal", "axial")[axis] if abs(normal[axis]) >= np.cos(np.radians(30)) \
                else "oblique"
    if problem is None:
        pos = np.array(positions, float)
        d = pos @ normal
        order = list(np.argsort(d, kind="stable"))
        d = d[order]
        n_pos = int(np.sum(np.diff(d) > 0.01)) + 1
        ps = _floats(hs[0]["pixel_spacing"], 2)
        if ps is None or np.any(ps <= 0):
            problem = "pixel spacing missing from the headers"
        elif n_pos < n:
            problem = (f"{n} images at {n_pos} slice positions: several images per position (a 4D series, "
                       "e.g. diffusion b-values or time points)")
        elif n < 2:
            problem = "a single slice, not a volume"
        else:
            steps = np.diff(d)
            step = float(np.median(steps))
            tol = max(0.01, 0.01 * step)
            lateral = pos[order] - pos[order][0] - np.outer(d - d[0], normal)
            gaps = np.flatnonzero(steps > 1.5 * step)
            if gaps.size:
                k = int(gaps[0])
                missing = int(round((d[-1] - d[0]) / step)) + 1 - n
                problem = (f"missing slices: a gap of {steps[k]:.2f} mm between slice positions {d[k]:.2f} and "
                           f"{d[k + 1]:.2f} mm where the spacing is {step:.2f} mm (about {missing} of "
                           f"{n + missing} slices absent)")
            elif np.any(np.abs(steps - step) > tol):
                problem = f"non-uniform slice spacing ({steps.min():.3f} to {steps.max():.3f} mm)"
            elif np.max(np.linalg.norm(lateral, axis=1)) > max(0.05, 0.05 * step):
                problem = "slices are shifted sideways along the series (gantry tilt); resample it first"
            else:
                geometry = {"spacing": (float(ps[1]), float(ps[0]), step),
                            "origin": tuple(float(v) for v in pos[order][0]),
                            "direction": np.column_stack([row, col, normal])}
    rows, cols = (int(v or 0) for v in next(iter(sizes)))
    try:
        number = int(float(first["number"])) if first["number"] else None
    except ValueError:
        number = None
    return SeriesInfo(
        index=index, uid=uid, description=first["description"], modality=first["modality"].upper() or "?",
        number=number, study_uid=first["study_uid"], frame_of_reference_uid=first["for_uid"],
        image_type=image_type, files=tuple(Path(hs[i]["file"]) for i in order),
        sop_uids=tuple(hs[i]["sop_uid"] for i in order), sop_class_uid=first["sop_class"],
        size=(cols, rows, n_pos), orientation=orientation, problem=problem,
        localizer="LOCALIZER" in image_type or orientation == "mixed" or bool(_LOCALIZER.search(text)),
        derived=image_type.startswith("DERIVED") or bool(_DERIVED.search(text)),
        **geometry)  # type: ignore[arg-type]


def list_series(folder: str | Path) -> list[SeriesInfo]:
    """Every DICOM image series under ``folder`` (recursive), ordered by study, series number,
    description and UID; ``index`` 1, 2, ... in that order. InputError when there is none."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise InputError(f"{p} is not a folder. Give the folder that holds the DICOM files.")
    groups: dict[str, list[dict[str, str]]] = {}
    for h in _headers(p):
        groups.setdefault(h["uid"], []).append(h)
    if not groups:
        raise InputError(f"No DICOM series found in the folder {p}. Pick a folder of .dcm slices or an image file.")

    def key(uid: str) -> tuple:
        h = groups[uid][0]
        num = h["number"].split(".")[0]
        return (h["study_uid"], int(num) if num.lstrip("-").isdigit() else 1 << 30, h["description"], uid)

    return [_summarise(i + 1, uid, groups[uid]) for i, uid in enumerate(sorted(groups, key=key))]


def format_series(series: Sequence[SeriesInfo], chosen: SeriesInfo | None = None) -> str:
    """A text table of ``series`` (one line each; the chosen one marked with ``*``)."""
    rows = [("#", "MOD", "DESCRIPTION", "SLICES", "SIZE", "SPACING (mm)", "ORIENT", "NOTE", "SERIES UID")]
    for s in series:
        notes = [n for n, on in (("localizer", s.localizer), ("derived", s.derived)) if on]
        if s.problem:
            notes.append(s.problem.split(":")[0].split(" (")[0])
        sp = "×".join(f"{v:.3g}" for v in s.spacing) if s.spacing else "-"
        mark = "*" if chosen is not None and s.uid == chosen.uid else " "
        rows.append((f"{mark}{s.index}", s.modality, s.description or "-", str(len(s.files)),
                     f"{s.size[0]}×{s.size[1]}×{s.size[2]}", sp, s.orientation, ", ".join(notes) or "-", s.uid))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


RULES = "CT or MR, complete geometry, no localizer/scout, not derived (ADC, MIP...); then axial, T2 (MR), most slices"


def _rank(s: SeriesInfo) -> tuple[bool, bool, int]:
    return (s.orientation == "axial", s.modality == "MR" and s.t2, s.size[2])


def select_series(source: str | Path | Sequence[SeriesInfo], series: str | int | None = None) -> SeriesChoice:
    """The series to read from a folder (or a :func:`list_series` result): ``series`` = a
    series UID or a 1-based index, else by the rules in the module docstring.
    SeriesChoiceError when the choice is unknown or no series wins; InputError when the chosen
    series cannot be read as one volume (its problem, e.g. missing slices, is named)."""
    all_ = tuple(list_series(source) if isinstance(source, (str, Path)) else source)
    where = f" in {source}" if isinstance(source, (str, Path)) else ""
    table = format_series(all_)
    if series is not None and str(series).strip():
        key = str(series).strip()
        hit = [s for s in all_ if (key.isdigit() and s.index == int(key)) or s.uid == key]
        if not hit:
            raise SeriesChoiceError(f"No series {key!r}{where}: give a series UID or an index 1..{len(all_)} "
                                    f"from this list:\n{table}")
        chosen, reason, automatic = hit[0], f"chosen by --series {key}", False
    elif len(all_) == 1:
        chosen, reason, automatic = all_[0], "the only image series in the folder", True
    else:
        ok = [s for s in all_ if s.usable and s.modality in ("CT", "MR") and not s.localizer and not s.derived]
        if not ok:
            raise SeriesChoiceError(f"None of the {len(all_)} DICOM series{where} qualifies by the rules ({RULES}). "
                                    f"Pass --series UID|INDEX to choose one:\n{table}")
        ok.sort(key=_rank, reverse=True)
        if len(ok) > 1 and _rank(ok[0]) == _rank(ok[1]):
            tied = [s for s in ok if _rank(s) == _rank(ok[0])]
            raise SeriesChoiceError(
                f"{len(tied)} DICOM series{where} are equally good by the rules ({RULES}): "
                + ", ".join(f"#{s.index} {s.label}" for s in tied)
                + f". Pass --series UID|INDEX to choose one:\n{table}")
        chosen, automatic = ok[0], True
        reason = f"chosen from {len(all_)} series by the rules: {RULES}"
    if not chosen.usable:
        other = f", or choose another with --series UID|INDEX:\n{table}" if len(all_) > 1 else "."
        raise InputError(f"DICOM series #{chosen.index} ({chosen.label}){where} cannot be read as one volume: "
                         f"{chosen.problem}. Re-export the complete series{other}")
    return SeriesChoice(chosen, reason, all_, automatic)


def series_image(info: SeriesInfo) -> sitk.Image:
    """Read ``info``'s voxels (slices in position order) as a 3D SimpleITK image."""
    if not info.usable:
        raise InputError(f"Series #{info.index} ({info.label}) cannot be read as one volume: {info.problem}.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in info.files])
    return reader.Execute()


def read_series_image(folder: str | Path, series: str | int | None = None) -> sitk.Image:
    """:func:`select_series` + :func:`series_image`; a :class:`SeriesChoiceWarning` names the
    series when the folder holds several and the choice was automatic."""
    choice = select_series(folder, series)
    if choice.automatic and len(choice.all) > 1:
        warnings.warn(f"{folder}: read DICOM series {choice.series.summary()} ({choice.reason}). "
                      "Pass --series UID|INDEX to read another.", SeriesChoiceWarning, stacklevel=3)
    return series_image(choice.series)


def match_series(seg_grid: Volume, folder: str | Path, series: str | int | None = None) -> SeriesChoice:
    """The series of ``folder`` a segmentation on ``seg_grid`` was made from: ``series`` when
    given, else the one usable series whose grid holds ``seg_grid`` (same spacing and direction,
    whole-voxel offset); when several do, the rules of :func:`select_series` decide among them."""
    if series is not None:
        return select_series(folder, series)
    all_ = list_series(folder)
    fits = [s for s in all_ if s.usable and _offset(seg_grid, s.grid()) is not None]
    broken = [s for s in all_ if not s.usable]
    if not fits and len(broken) == len(all_):
        s = broken[0]
        raise InputError(f"DICOM series #{s.index} ({s.label}) in {folder} cannot be read as one volume: {s.problem}. "
                         "Re-export the complete series.")
    if not fits:
        raise GeometryError(
            f"The segmentation's grid (size {tuple(int(v) for v in seg_grid.size_xyz)}, spacing "
            f"{tuple(round(float(v), 4) for v in seg_grid.spacing)} mm, origin "
            f"{tuple(round(float(v), 2) for v in seg_grid.origin)} mm) matches none of the DICOM series in {folder}. "
            f"Export with the series the segmentation was made from (resample it onto that series first):\n"
            + format_series(all_))
    if len(fits) == 1:
        return SeriesChoice(fits[0], "the series whose grid the segmentation is on", tuple(all_), True)
    choice = select_series(fits)
    return SeriesChoice(choice.series, "the series on the segmentation's grid; " + choice.reason, tuple(all_), True)


# -- masks on the series grid -------------------------------------------------------------------
def _offset(mask: Volume, grid: Volume) -> np.ndarray | None:
    """Whole-voxel (x, y, z) offset of ``mask``'s first voxel in ``grid``, or None when the
    grids differ in spacing or direction or are not voxel-aligned."""
    if not (np.allclose(mask.spacing, grid.spacing, atol=1e-3, rtol=1e-4)
            and np.allclose(mask.direction, grid.direction, atol=1e-3)):
        return None
    shift = grid.physical_to_index(mask.origin)
    if not np.allclose(shift, np.round(shift), atol=1e-2):
        return None
    return np.round(shift).astype(int)


def on_series_grid(mask: Volume, series: SeriesInfo, what: str = "segmentation") -> np.ndarray:
    """``mask`` (z, y, x) as a boolean array on ``series``' grid. The mask may be a sub- or
    super-extent of the grid (Slicer crops segmentations), voxels outside it must be empty;
    GeometryError for any other grid."""
    grid = series.grid()
    off = _offset(mask, grid)
    if off is None:
        r = lambda v, n: tuple(round(float(x), n) for x in v)  # noqa: E731
        raise GeometryError(
            f"The {what} is on another grid than DICOM series #{series.index} ({series.label}): spacing "
            f"{r(mask.spacing, 4)} vs {r(grid.spacing, 4)} mm, origin {r(mask.origin, 2)} vs {r(grid.origin, 2)} mm, "
            f"direction {r(mask.direction.ravel(), 3)} vs {r(grid.direction.ravel(), 3)}. "
            "Export the segmentation made from this series (or resample it onto the series first).")
    out = np.zeros(grid.shape, bool)
    a = np.asarray(mask.array) != 0
    lo, hi = off[::-1], off[::-1] + np.array(a.shape)  # z, y, x
    dst = tuple(slice(max(int(b), 0), min(int(e), n)) for b, e, n in zip(lo, hi, grid.shape))
    src = tuple(slice(d.start - int(b), d.stop - int(b)) for d, b in zip(dst, lo))
    if all(d.stop > d.start for d in dst):
        out[dst] = a[src]
    if int(out.sum()) != int(a.sum()):
        raise GeometryError(f"The {what} reaches outside DICOM series #{series.index} ({series.label}): "
                            f"{int(a.sum()) - int(out.sum())} voxels lie beyond the series' slices or image edges.")
    return out


def segment_masks(seg: io.Segmentation, series: SeriesInfo, allow_empty: bool = False
                  ) -> list[tuple[io.SegmentInfo, np.ndarray]]:
    """(segment, boolean mask (z, y, x) on the series grid) for every segment of ``seg``.
    VoxMetricError when ``seg`` has no segments, or (unless ``allow_empty``) an empty one."""
    if not seg.segments:
        raise InputError("The segmentation holds no segments; there is nothing to export.")
    out = [(s, on_series_grid(seg.mask_of(s), series, f"segment '{s.name}'")) for s in seg.segments]
    empty = [s.name for s, m in out if not m.any()]
    if empty and not allow_empty:
        raise InputError(f"Segment(s) {', '.join(repr(n) for n in empty)} are empty: nothing to write for them. "
                         "Remove them, or pass --allow-empty to write empty segments/ROIs anyway.")
    return out


# -- writers ------------------------------------------------------------------------------------
def need_dicom_extra() -> None:
    """VoxMetricError naming the ``dicom`` extra when highdicom, pydicom or contourpy is missing."""
    try:
        import contourpy  # noqa: F401
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as e:
        raise VoxMetricError(f"Writing DICOM needs the 'dicom' extra ({e.name} is missing): "
                             'pip install "voxmetric[dicom]" (highdicom, pydicom, contourpy).') from None


def _check_target(path: str | Path, overwrite: bool) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a folder; give a file name for the DICOM output, e.g. {p / 'seg.dcm'}.")
    if p.exists() and not overwrite:
        raise InputError(f"{p} already exists; choose another name or pass --overwrite to replace it.")
    return p


def check_targets(paths: Sequence[str | Path | None], overwrite: bool) -> None:
    """Fail early (before any work) when an output exists and ``overwrite`` is False."""
    for p in paths:
        if p is not None:
            _check_target(p, overwrite)


def _codes(info: io.SegmentInfo) -> dict[str, tuple[str, str, str] | None]:
    """SNOMED (scheme, value, meaning) of category / type / modifier / region from the segment's
    Slicer terminology; no terminology → category and type "Tissue" (as Slicer does)."""
    tissue = ("SCT", "85756007", "Tissue")
    out: dict[str, tuple[str, str, str] | None] = {"category": tissue, "type": tissue, "modifier": None,
                                                   "region": None}
    if info.terminology:
        from slicerio.segmentation import terminology_entry_from_string

        entry = terminology_entry_from_string(info.terminology)
        for key, field in (("category", "category"), ("type", "type"), ("modifier", "typeModifier"),
                           ("region", "anatomicRegion")):
            code = entry.get(field)
            if code and len(code) == 3 and code[1]:
                out[key] = (str(code[0]), str(code[1]), str(code[2]))
    return out


def _read_sources(series: SeriesInfo) -> list:
    import pydicom

    return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in series.files]


_ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")


def _checked_output(seg: io.Segmentation, series: SeriesInfo, path: str | Path, overwrite: bool, algorithm_type: str,
                    allow_empty: bool) -> tuple[Path, str, list[tuple[io.SegmentInfo, np.ndarray]]]:
    """(output path, algorithm type in capitals, :func:`segment_masks`) of a DICOM writer, every
    check done before anything is written."""
    p = _check_target(path, overwrite)
    kind = algorithm_type.upper()
    if kind not in _ALGORITHM_TYPES:
        raise InputError(f"algorithm type must be one of {', '.join(_ALGORITHM_TYPES)}, got {algorithm_type!r}.")
    return p, kind, segment_masks(seg, series, allow_empty)


def write_dicom_seg(seg: io.Segmentation, series: SeriesInfo, path: str | Path, *, allow_empty: bool = False,
                    overwrite: bool = False, algorithm_type: str = "AUTOMATIC") -> Path:
    """Write ``seg`` (any number of segments, on ``series``' grid) as a binary DICOM SEG
    referencing ``series`` (atomic; never replaces ``path`` unless ``overwrite``)."""
    need_dicom_extra()
    import highdicom as hd
    from pydicom.sr.coding import Code

    from . import __version__

    p, kind, masks = _checked_output(seg, series, path, overwrite, algorithm_type, allow_empty)
    algo = hd.AlgorithmIdentificationSequence("VoxMetric", Code("123110", "DCM", "Artificial Intelligence"),
                                              __version__) if kind != "MANUAL" else None
    descriptions = []
    for n, (info, _) in enumerate(masks, start=1):
        c = _codes(info)
        code = lambda t: Code(t[1], t[0], t[2])  # noqa: E731
        d = hd.seg.SegmentDescription(
            n, info.name, code(c["category"]), code(c["type"]), kind, algorithm_identification=algo,
            tracking_uid=hd.UID(), tracking_id=info.name,
            anatomic_regions=[code(c["region"])] if c["region"] else None,
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * v)) for v in info.color)))
        if c["modifier"]:
            d.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(c["modifier"][1], c["modifier"][0], c["modifier"][2])]
        descriptions.append(d)
    pixels = np.stack([m for _, m in masks], axis=-1).astype(np.uint8)  # (slices, rows, cols, segments)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*")  # patient names as the scanner wrote them
        obj = hd.seg.Segmentation(
            source_images=_read_sources(series), pixel_array=pixels, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=1001,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="VoxMetric",
            manufacturer_model_name="VoxMetric", software_versions=__version__, device_serial_number="0",
            content_label="VOXMETRIC", content_description="VoxMetric segmentation",
            series_description="VoxMetric segmentation", omit_empty_frames=not any(not m.any() for _, m in masks))
    with atomic_path(p, overwrite=overwrite, suffix=".dcm") as tmp:
        obj.save_as(str(tmp))
    return p


def contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed polygons (k, 2) in (column, row) index units around the voxels of a 2D boolean
    mask: the 0.5 iso-lines (marching squares, ``contourpy``), first point not repeated,
    collinear points dropped. Filled with the even-odd rule they give back exactly the voxels
    whose centres are in the mask (holes are separate polygons)."""
    import contourpy

    z = np.pad(np.asarray(mask2d, np.float64), 1)
    out = []
    for line in contourpy.contour_generator(z=z, line_type="Separate", corner_mask=False).lines(0.5):
        pts = np.asarray(line, float)[:-1] - 1.0  # closed loop: drop the repeated first point; undo the pad
        prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        cross = (pts - prev)[:, 0] * (nxt - pts)[:, 1] - (pts - prev)[:, 1] * (nxt - pts)[:, 0]
        pts = pts[np.abs(cross) > 1e-9]
        if len(pts) >= 3:
            out.append(pts)
    return out


def _ds(values: np.ndarray) -> list[str]:
    """Decimal strings (DICOM DS, ≤ 16 characters) with 0.1 µm resolution."""
    return [f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e9 else f"{v:.6e}" for v in np.asarray(values).ravel()]


def write_rtstruct(seg: io.Segmentation, series: SeriesInfo, path: str | Path, *, allow_empty: bool = False,
                   overwrite: bool = False, algorithm_type: str = "AUTOMATIC") -> Path:
    """Write ``seg`` as an RT Structure Set on ``series``: one ROI per segment (name, colour,
    SNOMED CT identification code), closed planar contours on every slice holding the segment,
    each referencing the slice's SOP instance (atomic; never replaces ``path`` unless ``overwrite``)."""
    need_dicom_extra()
    import datetime

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from . import __version__

    p, kind, masks = _checked_output(seg, series, path, overwrite, algorithm_type, allow_empty)
    src = pydicom.dcmread(str(series.files[0]), stop_before_pixels=True)
    affine = series.grid().index_to_physical_matrix
    rt_class = "1.2.840.10008.5.1.4.1.1.481.3"
    now = datetime.datetime.now()
    ds = Dataset()
    for kw in ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
               "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
               "ReferringPhysicianName", "StudyDescription"):
        setattr(ds, kw, getattr(src, kw, ""))
    ds.StudyInstanceUID = series.study_uid or src.StudyInstanceUID
    ds.SOPClassUID, ds.SOPInstanceUID = rt_class, generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 1002
    ds.SeriesDescription, ds.InstanceNumber = "VoxMetric structures", 1
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "VoxMetric", "VoxMetric", __version__
    ds.OperatorsName = ""
    ds.InstanceCreationDate = ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = now.strftime("%H%M%S")
    ds.StructureSetLabel, ds.StructureSetName = "VoxMetric", "VoxMetric"
    ds.ApprovalStatus = "UNAPPROVED"

    def image_ref(k: int) -> Dataset:
        r = Dataset()
        r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = series.sop_class_uid, series.sop_uids[k]
        return r

    rt_series = Dataset()
    rt_series.SeriesInstanceUID = series.uid
    rt_series.ContourImageSequence = [image_ref(k) for k in range(len(series.files))]
    rt_study = Dataset()
    rt_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Study Component Management, as planning systems expect
    rt_study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    rt_study.RTReferencedSeriesSequence = [rt_series]
    frame = Dataset()
    frame.FrameOfReferenceUID = series.frame_of_reference_uid
    frame.RTReferencedStudySequence = [rt_study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for n, (info, mask) in enumerate(masks, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = n, series.frame_of_reference_uid
        roi.ROIName, roi.ROIGenerationAlgorithm = info.name, kind
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ROIDisplayColor = [int(round(255 * v)) for v in info.color]
        rc.ReferencedROINumber = n
        items = []
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            for poly in contours(mask[k]):
                ijk = np.column_stack([poly, np.full(len(poly), float(k)), np.ones(len(poly))])
                c = Dataset()
                c.ContourImageSequence = [image_ref(int(k))]
                c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(poly)
                c.ContourNumber = len(items) + 1
                c.ContourData = _ds((ijk @ affine.T)[:, :3])
                items.append(c)
        if items:
            rc.ContourSequence = items
        ds.ROIContourSequence.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = n, n
        c = _codes(info)
        obs.RTROIInterpretedType = "ORGAN" if c["category"] and c["category"][1] == "123037004" else ""
        obs.ROIInterpreter = ""
        if info.terminology:
            code = Dataset()
            code.CodingSchemeDesignator, code.CodeValue, code.CodeMeaning = c["type"]  # type: ignore[misc]
            obs.RTROIIdentificationCodeSequence = [code]
        ds.RTROIObservationsSequence.append(obs)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = rt_class  # pyright: ignore[reportAttributeAccessIssue]
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    with atomic_path(p, overwrite=overwrite, suffix=".dcm") as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return p


def export(seg: io.Segmentation, series: SeriesInfo, *, dicom_seg: str | Path | None = None,
           rtstruct: str | Path | None = None, allow_empty: bool = False, overwrite: bool = False,
           algorithm_type: str = "AUTOMATIC") -> dict[str, Path]:
    """Write ``seg`` as DICOM SEG and/or RT Structure Set on ``series``; returns the paths."""
    if dicom_seg is None and rtstruct is None:
        raise InputError("Nothing to export: give a DICOM SEG and/or an RT Structure Set output "
                         "(--dicom-seg, --rtstruct).")
    check_targets([dicom_seg, rtstruct], overwrite)
    if dicom_seg is not None and rtstruct is not None and Path(dicom_seg).resolve() == Path(rtstruct).resolve():
        raise InputError("--dicom-seg and --rtstruct name the same file; give two file names.")
    out = {}
    if dicom_seg is not None:
        out["dicom_seg"] = write_dicom_seg(seg, series, dicom_seg, allow_empty=allow_empty, overwrite=overwrite,
                                           algorithm_type=algorithm_type)
    if rtstruct is not None:
        out["rtstruct"] = write_rtstruct(seg, series, rtstruct, allow_empty=allow_empty, overwrite=overwrite,
                                         algorithm_type=algorithm_type)
    return out
