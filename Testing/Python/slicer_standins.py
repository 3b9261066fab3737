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

import enum
import inspect
import pathlib
import sys
import tempfile
import types
import typing
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Exceptions raised inside slots (what PythonQt would print): (slot name, exception).
SLOT_ERRORS: list[tuple[str, BaseException]] = []
#: Message boxes shown: (kind, text, window title).
DIALOGS: list[tuple[str, str, str]] = []
#: Answers for confirmOkCancelDisplay, consumed in order (empty: OK).
ANSWERS: list[bool] = []
#: Paths the file dialogs (qt.QFileDialog) answer, consumed in order (empty: cancelled).
FILE_ANSWERS: list[str] = []
#: QTimers alive (see fire_timers).
TIMERS: weakref.WeakSet[Any] = weakref.WeakSet()


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
# qt: signals, objects, widgets
# =============================================================================================
def _arity(fn: Callable[..., Any]) -> int | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class BoundSignal:
    """A Qt signal of one object: connect / disconnect / emit; slots that take fewer arguments
    get the first ones (as PythonQt); a slot's exception is recorded, not raised."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> bool:
        if not callable(slot):
            raise TypeError(f"{self.name}.connect needs a callable, got {slot!r}")
        self._slots.append(slot)
        return True

    def disconnect(self, slot: Callable[..., Any] | None = None) -> bool:
        if slot is None:
            self._slots.clear()
            return True
        for i, s in enumerate(self._slots):
            if s == slot:
                del self._slots[i]
                return True
        return False

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            n = _arity(slot)
            try:
                slot(*(args if n is None else args[:n]))
            except Exception as e:  # noqa: BLE001  (PythonQt prints the traceback and carries on)
                SLOT_ERRORS.append((getattr(slot, "__qualname__", repr(slot)), e))

    __call__ = emit


class Signal:
    """Class-level declaration of a signal; each instance gets its own :class:`BoundSignal`."""

    def __init__(self, *types_: Any) -> None:
        self.types = types_
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        signals = obj.__dict__.setdefault("_signals", {})
        if self.name not in signals:
            signals[self.name] = BoundSignal(self.name)
        return signals[self.name]


def _props(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in reversed(cls.__mro__):
        out.update(k.__dict__.get("PROPS", {}))
    return out


class QObject:
    """Strict base: only declared properties (``PROPS``, with defaults), methods and private
    ``_names`` may be read or set."""

    PROPS: dict[str, Any] = {"objectName": ""}
    destroyed = Signal()

    def __init__(self, parent: Any = None) -> None:
        object.__setattr__(self, "_values", dict(_props(type(self))))
        object.__setattr__(self, "_dynamic", {})
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_parent", None)
        if parent is not None:
            self.setParent(parent)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name in self.__dict__:
            object.__setattr__(self, name, value)
            return
        prop = getattr(type(self), name, None)
        if isinstance(prop, property):
            if prop.fset is None:
                raise AttributeError(f"property '{name}' of '{type(self).__name__}' is read-only")
            prop.fset(self, value)
            return
        if name in self._values:
            self._set(name, value)
            return
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}' (cannot set it)")

    def _set(self, name: str, value: Any) -> None:
        self._values[name] = value

    # names
    @property
    def name(self) -> str:
        return self._values["objectName"]

    @name.setter
    def name(self, value: str) -> None:
        self._values["objectName"] = value

    def setObjectName(self, name: str) -> None:
        self._values["objectName"] = name

    def className(self) -> str:
        return type(self).__name__

    # tree
    def parent(self) -> Any:
        return self._parent

    def setParent(self, parent: Any) -> None:
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        object.__setattr__(self, "_parent", parent)
        if parent is not None:
            parent._children.append(self)

    def children(self) -> list[Any]:
        return list(self._children)

    def findChildren(self, cls: type = object) -> list[Any]:
        out = []
        for c in self._children:
            if isinstance(c, cls):
                out.append(c)
            out += c.findChildren(cls)
        return out

    def deleteLater(self) -> None:
        self.setParent(None)

    # properties
    def property(self, name: str) -> Any:
        if name in self._dynamic:
            return self._dynamic[name]
        return self._values.get(name)

    def setProperty(self, name: str, value: Any) -> bool:
        if name in self._values:
            self._set(name, value)
            return True
        self._dynamic[name] = value
        return False

    def isWidgetType(self) -> bool:
        return False


class QWidget(QObject):
    PROPS = {"enabled": True, "visible": True, "toolTip": "", "styleSheet": "", "minimumHeight": 0,
             "maximumHeight": 16777215}

    def isWidgetType(self) -> bool:
        return True

    def setEnabled(self, on: bool) -> None:
        self.enabled = bool(on)

    def isEnabled(self) -> bool:
        return bool(self.enabled)

    def setVisible(self, on: bool) -> None:
        self.visible = bool(on)

    def isVisible(self) -> bool:
        return bool(self.visible)

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def setToolTip(self, text: str) -> None:
        self.toolTip = str(text)

    def layout(self) -> Any:
        return next((c for c in self._children if isinstance(c, QLayout)), None)

    def setLayout(self, layout: QLayout) -> None:
        layout.setParent(self)


class QLayout(QObject):
    """Layouts are QObjects (childWidgetVariables finds them); widgets added to a layout
    become children of the layout's widget, as in Qt."""

    def _owner(self) -> Any:
        p = self._parent
        while p is not None and not isinstance(p, QWidget):
            p = p._parent
        return p

    def addWidget(self, widget: QWidget, *args: Any) -> None:
        owner = self._owner()
        widget.setParent(owner if owner is not None else self)
        self._items().append(widget)

    def addLayout(self, layout: QLayout, *args: Any) -> None:
        layout.setParent(self)
        self._items().append(layout)

    def addItem(self, item: Any) -> None:
        self._items().append(item)

    def _items(self) -> list[Any]:
        if "_itemlist" not in self.__dict__:
            object.__setattr__(self, "_itemlist", [])
        return self.__dict__["_itemlist"]

    def count(self) -> int:
        return len(self._items())


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QFormLayout(QLayout):
    def addRow(self, label: Any, field: Any = None) -> None:
        if field is None:
            self.addWidget(label)
            return
        if isinstance(label, str):
            text = label
            label = QLabel()
            label.text = text
        self.addWidget(label)
        self.addWidget(field)
        self._rows().append((label, field))

    def _rows(self) -> list[tuple[Any, Any]]:
        if "_rowlist" not in self.__dict__:
            object.__setattr__(self, "_rowlist", [])
        return self.__dict__["_rowlist"]

    def rowCount(self) -> int:
        return len(self._rows())

    def removeRow(self, row: int) -> None:
        label, field = self._rows().pop(row)
        for w in (label, field):
            w.setParent(None)
            if w in self._items():
                self._items().remove(w)


class QLabel(QWidget):
    PROPS = {"text": "", "wordWrap": False, "alignment": 0}

    def setText(self, text: str) -> None:
        self.text = str(text)


class QAbstractButton(QWidget):
    PROPS = {"text": "", "checkable": False, "checked": False}
    clicked = Signal(bool)
    toggled = Signal(bool)

    def _set(self, name: str, value: Any) -> None:
        old = self._values.get(name)
        super()._set(name, value)
        if name == "checked" and bool(value) != bool(old):
            self.toggled.emit(bool(value))
            self._checkedChanged(bool(value))

    def _checkedChanged(self, on: bool) -> None:
        pass

    def click(self) -> None:
        """As Qt: nothing happens on a disabled (or hidden-by-parent) button."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self.checked
        self.clicked.emit(bool(self.checked))

    def setChecked(self, on: bool) -> None:
        self.checked = bool(on)

    def isChecked(self) -> bool:
        return bool(self.checked)

    def setText(self, text: str) -> None:
        self.text = str(text)


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    PROPS = {"checkable": True}
    stateChanged = Signal(int)

    def _checkedChanged(self, on: bool) -> None:
        self.stateChanged.emit(2 if on else 0)


class QComboBox(QWidget):
    PROPS = {"editable": False}
    currentIndexChanged = Signal(int)
    currentTextChanged = Signal(str)
    activated = Signal(int)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._items: list[dict[int, Any]] = []
        self._index = -1

    def _setIndex(self, index: int) -> None:
        if index == self._index:
            return
        self._index = index
        self.currentIndexChanged.emit(index)
        self.currentTextChanged.emit(self.currentText)

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentIndex(self) -> int:
        return self._index

    @currentIndex.setter
    def currentIndex(self, index: int) -> None:
        self.setCurrentIndex(index)

    def setCurrentIndex(self, index: int) -> None:
        self._setIndex(index if 0 <= index < len(self._items) else -1)

    @property
    def currentText(self) -> str:
        return self._items[self._index][Qt.DisplayRole] if self._index >= 0 else ""

    @currentText.setter
    def currentText(self, text: str) -> None:
        self.setCurrentText(text)

    def setCurrentText(self, text: str) -> None:
        i = self.findText(text)
        if i >= 0:
            self._setIndex(i)

    @property
    def currentData(self) -> Any:
        return self._items[self._index].get(Qt.UserRole) if self._index >= 0 else None

    def addItem(self, text: str, userData: Any = None) -> None:
        self._items.append({Qt.DisplayRole: str(text), Qt.UserRole: userData})
        if self._index < 0:
            self._setIndex(0)

    def addItems(self, texts: list[str]) -> None:
        for t in texts:
            self.addItem(t)

    def clear(self) -> None:
        self._items.clear()
        self._setIndex(-1)

    def itemText(self, i: int) -> str:
        return self._items[i][Qt.DisplayRole] if 0 <= i < len(self._items) else ""

    def itemData(self, i: int, role: int = 0x0100) -> Any:
        return self._items[i].get(role) if 0 <= i < len(self._items) else None

    def setItemData(self, i: int, value: Any, role: int = 0x0100) -> None:
        if 0 <= i < len(self._items):
            self._items[i][role] = value

    def findText(self, text: str) -> int:
        return next((i for i, it in enumerate(self._items) if it[Qt.DisplayRole] == text), -1)

    def findData(self, data: Any, role: int = 0x0100) -> int:
        return next((i for i, it in enumerate(self._items) if it.get(role) == data), -1)


class _SpinBase(QWidget):
    PROPS = {"singleStep": 1, "suffix": "", "prefix": ""}

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._min, self._max = self._defaults()
        self._value = self._clamp(0)

    def _defaults(self) -> tuple[Any, Any]:
        return 0, 99

    def _clamp(self, v: Any) -> Any:
        return min(max(v, self._min), self._max)

    def _convert(self, v: Any) -> Any:
        return v

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, v: Any) -> None:
        self.setValue(v)

    def setValue(self, v: Any) -> None:
        v = self._clamp(self._convert(v))
        if v != self._value:
            self._value = v
            self.valueChanged.emit(v)

    @property
    def minimum(self) -> Any:
        return self._min

    @minimum.setter
    def minimum(self, v: Any) -> None:
        self.setRange(v, max(v, self._max))

    @property
    def maximum(self) -> Any:
        return self._max

    @maximum.setter
    def maximum(self, v: Any) -> None:
        self.setRange(min(v, self._min), v)

    def setMinimum(self, v: Any) -> None:
        self.minimum = v

    def setMaximum(self, v: Any) -> None:
        self.maximum = v

    def setRange(self, lo: Any, hi: Any) -> None:
        self._min, self._max = self._convert(lo), self._convert(hi)
        self.setValue(self._value)


class QSpinBox(_SpinBase):
    valueChanged = Signal(int)

    def _convert(self, v: Any) -> int:
        if isinstance(v, float) and not v.is_integer():
            raise TypeError(f"QSpinBox.value needs an int, got {v!r}")
        return int(v)


class QDoubleSpinBox(_SpinBase):
    PROPS = {"decimals": 2, "singleStep": 1.0}
    valueChanged = Signal(float)

    def _defaults(self) -> tuple[float, float]:
        return 0.0, 99.99

    def _convert(self, v: Any) -> float:
        return round(float(v), int(self._values["decimals"])) if abs(float(v)) != float("inf") else float(v)


class QSlider(_SpinBase):
    valueChanged = Signal(int)


class QLineEdit(QWidget):
    PROPS = {"placeholderText": "", "readOnly": False}
    textChanged = Signal(str)
    editingFinished = Signal()

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._text = ""

    @property
    def text(self) -> str:
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        self.setText(value)

    def setText(self, value: str) -> None:
        value = str(value)
        if value != self._text:
            self._text = value
            self.textChanged.emit(value)


class QPlainTextEdit(QWidget):
    PROPS = {"readOnly": False, "maximumBlockCount": 0, "plainText": ""}
    textChanged = Signal()

    def appendPlainText(self, text: str) -> None:
        lines = self.toPlainText().splitlines() + str(text).splitlines()
        if self.maximumBlockCount:
            lines = lines[-int(self.maximumBlockCount):]
        self.setPlainText("\n".join(lines))

    def toPlainText(self) -> str:
        return str(self._values["plainText"])

    def setPlainText(self, text: str) -> None:
        self._values["plainText"] = str(text)
        self.textChanged.emit()

    def clear(self) -> None:
        self.setPlainText("")


class QTextEdit(QPlainTextEdit):
    pass


class QProgressBar(QWidget):
    PROPS = {"minimum": 0, "maximum": 100, "textVisible": True, "format": "%p%"}
    valueChanged = Signal(int)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._value = 0

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, v: int) -> None:
        if isinstance(v, float):
            raise TypeError(f"QProgressBar.value needs an int, got {v!r}")
        self._value = min(max(int(v), self.minimum), self.maximum)
        self.valueChanged.emit(self._value)

    def setValue(self, v: int) -> None:
        self.value = v


class _ModelIndex:
    def __init__(self, row: int, column: int) -> None:
        self._row, self._column = row, column

    def row(self) -> int:
        return self._row

    def column(self) -> int:
        return self._column


class QTableWidgetItem:
    def __init__(self, text: str = "") -> None:
        self._text = str(text)

    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:
        self._text = str(text)


class QTableWidget(QWidget):
    PROPS = {"selectionBehavior": 0, "columnCount": 0}

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._cells: list[dict[int, Any]] = []
        self._selected: set[int] = set()

    @property
    def rowCount(self) -> int:
        return len(self._cells)

    @rowCount.setter
    def rowCount(self, n: int) -> None:
        self.setRowCount(n)

    def setRowCount(self, n: int) -> None:
        del self._cells[n:]
        while len(self._cells) < n:
            self._cells.append({})
        self._selected = {r for r in self._selected if r < n}

    def insertRow(self, row: int) -> None:
        self._cells.insert(row, {})

    def removeRow(self, row: int) -> None:
        if 0 <= row < len(self._cells):
            for v in self._cells.pop(row).values():
                if isinstance(v, QObject):
                    v.setParent(None)
        self._selected = {r - (r > row) for r in self._selected if r != row}

    def _check(self, row: int, column: int) -> None:
        if not (0 <= row < len(self._cells) and 0 <= column < int(self.columnCount)):
            raise IndexError(f"cell ({row}, {column}) outside the {len(self._cells)}×{self.columnCount} table")

    def setCellWidget(self, row: int, column: int, widget: QWidget) -> None:
        self._check(row, column)
        widget.setParent(self)
        self._cells[row][column] = widget

    def cellWidget(self, row: int, column: int) -> Any:
        return self._cells[row].get(column) if 0 <= row < len(self._cells) else None

    def setItem(self, row: int, column: int, item: QTableWidgetItem) -> None:
        self._check(row, column)
        self._cells[row][column] = item

    def item(self, row: int, column: int) -> Any:
        return self._cells[row].get(column) if 0 <= row < len(self._cells) else None

    def selectRow(self, row: int) -> None:
        self._selected.add(row)

    def clearSelection(self) -> None:
        self._selected.clear()

    def selectedIndexes(self) -> list[_ModelIndex]:
        return [_ModelIndex(r, c) for r in sorted(self._selected) for c in range(int(self.columnCount))]


class QTimer(QObject):
    """Fires only when a test calls :func:`fire_timers` (no event loop here)."""

    PROPS = {"interval": 0}
    timeout = Signal()

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._active = False
        self._single = False
        TIMERS.add(self)

    def setInterval(self, ms: int) -> None:
        self.interval = int(ms)

    def start(self, ms: int | None = None) -> None:
        if ms is not None:
            self.interval = int(ms)
        self._active = True

    def stop(self) -> None:
        self._active = False

    def isActive(self) -> bool:
        return self._active

    @staticmethod
    def singleShot(ms: int, fn: Callable[[], Any]) -> None:
        t = QTimer()
        t._single = True
        t.timeout.connect(fn)
        _SINGLE_SHOTS.append(t)
        t.start(ms)


_SINGLE_SHOTS: list[QTimer] = []


def fire_timers() -> int:
    """Fire every active timer once (what Qt's event loop would do next); returns how many."""
    fired = 0
    for t in list(TIMERS):
        if t.isActive():
            if t._single:
                t.stop()
                if t in _SINGLE_SHOTS:
                    _SINGLE_SHOTS.remove(t)
            t.timeout.emit()
            fired += 1
    return fired


class _Qt:
    DisplayRole = 0
    ToolTipRole = 3
    UserRole = 0x0100
    WaitCursor = 3
    Vertical = 2
    Horizontal = 1


Qt = _Qt()


class QFile:
    ReadOnly = 1

    def __init__(self, path: str) -> None:
        self.path = pathlib.Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    def open(self, mode: int) -> bool:
        return self.exists()

    def close(self) -> None:
        pass


class QUiLoader:
    """Builds stand-in widgets from a Designer .ui file (see :func:`build_ui`)."""

    def load(self, qfile: QFile) -> Any:
        return build_ui(qfile.path)


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


class QApplication:
    @staticmethod
    def processEvents() -> None:
        pass


# ---- ctk ---------------------------------------------------------------------------------
class ctkCollapsibleButton(QAbstractButton):
    PROPS = {"collapsed": False, "checkable": True, "checked": True}


class ctkPathLineEdit(QWidget):
    Dirs, Files, Readable, Writable, Executable, NoDot, NoDotDot = 1, 2, 4, 8, 16, 32, 64
    PROPS = {"filters": 0, "nameFilters": [], "showHistoryButton": True}
    currentPathChanged = Signal(str)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._path = ""

    @property
    def currentPath(self) -> str:
        return self._path

    @currentPath.setter
    def currentPath(self, path: str) -> None:
        self.setCurrentPath(path)

    def setCurrentPath(self, path: str) -> None:
        path = str(path)
        if path != self._path:
            self._path = path
            self.currentPathChanged.emit(path)


# ---- MRML widgets ------------------------------------------------------------------------
class qMRMLWidget(QWidget):
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene: Any) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self) -> Any:
        return self._scene


class qMRMLNodeComboBox(QWidget):
    """Lists the scene's nodes of ``nodeTypes``; with ``noneEnabled`` False it selects the first
    one whenever it has none (as Slicer's does); follows node removal."""

    PROPS = {"nodeTypes": [], "showChildNodeTypes": True, "noneEnabled": False, "addEnabled": True,
             "removeEnabled": True, "renameEnabled": False, "editEnabled": False, "noneDisplay": "None",
             "showHidden": False, "selectNodeUponCreation": True, "baseName": ""}
    currentNodeChanged = Signal(object)
    currentNodeIDChanged = Signal(str)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._scene: Any = None
        self._node: Any = None
        self._tags: list[int] = []

    def _matches(self, node: Any) -> bool:
        if node is None or (node.GetHideFromEditors() and not self.showHidden):
            return False
        types_ = list(self.nodeTypes)
        if self.showChildNodeTypes:
            return any(node.IsA(t) for t in types_)
        return node.GetClassName() in types_

    def nodes(self) -> list[Any]:
        if self._scene is None:
            return []
        n = self._scene.GetNumberOfNodes()
        return [nd for nd in (self._scene.GetNthNode(i) for i in range(n)) if self._matches(nd)]

    def setMRMLScene(self, scene: Any) -> None:
        import slicer

        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            self._tags = [scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, self._onChange),
                          scene.AddObserver(slicer.vtkMRMLScene.NodeRemovedEvent, self._onChange),
                          scene.AddObserver(slicer.vtkMRMLScene.EndCloseEvent, self._onChange)]
        self._onChange()

    def mrmlScene(self) -> Any:
        return self._scene

    def _onChange(self, *_args: Any) -> None:
        nodes = self.nodes()
        current = self._node if any(n is self._node for n in nodes) else None
        if current is None and not self.noneEnabled and nodes:
            current = nodes[0]
        if current is not self._node:
            self.setCurrentNode(current)

    def currentNode(self) -> Any:
        return self._node

    def currentNodeID(self) -> str:
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node: Any) -> None:
        if node is not None and not self._matches(node):
            raise TypeError(f"{node.GetClassName()} is not one of {list(self.nodeTypes)}")
        if node is self._node:
            return
        self._node = node
        self.currentNodeChanged.emit(node)
        self.currentNodeIDChanged.emit(self.currentNodeID())

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene and node_id else None)


class qMRMLTableView(QWidget):
    """Shows a vtkMRMLTableNode (Slicer's table view): the node it is bound to, and the scene."""

    PROPS = {"editable": True, "selectionBehavior": 0}

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._scene: Any = None
        self._node: Any = None

    def setMRMLScene(self, scene: Any) -> None:
        self._scene = scene

    def mrmlScene(self) -> Any:
        return self._scene

    def setMRMLTableNode(self, node: Any) -> None:
        if node is not None and not node.IsA("vtkMRMLTableNode"):
            raise TypeError(f"{node.GetClassName()} is not a vtkMRMLTableNode")
        self._node = node

    def mrmlTableNode(self) -> Any:
        return self._node


# ---- the .ui loader ------------------------------------------------------------------------
def _widget_classes() -> dict[str, type]:
    return {c.__name__: c for c in (QWidget, QLabel, QPushButton, QCheckBox, QComboBox, QSpinBox, QDoubleSpinBox,
                                    QSlider, QLineEdit, QPlainTextEdit, QTextEdit, QProgressBar, QTableWidget,
                                    ctkCollapsibleButton, ctkPathLineEdit, qMRMLWidget, qMRMLNodeComboBox,
                                    qMRMLTableView)}


_LAYOUTS = {"QVBoxLayout": QVBoxLayout, "QHBoxLayout": QHBoxLayout, "QFormLayout": QFormLayout,
            "QGridLayout": QGridLayout}


def _value(prop: ET.Element) -> Any:
    node = next(iter(prop))
    tag, text = node.tag, (node.text or "")
    if tag == "string":
        return text
    if tag == "bool":
        return text.strip() == "true"
    if tag == "number":
        return int(text)
    if tag == "double":
        return float(text)
    if tag == "stringlist":
        return [s.text or "" for s in node.findall("string")]
    if tag in ("enum", "set"):
        return text
    return None  # size, rect, font…: layout only


def _apply(obj: QObject, elem: ET.Element) -> None:
    for prop in elem.findall("property"):
        name = prop.get("name", "")
        value = _value(prop)
        if prop.get("stdset") == "0":  # a dynamic property, e.g. SlicerParameterName
            obj.setProperty(name, value)
            continue
        if value is None or isinstance(value, str) and "::" in value and name != "text":
            continue  # enums such as Qt::Vertical, QAbstractItemView::SelectRows
        if name in ("value",) and isinstance(obj, (_SpinBase, QProgressBar)):
            obj.setValue(value)
            continue
        setattr(obj, name, value)  # AttributeError: the .ui uses a property our class lacks


def build_ui(path: str | pathlib.Path) -> Any:
    """Widgets of a Designer file: one stand-in per ``<widget>``/``<layout>`` with its class,
    name and properties; ``<connections>`` wired. KeyError for a class with no stand-in."""
    root = ET.parse(path).getroot()
    classes = _widget_classes()
    by_name: dict[str, QObject] = {}

    def make(elem: ET.Element, parent: QObject | None) -> QObject:
        cls_name = elem.get("class", "")
        if elem.tag == "layout":
            obj: QObject = _LAYOUTS[cls_name]()
            if parent is not None:
                if isinstance(parent, QLayout):
                    parent.addLayout(obj)  # type: ignore[arg-type]
                else:
                    obj.setParent(parent)
        else:
            if cls_name not in classes:
                raise KeyError(f"{path}: no stand-in for widget class {cls_name}")
            obj = classes[cls_name]()
            if isinstance(parent, QLayout):
                parent.addWidget(obj)  # type: ignore[arg-type]
            elif parent is not None:
                obj.setParent(parent)
        obj.setObjectName(elem.get("name", ""))
        by_name[obj.name] = obj
        _apply(obj, elem)
        if isinstance(obj, QTableWidget):
            obj.columnCount = max(int(obj.columnCount), len(elem.findall("column")))
        for child in elem:
            if child.tag in ("widget", "layout"):
                make(child, obj)
            elif child.tag == "item":
                for grand in child:
                    if grand.tag in ("widget", "layout"):
                        make(grand, obj)
        return obj

    top = make(root.find("widget"), None)  # type: ignore[arg-type]
    for c in root.iter("connection"):
        sender, receiver = by_name[c.findtext("sender", "")], by_name[c.findtext("receiver", "")]
        signal = c.findtext("signal", "").split("(")[0]
        slot = c.findtext("slot", "").split("(")[0]
        getattr(sender, signal).connect(getattr(receiver, slot))
    return top


# =============================================================================================
# slicer.parameterNodeWrapper (the subset these modules use, as Slicer implements it)
# =============================================================================================
class Validator:
    def validate(self, value: Any) -> None:
        raise NotImplementedError


class NotNone(Validator):
    def validate(self, value: Any) -> None:
        if value is None:
            raise ValueError("Value must not be None")


class IsInstance(Validator):
    def __init__(self, classtype: Any) -> None:
        self.classtype = classtype

    def validate(self, value: Any) -> None:
        if value is not None and not isinstance(value, self.classtype):
            raise TypeError(f"Value must be of type '{self.classtype}', is type '{type(value)}' value '{value}'")


class WithinRange(Validator):
    def __init__(self, minimum: Any, maximum: Any) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value: Any) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Minimum(Validator):
    def __init__(self, minimum: Any) -> None:
        self.minimum = minimum

    def validate(self, value: Any) -> None:
        if value < self.minimum:
            raise ValueError(f"Value must be greater than {self.minimum}, is {value}")


class Maximum(Validator):
    def __init__(self, maximum: Any) -> None:
        self.maximum = maximum

    def validate(self, value: Any) -> None:
        if value > self.maximum:
            raise ValueError(f"Value must be less than {self.maximum}, is {value}")


class Choice(Validator):
    def __init__(self, choices: Any) -> None:
        self.choices = choices

    def validate(self, value: Any) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


@dataclass
class Decimals:
    value: int


@dataclass
class SingleStep:
    value: float


@dataclass
class Default:
    value: Any


def _split(tp: Any) -> tuple[Any, list[Any]]:
    if typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        return args[0], list(args[1:])
    return tp, []


def _first(annotations: list[Any], cls: type) -> Any:
    return next((a for a in annotations if isinstance(a, cls)), None)


class _Serializer:
    """str / int / float / bool / Path / MRML node parameters, stored as Slicer stores them."""

    def __init__(self, tp: Any, validators: list[Validator]) -> None:
        import slicer

        self.tp = tp
        self.is_node = isinstance(tp, type) and issubclass(tp, slicer.vtkMRMLNode)
        if not (self.is_node or tp in (str, int, float, bool) or tp in (pathlib.Path, pathlib.PosixPath)):
            raise TypeError(f"no serializer for {tp!r} in the stand-in parameterNodeWrapper")
        base: list[Validator] = [IsInstance(tp)] if self.is_node else \
            [NotNone(), IsInstance((int, float) if tp is float else tp)]
        self.validators = base + validators

    def default(self) -> Any:
        if self.is_node:
            return None
        return self.tp()  # "", 0, 0.0, False, Path()

    def isIn(self, node: Any, name: str) -> bool:
        return bool(node.HasParameter(name))

    def write(self, node: Any, name: str, value: Any) -> None:
        for v in self.validators:
            v.validate(value)
        if self.is_node:
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        elif self.tp is bool:
            node.SetParameter(name, "True" if value else "False")
        else:
            node.SetParameter(name, str(value))

    def read(self, node: Any, name: str) -> Any:
        if self.is_node:
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        if self.tp is bool:
            return text == "True"
        return self.tp(text)


class _Param:
    def __init__(self, name: str, tp: Any) -> None:
        base, annotations = _split(tp)
        self.name, self.type = name, tp
        self.serializer = _Serializer(base, [a for a in annotations if isinstance(a, Validator)])
        self.default = _first(annotations, Default)


class GuiConnector:
    """Base of the widget ↔ value adapters (Slicer's API: read, write, onChanged, widget)."""

    def __init__(self) -> None:
        self._callback: Callable[[], None] | None = None

    def onChanged(self, callback: Callable[[], None] | None) -> None:
        self._callback = callback
        if callback is None:
            self._disconnect()
        else:
            self._connect()

    def changed(self, *_args: Any) -> None:
        if self._callback:
            self._callback()

    def _connect(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def widget(self) -> Any:
        raise NotImplementedError

    def read(self) -> Any:
        raise NotImplementedError

    def write(self, value: Any) -> None:
        raise NotImplementedError


class _SignalConnector(GuiConnector):
    signal = ""

    def __init__(self, widget: Any) -> None:
        super().__init__()
        self._widget = widget

    def _connect(self) -> None:
        getattr(self._widget, self.signal).connect(self.changed)

    def _disconnect(self) -> None:
        getattr(self._widget, self.signal).disconnect(self.changed)

    def widget(self) -> Any:
        return self._widget


class _CheckBox(_SignalConnector):
    signal = "stateChanged"

    def read(self) -> bool:
        return bool(self._widget.checked)

    def write(self, value: bool) -> None:
        self._widget.checked = value


class _Number(_SignalConnector):
    signal = "valueChanged"

    def __init__(self, widget: Any, annotations: list[Any]) -> None:
        super().__init__(widget)
        decimals = _first(annotations, Decimals)
        if decimals is not None:
            widget.decimals = decimals.value
        step = _first(annotations, SingleStep)
        if step is not None:
            widget.singleStep = step.value
        rng, lo, hi = (_first(annotations, c) for c in (WithinRange, Minimum, Maximum))
        inf = float("inf") if isinstance(widget, QDoubleSpinBox) else 2 ** 31
        if rng is not None:
            widget.setRange(rng.minimum, rng.maximum)
        else:
            widget.setRange(lo.minimum if lo is not None else -inf,
                            hi.maximum if hi is not None else (inf if inf == float("inf") else inf - 1))

    def read(self) -> Any:
        return self._widget.value

    def write(self, value: Any) -> None:
        self._widget.value = value


class _ComboChoice(_SignalConnector):
    signal = "currentIndexChanged"

    def __init__(self, widget: Any, choices: Any) -> None:
        super().__init__(widget)
        self._choices = choices
        widget.clear()
        for c in choices:
            widget.addItem(str(c))

    def read(self) -> Any:
        return self._choices[self._widget.currentIndex]

    def write(self, value: Any) -> None:
        for i, c in enumerate(self._choices):
            if c == value:
                self._widget.currentIndex = i
                return
        raise ValueError(f"Unable to find value {value} in choices {self._choices}")


class _LineEdit(_SignalConnector):
    signal = "textChanged"

    def read(self) -> str:
        return self._widget.text

    def write(self, value: str) -> None:
        self._widget.text = value


class _PathEdit(_SignalConnector):
    signal = "currentPathChanged"

    def __init__(self, widget: Any, tp: Any) -> None:
        super().__init__(widget)
        self._type = tp

    def read(self) -> Any:
        return self._type(self._widget.currentPath)

    def write(self, value: Any) -> None:
        self._widget.currentPath = str(value)


class _NodeCombo(_SignalConnector):
    signal = "currentNodeChanged"

    def __init__(self, widget: Any, tp: Any) -> None:
        super().__init__(widget)
        widget.nodeTypes = [tp.__name__]

    def read(self) -> Any:
        return self._widget.currentNode()

    def write(self, value: Any) -> None:
        self._widget.setCurrentNode(value)


def createGuiConnector(widget: Any, datatype: Any) -> GuiConnector:
    """As Slicer: the connector is chosen by the widget's exact class and the parameter type."""
    base, annotations = _split(datatype)
    kind = type(widget)
    param = _Param("?", datatype)
    if base is bool and kind is QCheckBox:
        return _CheckBox(widget)
    if base is int and kind in (QSpinBox, QSlider):
        return _Number(widget, annotations)
    if base is float and kind is QDoubleSpinBox:
        return _Number(widget, annotations)
    if kind is QComboBox and base in (int, float, str, bool):
        choice = _first(annotations, Choice)
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        return _ComboChoice(widget, choice.choices)
    if kind is QComboBox and isinstance(base, type) and issubclass(base, enum.Enum):
        return _ComboChoice(widget, list(base))
    if base is str and kind is QLineEdit:
        return _LineEdit(widget)
    if kind is ctkPathLineEdit and base in (pathlib.Path, pathlib.PosixPath):
        return _PathEdit(widget, base)
    if kind is qMRMLNodeComboBox and param.serializer.is_node:
        return _NodeCombo(widget, base)
    raise RuntimeError(f"Unable to create GUI connector from datatype '{datatype}' to widget type '{kind}'")


def parameterNodeWrapper(classtype: type) -> type:
    """Typed properties over a vtkMRMLScriptedModuleNode's parameters, GUI binding by the
    ``SlicerParameterName`` dynamic property (Slicer's decorator, re-implemented)."""
    import slicer
    import vtk

    hints = typing.get_type_hints(classtype, include_extras=True)
    params = {name: _Param(name, tp) for name, tp in hints.items()}
    defaults = {}
    for name, p in params.items():
        if hasattr(classtype, name):
            defaults[name] = getattr(classtype, name)
        else:
            defaults[name] = p.default.value if p.default is not None else p.serializer.default()
    for reserved in ("allParameters", "connectGui", "getValue", "setValue", "disconnectGui", "parameterNode"):
        if hasattr(classtype, reserved):
            raise ValueError(f"Cannot use reserved name '{reserved}' in a parameterNodeWrapper")

    def __init__(self: Any, parameterNode: Any) -> None:
        if parameterNode is None:
            raise ValueError("a parameterNodeWrapper needs a parameter node")
        self.parameterNode = parameterNode
        self._guis: dict[int, dict[str, GuiConnector]] = {}
        self._nextTag = 0
        self._updatingGUI = False
        for name, p in params.items():
            if not p.serializer.isIn(parameterNode, name):
                p.serializer.write(parameterNode, name, defaults[name])

    def _check(name: str) -> _Param:
        if name not in params:
            raise ValueError(f"Cannot find a param with the given name: {name}; found {sorted(params)}")
        return params[name]

    def getValue(self: Any, name: str) -> Any:
        p = _check(name)
        if not p.serializer.isIn(self.parameterNode, name):
            p.serializer.write(self.parameterNode, name, defaults[name])
        return p.serializer.read(self.parameterNode, name)

    def setValue(self: Any, name: str, value: Any) -> None:
        p = _check(name)
        with slicer.util.NodeModify(self.parameterNode):
            p.serializer.write(self.parameterNode, name, value)

    def _updateGUI(self: Any) -> None:
        if self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            for mapping in self._guis.values():
                for name, connector in mapping.items():
                    connector.write(self.getValue(name))
        finally:
            self._updatingGUI = False

    def connectParametersToGui(self: Any, mapping: dict[str, Any]) -> int:
        for name in mapping:
            _check(name)
        connectors = {n: (w if isinstance(w, GuiConnector) else createGuiConnector(w, params[n].type))
                      for n, w in mapping.items()}
        tag = self._nextTag
        self._nextTag += 1
        self._guis[tag] = connectors
        for name, connector in connectors.items():
            connector.write(self.getValue(name))

            def callback(name: str = name, connector: GuiConnector = connector) -> None:
                if not self._updatingGUI:
                    self.setValue(name, connector.read())

            connector.onChanged(callback)
        wself = weakref.ref(self)
        self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent,
                                       lambda caller, event: wself() is not None and _updateGUI(wself()))
        return tag

    def connectGui(self: Any, gui: Any) -> int:
        widgets = gui.findChildren(QWidget) if getattr(gui, "isWidgetType", lambda: False)() \
            else list(vars(gui).values())
        mapping = {w.property("SlicerParameterName"): w for w in widgets if w.property("SlicerParameterName")}
        return connectParametersToGui(self, mapping)

    def disconnectGui(self: Any, tag: int) -> None:
        for connector in self._guis.pop(tag, {}).values():
            connector.onChanged(None)

    def dataType(name: str) -> Any:
        return _check(name).type

    for name in params:
        setattr(classtype, name, property(lambda self, n=name: getValue(self, n),
                                          lambda self, value, n=name: setValue(self, n, value)))
    members: dict[str, Any] = {
        "__init__": __init__, "getValue": getValue, "setValue": setValue, "connectGui": connectGui,
        "connectParametersToGui": connectParametersToGui, "disconnectGui": disconnectGui,
        "dataType": staticmethod(dataType), "allParameters": params, "_is_parameter_node_wrapper": True,
        "StartModify": lambda self: self.parameterNode.StartModify(),
        "EndModify": lambda self, was: self.parameterNode.EndModify(was),
        "Modified": lambda self: self.parameterNode.Modified(),
        "AddObserver": lambda self, e, cb, priority=0.0: self.parameterNode.AddObserver(e, cb, priority),
        "RemoveObserver": lambda self, tag: self.parameterNode.RemoveObserver(tag),
    }
    for k, v in members.items():
        setattr(classtype, k, v)
    return classtype


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
                "QTimer", "Qt", "QFile", "QUiLoader", "QApplication", "QFileDialog"]
    g = globals()
    modules = {
        "qt": _module("qt", **{n: g[n] for n in qt_names}),
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
