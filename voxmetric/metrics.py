"""Segmentation metrics in millimetres (METHODS.md §1.1): DSC, PPV, SEN, ASD, HD, HD95, aRVD.

Definitions (G = reference voxels, S = predicted voxels, ∂ = surface, d = Euclidean mm)::

    DSC  = 2|G∩S| / (|G|+|S|)      PPV = |G∩S| / |S|      SEN = |G∩S| / |G|
    ASD  = ½ (mean_{a∈∂S} d(a,∂G) + mean_{b∈∂G} d(b,∂S))      # = ASSD; mean of the directed means
    HD   = max(max_{a∈∂S} d(a,∂G), max_{b∈∂G} d(b,∂S))
    HD95 = max(P95_{a∈∂S} d(a,∂G), P95_{b∈∂G} d(b,∂S))        # I-01: max of directed 95th percentiles
    aRVD = 100 |(|S|−|G|)| / |G|  (%)                           # I-03

* Surfaces (I-02): a surface voxel is a mask voxel with at least one 6-connected background
  neighbour (mask XOR binary erosion with the 6-connected cross); voxels outside the array
  count as background, so a mask touching the image edge has a surface there.
* Distances are between voxel centres, from ``scipy.ndimage.distance_transform_edt`` with
  ``sampling`` = the voxel spacing, so anisotropic voxels are measured in true mm. Percentiles use
  linear interpolation (``numpy.percentile``), as MONAI's ``torch.quantile`` does.
* Work is done on the bounding box of ``pred | ref`` padded by one background voxel: the result is
  identical to the full-volume computation and costs a few milliseconds for an organ-sized mask.
* ``hd95_definition="pooled"`` gives the 95th percentile of both directed sets pooled together
  (medpy, seg-metrics). It can differ from the default by millimetres; the definition used is
  returned under the key ``"hd95_definition"`` of :func:`definitions`.

**Empty masks.** Both empty: a correct "nothing there" answer — dsc = ppv = sen = 1, asd = hd =
hd95 = 0, arvd = 0. Exactly one empty: a failure — dsc = ppv = sen = 0 (the 0/0 ratio among PPV
and SEN is set to 0 too), asd = hd = hd95 = ``inf`` (no surface to measure to), arvd = 100 when
the prediction is empty and ``inf`` when the reference is empty. :func:`summarize` averages finite
values only and counts the others under ``"n_inf"``, so failures are never averaged away silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import GeometryError, InputError
from .volume import Volume

METRIC_KEYS: tuple[str, ...] = ("dsc", "ppv", "sen", "asd", "hd", "hd95", "arvd", "vol_pred_ml", "vol_ref_ml")
"""Keys of :func:`evaluate_masks`' result, in table order. dsc/ppv/sen are fractions in [0, 1],
asd/hd/hd95 mm, arvd %, volumes mL."""

HD95_DEFINITIONS = ("directed", "pooled")
_CROSS3 = ndimage.generate_binary_structure(3, 1)


def definitions(hd95_definition: str = "directed") -> dict[str, str]:
    """Human-readable definitions of the numbers, to store beside them (JSON output, model cards)."""
    hd95 = (
        "max of the two directed 95th percentiles of surface distances (METHODS I-01)"
        if hd95_definition == "directed"
        else "95th percentile of both directed surface-distance sets pooled (medpy convention)"
    )
    return {
        "dsc": "2|G∩S|/(|G|+|S|)",
        "ppv": "|G∩S|/|S|",
        "sen": "|G∩S|/|G|",
        "asd": "mean of the two directed mean surface distances, mm (= ASSD)",
        "hd": "symmetric Hausdorff distance between surfaces, mm",
        "hd95": hd95 + ", mm",
        "hd95_definition": hd95_definition,
        "arvd": "100·|(|S|−|G|)|/|G|, % (METHODS I-03)",
        "surface": "mask XOR erosion with the 6-connected cross; distances voxel-centre to voxel-centre",
        "empty_policy": "both empty: dsc=ppv=sen=1, distances 0; one empty: dsc=ppv=sen=0, distances inf",
    }


# ---- masks -----------------------------------------------------------------------------------
def _binary(a: np.ndarray | Volume, name: str) -> np.ndarray:
    arr = a.array if isinstance(a, Volume) else np.asarray(a)
    if arr.ndim < 1 or arr.size == 0:
        raise InputError(f"The {name} mask is empty (shape {arr.shape}); pass a 2D or 3D label array.")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise InputError(f"The {name} mask has dtype {arr.dtype}; pass a numeric or boolean label array.")
    return arr > 0


def _spacing(spacing: float | Sequence[float] | np.ndarray | None, ndim: int) -> np.ndarray:
    if spacing is None:
        raise InputError("Voxel spacing is required (mm, in array axis order (z, y, x)).")
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(
            f"Spacing must be {ndim} positive numbers in array axis order (z, y, x) mm, got {spacing!r}."
        )
    return sp


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels (I-02): ``mask`` (bool, any rank) AND NOT its erosion by the face-connected
    cross; the outside of the array is background. Returns a bool array of the same shape."""
    structure = _CROSS3 if mask.ndim == 3 else ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~np.asarray(ndimage.binary_erosion(mask, structure=structure, border_value=0), dtype=bool)


def _union_box(p: np.ndarray, r: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of ``p | r`` as slices, or None when both are empty (one pass, no big temps)."""
    idx = np.concatenate([np.flatnonzero(p), np.flatnonzero(r)])
    if idx.size == 0:
        return None
    coords = np.unravel_index(idx, p.shape)
    return tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)


def directed_surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm) of two non-empty bool masks of equal shape:
    ``(d(∂S→∂G) per pred surface voxel, d(∂G→∂S) per ref surface voxel)``, float64 1D arrays."""
    sp, sr = surface(pred), surface(ref)
    d_pr = np.asarray(ndimage.distance_transform_edt(~sr, sampling=spacing))[sp]
    d_rp = np.asarray(ndimage.distance_transform_edt(~sp, sampling=spacing))[sr]
    return d_pr, d_rp


# ---- the metrics -----------------------------------------------------------------------------
def evaluate_masks(
    pred: np.ndarray | Volume,
    ref: np.ndarray | Volume,
    spacing: float | Sequence[float] | np.ndarray | None = None,
    hd95_definition: str = "directed",
) -> dict[str, float]:
    """All metrics of one predicted mask against a reference (see the module docstring).

    ``pred``, ``ref``: arrays of the same shape ((z, y, x) for 3D; any rank works), voxels > 0 are
    foreground; or two :class:`Volume` s on the same grid (then ``spacing`` may be omitted).
    ``spacing``: mm in array axis order (z, y, x) — i.e. ``Volume.spacing_zyx`` — or one number.
    Returns floats under :data:`METRIC_KEYS`. Raises GeometryError on a shape/grid mismatch and
    InputError on bad spacing or a non-numeric mask.
    """
    if hd95_definition not in HD95_DEFINITIONS:
        raise InputError(f"hd95_definition must be one of {HD95_DEFINITIONS}, got {hd95_definition!r}.")
    if isinstance(pred, Volume) and isinstance(ref, Volume):
        ref.check_same_grid(pred, "prediction and reference masks")
        if spacing is None:
            spacing = ref.spacing_zyx
    p, r = _binary(pred, "predicted"), _binary(ref, "reference")
    if p.shape != r.shape:
        raise GeometryError(
            f"The predicted mask has shape {p.shape} but the reference has {r.shape}; both must be on "
            "the same voxel grid (resample the prediction onto the reference image first)."
        )
    sp = _spacing(spacing, p.ndim)
    voxel_ml = float(np.prod(sp)) / 1000.0

    box = _union_box(p, r)
    if box is None:  # both empty: a correct empty answer
        return dict(dsc=1.0, ppv=1.0, sen=1.0, asd=0.0, hd=0.0, hd95=0.0, arvd=0.0, vol_pred_ml=0.0, vol_ref_ml=0.0)
    # Pad by one background voxel: same surfaces and distances as on the whole array.
    p, r = np.pad(p[box], 1), np.pad(r[box], 1)
    n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    inter = int(np.count_nonzero(p & r))
    out = dict(
        dsc=2.0 * inter / (n_p + n_r),
        ppv=inter / n_p if n_p else 0.0,
        sen=inter / n_r if n_r else 0.0,
        arvd=100.0 * abs(n_p - n_r) / n_r if n_r else math.inf,
        vol_pred_ml=n_p * voxel_ml,
        vol_ref_ml=n_r * voxel_ml,
    )
    if n_p == 0 or n_r == 0:  # exactly one empty: no surface to measure to
        out.update(asd=math.inf, hd=math.inf, hd95=math.inf)
    else:
        d_pr, d_rp = directed_surface_distances(p, r, sp)
        if hd95_definition == "directed":
            hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
        else:
            hd95 = np.percentile(np.concatenate([d_pr, d_rp]), 95)
        out.update(
            asd=0.5 * (float(d_pr.mean()) + float(d_rp.mean())),
            hd=float(max(d_pr.max(), d_rp.max())),
            hd95=float(hd95),
        )
    return {k: float(out[k]) for k in METRIC_KEYS}


def summarize(rows: Sequence[Mapping[str, object]], keys: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Per metric ``{"mean", "std", "median", "min", "max", "n", "n_inf"}`` over ``rows`` (dicts
    from :func:`evaluate_masks`, extra non-numeric keys such as ``"case"`` are ignored).

    Statistics use the finite values only; ``n`` counts them and ``n_inf`` counts the non-finite
    ones (a failed case with an empty mask has infinite distances). ``std`` is the sample standard
    deviation (ddof=1; 0 for a single value). Metrics with no finite value get NaN statistics.
    """
    if keys is None:
        keys = [k for k in METRIC_KEYS if any(k in row for row in rows)]
        keys += [
            k for row in rows for k, v in row.items()
            if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        keys = list(dict.fromkeys(keys))
    out: dict[str, dict[str, float]] = {}
    for k in keys:
        vals = np.array([float(row[k]) for row in rows if k in row], dtype=np.float64)  # type: ignore[arg-type]
        fin = vals[np.isfinite(vals)]
        n = int(fin.size)
        out[k] = {
            "mean": float(fin.mean()) if n else math.nan,
            "std": float(fin.std(ddof=1)) if n > 1 else (0.0 if n == 1 else math.nan),
            "median": float(np.median(fin)) if n else math.nan,
            "min": float(fin.min()) if n else math.nan,
            "max": float(fin.max()) if n else math.nan,
            "n": n,
            "n_inf": int(vals.size - n),
        }
    return out


# ---- files and folders -----------------------------------------------------------------------
_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")
_LABEL_SUFFIX = re.compile(r"([_-](label|labels|seg|segmentation|mask|pred|prediction))$", re.IGNORECASE)


def case_id(path: str | Path) -> tuple[str, bool]:
    """``(case id, looks like a label file)`` of an image/label file name: the name without its
    extension (.seg.nrrd, .nii.gz, .nrrd, …) and without a ``_label``/``_seg``/``_mask``/``_pred``
    suffix. ``case001.seg.nrrd`` and ``case001_label.nii.gz`` both give ``"case001"``."""
    name = Path(path).name
    low = name.lower()
    for ext in _EXTENSIONS:
        if low.endswith(ext):
            stem = name[: -len(ext)]
            is_label = ext == ".seg.nrrd"
            break
    else:
        stem, is_label = (name[: -len(Path(name).suffix)] if Path(name).suffix else name), False
    m = _LABEL_SUFFIX.search(stem)
    if m:
        stem, is_label = stem[: m.start()], True
    return stem, is_label


def _files_by_case(source: str | Path, what: str, labels: bool) -> dict[str, Path]:
    """Map case id → file for one file, a folder of files, or a folder/manifest.json of cases.
    In a folder holding both images and labels, ``labels`` picks which of the pair is kept."""
    src = Path(source)
    if not src.exists():
        raise InputError(f"The {what} path {src} does not exist; give a file or a folder of files.")
    manifest = src if src.is_file() and src.name.endswith(".json") else src / "manifest.json"
    if manifest.is_file():
        try:
            cases = json.loads(manifest.read_text(encoding="utf-8"))["cases"]
            key = "label" if labels else "image"
            return {str(c["id"]): manifest.parent / c[key] for c in cases if c.get(key)}
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{manifest} is not a valid VoxMetric manifest ({e}); fix or remove it.") from e
    if src.is_file():
        return {case_id(src)[0]: src}
    found: dict[str, list[tuple[bool, Path]]] = {}
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name.lower().endswith(_EXTENSIONS):
            cid, is_label = case_id(f)
            found.setdefault(cid, []).append((is_label, f))
    if not found:
        raise InputError(
            f"No image or label files ({', '.join(_EXTENSIONS)}) in the {what} folder {src}."
        )
    out: dict[str, Path] = {}
    for cid, cands in found.items():
        picked = [f for is_label, f in cands if is_label == labels] if len(cands) > 1 else [cands[0][1]]
        if len(picked) != 1:
            raise InputError(
                f"Case '{cid}' in the {what} folder matches several files: "
                f"{', '.join(f.name for _, f in cands)}; keep one label file per case."
            )
        out[cid] = picked[0]
    return out


def match_cases(pred: str | Path, ref: str | Path) -> list[tuple[str, Path, Path]]:
    """``[(case id, prediction file, reference file)]`` for the cases present in both (files or
    folders, matched by :func:`case_id`). Warns about unmatched cases; InputError when none match."""
    p, r = _files_by_case(pred, "prediction", True), _files_by_case(ref, "reference", True)
    if Path(pred).is_file() and Path(ref).is_file():
        return [(next(iter(p)), next(iter(p.values())), next(iter(r.values())))]
    common = [c for c in r if c in p]
    if not common:
        raise InputError(
            f"No case names match between the predictions ({', '.join(sorted(p)[:5])}…) and the "
            f"references ({', '.join(sorted(r)[:5])}…); name files by case, e.g. case001.seg.nrrd."
        )
    missing = sorted(set(r) - set(p))
    extra = sorted(set(p) - set(r))
    if missing:
        warnings.warn(f"{len(missing)} reference case(s) have no prediction and are skipped: {', '.join(missing[:10])}", stacklevel=2)
    if extra:
        warnings.warn(f"{len(extra)} prediction(s) have no reference and are skipped: {', '.join(extra[:10])}", stacklevel=2)
    return [(c, p[c], r[c]) for c in common]


def union_grid(a: Volume, b: Volume, what: str = "masks") -> tuple[Volume, Volume]:
    """Two masks on the smallest common grid holding both, without interpolation: they must share
    spacing and direction and their origins must be a whole number of voxels apart (e.g. .seg.nrrd
    files that Slicer cropped to each segment's extent). GeometryError otherwise."""
    if a.same_grid(b):
        return a, b
    off = a.physical_to_index(b.origin)  # (x, y, z) index of b's first voxel in a's grid
    if not (np.allclose(a.spacing, b.spacing, atol=1e-3) and np.allclose(a.direction, b.direction, atol=1e-3)
            and np.allclose(off, np.round(off), atol=1e-2)):
        b.check_same_grid(a, what)
    off_zyx = np.round(off).astype(int)[::-1]
    lo = np.minimum(0, off_zyx)
    hi = np.maximum(a.shape, off_zyx + np.array(b.shape))
    out = []
    for vol, start in ((a, -lo), (b, off_zyx - lo)):
        arr = np.zeros(tuple(hi - lo), dtype=vol.array.dtype)
        arr[tuple(slice(s, s + n) for s, n in zip(start, vol.shape))] = vol.array
        out.append(arr)
    origin = a.index_to_physical(lo[::-1].astype(float))
    return tuple(Volume(arr, a.spacing, origin, a.direction) for arr in out)  # type: ignore[return-value]


def _pick_segments(pred: object, ref: object, wanted: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """(prediction name, reference name) pairs to compare: the ``wanted`` names in both; by
    default every segment name the two share (reference order, case-insensitive), or — when they
    share none — the only / first non-empty segment of each (``(None, None)``)."""
    if wanted:
        return [(w, w) for w in wanted]
    pred_names = {n.casefold(): n for n in pred.names}  # type: ignore[attr-defined]
    common = [(pred_names[n.casefold()], n) for n in ref.names if n.casefold() in pred_names]  # type: ignore[attr-defined]
    return common or [(None, None)]


def evaluate_files(
    pred: str | Path,
    ref: str | Path,
    segment: str | None = None,
    reference_images: str | Path | None = None,
    hd95_definition: str = "directed",
) -> list[dict[str, object]]:
    """Evaluate predicted label files against reference label files (two files or two folders,
    cases matched by name; see :func:`match_cases`). ``segment``: the segment name(s) in both,
    comma-separated; None = every segment name the two files share (a multi-organ result is
    scored per organ), or the only / first non-empty segment of each when they share no name.
    ``reference_images`` (a file or folder of images, matched by case id): when given, both masks
    are read onto that image's grid; otherwise onto the smallest grid holding both masks (they must
    share spacing and direction and sit a whole number of voxels apart, as Slicer's cropped
    .seg.nrrd files do). Returns one row per case and segment: ``{"case", "segment", "pred",
    "ref", <METRIC_KEYS>}``."""
    from .cases import split_segments
    from .io import _on_reference, read_segmentation

    wanted = split_segments(segment)
    images = _files_by_case(reference_images, "reference image", False) if reference_images else {}
    rows: list[dict[str, object]] = []
    for cid, pf, rf in match_cases(pred, ref):
        grid = None
        if images:
            if cid not in images:
                raise InputError(f"No reference image for case '{cid}' in {reference_images}.")
            from .io import read_volume

            grid = read_volume(images[cid])
        pseg, rseg = read_segmentation(pf), read_segmentation(rf)
        for pname, rname in _pick_segments(pseg, rseg, wanted):
            ref_mask, pred_mask = (_first_or_named(seg, name) for seg, name in ((rseg, rname), (pseg, pname)))
            if grid is not None:
                ref_mask, pred_mask = _on_reference(ref_mask, grid), _on_reference(pred_mask, grid)
            else:
                pred_mask, ref_mask = union_grid(pred_mask, ref_mask, f"prediction and reference of case '{cid}'")
            name = rname if rname is not None else (rseg.names[0] if rseg.names else "")
            row: dict[str, object] = {"case": cid, "segment": name, "pred": str(pf), "ref": str(rf)}
            row.update(evaluate_masks(pred_mask, ref_mask, hd95_definition=hd95_definition))
            rows.append(row)
    return rows


def _first_or_named(seg: object, name: str | None) -> Volume:
    """Mask of segment ``name`` (None: the only / first non-empty one) of an ``io.Segmentation``."""
    from .errors import SegmentNotFoundError

    if name is not None:
        return seg.mask(name)  # type: ignore[attr-defined]
    infos = seg.segments  # type: ignore[attr-defined]
    if not infos:
        raise SegmentNotFoundError("A label file holds no segments (it is empty); export the label first.")
    masks = [seg.mask_of(i) for i in infos]  # type: ignore[attr-defined]
    return next((m for m in masks if m.array.any()), masks[0])


def summarize_by_segment(rows: Sequence[Mapping[str, object]]) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`summarize` of the rows of each segment (rows without a "segment" go under "")."""
    names = list(dict.fromkeys(str(r.get("segment", "")) for r in rows))
    return {n: summarize([r for r in rows if str(r.get("segment", "")) == n]) for n in names}


# ---- reports ---------------------------------------------------------------------------------
_TABLE = (("dsc", "DSC", 4), ("ppv", "PPV", 4), ("sen", "SEN", 4), ("asd", "ASD mm", 2),
          ("hd", "HD mm", 2), ("hd95", "HD95 mm", 2), ("arvd", "aRVD %", 1))


def format_table(rows: Sequence[Mapping[str, object]], summary: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """A plain-text per-case table followed by ``mean ± std``, ``median`` and ``n`` per metric —
    per segment when the rows hold several segments."""
    segments = list(dict.fromkeys(str(r.get("segment", "")) for r in rows))
    several = len(segments) > 1
    width = max([6] + [len(str(r.get("case", ""))) for r in rows])
    swidth = max([8] + [len(s) for s in segments]) if several else 0
    head = f"{'case':<{width}}" + (f"  {'segment':<{swidth}}" if several else "") \
        + "".join(f"{title:>10}" for _, title, _ in _TABLE)
    lines = [head, "-" * len(head)]
    for r in rows:
        seg = f"  {str(r.get('segment', '')):<{swidth}}" if several else ""
        lines.append(f"{str(r.get('case', '')):<{width}}{seg}"
                     + "".join(f"{float(r[k]):>10.{d}f}" for k, _, d in _TABLE))  # type: ignore[arg-type]
    groups = summarize_by_segment(rows) if several else {segments[0] if segments else "": summary or summarize(rows)}
    for name, summ in groups.items():
        lines += ["", (f"segment {name}: " if several else "") + f"{'metric':<8}{'mean ± std':>22}{'median':>10}"
                  f"{'n':>5}{'failed':>8}"]
        for k, title, d in _TABLE:
            s = summ[k]
            ms = f"{s['mean']:.{d}f} ± {s['std']:.{d}f}"
            pad = " " * (len(f"segment {name}: ") if several else 0)
            lines.append(f"{pad}{title:<8}{ms:>22}{s['median']:>10.{d}f}{s['n']:>5d}{s['n_inf']:>8d}")
    return "\n".join(lines)


def _atomic_write(path: Path, text: str, overwrite: bool = True) -> Path:
    """Write a report file the one way (:func:`voxmetric.files.write_text`; CSV line ends kept)."""
    from .files import write_text

    return write_text(path, text, overwrite=overwrite, newline="")


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write a table as CSV (``header`` then ``rows``; floats as ``repr``, so they read back
    exactly; NaN as an empty cell, ±inf as "inf"/"-inf"), atomically: a temporary file in the
    target folder, then a rename. Returns the path."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(header))
    for row in rows:
        w.writerow([_csv_cell(v) for v in row])
    return _atomic_write(Path(path), buf.getvalue())


def _csv_cell(v: object) -> object:
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "" if math.isnan(f) else repr(f) if math.isfinite(f) else ("inf" if f > 0 else "-inf")
    return v


def _json_number(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def write_report(
    out_dir: str | Path,
    rows: Sequence[Mapping[str, object]],
    summary: Mapping[str, Mapping[str, float]] | None = None,
    meta: Mapping[str, object] | None = None,
    hd95_definition: str = "directed",
    *,
    overwrite: bool = True,
) -> tuple[Path, Path]:
    """Write ``metrics.csv`` (one row per case and segment) and ``metrics.json`` (``{"format":
    "voxmetric-metrics/1", "definitions", "cases", "summary" (all rows), "segments" (a summary per
    segment), **meta}``; infinities as the string ``"inf"``) into ``out_dir``, atomically; without
    ``overwrite`` an existing one of the two is an OutputError (before either is written).
    Returns the two paths."""
    from .files import check_free

    out = Path(out_dir)
    for name in ("metrics.csv", "metrics.json"):
        check_free(out / name, overwrite)
    summary = summary if summary is not None else summarize(rows)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    def clean(summ: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, object]]:
        return {m: {s: _json_number(v) for s, v in st.items()} for m, st in summ.items()}

    doc = {
        "format": "voxmetric-metrics/1",
        **(dict(meta) if meta else {}),
        "definitions": definitions(hd95_definition),
        "cases": [{k: _json_number(v) for k, v in r.items()} for r in rows],
        "summary": clean(summary),
        "segments": {name: clean(summ) for name, summ in summarize_by_segment(rows).items()},
    }
    csv_path = _atomic_write(out / "metrics.csv", buf.getvalue(), overwrite)
    json_path = _atomic_write(out / "metrics.json", json.dumps(doc, indent=1) + "\n", overwrite)
    return csv_path, json_path
