"""Qt-free part of the VoxMetricSeg module: the logic and the self-test body, run by Slicer and by
pytest on a slicer-core scene."""

from .logic import SegmentLogic, StageResult

__all__ = ["SegmentLogic", "StageResult"]
