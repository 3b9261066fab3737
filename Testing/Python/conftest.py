"""Shared pytest fixtures: the real-data folder and a real Slicer MRML scene (slicer-core)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("VOXMETRIC_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real MR with labels, a real pelvic CT); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set VOXMETRIC_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def mrml_scene():
    """A fresh real MRML scene with the module logics Slicer's application would wire up.

    Skips when the ``slicer-core`` wheel is not installed. Sets ``slicer.mrmlScene`` so that
    ``slicer.util`` array helpers work.
    """
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    logics = {}
    for name, cls in (
        ("Colors", "vtkSlicerColorLogic"),
        ("Volumes", "vtkSlicerVolumesLogic"),
        ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
        ("CropVolume", "vtkSlicerCropVolumeLogic"),
        ("Markups", "vtkSlicerMarkupsLogic"),
        ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ):
        logic = getattr(slicer, cls)()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    scene._voxmetric_logics = logics  # keep Python references alive for the test's duration
    scene._voxmetric_app = app
    yield scene
    slicer.mrmlScene = previous
    scene.Clear(1)
