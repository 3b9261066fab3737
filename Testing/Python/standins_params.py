"""``slicer.parameterNodeWrapper`` re-implemented on the real ``vtkMRMLScriptedModuleNode``, for
:mod:`slicer_standins`."""

from __future__ import annotations

import abc
import enum
import pathlib
import typing
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from standins_qt import QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSlider, QSpinBox, QWidget
from standins_ui import ctkPathLineEdit, qMRMLNodeComboBox


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


class GuiConnector(abc.ABC):
    """Base of the widget ↔ value adapters (Slicer's API: read, write, onChanged, widget;
    ``canRepresent`` and ``create`` abstract, as in Slicer)."""

    @staticmethod
    @abc.abstractmethod
    def canRepresent(widget: Any, datatype: Any) -> bool: ...

    @staticmethod
    @abc.abstractmethod
    def create(widget: Any, datatype: Any) -> Any: ...

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
    """The built-in connectors (this stand-in picks them by widget type itself)."""

    signal = ""
    canRepresent = staticmethod(lambda widget, datatype: False)
    create = staticmethod(lambda widget, datatype: None)

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


