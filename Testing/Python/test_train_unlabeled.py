"""VoxMetric Train with unlabeled volumes (semi-supervised methods such as CRII): the Qt-free
helpers (scene candidates, row checks, the exported images-only manifest), the panel's visible
widgets, and the widget: the source selector, the table's buttons, the checks before training
and a short CRII training from scene cases + scene volumes through the poll loop."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, train_widget

pytest.importorskip("slicer", reason="needs the slicer-core wheel")
pytestmark = pytest.mark.mrml
sys.path.insert(0, str(ROOT / "VoxMetricTrain"))

TINY_CRII = ["--base", "4", "--embed-channels", "8", "--head-channels", "4", "--patch", "32", "--per-case", "4",
             "--spacing-mm", "2", "--val-cases", "0"]


def _volume(scene, name: str, seed: int = 0):
    from voxmetric import mrml
    from voxmetric.phantom import make_case

    case = make_case(seed, "ct", shape=(16, 72, 72), spacing=(5.0, 5.0, 4.0))  # the whole body: air tells CT
    return mrml.node_from_volume(scene, case.image, name)


def test_panel_shows_the_unlabeled_widgets_of_the_source() -> None:
    from VoxMetricTrainLib import panel

    for source in ("none", "scene", "folder"):
        visible = panel.widgets(False, True, False, source).visible
        assert visible["unlabeledTableWidget"] == visible["addUnlabeledButton"] == (source == "scene")
        assert visible["unlabeledPathLineEdit"] == (source == "folder")
    assert not panel.widgets(False, True, False).visible["unlabeledTableWidget"]  # default: none


def test_helpers_check_rows_and_write_an_images_only_manifest(mrml_scene, tmp_path) -> None:
    from VoxMetricTrainLib.selftest import add_phantom_cases
    from VoxMetricTrainLib.unlabeled import (check_method, check_unlabeled, snapshot_unlabeled, unlabeled_argument,
                                             unlabeled_from_scene, write_unlabeled)

    from voxmetric.cases import load_unlabeled, validate_unlabeled
    from voxmetric.errors import ConfigError, InputError

    pairs = add_phantom_cases(mrml_scene, 1, shape=(12, 40, 40))
    others = [_volume(mrml_scene, f"extra {i}", 10 + i) for i in range(2)]
    mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    found = unlabeled_from_scene(mrml_scene, [p.volume_node for p in pairs])
    assert [n.GetName() for n in found] == ["extra 0", "extra 1"]  # not the labelled volume, not a labelmap
    check_unlabeled(found, [pairs[0].volume_node])
    for rows, text in (([None], "Unlabeled row 1: pick a volume"), ([others[0], others[0]], "repeats 'extra 0'"),
                       ([pairs[0].volume_node], "is also a labelled case")):
        with pytest.raises(InputError, match=text):
            check_unlabeled(rows, [pairs[0].volume_node])
    with pytest.raises(ConfigError, match="UNet learns from labelled cases only"):
        check_method("UNet", True)
    check_method("UNet", False)
    check_method("CRII", True)
    with pytest.raises(InputError, match="does not exist"):
        unlabeled_argument(str(tmp_path / "nowhere"), tmp_path)
    assert unlabeled_argument([], tmp_path) is None and unlabeled_argument(None, tmp_path) is None
    assert unlabeled_argument(found, tmp_path) == str(tmp_path / "unlabeled" / "manifest.json")
    manifest = write_unlabeled([snapshot_unlabeled(n, i) for i, n in enumerate(found)], tmp_path / "u")
    records = load_unlabeled(manifest)
    assert [r.id for r in records] == ["u-u000", "u-u001"] and all(r.label is None for r in records)
    assert [r.modality for r in records] == ["ct", "ct"]
    validate_unlabeled(records)
    from voxmetric.io import read_volume

    np.testing.assert_array_equal(read_volume(records[0].image).array, snapshot_unlabeled(found[0], 0).image.array)


def _steps(standins, widget) -> None:
    for _ in range(50):
        if widget._steps is None:
            return
        standins.fire_timers()


def test_widget_unlabeled_rows_and_checks(standins, mrml_scene, tmp_path, monkeypatch) -> None:
    from VoxMetricTrainLib.selftest import add_phantom_cases

    _, widget = train_widget(tmp_path, monkeypatch)
    ui, p = widget.ui, widget._parameterNode
    add_phantom_cases(mrml_scene, 2, shape=(12, 40, 40))
    extras = [_volume(mrml_scene, f"extra {i}", 10 + i) for i in range(2)]
    ui.addFromSceneButton.click()
    assert not ui.unlabeledTableWidget.visible and not ui.unlabeledPathLineEdit.visible  # source "none"
    ui.unlabeledSourceComboBox.currentText = "scene"
    assert p.unlabeledSource == "scene" and ui.unlabeledTableWidget.visible and not ui.unlabeledPathLineEdit.visible
    ui.addUnlabeledFromSceneButton.click()
    ui.addUnlabeledFromSceneButton.click()  # no duplicates
    table = ui.unlabeledTableWidget
    assert [table.cellWidget(r, 0).currentNode() for r in range(table.rowCount)] == extras
    ui.addUnlabeledButton.click()
    assert table.rowCount == 3
    ui.methodComboBox.currentText = "CRII-small"
    ui.trainButton.click()  # the empty row is named
    assert standins.DIALOGS[-1][0] == "error" and "Unlabeled row 3: pick a volume" in standins.DIALOGS[-1][1]
    table.selectRow(2)
    ui.removeUnlabeledButton.click()
    assert table.rowCount == 2
    ui.methodComboBox.currentText = "UNet"
    ui.trainButton.click()
    assert "UNet learns from labelled cases only" in standins.DIALOGS[-1][1]
    ui.unlabeledSourceComboBox.currentText = "folder"
    assert ui.unlabeledPathLineEdit.visible and not ui.unlabeledTableWidget.visible
    ui.methodComboBox.currentText = "CRII-small"
    ui.trainButton.click()  # no folder picked
    assert "unlabeled folder or manifest '' does not exist" in standins.DIALOGS[-1][1]
    standins.SLOT_ERRORS.clear()
    assert not widget.logic.busy and ui.trainButton.enabled
    widget.cleanup()


@pytest.mark.slow
def test_crii_trains_on_scene_cases_and_scene_volumes(standins, mrml_scene, tmp_path, monkeypatch) -> None:
    from VoxMetricTrainLib.selftest import add_phantom_cases

    from voxmetric import models

    _, widget = train_widget(tmp_path, monkeypatch)
    ui = widget.ui
    add_phantom_cases(mrml_scene, 2, shape=(16, 48, 48))
    for i in range(2):
        _volume(mrml_scene, f"extra {i}", 10 + i)
    ui.addFromSceneButton.click()
    ui.unlabeledSourceComboBox.currentText = "scene"
    ui.addUnlabeledFromSceneButton.click()
    ui.methodComboBox.currentText = "CRII-small"
    ui.modalityComboBox.currentText = "ct"  # small phantoms: no air around them to tell CT by
    ui.iterationsSpinBox.value = 2
    ui.batchSizeSpinBox.value = 2
    ui.deviceComboBox.currentText = "cpu"
    ui.modelNameLineEdit.text = "SemiModel"
    ui.extraArgsLineEdit.text = " ".join(TINY_CRII)
    ui.trainButton.click()
    _steps(standins, widget)
    end = time.monotonic() + 300
    while widget._timer.isActive():
        assert time.monotonic() < end, "the training did not finish in time"
        standins.fire_timers()
        time.sleep(0.05)
    assert not [d for d in standins.DIALOGS if d[0] == "error"], standins.DIALOGS
    run = widget.logic.engine.run_dir
    settings = json.loads((run / "run.json").read_text())
    assert settings["unlabeled"] == str(run / "unlabeled" / "manifest.json")
    assert sorted(f.name for f in (run / "unlabeled").iterdir()) == ["manifest.json", "u000.nrrd", "u001.nrrd"]
    card = next(m for m in models.list_models() if m.name == "SemiModel")
    assert models.load_package(card.path).card["training"]["unlabeled_cases"] == 2
    assert "+ 2 unlabeled" in ui.logPlainTextEdit.toPlainText()
    widget.cleanup()
