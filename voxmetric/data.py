"""Cached preprocessing of cases (:mod:`voxmetric.cases`) for training and inference.

:func:`prepare_case` resamples to 1 mm, normalises to [0, 255], crops to the body, resamples to
the method's spacing and caches the result (METHODS.md §2.2). Training items are drawn from the
prepared cases by :mod:`voxmetric.sampling`.

Array order is (z, y, x) everywhere; spacings of :class:`~voxmetric.volume.Volume` are (x, y, z).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import intensity
from . import io as vio
from .cases import CaseRecord
from .files import atomic_open
from .errors import ConfigError, InputError, VoxMetricError
from .volume import Box, Volume, resample, resample_to

REGIONS = ("label_box", "body")
PREP_VERSION = 3  # bump when the preprocessing changes: old cache entries are then ignored (3: the MR body mask)
DEFAULT_CLASSES = ("Prostate",)


# ---- preprocessing with a cache -------------------------------------------------------------
@dataclass(frozen=True)
class DataRecipe:
    """How a method wants its cases prepared: voxel size ``spacing_mm``; ``region`` where its
    training samples come from and where validation predicts ("label_box" = the labels' box +
    a margin drawn from ``margin_mm`` per side, stage 2; "body" = the whole body, stage 1)."""

    spacing_mm: float = 1.0
    region: str = "label_box"
    margin_mm: tuple[float, float] = (10.0, 30.0)

    def check(self) -> "DataRecipe":
        """Raise ConfigError on out-of-range values; returns self."""
        if self.spacing_mm <= 0:
            raise ConfigError(f"spacing_mm must be positive, got {self.spacing_mm}.")
        if self.region not in REGIONS:
            raise ConfigError(f"region must be one of {REGIONS}, got {self.region!r}.")
        lo, hi = self.margin_mm
        if not 0 <= lo <= hi:
            raise ConfigError(f"margin_mm must be (min, max) with 0 ≤ min ≤ max, got {self.margin_mm}.")
        return self


@dataclass
class PreparedCase:
    """A preprocessed case: ``image`` float32 in [0, 255] at the recipe's spacing, cropped to
    the body; ``mask`` uint8 label map on the same grid (value k = ``classes[k - 1]``, 0 =
    background; all 0 for an unlabelled case)."""

    id: str
    image: Volume
    mask: Volume
    modality: str
    classes: tuple[str, ...] = DEFAULT_CLASSES
    labelled: bool = True


def _box_index_bounds(vol: Volume, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive voxel index bounds (z, y, x) of the voxel centres inside ``box``, clipped."""
    idx = vol.physical_to_index(box.corners)[:, ::-1]
    lo = np.clip(np.ceil(idx.min(0) - 1e-3), 0, np.array(vol.shape) - 1).astype(int)
    hi = np.clip(np.floor(idx.max(0) + 1e-3), 0, np.array(vol.shape) - 1).astype(int)
    return lo, np.maximum(hi, lo)


def _crop_index(vol: Volume, lo: np.ndarray, hi: np.ndarray) -> Volume:
    """Exact sub-volume ``lo..hi`` (inclusive, z, y, x) with its origin moved accordingly."""
    arr = vol.array[lo[0]: hi[0] + 1, lo[1]: hi[1] + 1, lo[2]: hi[2] + 1].copy()
    return Volume(arr, vol.spacing, vol.index_to_physical(lo[::-1].astype(float)), vol.direction)


def _label_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive (z, y, x) bounding box of the non-zero voxels, None when empty."""
    from scipy import ndimage  # here only: importing scipy.ndimage takes a second

    sl = ndimage.find_objects((mask > 0).astype(np.uint8))
    if not sl or sl[0] is None:
        return None
    return np.array([s.start for s in sl[0]]), np.array([s.stop - 1 for s in sl[0]])


def _preprocess(image: Volume, modality: str, spacing_mm: float, mask: Volume | None) -> tuple[Volume, Volume | None]:
    """METHODS.md §2.2: resample to 1 mm (linear; labels nearest), crop to the body (kept
    around the label), normalise to [0, 255], then resample to ``spacing_mm`` when ≠ 1."""
    iso = image if np.allclose(image.spacing, 1.0) else resample(image, (1.0, 1.0, 1.0), is_label=False)
    iso = iso.with_array(iso.array.astype(np.float32, copy=False))
    m1 = None if mask is None else resample_to(mask, iso, is_label=True)
    lo, hi = _box_index_bounds(iso, intensity.body_box(iso, modality))
    lb = None if m1 is None else _label_bounds(m1.array)
    if lb is not None:
        lo, hi = np.minimum(lo, lb[0]), np.maximum(hi, lb[1])
    crop = _crop_index(iso, lo, hi)
    out = crop.with_array(np.asarray(intensity.normalize(crop.array, modality), dtype=np.float32))
    mout = None if m1 is None else _crop_index(m1, lo, hi)
    if not math.isclose(spacing_mm, 1.0):
        out = resample(out, (spacing_mm, spacing_mm, spacing_mm), is_label=False)
        out = out.with_array(out.array.astype(np.float32, copy=False))
        mout = None if mout is None else resample_to(mout, out, is_label=True)
    return out, mout


def guess_modality(image: Volume) -> str:
    """"ct" when the intensities look like Hounsfield units, else "mr"."""
    return "ct" if intensity.looks_like_ct(image.array) else "mr"


def preprocess_image(image: Volume, modality: str | None = None, spacing_mm: float = 1.0) -> tuple[Volume, str]:
    """The training preprocessing applied to an unlabelled image (for inference, so both match):
    returns (float32 [0, 255] volume at ``spacing_mm`` cropped to the body, modality)."""
    modality = (modality or guess_modality(image)).lower()
    out, _ = _preprocess(image, modality, spacing_mm, None)
    return out, modality


def preprocess_image_fast(image: Volume, modality: str | None = None, spacing_mm: float = 4.0,
                          coarse_mm: float = 4.0) -> tuple[Volume, str]:
    """:func:`preprocess_image` for inference at ``spacing_mm`` > 1 without the whole-scan 1 mm
    copy (a 512×512×200 CT: ~1 s and ~0.3 GB instead of ~11 s and ~2.8 GB). The body box is found
    on a ``coarse_mm`` copy of the native scan and snapped to the 1 mm crop bounds training uses;
    the output grid is the one training's 1 mm crop resampled to ``spacing_mm`` has. Values: the
    native voxels in that box interpolated at the 1 mm points training would use next to each
    output voxel, normalised (MR: percentiles over the box), and combined with training's linear
    weights (exact for integer ``spacing_mm``; otherwise one linear interpolation).
    Returns (float32 [0, 255] volume, modality); at ``spacing_mm`` 1 it is :func:`preprocess_image`."""
    modality = (modality or guess_modality(image)).lower()
    if spacing_mm <= 1.0 or math.isclose(spacing_mm, 1.0):
        return preprocess_image(image, modality, spacing_mm)
    step = np.maximum(1, np.floor(coarse_mm / image.spacing)).astype(int)  # x, y, z: every step-th voxel
    coarse = Volume(image.array[::step[2], ::step[1], ::step[0]], image.spacing * step, image.origin, image.direction)
    body = intensity.body_box(coarse, modality)
    # the 1 mm grid of volume.resample (same extent, centred) and training's crop bounds on it
    n1 = np.maximum(1, np.round(image.size_xyz * image.spacing)).astype(int)
    iso = Volume(np.broadcast_to(np.uint8(0), tuple(n1[::-1])), np.ones(3),
                 image.origin - image.direction @ ((image.spacing - 1.0) / 2.0), image.direction)
    lo, hi = _box_index_bounds(iso, body)
    n = np.maximum(1, np.round((hi - lo + 1)[::-1] / spacing_mm)).astype(int)  # x, y, z
    origin = iso.index_to_physical(lo[::-1].astype(float)) + image.direction @ np.full(3, (spacing_mm - 1.0) / 2.0)
    grid = Volume(np.zeros(tuple(n[::-1]), np.uint8), np.full(3, spacing_mm), origin, image.direction)
    # native voxels around that grid (+1 voxel for interpolation), normalised, resampled once
    idx = image.physical_to_index(Box.from_volume_extent(grid).corners)[:, ::-1]
    nlo = np.clip(np.floor(idx.min(0)) - 1, 0, np.array(image.shape) - 1).astype(int)
    nhi = np.clip(np.ceil(idx.max(0)) + 1, 0, np.array(image.shape) - 1).astype(int)
    sub = _crop_index(image, nlo, np.maximum(nhi, nlo))
    if modality == "mr":  # training's percentiles: over the crop
        sub = sub.with_array(np.asarray(intensity.normalize(sub.array, "mr"), dtype=np.float32))
    src = sub.to_sitk()  # resampled straight to float32 (linear interpolation runs in double either way)
    # training samples 1 mm points, normalises, then interpolates them linearly; on an integer
    # spacing every output voxel sits at the same fraction f between 1 mm points, so it is the
    # (1-f, f)-weighted sum of the normalised samples at the ≤ 8 nearby 1 mm points
    frac = (spacing_mm - 1.0) / 2.0 % 1.0 if float(spacing_mm).is_integer() else 0.0
    taps = [(-frac, 1.0 - frac), (1.0 - frac, frac)] if frac > 1e-6 else [(0.0, 1.0)]
    out = np.zeros(grid.shape, np.float32)
    for (dx, wx) in taps:
        for (dy, wy) in taps:
            for (dz, wz) in taps:
                o = grid.origin + image.direction @ np.array([dx, dy, dz])
                vals = sitk.GetArrayFromImage(sitk.Resample(src, [int(v) for v in grid.size_xyz], sitk.Transform(),
                                                            sitk.sitkLinear, tuple(o), tuple(grid.spacing),
                                                            tuple(image.direction.ravel()), 0.0, sitk.sitkFloat32))
                out += (wx * wy * wz) * (vals if modality == "mr" else intensity.normalize_ct(vals))
    return grid.with_array(out), modality


def _file_signature(p: Path) -> list:
    p = Path(p).resolve()
    if p.is_dir():
        return [str(p), sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in p.iterdir() if f.is_file())]
    st = p.stat()
    return [str(p), st.st_mtime_ns, st.st_size]


def cache_key(record: CaseRecord, recipe: DataRecipe) -> str:
    """SHA-256 over the files' paths, mtimes and sizes, the segment, modality and the recipe
    fields that change the prepared volumes."""
    payload = {
        "version": PREP_VERSION,
        "image": _file_signature(record.image),
        "label": None if record.label is None else _file_signature(record.label),
        "segments": [n.lower() for n in record.segments],
        "modality": record.modality,
        "spacing_mm": float(recipe.spacing_mm),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(record: CaseRecord, recipe: DataRecipe, cache_dir: str | Path) -> Path:
    """Where :func:`prepare_case` caches ``record`` (``<id>-<hash>.npz``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", record.id)[:60] or "case"
    return Path(cache_dir) / f"{safe}-{cache_key(record, recipe)[:24]}.npz"


def _save_prepared(path: Path, case: PreparedCase) -> None:
    img, m = case.image, case.mask
    arrays: dict[str, Any] = dict(image=img.array.astype(np.float32, copy=False), mask=m.array.astype(np.uint8, copy=False),
                  spacing=img.spacing, origin=img.origin, direction=img.direction, id=np.array(case.id),
                  modality=np.array(case.modality), classes=np.array(case.classes, dtype=str),
                  labelled=np.array(case.labelled), version=np.array(PREP_VERSION))
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def _load_prepared(path: Path) -> PreparedCase:
    with np.load(path, allow_pickle=False) as z:
        if int(z["version"]) != PREP_VERSION:
            raise ValueError("old cache version")
        geo = dict(spacing=z["spacing"], origin=z["origin"], direction=z["direction"])
        return PreparedCase(str(z["id"]), Volume(z["image"], **geo), Volume(z["mask"], **geo), str(z["modality"]),
                            tuple(str(c) for c in z["classes"]), bool(z["labelled"]))


def prepare_case(record: CaseRecord, recipe: DataRecipe | None = None, cache_dir: str | Path | None = None) -> PreparedCase:
    """Read, check and preprocess one case (see :func:`_preprocess`); with ``cache_dir`` the
    result is stored as ``.npz`` (atomic) keyed by :func:`cache_key` and reused next time.

    The label map holds ``record.segments`` as values 1, 2, … (no segments named: the only /
    first non-empty one); a record without a label gives an unlabelled case (mask all 0).
    Raises InputError for unreadable files or an empty label, SegmentNotFoundError for a
    missing segment, GeometryError when image and label grids differ; messages name the case.
    """
    recipe = (recipe or DataRecipe()).check()
    target = cache_path(record, recipe, cache_dir) if cache_dir is not None else None
    if target is not None and target.is_file():
        try:
            return _load_prepared(target)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a broken or outdated cache entry: rebuild it
    try:
        image = vio.read_volume(record.image)
        modality = (record.modality or guess_modality(image)).lower()
        mask, classes = None, tuple(record.segments) or DEFAULT_CLASSES
        if record.label is not None:
            mask, classes = vio.read_label_map(record.label, record.segments, reference=image)
            if not np.any(mask.array):
                n = len(record.segments)
                what = "label" if not n else f"segment '{record.segment}'" if n == 1 else f"segments '{record.segment}'"
                raise InputError(f"the {what} in {Path(record.label).name} {'are' if n > 1 else 'is'} empty. "
                                 "Draw the segment or remove the case.")
        out, mout = _preprocess(image, modality, recipe.spacing_mm, mask)
        if mout is None:
            mout = out.with_array(np.zeros(out.shape, np.uint8))
        elif not np.any(mout.array):
            raise InputError(f"the label in {Path(str(record.label)).name} vanished when resampled to {recipe.spacing_mm} mm "
                             "(it is smaller than a voxel). Check the label.")
    except VoxMetricError as e:
        msg = str(e)
        raise type(e)(msg if msg.startswith(f"Case '{record.id}'") else f"Case '{record.id}': {msg}") from e
    case = PreparedCase(record.id, out, mout.with_array(mout.array.astype(np.uint8, copy=False)), modality,
                        classes, record.label is not None)
    if target is not None:
        _save_prepared(target, case)
    return case


def prepare_cases(records: Sequence[CaseRecord], recipe: DataRecipe | None = None, cache_dir: str | Path | None = None,
                  progress: Callable[[int, int, str], None] | None = None, jobs: int = 1) -> list[PreparedCase]:
    """:func:`prepare_case` for each record, reporting ``progress(done, total, case id)``; ``jobs`` > 1:
    that many processes (the same results; with ``cache_dir`` they fill the cache)."""
    from .jobs import map_in_processes

    say = None if progress is None else (lambda k: progress(k, len(records), records[k - 1].id))
    return map_in_processes(prepare_case, [(r, recipe, cache_dir) for r in records], jobs, say)


