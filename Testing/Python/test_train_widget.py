"""VoxMetric Train's module file, executed: VoxMetricTrainWidget's setup(), enter(), exit(),
cleanup(), the case table handlers, the method form built from the registry and bound to the
parameter node, a few-iteration training through the poll loop (scene cases → worker export →
child process → installed model), fine-tuning from a model picked in Start from (with Freeze
encoder), cancel and the error dialogs — on a real MRML scene."""

from __future__ import annotations

import json
import time

import pytest

from conftest import train_widget

pytest.importorskip("slicer", reason="needs the slicer-core wheel")
pytestmark = pytest.mark.mrml


def _run_until_idle(standins, widget, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while widget._timer.isActive():
        assert time.monotonic() < end, "the training did not finish in time"
        standins.fire_timers()
        time.sleep(0.05)


def test_method_form_follows_the_registry_and_the_parameter_node(standins, mrml_scene, tmp_path, monkeypatch):
    from VoxMetricTrainLib import form

    from voxmetric.methods import available_methods, config_fields, get_method

    module, widget = train_widget(tmp_path, monkeypatch)
    combo, layout = widget.ui.methodComboBox, widget.ui.methodSettingsFormLayout
    assert [combo.itemText(i) for i in range(combo.count)] == available_methods()
    assert combo.itemData(combo.currentIndex, standins.Qt.ToolTipRole).startswith("refiner: ")
    p = widget._parameterNode
    assert p.method == "MetricUNet-HCP" and layout.rowCount() == len(config_fields(get_method(p.method).config_cls))

    combo.currentText = "Localizer"  # the combo is bound: method → parameter node → a new form
    assert p.method == "Localizer"
    rows = form.method_form("Localizer")
    assert layout.rowCount() == len(rows)
    base = next(w for w in widget.ui.methodSettingsCollapsibleButton.findChildren(standins.QSpinBox)
                if w.property("SlicerParameterName") == "method_base")
    assert base.value == get_method("Localizer").default_config().base  # the preset's value
    base.value = 8  # widget → parameter node
    assert p.getValue("method_base") == 8
    p.setValue("method_base", 16)  # parameter node → widget
    assert base.value == 16

    widget.ui.sourceComboBox.currentText = "folder"
    assert widget.ui.casesPathLineEdit.visible and not widget.ui.pairsTableWidget.visible
    widget.ui.sourceComboBox.currentText = "scene"
    assert widget.ui.pairsTableWidget.visible and not widget.ui.casesPathLineEdit.visible
    assert widget.ui.trainButton.enabled and not widget.ui.resumeButton.enabled and not widget.ui.cancelButton.enabled

    widget.exit()
    widget.logic.getParameterNode().SetParameter("modelName", "Elsewhere")
    assert widget.ui.modelNameLineEdit.text == "MyProstateModel"
    widget.enter()
    assert widget.ui.modelNameLineEdit.text == "Elsewhere" and p is not widget._parameterNode
    widget.cleanup()


def test_case_rows_and_error_dialogs(standins, mrml_scene, tmp_path, monkeypatch):
    from VoxMetricTrainLib.selftest import add_phantom_cases

    _, widget = train_widget(tmp_path, monkeypatch)
    pairs = add_phantom_cases(mrml_scene, 2, shape=(12, 40, 40))
    widget.ui.addFromSceneButton.click()
    widget.ui.addFromSceneButton.click()  # no duplicates
    table = widget.ui.pairsTableWidget
    assert table.rowCount == 2 and table.cellWidget(1, 1).currentNode() is pairs[1].segmentation_node
    widget.ui.addPairButton.click()
    assert table.rowCount == 3 and table.item(2, 2).text() == "Prostate"
    widget.ui.trainButton.click()  # row 3 has no nodes: a dialog says which row
    assert standins.DIALOGS[-1][0] == "error" and "Row 3: pick both a volume and a segmentation" in standins.DIALOGS[-1][1]
    table.selectRow(2)
    widget.ui.removePairButton.click()
    assert table.rowCount == 2
    widget.ui.modelNameLineEdit.text = "bad name!"
    widget.ui.trainButton.click()
    assert "is not valid" in standins.DIALOGS[-1][1]
    standins.SLOT_ERRORS.clear()
    assert not widget.logic.busy and widget.ui.trainButton.enabled
    widget.cleanup()


@pytest.mark.slow
def test_training_through_the_poll_loop_installs_the_model(standins, mrml_scene, tmp_path, monkeypatch):
    from VoxMetricTrainLib.selftest import add_phantom_cases

    from voxmetric import models

    _, widget = train_widget(tmp_path, monkeypatch)
    add_phantom_cases(mrml_scene, 3, shape=(24, 64, 64))
    widget.ui.addFromSceneButton.click()
    widget.ui.methodComboBox.currentText = "UNet"
    p = widget._parameterNode
    for name, value in (("method_base", 8), ("method_embed_channels", 16), ("method_patch", "32"),
                        ("method_per_case", 10), ("method_spacing_mm", 2.0)):
        p.setValue(name, value)
    widget.ui.iterationsSpinBox.value = 4
    widget.ui.batchSizeSpinBox.value = 2
    widget.ui.deviceComboBox.currentText = "cpu"
    widget.ui.modelNameLineEdit.text = "WidgetModel"
    widget.ui.extraArgsLineEdit.text = "--val-every 2"
    widget.ui.trainButton.click()
    assert widget.ui.cancelButton.enabled and not widget.ui.trainButton.enabled
    widget.ui.trainButton.click()  # disabled: ignored
    _run_until_idle(standins, widget)
    assert not [d for d in standins.DIALOGS if d[0] == "error"], standins.DIALOGS
    assert widget.ui.statusLabel.text.startswith("Model 'WidgetModel' installed")
    assert "WidgetModel" in [m.name for m in models.list_models()]
    run = json.loads((widget.logic.engine.run_dir / "run.json").read_text())
    args = run["extra_args"]
    assert args[args.index("--base") + 1] == "8" and args[args.index("--spacing-mm") + 1] == "2.0"
    assert args[-2:] == ["--val-every", "2"]
    assert standins.sys.modules["slicer"].modules.plots.logic().shown  # the loss chart was shown
    assert widget.logic.engine.table_node.GetTable().GetNumberOfRows() >= 1

    widget.ui.modelNameLineEdit.text = "WidgetModel2"  # cancel while training: the status says so
    widget.ui.trainButton.click()
    for _ in range(6):
        standins.fire_timers()
    widget.ui.cancelButton.click()
    _run_until_idle(standins, widget, 60)
    assert widget.ui.statusLabel.text.startswith("Cancelled") or "Cancelled" in widget.ui.logPlainTextEdit.toPlainText()
    assert widget.ui.resumeButton.enabled == widget.logic.engine.can_resume("WidgetModel2")
    widget.cleanup()


class _RecordedJob:
    """The training child process, recorded instead of started."""

    def __init__(self, args, **_kw):
        self.args, self.running = list(args), False

    def poll_events(self):
        return []

    def cancel(self, wait=None):
        pass


def test_start_from_a_model_and_freeze_encoder(standins, mrml_scene, tmp_path, monkeypatch):
    from VoxMetricTrainLib import logic as logic_module
    from VoxMetricTrainLib.selftest import save_tiny_model

    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path))
    save_tiny_model(tmp_path / "made", "tiny-base")
    _, widget = train_widget(tmp_path, monkeypatch)
    combo, box, p = widget.ui.startFromComboBox, widget.ui.freezeEncoderCheckBox, widget._parameterNode
    values = lambda: [combo.itemData(i) for i in range(combo.count)]  # noqa: E731
    widget.ui.methodComboBox.currentText = "UNet"
    assert values() == ["", "synth-metricunet-hcp", "tiny-base"]  # scratch, then the UNet family's packages
    assert combo.currentText == "scratch" and p.startFrom == "" and not box.enabled
    base = lambda: next(w for w in widget.ui.methodSettingsCollapsibleButton.findChildren(standins.QSpinBox)  # noqa: E731
                        if w.property("SlicerParameterName") == "method_base")
    assert base().value == 32  # the preset's

    combo.currentIndex = combo.findData("tiny-base")  # pick a model: the parameter node, its settings, the box
    assert p.startFrom == "tiny-base" and box.enabled and combo.currentText == "tiny-base (UNet, ct, installed)"
    assert base().value == 8 and p.getValue("method_patch") == "32"  # the package's settings
    box.checked = True
    assert p.freezeEncoder
    assert widget.ui.averageFromSpinBox.value == 0.0  # off by default: the best validated weights
    widget.ui.averageFromSpinBox.value = 0.5
    assert p.averageFrom == 0.5

    monkeypatch.setattr(logic_module, "Job", _RecordedJob)
    (tmp_path / "cases").mkdir()
    widget.ui.sourceComboBox.currentText = "folder"
    p.casesPath = tmp_path / "cases"
    widget.ui.modelNameLineEdit.text = "Tuned"
    widget.ui.trainButton.click()
    standins.fire_timers()  # folder cases: the job starts on the first tick
    assert not [d for d in standins.DIALOGS if d[0] == "error"], standins.DIALOGS
    args = widget.logic.engine.job.args
    assert args[args.index("--init-from") + 1] == "tiny-base" and "--freeze-encoder" in args
    assert args[args.index("--base") + 1] == "8"  # the form shows, and passes, the package's settings
    assert args[args.index("--average-from") + 1] == "0.5"
    run = json.loads((widget.logic.engine.run_dir / "run.json").read_text())
    assert run["init_from"] == "tiny-base" and run["freeze_encoder"] is True

    combo.currentIndex = 0  # back to scratch: nothing to freeze, the preset's settings
    assert p.startFrom == "" and not box.enabled and not box.checked and not p.freezeEncoder
    assert base().value == 32
    combo.currentIndex = combo.findData("tiny-base")
    widget.ui.methodComboBox.currentText = "Localizer"  # another family: its own packages, scratch again
    assert values() == ["", "synth-localizer"] and p.startFrom == "" and not box.enabled
    widget.ui.methodComboBox.currentText = "MetricUNet-HCP"
    assert values() == ["", "synth-metricunet-hcp", "tiny-base"] and combo.currentIndex == 0
    widget.cleanup()


@pytest.mark.slow
def test_fine_tuning_through_the_poll_loop_records_the_model_it_started_from(standins, mrml_scene, tmp_path,
                                                                              monkeypatch):
    from VoxMetricTrainLib.selftest import add_phantom_cases, save_tiny_model

    from voxmetric import models

    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path))
    base = save_tiny_model(tmp_path / "made", "tiny-base")
    _, widget = train_widget(tmp_path, monkeypatch)
    add_phantom_cases(mrml_scene, 2, shape=(16, 48, 48))  # one to train on, one to validate
    widget.ui.addFromSceneButton.click()
    widget.ui.methodComboBox.currentText = "UNet"
    combo = widget.ui.startFromComboBox
    combo.currentIndex = combo.findData("tiny-base")
    widget.ui.freezeEncoderCheckBox.checked = True
    widget.ui.iterationsSpinBox.value = 2
    widget.ui.batchSizeSpinBox.value = 2
    widget.ui.deviceComboBox.currentText = "cpu"
    widget.ui.modelNameLineEdit.text = "TunedModel"
    widget.ui.extraArgsLineEdit.text = "--val-every 2"
    widget.ui.trainButton.click()
    _run_until_idle(standins, widget)
    assert not [d for d in standins.DIALOGS if d[0] == "error"], standins.DIALOGS
    assert widget.ui.statusLabel.text.startswith("Model 'TunedModel' installed")
    card = models.read_card(models.find_model("TunedModel").path)
    start = card["training"]["init_from"]
    assert start["name"] == "tiny-base" and start["weights_sha256"] == models.read_card(base.path)["weights_sha256"]
    assert card["training"]["freeze_encoder"] is True and card["config"]["base"] == 8
    run = json.loads((widget.logic.engine.run_dir / "run.json").read_text())
    assert run["init_from"] == "tiny-base" and run["freeze_encoder"] is True
    widget.cleanup()
