"""VoxMetricTrain: train prostate segmentation models (MetricUNet variants, UNet, the stage-1
localizer, …) on labelled cases from the scene or a folder, with live progress, a loss curve,
cancel and resume. The finished model is installed where VoxMetric Prostate finds it.

Thin by design (DESIGN.md rule 3): the widget wires the .ui to a parameter node, the training
runs in a child process through VoxMetricTrainLib.TrainLogic, and the self-test body is shared
with pytest (Testing/Python/test_train_module.py).
"""

import shlex
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Developer mode (module path = this folder in a source checkout): make the engine importable.
_SOURCE_ROOT = Path(__file__).resolve().parents[1]
if (_SOURCE_ROOT / "voxmetric").is_dir() and str(_SOURCE_ROOT) not in sys.path:
    sys.path.insert(0, str(_SOURCE_ROOT))


class VoxMetricTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VoxMetric Train")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["VoxMetricSeg"]  # shares its dependency installer
        self.parent.contributors = ["VoxMetric developers"]
        self.parent.helpText = _(
            "Train a segmentation model on your labelled cases: pick (volume, segmentation, segment) "
            "rows from the scene or a folder of image + .seg.nrrd pairs, pick a method, press "
            "<b>Train</b>. Training runs in the background (GPU when available); <b>Cancel</b> stops "
            "it and <b>Resume</b> continues from the last checkpoint. The finished model appears in "
            "VoxMetric Prostate's model list. Research use only.")
        self.parent.acknowledgementText = _(
            "Methods: MetricUNet (He et al., Medical Image Analysis 2021) and related papers.")


@parameterNodeWrapper
class VoxMetricTrainParameterNode:
    casesSource: Annotated[str, Choice(["scene", "folder"])] = "scene"
    casesPath: Path
    segmentName: str = "Prostate"
    modality: Annotated[str, Choice(["auto", "ct", "mr"])] = "auto"
    method: str = "MetricUNet-HCP"
    iterations: Annotated[int, WithinRange(1, 10_000_000)] = 10000
    batchSize: Annotated[int, WithinRange(1, 4096)] = 30
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    modelName: str = "MyProstateModel"
    extraArgs: str = ""


class VoxMetricTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._timer = qt.QTimer()
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.layout.addWidget(slicer.util.loadUI(self.resourcePath("UI/VoxMetricTrain.ui")))
        self.ui = slicer.util.childWidgetVariables(self.parent.children()[-1])
        self.parent.children()[-1].setMRMLScene(slicer.mrmlScene)
        self.logic = VoxMetricTrainLogic()
        self.ui.trainButton.clicked.connect(lambda: self._start(resume=False))
        self.ui.resumeButton.clicked.connect(lambda: self._start(resume=True))
        self.ui.cancelButton.clicked.connect(self._cancel)
        self.ui.addPairButton.clicked.connect(lambda: self._addPair())
        self.ui.addFromSceneButton.clicked.connect(self._addPairsFromScene)
        self.ui.removePairButton.clicked.connect(self._removePair)
        self.ui.methodComboBox.currentTextChanged.connect(self._methodChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self._onSceneClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, lambda *a: self.initializeParameterNode())
        self._fillMethods()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self._parameterNode = VoxMetricTrainParameterNode(self.logic.getParameterNode())
        self._parameterNode.connectGui(self.ui)
        self.ui.methodComboBox.setCurrentText(self._parameterNode.method)
        self.addObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def _fillMethods(self) -> None:
        """Every registered method (plug-ins included), straight from the engine."""
        self.ui.methodComboBox.clear()
        try:
            from voxmetric.methods import available_methods, get_method
        except ImportError:  # first start: dependencies are installed on first use
            self.ui.statusLabel.text = _("Python dependencies are installed when you first press Train.")
            return
        for name in available_methods():
            self.ui.methodComboBox.addItem(name)
            self.ui.methodComboBox.setItemData(self.ui.methodComboBox.count - 1,
                                               f"{get_method(name).role}: {get_method(name).description}",
                                               qt.Qt.ToolTipRole)

    def _methodChanged(self, text: str) -> None:
        if self._parameterNode and text:
            self._parameterNode.method = text

    # -- the table of (volume, segmentation, segment) rows -----------------------------------------
    def _addPair(self, volume=None, segmentation=None, segment: str = "") -> None:
        table = self.ui.pairsTableWidget
        row = table.rowCount
        table.insertRow(row)
        for column, nodeType, node in ((0, "vtkMRMLScalarVolumeNode", volume), (1, "vtkMRMLSegmentationNode", segmentation)):
            combo = slicer.qMRMLNodeComboBox()
            combo.nodeTypes = [nodeType]
            combo.showChildNodeTypes = False
            combo.noneEnabled, combo.addEnabled, combo.removeEnabled = True, False, False
            combo.setMRMLScene(slicer.mrmlScene)
            combo.setCurrentNode(node)
            table.setCellWidget(row, column, combo)
        table.setItem(row, 2, qt.QTableWidgetItem(segment or self._parameterNode.segmentName))

    def _addPairsFromScene(self) -> None:
        from VoxMetricTrainLib import pairs_from_scene

        have = {(p.volume_node, p.segmentation_node) for p in self._pairs()}
        for pair in pairs_from_scene(slicer.mrmlScene, self._parameterNode.segmentName):
            if (pair.volume_node, pair.segmentation_node) not in have:
                self._addPair(pair.volume_node, pair.segmentation_node, pair.segment)

    def _removePair(self) -> None:
        rows = sorted({i.row() for i in self.ui.pairsTableWidget.selectedIndexes()}, reverse=True)
        for row in rows or [self.ui.pairsTableWidget.rowCount - 1]:
            self.ui.pairsTableWidget.removeRow(row)

    def _pairs(self) -> list:
        from VoxMetricTrainLib import CasePair

        table = self.ui.pairsTableWidget
        return [CasePair(table.cellWidget(r, 0).currentNode(), table.cellWidget(r, 1).currentNode(),
                         table.item(r, 2).text() if table.item(r, 2) else "") for r in range(table.rowCount)]

    def _updateButtons(self, *_args) -> None:
        busy = self.logic.busy
        fromScene = self._parameterNode is None or self._parameterNode.casesSource == "scene"
        for name in ("pairsTableWidget", "addPairButton", "addFromSceneButton", "removePairButton"):
            getattr(self.ui, name).visible = fromScene
        self.ui.casesPathLineEdit.visible = not fromScene
        self.ui.casesPathLabel.visible = not fromScene
        self.ui.trainButton.enabled = not busy
        self.ui.resumeButton.enabled = not busy
        self.ui.cancelButton.enabled = busy

    # -- running the training in the child process -------------------------------------------------
    def _start(self, resume: bool) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            if not self.logic.ensureEngine(p.device):
                return
            engine = self.logic.engine
            if resume:
                engine.resume(slicer.mrmlScene, p.modelName, device=p.device)
            else:
                path = str(p.casesPath) if p.casesPath and str(p.casesPath) != "." else ""
                cases = self._pairs() if p.casesSource == "scene" else path
                engine.start(slicer.mrmlScene, p.method, cases, p.segmentName, p.modelName, p.iterations,
                             p.batchSize, device=p.device, modality=p.modality, extra_args=shlex.split(p.extraArgs))
                self.ui.logPlainTextEdit.clear()
            self.ui.logPlainTextEdit.appendPlainText(_("Training run folder: {path}").format(path=engine.run_dir))
            slicer.modules.plots.logic().ShowChartInLayout(engine.chart_node)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting (loading and preparing the cases)…")
            self._timer.start()
            self._updateButtons()

    def _poll(self) -> None:
        engine = self.logic.engine
        for event in engine.job.poll_events():
            update = engine.handle(event)
            if update.percent is not None:
                self.ui.progressBar.value = update.percent
            if update.status:
                self.ui.statusLabel.text = update.status
            if update.log:
                self.ui.logPlainTextEdit.appendPlainText(update.log)
            if event.get("event") == "exit":
                self._timer.stop()
                self._finish()
        self._updateButtons()

    def _finish(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Training failed.")):
            info = self.logic.engine.finish()
            if info is None:  # cancelled: the status line already says so
                return
            self.ui.statusLabel.text = _("Model '{name}' installed ({path}): pick it in VoxMetric Prostate.").format(
                name=info.name, path=info.path)
            self.ui.logPlainTextEdit.appendPlainText(self.ui.statusLabel.text)

    def _cancel(self) -> None:
        if self.logic and self.logic.busy:
            self.logic.engine.cancel()
        self._updateButtons()

    def _onSceneClose(self, *_args) -> None:
        """The curve's nodes go with the scene; training itself carries on."""
        if self.logic and self.logic.engine:
            self.logic.engine.table_node = self.logic.engine.chart_node = None
        self.ui.pairsTableWidget.setRowCount(0)


class VoxMetricTrainLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: dependency checks (shared with VoxMetricSeg), then ``engine``
    (VoxMetricTrainLib.TrainLogic, Qt-free and tested by pytest) does the work."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = None

    @property
    def busy(self) -> bool:
        return self.engine is not None and self.engine.busy

    def ensureEngine(self, device: str) -> bool:
        """Install missing dependencies (asks first), then create the engine logic once."""
        import VoxMetricSeg

        if not VoxMetricSeg.VoxMetricSegLogic().ensureDependencies(device):
            return False
        if self.engine is None:
            from VoxMetricTrainLib import TrainLogic

            self.engine = TrainLogic()
        return True


class VoxMetricTrainTest(ScriptedLoadableModuleTest):
    """Runs the same body as Testing/Python/test_train_module.py, here on Slicer's own scene
    (models and the training run go to a temporary VOXMETRIC_HOME, not the user's)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        from VoxMetricTrainLib import TrainLogic
        from VoxMetricTrainLib.selftest import run_train_from_scene

        with tempfile.TemporaryDirectory() as home:
            result = run_train_from_scene(slicer.mrmlScene, TrainLogic(), home)
        self.delayDisplay(f"Scene cases → training → installed model passed in {result['seconds']:.0f} s "
                          f"(final loss {result['final_loss']:.3f})")
