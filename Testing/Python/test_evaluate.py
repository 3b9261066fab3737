"""VoxMetric Prostate's Evaluate section: a result segment against a reference segment on a real
MRML scene (slicer-core) — the same numbers as `voxmetric evaluate` on the same masks written by
Slicer as .seg.nrrd files, the table node's columns and units, the empty-mask policy in words,
segments on other grids, a missing reference, and the panel path (worker thread, CSV export)
through the module file with stand-in widgets."""

from __future__ import annotations

import csv
import json
import math
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, load_module

pytest.importorskip("slicer", reason="needs the slicer-core wheel")
pytestmark = pytest.mark.mrml

import sys  # noqa: E402

sys.path.insert(0, str(ROOT / "VoxMetricSeg"))
from VoxMetricSegLib import evaluate  # noqa: E402
from VoxMetricSegLib.selftest import run_compare_with_cli, two_cubes, write_seg_nrrd  # noqa: E402

from voxmetric import mrml  # noqa: E402
from voxmetric.volume import Volume  # noqa: E402

SPACING = (0.8, 0.8, 2.5)  # x, y, z mm: anisotropic, as a CT
ROTATED = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # not LPS-aligned
_two_cubes = two_cubes
_write_seg = write_seg_nrrd
COLUMNS = ["Result", "Reference", "DSC", "PPV", "SEN", "ASD (mm)", "HD (mm)", "HD95 (mm)", "Result volume (mL)",
           "Reference volume (mL)", "Grid", "Note"]


def _grid(shape=(24, 32, 32), spacing=SPACING, origin=(10.0, 20.0, 30.0)) -> Volume:
    """The grid of selftest.two_cubes' 'CT 1'."""
    return Volume(np.zeros(shape, np.int16), spacing, origin, ROTATED)


def _cube(grid: Volume, z0: int = 8) -> np.ndarray:
    """selftest.two_cubes' reference cube: 6 × 10 × 10 voxels (z, y, x)."""
    a = np.zeros(grid.shape, np.uint8)
    a[z0:z0 + 6, 10:20, 10:20] = 1
    return a


def test_two_shifted_cubes_give_the_cli_numbers(mrml_scene, tmp_path, capsys):
    """The self-test body (Slicer runs it too): known numbers, and those of `voxmetric evaluate`
    (run in-process) on the same segmentations written by Slicer as .seg.nrrd files."""
    ct, ref, res = _two_cubes(mrml_scene)
    plan = evaluate.plan(res, "Prostate", ref, "Prostate")
    assert plan.runnable and plan.resampled == ()
    assert plan.grid_text == "Compared on the grid of 'CT 1' (0.8 × 0.8 × 2.5 mm), the reference's volume."

    row = run_compare_with_cli(mrml_scene, tmp_path)
    assert row["Result"] == "Model: Prostate" and row["Reference"] == "Ground truth: Prostate"
    assert row["Grid"] == "CT 1 (0.8 × 0.8 × 2.5 mm)" and row["Note"] == ""
    assert row["DSC"] == pytest.approx(5 / 6, abs=1e-12) and row["HD95 (mm)"] == pytest.approx(2.5)
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())["cases"][0]
    assert [row[t] for _, t, _ in evaluate.METRIC_COLUMNS] == pytest.approx([cli[k] for k, _, _ in
                                                                             evaluate.METRIC_COLUMNS], rel=1e-12)
    assert "0.8333" in capsys.readouterr().out  # the CLI printed the same DSC

    _, ref2, res2 = _two_cubes(mrml_scene, shift=2)  # two slices apart: 4 of 6 overlap, HD two slices
    two = evaluate.Evaluator().run(res2, "Prostate", ref2, "Prostate")
    assert two.metrics["dsc"] == pytest.approx(4 / 6) and two.metrics["hd"] == pytest.approx(5.0)


def test_table_columns_units_rows_and_csv(mrml_scene, tmp_path):
    ct, ref, res = _two_cubes(mrml_scene)
    evaluator = evaluate.Evaluator()
    table = evaluate.record(mrml_scene, None, evaluator.run(res, "Prostate", ref, "Prostate"))
    assert table.GetName() == "VoxMetric comparison"
    assert evaluate.record(mrml_scene, table, evaluator.run(ref, "Prostate", res, "Prostate")) is table  # appended
    header, rows = mrml.read_table(table)
    assert header == COLUMNS and len(rows) == 2
    units = {c: table.GetColumnUnitLabel(c) for c in header}
    assert {c for c, u in units.items() if u == "mm"} == {"ASD (mm)", "HD (mm)", "HD95 (mm)"}
    assert {c for c, u in units.items() if u == "mL"} == {"Result volume (mL)", "Reference volume (mL)"}
    assert units["DSC"] == ""
    assert rows[1][0] == "Ground truth: Prostate"  # second row: the roles swapped

    path = evaluate.export_csv(table, tmp_path / "out" / "comparison")  # .csv added, folder made
    assert path.name == "comparison.csv"
    with path.open(newline="") as f:
        back = list(csv.reader(f))
    assert back[0] == COLUMNS and len(back) == 3
    assert float(back[1][2]) == rows[0][2]  # exact: floats written with repr
    with pytest.raises(Exception, match="press Compare first"):
        evaluate.export_csv(None, tmp_path / "x.csv")


def test_empty_segments_follow_the_documented_policy_in_words(mrml_scene, tmp_path):
    ct, ref, res = _two_cubes(mrml_scene)
    res.GetSegmentation().AddEmptySegment("", "Nothing", [0.5, 0.5, 0.5])
    ref.GetSegmentation().AddEmptySegment("", "Nothing", [0.5, 0.5, 0.5])
    evaluator = evaluate.Evaluator()
    empty_result = evaluator.run(res, "Nothing", ref, "Prostate")
    assert empty_result.note == "empty result: DSC 0, distances undefined"
    assert empty_result.summary == "Model: Nothing vs Ground truth: Prostate: empty result: DSC 0, distances undefined."
    empty_ref = evaluator.run(res, "Prostate", ref, "Nothing")
    assert empty_ref.note == "empty reference: DSC 0, distances undefined"
    both = evaluator.run(res, "Nothing", ref, "Nothing")
    assert both.note.startswith("both empty") and both.metrics["dsc"] == 1.0 and both.metrics["hd95"] == 0.0

    table = None
    for done in (empty_result, empty_ref, both):
        table = evaluate.record(mrml_scene, table, done)
    header, rows = mrml.read_table(table)
    first = dict(zip(header, rows[0]))
    assert first["DSC"] == 0.0 and first["Result volume (mL)"] == 0.0 and first["Reference volume (mL)"] > 0
    assert all(math.isnan(first[c]) for c in ("ASD (mm)", "HD (mm)", "HD95 (mm)"))  # empty cells, not ∞
    assert not any(isinstance(v, float) and math.isinf(v) for row in rows for v in row)
    text = evaluate.export_csv(table, tmp_path / "t.csv").read_text()
    assert "inf" not in text and "empty result: DSC 0, distances undefined" in text
    assert text.splitlines()[1].split(",")[5:8] == ["", "", ""]


def test_segments_on_other_grids_are_resampled_onto_the_chosen_volume(mrml_scene):
    ct, ref, _ = _two_cubes(mrml_scene)
    coarse = _grid()
    # the same cube drawn on a grid twice as fine, its voxels tiling the coarse ones exactly
    origin = coarse.index_to_physical(np.array([-0.25, -0.25, -0.25]))
    fine = Volume(np.zeros((48, 64, 64), np.int16), np.array(SPACING) / 2, origin, ROTATED)
    fine_node = mrml.node_from_volume(mrml_scene, fine, "CT 1 fine")
    mask = np.zeros(fine.shape, np.uint8)
    mask[16:28, 20:40, 20:40] = 1
    res, _ = mrml.write_mask_segment(None, fine.with_array(mask), fine_node, "Prostate", scene=mrml_scene)

    plan = evaluate.plan(res, "Prostate", ref, "Prostate")
    assert plan.runnable and plan.resampled == ("result",)
    assert plan.grid_text == ("Compared on the grid of 'CT 1' (0.8 × 0.8 × 2.5 mm), the reference's volume. The "
                              "result is stored on another grid (0.4 × 0.4 × 1.25 mm) and is resampled onto it "
                              "(nearest neighbour).")
    done = evaluate.Evaluator().run(res, "Prostate", ref, "Prostate")
    assert done.metrics["dsc"] == pytest.approx(1.0) and done.metrics["hd95"] == 0.0
    assert done.grid == "CT 1 (0.8 × 0.8 × 2.5 mm); result resampled"

    on_fine = evaluate.plan(res, "Prostate", ref, "Prostate", fine_node)  # the other way round, chosen
    assert on_fine.resampled == ("reference",) and on_fine.grid_text.startswith(
        "Compared on the grid of 'CT 1 fine' (0.4 × 0.4 × 1.25 mm).")
    fine_done = evaluate.Evaluator().run(res, "Prostate", ref, "Prostate", fine_node)
    assert fine_done.metrics["dsc"] == pytest.approx(1.0)
    assert fine_done.metrics["vol_pred_ml"] == pytest.approx(done.metrics["vol_pred_ml"])

    # a segment cropped to its extent on the same grid is not "another grid"
    assert evaluate.same_lattice(Volume(np.zeros((2, 2, 2)), SPACING, coarse.index_to_physical(np.array([3, 4, 5.])),
                                        ROTATED), coarse)
    assert not evaluate.same_lattice(Volume(np.zeros((2, 2, 2)), SPACING, coarse.index_to_physical(
        np.array([3, 4, 5.5])), ROTATED), coarse)


def test_missing_or_wrong_input_is_refused_with_a_reason(mrml_scene, tmp_path):
    ct, ref, res = _two_cubes(mrml_scene)
    assert evaluate.plan(None, "", ref, "Prostate").reason.startswith("Pick the result segmentation")
    assert evaluate.plan(res, "Prostate", None, "").reason.startswith("Pick the reference segmentation")
    assert "has no segment 'Bladder'" in evaluate.plan(res, "Bladder", ref, "Prostate").reason
    assert "same segment" in evaluate.plan(ref, "Prostate", ref, "Prostate").reason
    assert evaluate.plan(res, "Prostate", ref, "Prostate", busy=True).reason.startswith("A comparison is running")

    # a reference loaded from a .seg.nrrd names no volume: its grid is unknown until one is picked
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(_write_seg(mrml_scene, ref, tmp_path / "truth.seg.nrrd"))
    loaded = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "truth")
    assert storage.ReadData(loaded) == 1
    plan = evaluate.plan(res, "Prostate", loaded, "Prostate")
    assert not plan.runnable and "names no volume it was drawn on" in plan.reason and "Compare on" in plan.reason
    with pytest.raises(Exception, match="names no volume it was drawn on"):
        evaluate.Evaluator().start(res, "Prostate", loaded, "Prostate")
    done = evaluate.Evaluator().run(res, "Prostate", loaded, "Prostate", ct)
    assert done.metrics["dsc"] == pytest.approx(5 / 6)


def test_cropped_snapshots_equal_the_whole_mask(mrml_scene, tmp_path):
    """mask_from_segment(crop=True) — what the panel copies on the GUI thread — is the segment's own
    extent, and pasted back it equals the whole-grid mask: drawn on the volume or cropped, segments
    sharing a labelmap, overlapping layers, beyond the volume's edge, another grid, empty, transformed."""
    grid = _grid()
    ct = mrml.node_from_volume(mrml_scene, grid, "CT 1")
    cube, other = _cube(grid), np.zeros(grid.shape, np.uint8)
    other[2:5, 3:9, 25:30] = 1
    seg, _ = mrml.write_mask_segment(None, grid.with_array(cube), ct, "Prostate", scene=mrml_scene)
    mrml.write_mask_segment(seg, mrml.crop_to_mask(grid.with_array(other)), ct, "Bladder")
    mrml.write_mask_segment(seg, grid.with_array(np.roll(cube, 2, axis=0)), ct, "Overlap")  # another layer
    seg.GetSegmentation().AddEmptySegment("", "Empty", [1.0, 0.0, 0.0])
    # a labelmap bigger than the volume: drawn on a larger grid of the same lattice, then compared on CT 1
    big = Volume(np.zeros((30, 40, 40), np.int16), SPACING, grid.index_to_physical(np.array([-4, -4, -3.0])), ROTATED)
    big_node = mrml.node_from_volume(mrml_scene, big, "big")
    edge = np.zeros(big.shape, np.uint8)
    edge[0:10, 0:12, 30:40] = 1
    mrml.write_mask_segment(seg, big.with_array(edge), big_node, "Edge")
    fine = Volume(np.zeros((48, 64, 64), np.int16), np.array(SPACING) / 2, grid.origin, ROTATED)
    fine_node = mrml.node_from_volume(mrml_scene, fine, "fine")
    fmask = np.zeros(fine.shape, np.uint8)
    fmask[10:21, 5:30, 33:50] = 1
    fine_seg, _ = mrml.write_mask_segment(None, fine.with_array(fmask), fine_node, "Fine", scene=mrml_scene)
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")  # as loaded from a file
    storage.SetFileName(_write_seg(mrml_scene, seg, tmp_path / "all.seg.nrrd"))
    loaded = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    assert storage.ReadData(loaded) == 1

    whole = mrml.geometry_from_node(ct)
    cases = [(seg, n) for n in ("Prostate", "Bladder", "Overlap", "Empty", "Edge")]
    cases += [(loaded, n) for n in ("Prostate", "Bladder", "Overlap", "Edge")] + [(fine_seg, "Fine")]
    for node, name in cases:
        full = mrml.mask_from_segment(node, name, ct).array
        crop = mrml.mask_from_segment(node, name, ct, crop=True)
        np.testing.assert_array_equal(mrml.paste_into(crop, whole).array, full, err_msg=f"{node.GetName()}:{name}")
        if full.any():  # tight: the crop is the segment's bounding box
            nz = np.nonzero(full)
            assert crop.shape == tuple(int(a.max() - a.min() + 1) for a in nz), (name, crop.shape)
        else:
            assert crop.shape == (1, 1, 1)
    assert mrml.mask_from_segment(seg, "Edge", ct).array.sum() == 6 * 8 * 7  # x 26..31, y 0..7, z 0..6: clipped at the edge

    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")  # a moved segmentation
    import vtk

    shift = vtk.vtkMatrix4x4()
    shift.SetElement(2, 3, 2.5)  # one slice up, in RAS
    transform.SetMatrixTransformToParent(shift)
    seg.SetAndObserveTransformNodeID(transform.GetID())
    moved = mrml.mask_from_segment(seg, "Prostate", ct, crop=True)
    np.testing.assert_array_equal(mrml.paste_into(moved, whole).array, mrml.mask_from_segment(seg, "Prostate", ct).array)
    assert not np.array_equal(mrml.paste_into(moved, whole).array, cube)


# -- the panel, executed ------------------------------------------------------------------------
def _widget(standins):
    module = load_module("VoxMetricSeg")
    widget = module.VoxMetricSegWidget()
    widget.setup()
    widget.parent.isEntered = True
    return module, widget


def _until(standins, condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        standins.fire_timers()
        time.sleep(0.01)


def test_evaluate_section_through_the_panel(standins, mrml_scene, tmp_path, monkeypatch):
    _, widget = _widget(standins)
    ui, p = widget.ui, widget._parameterNode
    assert ui.evaluateCollapsibleButton.collapsed  # out of the way until wanted
    assert not ui.evaluateButton.enabled and ui.evaluateGridLabel.text.startswith("Pick the result segmentation")
    assert not ui.exportCsvButton.enabled

    ct, ref, res = _two_cubes(mrml_scene)
    ui.resultSegmentationSelector.setCurrentNode(res)
    ui.referenceSegmentationSelector.setCurrentNode(ref)
    assert [ui.resultSegmentComboBox.itemText(i) for i in range(ui.resultSegmentComboBox.count)] == ["Prostate"]
    assert p.resultSegment == "Prostate" and p.referenceSegment == "Prostate"
    assert ui.evaluateGridLabel.text == "Compared on the grid of 'CT 1' (0.8 × 0.8 × 2.5 mm), the reference's volume."
    assert ui.evaluateButton.enabled

    threads = []
    compare = evaluate.compare

    def spy(snap):
        threads.append(threading.current_thread())
        time.sleep(0.2)  # a comparison that takes a while: the panel keeps going
        return compare(snap)

    monkeypatch.setattr(evaluate, "compare", spy)
    ui.evaluateButton.click()
    assert ui.evaluateStatusLabel.text == "Comparing…" and not ui.evaluateButton.enabled
    assert ui.evaluateButton.toolTip.startswith("A comparison is running")
    _until(standins, lambda: p.metricsTable is not None)
    assert threads and threads[0] is not threading.main_thread()  # computed off the GUI thread
    assert ui.metricsTableView.mrmlTableNode() is p.metricsTable and ui.evaluateButton.enabled
    assert ui.evaluateStatusLabel.text.startswith("Model: Prostate vs Ground truth: Prostate: DSC 0.833 · HD95 2.50 mm")
    header, rows = mrml.read_table(p.metricsTable)
    assert header == COLUMNS and len(rows) == 1

    p.resultSegment = "Gone"  # a name the node does not hold: the combo box's segment is used, and said
    assert p.resultSegment == "Prostate" and ui.resultSegmentComboBox.currentData == "Prostate"

    # a new segment appears in the combo box at once; an empty one gives the policy in words
    res.GetSegmentation().AddEmptySegment("", "Nothing", [0.5, 0.5, 0.5])
    assert ui.resultSegmentComboBox.count == 2 and p.resultSegment == "Prostate"  # the choice is kept
    ui.resultSegmentComboBox.currentIndex = ui.resultSegmentComboBox.findData("Nothing")
    assert p.resultSegment == "Nothing"
    ui.evaluateButton.click()
    _until(standins, lambda: len(mrml.read_table(p.metricsTable)[1]) == 2)
    assert ui.evaluateStatusLabel.text.endswith("empty result: DSC 0, distances undefined.")

    # CSV: cancelled, then written
    ui.exportCsvButton.click()
    assert standins.DIALOGS[-1][:2] == ("save", "Export the comparison table") and not list(tmp_path.iterdir())
    standins.FILE_ANSWERS[:] = [str(tmp_path / "table.csv")]
    ui.exportCsvButton.click()
    assert ui.evaluateStatusLabel.text == f"Wrote {tmp_path / 'table.csv'}"
    assert (tmp_path / "table.csv").read_text().splitlines()[0].split(",")[:3] == ["Result", "Reference", "DSC"]

    # a reference without a volume: disabled with the reason; picking one enables it again
    ref.SetNodeReferenceID(ref.GetReferenceImageGeometryReferenceRole(), None)
    widget._refresh()
    assert not ui.evaluateButton.enabled and "names no volume it was drawn on" in ui.evaluateButton.toolTip
    ui.compareVolumeSelector.setCurrentNode(ct)
    assert ui.evaluateButton.enabled and ui.evaluateGridLabel.text.startswith("Compared on the grid of 'CT 1'")

    # a worker error reaches a dialog; the panel carries on
    monkeypatch.setattr(evaluate, "compare", lambda snap: 1 / 0)
    ui.evaluateButton.click()
    _until(standins, lambda: not widget.evaluation.timer.isActive())
    assert standins.DIALOGS[-1][0] == "error" and standins.DIALOGS[-1][1].startswith("The comparison failed.")
    standins.SLOT_ERRORS.clear()  # tryWithErrorDisplay re-raises into the slot, as in Slicer
    assert ui.evaluateButton.enabled
    widget.cleanup()
