"""VoxMetricSeg: two-stage prostate segmentation in CT and MR (Localize → editable ROI → Refine).

Thin by design (DESIGN.md rule 3): the widget wires the .ui to a parameter node, the work runs in
a child process through VoxMetricSegLib.SegmentLogic, and the self-test body is shared with pytest.
"""

import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Developer mode (module path = this folder in a source checkout): make the engine importable.
_SOURCE_ROOT = Path(__file__).resolve().parents[1]
if (_SOURCE_ROOT / "voxmetric").is_dir() and str(_SOURCE_ROOT) not in sys.path:
    sys.path.insert(0, str(_SOURCE_ROOT))

import voxmetric  # noqa: E402  (the package root imports nothing heavy)

TORCH_REQUIREMENT = ">=2.1"
REQUIREMENTS = Path(voxmetric.__file__).resolve().parents[1] / "Resources" / "requirements.txt"


class VoxMetricSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VoxMetric Prostate")
        self.parent.categories = [_("Segmentation")]
        self.parent.contributors = ["VoxMetric developers"]
        self.parent.helpText = _(
            "Segment the prostate in CT or MR in two stages: <b>Localize</b> places an editable ROI "
            "box, <b>Refine</b> delineates the gland inside it, <b>Segment Prostate</b> does both. "
            "Bundled demo models are trained on synthetic phantoms: research use only, not for "
            "clinical use.")
        self.parent.acknowledgementText = _(
            "Methods: MetricUNet (He et al., Medical Image Analysis 2021) and related papers.")
        slicer.app.connect("startupCompleted()", _registerSampleData)


def _registerSampleData():
    """A CT phantom in Sample Data, generated locally by the engine (nothing is downloaded)."""
    import SampleData

    def makePhantom(source):
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
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    replaceExisting: bool = False


class VoxMetricSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._stage = None
        self._events = []
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.layout.addWidget(slicer.util.loadUI(self.resourcePath("UI/VoxMetricSeg.ui")))
        self.ui = slicer.util.childWidgetVariables(self.parent.children()[-1])
        self.parent.children()[-1].setMRMLScene(slicer.mrmlScene)
        self.logic = VoxMetricSegLogic()
        self.ui.localizeButton.clicked.connect(lambda: self._start("localize"))
        self.ui.refineButton.clicked.connect(lambda: self._start("refine"))
        self.ui.segmentButton.clicked.connect(lambda: self._start("segment"))
        self.ui.cancelButton.clicked.connect(self._cancel)
        self.ui.modelComboBox.currentIndexChanged.connect(self._showModelCard)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, lambda *a: self._cancel())
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *a: self.initializeParameterNode())
        self._fillModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancel()
        self.removeObservers()

    def enter(self) -> None:
        self._fillModels()  # models trained or installed meanwhile appear at once
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self._parameterNode = VoxMetricSegParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._parameterNode.connectGui(self.ui)
        self.addObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def _fillModels(self) -> None:
        self.ui.modelComboBox.clear()
        try:
            from voxmetric.models import list_models
        except ImportError:  # first start: dependencies are installed on first use
            self.ui.modelCardLabel.text = _("Python dependencies are installed when you first press a button.")
            return
        self.ui.modelComboBox.addItem(_("Default pipeline for the modality"), "")
        for info in list_models():
            if info.role in ("refiner", "joint"):
                label = f"{info.name} ({info.modality.upper()}, {info.method})" + ("  [demo]" if info.demo else "")
                self.ui.modelComboBox.addItem(label, info.name)
        self._showModelCard()

    def _showModelCard(self, *_args) -> None:
        try:
            from voxmetric.models import list_models
        except ImportError:
            return

        name = self.ui.modelComboBox.currentData or ""
        infos = [i for i in list_models() if (i.name == name if name else i.role == "refiner")]
        demo = any(i.demo for i in infos)
        self.ui.modelCardLabel.text = infos[0].description if infos else _("No model installed.")
        self.ui.demoWarningLabel.visible = demo

    def _updateButtons(self, *_args) -> None:
        p = self._parameterNode
        busy = self.logic.busy
        hasInput = bool(p and p.inputVolume)
        self.ui.localizeButton.enabled = hasInput and not busy
        self.ui.segmentButton.enabled = hasInput and not busy
        self.ui.refineButton.enabled = hasInput and bool(p.roi) and not busy
        self.ui.cancelButton.enabled = busy

    # -- running a stage in the child process --------------------------------------------------
    def _start(self, stage: str) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start {stage}.").format(stage=stage), waitCursor=True):
            if not self.logic.ensureEngine(p.device):
                return
            modality = p.modality if p.modality != "auto" else self.logic.detectModality(p.inputVolume)
            self._stage, self._events = stage, []
            self.logic.engine.start(stage, p.inputVolume, roi_node=p.roi, model=self.ui.modelComboBox.currentData or "",
                             device=p.device, modality=modality)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = self.logic.expectation(p.device)
            self._timer.start()
            self._updateButtons()

    def _poll(self) -> None:
        from VoxMetricSegLib.logic import progress_of

        for event in self.logic.engine.job.poll_events():
            self._events.append(event)
            update = progress_of(event)
            if update:
                self.ui.progressBar.value, message = update
                self.ui.statusLabel.text = message
            if event.get("event") == "exit":
                self._timer.stop()
                self._finish()
        self._updateButtons()

    def _finish(self) -> None:
        from VoxMetricSegLib.logic import describe_timings

        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("{stage} failed.").format(stage=self._stage.capitalize())):
            result = self.logic.engine.finish(self._stage, self._events, slicer.mrmlScene, p.inputVolume,
                                       roi_node=p.roi, segmentation_node=p.outputSegmentation,
                                       replace=p.replaceExisting)
            if result.roi_node is not None:
                p.roi = result.roi_node
                result.roi_node.SetDisplayVisibility(True)
            if result.segmentation_node is not None:
                p.outputSegmentation = result.segmentation_node
                result.segmentation_node.CreateClosedSurfaceRepresentation()
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = describe_timings(result.timings)
            if result.message:
                slicer.util.warningDisplay(result.message, windowTitle=_("Prostate not found"))

    def _cancel(self) -> None:
        if self.logic and self.logic.busy:
            self.logic.engine.cancel()
            self.ui.statusLabel.text = _("Cancelled.")
        self._updateButtons()


class VoxMetricSegLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: dependency checks, then ``engine`` (VoxMetricSegLib.SegmentLogic,
    Qt-free and tested by pytest) does the work."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = None

    @property
    def busy(self) -> bool:
        return self.engine is not None and self.engine.job is not None and self.engine.job.running

    def ensureEngine(self, device: str) -> bool:
        """Install missing dependencies (asks first), then create the engine logic once."""
        if not self.ensureDependencies(device):
            return False
        if self.engine is None:
            from VoxMetricSegLib import SegmentLogic

            self.engine = SegmentLogic()
        return True

    def ensureDependencies(self, device: str) -> bool:
        """torch through the PyTorch extension, the rest from Resources/requirements.txt (asks first)."""
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(_("Install the PyTorch extension from the Extensions Manager, then restart Slicer."))
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if not slicer.util.confirmOkCancelDisplay(_("VoxMetric needs PyTorch. Install it now?")):
                return False
            torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
        if hasattr(slicer, "packaging"):
            slicer.packaging.pip_ensure(slicer.packaging.load_requirements(REQUIREMENTS), requester="VoxMetric")
        else:
            missing = [r for r in REQUIREMENTS.read_text(encoding="utf-8").split() if r and not r.startswith("#")]
            try:
                import safetensors, slicerio  # noqa: F401
            except ImportError:
                if not slicer.util.confirmOkCancelDisplay(_("VoxMetric needs: {pkgs}. Install them now?").format(pkgs=", ".join(missing))):
                    return False
                slicer.util.pip_install(" ".join(missing))
        from voxmetric.errors import DeviceError
        from voxmetric.training import resolve_device

        try:
            resolve_device(device)
        except DeviceError as e:
            slicer.util.errorDisplay(str(e), windowTitle=_("GPU not available"))
            return False
        return True

    @staticmethod
    def detectModality(volumeNode) -> str:
        """'ct' when the intensities look like Hounsfield units, else 'mr'."""
        from voxmetric.intensity import looks_like_ct

        return "ct" if looks_like_ct(slicer.util.arrayFromVolume(volumeNode)) else "mr"

    @staticmethod
    def expectation(device: str) -> str:
        from voxmetric.training import resolve_device

        if resolve_device(device).type == "cuda":
            return _("Running on the GPU…")
        return _("Running on the CPU (no GPU): expect about 10–60 s per scan…")


class VoxMetricSegTest(ScriptedLoadableModuleTest):
    """Runs the same body as Testing/Python/test_seg_module.py, here on Slicer's own scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        from VoxMetricSegLib import SegmentLogic
        from VoxMetricSegLib.selftest import run_localize_move_refine

        result = run_localize_move_refine(slicer.mrmlScene, SegmentLogic())
        self.delayDisplay(f"Localize → move ROI → Refine passed: Dice {result['dice']:.3f}")
