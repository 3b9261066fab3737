"""VoxMetric Prostate and the result's quality control: the QC warning and status texts (Qt-free),
the "Show uncertainty over the image" checkbox through the widget's poll loop (a stand-in job
with the engine's real done event), the uncertainty volume node shown over the image, and the
engine child process asked for the map."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import load_module

pytest.importorskip("slicer", reason="needs the slicer-core wheel")
pytestmark = pytest.mark.mrml

CHECK_QC = {"verdict": "CHECK", "ok": False, "codes": ["empty"], "reasons": ["Prostate: empty mask (0 mL)"],
            "classes": {"Prostate": {"voxels": 0, "volume_ml": 0.0}}}
OK_QC = {"verdict": "OK", "ok": True, "codes": [], "reasons": [], "classes": {"Prostate": {"volume_ml": 31.0}}}


def test_qc_texts() -> None:
    sys.path.insert(0, str(__import__("conftest").ROOT / "VoxMetricSeg"))
    from VoxMetricSegLib import panel
    from VoxMetricSegLib.logic import qc_warning, uncertainty_range

    from voxmetric.volume import Volume

    assert qc_warning(OK_QC) == "" and qc_warning({}) == ""
    text = qc_warning(CHECK_QC)
    assert text.startswith("The result needs a check") and "• Prostate: empty mask (0 mL)" in text and "Refine" in text
    assert panel.describe_result("result: OK — Prostate 31.0 mL", {"refine": 1.25, "total": 2.0}) == \
        "result: OK — Prostate 31.0 mL · refine 1.2 s · total 2.0 s"
    assert panel.describe_result("", {"localize": 1.0}) == "localize 1.0 s"
    a = np.zeros((4, 10, 10), np.float32)
    a[1:3, 2:8, 2:8] = np.linspace(0.01, 0.4, 72).reshape(2, 6, 6)
    lo, hi = uncertainty_range(Volume(a))
    assert lo == 0.0 and 0.38 < hi <= 0.4 and uncertainty_range(Volume(np.zeros((2, 2, 2))))[1] == 0.05


class _FakeJob:
    """A finished engine job: its events and the worker's result (what collect() read)."""

    def __init__(self, events, result) -> None:
        self.events, self.result, self.running = list(events), result, False

    def poll_events(self):
        out, self.events = self.events, []
        return out

    def cancel(self, wait=None) -> None:
        pass

    def run_cleanup(self) -> None:
        pass


NOTE = ("Stage 1's most confident region (confidence 0.77) did not refine to a plausible prostate (Prostate: "
        "implausible volume 6.3 mL (expected 10–300 mL for CT)); its region 2 (confidence 0.71) was used instead.")


def _done(qc: dict, verdict: str, message: str = "") -> list[dict]:
    return [{"event": "progress", "done": 50, "total": 100, "message": "refine"},
            {"event": "done", "found": qc["ok"], "localized": True, "confidence": 0.9, "verdict": verdict, "qc": qc,
             "timings": {"total": 1.5}, "message": message},
            {"event": "exit", "returncode": 0}]


def _run_until_idle(standins, widget) -> None:
    for _ in range(200):
        if not widget._timer.isActive():
            return
        standins.fire_timers()
    raise AssertionError("the poll loop did not finish")


def test_uncertainty_checkbox_node_overlay_and_qc_warning(standins, mrml_scene, monkeypatch) -> None:
    from VoxMetricSegLib.logic import StageOutput

    from voxmetric import mrml
    from voxmetric.volume import Box, Volume

    module = load_module("VoxMetricSeg")
    widget = module.VoxMetricSegWidget()
    widget.setup()
    widget.parent.isEntered = True
    image = Volume(np.full((10, 32, 32), 40, np.int16), (2.0, 2.0, 3.0))
    image.array[:, :, :3] = -1000  # air at the side: it looks like CT
    volume = mrml.node_from_volume(mrml_scene, image, "Scan")
    composites = [mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    widget._refresh()
    unc = np.zeros(image.shape, np.float32)
    unc[3:7, 10:20, 10:20] = 0.3
    mask = np.zeros(image.shape, np.uint8)
    mask[4:6, 12:18, 12:18] = 1
    calls: list[dict] = []
    engine = widget.logic.engine

    def start(stage, volume_node, **kw):
        calls.append({"stage": stage, **kw})
        qc, verdict = (CHECK_QC, "result: CHECK — Prostate: empty mask (0 mL)") if len(calls) == 1 else \
            (OK_QC, "result: OK — Prostate 31.0 mL (mean uncertainty 0.30)")
        output = StageOutput(Box((30.0, 30.0, 15.0), (40.0, 40.0, 30.0)), [("Prostate", image.with_array(mask))],
                             image.with_array(unc) if kw.get("uncertainty") else None)
        engine.job, engine.stage = _FakeJob(_done(qc, verdict, NOTE if len(calls) == 3 else ""), output), stage
        return engine.job

    monkeypatch.setattr(engine, "start", start)
    assert not widget._parameterNode.showUncertainty
    widget.ui.showUncertaintyCheckBox.click()  # checkbox → parameter node
    assert widget._parameterNode.showUncertainty
    widget.ui.segmentButton.click()
    _run_until_idle(standins, widget)
    assert calls[0]["stage"] == "segment" and calls[0]["uncertainty"] is True
    node = widget._parameterNode.uncertaintyVolume
    assert node is not None and node.GetName() == "Scan uncertainty"
    np.testing.assert_allclose(mrml.volume_from_node(node).array, unc)
    for c in composites:  # shown over the image in every slice view
        assert c.GetForegroundVolumeID() == node.GetID() and c.GetBackgroundVolumeID() == volume.GetID()
        assert c.GetForegroundOpacity() == pytest.approx(0.5)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == mrml.OVERLAY_COLOR_NODE_ID and display.GetApplyThreshold()
    assert widget.ui.statusLabel.text.startswith("result: CHECK — Prostate: empty mask (0 mL) · total 1.5 s")
    kind, text, title = standins.DIALOGS[-1]
    assert (kind, title) == ("warning", "Check the result") and "empty mask" in text

    standins.DIALOGS.clear()
    widget.ui.segmentButton.click()  # OK this time: no dialog; the same uncertainty node is reused
    _run_until_idle(standins, widget)
    assert widget._parameterNode.uncertaintyVolume is node and not standins.DIALOGS
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    assert widget.ui.statusLabel.text.startswith("result: OK — Prostate 31.0 mL")

    widget.ui.segmentButton.click()  # OK, but stage 2 used stage 1's second region: the engine's note is shown
    _run_until_idle(standins, widget)
    assert standins.DIALOGS[-1] == ("warning", NOTE, "Check the result")

    widget.ui.showUncertaintyCheckBox.click()  # off: no map asked for, none made
    widget.ui.segmentButton.click()
    _run_until_idle(standins, widget)
    assert calls[-1]["uncertainty"] is False
    widget.cleanup()


def test_the_engine_is_asked_for_the_map(mrml_scene) -> None:
    sys.path.insert(0, str(__import__("conftest").ROOT / "VoxMetricSeg"))
    from VoxMetricSegLib.logic import SegmentLogic

    from voxmetric import mrml
    from voxmetric.volume import Volume

    volume = mrml.node_from_volume(mrml_scene, Volume(np.zeros((4, 8, 8), np.int16)), "Scan")
    logic = SegmentLogic(python=sys.executable, env={"OMP_NUM_THREADS": "1"})
    job = logic.start("segment", volume, uncertainty=True)
    args = job.command
    assert args[args.index("--uncertainty-out") + 1] == str(logic.workdir / "uncertainty.nrrd")
    logic.cleanup()
    job = logic.start("localize", volume, uncertainty=True)  # no map without a refined result
    assert "--uncertainty-out" not in job.command
    logic.cleanup()
