"""Qt-free part of the VoxMetricTrain module: the training logic and the self-test body, run by
Slicer and by pytest on a slicer-core scene."""

from .logic import CasePair, TrainLogic, Update, export_cases, pairs_from_scene

__all__ = ["CasePair", "TrainLogic", "Update", "export_cases", "pairs_from_scene"]
