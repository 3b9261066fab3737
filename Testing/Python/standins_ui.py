"""CTK and MRML widget stand-ins and the ``.ui`` loader for :mod:`slicer_standins`."""

from __future__ import annotations

import pathlib
import xml.etree.ElementTree as ET
from typing import Any

from standins_qt import (
    QAbstractButton,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QObject,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTextEdit,
    QVBoxLayout,
    QWidget,
    Signal,
    _SpinBase,
)


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


