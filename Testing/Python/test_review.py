"""VoxMetric Train after training: the final model's per-case validation metrics as a table node
(the card's validation.per_case, in VoxMetric Prostate's table form) and "Review validation cases"
— each case segmented with the new model in a child process (VoxMetricSegLib.SegmentLogic), next
to its reference — on a real MRML scene, through the module file with stand-in widgets."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, train_widget

pytest.importorskip("slicer", reason="needs the slicer-core wheel")
pytestmark = pytest.mark.mrml

for _m in ("VoxMetricSeg", "VoxMetricTrain"):
    if str(ROOT / _m) not in sys.path:
        sys.path.insert(0, str(ROOT / _m))
from VoxMetricTrainLib import review  # noqa: E402

from voxmetric import models, mrml  # noqa: E402
from voxmetric.errors import InputError  # noqa: E402
from voxmetric.volume import Volume  # noqa: E402

HEADER = ["Case", "Image", "Segment", "DSC", "HD95 (mm)", "ASD (mm)", "Note"]
TWO_CLASSES = {
    "name": "Organs", "role": "refiner", "modality": "ct",
    "classes": [{"name": "Prostate", "value": 1}, {"name": "Bladder", "value": 2}],
    "validation": {"dsc": 0.55, "hd95": None, "asd": None, "failed": 1, "iteration": 40, "per_case": [
        {"id": "case002", "dsc": 0.45, "hd95": None, "asd": None,
         "classes": {"Prostate": {"dsc": 0.9, "hd95": 2.5, "asd": 0.75}, "Bladder": {"dsc": 0.0, "hd95": None,
                                                                                    "asd": None}}},
        {"id": "case005", "dsc": 0.8, "hd95": 4.0, "asd": 1.5,
         "classes": {"Prostate": {"dsc": 0.7, "hd95": 5.0, "asd": 2.0}, "Bladder": {"dsc": 0.9, "hd95": 3.0,
                                                                                   "asd": 1.0}}}]}}


def test_validation_table_single_and_multi_class(mrml_scene):
    one = {"name": "One", "validation": {"dsc": 0.4, "hd95": 3.0, "asd": 1.0, "failed": 1, "iteration": 20,
                                         "per_case": [{"id": "case000", "dsc": 0.8, "hd95": 3.0, "asd": 1.0},
                                                      {"id": "case001", "dsc": 0.0, "hd95": None, "asd": None}]}}
    table = review.validation_table(mrml_scene, one, {"case000": "CT A"})
    header, rows = mrml.read_table(table)
    assert table.GetName() == "One validation" and header == HEADER
    assert {c: table.GetColumnUnitLabel(c) for c in header if table.GetColumnUnitLabel(c)} == \
        {"HD95 (mm)": "mm", "ASD (mm)": "mm"}
    assert rows[0] == ["case000", "CT A", "Prostate", 0.8, 3.0, 1.0, ""]  # a format-1 card: one class, Prostate
    assert rows[1][:4] == ["case001", "", "Prostate", 0.0] and math.isnan(rows[1][4]) and math.isnan(rows[1][5])
    assert rows[1][6] == "empty result: DSC 0, distances undefined"
    assert review.validation_summary(one) == ("Validation of 'One' (iteration 20) on 2 case(s): mean DSC 0.400, "
                                              "HD95 3.00 mm, ASD 1.00 mm; 1 case(s) with an empty result.")

    rows = review.validation_rows(TWO_CLASSES)
    assert [(r["Case"], r["Segment"]) for r in rows] == [
        ("case002", "Prostate, Bladder (mean)"), ("case002", "Prostate"), ("case002", "Bladder"),
        ("case005", "Prostate, Bladder (mean)"), ("case005", "Prostate"), ("case005", "Bladder")]
    assert rows[0]["Note"] == "a class is empty in the result: distances undefined" and rows[0]["HD95 (mm)"] is None
    assert rows[1]["HD95 (mm)"] == 2.5 and rows[1]["Note"] == ""
    assert rows[2]["Note"] == "empty result: DSC 0, distances undefined"

    none = {"name": "NoVal", "validation": {}}
    assert review.validation_table(mrml_scene, none) is None
    assert "trained without validation cases (--val-cases 0)" in review.validation_summary(none)
    with pytest.raises(InputError, match="no validation cases to review"):
        review.review_cases(none, {}, mrml_scene)


def test_reference_box_covers_every_segment_plus_the_margin():
    grid = Volume(np.zeros((20, 30, 40), np.uint8), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0),
                  np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    a = np.zeros(grid.shape, np.uint8)
    a[4:6, 10:12, 20:22] = 1
    b = np.zeros(grid.shape, np.uint8)
    b[8, 15, 30] = 1
    cropped = mrml.crop_to_mask(grid.with_array(b))  # a mask cropped to its extent counts where it is
    box = review.reference_box(grid, [grid.with_array(a), cropped], margin_mm=5.0)
    np.testing.assert_allclose(box.size, [11 * 1.0 + 10, 6 * 2.0 + 10, 5 * 3.0 + 10])
    np.testing.assert_allclose(box.center, grid.index_to_physical(np.array([25.0, 12.5, 6.0])))
    np.testing.assert_allclose(box.axes, grid.direction)
    with pytest.raises(InputError, match="empty"):
        review.reference_box(grid, [grid.with_array(np.zeros(grid.shape, np.uint8))])


def _review_model(home, tmp_path, per_case, name="ReviewModel", source="synth-metricunet-hcp"):
    """A bundled model installed as ``name`` with a card holding ``per_case``."""
    pkg = tmp_path / "packages" / name
    shutil.copytree(ROOT / "Resources" / "Models" / source, pkg)
    card = json.loads((pkg / "model.json").read_text(encoding="utf-8"))
    card["name"] = name
    card["validation"] = {"dsc": 0.5, "hd95": 3.0, "asd": 1.0, "failed": 1, "iteration": 7, "cases": len(per_case),
                          "per_case": per_case}
    card["training"]["val_case_ids"] = [c["id"] for c in per_case]
    (pkg / "model.json").write_text(json.dumps(card))
    return models.install(pkg, name=name)


def _run_review(standins, widget, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while widget.review.timer.isActive():
        assert time.monotonic() < end, "the review did not finish in time"
        standins.fire_timers()
        time.sleep(0.05)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / max(int(np.count_nonzero(a)) + int(np.count_nonzero(b)), 1)


def test_review_segments_scene_and_folder_cases_next_to_their_references(standins, mrml_scene, tmp_path,
                                                                          monkeypatch):
    from VoxMetricTrainLib.selftest import add_phantom_cases

    from voxmetric.phantom import write_cases

    _, widget = train_widget(tmp_path / "home", monkeypatch)
    ui = widget.ui
    assert not ui.reviewButton.enabled and ui.validationLabel.text.startswith("Train a model")
    (pair,) = add_phantom_cases(mrml_scene, 1, shape=(48, 96, 96), seed=11)  # a scene case
    manifest = write_cases(tmp_path / "cases", 2, "ct", seed=21, shape=(48, 96, 96), spacing=(1.5, 1.5, 2.5))
    info = _review_model(tmp_path / "home", tmp_path, [
        {"id": "case000", "dsc": 0.81, "hd95": 3.5, "asd": 1.25},   # the scene row
        {"id": "case001", "dsc": 0.0, "hd95": None, "asd": None}])  # from the run's cases folder
    engine = widget.logic.engine
    run = tmp_path / "home" / "training" / "ReviewModel"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"cases": str(manifest), "segment": "Prostate"}))
    engine.run_dir, engine.case_pairs = run, {"case000": pair}

    widget.review.show(info)  # what the panel does when training has installed the model
    header, rows = mrml.read_table(ui.validationTableView.mrmlTableNode())
    assert header == HEADER and [r[:2] for r in rows] == [["case000", "VoxMetric phantom 11"], ["case001", "case001.nrrd"]]
    assert rows[1][6] == "empty result: DSC 0, distances undefined"
    assert ui.validationLabel.text.startswith("Validation of 'ReviewModel' (iteration 7) on 2 case(s)")
    assert ui.reviewButton.enabled

    ui.reviewButton.click()
    assert ui.reviewStatusLabel.text == "Reviewing 2 validation case(s)…"
    assert not ui.reviewButton.enabled and not ui.trainButton.enabled and ui.cancelButton.enabled
    _run_review(standins, widget)
    assert not [d for d in standins.DIALOGS if d[0] == "error"], standins.DIALOGS
    assert ui.reviewStatusLabel.text.startswith("Reviewed 2 validation case(s)")
    done = {r.case: r for r in widget.review.reviewer.reviewed}

    scene_case = done["case000"]  # the row's own nodes: the result sits on the same volume
    assert scene_case.volume_node is pair.volume_node and scene_case.reference_node is pair.segmentation_node
    assert scene_case.result_node.GetName() == "case000 ReviewModel"
    result = mrml.mask_from_segment(scene_case.result_node, "Prostate", pair.volume_node).array > 0
    truth = mrml.mask_from_segment(pair.segmentation_node, "Prostate", pair.volume_node).array > 0
    assert _dice(result, truth) > 0.35, _dice(result, truth)  # measured 0.417 with the bundled synth refiner

    folder_case = done["case001"]  # loaded from its files as nodes, the reference drawn as outlines
    assert folder_case.volume_node.GetName() == "case001"
    assert folder_case.reference_node.GetName() == "case001 reference"
    assert not folder_case.reference_node.GetDisplayNode().GetVisibility2DFill()
    from voxmetric.io import read_segment_mask, read_volume

    image = read_volume(tmp_path / "cases" / "case001.nrrd")
    np.testing.assert_array_equal(mrml.volume_from_node(folder_case.volume_node).array, image.array)
    np.testing.assert_array_equal(
        mrml.mask_from_segment(folder_case.reference_node, "Prostate", folder_case.volume_node).array,
        read_segment_mask(tmp_path / "cases" / "case001.seg.nrrd", "Prostate", reference=image).array)
    assert folder_case.result_node.GetSegmentation().GetNthSegment(0).GetName() == "Prostate"
    rois = [mrml_scene.GetNthNodeByClass(i, "vtkMRMLMarkupsROINode")
            for i in range(mrml_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"))]
    assert len(rois) == 2 and not any(r.GetDisplayVisibility() for r in rois)  # the boxes refined in, hidden
    assert ui.reviewButton.enabled and ui.trainButton.enabled

    # Cancel stops the review: its child process is killed, the other cases are dropped
    ui.reviewButton.click()
    for _ in range(3):
        standins.fire_timers()
    ui.cancelButton.click()
    assert ui.reviewStatusLabel.text == "Review cancelled." and not widget.review.running
    assert not widget.review.timer.isActive() and ui.reviewButton.enabled
    job = widget.review.reviewer.engine.job
    if job is not None:
        job._done.wait(30)
        assert job.process is None or job.process.poll() is not None

    # the scene closes: the table and the review go with it
    mrml_scene.Clear(0)
    assert ui.validationTableView.mrmlTableNode() is None and not ui.reviewButton.enabled
    widget.cleanup()


def test_review_refuses_a_localizer_and_lost_cases(standins, mrml_scene, tmp_path, monkeypatch):
    home = tmp_path / "home"
    _, widget = train_widget(home, monkeypatch)
    info = _review_model(home, tmp_path, [{"id": "case000", "dsc": 0.9, "hd95": 2.0, "asd": 0.5}], "Loc",
                         "synth-localizer")
    widget.review.show(info)
    widget.ui.reviewButton.click()
    assert standins.DIALOGS[-1][0] == "error" and "'Loc' is a localizer" in standins.DIALOGS[-1][1]
    standins.SLOT_ERRORS.clear()

    info = _review_model(home, tmp_path, [{"id": "case000", "dsc": 0.9, "hd95": 2.0, "asd": 0.5}])
    widget.logic.engine.run_dir = None  # no run, no scene rows: the cases cannot be found
    widget.review.show(info)
    widget.ui.reviewButton.click()
    assert "are not there any more" in standins.DIALOGS[-1][1] and not widget.review.running
    standins.SLOT_ERRORS.clear()
    widget.cleanup()


@pytest.mark.slow
def test_training_then_validation_table_then_review(standins, mrml_scene, tmp_path, monkeypatch):
    """The whole path: scene cases → training in the poll loop → the per-case validation table of
    the installed model → Review validation cases with it."""
    from VoxMetricTrainLib.selftest import TINY_UNET, add_phantom_cases

    _, widget = train_widget(tmp_path, monkeypatch)
    pairs = add_phantom_cases(mrml_scene, 3, shape=(24, 64, 64))
    widget.ui.addFromSceneButton.click()
    widget.ui.methodComboBox.currentText = "UNet"
    widget.ui.iterationsSpinBox.value = 10
    widget.ui.batchSizeSpinBox.value = 2
    widget.ui.deviceComboBox.currentText = "cpu"
    widget.ui.modelNameLineEdit.text = "ReviewedModel"
    widget.ui.extraArgsLineEdit.text = " ".join(TINY_UNET)
    widget.ui.trainButton.click()
    end = time.monotonic() + 300
    while widget._timer.isActive():
        assert time.monotonic() < end
        standins.fire_timers()
        time.sleep(0.05)
    assert not [d for d in standins.DIALOGS if d[0] == "error"], standins.DIALOGS
    card = models.read_card(widget.logic.engine.model.path)
    (val,) = card["validation"]["per_case"]
    header, rows = mrml.read_table(widget.ui.validationTableView.mrmlTableNode())
    assert header == HEADER and rows[0][0] == val["id"] and rows[0][3] == pytest.approx(val["dsc"])
    index = int(val["id"][4:])
    assert rows[0][1] == pairs[index].volume_node.GetName()

    widget.ui.reviewButton.click()
    _run_review(standins, widget)
    assert not [d for d in standins.DIALOGS if d[0] == "error"], standins.DIALOGS
    (done,) = widget.review.reviewer.reviewed
    assert done.volume_node is pairs[index].volume_node and done.result_node is not None
    widget.cleanup()
