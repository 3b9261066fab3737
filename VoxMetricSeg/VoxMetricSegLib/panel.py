"""What the VoxMetric Prostate panel shows, decided without Qt (tested by pytest).

The widget only copies these results into its widgets: the model list and which model will
run (and why), the demo warning, which buttons are enabled, and the status and progress texts.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxmetric.errors import VoxMetricError
from voxmetric.models import ModelInfo, PipelineInfo

#: The model combo box's first entry: the default pipeline for the scan's modality.
DEFAULT_MODEL = ""
#: At most this many voxels are looked at to guess the modality (a strided view, no copy).
MODALITY_SAMPLE = 1 << 20


class ItemDataConnector:
    """A parameterNodeWrapper GUI connector's body for a combo box whose items carry the values as
    item data, so its choices can change: the module mixes it into Slicer's
    ``GuiConnector`` (this file imports no Qt). Both panels use it: the model combo box here (first
    entry :data:`DEFAULT_MODEL`) and VoxMetric Train's Start from (first entry: scratch, also "").
    Reads "" from an empty combo box, and selects the first entry for a value it lacks."""

    changed: Any  # GuiConnector's: tells the parameter node wrapper (an annotation: not set here)

    def __init__(self, widget: Any) -> None:
        super().__init__()
        self._widget = widget

    # Slicer's GuiConnector declares these abstract too; this connector is passed to
    # connectParametersToGui by hand, never picked for a widget type
    @staticmethod
    def canRepresent(widget: Any, datatype: Any) -> bool:
        return False

    @staticmethod
    def create(widget: Any, datatype: Any) -> None:
        return None

    def _connect(self) -> None:
        self._widget.currentIndexChanged.connect(self.changed)

    def _disconnect(self) -> None:
        self._widget.currentIndexChanged.disconnect(self.changed)

    def widget(self) -> Any:
        return self._widget

    def read(self) -> str:
        return self._widget.currentData or DEFAULT_MODEL

    def write(self, value: str) -> None:
        self._widget.currentIndex = max(self._widget.findData(value), 0)


class Refused(VoxMetricError):
    """A button press that cannot be honoured now (a job runs; the user declined an install)."""


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model combo box: the text shown and the value stored (a pipeline or
    refiner name; "" = the default pipeline for the modality)."""

    label: str
    value: str
    tooltip: str = ""


@dataclass(frozen=True)
class Registry:
    """What is installed: model cards and pipeline files (``error``: why the list is empty,
    e.g. the Python dependencies are not installed yet)."""

    models: tuple[ModelInfo, ...] = ()
    pipelines: tuple[PipelineInfo, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class ModelPlan:
    """Which models a press of Segment would run, and why (``text``); ``runnable`` False when
    nothing suitable is installed; ``demo`` True when a demo model is among them."""

    text: str
    runnable: bool
    demo: bool = False
    localizer: str | None = None
    refiner: str | None = None


@dataclass(frozen=True)
class Buttons:
    """Enabled state of each button (names as in the .ui file)."""

    localizeButton: bool
    refineButton: bool
    segmentButton: bool
    cancelButton: bool
    show3DButton: bool

    def items(self) -> list[tuple[str, bool]]:
        return list(vars(self).items())


def read_registry() -> Registry:
    """Installed models and pipelines; a Registry with ``error`` set when the engine's
    dependencies (e.g. jsonschema) are missing: they are installed on the first button press."""
    try:
        from voxmetric.models import list_models, list_pipelines

        return Registry(tuple(list_models()), tuple(list_pipelines()))
    except ImportError as e:
        return Registry(error=f"Python dependencies are installed when you first press a button ({e.name} is missing).")


def _model_label(m: ModelInfo) -> str:
    return f"{m.name} ({m.modality.upper()}, {m.method})" + ("  [demo]" if m.demo else "")


def model_choices(registry: Registry) -> list[ModelChoice]:
    """The default pipeline first, then the named pipelines, then every refiner / joint model
    (CT, MR and 'any' alike: the plan says which fits the scan)."""
    out = [ModelChoice("Default pipeline for the scan's modality", DEFAULT_MODEL,
                       "The first localizer and refiner installed for CT or MR (bundled first).")]
    for p in registry.pipelines:
        out.append(ModelChoice(f"pipeline {p.name}: {p.localizer} → {p.refiner}", p.name, str(p.path)))
    for m in registry.models:
        if m.role in ("refiner", "joint"):
            out.append(ModelChoice(_model_label(m), m.name, m.description or str(m.path)))
    return out


def guess_modality(array: np.ndarray) -> str:
    """'ct' when the intensities look like Hounsfield units, else 'mr', from a strided view of
    at most :data:`MODALITY_SAMPLE` voxels (no copy of the scan)."""
    from voxmetric.intensity import looks_like_ct

    a = np.asarray(array)
    step = max(1, int(np.ceil((a.size / MODALITY_SAMPLE) ** (1 / 3))))
    return "ct" if looks_like_ct(a[::step, ::step, ::step]) else "mr"


def _first(models: Sequence[ModelInfo], role: str, modality: str) -> ModelInfo | None:
    """The registry's default for ``role``: bundled before installed, the exact modality
    before 'any', a joint model fills either slot (as voxmetric.models.resolve_pipeline)."""
    eligible = [m for m in models if m.role in (role, "joint")]
    for wanted in (modality, "any"):
        for m in eligible:
            if m.modality == wanted:
                return m
    return None


def _origin(m: ModelInfo) -> str:
    return "bundled" if m.bundled else "installed"


def _fits(m: ModelInfo, modality: str) -> bool:
    return m.modality in (modality, "any")


def model_plan(selected: str, modality: str | None, registry: Registry, why: str = "") -> ModelPlan:
    """Which models will run for ``selected`` (a combo value) on a ``modality`` ("ct" / "mr";
    None: no input volume yet) scan; ``why`` says how the modality was chosen."""
    if registry.error:
        return ModelPlan(registry.error, runnable=True)
    if modality is None:
        return ModelPlan("Pick an input volume (a CT or MR scan of the pelvis).", runnable=False)
    mod = modality.upper()
    because = f" ({mod}: {why})" if why else ""
    by_name = {m.name: m for m in registry.models}
    pipeline = next((p for p in registry.pipelines if p.name == selected), None) if selected else None
    if pipeline is not None:
        loc, ref = by_name.get(pipeline.localizer), by_name.get(pipeline.refiner)
        missing = [n for n, m in ((pipeline.localizer, loc), (pipeline.refiner, ref)) if m is None]
        if missing or loc is None or ref is None:
            return ModelPlan(f"Pipeline {pipeline.name} names {', '.join(missing)}, which is not installed: install it "
                             "or pick another model.", runnable=False)
        wrong = [m.name for m in (loc, ref) if not _fits(m, modality)]
        if wrong:
            return ModelPlan(f"Pipeline {pipeline.name} is for {loc.modality.upper()} scans but this scan is {mod}"
                             f"{because}: pick an {mod} model or set the modality.", runnable=False)
        return ModelPlan(f"Pipeline {pipeline.name}: {loc.name} → {ref.name}{because}.", True, loc.demo or ref.demo,
                         loc.name, ref.name)
    if selected:
        ref = by_name.get(selected)
        if ref is None:
            return ModelPlan(f"The model {selected} is no longer installed; pick another one.", runnable=False)
        if not _fits(ref, modality):
            return ModelPlan(f"{ref.name} is a {ref.modality.upper()} model but this scan is {mod}{because}: pick an "
                             f"{mod} model or set the modality.", runnable=False)
        loc = _first(registry.models, "localizer", modality)
        if loc is None:
            return ModelPlan(f"No {mod} localizer is installed to place the ROI for {ref.name}: train one (method "
                             "Localizer) in VoxMetric Train or install a package.", runnable=False)
        return ModelPlan(f"{loc.name} → {ref.name} ({_origin(ref)}; default {mod} localizer){because}.", True,
                         loc.demo or ref.demo, loc.name, ref.name)
    loc, ref = _first(registry.models, "localizer", modality), _first(registry.models, "refiner", modality)
    if loc is None or ref is None:
        return ModelPlan(f"No {mod} model installed{because}: train one in VoxMetric Train or install a package "
                         "(voxmetric models install PATH).", runnable=False)
    origin = "bundled" if loc.bundled and ref.bundled else ("installed" if not (loc.bundled or ref.bundled)
                                                            else f"{_origin(loc)} + {_origin(ref)}")
    return ModelPlan(f"Default {mod} pipeline: {loc.name} → {ref.name} ({origin}){because}.", True,
                     loc.demo or ref.demo, loc.name, ref.name)


def buttons(has_input: bool, has_roi: bool, has_segmentation: bool, busy: bool, runnable: bool) -> Buttons:
    """Which buttons may be pressed: one job at a time; Refine needs an ROI; Show 3D needs a
    segmentation."""
    go = has_input and runnable and not busy
    return Buttons(localizeButton=go, refineButton=go and has_roi, segmentButton=go, cancelButton=busy,
                   show3DButton=has_segmentation and not busy)


def progress_of(event: Mapping[str, Any]) -> tuple[int, str] | None:
    """(percent, message) for a progress-bar update, or None for events that carry none."""
    if event.get("event") != "progress":
        return None
    total = max(int(event.get("total", 1)), 1)
    return int(100 * int(event.get("done", 0)) / total), str(event.get("message", ""))


def describe_timings(timings: Mapping[str, float]) -> str:
    """'localize 1.2 s · refine 3.4 s · total 4.6 s'"""
    return " · ".join(f"{k} {v:.1f} s" for k, v in timings.items())


def describe_result(verdict: str, timings: Mapping[str, float]) -> str:
    """The status line after a stage: the engine's QC verdict ("result: OK — Prostate 31.2 mL …" or
    "result: CHECK — …"; none after Localize alone) and the timings."""
    return " · ".join(t for t in (verdict, describe_timings(timings)) if t)


def expectation(device: str) -> str:
    """What to expect while a stage runs; torch is consulted only when already imported
    (importing it would freeze the GUI for seconds)."""
    if device.startswith("cuda"):
        return "Running on the GPU…"
    if device == "cpu":
        return "Running on the CPU: expect about 10–60 s per scan…"
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = bool(torch.cuda.is_available())
        return "Running on the GPU…" if cuda else "Running on the CPU (no GPU): expect about 10–60 s per scan…"
    return "Running (on the GPU when there is one; on a CPU expect about 10–60 s per scan)…"


@dataclass
class StatusLine:
    """The status label and progress bar after one event (None = leave as is)."""

    percent: int | None = None
    text: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def status_of(event: Mapping[str, Any]) -> StatusLine:
    """Status texts for the engine's events (progress, errors, the job's end)."""
    update = progress_of(event)
    if update is not None:
        return StatusLine(update[0], update[1])
    kind = event.get("event")
    if kind == "error":
        return StatusLine(None, str(event.get("message", "")))
    if kind == "exit":
        if event.get("timed_out") or event.get("cancelled"):
            return StatusLine(0, str(event.get("message") or "Cancelled."))
    return StatusLine()


def requirements_file() -> Path:
    """Resources/requirements.txt beside the engine (the packages installed at first use)."""
    import voxmetric

    return Path(voxmetric.__file__).resolve().parents[1] / "Resources" / "requirements.txt"
