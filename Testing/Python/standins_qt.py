"""Qt stand-ins (signals, QObject/QWidget and the widget classes the VoxMetric panels use, QTimer)
for :mod:`slicer_standins`; see its docstring."""

from __future__ import annotations

import inspect
import pathlib
import weakref
from collections.abc import Callable
from typing import Any


#: Exceptions raised inside slots (what PythonQt would print): (slot name, exception).
SLOT_ERRORS: list[tuple[str, BaseException]] = []
#: QTimers alive (see fire_timers).
TIMERS: weakref.WeakSet[Any] = weakref.WeakSet()

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
        from standins_ui import build_ui  # the loader needs every widget class, defined after Qt's

        return build_ui(qfile.path)


class QApplication:
    @staticmethod
    def processEvents() -> None:
        pass


