"""The Validation section of the VoxMetric Train panel, driven without importing Qt or Slicer.

After a training run the module file calls :meth:`ReviewSection.show` with the installed model:
the card's per-case validation metrics become a table node shown in the section, with a one-line
summary. "Review validation cases" starts a :class:`~VoxMetricTrainLib.review.Reviewer` (each
case segmented by the new model in a child process, one at a time) that the section's timer
polls; Cancel stops it. The module file hands in the widgets, a timer, the error-dialog context
manager and callables for the scene, the training logic and the device.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from voxmetric import models

from . import review


class ReviewSection:
    """``engine()``: the panel's TrainLogic (its finished run: ``run_dir``, ``case_pairs``,
    ``python``/``extra_env`` for child processes); ``scene()``; ``device()``: the device picked in
    the panel; ``errors(text)``: shows an exception in a dialog headed ``text`` and re-raises it;
    ``changed()``: called after each action (the panel refreshes)."""

    def __init__(self, ui: Any, timer: Any, engine: Callable[[], Any], scene: Callable[[], Any],
                 device: Callable[[], str], errors: Callable[[str], AbstractContextManager[Any]],
                 changed: Callable[[], None]) -> None:
        self.ui, self.timer = ui, timer
        self._engine, self._scene, self._device, self._errors, self._changed = engine, scene, device, errors, changed
        self.info: models.ModelInfo | None = None
        self.table: Any = None
        self.reviewer: review.Reviewer | None = None
        timer.setInterval(250)
        timer.timeout.connect(self.poll)
        ui.reviewButton.clicked.connect(self.start)

    @property
    def running(self) -> bool:
        return self.reviewer is not None and self.reviewer.running

    def show(self, info: models.ModelInfo) -> None:
        """The finished model's per-case validation table and summary, shown in the section."""
        card = models.read_card(info.path)
        engine = self._engine()
        settings = review.run_settings(engine.run_dir)
        self.info = info
        self.table = review.validation_table(self._scene(), card, review.case_images(engine.case_pairs, settings))
        self.ui.validationTableView.setMRMLTableNode(self.table)
        self.ui.validationLabel.text = review.validation_summary(card)
        self.ui.reviewStatusLabel.text = ""
        self._changed()

    def refresh(self, busy: bool) -> None:
        """Review needs a finished model with validation cases and nothing else running."""
        self.ui.reviewButton.enabled = self.table is not None and not busy and not self.running

    def start(self) -> None:
        """Review validation cases: segment each with the new model, next to its reference."""
        engine = self._engine()
        try:
            with self._errors("Could not start the review."):
                if self.info is None:
                    return
                self.reviewer = review.for_model(self.info, engine.run_dir, self._scene(), engine.case_pairs,
                                                 python=engine.python, env=engine.extra_env, device=self._device())
                self.ui.reviewStatusLabel.text = f"Reviewing {self.reviewer.total} validation case(s)…"
                self.timer.start()
        finally:
            self._changed()

    def poll(self) -> None:
        """Timer tick: one step of the review (loading a case, starting or following its
        segmentation); an error stops the review and goes to a dialog."""
        reviewer = self.reviewer
        try:
            with self._errors("The review stopped."):
                if reviewer is not None:
                    self.ui.reviewStatusLabel.text = reviewer.step()
        finally:
            if reviewer is None or not reviewer.running:
                self.timer.stop()
            self._changed()

    def cancel(self) -> None:
        """Cancel (or module closed): stop the review and its child process."""
        if self.reviewer is not None and self.reviewer.running:
            self.reviewer.cancel()
            self.ui.reviewStatusLabel.text = "Review cancelled."
        self.timer.stop()

    def forget(self) -> None:
        """The scene is closing: its nodes (the table, the cases) go with it."""
        self.cancel()
        self.info = self.table = self.reviewer = None
        self.ui.validationTableView.setMRMLTableNode(None)
        self.ui.validationLabel.text = self.ui.reviewStatusLabel.text = ""
