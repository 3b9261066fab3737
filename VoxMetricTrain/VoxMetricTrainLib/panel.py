"""What the VoxMetric Train panel shows, decided without Qt (tested by pytest): the method list
with tooltips, the models a method can start from, which widgets are enabled or visible."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voxmetric.models import ModelInfo

#: The "Start from" value of training from random weights (a model name is never empty).
SCRATCH = ""
TOOLTIP_ROLE = 3  # Qt.ToolTipRole


@dataclass(frozen=True)
class Widgets:
    """Enabled (buttons) and visible (case source) state, by .ui name."""

    enabled: dict[str, bool]
    visible: dict[str, bool]


SCENE_WIDGETS = ("pairsTableWidget", "addPairButton", "addFromSceneButton", "removePairButton")
FOLDER_WIDGETS = ("casesPathLineEdit", "casesPathLabel")
UNLABELED_SCENE_WIDGETS = ("unlabeledTableWidget", "addUnlabeledButton", "addUnlabeledFromSceneButton",
                           "removeUnlabeledButton")
UNLABELED_FOLDER_WIDGETS = ("unlabeledPathLineEdit", "unlabeledPathLabel")


def widgets(busy: bool, from_scene: bool, resumable: bool, unlabeled_source: str = "none",
            start_from: str = SCRATCH) -> Widgets:
    """One run at a time: Train and Resume only when idle (Resume when the model name has an
    interrupted run), Cancel only while busy; Freeze encoder only when a model to start from is
    chosen; the case table for scene cases, the path for folder cases; the unlabeled volumes'
    table or path as ``unlabeled_source`` (none, scene, folder) says."""
    enabled = {"trainButton": not busy, "resumeButton": not busy and resumable, "cancelButton": busy,
               "freezeEncoderCheckBox": start_from != SCRATCH}
    visible = {**{n: from_scene for n in SCENE_WIDGETS}, **{n: not from_scene for n in FOLDER_WIDGETS},
               **{n: unlabeled_source == "scene" for n in UNLABELED_SCENE_WIDGETS},
               **{n: unlabeled_source == "folder" for n in UNLABELED_FOLDER_WIDGETS}}
    return Widgets(enabled, visible)


def case_rows(table: Any) -> list[Any]:
    """The (volume, segmentation, segment) rows of the case table (a QTableWidget whose first two
    columns hold node combo boxes) as :class:`VoxMetricTrainLib.CasePair`."""
    from .logic import CasePair

    return [CasePair(table.cellWidget(r, 0).currentNode(), table.cellWidget(r, 1).currentNode(),
                     table.item(r, 2).text() if table.item(r, 2) else "") for r in range(table.rowCount)]


def volume_rows(table: Any) -> list[Any]:
    """The volume nodes (None where unset) of the unlabeled volumes' table."""
    return [table.cellWidget(r, 0).currentNode() for r in range(table.rowCount)]


def missing_dependencies() -> list[str]:
    """Python packages the training process needs and does not find (VoxMetric Prostate, a
    dependency of this module, installs them)."""
    from VoxMetricSegLib import deps, panel as seg_panel

    return deps.missing(seg_panel.requirements_file())


def method_choices() -> list[tuple[str, str]]:
    """(name, tooltip "role: description") of every registered method, in registry order."""
    from voxmetric.methods import available_methods, get_method

    return [(n, f"{get_method(n).role}: {get_method(n).description}") for n in available_methods()]


def default_method(names: list[str]) -> str:
    """The paper's best configuration when registered, else the first method."""
    return "MetricUNet-HCP" if "MetricUNet-HCP" in names else names[0]


def remove_rows(table: Any) -> None:
    """Remove a QTableWidget's selected rows, or its last row when none is selected."""
    rows = sorted({i.row() for i in table.selectedIndexes()}, reverse=True)
    for row in rows or [table.rowCount - 1]:
        table.removeRow(row)


@dataclass(frozen=True)
class StartChoice:
    """One entry of the "Start from" combo box: its text, its value (a model name, or
    :data:`SCRATCH`) and its tooltip."""

    label: str
    value: str
    tooltip: str


def start_choices(method: str, available: Sequence[ModelInfo] | None = None) -> list[StartChoice]:
    """"scratch", then every bundled or installed package (``available``, default: the registry)
    that ``method`` can fine-tune (``voxmetric train --init-from``): its card's method is of
    ``method``'s family (the same method class: the same network for the same settings) and its
    settings read as ``method``'s (:func:`voxmetric.models.init_config`, the engine's check before
    it compares the weights). Reads cards only: no weights, no torch. Packages that cannot be read,
    or whose method this engine lacks, are left out; all of them while the engine's dependencies
    are not installed yet (VoxMetric Prostate installs them)."""
    from voxmetric import models
    from voxmetric.errors import VoxMetricError
    from voxmetric.methods import get_method

    m = get_method(method)
    out = [StartChoice("scratch", SCRATCH, "Random initial weights.")]
    try:
        for info in models.list_models() if available is None else available:
            try:
                card = models.read_card(info.path)
                if type(get_method(card["method"])) is not type(m):
                    continue
                models.init_config(card, m)
            except VoxMetricError:
                continue
            where = "bundled" if info.bundled else "installed"
            out.append(StartChoice(f"{info.name} ({info.method}, {info.modality}, {where})", info.name,
                                   f"{info.description or info.path}\nClasses: {', '.join(models.card_classes(card))}. "
                                   "Its settings become the method settings; train the same segments."))
    except ImportError as e:  # e.g. jsonschema, which checks the cards
        return [StartChoice("scratch", SCRATCH, "Random initial weights. Models to start from are listed once the "
                            f"Python dependencies are installed ({e.name} is missing).")]
    return out


def average_flags(average_from: float) -> list[str]:
    """``voxmetric train`` flags for "Mean weights from" (a fraction of the iterations; 0: keep the
    best validated weights instead)."""
    return ["--average-from", f"{average_from:g}"] if average_from > 0 else []


def fill(combo: Any, choices: Sequence[StartChoice], keep: str) -> None:
    """Put ``choices`` into a combo box (item data: the values) unless it holds them already, and
    select ``keep`` when it is among them (else the first entry)."""
    if [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count)] != [(c.label, c.value) for c in choices]:
        combo.clear()
        for i, choice in enumerate(choices):
            combo.addItem(choice.label, choice.value)
            combo.setItemData(i, choice.tooltip, TOOLTIP_ROLE)
    combo.currentIndex = max(combo.findData(keep), 0)
