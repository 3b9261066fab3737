"""VoxMetricTrain: train prostate segmentation models (MetricUNet variants, UNet, the stage-1
localizer, …) on labelled cases from the scene or a folder, with live progress, a loss curve,
cancel and resume. The finished model is installed where VoxMetric Prostate finds it.

Thin by design (DESIGN.md rule 3): the widget wires the .ui to a parameter node — every choice,
the method's own settings included (a form built from the method registry, VoxMetricTrainLib.form)
— and copies VoxMetricTrainLib.panel's decisions into its widgets; the training runs in a child
process through VoxMetricTrainLib.TrainLogic, and the self-test body is shared with pytest
(Testing/Python/test_train_module.py).
"""

import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, Decimals, GuiConnector, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Developer mode (module path = this folder in a source checkout): make the engine importable.
_SOURCE_ROOT = Path(__file__).resolve().parents[1]
if (_SOURCE_ROOT / "voxmetric").is_dir() and str(_SOURCE_ROOT) not in sys.path:
    sys.path.insert(0, str(_SOURCE_ROOT))

from VoxMetricSegLib import panel as seg_panel  # noqa: E402  (Qt-free; VoxMetricSeg is a dependency)
from VoxMetricTrainLib import TrainLogic, form, panel, review_panel  # noqa: E402  (Qt-free; no torch)

METHODS = [name for name, _tip in panel.method_choices()]


class VoxMetricTrain(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VoxMetric Train")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["VoxMetricSeg"]  # shares its dependency installer
        self.parent.contributors = ["VoxMetric developers"]
        self.parent.helpText = _(
            "Train a segmentation model on your labelled cases: pick (volume, segmentation, segment) "
            "rows from the scene or a folder of image + .seg.nrrd pairs, pick a method and its settings, "
            "press <b>Train</b>. Training runs in the background (GPU when available); <b>Cancel</b> stops "
            "it and <b>Resume</b> continues from the last checkpoint. The finished model appears in "
            "VoxMetric Prostate's model list. Research use only.")
        self.parent.acknowledgementText = _(
            "Methods: MetricUNet (He et al., Medical Image Analysis 2021) and related papers.")


class VoxMetricTrainParameters:
    """The fixed choices; the method settings (``method_<field>``) are added below from the registry."""

    casesSource: Annotated[str, Choice(["scene", "folder"])] = "scene"
    casesPath: Path
    unlabeledSource: Annotated[str, Choice(["none", "scene", "folder"])] = "none"
    unlabeledPath: Path
    segmentName: str = "Prostate"
    modality: Annotated[str, Choice(["auto", "ct", "mr"])] = "auto"
    method: Annotated[str, Choice(METHODS)] = panel.default_method(METHODS)
    iterations: Annotated[int, WithinRange(1, 10_000_000)] = 10000
    batchSize: Annotated[int, WithinRange(1, 4096)] = 30
    averageFrom: Annotated[float, WithinRange(0.0, 0.95), Decimals(2)] = 0.0  # voxmetric train --average-from
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    modelName: str = "MyProstateModel"
    extraArgs: str = ""
    startFrom: str = panel.SCRATCH  # a model name: fine-tune it (voxmetric train --init-from)
    freezeEncoder: bool = False

    if TYPE_CHECKING:  # what @parameterNodeWrapper adds
        parameterNode: Any

        def __init__(self, parameterNode: Any) -> None: ...
        def connectGui(self, gui: Any) -> int: ...
        def connectParametersToGui(self, mapping: dict[str, Any]) -> int: ...
        def disconnectGui(self, tag: int) -> None: ...
        def getValue(self, name: str) -> Any: ...
        def setValue(self, name: str, value: Any) -> None: ...


_KIND_TYPES: dict[str, Any] = {"bool": bool, "int": int, "float": Annotated[float, Decimals(6)], "text": str}
_FIELDS = form.parameter_fields()
VoxMetricTrainParameterNode = parameterNodeWrapper(type("VoxMetricTrainParameterNode", (VoxMetricTrainParameters,), {
    "__module__": __name__, "__annotations__": {n: _KIND_TYPES[k] for n, (k, _d) in _FIELDS.items()},
    **{n: d for n, (_k, d) in _FIELDS.items()}}))
_KIND_WIDGETS: dict[str, Any] = {"bool": qt.QCheckBox, "int": qt.QSpinBox, "float": qt.QDoubleSpinBox,
                                 "text": qt.QLineEdit}


class StartFromConnector(seg_panel.ItemDataConnector, GuiConnector):
    """The Start from combo box ↔ ``startFrom`` (model names as item data: the list can change)."""


class VoxMetricTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: VoxMetricTrainLogic | None = None
        self._parameterNode: VoxMetricTrainParameters | None = None
        self._guiTag: int | None = None
        self._formTag: int | None = None
        self._formKey = ("", "")  # (method, startFrom) the form shows
        self._steps: Any = None  # TrainLogic.start_steps iterator: one scene case per timer tick
        self._timer = qt.QTimer()
        self._timer.setInterval(250)
        self._timer.timeout.connect(self._poll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VoxMetricTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        logic = self.logic = VoxMetricTrainLogic()
        self.review = review_panel.ReviewSection(  # after training: per-case validation table, review of the cases
            self.ui, qt.QTimer(), lambda: logic.engine, lambda: slicer.mrmlScene,
            lambda: self._parameterNode.device if self._parameterNode else "auto", slicer.util.tryWithErrorDisplay,
            self._refresh)
        self.ui.trainButton.clicked.connect(lambda: self._start(resume=False))
        self.ui.resumeButton.clicked.connect(lambda: self._start(resume=True))
        self.ui.cancelButton.clicked.connect(self._cancel)
        self.ui.addPairButton.clicked.connect(lambda: self._addPair())
        self.ui.addFromSceneButton.clicked.connect(self._addPairsFromScene)
        self.ui.removePairButton.clicked.connect(lambda: panel.remove_rows(self.ui.pairsTableWidget))
        self.ui.addUnlabeledButton.clicked.connect(lambda: self._addVolumeRow())
        self.ui.addUnlabeledFromSceneButton.clicked.connect(self._addUnlabeledFromScene)
        self.ui.removeUnlabeledButton.clicked.connect(lambda: panel.remove_rows(self.ui.unlabeledTableWidget))
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancel()
        self._timer.stop()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller: Any = None, event: Any = None) -> None:
        """The curve's nodes and the case rows go with the scene; a running training carries on,
        one still reading its cases from the scene is abandoned."""
        if self.logic and self._steps is not None:
            self._steps = None
            self.logic.engine.cancel()
        if self.logic:
            self.logic.engine.table_node = self.logic.engine.chart_node = None
        self.review.forget()
        self.ui.pairsTableWidget.setRowCount(0)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any = None, event: Any = None) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        assert self.logic is not None
        self.setParameterNode(VoxMetricTrainParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, node: "VoxMetricTrainParameters | None") -> None:
        if self._parameterNode is not None:
            for tag in (self._guiTag, self._formTag):
                if tag is not None:
                    self._parameterNode.disconnectGui(tag)
            self._guiTag = self._formTag = None
            self.removeObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameters)
        self._parameterNode, self._formKey = node, ("", "")
        if node is not None:
            self._guiTag = node.connectGui(self.ui)
            for i, (_name, tip) in enumerate(panel.method_choices()):
                self.ui.methodComboBox.setItemData(i, tip, qt.Qt.ToolTipRole)
            self._buildForm(node.method, reset=False)
            self.addObserver(node.parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameters)
            self._refresh()

    def _onParameters(self, *_args: Any) -> None:
        p = self._parameterNode
        if p is not None and (p.method, p.startFrom) != self._formKey:
            self._buildForm(p.method, reset=True)
        self._refresh()

    def _buildForm(self, method: str, reset: bool) -> None:
        """The method settings form from the registry's config fields (VoxMetricTrainLib.form) and
        the models the method can start from, bound to the parameter node; ``reset`` puts the
        preset's values in (or those of the model to start from)."""
        p = self._parameterNode
        assert p is not None
        if self._formTag is not None:
            p.disconnectGui(self._formTag)
        choices = panel.start_choices(method)
        start = p.startFrom if p.startFrom in [c.value for c in choices] else panel.SCRATCH
        panel.fill(self.ui.startFromComboBox, choices, start)
        self._formKey = (method, start)
        layout = self.ui.methodSettingsFormLayout
        while layout.rowCount():
            layout.removeRow(0)
        with slicer.util.NodeModify(p.parameterNode):
            p.startFrom, p.freezeEncoder = start, p.freezeEncoder and start != panel.SCRATCH
            for name, value in form.method_defaults(method, start).items() if reset else ():
                p.setValue(name, value)
        widgets = {}
        for field in form.method_form(method):
            widget = _KIND_WIDGETS[field.kind]()
            widget.toolTip = field.help
            widget.setProperty("SlicerParameterName", field.parameter)
            layout.addRow(field.label, widget)
            widgets[field.parameter] = widget
        self._formTag = p.connectParametersToGui({**widgets, "startFrom": StartFromConnector(self.ui.startFromComboBox)})

    # -- the tables: (volume, segmentation, segment) rows and unlabeled volumes ----------------------
    @staticmethod
    def _nodeCombo(nodeType: str, node: Any) -> Any:
        combo = slicer.qMRMLNodeComboBox()
        combo.nodeTypes = [nodeType]
        combo.showChildNodeTypes = False
        combo.noneEnabled, combo.addEnabled, combo.removeEnabled = True, False, False
        combo.setMRMLScene(slicer.mrmlScene)
        combo.setCurrentNode(node)
        return combo

    def _addPair(self, volume: Any = None, segmentation: Any = None, segment: str = "") -> None:
        table = self.ui.pairsTableWidget
        row = table.rowCount
        table.insertRow(row)
        for column, nodeType, node in ((0, "vtkMRMLScalarVolumeNode", volume), (1, "vtkMRMLSegmentationNode", segmentation)):
            table.setCellWidget(row, column, self._nodeCombo(nodeType, node))
        p = self._parameterNode
        table.setItem(row, 2, qt.QTableWidgetItem(segment or (p.segmentName if p else "Prostate")))

    def _addPairsFromScene(self) -> None:
        from VoxMetricTrainLib import pairs_from_scene

        have = {(p.volume_node, p.segmentation_node) for p in panel.case_rows(self.ui.pairsTableWidget)}
        segment = self._parameterNode.segmentName if self._parameterNode else "Prostate"
        for pair in pairs_from_scene(slicer.mrmlScene, segment):
            if (pair.volume_node, pair.segmentation_node) not in have:
                self._addPair(pair.volume_node, pair.segmentation_node, pair.segment)

    def _addVolumeRow(self, volume: Any = None) -> None:
        table = self.ui.unlabeledTableWidget
        table.insertRow(table.rowCount)
        table.setCellWidget(table.rowCount - 1, 0, self._nodeCombo("vtkMRMLScalarVolumeNode", volume))

    def _addUnlabeledFromScene(self) -> None:
        from VoxMetricTrainLib.unlabeled import unlabeled_from_scene

        have = {n.GetID() for n in panel.volume_rows(self.ui.unlabeledTableWidget) if n is not None}
        labelled = [p.volume_node for p in panel.case_rows(self.ui.pairsTableWidget)]
        for node in unlabeled_from_scene(slicer.mrmlScene, labelled):
            if node.GetID() not in have:
                self._addVolumeRow(node)

    def _refresh(self) -> None:
        p, logic = self._parameterNode, self.logic
        if p is None or logic is None:
            return
        busy = logic.busy or self._steps is not None or self.review.running
        self.review.refresh(busy)
        state = panel.widgets(busy, p.casesSource == "scene", logic.engine.can_resume(p.modelName),
                              p.unlabeledSource, p.startFrom)
        for name, on in state.enabled.items():
            getattr(self.ui, name).enabled = on
        for name, on in state.visible.items():
            getattr(self.ui, name).visible = on

    # -- running the training in the child process -------------------------------------------------
    def _start(self, resume: bool) -> None:
        p, logic = self._parameterNode, self.logic
        assert p is not None and logic is not None
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
                if logic.busy or self._steps is not None:
                    raise RuntimeError(_("A training run is in progress: wait for it or press Cancel first."))
                todo = panel.missing_dependencies()
                if todo:
                    raise RuntimeError(_("Training needs {pkgs}: press Segment Prostate in VoxMetric Prostate once "
                                         "to install them, then train.").format(pkgs=", ".join(todo)))
                engine = logic.engine
                if resume:
                    engine.resume(slicer.mrmlScene, p.modelName, device=p.device)
                    self._started()
                else:
                    path = str(p.casesPath) if p.casesPath and str(p.casesPath) != "." else ""
                    cases = panel.case_rows(self.ui.pairsTableWidget) if p.casesSource == "scene" else path
                    upath = str(p.unlabeledPath) if p.unlabeledPath and str(p.unlabeledPath) != "." else ""
                    scene_volumes = panel.volume_rows(self.ui.unlabeledTableWidget)
                    unlabeled = {"scene": scene_volumes, "folder": upath}.get(p.unlabeledSource)
                    flags = form.method_flags(p.method, {n: p.getValue(n) for n in _FIELDS})
                    self._steps = engine.start_steps(
                        slicer.mrmlScene, p.method, cases, p.segmentName, p.modelName, p.iterations, p.batchSize,
                        device=p.device, modality=p.modality,
                        extra_args=flags + panel.average_flags(p.averageFrom) + shlex.split(p.extraArgs),
                        unlabeled=unlabeled, init_from=p.startFrom, freeze_encoder=p.freezeEncoder)
                    self.ui.logPlainTextEdit.clear()
                    self.ui.statusLabel.text = _("Reading the cases from the scene…")
                self._timer.start()
        finally:
            self._refresh()

    def _started(self) -> None:
        engine = self.logic.engine if self.logic else None
        if engine is None:
            return
        self.ui.logPlainTextEdit.appendPlainText(_("Training run folder: {path}").format(path=engine.run_dir))
        if engine.chart_node is not None:
            slicer.modules.plots.logic().ShowChartInLayout(engine.chart_node)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting (writing and preparing the cases)…")

    def _poll(self) -> None:
        assert self.logic is not None
        engine = self.logic.engine
        if self._steps is not None:  # one GUI-thread step: one scene case
            try:
                with slicer.util.tryWithErrorDisplay(_("Could not start training.")):
                    text = next(self._steps, None)
            except Exception:  # noqa: BLE001  (shown in the dialog)
                self._steps = None
                self._timer.stop()
                self._refresh()
                return
            if text is None:
                self._steps = None
                self._started()
            else:
                self.ui.statusLabel.text = text
        elif engine.job is not None:
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
        self._refresh()

    def _finish(self) -> None:
        assert self.logic is not None
        with slicer.util.tryWithErrorDisplay(_("Training failed.")):
            info = self.logic.engine.finish()
            if info is None:  # cancelled: the status line already says so
                return
            self.ui.statusLabel.text = _("Model '{name}' installed ({path}): pick it in VoxMetric Prostate.").format(
                name=info.name, path=info.path)
            self.ui.logPlainTextEdit.appendPlainText(self.ui.statusLabel.text)
            self.review.show(info)

    def _cancel(self) -> None:
        self.review.cancel()
        if self.logic:
            self._steps = None
            self.logic.engine.cancel()
        self._refresh()


class VoxMetricTrainLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: ``engine`` (VoxMetricTrainLib.TrainLogic, Qt-free and tested by pytest)
    does the work; the Python packages are installed by VoxMetric Prostate's first run."""

    def __init__(self, engine: "TrainLogic | None" = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = engine or TrainLogic()

    @property
    def busy(self) -> bool:
        return self.engine.busy


class VoxMetricTrainTest(ScriptedLoadableModuleTest):
    """Runs the same body as Testing/Python/test_train_module.py, here on Slicer's own scene
    (models and the training run go to a temporary VOXMETRIC_HOME, not the user's)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        from VoxMetricTrainLib.selftest import run_train_from_scene

        with tempfile.TemporaryDirectory() as home:
            result = run_train_from_scene(slicer.mrmlScene, TrainLogic(), home)
        self.delayDisplay(f"Scene cases → training → installed model passed in {result['seconds']:.0f} s "
                          f"(final loss {result['final_loss']:.3f})")
