"""voxmetric.mrml against real MRML nodes (slicer-core): volumes, ROIs, segments, transforms."""

from __future__ import annotations

import numpy as np
import pytest

from voxmetric.errors import GeometryError, InputError, SegmentNotFoundError
from voxmetric.volume import Box, Volume

pytestmark = pytest.mark.mrml
slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
vtk = pytest.importorskip("vtk")
mrml = pytest.importorskip("voxmetric.mrml")

FLIP = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS


def _rot(axis, deg: float) -> np.ndarray:
    """Rotation matrix about a unit axis (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _np(m) -> np.ndarray:
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def _vtk(a: np.ndarray):
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(a[i, j]))
    return m


def _volume(direction=np.eye(3), dtype=np.int16, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1500, size=(7, 9, 11)).astype(dtype)
    return Volume(arr, [0.7, 0.8, 2.5], [-12.5, 30.25, -101.0], direction)


def _linear_transform(scene, rotation: np.ndarray, translation) -> object:
    """A vtkMRMLLinearTransformNode (RAS) with the given rotation + translation."""
    t = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = translation
    t.SetMatrixTransformToParent(_vtk(m))
    return t


def _nonlinear_transform(scene):
    t = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    src, dst = vtk.vtkPoints(), vtk.vtkPoints()
    for p in ([0, 0, 0], [50, 0, 0], [0, 50, 0], [0, 0, 50], [30, 30, 30]):
        src.InsertNextPoint(p)
        dst.InsertNextPoint(np.add(p, [0, 0, 5.0 if p == [30, 30, 30] else 0.0]))
    tps = vtk.vtkThinPlateSplineTransform()
    tps.SetSourceLandmarks(src)
    tps.SetTargetLandmarks(dst)
    tps.SetBasisToR()
    t.SetAndObserveTransformToParent(tps)
    return t


def _assert_same_volume(a: Volume, b: Volume) -> None:
    assert a.array.dtype == b.array.dtype
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-9)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-9)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-9)


# -- volumes ---------------------------------------------------------------------------------
def test_volume_round_trip_exact(mrml_scene):
    vol = _volume()
    node = mrml.node_from_volume(mrml_scene, vol, "CT")
    assert node.IsA("vtkMRMLScalarVolumeNode") and node.GetName() == "CT"
    # Slicer stores RAS: the origin's x and y flip sign.
    np.testing.assert_allclose(node.GetOrigin(), FLIP @ vol.origin)
    np.testing.assert_allclose(node.GetSpacing(), vol.spacing)
    _assert_same_volume(mrml.volume_from_node(node), vol)
    # Updating an existing node replaces voxels and geometry.
    other = _volume(_rot([0, 0, 1], 90), np.float32, seed=1)
    assert mrml.node_from_volume(mrml_scene, other, "ignored", node=node) is node
    _assert_same_volume(mrml.volume_from_node(node), other)


def test_oblique_volume_matches_physical_coordinates(mrml_scene):
    vol = _volume(_rot([1, 2, 3], 27.0))
    node = mrml.node_from_volume(mrml_scene, vol, "oblique")
    _assert_same_volume(mrml.volume_from_node(node), vol)
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    ijk = np.array([[0, 0, 0], [10, 8, 6], [3, 5, 2], [7.5, 0.25, 4]])
    ras = (_np(ijk_to_ras) @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    np.testing.assert_allclose(ras, vol.index_to_physical(ijk) @ FLIP.T, atol=1e-9)


def test_bool_and_int64_arrays_are_stored_as_slicer_types(mrml_scene):
    base = _volume()
    node = mrml.node_from_volume(mrml_scene, base.with_array(base.array > 0), "mask")
    back = mrml.volume_from_node(node)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, base.array > 0)
    node = mrml.node_from_volume(mrml_scene, base.with_array(base.array.astype(np.int64)), "i64")
    assert mrml.volume_from_node(node).array.dtype == np.int32
    with pytest.raises(InputError, match="32-bit"):
        mrml.node_from_volume(mrml_scene, base.with_array(np.full(base.shape, 2**40)), "big")


def test_volume_under_linear_transform_is_in_world_coordinates(mrml_scene):
    vol = _volume(_rot([0, 1, 1], 15.0))
    node = mrml.node_from_volume(mrml_scene, vol, "moved")
    rotation, translation = _rot([1, 0, 0.5], 33.0), np.array([5.0, -7.0, 12.0])
    t = _linear_transform(mrml_scene, rotation, translation)
    node.SetAndObserveTransformNodeID(t.GetID())
    world = mrml.volume_from_node(node)
    np.testing.assert_array_equal(world.array, vol.array)
    np.testing.assert_allclose(world.spacing, vol.spacing, atol=1e-9)
    # Every voxel centre: world RAS = T · IJKToRAS · ijk; the Volume gives it in LPS.
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    tm = np.eye(4)
    tm[:3, :3], tm[:3, 3] = rotation, translation
    ijk = np.array([[0, 0, 0], [10, 8, 6], [2, 7, 1]], float)
    expected_ras = (tm @ _np(ijk_to_ras) @ np.c_[ijk, np.ones(3)].T).T[:, :3]
    np.testing.assert_allclose(world.index_to_physical(ijk), expected_ras @ FLIP, atol=1e-9)
    # Writing the world volume back into the transformed node keeps it where it was.
    mrml.node_from_volume(mrml_scene, world, "moved", node=node)
    _assert_same_volume(mrml.volume_from_node(node), world)
    local = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(local)
    np.testing.assert_allclose(_np(local), _np(ijk_to_ras), atol=1e-9)


def test_nonlinear_transform_and_bad_nodes_raise(mrml_scene):
    node = mrml.node_from_volume(mrml_scene, _volume(), "warped")
    node.SetAndObserveTransformNodeID(_nonlinear_transform(mrml_scene).GetID())
    with pytest.raises(InputError, match="non-linear transform 'warp'.*Harden"):
        mrml.volume_from_node(node)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no voxels"):
        mrml.volume_from_node(empty)
    with pytest.raises(InputError, match="scalar volume"):
        mrml.volume_from_node(mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "r"))


# -- ROIs ------------------------------------------------------------------------------------
def test_rotated_box_roi_round_trip(mrml_scene):
    box = Box([10.0, -25.0, 40.0], [30.0, 45.0, 20.0], _rot([1, 1, 0], 35.0))
    roi = mrml.roi_from_box(mrml_scene, box, "Prostate ROI")
    assert roi.IsA("vtkMRMLMarkupsROINode")
    back = mrml.box_from_roi(roi)
    np.testing.assert_allclose(back.center, box.center, atol=1e-9)
    np.testing.assert_allclose(back.size, box.size, atol=1e-9)
    np.testing.assert_allclose(back.corners, box.corners, atol=1e-9)
    # Slicer's own view of the ROI: its control point is the centre (RAS).
    np.testing.assert_allclose(roi.GetNthControlPointPositionWorld(0), FLIP @ box.center, atol=1e-9)
    # Updating moves the same node.
    moved = Box([0.0, 0.0, 0.0], [5.0, 6.0, 7.0])
    assert mrml.roi_from_box(mrml_scene, moved, "x", node=roi) is roi
    np.testing.assert_allclose(mrml.box_from_roi(roi).corners, moved.corners, atol=1e-9)


def _slicer_style_roi(scene, center_ras, radius, rotation_ras):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn")
    roi.SetXYZ(*center_ras)
    roi.SetRadiusXYZ(*radius)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rotation_ras, center_ras
    roi.SetAndObserveObjectToNodeMatrix(_vtk(m))
    return roi


def _roi_world_corners_lps(roi) -> np.ndarray:
    """The ROI's 8 corners from Slicer's ObjectToWorld matrix and world size, in LPS."""
    m = _np(roi.GetObjectToWorldMatrix())
    half = np.zeros(3)
    roi.GetSizeWorld(half)
    half /= 2
    signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], float)
    ras = (m @ np.c_[signs * half, np.ones(8)].T).T[:, :3]
    return ras @ FLIP


def test_slicer_made_rotated_roi_gives_its_world_corners(mrml_scene):
    center, radius, rotation = [12.0, -3.0, 50.0], [10.0, 15.0, 8.0], _rot([0.2, 1, 0.3], 40.0)
    roi = _slicer_style_roi(mrml_scene, center, radius, rotation)
    box = mrml.box_from_roi(roi)
    np.testing.assert_allclose(box.size, 2 * np.asarray(radius), atol=1e-9)
    np.testing.assert_allclose(roi.GetNthControlPointPositionWorld(0), center, atol=1e-9)
    np.testing.assert_allclose(box.center, FLIP @ center, atol=1e-9)
    np.testing.assert_allclose(box.corners, _roi_world_corners_lps(roi), atol=1e-9)
    # Independent check: corners from centre ± rotated radius (the ROI is not axis-aligned).
    signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], float)
    ras = np.asarray(center) + (signs * radius) @ rotation.T
    np.testing.assert_allclose(box.corners, ras @ FLIP, atol=1e-9)
    assert not np.allclose(box.axes, np.eye(3), atol=0.1)


def test_roi_under_linear_transform(mrml_scene):
    rotation, translation = _rot([0, 0, 1], 25.0), [4.0, 9.0, -6.0]
    t = _linear_transform(mrml_scene, rotation, translation)
    roi = _slicer_style_roi(mrml_scene, [1.0, 2.0, 3.0], [5.0, 6.0, 7.0], _rot([1, 0, 0], 20.0))
    local = mrml.box_from_roi(roi)
    roi.SetAndObserveTransformNodeID(t.GetID())
    world = mrml.box_from_roi(roi)
    expected = (FLIP @ (rotation @ (FLIP @ local.corners.T)) + FLIP @ np.c_[translation]).T
    np.testing.assert_allclose(world.corners, expected, atol=1e-9)
    np.testing.assert_allclose(world.corners, _roi_world_corners_lps(roi), atol=1e-9)
    # Writing a world box into the transformed node puts it there in world coordinates.
    target = Box([-5.0, 8.0, 20.0], [12.0, 14.0, 16.0], _rot([1, 1, 1], 10.0))
    mrml.roi_from_box(mrml_scene, target, "x", node=roi)
    np.testing.assert_allclose(mrml.box_from_roi(roi).corners, target.corners, atol=1e-9)
    roi.SetAndObserveTransformNodeID(_nonlinear_transform(mrml_scene).GetID())
    with pytest.raises(InputError, match="non-linear"):
        mrml.box_from_roi(roi)


# -- segments --------------------------------------------------------------------------------
def _mask_for(vol: Volume, lo=(1, 2, 3), hi=(5, 7, 9)) -> np.ndarray:
    m = np.zeros(vol.shape, np.uint8)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    m[2, 3, 4] = 0  # a hole, so the round trip is not just a box
    return m


def _volume_in_study(scene, vol: Volume):
    node = mrml.node_from_volume(scene, vol, "MR")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Study 1")
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, study)
    else:  # bare MRML: Slicer's application would have made the item
        sh.CreateItem(study, node)
    return node, sh, study


def test_mask_segment_round_trip_terminology_reference_and_hierarchy(mrml_scene):
    vol = _volume(_rot([1, 2, 3], 27.0))
    node, sh, study = _volume_in_study(mrml_scene, vol)
    mask = vol.with_array(_mask_for(vol))
    seg_node, sid = mrml.write_mask_segment(None, mask, node)
    assert seg_node.IsA("vtkMRMLSegmentationNode")
    segment = seg_node.GetSegmentation().GetSegment(sid)
    assert segment.GetName() == "Prostate"
    # SNOMED CT Prostate terminology in Slicer's serialisation, and the fixed colour.
    tag = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    tag = str(tag)
    assert tag == segment.GetTerminology() == mrml.PROSTATE_TERMINOLOGY
    assert "SCT^41216001^Prostate" in tag and "SCT^123037004^Anatomical Structure" in tag
    np.testing.assert_allclose(segment.GetColor(), mrml.PROSTATE_COLOR)
    # Reference geometry = the input volume (needed for DICOM SEG export).
    assert seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole()) is node
    assert seg_node.GetSegmentation().GetConversionParameter("Reference image geometry")
    # Same study as the input volume.
    assert sh.GetItemParent(sh.GetItemByDataNode(seg_node)) == study
    # Exact voxel round trip, on the volume's (oblique) grid.
    back = mrml.mask_from_segment(seg_node, "prostate", node)
    assert back.array.dtype == np.uint8
    _assert_same_volume(back, mask)


def test_prostate_terminology_is_slicers_serialisation():
    """voxmetric.io's hand-written entry string equals what Slicer's terminology logic makes."""
    expected = slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        "Segmentation category and type - 3D Slicer General Anatomy list",
        "123037004", "SCT", "Anatomical Structure", "41216001", "SCT", "Prostate", "", "", "",
        "Anatomic codes - DICOM master list", "", "", "", "", "", "",
    )
    assert mrml.PROSTATE_TERMINOLOGY == expected


def test_second_write_adds_numbered_segment_and_replace_keeps_one(mrml_scene):
    vol = _volume()
    node = mrml.node_from_volume(mrml_scene, vol, "CT")
    first, second = _mask_for(vol), _mask_for(vol, (0, 0, 0), (3, 4, 5))
    seg_node, sid1 = mrml.write_mask_segment(None, first, node)
    _, sid2 = mrml.write_mask_segment(seg_node, second, node)
    seg = seg_node.GetSegmentation()
    assert sid2 != sid1 and seg.GetSegment(sid2).GetName() == "Prostate 2"
    _, sid3 = mrml.write_mask_segment(seg_node, first, node)
    assert seg.GetSegment(sid3).GetName() == "Prostate 3"
    # The first segment was not touched by the later writes.
    np.testing.assert_array_equal(mrml.mask_from_segment(seg_node, "Prostate", node).array, first)
    np.testing.assert_array_equal(mrml.mask_from_segment(seg_node, "Prostate 2", node).array, second)
    # replace=True: same segment id, new voxels, no extra segment.
    _, sid = mrml.write_mask_segment(seg_node, second, node, name="Prostate", replace=True)
    assert sid == sid1 and seg.GetNumberOfSegments() == 3
    np.testing.assert_array_equal(mrml.mask_from_segment(seg_node, "Prostate", node).array, second)
    # replace=True into a fresh node with no such segment simply creates it.
    fresh, sid = mrml.write_mask_segment(None, first, node, replace=True)
    assert fresh.GetSegmentation().GetNumberOfSegments() == 1


def test_segments_with_transformed_reference(mrml_scene):
    vol = _volume(_rot([0, 1, 0], 12.0))
    node = mrml.node_from_volume(mrml_scene, vol, "moved")
    t = _linear_transform(mrml_scene, _rot([1, 0, 0], 30.0), [3.0, -4.0, 5.0])
    node.SetAndObserveTransformNodeID(t.GetID())
    world = mrml.volume_from_node(node)
    mask = world.with_array(_mask_for(world))
    seg_node, _ = mrml.write_mask_segment(None, mask, node)
    assert seg_node.GetParentTransformNode() is t
    _assert_same_volume(mrml.mask_from_segment(seg_node, "Prostate", node), mask)
    # A segmentation node that is not under the volume's transform still gets the right voxels.
    other = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "untransformed")
    mrml.write_mask_segment(other, mask, node)
    np.testing.assert_array_equal(mrml.mask_from_segment(other, "Prostate", node).array, mask.array)


def test_segment_errors(mrml_scene):
    vol = _volume()
    node = mrml.node_from_volume(mrml_scene, vol, "CT")
    seg_node, sid = mrml.write_mask_segment(None, _mask_for(vol), node, name="Bladder")
    # Known organs get their own SNOMED code, unknown names none.
    assert "SCT^89837001^" in seg_node.GetSegmentation().GetSegment(sid).GetTerminology()
    with pytest.raises(SegmentNotFoundError, match=r"No segment 'Prostate'.*'Bladder'"):
        mrml.mask_from_segment(seg_node, "Prostate", node)
    with pytest.raises(GeometryError, match=r"shape \(3, 3, 3\)"):
        mrml.write_mask_segment(seg_node, np.zeros((3, 3, 3), np.uint8), node)
    shifted = Volume(_mask_for(vol), vol.spacing, vol.origin + 5.0, vol.direction)
    with pytest.raises(GeometryError, match="origin"):
        mrml.write_mask_segment(seg_node, shifted, node)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 1


def test_written_segment_survives_seg_nrrd_storage(mrml_scene, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    vol = _volume()
    node = mrml.node_from_volume(mrml_scene, vol, "CT")
    seg_node, _ = mrml.write_mask_segment(None, _mask_for(vol), node)
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "out.seg.nrrd"))
    assert storage.WriteData(seg_node)
    info = slicerio.read_segmentation(str(tmp_path / "out.seg.nrrd"), skip_voxels=True)
    (segment,) = info["segments"]
    assert segment["name"] == "Prostate"
    assert segment["terminology"]["type"] == ["SCT", "41216001", "Prostate"]
    assert not segment["nameAutoGenerated"] and not segment["colorAutoGenerated"]
    np.testing.assert_allclose(segment["color"], mrml.PROSTATE_COLOR, atol=1e-3)
