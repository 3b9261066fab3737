"""After training: the final model's per-case validation metrics as a table node, and a review of
the validation cases next to their references.

The table is the model card's ``validation.per_case`` (what :func:`voxmetric.training.validate`
measured with the final model: DSC, HD95 and ASD per case; a multi-class model also has a row per
class) in the same form as VoxMetric Prostate's comparison table (VoxMetricSegLib.evaluate: the
same column titles and units; undefined distances are empty cells with a note, never ∞).

The review (:class:`Reviewer`) segments each validation case with the new model through
VoxMetricSegLib's :class:`~VoxMetricSegLib.logic.SegmentLogic` — a child process per case, one at
a time, polled from the panel's timer — and loads the result next to the reference: scene cases
use the rows' own volume and segmentation nodes; folder cases (and scene cases whose nodes are
gone) are read from their files in a worker thread and added as nodes on the GUI thread. Each case
is refined inside its reference's box plus the validation margin (:data:`REVIEW_MARGIN_MM`, as
validation measured it), so no localizer is needed and what is shown is what the table scored.
Nothing here imports Qt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from VoxMetricSegLib import SegmentLogic, evaluate

from voxmetric import models, mrml
from voxmetric.cases import load_cases, split_segments
from voxmetric.errors import InputError, VoxMetricError
from voxmetric.volume import Box, Volume

#: The metrics the card holds per validation case, and the table's text columns.
VALIDATION_KEYS = ("dsc", "hd95", "asd")
LEADING, TRAILING = ("Case", "Image", "Segment"), ("Note",)
#: Margin (mm) around the reference's box, as validation uses (``TrainConfig.val_margin_mm``).
REVIEW_MARGIN_MM = 20.0
EMPTY_CASE = "empty result: DSC 0, distances undefined"
EMPTY_CLASS = "a class is empty in the result: distances undefined"


# -- the validation table ---------------------------------------------------------------------
def validation_rows(card: Mapping[str, Any], images: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per validation case of the card's ``validation.per_case`` (its class mean for a
    multi-class model, then one row per class): "Case", "Image" (``images[case id]``), "Segment",
    the metric cells and a "Note" for undefined distances."""
    classes = list(models.card_classes(card))
    rows = []
    for case in (card.get("validation") or {}).get("per_case") or []:
        cid = str(case.get("id", ""))
        image = (images or {}).get(cid, "")
        per_class = case.get("classes") or {}
        segment = f"{', '.join(per_class or classes)} (mean)" if per_class else (classes[0] if classes else "")
        rows.append(_row(cid, image, segment, case, EMPTY_CLASS if per_class else EMPTY_CASE))
        rows += [_row(cid, image, name, m, EMPTY_CASE) for name, m in per_class.items()]
    return rows


def _row(case: str, image: str, segment: str, metrics: Mapping[str, Any], why: str) -> dict[str, Any]:
    cells = evaluate.metric_cells(metrics, VALIDATION_KEYS)
    undefined = any(v is None for v in cells.values())
    return {"Case": case, "Image": image, "Segment": segment, **cells, "Note": why if undefined else ""}


def validation_summary(card: Mapping[str, Any]) -> str:
    """One line: the card's mean validation metrics, the best iteration, failed cases."""
    val = card.get("validation") or {}
    n = len(val.get("per_case") or [])
    if not n:
        return (f"'{card.get('name', 'the model')}' has no validation metrics: it was trained without validation "
                "cases (--val-cases 0), so there is nothing to review.")
    num = lambda k, d: "n/a" if val.get(k) is None else f"{float(val[k]):.{d}f}"  # noqa: E731
    failed = int(val.get("failed") or 0)
    return (f"Validation of '{card.get('name', '')}' (iteration {val.get('iteration')}) on {n} case(s): mean DSC "
            f"{num('dsc', 3)}, HD95 {num('hd95', 2)} mm, ASD {num('asd', 2)} mm"
            + (f"; {failed} case(s) with an empty result." if failed else "."))


def validation_table(scene: Any, card: Mapping[str, Any], images: Mapping[str, str] | None = None) -> Any:
    """A table node "<model> validation" holding :func:`validation_rows`; None when the card has
    no per-case validation."""
    rows = validation_rows(card, images)
    if not rows:
        return None
    table = evaluate.new_table(scene, scene.GenerateUniqueName(f"{card.get('name', 'model')} validation"), LEADING,
                               VALIDATION_KEYS, TRAILING)
    for row in rows:
        mrml.add_table_row(table, row)
    return table


# -- which cases, from where ------------------------------------------------------------------
@dataclass
class ReviewCase:
    """A validation case: the scene's nodes (scene cases) or its files (folder cases), and the
    reference segment names in class order (() = the label's only / first non-empty one)."""

    id: str
    segments: tuple[str, ...] = ()
    volume_node: Any = None
    segmentation_node: Any = None
    image: Path | None = None
    label: Path | None = None

    @property
    def name(self) -> str:
        """The scene volume's name, or the image file's name."""
        return self.volume_node.GetName() if self.volume_node is not None else Path(self.image or self.id).name


def review_cases(card: Mapping[str, Any], settings: Mapping[str, Any], scene: Any,
                 case_pairs: Mapping[str, Any] | None = None) -> list[ReviewCase]:
    """The card's validation cases: from ``case_pairs`` (case id → VoxMetricTrainLib.CasePair of
    the run's scene rows) while their nodes are still in ``scene``, else from the run's cases
    (``settings["cases"]``: the folder or manifest the run trained on, the scene rows' exported
    copies included). InputError when there are none or a case cannot be found."""
    val = card.get("validation") or {}
    ids = [str(c.get("id")) for c in val.get("per_case") or []] or \
        [str(i) for i in (card.get("training") or {}).get("val_case_ids") or []]
    if not ids:
        raise InputError(f"'{card.get('name', 'The model')}' has no validation cases to review (it was trained with "
                         "--val-cases 0); segment cases in VoxMetric Prostate and use its Evaluate section instead.")
    records: dict[str, Any] | None = None
    out = []
    for cid in ids:
        pair = (case_pairs or {}).get(cid)
        if pair is not None and all(n is not None and n.GetScene() is scene
                                    for n in (pair.volume_node, pair.segmentation_node)):
            out.append(ReviewCase(cid, split_segments(pair.segment), pair.volume_node, pair.segmentation_node))
            continue
        if records is None:
            source = str(settings.get("cases", ""))
            if not source or not Path(source).exists():
                raise InputError(f"The cases this model was trained on ({source or 'unknown'}) are not there any "
                                 "more, so its validation cases cannot be loaded for review.")
            records = {r.id: r for r in load_cases(source, settings.get("segment") or None)}
        rec = records.get(cid)
        if rec is None or rec.label is None:
            raise InputError(f"Validation case '{cid}' is no longer among the cases in {settings.get('cases')}.")
        out.append(ReviewCase(cid, rec.segments, image=Path(rec.image), label=Path(rec.label)))
    return out


def read_case(case: ReviewCase) -> tuple[Volume, list[tuple[str, Volume]]]:
    """Worker part of loading a folder case: the image, and each reference segment's mask on its
    grid cropped to the segment's extent (name as the file spells it)."""
    from voxmetric.io import read_label_map, read_volume

    assert case.image is not None and case.label is not None
    image = read_volume(case.image)
    labels, names = read_label_map(case.label, case.segments, reference=image)
    return image, [(n, mrml.crop_to_mask(labels.with_array((labels.array == k).astype(np.uint8))))
                   for k, n in enumerate(names, 1)]


def reference_box(grid: Volume, masks: Sequence[Volume], margin_mm: float = REVIEW_MARGIN_MM) -> Box:
    """The box (axes of ``grid``) around every voxel of ``masks`` (on ``grid``'s lattice, cropped
    or not) plus ``margin_mm``; InputError when they are all empty."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for m in masks:
        nz = np.argwhere(np.asarray(m.array) > 0)
        if nz.size:
            corners = np.array([nz.min(0), nz.max(0)], float)[:, ::-1]  # (x, y, z) in the mask
            idx = np.array([grid.physical_to_index(m.index_to_physical(c)) for c in corners])
            lo, hi = np.minimum(lo, idx.min(0)), np.maximum(hi, idx.max(0))
    if not np.all(np.isfinite(lo)):
        raise InputError("The reference segment is empty, so there is no box to refine in.")
    center = grid.index_to_physical((lo + hi) / 2)
    return Box(center, (hi - lo + 1) * grid.spacing + 2 * margin_mm, grid.direction)


# -- the review -------------------------------------------------------------------------------
@dataclass
class Reviewed:
    """One reviewed case: its volume, the reference and the model's result (segmentation nodes)."""

    case: str
    volume_node: Any
    reference_node: Any
    result_node: Any


@dataclass
class _Current:
    case: ReviewCase
    loading: Future[tuple[Volume, list[tuple[str, Volume]]]] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    roi_node: Any = None


class Reviewer:
    """Segments ``cases`` one at a time with ``model`` and loads each result next to its
    reference; call :meth:`step` from a timer until :attr:`running` is False. ``engine``: the
    VoxMetricSegLib SegmentLogic that runs the child processes."""

    def __init__(self, scene: Any, cases: Sequence[ReviewCase], model: str, engine: SegmentLogic | None = None,
                 device: str = "auto", modality: str = "auto", margin_mm: float = REVIEW_MARGIN_MM) -> None:
        self.scene, self.model, self.device, self.modality, self.margin_mm = scene, model, device, modality, margin_mm
        self.engine = engine or SegmentLogic()
        self.pending = list(cases)
        self.total = len(self.pending)
        self.reviewed: list[Reviewed] = []
        self.running = bool(self.pending)
        self._current: _Current | None = None
        self._pool: ThreadPoolExecutor | None = None

    def step(self) -> str:
        """Advance without blocking; returns the status text. VoxMetricError (the review stops)
        when a case cannot be loaded or its segmentation fails."""
        if not self.running:
            return self._done_text()
        try:
            return self._step()
        except Exception:
            self.cancel()
            raise

    def _step(self) -> str:
        cur = self._current
        if cur is None:
            if not self.pending:
                self.running = False
                return self._done_text()
            cur = self._current = _Current(self.pending.pop(0))
            if cur.case.volume_node is None:
                self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxmetric-review")
                cur.loading = self._pool.submit(read_case, cur.case)
        k = self.total - len(self.pending)
        if cur.loading is not None:
            if not cur.loading.done():
                return f"Loading validation case {k}/{self.total} ({cur.case.name})…"
            self._add_nodes(cur.case, *cur.loading.result())
            cur.loading = None
        if cur.roi_node is None:
            case = cur.case
            masks = [mrml.mask_from_segment(case.segmentation_node, n, case.volume_node, crop=True)
                     for n in case.segments or evaluate.segment_names(case.segmentation_node)[:1]]
            box = reference_box(mrml.geometry_from_node(case.volume_node), masks, self.margin_mm)
            cur.roi_node = mrml.roi_from_box(self.scene, box, self.scene.GenerateUniqueName(f"{case.id} review ROI"))
            cur.roi_node.SetDisplayVisibility(False)
            self.engine.start("refine", case.volume_node, roi_node=cur.roi_node, model=self.model, device=self.device,
                              modality=self.modality)
            return f"Segmenting validation case {k}/{self.total} ({case.name}) with {self.model}…"
        job = self.engine.job
        assert job is not None
        for event in job.poll_events():
            cur.events.append(event)
        if not any(e.get("event") == "exit" for e in cur.events):
            progress = next((e for e in reversed(cur.events) if e.get("event") == "progress"), {})
            return f"Segmenting validation case {k}/{self.total} ({cur.case.name}): {progress.get('message', '…')}"
        result = self.engine.finish("refine", cur.events, self.scene, cur.case.volume_node, roi_node=cur.roi_node)
        node = result.segmentation_node
        if node is not None:
            node.SetName(self.scene.GenerateUniqueName(f"{cur.case.id} {self.model}"))
        self.reviewed.append(Reviewed(cur.case.id, cur.case.volume_node, cur.case.segmentation_node, node))
        self._current = None
        return f"Segmented validation case {k}/{self.total} ({cur.case.name})."

    def _add_nodes(self, case: ReviewCase, image: Volume, masks: list[tuple[str, Volume]]) -> None:
        """GUI thread: a loaded folder case becomes a volume node and a reference segmentation
        node (shown as outlines, so the model's result can be seen through it)."""
        case.volume_node = mrml.node_from_volume(self.scene, image, self.scene.GenerateUniqueName(case.id))
        seg: Any = None
        for name, mask in masks:
            seg, _ = mrml.write_mask_segment(seg, mask, case.volume_node, name=name, scene=self.scene)
        if seg is None:
            raise VoxMetricError(f"The reference of case '{case.id}' holds no segment.")
        seg.SetName(self.scene.GenerateUniqueName(f"{case.id} reference"))
        seg.GetDisplayNode().SetVisibility2DFill(False)
        case.segmentation_node, case.segments = seg, tuple(n for n, _ in masks)

    def _done_text(self) -> str:
        return (f"Reviewed {len(self.reviewed)} validation case(s): each '{self.model}' result is in the scene next "
                "to its reference (same volume).")

    def cancel(self) -> None:
        """Stop: kill the running segmentation, drop the cases not reviewed yet."""
        self.running = False
        self.pending.clear()
        self.engine.cancel()
        if self._current is not None and self._current.loading is not None:
            self._current.loading.cancel()
        self._current = None


# -- the finished run -------------------------------------------------------------------------
def run_settings(run_dir: Path | None) -> dict[str, Any]:
    """The training run's ``run.json`` (method, cases, segment, …); {} when there is none."""
    path = Path(run_dir) / "run.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def for_model(info: models.ModelInfo, run_dir: Path | None, scene: Any, case_pairs: Mapping[str, Any] | None = None,
              python: str | None = None, env: Mapping[str, str] | None = None, device: str = "auto") -> Reviewer:
    """A :class:`Reviewer` of ``info``'s validation cases (its training run's ``run.json`` says
    where the cases came from). InputError for a localizer (review needs a model that segments)."""
    card = models.read_card(info.path)
    if card.get("role") not in ("refiner", "joint"):
        raise InputError(f"'{info.name}' is a {card.get('role')}: it places the ROI box, so there is no segmentation "
                         "to review; its validation numbers are in the table.")
    cases = review_cases(card, run_settings(run_dir), scene, case_pairs)
    modality = str(card.get("modality", "auto"))
    env = {"VOXMETRIC_HOME": str(models.models_home()), **(env or {})}  # the child finds the new model
    return Reviewer(scene, cases, info.name, SegmentLogic(python=python, env=env), device,
                    modality if modality in ("ct", "mr") else "auto")


def case_images(case_pairs: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> dict[str, str]:
    """Case id → the "Image" column: the scene volume's name for the run's scene rows, else the
    image file's name (from the run's cases, when they can be read)."""
    out: dict[str, str] = {}
    try:
        out = {r.id: Path(r.image).name for r in load_cases(str(settings["cases"]), settings.get("segment") or None)}
    except (KeyError, OSError, VoxMetricError):
        pass
    out.update({cid: p.volume_node.GetName() for cid, p in (case_pairs or {}).items() if p.volume_node is not None})
    return out
