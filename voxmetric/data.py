"""Cached preprocessing and 2.5D slab-patch sampling of cases (:mod:`voxmetric.cases`).

:func:`prepare_case` resamples to 1 mm, normalises to [0, 255], crops to the body and caches
the result; :class:`SlabPatchDataset` draws training slabs; :func:`whole_slices` builds the
slabs for whole-slice inference (METHODS.md §2.2–2.4).

Array order is (z, y, x) everywhere; spacings of :class:`~voxmetric.volume.Volume` are (x, y, z).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset, Sampler

from . import intensity
from . import io as vio
from .cases import CaseRecord, _atomic_write
from .errors import ConfigError, InputError, VoxMetricError
from .volume import Box, Volume, resample, resample_to

REGIONS = ("label_box", "body")
PREP_VERSION = 1  # bump when the preprocessing changes: old cache entries are then ignored


# ---- preprocessing with a cache -------------------------------------------------------------
@dataclass
class DataRecipe:
    """How a method wants its data: voxel size, slab depth, in-plane patch size, patches per
    case per epoch, training region ("label_box" = label box + random margin in mm, stage 2;
    "body" = whole body volume, stage 1), foreground fraction and augmentation."""

    spacing_mm: float = 1.0
    slab: int = 3
    patch: int = 64
    per_case: int = 500
    region: str = "label_box"
    margin_mm: tuple[float, float] = (10.0, 30.0)
    fg_fraction: float = 0.5
    augment: bool = True

    def check(self) -> "DataRecipe":
        """Raise ConfigError on out-of-range values; returns self."""
        if self.spacing_mm <= 0:
            raise ConfigError(f"spacing_mm must be positive, got {self.spacing_mm}.")
        if self.slab < 1 or self.slab % 2 == 0:
            raise ConfigError(f"slab must be an odd number of slices ≥ 1, got {self.slab}.")
        if self.patch < 1 or self.per_case < 1:
            raise ConfigError(f"patch and per_case must be ≥ 1, got {self.patch} and {self.per_case}.")
        if self.region not in REGIONS:
            raise ConfigError(f"region must be one of {REGIONS}, got {self.region!r}.")
        lo, hi = self.margin_mm
        if not 0 <= lo <= hi:
            raise ConfigError(f"margin_mm must be (min, max) with 0 ≤ min ≤ max, got {self.margin_mm}.")
        if not 0 <= self.fg_fraction <= 1:
            raise ConfigError(f"fg_fraction must lie in [0, 1], got {self.fg_fraction}.")
        return self


@dataclass
class PreparedCase:
    """A preprocessed case: ``image`` float32 in [0, 255] at the recipe's spacing, cropped to
    the body; ``mask`` uint8 0/1 on the same grid (all 0 for an unlabelled case)."""

    id: str
    image: Volume
    mask: Volume
    modality: str


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
        out = resample(out, (spacing_mm,) * 3, is_label=False)
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
    iso = Volume(np.broadcast_to(np.uint8(0), tuple(n1[::-1])), (1.0, 1.0, 1.0),
                 image.origin - image.direction @ ((image.spacing - 1.0) / 2.0), image.direction)
    lo, hi = _box_index_bounds(iso, body)
    n = np.maximum(1, np.round((hi - lo + 1)[::-1] / spacing_mm)).astype(int)  # x, y, z
    origin = iso.index_to_physical(lo[::-1].astype(float)) + image.direction @ np.full(3, (spacing_mm - 1.0) / 2.0)
    grid = Volume(np.zeros(tuple(n[::-1]), np.uint8), (spacing_mm,) * 3, origin, image.direction)
    # native voxels around that grid (+1 voxel for interpolation), normalised, resampled once
    idx = image.physical_to_index(Box.from_volume_extent(grid).corners)[:, ::-1]
    nlo = np.clip(np.floor(idx.min(0)) - 1, 0, np.array(image.shape) - 1).astype(int)
    nhi = np.clip(np.ceil(idx.max(0)) + 1, 0, np.array(image.shape) - 1).astype(int)
    sub = _crop_index(image, nlo, np.maximum(nhi, nlo))
    if modality == "mr":  # training's percentiles: over the crop
        sub = sub.with_array(np.asarray(intensity.normalize(sub.array, "mr"), dtype=np.float32))
    src = sitk.Cast(sub.to_sitk(), sitk.sitkFloat32)
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
        "segment": record.segment and record.segment.lower(),
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
    arrays = dict(image=img.array.astype(np.float32, copy=False), mask=m.array.astype(np.uint8, copy=False),
                  spacing=img.spacing, origin=img.origin, direction=img.direction,
                  id=np.array(case.id), modality=np.array(case.modality), version=np.array(PREP_VERSION))
    _atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))


def _load_prepared(path: Path) -> PreparedCase:
    with np.load(path, allow_pickle=False) as z:
        if int(z["version"]) != PREP_VERSION:
            raise ValueError("old cache version")
        geo = dict(spacing=z["spacing"], origin=z["origin"], direction=z["direction"])
        return PreparedCase(str(z["id"]), Volume(z["image"], **geo), Volume(z["mask"], **geo), str(z["modality"]))


def prepare_case(record: CaseRecord, recipe: DataRecipe | None = None, cache_dir: str | Path | None = None) -> PreparedCase:
    """Read, check and preprocess one case (see :func:`_preprocess`); with ``cache_dir`` the
    result is stored as ``.npz`` (atomic) keyed by :func:`cache_key` and reused next time.

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
        mask = None
        if record.label is not None:
            mask = vio.read_segment_mask(record.label, record.segment, reference=image)
            if not np.any(mask.array):
                what = f"segment '{record.segment}'" if record.segment else "label"
                raise InputError(f"the {what} in {Path(record.label).name} is empty. Draw the segment or remove the case.")
        out, mout = _preprocess(image, modality, recipe.spacing_mm, mask)
        if mout is None:
            mout = out.with_array(np.zeros(out.shape, np.uint8))
        elif not np.any(mout.array):
            raise InputError(f"the label in {Path(record.label).name} vanished when resampled to {recipe.spacing_mm} mm "
                             "(it is smaller than a voxel). Check the label.")
    except VoxMetricError as e:
        msg = str(e)
        raise type(e)(msg if msg.startswith(f"Case '{record.id}'") else f"Case '{record.id}': {msg}") from e
    case = PreparedCase(record.id, out, mout.with_array(mout.array.astype(np.uint8, copy=False)), modality)
    if target is not None:
        _save_prepared(target, case)
    return case


def prepare_cases(records: Sequence[CaseRecord], recipe: DataRecipe | None = None, cache_dir: str | Path | None = None,
                  progress: Callable[[int, int, str], None] | None = None) -> list[PreparedCase]:
    """:func:`prepare_case` for each record, reporting ``progress(done, total, case id)``."""
    out = []
    for n, r in enumerate(records):
        out.append(prepare_case(r, recipe, cache_dir))
        if progress is not None:
            progress(n + 1, len(records), r.id)
    return out


# ---- training regions and slab patches ------------------------------------------------------
def _label_region(lo: np.ndarray, hi: np.ndarray, spacing_zyx: np.ndarray, margin_mm: tuple[float, float],
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Continuous index bounds (z, y, x; voxel edges) of the label box grown on each of its six
    sides by an independent margin drawn uniformly from ``margin_mm``."""
    m = rng.uniform(margin_mm[0], margin_mm[1], size=(2, 3)) / spacing_zyx
    return lo - 0.5 - m[0], hi + 0.5 + m[1]


def region_of(case: PreparedCase, recipe: DataRecipe, rng: np.random.Generator) -> Box:
    """The training region: the label's bounding box plus a random margin per side
    (``recipe.margin_mm``, stage 2, mimicking an inferred ROI) or the whole body volume
    (``region="body"``, stage 1). Axes follow the case's grid."""
    if recipe.region == "body":
        return Box.from_volume_extent(case.image)
    bounds = _label_bounds(case.mask.array)
    if bounds is None:
        raise InputError(f"Case '{case.id}' has an empty label, so it has no label region to train on.")
    lo, hi = _label_region(*bounds, case.image.spacing_zyx, recipe.margin_mm, rng)
    center = case.image.index_to_physical(((lo + hi) / 2)[::-1])
    return Box(center, ((hi - lo) * case.image.spacing_zyx)[::-1], case.image.direction)


@dataclass
class _Entry:
    image: np.ndarray  # float32 (z, y, x) crop holding every voxel a patch can reach
    mask: np.ndarray  # uint8, same crop
    offset: np.ndarray  # (z, y, x) of the crop's first voxel in the case grid
    shape: np.ndarray  # full case shape (z, y, x)
    spacing: np.ndarray  # (z, y, x) mm
    bounds: tuple[np.ndarray, np.ndarray] | None  # label bbox (z, y, x), inclusive
    fg: np.ndarray  # (N, 3) foreground voxel indices (z, y, x), int32


class SlabPatchDataset(Dataset):
    """2.5D training samples: ``{"image": float32 (slab, P, P), "label": int64 (P, P)}``.

    Item ``g`` is a pure function of ``(seed, g)``: ``g = epoch * len(self) + i``, so the
    sampler of :func:`make_loader` can resume exactly at any item. Each epoch visits every case
    ``per_case`` times in a seeded random order. For each item:

    * region: :func:`region_of` (label box + random margin, or the body);
    * centre: with probability ``fg_fraction`` a random foreground voxel (so the centre slice
      holds foreground), else a random voxel of the region (inside the volume);
    * slab: ``slab`` axial slices centred on it, indices clamped at the volume's ends (edge
      slices replicated, I-15); in-plane P×P patch, zero outside the volume;
    * label: the centre slice's mask, values {0, 1};
    * augmentation (``recipe.augment``, on by default): in-plane rotation uniform in ±10°
      (linear for the image, nearest for the label), independent flips along y and x,
      intensity ``v * s + t`` with s uniform in [0.9, 1.1] and t uniform in ±10% of 255.

    With ``region="label_box"`` only the part of each case a patch can reach is kept (copied),
    so the PreparedCase objects can be released after construction.
    """

    def __init__(self, cases: Sequence[PreparedCase], recipe: DataRecipe | None = None, seed: int = 0) -> None:
        self.recipe = (recipe or DataRecipe()).check()
        if not cases:
            raise InputError("No prepared cases to sample training patches from.")
        if seed < 0:
            raise ConfigError(f"seed must be ≥ 0, got {seed}.")
        self.seed = int(seed)
        self.ids = [c.id for c in cases]
        self._entries = [self._entry(c) for c in cases]
        self._order_cache: tuple[int, np.ndarray] | None = None

    def _entry(self, case: PreparedCase) -> _Entry:
        r = self.recipe
        shape = np.array(case.image.shape)
        spacing = case.image.spacing_zyx
        mask = case.mask.array
        bounds = _label_bounds(mask)
        if bounds is None and r.region == "label_box":
            raise InputError(f"Case '{case.id}' has an empty label; a 'label_box' region needs a labelled prostate.")
        lo, hi = np.zeros(3, int), shape - 1
        if r.region == "label_box":  # keep only what a patch can reach: saves memory
            reach = np.ceil(r.margin_mm[1] / spacing) + 1
            half = r.patch / 2 * (math.sqrt(2) if r.augment else 1.0) + 2
            reach += np.array([r.slab // 2, half, half])
            lo = np.maximum(bounds[0] - reach, 0).astype(int)
            hi = np.minimum(bounds[1] + reach, shape - 1).astype(int)
        sl = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
        return _Entry(np.ascontiguousarray(case.image.array[sl], dtype=np.float32),
                      np.ascontiguousarray(mask[sl], dtype=np.uint8), lo, shape, spacing, bounds,
                      np.argwhere(mask > 0).astype(np.int32))

    def __len__(self) -> int:
        """Items per epoch: ``per_case`` × number of cases."""
        return self.recipe.per_case * len(self._entries)

    def _order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch, 1]).permutation(len(self))
            self._order_cache = (epoch, perm // self.recipe.per_case)
        return self._order_cache[1]

    def case_of(self, index: int) -> int:
        """Which case (position in ``cases``) item ``index`` is drawn from."""
        epoch, i = divmod(int(index), len(self))
        return int(self._order(epoch)[i])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if index < 0:
            raise IndexError(f"index must be ≥ 0, got {index}")
        e = self._entries[self.case_of(index)]
        r = self.recipe
        rng = np.random.default_rng([self.seed, index, 0])
        if r.region == "label_box":
            rlo, rhi = _label_region(*e.bounds, e.spacing, r.margin_mm, rng)
            a = np.clip(np.ceil(rlo), 0, e.shape - 1).astype(int)
            b = np.clip(np.floor(rhi), 0, e.shape - 1).astype(int)
        else:
            a, b = np.zeros(3, int), e.shape - 1
        if len(e.fg) and rng.random() < r.fg_fraction:
            centre = e.fg[rng.integers(len(e.fg))].astype(int)
        else:
            centre = rng.integers(a, np.maximum(b, a) + 1)
        image, label = self._sample(e, centre, rng)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label.astype(np.int64))}

    def _sample(self, e: _Entry, centre: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        r = self.recipe
        off = np.arange(r.patch, dtype=float) - r.patch // 2
        dy, dx = np.meshgrid(off, off, indexing="ij")
        if r.augment:
            t = math.radians(rng.uniform(-10.0, 10.0))
            flip_y, flip_x = rng.random(2) < 0.5
            scale, shift = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1) * 255.0
            dy, dx = math.cos(t) * dy - math.sin(t) * dx, math.sin(t) * dy + math.cos(t) * dx
        y, x = dy + (centre[1] - e.offset[1]), dx + (centre[2] - e.offset[2])
        zs = np.clip(centre[0] + np.arange(r.slab) - r.slab // 2, 0, e.shape[0] - 1) - e.offset[0]
        image = _bilinear(e.image, zs, y, x)
        label = _nearest(e.mask, centre[0] - e.offset[0], y, x)
        if r.augment:
            if flip_y:
                image, label = image[:, ::-1], label[::-1]
            if flip_x:
                image, label = image[:, :, ::-1], label[:, ::-1]
            image = image * np.float32(scale) + np.float32(shift)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)


def _window(a: np.ndarray, zs: np.ndarray, ylo: int, yhi: int, xlo: int, xhi: int) -> np.ndarray:
    """``a[zs, ylo:yhi+1, xlo:xhi+1]`` with zeros where the window leaves the array."""
    out = np.zeros((len(zs), yhi - ylo + 1, xhi - xlo + 1), a.dtype)
    y0, y1, x0, x1 = max(ylo, 0), min(yhi, a.shape[1] - 1), max(xlo, 0), min(xhi, a.shape[2] - 1)
    if y0 <= y1 and x0 <= x1:
        out[:, y0 - ylo: y1 - ylo + 1, x0 - xlo: x1 - xlo + 1] = a[zs, y0: y1 + 1, x0: x1 + 1]
    return out


def _bilinear(a: np.ndarray, zs: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear samples of slices ``a[zs]`` at in-plane points (y, x) (each (P, P)), zero
    outside the array (as ``map_coordinates(order=1, mode="grid-constant")``, much faster for
    small patches): float32 (len(zs), P, P); integer points are copied exactly."""
    y0, x0 = np.floor(y), np.floor(x)
    wy, wx = (y - y0).astype(np.float32), (x - x0).astype(np.float32)
    y0, x0 = y0.astype(np.intp), x0.astype(np.intp)
    ylo, xlo = int(y0.min()), int(x0.min())
    win = _window(a, np.asarray(zs), ylo, int(y0.max()) + 1, xlo, int(x0.max()) + 1).astype(np.float32, copy=False)
    w = win.shape[2]
    flat, idx = win.reshape(len(win), -1), (y0 - ylo) * w + (x0 - xlo)
    if not (wx.any() or wy.any()):  # integer points (no rotation): a plain copy
        return np.take(flat, idx, axis=1)
    top = np.take(flat, idx, axis=1) * (1 - wx) + np.take(flat, idx + 1, axis=1) * wx
    bottom = np.take(flat, idx + w, axis=1) * (1 - wx) + np.take(flat, idx + w + 1, axis=1) * wx
    return top * (1 - wy) + bottom * wy


def _nearest(a: np.ndarray, z: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Nearest-neighbour samples of slice ``a[z]`` at (y, x), zero outside: (P, P)."""
    yi, xi = np.rint(y).astype(np.intp), np.rint(x).astype(np.intp)
    ylo, xlo = int(yi.min()), int(xi.min())
    win = _window(a, np.array([z]), ylo, int(yi.max()), xlo, int(xi.max()))[0]
    return np.take(win.ravel(), (yi - ylo) * win.shape[1] + (xi - xlo))


# ---- loaders and whole-slice inference -------------------------------------------------------
class IndexStream(Sampler[int]):
    """Global item indices ``start + k * world_size + rank`` for k = 0, 1, … (``count`` items,
    or without end when None). With :class:`SlabPatchDataset` the index encodes the epoch, so
    resuming at item ``start`` reproduces the original stream exactly."""

    def __init__(self, start: int = 0, count: int | None = None, rank: int = 0, world_size: int = 1,
                 modulo: int | None = None) -> None:
        if start < 0 or not 0 <= rank < world_size:
            raise ConfigError(f"bad sampler settings: start={start}, rank={rank}, world_size={world_size}.")
        self.start, self.count, self.rank, self.world_size, self.modulo = start, count, rank, world_size, modulo

    def __iter__(self) -> Iterator[int]:
        k = 0
        while self.count is None or k < self.count:
            g = self.start + k * self.world_size + self.rank
            yield g % self.modulo if self.modulo else g
            k += 1

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("an endless IndexStream has no length")
        return self.count


def _seed_worker(worker_id: int) -> None:
    """Seed numpy / random in each worker from torch's per-worker seed (items of
    SlabPatchDataset do not depend on it; other datasets may)."""
    import random

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset: Dataset, batch_size: int, device: torch.device | str = "cpu", workers: int = 0, *,
                start_item: int = 0, num_items: int | None = None, seed: int = 0, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    """A DataLoader over ``dataset`` items ``start_item, start_item + 1, …`` (``num_items`` of
    them, endless when None; with DDP rank r takes every ``world_size``-th item).

    Resume exactly after ``n`` batches with ``start_item = n * batch_size * world_size``.
    ``workers`` > 0 uses persistent worker processes; memory is pinned when ``device`` is CUDA.
    Datasets other than :class:`SlabPatchDataset` get indices modulo their length.
    """
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch_size must be ≥ 1 and workers ≥ 0, got {batch_size} and {workers}.")
    modulo = None if isinstance(dataset, SlabPatchDataset) else len(dataset)  # type: ignore[arg-type]
    count = None if num_items is None else int(math.ceil(num_items / world_size))
    sampler = IndexStream(start_item, count, rank, world_size, modulo)
    kwargs: dict = {}
    if workers > 0:
        kwargs = dict(persistent_workers=True, worker_init_fn=_seed_worker, prefetch_factor=4)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda", generator=torch.Generator().manual_seed(seed),
                      **kwargs)


def whole_slices(volume: np.ndarray | torch.Tensor, slab: int) -> np.ndarray | torch.Tensor:
    """Slabs for whole-slice inference: (Z, Y, X) → (Z, slab, Y, X), slab ``k`` holding slices
    ``k - slab//2 … k + slab//2`` with the end slices replicated beyond the volume (I-15).

    NumPy input gives a read-only strided view (no copy; ``np.ascontiguousarray`` a batch of it
    before ``torch.from_numpy``); a tensor input gives a new tensor on the same device.
    """
    if slab < 1 or slab % 2 == 0:
        raise ConfigError(f"slab must be an odd number of slices ≥ 1, got {slab}.")
    if volume.ndim != 3:
        raise InputError(f"whole_slices expects a (Z, Y, X) volume, got shape {tuple(volume.shape)}.")
    h = slab // 2
    if isinstance(volume, torch.Tensor):
        z = volume.shape[0]
        idx = (torch.arange(z, device=volume.device)[:, None] + torch.arange(-h, h + 1, device=volume.device)).clamp(0, z - 1)
        return volume[idx]
    padded = np.pad(np.asarray(volume), ((h, h), (0, 0), (0, 0)), mode="edge")
    view = np.lib.stride_tricks.sliding_window_view(padded, slab, axis=0)  # (Z, Y, X, slab)
    return np.moveaxis(view, -1, 1)
