"""Reading and writing volumes and Slicer segmentations (voxmetric.io)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from voxmetric import io
from voxmetric.errors import GeometryError, InputError, SegmentNotFoundError
from voxmetric.io import (PROSTATE, SegmentInfo, read_segment_mask, read_segmentation, read_volume,
                          segment_info, write_segmentation, write_volume)
from voxmetric.volume import Volume

_c, _s = np.cos(np.radians(35)), np.sin(np.radians(35))
OBLIQUE = np.array([[_c, -_s, 0], [_s, _c, 0], [0, 0, 1]]) @ np.array(  # a proper rotation, det +1
    [[np.cos(0.3), 0, np.sin(0.3)], [0, 1, 0], [-np.sin(0.3), 0, np.cos(0.3)]])


def image(dtype=np.int16, direction=OBLIQUE) -> Volume:
    arr = (np.arange(6 * 7 * 8).reshape(6, 7, 8) * 3 - 700).astype(dtype)
    return Volume(arr, (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), direction)


def labels() -> Volume:
    a = np.zeros((6, 7, 8), np.uint8)
    a[1:4, 2:5, 3:7] = 1
    a[4:6, 0:2, 0:3] = 2
    return image().with_array(a)


# -- volumes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_volume_round_trip_keeps_oblique_geometry(tmp_path: Path, suffix: str, dtype: type) -> None:
    vol = image(dtype)
    out = write_volume(vol, tmp_path / f"ct{suffix}")
    assert out == tmp_path / f"ct{suffix}" and out.is_file()
    back = read_volume(out)
    assert back.same_grid(vol, tol=1e-4)
    np.testing.assert_allclose(back.direction, OBLIQUE, atol=1e-5)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left


def test_write_volume_is_atomic_and_checks_suffix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_volume(image(), tmp_path / "keep.nrrd")
    before = target.read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        Path(str(args[1])).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.sitk, "WriteImage", broken)
    with pytest.raises(OSError, match="disk full"):  # ITK's RuntimeError, said as the OSError it stands for
        write_volume(image(np.float32), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nrrd"]
    with pytest.raises(InputError, match=r"Cannot write ct.png: use one of .nrrd"):
        write_volume(image(), tmp_path / "ct.png")


def write_dicom_series(vol: Volume, folder: Path) -> None:
    """One DICOM file per slice with position/orientation/spacing tags (SimpleITK recipe)."""
    folder.mkdir()
    img = vol.to_sitk()
    d = img.GetDirection()
    uid = f"1.2.826.0.1.3680043.2.1125.{int(time.time())}"
    common = {
        "0008|0060": "CT", "0020|000d": uid + ".1", "0020|000e": uid + ".2", "0028|1052": "0", "0028|1053": "1",
        "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0028|0030": f"{vol.spacing[1]}\\{vol.spacing[0]}", "0018|0050": str(vol.spacing[2]),
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = img.GetDepth()
    for k in range(n):
        s = img[:, :, k]
        for tag, value in common.items():
            s.SetMetaData(tag, value)
        s.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        s.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"slice{n - k:03d}.dcm"))  # file order ≠ slice order
        writer.Execute(s)


def test_dicom_series_folder_reads_with_geometry(tmp_path: Path) -> None:
    vol = image()
    write_dicom_series(vol, tmp_path / "series")
    back = read_volume(tmp_path / "series")
    assert back.same_grid(vol, tol=1e-4), (back.spacing, back.origin, back.direction)
    np.testing.assert_array_equal(back.array, vol.array)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "File not found"),
        (lambda p: (p.write_bytes(b""), p)[1], r"is empty \(0 bytes\)"),
        (lambda p: (p.write_bytes(b"this is not an image at all" * 10), p)[1], "Cannot read .* as an image"),
        (lambda p: (sitk.WriteImage(sitk.Image(5, 6, sitk.sitkInt16), str(p)), p)[1], "is a 2D image"),
        (lambda p: (write_volume(image(np.float32).with_array(np.full((6, 7, 8), np.nan, np.float32)), p), p)[1],
         "no valid numbers"),
        (lambda p: (write_volume(image().with_array(np.zeros((6, 7, 8), np.int16)), p), p)[1],
         "is blank: every voxel has the value 0"),
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x"), p)[2], "No DICOM series found"),
    ],
    ids=["missing", "empty", "garbage", "2d", "all-nan", "constant", "no-dicom"],
)
def test_read_volume_errors(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / "bad.nrrd")
    with pytest.raises(InputError, match=message):
        read_volume(path)


def test_read_volume_replaces_partial_nan(tmp_path: Path) -> None:
    a = np.linspace(-5, 5, 6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    a[0, 0, :3] = np.nan
    back = read_volume(write_volume(image().with_array(a), tmp_path / "f.nrrd"))  # NIfTI IO zeroes NaN
    assert np.isfinite(back.array).all() and back.array[0, 0, 0] == a[0, 0, 3:].min()


# -- segmentations ------------------------------------------------------------------------------
def test_segment_info_terminology() -> None:
    assert PROSTATE.name == "Prostate" and PROSTATE.label_value == 1
    assert "SCT^41216001^Prostate" in PROSTATE.terminology
    assert "SCT^89837001^" in segment_info("bladder", 2).terminology
    assert "SCT^34402009^Rectum" in segment_info("Rectum", 3).terminology
    assert "SCT^7771000^Left" in segment_info("Femoral head left", 4).terminology
    assert "SCT^24028007^Right" in segment_info("femur head right", 5).terminology
    plain = segment_info("Tumour", 6)
    assert plain.terminology is None and plain == segment_info("Tumour", 6)
    assert all(0 <= c <= 1 for c in plain.color)


def test_seg_nrrd_round_trip(tmp_path: Path) -> None:
    lab = labels()
    infos = [PROSTATE, segment_info("Bladder", 2)]
    path = write_segmentation(tmp_path / "case.seg.nrrd", lab, infos)
    seg = read_segmentation(path)
    assert seg.names == ["Prostate", "Bladder"]
    assert seg.segments[0] == infos[0]
    assert seg.segments[1].terminology == infos[1].terminology
    assert seg.labelmap.same_grid(lab, tol=1e-6)
    np.testing.assert_array_equal(seg.labelmap.array, lab.array)
    m = seg.mask("PROSTATE")
    assert m.array.dtype == np.uint8 and m.array.sum() == 3 * 3 * 4
    np.testing.assert_array_equal(read_segment_mask(path, "bladder").array, lab.array == 2)
    np.testing.assert_array_equal(read_segment_mask(path).array, lab.array == 1)
    np.testing.assert_array_equal(read_volume(path).array, lab.array)
    assert [p.name for p in tmp_path.iterdir()] == ["case.seg.nrrd"]


def test_seg_nrrd_layers_and_first_non_empty(tmp_path: Path) -> None:
    lab = labels()
    overlap = lab.with_array((lab.array > 0).astype(np.uint8))
    infos = [SegmentInfo("Empty", 3, (1.0, 0.0, 0.0)), PROSTATE, segment_info("Bladder", 2),
             SegmentInfo("Organs", 1, (0.0, 0.0, 1.0), layer=1)]
    path = write_segmentation(tmp_path / "multi.seg.nrrd", [lab, overlap], infos)
    seg = read_segmentation(path)
    assert [s.layer for s in seg.segments] == [0, 0, 0, 1] and len(seg.extra_layers) == 1
    np.testing.assert_array_equal(seg.mask("organs").array, lab.array > 0)
    np.testing.assert_array_equal(read_segment_mask(path).array, lab.array == 1)  # "Empty" skipped
    assert seg.mask("Empty").array.sum() == 0


def test_write_segmentation_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"Label values \[2\] in layer 0 have no SegmentInfo"):
        write_segmentation(tmp_path / "a.seg.nrrd", labels(), [PROSTATE])
    with pytest.raises(InputError, match="must end in .seg.nrrd"):
        write_segmentation(tmp_path / "a.nrrd", labels(), [PROSTATE])
    with pytest.raises(InputError, match="must hold integers"):
        write_segmentation(tmp_path / "a.seg.nrrd", image(np.float32), [PROSTATE])
    assert not list(tmp_path.iterdir())


def test_missing_segment_lists_names(tmp_path: Path) -> None:
    path = write_segmentation(tmp_path / "c.seg.nrrd", labels(), [PROSTATE, segment_info("Bladder", 2)])
    with pytest.raises(SegmentNotFoundError, match=r"No segment named 'Rectum'. Available segments: 'Prostate', 'Bladder'"):
        read_segment_mask(path, "Rectum")
    empty = write_segmentation(tmp_path / "e.seg.nrrd", labels().with_array(np.zeros((6, 7, 8), np.uint8)), [])
    with pytest.raises(SegmentNotFoundError, match="holds no segments"):
        read_segment_mask(empty)


def test_garbage_seg_nrrd(tmp_path: Path) -> None:
    bad = tmp_path / "bad.seg.nrrd"
    bad.write_bytes(b"NRRD0004\ngarbage\n\x00\x01")
    with pytest.raises(InputError, match="Cannot read .*bad.seg.nrrd as a segmentation"):
        read_segmentation(bad)


def test_plain_labelmap_segments(tmp_path: Path) -> None:
    path = write_volume(labels(), tmp_path / "lab.nii.gz")
    seg = read_segmentation(path)
    assert seg.names == ["Label 1", "Label 2"] and [s.label_value for s in seg.segments] == [1, 2]
    np.testing.assert_array_equal(read_segment_mask(path, "label 2").array, labels().array == 2)
    nrrd_path = write_volume(labels(), tmp_path / "lab.nrrd")  # a plain .nrrd, not a Slicer segmentation
    assert read_segmentation(nrrd_path).names == ["Label 1", "Label 2"]
    frac = write_volume(image(np.float32).with_array(np.full((6, 7, 8), 0.5, np.float32)), tmp_path / "p.nrrd")
    with pytest.raises(InputError, match="not a labelmap"):
        read_segmentation(frac)


def test_segment_mask_on_reference_grid(tmp_path: Path) -> None:
    ref = image()
    lab = labels()
    # Slicer stores a .seg.nrrd cropped to the segments' extent: a sub-grid with an index offset.
    sub = Volume(lab.array[1:6, 0:5, 0:7].copy(), lab.spacing, lab.index_to_physical(np.array([0, 0, 1])), lab.direction)
    path = write_segmentation(tmp_path / "crop.seg.nrrd", sub, [PROSTATE, segment_info("Bladder", 2)])
    m = read_segment_mask(path, "Prostate", reference=ref)
    assert m.same_grid(ref) and m.array.dtype == np.uint8
    np.testing.assert_array_equal(m.array, lab.array == 1)
    # A label on another spacing, or shifted by half a voxel, is refused.
    other = Volume(lab.array, (1.0, 1.0, 1.0), lab.origin, lab.direction)
    path2 = write_segmentation(tmp_path / "other.seg.nrrd", other, [PROSTATE, segment_info("Bladder", 2)])
    with pytest.raises(GeometryError, match=r"image and label do not share a voxel grid: spacing \(mm\)"):
        read_segment_mask(path2, "Prostate", reference=ref)
    half = Volume(lab.array, lab.spacing, lab.index_to_physical(np.array([0.5, 0, 0])), lab.direction)
    path3 = write_segmentation(tmp_path / "half.seg.nrrd", half, [PROSTATE, segment_info("Bladder", 2)])
    with pytest.raises(GeometryError, match=r"origin \(mm\)"):
        read_segment_mask(path3, "Prostate", reference=ref)


def test_shared_data_reads(shared_data: Path) -> None:
    mr = read_volume(shared_data / "promise12_demo" / "case0_t2w_UNKNOWN_SPACING.nii.gz")
    assert mr.shape == (32, 128, 128)
    m = read_segment_mask(shared_data / "promise12_demo" / "case0_prostate_label_UNKNOWN_SPACING.nii.gz",
                          reference=mr)
    assert int(m.array.sum()) == 18109
    ct = read_volume(shared_data / "pelvis_ct" / "example_ct.nii.gz")
    assert ct.shape == (112, 101, 122) and np.allclose(ct.spacing, 3.0)


# -- Slicer's own storage node (slicer-core) ------------------------------------------------------
def _slicer_labelmap_node(scene, vol: Volume):
    import slicer
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.util.updateVolumeFromArray(node, vol.array)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    node.SetSpacing(*vol.spacing)
    node.SetOrigin(*(lps_to_ras @ vol.origin))
    m = vtk.vtkMatrix4x4()
    d = lps_to_ras @ vol.direction
    for i in range(3):
        for j in range(3):
            m.SetElement(i, j, d[i, j])
    node.SetIJKToRASDirectionMatrix(m)
    return node


@pytest.mark.mrml
def test_read_seg_nrrd_written_by_slicer(mrml_scene, tmp_path: Path) -> None:
    import slicer

    lab = labels()
    seg_node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = mrml_scene._voxmetric_logics["Segmentations"]
    assert logic.ImportLabelmapToSegmentationNode(_slicer_labelmap_node(mrml_scene, lab), seg_node)
    segmentation = seg_node.GetSegmentation()
    segmentation.GetNthSegment(0).SetName("Prostate")
    segmentation.GetNthSegment(1).SetName("Bladder")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    assert storage.WriteData(seg_node)
    seg = read_segmentation(tmp_path / "slicer.seg.nrrd")
    assert seg.names == ["Prostate", "Bladder"]
    assert seg.labelmap.shape != lab.shape  # Slicer crops to the segments' extent
    np.testing.assert_allclose(seg.labelmap.direction, OBLIQUE, atol=1e-6)
    for name, value in (("prostate", 1), ("Bladder", 2)):
        m = read_segment_mask(tmp_path / "slicer.seg.nrrd", name, reference=lab)
        np.testing.assert_array_equal(m.array, lab.array == value)
    assert slicer.vtkSegment  # the module really is Slicer's


@pytest.mark.mrml
def test_slicer_reads_our_seg_nrrd(mrml_scene, tmp_path: Path) -> None:
    import slicer
    import vtk

    lab = labels()
    path = write_segmentation(tmp_path / "ours.seg.nrrd", lab, [PROSTATE, segment_info("Bladder", 2)])
    seg_node = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(seg_node)
    segmentation = seg_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    prostate = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Prostate"))
    assert prostate is not None
    np.testing.assert_allclose(prostate.GetColor(), PROSTATE.color, atol=1e-5)
    assert "SCT^41216001^Prostate" in prostate.GetTerminology()
    assert "SCT^89837001^" in segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Bladder")).GetTerminology()
    # Export back to a labelmap on the original geometry with Slicer and compare voxels.
    reference = _slicer_labelmap_node(mrml_scene, lab.with_array(np.zeros(lab.shape, np.uint8)))
    out = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentIDs(ids)
    logic = mrml_scene._voxmetric_logics["Segmentations"]
    assert logic.ExportSegmentsToLabelmapNode(seg_node, ids, out, reference)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), lab.array)
    np.testing.assert_allclose(out.GetSpacing(), lab.spacing)
    np.testing.assert_allclose(out.GetOrigin(), np.diag([-1.0, -1.0, 1.0]) @ lab.origin, atol=1e-6)
    m = vtk.vtkMatrix4x4()
    out.GetIJKToRASDirectionMatrix(m)
    ras = np.array([[m.GetElement(i, j) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(ras, np.diag([-1.0, -1.0, 1.0]) @ OBLIQUE, atol=1e-6)
