"""DICOM output: DICOM SEG (highdicom) read back by dcmqi, RT Structure Sets read back by
dicompyler-core and filled onto the source grid, the `segment --dicom-seg/--rtstruct` and
`export-dicom` commands, and clear errors for bad input. Source series: a phantom CT written as
a DICOM series at test time, and the real MR series in shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom", reason="DICOM output needs the dicom extra (pip install -e '.[dicom]')")
pydicom = pytest.importorskip("pydicom")

from dicom_helpers import (build_mr_study, dcmqi_read, dcmqi_tool, dicom_files, dsc, phantom_series, real_series,  # noqa: E402
                           rt_read, source_image, write_series)
from test_pipeline import cli, tiny_models  # noqa: E402,F401  (fixtures: tiny forced models, the CLI in-process)

from voxmetric import dicom, io, phantom  # noqa: E402
from voxmetric.cli import main  # noqa: E402
from voxmetric.errors import GeometryError, InputError  # noqa: E402
from voxmetric.volume import Volume  # noqa: E402

ORGANS = list(phantom.LABELS)  # Prostate, Bladder, Rectum, Femoral head left/right
SNOMED = {"Prostate": "41216001", "Bladder": "89837001", "Rectum": "34402009", "Femoral head left": "71341001",
          "Femoral head right": "71341001"}


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Volume, Path]:
    """(series folder, labels on its grid, .seg.nrrd with all five organs) of a phantom CT
    (seed 1 has a left-handed direction: the helper flips it to a DICOM slice order)."""
    root = tmp_path_factory.mktemp("phantom_dicom")
    image, labels = phantom_series(root / "series", seed=1)
    seg_file = io.write_segmentation(root / "organs.seg.nrrd", labels,
                                     [io.segment_info(n, v) for n, v in phantom.LABELS.items()])
    return root / "series", labels, seg_file


def _ellipsoids(grid: Volume) -> io.Segmentation:
    """Prostate- and bladder-like ellipsoids (label 1, 2) and a femoral head (4) on ``grid``."""
    z, y, x = np.indices(grid.shape, dtype=float)
    nz, ny, nx = grid.shape
    lm = np.zeros(grid.shape, np.uint8)
    lm[((z - nz / 2) / (nz / 4)) ** 2 + ((y - ny * 0.55) / (ny / 10)) ** 2 + ((x - nx / 2) / (nx / 8)) ** 2 <= 1] = 1
    lm[((z - nz / 2) / (nz / 5)) ** 2 + ((y - ny * 0.3) / (ny / 16)) ** 2 + ((x - nx / 2) / (nx / 10)) ** 2 <= 1] = 2
    lm[((z - nz / 2) / (nz / 6)) ** 2 + ((y - ny * 0.5) / (ny / 20)) ** 2 + ((x - nx / 5) / (nx / 20)) ** 2 <= 1] = 4
    return io.Segmentation(grid.with_array(lm), [io.segment_info("Prostate", 1), io.segment_info("Bladder", 2),
                                                  io.segment_info("Femoral head left", 4)])


def _needs_dcmqi() -> None:
    if dcmqi_tool() is None:
        pytest.skip("dcmqi's segimage2itkimage cannot run here (pip install dcmqi)")


# ---- DICOM SEG ---------------------------------------------------------------------------------
def test_dicom_seg_phantom_round_trip_with_dcmqi(ct_case, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _needs_dcmqi()
    folder, labels, seg_file = ct_case
    out = tmp_path / "organs_seg.dcm"
    assert main(["export-dicom", "--seg", str(seg_file), "--series", str(folder), "--dicom-seg", str(out)]) == 0
    said = capsys.readouterr()
    assert "5 segment(s): Prostate, Bladder, Rectum, Femoral head left, Femoral head right" in said.out
    assert "phantom pelvis CT" in said.err  # the series it chose (by the segmentation's grid)
    masks, meta = dcmqi_read(out, source_image(folder), tmp_path / "dcmqi")
    assert list(masks) == ORGANS
    for name, value in phantom.LABELS.items():
        assert np.array_equal(masks[name], labels.array == value), name  # voxel for voxel on the source grid
    for (attrs,) in meta["segmentAttributes"]:
        assert attrs["SegmentedPropertyCategoryCodeSequence"]["CodeValue"] == "123037004"
        assert attrs["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == SNOMED[attrs["SegmentLabel"]]
        assert attrs["SegmentAlgorithmType"] == "AUTOMATIC"
    left = next(a for (a,) in meta["segmentAttributes"] if a["SegmentLabel"] == "Femoral head left")
    assert left["SegmentedPropertyTypeModifierCodeSequence"]["CodeMeaning"] == "Left"
    ds = pydicom.dcmread(out)
    src = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_files(folder)]
    assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src[0].SeriesInstanceUID
    assert ds.StudyInstanceUID == src[0].StudyInstanceUID and ds.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in src}


def test_dicom_seg_real_series_round_trip_with_dcmqi(tmp_path: Path, shared_data: Path) -> None:
    _needs_dcmqi()
    folder = real_series(shared_data)
    info = dicom.select_series(folder).series
    seg = _ellipsoids(info.grid())
    out = dicom.write_dicom_seg(seg, info, tmp_path / "real_seg.dcm")
    masks, meta = dcmqi_read(out, source_image(folder), tmp_path / "dcmqi")
    for s in seg.segments:
        want = seg.mask_of(s).array.astype(bool)
        assert want.sum() > 1000 and np.array_equal(masks[s.name], want), s.name


# ---- RT Structure Set --------------------------------------------------------------------------
def _check_rt(rt_file: Path, folder: Path, want: dict[str, np.ndarray]) -> dict[str, float]:
    """Read back with dicompyler-core; DSC per ROI, contour slices and SOP references checked."""
    ref = source_image(folder)
    back = rt_read(rt_file, ref)
    assert list(back) == list(want)
    ds = pydicom.dcmread(rt_file)
    files = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in dicom_files(folder)}
    slice_uid = []
    for k in range(ref.GetDepth()):  # the SOP instance at each slice position of the reference grid
        p = ref.TransformIndexToPhysicalPoint((0, 0, k))
        slice_uid.append(next(uid for uid, f in files.items() if np.allclose(
            [float(v) for v in pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient], p, atol=1e-3)))
    assert ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0] \
        .SeriesInstanceUID == pydicom.dcmread(next(iter(files.values())), stop_before_pixels=True).SeriesInstanceUID
    scores = {}
    for roi, (name, mask) in zip(ds.ROIContourSequence, want.items()):
        on = sorted({slice_uid.index(c.ContourImageSequence[0].ReferencedSOPInstanceUID) for c in roi.ContourSequence})
        assert on == list(np.flatnonzero(mask.any(axis=(1, 2)))), f"{name}: contours on every slice holding it"
        scores[name] = dsc(back[name]["mask"], mask)
    return scores


def test_rtstruct_phantom_read_back_with_dicompyler(ct_case, tmp_path: Path) -> None:
    folder, labels, seg_file = ct_case
    out = tmp_path / "organs_rt.dcm"
    assert main(["export-dicom", "--seg", str(seg_file), "--series", str(folder), "--rtstruct", str(out)]) == 0
    want = {n: labels.array == v for n, v in phantom.LABELS.items()}
    scores = _check_rt(out, folder, want)
    assert min(scores.values()) >= 0.97, scores
    back = rt_read(out, source_image(folder))
    for name in ORGANS:
        info = io.segment_info(name, 1)
        assert back[name]["color"] == tuple(int(round(255 * c)) for c in info.color) and back[name]["type"] == "ORGAN"
    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    codes = [o.RTROIIdentificationCodeSequence[0].CodeValue for o in ds.RTROIObservationsSequence]
    assert codes == [SNOMED[n] for n in ORGANS]


def test_rtstruct_real_series_read_back_with_dicompyler(tmp_path: Path, shared_data: Path) -> None:
    folder = real_series(shared_data)
    info = dicom.select_series(folder).series
    seg = _ellipsoids(info.grid())
    out = dicom.write_rtstruct(seg, info, tmp_path / "real_rt.dcm")
    scores = _check_rt(out, folder, {s.name: seg.mask_of(s).array.astype(bool) for s in seg.segments})
    assert min(scores.values()) >= 0.97, scores


def test_contours_fill_back_exactly_with_holes_and_diagonals() -> None:
    from matplotlib.path import Path as Polygon

    rng = np.random.default_rng(0)
    from scipy import ndimage

    for trial in range(4):
        m = ndimage.gaussian_filter(rng.random((40, 50)), 1.2 + trial) > 0.5
        yy, xx = np.mgrid[:40, :50]
        back = np.zeros_like(m)
        for poly in dicom.contours(m):
            back ^= Polygon(poly).contains_points(np.column_stack([xx.ravel(), yy.ravel()])).reshape(m.shape)
        assert np.array_equal(back, m), trial
    assert dicom.contours(np.zeros((5, 5), bool)) == []


# ---- the segment command and the errors -------------------------------------------------------
def test_export_errors_and_overwrite(ct_case, tmp_path: Path) -> None:
    folder, labels, seg_file = ct_case
    info = dicom.select_series(folder).series
    seg = io.read_segmentation(seg_file)
    # A mask on another grid than the series.
    shifted = io.Segmentation(Volume(labels.array, labels.spacing * 1.5, labels.origin, labels.direction), seg.segments)
    with pytest.raises(GeometryError, match=r"another grid than DICOM series #1 .*spacing"):
        dicom.write_dicom_seg(shifted, info, tmp_path / "x.dcm")
    r = main(["export-dicom", "--seg", str(io.write_segmentation(tmp_path / "s.seg.nrrd", shifted.labelmap,
                                                                  shifted.segments)),
              "--series", str(folder), "--rtstruct", str(tmp_path / "x.dcm")])
    assert r == 2 and not (tmp_path / "x.dcm").exists()
    # A Slicer-style cropped segmentation (sub-extent) is put back on the series grid.
    crop = io.Segmentation(Volume(labels.array[5:20, 10:90, 20:100], labels.spacing,
                                  labels.index_to_physical_matrix[:3] @ [20, 10, 5, 1], labels.direction),
                           seg.segments[:1])
    assert np.array_equal(dicom.on_series_grid(crop.mask_of(crop.segments[0]), info),
                          np.pad(labels.array[5:20, 10:90, 20:100] == 1, ((5, 16), (10, 22), (20, 12))))
    # An empty segment is written only when asked.
    empty = io.Segmentation(labels.with_array(np.where(labels.array == 1, 1, 0).astype(np.uint8)),
                            [io.segment_info("Prostate", 1), io.segment_info("Rectum", 3)])
    for writer in (dicom.write_dicom_seg, dicom.write_rtstruct):
        with pytest.raises(InputError, match=r"Segment\(s\) 'Rectum' are empty.*--allow-empty"):
            writer(empty, info, tmp_path / "e.dcm")
        out = writer(empty, info, tmp_path / f"e_{writer.__name__}.dcm", allow_empty=True)
        assert out.exists()
    ds = pydicom.dcmread(tmp_path / "e_write_rtstruct.dcm")
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Prostate", "Rectum"]
    assert "ContourSequence" in ds.ROIContourSequence[0] and "ContourSequence" not in ds.ROIContourSequence[1]
    assert [s.SegmentLabel for s in pydicom.dcmread(tmp_path / "e_write_dicom_seg.dcm").SegmentSequence] == [
        "Prostate", "Rectum"]
    # Never overwrite unless asked; a failed write leaves the old file and no temporary file.
    target = tmp_path / "keep.dcm"
    target.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        dicom.write_rtstruct(seg, info, target)
    assert target.read_bytes() == b"precious"
    r = main(["export-dicom", "--seg", str(seg_file), "--series", str(folder), "--dicom-seg", str(target)])
    assert r == 2 and target.read_bytes() == b"precious"

    def broken(self, *args, **kwargs):
        Path(str(args[0])).write_bytes(b"half")
        raise OSError("disk full")

    mp = pytest.MonkeyPatch()
    mp.setattr(pydicom.dataset.Dataset, "save_as", broken)
    with pytest.raises(OSError, match="disk full"):
        dicom.write_rtstruct(seg, info, target, overwrite=True)
    mp.undo()
    assert target.read_bytes() == b"precious" and [p.name for p in tmp_path.glob(".keep*")] == []
    dicom.write_rtstruct(seg, info, target, overwrite=True)
    assert pydicom.dcmread(target).Modality == "RTSTRUCT"
    # No DICOM source, a series with missing slices.
    nrrd = io.write_volume(labels, tmp_path / "img.nrrd")
    r = main(["export-dicom", "--seg", str(seg_file), "--series", str(nrrd), "--dicom-seg", str(tmp_path / "y.dcm")])
    assert r == 2
    gap = tmp_path / "gap"
    write_series(labels.with_array(labels.array.astype(np.int16)), gap, skip=(7,))
    with pytest.raises(InputError, match="missing slices"):
        dicom.match_series(labels, gap)
    other = tmp_path / "other"
    write_series(Volume(np.ones((4, 8, 8), np.int16), (1.0, 1.0, 2.0)), other)
    with pytest.raises(GeometryError, match="matches none of the DICOM series"):
        dicom.match_series(labels, other)


def test_export_messages(ct_case, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder, labels, seg_file = ct_case
    nrrd = io.write_volume(labels, tmp_path / "img.nrrd")
    assert main(["export-dicom", "--seg", str(seg_file), "--series", str(nrrd), "--rtstruct",
                 str(tmp_path / "y.dcm")]) == 2
    assert "needs the DICOM source series" in capsys.readouterr().err
    assert main(["segment", str(nrrd), "-o", str(tmp_path / "o.seg.nrrd"), "--dicom-seg", str(tmp_path / "y.dcm")]) == 2
    err = capsys.readouterr().err
    assert "--dicom-seg needs a DICOM series folder as INPUT" in err and "export-dicom" in err
    assert main(["export-dicom", "--seg", str(seg_file), "--series", str(folder)]) == 2
    assert "--dicom-seg OUT.dcm and/or --rtstruct" in capsys.readouterr().err


def test_export_matches_the_series_in_a_study_folder(tmp_path: Path, shared_data: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    study = build_mr_study(tmp_path / "study", shared_data, twin=True)  # no rule-based winner
    t2 = next(s for s in dicom.list_series(study) if s.description == "t2_tse_tra")
    seg_file = io.write_segmentation(tmp_path / "t2.seg.nrrd", _ellipsoids(t2.grid()).labelmap,
                                     _ellipsoids(t2.grid()).segments)
    out = tmp_path / "t2_seg.dcm"
    assert main(["export-dicom", "--seg", str(seg_file), "--series", str(study), "--dicom-seg", str(out)]) == 0
    assert "the series whose grid the segmentation is on" in capsys.readouterr().err
    assert pydicom.dcmread(out).ReferencedSeriesSequence[0].SeriesInstanceUID == t2.uid
    # The new SEG in the study folder is not an image series: the listing does not change.
    (study / "out").mkdir()
    out.rename(study / "out" / "seg.dcm")
    assert len(dicom.list_series(study)) == 6


def test_segment_dicom_folder_writes_seg_and_rtstruct(tiny_models: Path, tmp_path: Path, cli) -> None:  # noqa: F811
    study, same = tmp_path / "study", {"StudyInstanceUID": pydicom.uid.generate_uid(),
                                       "FrameOfReferenceUID": pydicom.uid.generate_uid()}
    image, _ = phantom_series(study / "ct", seed=0, shape=(16, 48, 48), spacing=(6.0, 6.0, 6.0), tags=same)
    write_series(Volume(np.zeros((1, 16, 16), np.int16) + 5, (4.0, 4.0, 1.0)), study / "scout",
                 {**same, "Modality": "CT", "SeriesNumber": 1, "SeriesDescription": "Topogram",
                  "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    seg_out, rt_out = tmp_path / "out" / "ct.seg.nrrd", tmp_path / "out" / "ct_rt.dcm"
    r = cli("segment", str(study), "-o", str(seg_out), "--dicom-seg", str(tmp_path / "out" / "ct_seg.dcm"),
            "--rtstruct", str(rt_out), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "DICOM series #2 CT 'phantom pelvis CT'" in r.stderr and "chosen from 2 series by the rules" in r.stderr
    assert "ct_seg.dcm (DICOM SEG on series" in r.stdout and "ct_rt.dcm (RT Structure Set" in r.stdout
    mask = io.read_segment_mask(seg_out, "Prostate").array.astype(bool)
    assert mask.any()
    ds = pydicom.dcmread(tmp_path / "out" / "ct_seg.dcm")
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "41216001"
    frames = ds.pixel_array.reshape(-1, *mask.shape[1:]).astype(bool)
    assert frames.sum() == mask.sum()
    scores = _check_rt(rt_out, study / "ct", {"Prostate": mask})
    assert scores["Prostate"] >= 0.97
    # An existing output stops the run before any work; --series picks a series explicitly.
    r = cli("segment", str(study), "-o", str(seg_out), "--rtstruct", str(rt_out))
    assert r.returncode == 2 and "already exists" in r.stderr
    r = cli("segment", str(study), "-o", str(seg_out), "--series", "1", "--events-jsonl", "--overwrite")
    assert r.returncode == 2 and "a single slice" in r.stderr
    r = cli("segment", str(study), "-o", str(seg_out), "--series", "2", "--rtstruct", str(tmp_path / "b.dcm"),
            "--events-jsonl", "--overwrite")
    assert r.returncode == 0, r.stderr
    import json

    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event"] == "log" and "chosen by --series 2" in events[0]["message"]
    assert events[-1]["event"] == "done" and events[-1]["rtstruct"] == str(tmp_path / "b.dcm")
    r = cli("segment", str(study), "-o", str(seg_out), "--stage", "localize", "--dicom-seg", str(tmp_path / "z.dcm"))
    assert r.returncode == 2 and "--stage localize writes no segmentation" in r.stderr


@pytest.mark.mrml
def test_slicer_segments_keep_reference_and_terminology_for_dicom_export(ct_case, mrml_scene, tmp_path: Path) -> None:
    """The Slicer route: segments written by mrml.write_mask_segment on a volume loaded from the
    DICOM series keep it as reference geometry and their SNOMED terminology, so the saved
    .seg.nrrd exports to DICOM SEG with the right codes on the right grid."""
    _needs_dcmqi()
    mrml = pytest.importorskip("voxmetric.mrml", reason="needs the slicer-core wheel")

    folder, labels, _ = ct_case
    node = mrml.node_from_volume(mrml_scene, io.read_volume(folder), "CT")
    seg_node, _ = mrml.write_mask_segment(None, labels.with_array((labels.array == 1).astype(np.uint8)), node)
    mrml.write_mask_segment(seg_node, labels.with_array((labels.array == 2).astype(np.uint8)), node, name="Bladder")
    assert seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole()) is node
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    assert storage.WriteData(seg_node)
    seg = io.read_segmentation(tmp_path / "slicer.seg.nrrd")
    assert seg.names == ["Prostate", "Bladder"] and all(s.terminology for s in seg.segments)
    out = dicom.write_dicom_seg(seg, dicom.match_series(seg.labelmap, folder).series, tmp_path / "slicer_seg.dcm")
    masks, meta = dcmqi_read(out, source_image(folder), tmp_path / "dcmqi")
    assert np.array_equal(masks["Prostate"], labels.array == 1) and np.array_equal(masks["Bladder"], labels.array == 2)
    assert [a["SegmentedPropertyTypeCodeSequence"]["CodeValue"] for (a,) in meta["segmentAttributes"]] == [
        "41216001", "89837001"]

