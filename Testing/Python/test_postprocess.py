"""voxmetric.postprocess: the labels of class probabilities and their clean-up, the one rule that
``segment`` and validation share."""

from __future__ import annotations

import numpy as np

from voxmetric.postprocess import clean, labels_from_probs


def test_labels_take_the_threshold_on_the_summed_foreground_then_the_likeliest_class() -> None:
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.2, 0.4, 0.4]], np.float32).reshape(3, 1, 1, 3)
    # voxel 0: foreground 0.4 < 0.5 -> 0; voxel 1: class 2 (0.4 > 0.3); voxel 2: class 1 (0.5 > 0.4)
    assert labels_from_probs(p).ravel().tolist() == [0, 2, 1]


def test_clean_keeps_the_largest_piece_and_the_pieces_stage1_saw() -> None:
    m = np.zeros((12, 12, 12), np.uint8)
    m[1:5, 2:9, 2:9] = 1  # the largest piece, with a hole
    m[3, 5, 5] = 0
    m[6:8, 3:7, 3:7] = 1  # a smaller piece one empty slice away (a slice the refiner missed)
    m[10:12, 0:2, 0:2] = 1  # a stray piece
    out = clean(m)
    assert out[1:5].sum() == 4 * 49 and not out[6:].any()  # largest, hole filled; the rest dropped
    seen = np.zeros(m.shape, bool)
    seen[2:8, 4:6, 4:6] = True  # stage 1's region spans both halves of the gland, not the stray piece
    out = clean(m, seen=seen)
    assert out[1:5].sum() == 4 * 49 and out[6:8].sum() == 2 * 16 and not out[10:].any()
    assert (clean(m, largest=False, fill_holes=False) == m).all()
    inside = np.zeros(m.shape, bool)
    inside[:, :, :5] = True  # a hole outside the allowed region is not filled
    hole = clean(m, inside=inside)
    assert hole[3, 5, 5] == 0 and hole[1:5].sum() == 4 * 49 - 1
