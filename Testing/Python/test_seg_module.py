"""The VoxMetricSeg self-test body on a real slicer-core scene (the same function Slicer runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "VoxMetricSeg"))


@pytest.mark.mrml
@pytest.mark.slow
def test_localize_move_refine(mrml_scene):
    from VoxMetricSegLib import SegmentLogic
    from VoxMetricSegLib.selftest import MIN_DICE, run_localize_move_refine

    result = run_localize_move_refine(mrml_scene, SegmentLogic(python=sys.executable))
    assert result["dice"] >= MIN_DICE
