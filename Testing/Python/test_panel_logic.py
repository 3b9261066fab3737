"""The Qt-free decisions behind the two panels and the job runner they rely on: model plans
(CT/MR, why, demo), button states, the method form's flags, one job at a time, timeouts that
kill, temporary folders that go, cropped masks that give the same segment."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

sys.path[:0] = [str(ROOT / "VoxMetricSeg"), str(ROOT / "VoxMetricTrain")]

from VoxMetricSegLib import deps, panel  # noqa: E402
from VoxMetricTrainLib import form  # noqa: E402
from VoxMetricTrainLib import panel as train_panel  # noqa: E402

from voxmetric import models  # noqa: E402
from voxmetric.jobs import Job, running_jobs  # noqa: E402


def _info(name, role, modality, bundled=False, demo=False):
    return models.ModelInfo(name, role, modality, "UNet", Path(name), bundled, demo, f"about {name}")


def test_model_plan_says_what_runs_and_why():
    reg = panel.Registry((_info("ct-loc", "localizer", "ct", True, True), _info("ct-ref", "refiner", "ct", True, True),
                          _info("mr-ref", "refiner", "mr")), ())
    plan = panel.model_plan("", "ct", reg, "detected from the intensities")
    assert plan.text == "Default CT pipeline: ct-loc → ct-ref (bundled) (CT: detected from the intensities)."
    assert plan.runnable and plan.demo
    mr = panel.model_plan("", "mr", reg)
    assert not mr.runnable and mr.text.startswith("No MR model installed: train one in VoxMetric Train")
    picked = panel.model_plan("mr-ref", "mr", reg)
    assert not picked.runnable and "No MR localizer" in picked.text
    wrong = panel.model_plan("ct-ref", "mr", reg)
    assert "is a CT model but this scan is MR" in wrong.text and not wrong.runnable
    assert [c.value for c in panel.model_choices(reg)] == ["", "ct-ref", "mr-ref"]
    assert panel.model_plan("", None, reg).text.startswith("Pick an input volume")
    assert panel.read_registry().error == ""


def test_default_plan_matches_the_engine_resolver():
    reg = panel.read_registry()
    plan = panel.model_plan("", "ct", reg)
    loc, ref = models.resolve_pipeline(None, "ct")
    assert (plan.localizer, plan.refiner) == (models.read_card(loc)["name"], models.read_card(ref)["name"])


def test_buttons_one_job_at_a_time():
    idle = panel.buttons(True, False, False, busy=False, runnable=True)
    assert idle.localizeButton and idle.segmentButton and not idle.refineButton and not idle.cancelButton
    busy = panel.buttons(True, True, True, busy=True, runnable=True)
    assert not (busy.localizeButton or busy.refineButton or busy.segmentButton or busy.show3DButton) and busy.cancelButton
    assert not panel.buttons(True, True, False, False, runnable=False).segmentButton
    w = train_panel.widgets(busy=False, from_scene=False, resumable=True)
    assert w.enabled == {"trainButton": True, "resumeButton": True, "cancelButton": False,
                         "freezeEncoderCheckBox": False}  # from scratch: nothing to freeze
    assert train_panel.widgets(busy=True, from_scene=False, resumable=True, start_from="m").enabled == \
        {"trainButton": False, "resumeButton": False, "cancelButton": True, "freezeEncoderCheckBox": True}
    assert w.visible["casesPathLineEdit"] and not w.visible["pairsTableWidget"]


def test_start_from_lists_the_packages_a_method_can_fine_tune(tmp_path, monkeypatch):
    """VoxMetric Train's "Start from" list: scratch, then the packages of the method's family whose
    settings the engine's --init-from check accepts; each listed one passes the engine's full check
    (settings and weights), the others are refused by it or belong to another family."""
    from VoxMetricTrainLib.selftest import save_tiny_model

    from voxmetric.errors import ModelError
    from voxmetric.methods import get_method

    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path / "home"))  # the bundled demo models stay listed
    save_tiny_model(tmp_path, "my-unet")
    odd = models.read_card(save_tiny_model(tmp_path / "odd", "odd-settings").path)  # settings from elsewhere
    odd["config"]["no_such_setting"] = 1
    (models.models_dir() / "odd-settings" / models.CARD).write_text(json.dumps(odd))
    values = {m: [c.value for c in train_panel.start_choices(m)] for m in ("UNet", "MetricUNet-HCP", "Localizer",
                                                                             "CRII-small", "LSNet")}
    assert values["UNet"] == values["MetricUNet-HCP"] == ["", "synth-metricunet-hcp", "my-unet"]
    assert values["Localizer"] == ["", "synth-localizer"]
    # the localizer's settings read as CRII's too (the engine's card check alone would list it), but
    # its network is another family's: left out
    assert values["CRII-small"] == values["LSNet"] == [""]
    models.init_config(models.read_card(models.find_model("synth-localizer").path), get_method("CRII-small"))
    for method, names in values.items():
        for name in names[1:]:
            init = models.initial_weights(name, get_method(method))
            assert init.source["name"] == init.card["name"] == name  # the card: a further run's recipe starts there
    with pytest.raises(ModelError, match="no_such_setting"):
        models.initial_weights("odd-settings", get_method("UNet"))
    first = train_panel.start_choices("UNet")
    assert first[0].label == "scratch" and "Classes: Prostate" in first[-1].tooltip
    assert first[-1].label == "my-unet (UNet, ct, installed)"
    def no_jsonschema():
        raise ImportError("No module named 'jsonschema'", name="jsonschema")

    with monkeypatch.context() as patched:  # before VoxMetric Prostate installs the dependencies
        patched.setattr(models, "list_models", no_jsonschema)
        (only,) = train_panel.start_choices("UNet")
    assert only.value == "" and "jsonschema is missing" in only.tooltip
    # choosing a model puts its settings into the form (the preset's otherwise)
    assert form.method_defaults("UNet", "my-unet")["method_base"] == 8 != form.method_defaults("UNet")["method_base"]


def test_item_data_connector_binds_a_combo_whose_items_change():
    """The model and Start from combos' connector body: values are item data, an unknown value selects the
    first entry, and mixed into a class with Slicer's abstract GuiConnector API it can be made."""
    import abc

    from standins_qt import QComboBox

    class SlicerGuiConnector(abc.ABC):  # slicer.parameterNodeWrapper.GuiConnector's abstract API
        @staticmethod
        @abc.abstractmethod
        def canRepresent(widget, datatype): ...

        @staticmethod
        @abc.abstractmethod
        def create(widget, datatype): ...

        def __init__(self):
            super().__init__()
            self._callback = None

        def changed(self, *_args):
            if self._callback:
                self._callback()

        @abc.abstractmethod
        def _connect(self): ...

        @abc.abstractmethod
        def _disconnect(self): ...

        @abc.abstractmethod
        def widget(self): ...

        @abc.abstractmethod
        def read(self): ...

        @abc.abstractmethod
        def write(self, value): ...

    with pytest.raises(TypeError, match="abstract"):
        type("Bare", (SlicerGuiConnector,), {})()

    combo = QComboBox()
    connector = type("StartFrom", (panel.ItemDataConnector, SlicerGuiConnector), {})(combo)
    assert connector.widget() is combo and connector.read() == train_panel.SCRATCH  # empty combo
    choices = [train_panel.StartChoice("scratch", "", ""), train_panel.StartChoice("m (UNet)", "m", "tip")]
    train_panel.fill(combo, choices, keep="m")
    assert combo.currentText == "m (UNet)" and connector.read() == "m" and combo.itemData(1, 3) == "tip"
    seen = []
    connector._callback = lambda: seen.append(connector.read())
    connector._connect()
    connector.write("gone")  # a model no longer listed: scratch
    assert seen == [""] and combo.currentIndex == 0
    connector._disconnect()
    train_panel.fill(combo, choices, keep="m")
    assert seen == [""] and combo.currentIndex == 1


def test_status_texts_and_modality_guess():
    assert panel.progress_of({"event": "progress", "done": 1, "total": 4, "message": "m"}) == (25, "m")
    assert panel.status_of({"event": "exit", "timed_out": True, "message": "too long"}).text == "too long"
    assert panel.describe_timings({"localize": 1.0, "total": 2.5}) == "localize 1.0 s · total 2.5 s"
    assert panel.expectation("cpu").startswith("Running on the CPU")
    ct = np.full((64, 128, 128), -1000, np.int16)
    ct[:, 20:100, 20:100] = 40
    assert panel.guess_modality(ct) == "ct" and panel.guess_modality(np.abs(ct).astype(np.float32) / 10 + 5) == "mr"


def test_method_form_and_flags_come_from_the_registry():
    from voxmetric.errors import ConfigError
    from voxmetric.methods import available_methods, config_fields, get_method

    for name in available_methods():
        rows = form.method_form(name)
        assert [r.name for r in rows] == [s.name for s in config_fields(get_method(name).config_cls)]
        assert form.method_flags(name, form.method_defaults(name)) == []  # the preset: nothing to pass
    values = {**form.method_defaults("MetricUNet-HCP"), "method_base": 8, "method_strategies": "H", "method_augment": False}
    flags = form.method_flags("MetricUNet-HCP", values)
    assert dict(zip(flags[::2], flags[1::2])) == {"--strategies": "H", "--augment": "false", "--base": "8"}
    with pytest.raises(ConfigError, match="slab"):
        form.method_flags("UNet", {"method_slab": 4})


def test_dependency_plan():
    req = ROOT / "Resources" / "requirements.txt"
    assert deps.missing(req, installed=lambda n: True, has_torch=lambda: True) == []
    todo = deps.missing(req, installed=lambda n: n != "monai", has_torch=lambda: False)
    assert todo == [deps.TORCH_REQUIREMENT, "monai>=1.3"]
    steps = deps.plan(req, todo, installed=lambda n: False)
    assert [s.module for s in steps] == ["pip", "light_the_torch", "pip"] and steps[-1].args == ("install", "monai>=1.3")


def test_job_timeout_kills_the_tree_and_cleans_up(tmp_path):
    folder = tmp_path / "scan-copy"
    folder.mkdir()
    job = Job(["phantom", "--out", str(tmp_path / "out"), "--cases", "500"], timeout=1.5,
              cleanup=lambda: __import__("shutil").rmtree(folder, ignore_errors=True))
    t0 = time.monotonic()
    job.wait(60)
    events = job.poll_events()
    exit_event = events[-1]
    assert exit_event["event"] == "exit" and exit_event["timed_out"] and "time limit of 2 s" in exit_event["message"]
    assert time.monotonic() - t0 < 20 and job.process is not None and job.process.poll() is not None
    assert not folder.exists() and job not in running_jobs()


def test_job_hooks_run_in_the_worker(tmp_path):
    import threading

    seen = {}

    def prepare(emit):
        seen["prepare"] = threading.current_thread() is not threading.main_thread()
        emit({"event": "progress", "done": 0, "total": 1, "message": "writing"})

    job = Job(["--version"], prepare=prepare, collect=lambda emit: "collected", cleanup=lambda: seen.setdefault("c", 1))
    job.wait(60)
    events = job.poll_events()
    assert seen == {"prepare": True, "c": 1} and job.result == "collected"
    assert events[0]["message"] == "writing" and events[-1]["returncode"] == 0 and events[-1]["message"] == ""
    failing = Job(["--version"], prepare=lambda emit: (_ for _ in ()).throw(OSError("disk full")))
    failing.wait(30)
    ev = failing.poll_events()
    assert ev[-2] == {"event": "error", "message": "OSError: disk full"} and ev[-1]["returncode"] == -1
    assert failing.process is None  # the child never started


@pytest.mark.mrml
def test_second_stage_refused_and_folder_removed(mrml_scene):
    from VoxMetricSegLib import SegmentLogic
    from VoxMetricSegLib.logic import JobRunningError

    from voxmetric import mrml
    from voxmetric.phantom import make_case

    node = mrml.node_from_volume(mrml_scene, make_case(1, "ct", shape=(20, 64, 64)).image, "CT")
    logic = SegmentLogic(python=sys.executable)
    job = logic.start("localize", node)
    workdir = logic.workdir
    with pytest.raises(JobRunningError, match="still running"):
        logic.start("segment", node)
    assert job.running and workdir is not None and workdir.exists()  # the first job was not harmed
    logic.cleanup()
    assert not job.running and not workdir.exists()


@pytest.mark.mrml
def test_cropped_mask_gives_the_same_segment(mrml_scene):
    from voxmetric import mrml
    from voxmetric.volume import Volume

    vol = Volume(np.zeros((30, 40, 50), np.int16), np.array([0.8, 0.9, 2.0]), np.array([5.0, -3, 7]), np.eye(3))
    node = mrml.node_from_volume(mrml_scene, vol, "v")
    mask = np.zeros(vol.shape, np.uint8)
    mask[10:14, 5:20, 30:41] = 1
    crop = mrml.crop_to_mask(vol.with_array(mask))
    assert crop.shape == (6, 17, 13)
    seg, _ = mrml.write_mask_segment(None, vol.with_array(np.ones(vol.shape, np.uint8)), node, "Prostate", scene=mrml_scene)
    seg, _ = mrml.write_mask_segment(seg, crop, node, "Prostate", replace=True, scene=mrml_scene)
    np.testing.assert_array_equal(mrml.mask_from_segment(seg, "Prostate", node).array, mask)  # old voxels gone
    small = mrml.mask_from_segment(seg, "Prostate", node, crop=True)
    np.testing.assert_array_equal(mrml.paste_into(small, vol).array, mask)


def test_mean_weights_flag_only_when_asked_for():
    from VoxMetricTrainLib.panel import average_flags

    assert average_flags(0.0) == [] and average_flags(0.5) == ["--average-from", "0.5"]
