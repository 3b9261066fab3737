"""Stand-ins for the parts of Slicer that the ``slicer-core`` wheel lacks, so that pytest can
import and drive the real module files (VoxMetricSeg.py, VoxMetricTrain.py) on a real MRML scene.

What is real: ``slicer`` (MRML scene, nodes, logics) and ``slicer.util`` from the wheel —
``childWidgetVariables``, ``findChildren``, ``loadUI``, ``tryWithErrorDisplay``,
``VTKObservationMixin``, ``NodeModify``, ``arrayFromVolume`` run as in Slicer.

What stands in (installed by :func:`install`):

- ``qt`` / ``ctk``: widget classes built from the ``.ui`` XML by ``qt.QUiLoader`` with the names,
  classes and properties the file declares, signals (``clicked``, ``currentIndexChanged`` …)
  and the ``<connections>`` it lists. Widgets are strict: reading or setting an attribute a
  widget of that class does not have raises AttributeError (so ``self.ui.typo.enabled = …``
  and ``label.txet = …`` fail as in Slicer). A disabled button ignores ``click()``. An exception
  raised in a slot is caught and recorded in :data:`SLOT_ERRORS` (PythonQt prints it and goes
  on); the ``standins`` fixture fails a test that leaves unexpected ones. ``QTimer``s fire
  only when a test calls :func:`fire_timers`.
- ``slicer.parameterNodeWrapper``: a re-implementation of Slicer's on the real
  ``vtkMRMLScriptedModuleNode`` (same serialisation, validators, GUI connectors chosen by the
  exact widget class, ``connectGui`` / ``connectParametersToGui`` / ``disconnectGui``).
- ``slicer.ScriptedLoadableModule``, ``slicer.i18n``, ``slicer.app``, ``slicer.modules``,
  ``slicer.qMRMLNodeComboBox`` (follows the scene as Slicer's: auto-selects when none is not
  allowed), ``slicer.qMRMLTableView`` (the table node it shows), ``slicer.util.loadVolume``,
  ``SampleData``; ``qt.QFileDialog`` answers :data:`FILE_ANSWERS`; the message boxes
  (``errorDisplay``, ``warningDisplay``, ``infoDisplay``, ``confirmOkCancelDisplay``) record
  what they would show in :data:`DIALOGS`, and ``confirmOkCancelDisplay`` answers
  :data:`ANSWERS` (default OK).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile
import types
from collections.abc import Callable
from typing import Any

import standins_qt
from standins_params import (  # noqa: F401 (re-exported for the tests)
    Choice,
    Decimals,
    Default,
    GuiConnector,
    Maximum,
    Minimum,
    SingleStep,
    WithinRange,
    createGuiConnector,
    parameterNodeWrapper,
)
from standins_qt import SLOT_ERRORS, TIMERS, QObject, QSpinBox, Qt, QVBoxLayout, QWidget, fire_timers  # noqa: F401 (re-exported for the tests)
from standins_ui import ctkCollapsibleButton, ctkPathLineEdit, qMRMLNodeComboBox, qMRMLTableView  # noqa: F401 (re-exported for the tests)

#: Message boxes shown: (kind, text, window title).
DIALOGS: list[tuple[str, str, str]] = []
#: Answers for confirmOkCancelDisplay, consumed in order (empty: OK).
ANSWERS: list[bool] = []
#: Paths the file dialogs (qt.QFileDialog) answer, consumed in order (empty: cancelled).
FILE_ANSWERS: list[str] = []


class QFileDialog:
    """The static file dialogs: each records what it would ask in :data:`DIALOGS` and answers the
    next path of :data:`FILE_ANSWERS` ("" = the user cancelled)."""

    @staticmethod
    def getSaveFileName(parent: Any = None, caption: str = "", directory: str = "", filter: str = "") -> str:
        DIALOGS.append(("save", str(caption), str(directory)))
        return FILE_ANSWERS.pop(0) if FILE_ANSWERS else ""

    @staticmethod
    def getExistingDirectory(parent: Any = None, caption: str = "", directory: str = "") -> str:
        DIALOGS.append(("directory", str(caption), str(directory)))
        return FILE_ANSWERS.pop(0) if FILE_ANSWERS else ""


def new_mrml_scene() -> Any:
    """A real MRML scene with the module logics Slicer's application wires up (Colors, Volumes,
    Segmentations, CropVolume, Markups, SubjectHierarchy); the logics stay alive with the scene."""
    import slicer

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    logics = {}
    for name, cls in (
        ("Colors", "vtkSlicerColorLogic"),
        ("Volumes", "vtkSlicerVolumesLogic"),
        ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
        ("CropVolume", "vtkSlicerCropVolumeLogic"),
        ("Markups", "vtkSlicerMarkupsLogic"),
        ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ):
        logic = getattr(slicer, cls)()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    scene._voxmetric_logics = logics  # keep Python references alive for the scene's lifetime
    scene._voxmetric_app = app
    return scene


# =============================================================================================
# slicer.ScriptedLoadableModule, slicer.app, slicer.modules, dialogs
# =============================================================================================
class _ModuleParent(QObject):
    """What ScriptedLoadableModule.__init__ receives: the qSlicerScriptedLoadableModule."""

    PROPS = {"title": "", "categories": [], "dependencies": [], "contributors": [], "helpText": "",
             "acknowledgementText": "", "hidden": False, "index": -1}


class _WidgetParent(QWidget):
    PROPS = {"isEntered": False}

    def __init__(self) -> None:
        super().__init__()
        QVBoxLayout(self)


class ScriptedLoadableModule:
    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent: Any = None) -> None:
        self.parent = parent if parent is not None else _WidgetParent()
        self.layout = self.parent.layout()
        self.moduleName = type(self).__name__.removesuffix("Widget")
        self.developerMode = False

    def resourcePath(self, filename: str) -> str:
        module = sys.modules[type(self).__module__]
        return str(pathlib.Path(module.__file__ or "").parent / "Resources" / filename)

    def setup(self) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def enter(self) -> None:
        pass

    def exit(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent: Any = None) -> None:
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self) -> Any:
        """The scene's singleton vtkMRMLScriptedModuleNode of this module (as Slicer's)."""
        import slicer

        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetModuleName(self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest:
    def delayDisplay(self, message: str, msec: int = 1000) -> None:
        DIALOGS.append(("delay", str(message), ""))


class _App:
    """slicer.app: the bits the modules touch."""

    def __init__(self) -> None:
        self.temporaryPath = tempfile.mkdtemp(prefix="slicer-standin-")
        self.applicationName = "Slicer"
        self.connections: dict[str, list[Callable[..., Any]]] = {}
        self.overrideCursors = 0

    def connect(self, signal: str, slot: Callable[..., Any]) -> bool:
        self.connections.setdefault(signal, []).append(slot)
        return True

    def testingEnabled(self) -> bool:
        return False

    def setOverrideCursor(self, cursor: Any) -> None:
        self.overrideCursors += 1

    def restoreOverrideCursor(self) -> None:
        self.overrideCursors -= 1

    def processEvents(self) -> None:
        pass


class _PlotsLogic:
    def __init__(self) -> None:
        self.shown: list[Any] = []

    def ShowChartInLayout(self, chart: Any) -> None:
        self.shown.append(chart)


def _dialog(kind: str) -> Callable[..., Any]:
    def show(text: str, windowTitle: str | None = None, parent: Any = None, **kwargs: Any) -> Any:
        DIALOGS.append((kind, str(text), str(windowTitle or "")))
        if kind == "confirm":
            return ANSWERS.pop(0) if ANSWERS else True
        return None

    return show


def _load_volume(filename: str, properties: dict[str, Any] | None = None, returnNode: bool = False) -> Any:
    """slicer.util.loadVolume through the engine's reader (no qSlicerIOManager here)."""
    import slicer
    from voxmetric import mrml
    from voxmetric.io import read_volume

    name = (properties or {}).get("name") or pathlib.Path(filename).name.split(".")[0]
    return mrml.node_from_volume(slicer.mrmlScene, read_volume(filename), name)


class _SampleDataLogic:
    sources: list[dict[str, Any]] = []

    @classmethod
    def registerCustomSampleDataSource(cls, **kwargs: Any) -> None:
        cls.sources.append(kwargs)


def _module(name: str, **attrs: Any) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


def install() -> dict[str, Any]:
    """Put the stand-ins in place (``sys.modules`` and attributes of the real ``slicer``
    package); returns what was replaced, for :func:`uninstall`."""
    import slicer
    import slicer.util

    qt_names = ["QObject", "QWidget", "QLayout", "QVBoxLayout", "QHBoxLayout", "QGridLayout", "QFormLayout", "QLabel",
                "QAbstractButton", "QPushButton", "QCheckBox", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QSlider",
                "QLineEdit", "QPlainTextEdit", "QTextEdit", "QProgressBar", "QTableWidget", "QTableWidgetItem",
                "QTimer", "Qt", "QFile", "QUiLoader", "QApplication"]
    modules = {
        "qt": _module("qt", QFileDialog=QFileDialog, **{n: getattr(standins_qt, n) for n in qt_names}),
        "ctk": _module("ctk", ctkCollapsibleButton=ctkCollapsibleButton, ctkPathLineEdit=ctkPathLineEdit),
        "slicer.i18n": _module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.ScriptedLoadableModule": _module(
            "slicer.ScriptedLoadableModule", ScriptedLoadableModule=ScriptedLoadableModule,
            ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest=ScriptedLoadableModuleTest),
        "slicer.parameterNodeWrapper": _module(
            "slicer.parameterNodeWrapper", parameterNodeWrapper=parameterNodeWrapper, Choice=Choice,
            WithinRange=WithinRange, Minimum=Minimum, Maximum=Maximum, Decimals=Decimals, SingleStep=SingleStep,
            Default=Default, GuiConnector=GuiConnector, createGuiConnector=createGuiConnector),
        "SampleData": _module("SampleData", SampleDataLogic=_SampleDataLogic),
    }
    saved: dict[str, Any] = {"modules": {n: sys.modules.get(n) for n in modules}, "attrs": {}, "util": {}}
    sys.modules.update(modules)
    attrs = {"app": _App(), "qMRMLNodeComboBox": qMRMLNodeComboBox, "qMRMLTableView": qMRMLTableView,
             "i18n": modules["slicer.i18n"],
             "ScriptedLoadableModule": modules["slicer.ScriptedLoadableModule"],
             "parameterNodeWrapper": modules["slicer.parameterNodeWrapper"],
             "modules": types.SimpleNamespace(plots=types.SimpleNamespace(logic=_cached(_PlotsLogic)))}
    for k, v in attrs.items():
        saved["attrs"][k] = getattr(slicer, k, None)
        setattr(slicer, k, v)
    util = {"errorDisplay": _dialog("error"), "warningDisplay": _dialog("warning"), "infoDisplay": _dialog("info"),
            "confirmOkCancelDisplay": _dialog("confirm"), "loadVolume": _load_volume}
    for k, v in util.items():
        saved["util"][k] = getattr(slicer.util, k, None)
        setattr(slicer.util, k, v)
    SLOT_ERRORS.clear()
    DIALOGS.clear()
    ANSWERS.clear()
    FILE_ANSWERS.clear()
    _SampleDataLogic.sources.clear()
    return saved


def _cached(cls: type) -> Callable[[], Any]:
    one = cls()
    return lambda: one


def uninstall(saved: dict[str, Any]) -> None:
    import slicer
    import slicer.util

    for n, m in saved["modules"].items():
        if m is None:
            sys.modules.pop(n, None)
        else:
            sys.modules[n] = m
    for k, v in saved["attrs"].items():
        if v is None:
            delattr(slicer, k)
        else:
            setattr(slicer, k, v)
    for k, v in saved["util"].items():
        setattr(slicer.util, k, v)

