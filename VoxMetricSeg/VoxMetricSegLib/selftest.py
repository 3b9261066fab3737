"""The VoxMetricSeg self-test body. Slicer's ScriptedLoadableModuleTest calls it on
``slicer.mrmlScene``; pytest calls it on a slicer-core scene (Testing/Python/test_seg_module.py)."""

from __future__ import annotations

import numpy as np

from voxmetric import mrml
from voxmetric.metrics import evaluate_masks
from voxmetric.phantom import LABELS, make_case
from voxmetric.volume import Box

from .logic import SegmentLogic

PROSTATE_SNOMED = "41216001"


def run_localize_move_refine(scene, logic: SegmentLogic, seed: int = 1234, shift_mm: float = 5.0,
                             min_dice: float = 0.8) -> dict:
    """Load a CT phantom → Localize → the ROI holds the true centroid → move the ROI by
    ``shift_mm`` → Refine → a "Prostate" segment with SNOMED terminology and Dice ≥ ``min_dice``.

    Returns the measured numbers; raises AssertionError on failure.
    """
    case = make_case(seed, "ct")
    volume_node = mrml.node_from_volume(scene, case.image, "VoxMetric CT phantom")
    truth = (case.labels.array == LABELS["Prostate"]).astype(np.uint8)
    centroid = case.image.index_to_physical(np.argwhere(truth).mean(axis=0)[::-1])

    localized = logic.run("localize", scene, volume_node)
    assert localized.found, "the localizer found no prostate in the phantom"
    assert localized.roi_node is not None, "Localize made no ROI node"
    box = mrml.box_from_roi(localized.roi_node)
    assert box.contains(centroid), f"ROI {box.center} ± {box.size / 2} misses the centroid {centroid}"

    moved = Box(box.center + box.axes[:, 0] * shift_mm, box.size, box.axes)
    roi_node = mrml.roi_from_box(scene, moved, "Prostate ROI", node=localized.roi_node)
    np.testing.assert_allclose(mrml.box_from_roi(roi_node).center, moved.center, atol=1e-3)

    refined = logic.run("refine", scene, volume_node, roi_node=roi_node)
    seg_node = refined.segmentation_node
    segment = seg_node.GetSegmentation().GetSegment(refined.segment_id)
    assert segment.GetName() == "Prostate", segment.GetName()
    tag = segment.GetTerminology()
    assert PROSTATE_SNOMED in tag, f"segment terminology {tag!r} lacks SNOMED CT {PROSTATE_SNOMED}"
    predicted = mrml.mask_from_segment(seg_node, "Prostate", volume_node).array
    scores = evaluate_masks(predicted, truth, case.image.spacing_zyx)
    assert scores["dsc"] >= min_dice, f"Dice {scores['dsc']:.3f} < {min_dice}"
    logic.cleanup()
    return {"dice": scores["dsc"], "hd95": scores["hd95"], "localize": localized.timings,
            "refine": refined.timings}

