"""Connected components and hole filling on SimpleITK, with scipy.ndimage's exact semantics.

``voxmetric segment`` needs only these three operations, and importing ``scipy.ndimage`` costs
more than a second of start-up on a small CPU (it pulls in ``scipy.special`` and the array-API
layer), so the inference path uses these instead; the results are the same voxels
(``Testing/Python/test_morphology.py`` compares them with scipy).

- :func:`label`: components with face (6 in 3D, 4 in 2D) or full (26 / 8) connectivity, numbered
  in raster order like ``ndimage.label``;
- :func:`largest_component`: the largest of them (the first in raster order on a tie);
- :func:`fill_holes`: ``ndimage.binary_fill_holes`` with its default structure (background
  regions not face-connected to the array border are filled); :func:`fill_holes_slices` does it
  per slice along axis 0.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def label(mask: np.ndarray, full: bool = False) -> tuple[np.ndarray, int]:
    """(int32 labels 1…n in raster order, n) of the True voxels of a 2D/3D boolean array;
    ``full``: edge and corner neighbours connect too."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if not m.any():
        return np.zeros(m.shape, np.int32), 0
    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(m), bool(full))
    labels = sitk.GetArrayFromImage(cc).astype(np.int32, copy=False)
    n = int(labels.max())
    # renumber in raster order of each component's first voxel (scipy's order)
    flat = labels.ravel()
    nz = np.flatnonzero(flat)
    first = np.full(n + 1, flat.size, np.int64)
    np.minimum.at(first, flat[nz], nz)
    order = np.argsort(first[1:], kind="stable") + 1
    lut = np.zeros(n + 1, np.int32)
    lut[order] = np.arange(1, n + 1, dtype=np.int32)
    return lut[labels], n


def largest_component(mask: np.ndarray, full: bool = True) -> np.ndarray:
    """Boolean: the largest component of ``mask`` (26-connected by default; all False when empty)."""
    labels, n = label(mask, full)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Boolean: ``mask`` with every background region that is not face-connected to the array's
    border filled (``scipy.ndimage.binary_fill_holes`` with its default structure)."""
    m = np.asarray(mask, dtype=bool)
    bg, n = label(~m, full=False)
    if n == 0:
        return m.copy()
    outside = np.zeros(n + 1, bool)
    for axis in range(m.ndim):
        for end in (0, -1):
            outside[np.take(bg, end, axis=axis).ravel()] = True
    outside[0] = True  # foreground stays
    return m | ~outside[bg]


def fill_holes_slices(mask: np.ndarray) -> np.ndarray:
    """:func:`fill_holes` of each slice along axis 0 (2D, 4-connected background)."""
    m = np.asarray(mask, dtype=bool)
    return np.stack([fill_holes(s) for s in m]) if m.ndim == 3 else fill_holes(m)


__all__ = ["fill_holes", "fill_holes_slices", "label", "largest_component"]
