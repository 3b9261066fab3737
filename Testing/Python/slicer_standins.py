"""Stand-ins for the parts of Slicer that the ``slicer-core`` wheel lacks (placeholder)."""

from __future__ import annotations

from typing import Any


def new_mrml_scene() -> Any:
    """A real MRML scene with the module logics Slicer's application wires up (Colors, Volumes,
    Segmentations, CropVolume, Markups, SubjectHierarchy); the logics stay alive with the scene."""
    import slicer

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
    scene._voxmetric_logics = logics  # keep Python references alive for the scene's lifetime
    scene._voxmetric_app = app
    return scene
