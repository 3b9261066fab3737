"""ROI files: our .mrk.json round trip, and Slicer's own ROI storage node reading/writing them."""

from __future__ import annotations

import numpy as np
import pytest

from voxmetric.errors import InputError
from voxmetric.markups import read_roi, write_roi
from voxmetric.volume import Box


def _rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_roi_round_trip(tmp_path):
    box = Box([1.5, -20, 33], [40, 50, 60], _rot_z(30))
    back = read_roi(write_roi(box, tmp_path / "r.mrk.json"))
    np.testing.assert_allclose(back.center, box.center)
    np.testing.assert_allclose(back.size, box.size)
    np.testing.assert_allclose(back.axes, box.axes)


def test_roi_errors(tmp_path):
    (tmp_path / "bad.mrk.json").write_text("{not json")
    with pytest.raises(InputError, match="Cannot read the ROI"):
        read_roi(tmp_path / "bad.mrk.json")
    (tmp_path / "pts.mrk.json").write_text('{"markups": [{"type": "Fiducial"}]}')
    with pytest.raises(InputError, match="no ROI"):
        read_roi(tmp_path / "pts.mrk.json")


@pytest.mark.mrml
def test_slicer_reads_and_writes_our_roi(mrml_scene, tmp_path):
    import slicer

    box = Box([10, -20, 30], [40, 50, 60], _rot_z(30))
    write_roi(box, tmp_path / "ours.mrk.json")
    node = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROIJsonStorageNode")
    storage.SetFileName(str(tmp_path / "ours.mrk.json"))
    assert storage.ReadData(node)
    center_ras = [0.0, 0.0, 0.0]
    node.GetCenterWorld(center_ras)
    np.testing.assert_allclose(center_ras, [-10, 20, 30], atol=1e-6)  # LPS → RAS
    np.testing.assert_allclose(node.GetSize(), [40, 50, 60], atol=1e-6)
    m = node.GetObjectToWorldMatrix()
    axes_ras = np.array([[m.GetElement(i, j) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(np.diag([-1, -1, 1]) @ axes_ras, box.axes, atol=1e-6)

    storage.SetFileName(str(tmp_path / "slicer.mrk.json"))
    assert storage.WriteData(node)
    back = read_roi(tmp_path / "slicer.mrk.json")
    np.testing.assert_allclose(back.center, box.center, atol=1e-6)
    np.testing.assert_allclose(back.axes, box.axes, atol=1e-6)
    assert slicer is not None
