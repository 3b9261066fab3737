"""What the VoxMetric Train panel shows, decided without Qt (tested by pytest): the method list
with tooltips, which widgets are enabled or visible."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def widgets(busy: bool, from_scene: bool, resumable: bool, unlabeled_source: str = "none") -> Widgets:
    """One run at a time: Train and Resume only when idle (Resume when the model name has an
    interrupted run), Cancel only while busy; the case table for scene cases, the path for
    folder cases; the unlabeled volumes' table or path as ``unlabeled_source`` (none, scene,
    folder) says."""
    enabled = {"trainButton": not busy, "resumeButton": not busy and resumable, "cancelButton": busy}
    visible = {**{n: from_scene for n in SCENE_WIDGETS}, **{n: not from_scene for n in FOLDER_WIDGETS},
               **{n: unlabeled_source == "scene" for n in UNLABELED_SCENE_WIDGETS},
               **{n: unlabeled_source == "folder" for n in UNLABELED_FOLDER_WIDGETS}}
    return Widgets(enabled, visible)


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
