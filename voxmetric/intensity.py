"""Intensity normalisation and body masks (METHODS.md §2.2, items I-08 and I-09).

All normalisers return float32 arrays in [0, 255] of the input's shape.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .errors import ConfigError, InputError
from .volume import Box, Volume

CT_BODY_HU = -500.0
MR_MIN_PIECE = 0.05  # MR body: pieces above Otsu's threshold of at least this fraction of the largest


def normalize_ct(array: np.ndarray, window: tuple[float, float] = (-200.0, 250.0)) -> np.ndarray:
    """Clip Hounsfield units to ``window`` (low, high) and map linearly to [0, 255]."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ConfigError(f"The CT window must have low < high, got {window}.")
    a = np.clip(np.asarray(array, dtype=np.float32), lo, hi)
    return ((a - lo) * (255.0 / (hi - lo))).astype(np.float32)


def normalize_mr(array: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5),
                 mask: np.ndarray | None = None) -> np.ndarray:
    """Clip at the ``percentiles`` of the volume (or of the voxels in ``mask``) and map
    linearly to [0, 255]. A constant image maps to 0."""
    a = np.asarray(array, dtype=np.float32)
    sample = a[np.asarray(mask, bool)] if mask is not None else a
    if sample.size == 0:
        raise InputError("The intensity mask is empty; cannot compute MR percentiles.")
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        return np.zeros_like(a)
    return ((np.clip(a, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.float32)


def _modality(modality: str) -> str:
    m = str(modality).lower()
    if m not in ("ct", "mr"):
        raise ConfigError(f"Unknown modality {modality!r}; use 'ct' or 'mr'.")
    return m


def normalize(array: np.ndarray, modality: str) -> np.ndarray:
    """CT: HU window (-200, 250); MR: 0.5/99.5 percentiles. float32 in [0, 255]."""
    return normalize_ct(array) if _modality(modality) == "ct" else normalize_mr(array)


def body_mask(vol: Volume, modality: str) -> np.ndarray:
    """Boolean body mask (z, y, x), holes filled slice by slice (along z). CT: the largest 3D
    connected component above -500 HU (the table and other objects are left out). MR: every
    component above Otsu's threshold of at least 5 % of the largest one's size — on T2 the bright
    tissue (fat, fluid) falls apart into pieces around dark muscle, and the largest alone (a band of
    fat on phantom a-MR 5103) can leave the prostate outside its box."""
    a = np.asarray(vol.array, dtype=np.float32)
    if _modality(modality) == "ct":
        fg = a > CT_BODY_HU
    else:
        fg = sitk.GetArrayFromImage(sitk.OtsuThreshold(sitk.GetImageFromArray(a), 0, 1)).astype(bool)
    from .morphology import fill_holes_slices, label  # scipy.ndimage's semantics, without its import time

    labels, n = label(fg)
    if n == 0:
        what = f"above {CT_BODY_HU:g} HU (is this CT in Hounsfield units?)" if modality.lower() == "ct" else "above the Otsu threshold"
        raise InputError(f"No body found: no voxel is {what}. Check the image and its modality.")
    sizes = np.bincount(labels.ravel())[1:]
    if _modality(modality) == "ct":
        body = labels == np.argmax(sizes) + 1
    else:
        body = np.isin(labels, np.flatnonzero(sizes >= MR_MIN_PIECE * sizes.max()) + 1)
    return fill_holes_slices(body)


def body_box(vol: Volume, modality: str, margin_mm: float = 5.0) -> Box:
    """Box aligned with ``vol``'s axes around :func:`body_mask`, grown by ``margin_mm`` and
    clipped to the image extent."""
    idx = np.argwhere(body_mask(vol, modality))[:, ::-1]  # (n, 3) as (x, y, z)
    margin = margin_mm / vol.spacing
    lo = np.maximum(idx.min(0) - 0.5 - margin, -0.5)
    hi = np.minimum(idx.max(0) + 0.5 + margin, vol.size_xyz - 0.5)
    center = vol.index_to_physical((lo + hi) / 2.0)
    return Box(center, (hi - lo) * vol.spacing, vol.direction)


def looks_like_ct(array: np.ndarray) -> bool:
    """True when values look like Hounsfield units: air (≤ -500) at the 1st percentile and a
    median in the air-to-soft-tissue range [-1100, 500]."""
    a = np.asarray(array)
    a = a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a.ravel()
    if a.size == 0:
        return False
    p1, med = np.percentile(a, [1.0, 50.0])
    return bool(p1 <= -500 and -1100 <= med <= 500)
