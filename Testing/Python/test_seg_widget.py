"""VoxMetric Prostate's module file, executed: VoxMetricSegWidget's setup(), enter(), exit(),
cleanup(), every button and selector, the poll loop through whole jobs with the bundled
models, cancel, timeout, the dependency installer and each error dialog — on a real MRML scene
with Slicer's application layer stood in (slicer_standins.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, load_module

pytest.importorskip("slicer", reason="needs the slicer-core wheel")
pytestmark = pytest.mark.mrml
QUIET = {"OMP_NUM_THREADS": "1"}


def _phantom(scene, modality: str = "ct", seed: int = 3, shape=(60, 160, 160), name: str = "Phantom"):
    from voxmetric import mrml
    from voxmetric.phantom import make_case

    case = make_case(seed, modality, shape=shape, spacing=(2.5, 2.5, 3.0))  # the whole pelvis, air around it
    return mrml.node_from_volume(scene, case.image, name), case


def _widget(standins):
    module = load_module("VoxMetricSeg")
    widget = module.VoxMetricSegWidget()
    widget.setup()
    widget.logic.engine.python = sys.executable
    widget.logic.engine.env = dict(QUIET)
    widget.parent.isEntered = True
    return module, widget


def _run_until_idle(standins, widget, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while widget._timer.isActive():
        assert time.monotonic() < end, "the job did not finish in time"
        standins.fire_timers()
        time.sleep(0.05)


def _enabled(widget) -> dict[str, bool]:
    return {n: getattr(widget.ui, n).enabled for n in
            ("localizeButton", "refineButton", "segmentButton", "cancelButton", "show3DButton")}


def test_module_registers_and_setup_reflects_the_scene(standins, mrml_scene):
    module = load_module("VoxMetricSeg")
    parent = standins._ModuleParent()
    module.VoxMetricSeg(parent)
    assert parent.title == "VoxMetric Prostate" and "Segmentation" in parent.categories
    (register,) = standins.sys.modules["slicer"].app.connections["startupCompleted()"]
    register()  # Sample Data gets the locally generated phantom
    (source,) = standins._SampleDataLogic.sources
    assert source["sampleName"] == "VoxMetricPhantomCT"

    widget = module.VoxMetricSegWidget()
    widget.setup()  # used to raise AttributeError (ModelInfo.description)
    assert widget.ui.modelCardLabel.text.startswith("Pick an input volume")
    assert not any(_enabled(widget).values())
    labels = [widget.ui.modelComboBox.itemText(i) for i in range(widget.ui.modelComboBox.count)]
    assert labels[0].startswith("Default pipeline") and any("synth-metricunet-hcp" in t for t in labels)
    refiner = widget.ui.modelComboBox.findData("synth-metricunet-hcp")
    assert "synthetic" in widget.ui.modelComboBox.itemData(refiner, standins.Qt.ToolTipRole)  # the card's text

    volume, _ = _phantom(mrml_scene)  # the input selector follows the scene (none not allowed)
    assert widget.ui.inputSelector.currentNode() is volume and widget._parameterNode.inputVolume is volume
    assert widget.ui.modelCardLabel.text == ("Default CT pipeline: synth-localizer → synth-metricunet-hcp "
                                             "(bundled) (CT: detected from the intensities).")
    assert widget.ui.demoWarningLabel.visible
    assert _enabled(widget) == {"localizeButton": True, "refineButton": False, "segmentButton": True,
                                "cancelButton": False, "show3DButton": False}

    widget.ui.modalityComboBox.currentText = "MR"  # selector → parameter node → card
    assert widget._parameterNode.modality == "MR"  # the bundled models are for CT and MR alike
    assert widget.ui.modelCardLabel.text == ("Default MR pipeline: synth-localizer → synth-metricunet-hcp "
                                             "(bundled) (MR: chosen in Modality).")
    assert widget.ui.demoWarningLabel.visible and widget.ui.segmentButton.enabled
    widget.ui.modalityComboBox.currentText = "auto"
    index = widget.ui.modelComboBox.findData("synth")
    widget.ui.modelComboBox.currentIndex = index  # the model combo is bound to the parameter node
    assert widget._parameterNode.model == "synth"
    assert widget.ui.modelCardLabel.text.startswith("Pipeline synth: synth-localizer → synth-metricunet-hcp")

    widget.exit()  # disconnected: parameter changes no longer reach the widgets
    node = widget.logic.getParameterNode()
    node.SetParameter("modality", "MR")
    assert widget.ui.modalityComboBox.currentText == "auto"
    widget.enter()  # reconnected, and the GUI shows the node's values
    assert widget.ui.modalityComboBox.currentText == "MR" and widget.ui.modelComboBox.currentData == "synth"
    widget.ui.roiSelector.setCurrentNode(mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode"))
    assert widget._parameterNode.roi is not None
    widget.cleanup()


@pytest.mark.slow
def test_localize_refine_segment_through_the_poll_loop(standins, mrml_scene):
    from voxmetric import mrml

    _, widget = _widget(standins)
    volume, case = _phantom(mrml_scene)
    widget.ui.localizeButton.click()
    assert widget.logic.busy and widget.ui.cancelButton.enabled and not widget.ui.segmentButton.enabled
    workdir = widget.logic.engine.workdir
    assert workdir is not None and workdir.is_dir()
    from VoxMetricSegLib import panel

    with pytest.raises(panel.Refused):  # a second job is refused with a message; the first one goes on
        widget._start("segment")
    assert standins.DIALOGS[-1][0] == "error" and "A job is running" in standins.DIALOGS[-1][1]
    _run_until_idle(standins, widget)
    assert not workdir.exists(), "the copy of the scan must go when the job ends"
    roi = widget._parameterNode.roi
    assert roi is not None and widget.ui.roiSelector.currentNode() is roi
    assert widget.ui.refineButton.enabled and widget.ui.progressBar.value == 100
    assert "localize" in widget.ui.statusLabel.text

    widget.ui.refineButton.click()
    _run_until_idle(standins, widget)
    seg = widget._parameterNode.outputSegmentation
    assert seg is not None and seg.GetSegmentation().GetNthSegment(0).GetName() == "Prostate"
    mask = mrml.mask_from_segment(seg, "Prostate", volume).array  # accuracy: the self-test body's job
    assert mask.shape == case.labels.array.shape and set(np.unique(mask)) <= {0, 1}
    assert not seg.GetSegmentation().ContainsRepresentation("Closed surface")  # not built by default
    widget.ui.show3DButton.click()
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")

    widget.ui.replaceCheckBox.click()
    widget.ui.segmentButton.click()
    _run_until_idle(standins, widget)
    assert seg.GetSegmentation().GetNumberOfSegments() == 1  # replaced, not "Prostate 2"
    assert not [d for d in standins.DIALOGS if d[0] == "error" and "job is running" not in d[1]]
    widget.cleanup()


def _children_alive(pid: int) -> bool:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return bool(out.strip())


def test_cancel_timeout_scene_close_and_engine_errors(standins, mrml_scene):
    _, widget = _widget(standins)
    _phantom(mrml_scene)
    engine = widget.logic.engine

    widget.ui.segmentButton.click()  # cancel: no dialog, status says so, nothing left behind
    workdir, job = engine.workdir, engine.job
    widget.ui.cancelButton.click()
    _run_until_idle(standins, widget, 30)
    assert widget.ui.statusLabel.text == "Cancelled." and not workdir.exists()
    assert job.process is None or job.process.poll() is not None
    assert not [d for d in standins.DIALOGS if d[0] == "error"]

    engine.timeout = 1.0  # a job that outlives its timeout is killed, with a message
    widget.ui.segmentButton.click()
    workdir = engine.workdir
    _run_until_idle(standins, widget, 60)
    assert not workdir.exists()
    kind, text, _title = standins.DIALOGS[-1]
    assert kind == "error" and "time limit of 1 s" in text, standins.DIALOGS
    engine.timeout = 600.0

    widget.ui.localizeButton.click()  # closing the scene ends the job and deletes its files
    workdir, job = engine.workdir, engine.job
    mrml_scene.Clear(0)
    assert not job.running and not workdir.exists()
    widget.onSceneEndClose()
    assert widget._parameterNode is not None and not widget.ui.localizeButton.enabled

    _phantom(mrml_scene)
    widget.ui.deviceComboBox.currentText = "cuda"  # the engine's error reaches a dialog
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check needs a machine without CUDA")
    widget.ui.localizeButton.click()
    _run_until_idle(standins, widget, 120)
    kind, text, _title = standins.DIALOGS[-1]
    assert kind == "error" and text.startswith("Localize failed.") and "CUDA" in text, text
    standins.SLOT_ERRORS.clear()  # tryWithErrorDisplay re-raises into the slot, as in Slicer
    widget.cleanup()


def test_dependency_install_runs_in_child_processes(standins, mrml_scene, monkeypatch):
    from VoxMetricSegLib import deps

    module, widget = _widget(standins)
    _phantom(mrml_scene)
    monkeypatch.setattr(deps, "missing", lambda requirements: ["fakepkg>=1"])
    standins.ANSWERS[:] = [False]  # declined: nothing starts, the dialog says why
    widget.ui.localizeButton.click()
    assert "cannot run without fakepkg>=1" in standins.DIALOGS[-1][1] and not widget.logic.busy
    standins.SLOT_ERRORS.clear()

    monkeypatch.setattr(deps, "plan", lambda requirements, todo: [deps.Step("voxmetric", ("no-such-command",), "x")])
    widget.ui.localizeButton.click()  # accepted, but the install fails: an error dialog, no stage
    _run_until_idle(standins, widget, 60)
    assert standins.DIALOGS[-1][0] == "error" and "Could not finish x" in standins.DIALOGS[-1][1]
    assert widget.logic.engine.job is None

    steps = [deps.Step("voxmetric", ("--version",), "checking the engine")]
    monkeypatch.setattr(deps, "plan", lambda requirements, todo: steps)
    still_missing = iter([["fakepkg>=1"]])  # installed once the step ran
    monkeypatch.setattr(deps, "missing", lambda requirements: next(still_missing, []))
    calls = []
    monkeypatch.setattr(widget.logic.engine, "start", lambda *a, **k: calls.append((a, k)) or _NoJob())
    widget.ui.localizeButton.click()  # accepted: a child process installs, then the stage starts
    assert widget.logic.installer is not None and widget.ui.cancelButton.enabled
    end = time.monotonic() + 60
    while not calls and time.monotonic() < end:
        standins.fire_timers()
        time.sleep(0.05)
    assert calls and calls[0][0][0] == "localize" and widget.logic.installer is None
    widget._timer.stop()
    widget.cleanup()


class _NoJob:
    running = False

    def poll_events(self):
        return []


def test_no_mr_model_is_said_and_refused(standins, mrml_scene, tmp_path, monkeypatch):
    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path))
    monkeypatch.setenv("VOXMETRIC_BUNDLED_MODELS", str(_ct_only_bundle(tmp_path / "bundled")))
    _, widget = _widget(standins)
    _phantom(mrml_scene, "mr")
    assert widget.ui.modelCardLabel.text.startswith("No MR model installed (MR: detected from the intensities): "
                                                    "train one in VoxMetric Train")
    assert not widget.ui.localizeButton.enabled and not widget.ui.demoWarningLabel.visible
    widget.cleanup()


def _train(home: Path, cases: Path, method: str, name: str, *flags: str) -> None:
    cmd = [sys.executable, "-m", "voxmetric", "train", "--method", method, "--cases", str(cases), "--out",
           str(home / "models" / name), "--name", name, "--iterations", "4", "--batch-size", "2", "--device", "cpu",
           "--val-cases", "0", *flags]
    subprocess.run(cmd, check=True, capture_output=True, env={**__import__("os").environ, **QUIET,
                                                              "VOXMETRIC_HOME": str(home)})


@pytest.fixture(scope="module")
def mr_home(tmp_path_factory):
    """A models home with a tiny MR localizer and MR refiner trained here (seconds)."""
    home = tmp_path_factory.mktemp("mrhome")
    cases = home / "cases"
    subprocess.run([sys.executable, "-m", "voxmetric", "phantom", "--out", str(cases), "--cases", "2",
                    "--modality", "mr"], check=True, capture_output=True)
    _train(home, cases, "Localizer", "tiny-mr-localizer", "--base", "8", "--embed-channels", "8")
    _train(home, cases, "UNet", "tiny-mr-unet", "--base", "8", "--embed-channels", "16", "--patch", "32",
           "--per-case", "8", "--spacing-mm", "2")
    _ct_only_bundle(home / "models")
    return home


def _ct_only_bundle(folder: Path) -> Path:
    """``folder`` holding the bundled refiner re-saved as a CT-only model ``ct-only-refiner``."""
    from voxmetric import models

    pkg = models.load_package(ROOT / "Resources" / "Models" / "synth-metricunet-hcp")
    card = {k: v for k, v in pkg.card.items() if k in ("method", "role", "config", "data", "classes", "demo")}
    models.save_package(folder / "ct-only-refiner", dict(card, name="ct-only-refiner", modality="ct"),
                        pkg.state_dict, onnx=False)
    return folder


@pytest.mark.slow
def test_mr_models_listed_explained_and_used(standins, mrml_scene, mr_home, monkeypatch):
    monkeypatch.setenv("VOXMETRIC_HOME", str(mr_home))
    _, widget = _widget(standins)
    widget.logic.engine.env["VOXMETRIC_HOME"] = str(mr_home)
    volume, _ = _phantom(mrml_scene, "mr")
    labels = [widget.ui.modelComboBox.itemText(i) for i in range(widget.ui.modelComboBox.count)]
    assert "tiny-mr-unet (MR, UNet)" in labels
    assert widget.ui.modelCardLabel.text == ("Default MR pipeline: tiny-mr-localizer → tiny-mr-unet (installed) "
                                             "(MR: detected from the intensities).")
    assert not widget.ui.demoWarningLabel.visible  # not a demo model
    widget.ui.modelComboBox.currentIndex = widget.ui.modelComboBox.findData("ct-only-refiner")
    assert "is a CT model but this scan is MR" in widget.ui.modelCardLabel.text and not widget.ui.segmentButton.enabled
    widget.ui.modelComboBox.currentIndex = widget.ui.modelComboBox.findData("synth-metricunet-hcp")  # CT and MR
    assert widget.ui.modelCardLabel.text.startswith("tiny-mr-localizer → synth-metricunet-hcp (bundled; default MR")
    widget.ui.modelComboBox.currentIndex = widget.ui.modelComboBox.findData("tiny-mr-unet")
    assert widget.ui.modelCardLabel.text.startswith("tiny-mr-localizer → tiny-mr-unet (installed; default MR localizer)")
    widget.ui.segmentButton.click()
    _run_until_idle(standins, widget)
    assert not [d for d in standins.DIALOGS if d[0] == "error"], standins.DIALOGS
    assert widget._parameterNode.roi is not None and widget._parameterNode.outputSegmentation is not None
    widget.cleanup()


def test_module_files_are_thin():
    for name in ("VoxMetricSeg", "VoxMetricTrain"):
        assert len((ROOT / name / f"{name}.py").read_text(encoding="utf-8").splitlines()) < 400
    assert np  # numpy imported for the helpers above
