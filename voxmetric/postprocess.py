"""From class probabilities to a cleaned label map — the one rule that ``segment`` and the
trainer's validation share (so a validation Dice is what ``segment`` gives).

A voxel is foreground when its summed foreground probability ``p_1 + … + p_{C-1}`` reaches the
threshold (0.5), and then takes its most likely foreground class; with two classes this is
exactly ``p_1 ≥ threshold``. Cleaning keeps each class's largest 26-connected component — in the
pipeline also every other one that touches the region stage 1 found, so that a gland a 2.5D refiner
split (a slice it missed) stays whole — and fills its holes (both optional).
"""

from __future__ import annotations

import numpy as np

from . import morphology  # scipy.ndimage's label / binary_fill_holes on SimpleITK (fast import)


def ranked_components(prob: np.ndarray, threshold: float = 0.5, min_voxels: int = 1,
                      limit: int | None = None) -> list[np.ndarray]:
    """Boolean masks of the 26-connected components of ``prob > threshold``, those of at least
    ``min_voxels`` voxels by falling mean probability, then the smaller ones likewise (the first
    ``limit``; an empty list when there are none). A localizer's detections, most confident first: on a real abdomen–pelvis CT a
    larger but less certain response higher up (bowel, vessels) must not win over the gland."""
    labels, n = morphology.label(np.asarray(prob) > threshold, full=True)
    if n == 0:
        return []
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=n + 1)[1:]
    means = np.bincount(flat, weights=np.asarray(prob, np.float64).ravel(), minlength=n + 1)[1:] / np.maximum(sizes, 1)
    order = sorted(range(n), key=lambda i: (sizes[i] < min_voxels, -means[i]))
    return [labels == i + 1 for i in order[:limit]]


def labels_from_foreground(fg: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 label map (Z, Y, X) of the foreground class probabilities (K, Z, Y, X) — classes
    1 … K, the background left out (see the module rule)."""
    if fg.shape[0] == 1:
        return (fg[0] >= threshold).astype(np.uint8)
    return np.where(fg.sum(0) >= threshold, np.argmax(fg, axis=0) + 1, 0).astype(np.uint8)


def labels_from_probs(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 label map (Z, Y, X) of class probabilities (C, Z, Y, X), C ≥ 2."""
    return labels_from_foreground(probs[1:], threshold)


def clean(labels: np.ndarray, largest: bool = True, fill_holes: bool = True,
          inside: np.ndarray | None = None, seen: np.ndarray | None = None) -> np.ndarray:
    """Per class: its largest component (``largest``), with every other component that touches
    ``seen`` (boolean, same shape: where stage 1 found the organ), and holes filled
    (``fill_holes``), never growing outside ``inside`` (boolean, same shape) nor over another
    class's voxels."""
    out = np.asarray(labels).copy()
    for k in (int(v) for v in np.unique(out) if v):
        m = out == k
        if largest:
            lab, n = morphology.label(m, full=True)
            if n > 1:
                sizes = np.bincount(lab.ravel())
                sizes[0] = 0
                kept = [int(np.argmax(sizes)), *(np.unique(lab[seen & m]) if seen is not None else ())]
                out[m & ~np.isin(lab, kept)] = 0
                m = out == k
        if fill_holes:
            grow = morphology.fill_holes(m) & (out == 0)
            if inside is not None:
                grow &= inside
            out[grow] = k
    return out
