"""The Evaluate section of the VoxMetric Prostate panel, driven without importing Qt or Slicer.

The module file hands in the section's widgets (``ui``, built from the .ui file), a timer, the
error-dialog context manager (``slicer.util.tryWithErrorDisplay``) and the save-file question;
this class fills the segment combo boxes, copies :func:`evaluate.plan`'s texts into the widgets,
starts a comparison (masks copied on the GUI thread, metrics in the evaluator's worker thread),
polls it from the timer, appends the result to the table node the panel shows and exports it as
CSV. pytest drives it through the module file with stand-in widgets (test_evaluate_widget.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from . import evaluate
from .panel import ModelChoice

#: Qt's ToolTipRole (the item data role of a combo box entry's tooltip).
TOOLTIP_ROLE = 3


def fill(combo: Any, choices: Sequence[ModelChoice]) -> None:
    """Put ``choices`` into a combo box (its items carry the values as item data, the tooltips
    under :data:`TOOLTIP_ROLE`) unless it holds them already, keeping the current value when it
    is still there (else the first entry)."""
    have = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count)]
    if have == [(c.label, c.value) for c in choices]:
        return
    was = combo.currentData
    combo.clear()
    for i, choice in enumerate(choices):
        combo.addItem(choice.label, choice.value)
        combo.setItemData(i, choice.tooltip, TOOLTIP_ROLE)
    combo.currentIndex = max(combo.findData(was), 0)


class EvaluateSection:
    """Compare a result segment with a reference segment from the panel.

    ``parameters()``: the module's parameter node wrapper (fields ``resultSegmentation``,
    ``resultSegment``, ``referenceSegmentation``, ``referenceSegment``, ``compareVolume``,
    ``metricsTable``) or None; ``scene()``: the MRML scene; ``errors(text)``: a context manager that
    shows an exception in a dialog headed ``text`` and re-raises it; ``ask_path(name)``: the CSV
    path the user picks ("" when cancelled); ``changed()``: called after each action (the panel
    refreshes). The timer's ``timeout`` is connected to :meth:`poll`."""

    def __init__(self, ui: Any, evaluator: evaluate.Evaluator, timer: Any, parameters: Callable[[], Any],
                 scene: Callable[[], Any], errors: Callable[[str], AbstractContextManager[Any]],
                 ask_path: Callable[[str], str], changed: Callable[[], None]) -> None:
        self.ui, self.evaluator, self.timer = ui, evaluator, timer
        self._parameters, self._scene, self._errors, self._ask_path, self._changed = \
            parameters, scene, errors, ask_path, changed
        timer.setInterval(100)
        timer.timeout.connect(self.poll)
        ui.evaluateButton.clicked.connect(self.start)
        ui.exportCsvButton.clicked.connect(self.export)

    def refresh(self) -> None:
        """Copy the current state to the widgets (the panel's refresh calls this). Refilling a
        segment combo box passes its parameter through "": the caller batches the parameter
        node's Modified events (``slicer.util.NodeModify``)."""
        p = self._parameters()
        if p is None:
            return
        for combo, node, name in ((self.ui.resultSegmentComboBox, p.resultSegmentation, "resultSegment"),
                                  (self.ui.referenceSegmentComboBox, p.referenceSegmentation, "referenceSegment")):
            fill(combo, evaluate.segment_choices(node))
            if (combo.currentData or "") != getattr(p, name):  # e.g. a name that is gone: the combo's shows
                setattr(p, name, combo.currentData or "")
        plan = evaluate.plan(p.resultSegmentation, p.resultSegment, p.referenceSegmentation, p.referenceSegment,
                             p.compareVolume, self.evaluator.busy)
        self.ui.evaluateGridLabel.text = plan.grid_text or plan.reason
        self.ui.evaluateButton.enabled = plan.runnable
        self.ui.evaluateButton.toolTip = plan.reason or plan.grid_text
        self.ui.exportCsvButton.enabled = p.metricsTable is not None
        if self.ui.metricsTableView.mrmlTableNode() is not p.metricsTable:
            self.ui.metricsTableView.setMRMLTableNode(p.metricsTable)

    def start(self) -> None:
        """Compare: copy both masks (GUI thread), start the worker and the timer."""
        p = self._parameters()
        try:
            with self._errors("Could not compare the segments."):
                if p is None:
                    return
                self.evaluator.start(p.resultSegmentation, p.resultSegment, p.referenceSegmentation,
                                     p.referenceSegment, p.compareVolume)
                self.ui.evaluateStatusLabel.text = "Comparing…"
                self.timer.start()
        finally:
            self._changed()

    def poll(self) -> None:
        """Timer tick: once the worker is done, append its row to the table (a new table node the
        first time) and show the headline numbers; the worker's error goes to a dialog."""
        if self.evaluator.busy:
            return
        self.timer.stop()
        try:
            with self._errors("The comparison failed."):
                p, done = self._parameters(), self.evaluator.result()
                if done is not None and p is not None:
                    p.metricsTable = evaluate.record(self._scene(), p.metricsTable, done)
                    self.ui.evaluateStatusLabel.text = done.summary
        finally:
            self._changed()

    def export(self) -> None:
        """Export CSV: ask for a path, write the table there (atomically)."""
        p = self._parameters()
        table = p.metricsTable if p is not None else None
        path = self._ask_path(evaluate.csv_name(table))
        with self._errors("Could not write the CSV file."):
            if path:  # "": the question was cancelled
                self.ui.evaluateStatusLabel.text = f"Wrote {evaluate.export_csv(table, path)}"

    def cancel(self) -> None:
        """Module or scene closed: stop polling and drop a running comparison."""
        self.timer.stop()
        self.evaluator.cancel()
