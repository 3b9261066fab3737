"""VoxMetricSeg: two-stage prostate segmentation in CT and MR (Localize → editable ROI → Refine).

Thin by design (DESIGN.md rule 3): the widget wires the .ui to a parameter node and copies the
decisions of VoxMetricSegLib.panel (model list, which model runs and why, button states, status
texts) into its widgets; the work runs in a child process through VoxMetricSegLib.SegmentLogic
(one job at a time, nothing scan-sized on the GUI thread), and the self-test body is shared
with pytest.
"""

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, GuiConnector, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Developer mode (module path = this folder in a source checkout): make the engine importable.
_SOURCE_ROOT = Path(__file__).resolve().parents[1]
if (_SOURCE_ROOT / "voxmetric").is_dir() and str(_SOURCE_ROOT) not in sys.path:
    sys.path.insert(0, str(_SOURCE_ROOT))

from VoxMetricSegLib import SegmentLogic, deps, evaluate, evaluate_panel, panel  # noqa: E402  (Qt-free; imports nothing heavy)


class VoxMetricSeg(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VoxMetric Prostate")
        self.parent.categories = [_("Segmentation")]
        self.parent.contributors = ["VoxMetric developers"]
        self.parent.helpText = _(
            "Segment the prostate in CT or MR in two stages: <b>Localize</b> places an editable ROI "
            "box, <b>Refine</b> delineates the gland inside it, <b>Segment Prostate</b> does both. "
            "The bundled models are trained on synthetic images (CT and MR), then self-trained on a few "
            "unlabeled real scans: research use only, not for clinical use.")
        self.parent.acknowledgementText = _(
            "Methods: MetricUNet (He et al., Medical Image Analysis 2021) and related papers.")
        slicer.app.connect("startupCompleted()", _registerSampleData)


def _registerSampleData() -> None:
    """A CT phantom in Sample Data, generated locally by the engine (nothing is downloaded)."""
    import SampleData

    def makePhantom(source: Any) -> list[Any]:
        from voxmetric.io import write_volume
        from voxmetric.phantom import make_case

        path = Path(slicer.app.temporaryPath) / "VoxMetricPhantomCT.nrrd"
        if not path.exists():
            write_volume(make_case(seed=7, modality="ct").image, path)
        return [slicer.util.loadVolume(str(path), {"name": "VoxMetricPhantomCT"})]

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="VoxMetric", sampleName="VoxMetricPhantomCT", uris=[], fileNames=[], nodeNames=[],
        customDownloader=makePhantom,
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "VoxMetricSeg.png"))


@parameterNodeWrapper
class VoxMetricSegParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    outputSegmentation: vtkMRMLSegmentationNode
    modality: Annotated[str, Choice(["auto", "CT", "MR"])] = "auto"
    model: str = panel.DEFAULT_MODEL  # a pipeline or refiner name; "" = the default pipeline
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    replaceExisting: bool = False
    resultSegmentation: vtkMRMLSegmentationNode  # Evaluate: result vs reference, on compareVolume's grid
    resultSegment: str = ""
    referenceSegmentation: vtkMRMLSegmentationNode
    referenceSegment: str = ""
    compareVolume: vtkMRMLScalarVolumeNode  # None: the reference's own volume
    metricsTable: vtkMRMLTableNode
    showUncertainty: bool = False
    uncertaintyVolume: vtkMRMLScalarVolumeNode  # the last uncertainty map (reused by the next run)

    if TYPE_CHECKING:  # what @parameterNodeWrapper adds
        parameterNode: Any

        def __init__(self, parameterNode: Any) -> None: ...
        def connectGui(self, gui: Any) -> int: ...
        def connectParametersToGui(self, mapping: dict[str, Any]) -> int: ...
        def disconnectGui(self, tag: int) -> None: ...


class DataComboConnector(panel.ItemDataConnector, GuiConnector):
    """A combo box ↔ a str parameter (``model``, the Evaluate segments): its items carry the values
    as item data (model names from the registry, segment names), so the choices can change."""


class VoxMetricSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: VoxMetricSegLogic | None = None
        self._parameterNode: VoxMetricSegParameterNode | None = None
        self._guiTags: list[int] = []
        self._registry = panel.Registry()
        self._modalityCache: tuple[Any, str] | None = None
        self._followed: dict[str, Any] = {}  # nodes whose changes refresh the panel
        self._stage = ""
        self._events: list[dict[str, Any]] = []
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VoxMetricSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VoxMetricSegLogic()
        self.ui.localizeButton.clicked.connect(lambda: self._start("localize"))
        self.ui.refineButton.clicked.connect(lambda: self._start("refine"))
        self.ui.segmentButton.clicked.connect(lambda: self._start("segment"))
        self.ui.cancelButton.clicked.connect(self._cancel)
        self.ui.show3DButton.clicked.connect(self._show3D)
        self.evaluation = evaluate_panel.EvaluateSection(
            self.ui, self.logic.evaluator, qt.QTimer(), lambda: self._parameterNode, lambda: slicer.mrmlScene,
            slicer.util.tryWithErrorDisplay, lambda name: qt.QFileDialog.getSaveFileName(
                None, _("Export the comparison table"), name, "CSV (*.csv)"), self._refresh)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._fillModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module closed (Slicer exits or the module is reloaded): stop the job, delete its files."""
        self._timer.stop()
        if self.logic:
            self.logic.cleanup()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        self._fillModels()  # models trained or installed meanwhile appear at once
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        if self.logic:
            self.logic.cleanup()  # the scan is going away: so does the job working on its copy
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any = None, event: Any = None) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        assert self.logic is not None
        self.setParameterNode(VoxMetricSegParameterNode(self.logic.getParameterNode()))
        p = self._parameterNode
        if p is not None and not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, node: "VoxMetricSegParameterNode | None") -> None:
        if self._parameterNode is not None:
            for tag in self._guiTags:
                self._parameterNode.disconnectGui(tag)
            self._guiTags = []
            self.removeObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self._refresh)
        self._parameterNode = node
        if node is not None:
            combos = {"model": self.ui.modelComboBox, "resultSegment": self.ui.resultSegmentComboBox,
                      "referenceSegment": self.ui.referenceSegmentComboBox}
            self._guiTags = [node.connectGui(self.ui),
                             node.connectParametersToGui({k: DataComboConnector(w) for k, w in combos.items()})]
            self.addObserver(node.parameterNode, vtk.vtkCommand.ModifiedEvent, self._refresh)
            self._refresh()

    def _fillModels(self) -> None:
        self._registry = panel.read_registry()
        evaluate_panel.fill(self.ui.modelComboBox, panel.model_choices(self._registry))

    def _modality(self) -> tuple[str | None, str]:
        """(modality or None without an input volume, why)."""
        p = self._parameterNode
        if p is None or not p.inputVolume:
            return None, ""
        if p.modality != "auto":
            return p.modality.lower(), _("chosen in Modality")
        image = p.inputVolume.GetImageData()
        if image is None:  # added to the scene, voxels still loading: refreshed when they arrive
            return None, ""
        key = (p.inputVolume.GetID(), image.GetMTime())
        if self._modalityCache is None or self._modalityCache[0] != key:
            self._modalityCache = (key, panel.guess_modality(slicer.util.arrayFromVolume(p.inputVolume)))
        return self._modalityCache[1], _("detected from the intensities")

    def _refresh(self, *_args: Any) -> None:
        """Copy the panel's decisions to the widgets (parameter node or job changed)."""
        p = self._parameterNode
        if p is None or self.logic is None:
            return
        self._follow("input", p.inputVolume, (slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent,))  # voxels arrive later
        segmentEvents = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                         slicer.vtkSegmentation.SegmentModified)
        self._follow("result", p.resultSegmentation, segmentEvents)
        self._follow("reference", p.referenceSegmentation, segmentEvents)
        modality, why = self._modality()
        plan = panel.model_plan(p.model, modality, self._registry, why)
        self.ui.modelCardLabel.text = plan.text
        self.ui.demoWarningLabel.visible = plan.demo
        states = panel.buttons(bool(p.inputVolume), bool(p.roi), bool(p.outputSegmentation), self.logic.busy,
                               plan.runnable)
        for name, enabled in states.items():
            getattr(self.ui, name).enabled = enabled
        with slicer.util.NodeModify(p.parameterNode):  # refilling a combo box passes through ""
            self.evaluation.refresh()

    def _follow(self, key: str, node: Any, events: tuple[Any, ...]) -> None:
        """Refresh the panel on ``events`` of ``node`` (the one followed as ``key`` before is let go)."""
        old = self._followed.get(key)
        if old is not node:
            for event in events:
                if old is not None:
                    self.removeObserver(old, event, self._refresh)
                if node is not None:
                    self.addObserver(node, event, self._refresh)
            self._followed[key] = node

    # -- running a stage in the child process --------------------------------------------------
    def _start(self, stage: str) -> None:
        p, logic = self._parameterNode, self.logic
        assert p is not None and logic is not None
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start {stage}.").format(stage=stage), waitCursor=True):
                if logic.busy:
                    raise panel.Refused(_("A job is running: wait for it or press Cancel, then start again."))
                self._stage, self._events = stage, []
                if logic.installDependencies(stage):  # child processes first; the stage follows
                    self._timer.start()
                    return
                modality, _why = self._modality()
                logic.engine.start(stage, p.inputVolume, roi_node=p.roi, model=p.model, device=p.device,
                                   modality=modality or "auto", uncertainty=p.showUncertainty)
                self.ui.progressBar.value = 0
                self.ui.statusLabel.text = panel.expectation(p.device)
                self._timer.start()
        finally:
            self._refresh()

    def _poll(self) -> None:
        logic = self.logic
        assert logic is not None
        source = logic.installer if logic.installer is not None else logic.engine.job
        for event in source.poll_events() if source is not None else []:
            self._events.append(event)
            status = panel.status_of(event)
            if status.percent is not None:
                self.ui.progressBar.value = status.percent
            if status.text:
                self.ui.statusLabel.text = status.text
            if event.get("event") == "exit":
                self._timer.stop()
                self._finish(event)
        self._refresh()

    def _finish(self, exitEvent: dict[str, Any]) -> None:
        p, logic = self._parameterNode, self.logic
        assert p is not None and logic is not None
        if logic.installer is not None:  # dependencies were installed: now run the stage asked for
            logic.installer = None
            if exitEvent.get("returncode") == 0:
                self._start(self._stage)
            elif not exitEvent.get("cancelled"):
                slicer.util.errorDisplay(str(exitEvent.get("message")), windowTitle=_("Installation failed"))
            return
        if exitEvent.get("cancelled"):
            return  # the status line says "Cancelled."
        with slicer.util.tryWithErrorDisplay(_("{stage} failed.").format(stage=self._stage.capitalize())):
            result = logic.engine.finish(self._stage, self._events, slicer.mrmlScene, p.inputVolume,
                                         roi_node=p.roi, segmentation_node=p.outputSegmentation,
                                         replace=p.replaceExisting, uncertainty_node=p.uncertaintyVolume)
            if result.roi_node is not None:
                p.roi = result.roi_node
                result.roi_node.SetDisplayVisibility(True)
            if result.segmentation_node is not None:
                p.outputSegmentation = result.segmentation_node
            if result.uncertainty_node is not None:
                p.uncertaintyVolume = result.uncertainty_node
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = panel.describe_result(result.verdict, result.timings)
            if result.message:
                slicer.util.warningDisplay(result.message, windowTitle=_("Prostate not found"))
            elif result.warning:
                slicer.util.warningDisplay(result.warning, windowTitle=_("Check the result"))

    def _cancel(self) -> None:
        if self.logic:
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelling…")
        self._refresh()

    def _show3D(self) -> None:
        """Closed surface on request (not built after every stage)."""
        p = self._parameterNode
        if p is not None and p.outputSegmentation:
            p.outputSegmentation.CreateClosedSurfaceRepresentation()


class VoxMetricSegLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: dependency installs (child processes, after asking), then ``engine``
    (VoxMetricSegLib.SegmentLogic, Qt-free and tested by pytest) does the work."""

    def __init__(self, engine: "SegmentLogic | None" = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = engine or SegmentLogic()
        self.installer: deps.Installer | None = None
        self.evaluator = evaluate.Evaluator()  # Evaluate: one comparison at a time, in a worker thread

    @property
    def busy(self) -> bool:
        return self.engine.busy or (self.installer is not None and self.installer.running)

    def installDependencies(self, purpose: str) -> bool:
        """Start installing missing packages (after asking); True when an install was started
        (poll ``installer``), False when nothing is missing. Raises when the user says no."""
        todo = deps.missing(panel.requirements_file())
        if not todo:
            return False
        if not slicer.util.confirmOkCancelDisplay(
                _("VoxMetric needs these Python packages: {pkgs}. Install them now? (They are installed in the "
                  "background; {purpose} starts when they are ready.)").format(pkgs=", ".join(todo), purpose=purpose),
                windowTitle=_("Install Python packages")):
            raise panel.Refused(_("VoxMetric cannot run without {pkgs}.").format(pkgs=", ".join(todo)))
        self.installer = deps.Installer(deps.plan(panel.requirements_file(), todo))
        return True

    def cancel(self) -> None:
        if self.installer is not None:
            self.installer.cancel()
        self.engine.cancel()

    def cleanup(self) -> None:
        if self.installer is not None:
            self.installer.cancel()
        self.evaluator.cancel()
        self.engine.cleanup()

    @staticmethod
    def detectModality(volumeNode: Any) -> str:
        """'ct' when the intensities look like Hounsfield units, else 'mr'."""
        return panel.guess_modality(slicer.util.arrayFromVolume(volumeNode))


class VoxMetricSegTest(ScriptedLoadableModuleTest):
    """Runs the same body as Testing/Python/test_seg_module.py, here on Slicer's own scene."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        from VoxMetricSegLib.selftest import run_localize_move_refine

        result = run_localize_move_refine(slicer.mrmlScene, SegmentLogic())
        self.delayDisplay(f"Localize → move ROI → Refine passed: Dice {result['dice']:.3f}")
        from VoxMetricSegLib.selftest import run_compare_with_cli

        with tempfile.TemporaryDirectory() as folder:
            row = run_compare_with_cli(slicer.mrmlScene, folder)
        self.delayDisplay(f"Evaluate gave the numbers of voxmetric evaluate: DSC {row['DSC']:.4f}")
