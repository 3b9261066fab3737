"""Compare a result segment with a reference segment inside Slicer: the paper's metrics
(METHODS.md §1.1 — DSC, PPV, SEN, ASD, HD, HD95, both volumes) as rows of a table node.

Both segments are compared on one voxel grid: the chosen volume's, by default the reference
segmentation's reference-geometry volume (the image it was drawn on). A segment stored on another
grid is resampled onto it by Slicer (``mask_from_segment``, nearest neighbour), and the panel says
so. On the GUI thread only the masks are copied (each segment's own extent on that grid,
``crop=True``); :func:`compare` — the engine's :func:`voxmetric.metrics.evaluate_masks`, the same
numbers as ``voxmetric evaluate`` — runs in a worker thread (:class:`Evaluator`, polled by the
panel's timer). Empty segments follow the engine's documented policy; the table shows the
undefined distances as empty cells and says why in its "Note" column, never ∞. Nothing here
imports Qt; node access goes through :mod:`voxmetric.mrml`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxmetric import mrml
from voxmetric.errors import InputError, VoxMetricError
from voxmetric.metrics import evaluate_masks, union_grid, write_csv
from voxmetric.volume import Volume

from .panel import ModelChoice

#: (engine key, column title with unit, unit label) of every metric column, in table order.
METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("dsc", "DSC", ""), ("ppv", "PPV", ""), ("sen", "SEN", ""), ("asd", "ASD (mm)", "mm"), ("hd", "HD (mm)", "mm"),
    ("hd95", "HD95 (mm)", "mm"), ("vol_pred_ml", "Result volume (mL)", "mL"),
    ("vol_ref_ml", "Reference volume (mL)", "mL"))
TITLES: dict[str, str] = {k: t for k, t, _ in METRIC_COLUMNS}
#: The comparison table's text columns before and after the metrics.
LEADING, TRAILING = ("Result", "Reference"), ("Grid", "Note")
TABLE_NAME = "VoxMetric comparison"

EMPTY_NOTES = {  # the engine's empty-mask policy (voxmetric.metrics), in words
    (True, True): "both empty: they agree that nothing is there (DSC 1, distances 0)",
    (True, False): "empty result: DSC 0, distances undefined",
    (False, True): "empty reference: DSC 0, distances undefined",
}


# -- tables (shared with VoxMetric Train's validation table) ----------------------------------
def new_table(scene: Any, name: str, leading: Sequence[str], keys: Sequence[str], trailing: Sequence[str] = ()) -> Any:
    """A table node with text columns ``leading``, the metric columns of ``keys`` (titles with
    units, :data:`METRIC_COLUMNS`) and text columns ``trailing``; no rows."""
    units = {t: u for k, t, u in METRIC_COLUMNS if k in keys and u}
    columns = [(c, "text") for c in leading] + [(TITLES[k], "number") for k in keys] + [(c, "text") for c in trailing]
    return mrml.results_table(scene, name, columns, units)


def metric_cells(metrics: Mapping[str, Any], keys: Sequence[str]) -> dict[str, float | None]:
    """{column title: value} of ``keys``; an infinite or missing value (an undefined distance)
    becomes None, an empty cell."""
    out: dict[str, float | None] = {}
    for k in keys:
        v = metrics.get(k)
        out[TITLES[k]] = float(v) if v is not None and math.isfinite(float(v)) else None
    return out


def export_csv(table_node: Any, path: str | Path) -> Path:
    """Write the table node as CSV through the engine's atomic writer (``.csv`` added when the
    name has no suffix); empty cells stay empty. Returns the path written."""
    if table_node is None:
        raise InputError("There is no comparison table yet: press Compare first.")
    p = Path(path).expanduser()
    if not p.suffix:
        p = p.with_suffix(".csv")
    header, rows = mrml.read_table(table_node)
    return write_csv(p, header, rows)


# -- what the panel shows ---------------------------------------------------------------------
def segment_names(seg_node: Any) -> list[str]:
    """The segments of a segmentation node, in display order ([] for None)."""
    if seg_node is None:
        return []
    seg = seg_node.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def segment_choices(seg_node: Any) -> list[ModelChoice]:
    """A segment combo box's entries: every segment of the node (label = value = its name)."""
    return [ModelChoice(n, n, f"segment '{n}' of '{seg_node.GetName()}'") for n in segment_names(seg_node)]


def csv_name(table_node: Any) -> str:
    """The file name the CSV export proposes: the table's name."""
    return f"{table_node.GetName() if table_node is not None else TABLE_NAME}.csv"


def voxel_size(volume: Volume) -> str:
    """"0.8 × 0.8 × 2.5 mm": a grid's voxel size (x × y × z)."""
    return " × ".join(f"{float(v):.3g}" for v in volume.spacing) + " mm"


def grid_label(volume: Volume, name: str) -> str:
    """"'CT 1' (0.8 × 0.8 × 2.5 mm)": a grid by its volume's name and voxel size."""
    return f"'{name}' ({voxel_size(volume)})"


def same_lattice(a: Volume, b: Volume) -> bool:
    """True when ``a``'s voxels are voxels of ``b``'s grid (same spacing and axes, origins a
    whole number of voxels apart): no resampling is needed to compare them."""
    if not (np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-4) and np.allclose(a.direction, b.direction, atol=1e-4)):
        return False
    off = b.physical_to_index(a.origin)
    return bool(np.allclose(off, np.round(off), atol=1e-2))


@dataclass(frozen=True)
class Plan:
    """Whether Compare can run (``reason`` why not), the grid text the panel shows, the volume
    whose grid is used and which segments get resampled onto it."""

    runnable: bool
    reason: str = ""
    grid_text: str = ""
    volume_node: Any = None
    resampled: tuple[str, ...] = ()


def plan(result_node: Any, result_segment: str, reference_node: Any, reference_segment: str,
         volume_node: Any = None, busy: bool = False) -> Plan:
    """What pressing Compare would do. ``volume_node`` None: the reference segmentation's
    reference-geometry volume."""
    inputs = (("result", result_node, result_segment, "the model's output"),
              ("reference", reference_node, reference_segment, "the ground truth or a colleague's contour"))
    for role, node, segment, example in inputs:
        if node is None:
            return Plan(False, f"Pick the {role} segmentation ({example}).")
        if not segment:
            return Plan(False, f"'{node.GetName()}' has no segments: pick a {role} segmentation that holds one.")
        if segment.casefold() not in (n.casefold() for n in segment_names(node)):
            return Plan(False, f"'{node.GetName()}' has no segment '{segment}': pick one of its segments.")
    if result_node is reference_node and result_segment.casefold() == reference_segment.casefold():
        return Plan(False, "The result and the reference are the same segment: pick two different segments.")
    chosen = volume_node is not None
    if not chosen:
        volume_node = reference_node.GetNodeReference(reference_node.GetReferenceImageGeometryReferenceRole())
        if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
            return Plan(False, f"The reference '{reference_node.GetName()}' names no volume it was drawn on, so its "
                               "grid is unknown: pick the volume to compare on (Compare on).")
    try:
        grid = mrml.geometry_from_node(volume_node)
        own = [mrml.segment_grid(node, segment) for _, node, segment, _ in inputs]
    except VoxMetricError as e:
        return Plan(False, str(e))
    text = f"Compared on the grid of {grid_label(grid, volume_node.GetName())}" + \
        ("." if chosen else ", the reference's volume.")
    resampled = []
    for (role, _, _, _), g in zip(inputs, own):
        if g is None or not same_lattice(g, grid):
            resampled.append(role)
            where = f" ({voxel_size(g)})" if g is not None else ""
            text += f" The {role} is stored on another grid{where} and is resampled onto it (nearest neighbour)."
    if busy:
        return Plan(False, "A comparison is running; wait for it.", text, volume_node, tuple(resampled))
    return Plan(True, "", text, volume_node, tuple(resampled))


# -- the comparison ---------------------------------------------------------------------------
@dataclass
class Snapshot:
    """The two masks copied on the GUI thread, each cropped to its extent on the comparison grid
    (the worker pastes them onto one grid), with the labels the table shows."""

    result: Volume
    reference: Volume
    result_label: str
    reference_label: str
    grid: str
    resampled: tuple[str, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """One comparison: the engine's metrics (:data:`voxmetric.metrics.METRIC_KEYS`), the labels
    and a note in words (empty masks, resampling); ``seconds`` spent in the worker."""

    result: str
    reference: str
    grid: str
    metrics: dict[str, float]
    note: str = ""
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        """The table row: text columns and metric cells (undefined distances empty)."""
        return {"Result": self.result, "Reference": self.reference,
                **metric_cells(self.metrics, [k for k, _, _ in METRIC_COLUMNS]), "Grid": self.grid, "Note": self.note}

    @property
    def summary(self) -> str:
        """The status line: the headline numbers, or the note when distances are undefined."""
        m = self.metrics
        if not all(math.isfinite(m[k]) for k in ("asd", "hd95")):
            return f"{self.result} vs {self.reference}: {self.note}."
        return (f"{self.result} vs {self.reference}: DSC {m['dsc']:.3f} · HD95 {m['hd95']:.2f} mm · ASD "
                f"{m['asd']:.2f} mm · {m['vol_pred_ml']:.1f} / {m['vol_ref_ml']:.1f} mL")


def snapshot(result_node: Any, result_segment: str, reference_node: Any, reference_segment: str,
             volume_node: Any = None) -> Snapshot:
    """GUI-thread part: check the inputs (:func:`plan`; InputError with its reason) and copy both
    masks on the comparison grid."""
    p = plan(result_node, result_segment, reference_node, reference_segment, volume_node)
    if not p.runnable:
        raise InputError(p.reason)
    grid = mrml.geometry_from_node(p.volume_node)
    result = mrml.mask_from_segment(result_node, result_segment, p.volume_node, crop=True)
    reference = mrml.mask_from_segment(reference_node, reference_segment, p.volume_node, crop=True)
    label = grid_label(grid, p.volume_node.GetName()).replace("'", "")
    if p.resampled:
        label += "; " + " and ".join(p.resampled) + " resampled"
    return Snapshot(result, reference, f"{result_node.GetName()}: {result_segment}",
                    f"{reference_node.GetName()}: {reference_segment}", label, p.resampled)


def compare(snap: Snapshot) -> Comparison:
    """Worker part: both masks on one grid, then :func:`voxmetric.metrics.evaluate_masks`."""
    t0 = time.perf_counter()
    result, reference = union_grid(snap.result, snap.reference, "result and reference masks")
    metrics = evaluate_masks(result, reference)
    note = EMPTY_NOTES.get((metrics["vol_pred_ml"] == 0, metrics["vol_ref_ml"] == 0), "")
    return Comparison(snap.result_label, snap.reference_label, snap.grid, metrics, note, time.perf_counter() - t0)


def record(scene: Any, table_node: Any, comparison: Comparison) -> Any:
    """Append the comparison as a row of ``table_node`` (None, or a table of another scene: a new
    "VoxMetric comparison" table). Returns the table node."""
    if table_node is None or table_node.GetScene() is not scene:
        table_node = new_table(scene, scene.GenerateUniqueName(TABLE_NAME), LEADING,
                               [k for k, _, _ in METRIC_COLUMNS], TRAILING)
    mrml.add_table_row(table_node, comparison.row())
    return table_node


class Evaluator:
    """Runs one comparison at a time in a worker thread: :meth:`start` (GUI thread: the
    snapshot), then poll :meth:`result` from a timer."""

    def __init__(self) -> None:
        self._future: Future[Comparison] | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def busy(self) -> bool:
        return self._future is not None and not self._future.done()

    def start(self, result_node: Any, result_segment: str, reference_node: Any, reference_segment: str,
              volume_node: Any = None) -> None:
        if self.busy:
            raise VoxMetricError("A comparison is running; wait for it, then compare again.")
        snap = snapshot(result_node, result_segment, reference_node, reference_segment, volume_node)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxmetric-evaluate")
        self._future = self._pool.submit(compare, snap)

    def result(self) -> Comparison | None:
        """The finished comparison (once), None while it runs or when none was started; the
        worker's exception is raised here."""
        future = self._future
        if future is None or not future.done():
            return None
        self._future = None
        return future.result()

    def run(self, *args: Any, **kw: Any) -> Comparison:
        """:meth:`start` and wait (scripts and tests)."""
        self.start(*args, **kw)
        assert self._future is not None
        self._future.result()
        out = self.result()
        assert out is not None
        return out

    def cancel(self) -> None:
        """Forget a running comparison (its thread finishes on its own; the result is dropped)."""
        if self._future is not None:
            self._future.cancel()
        self._future = None
