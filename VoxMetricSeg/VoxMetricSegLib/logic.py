"""VoxMetricSeg logic: MRML nodes → engine child process → MRML nodes.

The engine runs as ``python -m voxmetric segment … --events-jsonl`` in its own process
(:class:`voxmetric.jobs.Job`), so the GUI stays responsive and Cancel kills the whole process
tree. On the caller's (GUI) thread only the MRML reads and writes happen: a numpy snapshot of the
input volume at :meth:`SegmentLogic.start`, and the node updates from an already cropped mask
at :meth:`SegmentLogic.finish`. Writing the child's input and reading its result run in the
job's worker thread; the temporary folder (a copy of the patient's scan) is deleted when the
job ends, fails, is cancelled or times out, and at exit. One stage runs at a time. All node
conversions go through :mod:`voxmetric.mrml`; nothing here imports Qt.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxmetric import mrml
from voxmetric.errors import VoxMetricError
from voxmetric.io import read_label_map, read_segmentation, read_volume, write_volume
from voxmetric.jobs import Emit, Job, remove_tree
from voxmetric.markups import read_roi, write_roi
from voxmetric.volume import Box, Volume

STAGES = ("localize", "refine", "segment")
#: A stage that runs longer than this is killed (seconds; CPU inference takes 10–60 s).
DEFAULT_TIMEOUT = 1800.0


class JobRunningError(VoxMetricError):
    """A second job was started while one runs."""


@dataclass
class StageResult:
    """What a finished stage produced (nodes are None when the stage did not make them)."""

    stage: str
    found: bool = True
    confidence: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    roi_node: Any = None
    segmentation_node: Any = None
    segment_ids: dict[str, str] = field(default_factory=dict)  # segment name → id, in class order
    message: str = ""  # stage 1 found nothing: where the box went and what to do
    verdict: str = ""  # the engine's QC line, "result: OK — …" or "result: CHECK — …"
    qc: dict[str, Any] = field(default_factory=dict)  # the engine's QC block (voxmetric.qc)
    warning: str = ""  # what to check (shown in a dialog): the engine's note on a found result, the QC reasons
    uncertainty_node: Any = None  # the uncertainty map's volume node, when asked for

    @property
    def segment_id(self) -> str | None:
        """The id of the first (or only, e.g. "Prostate") segment written."""
        return next(iter(self.segment_ids.values()), None)


@dataclass
class StageOutput:
    """What the worker thread read from the child's files: the ROI box and, per class of the
    model, its name and mask cropped to its extent on the input's grid."""

    box: Box | None = None
    masks: list[tuple[str, Volume]] = field(default_factory=list)
    uncertainty: Volume | None = None


def qc_warning(qc: dict[str, Any]) -> str:
    """The dialog text for a QC block whose verdict is CHECK ("" for OK or no block): the reasons,
    one per line, and what to do."""
    if not qc or qc.get("ok", True):
        return ""
    reasons = "\n".join(f"• {r}" for r in qc.get("reasons", []))
    return ("The result needs a check before it is used:\n" + reasons + "\n\nReview the segmentation (and the "
            "uncertainty map, if shown); move or enlarge the ROI box and press Refine, or correct it by hand.")


def uncertainty_range(volume: Volume) -> tuple[float, float]:
    """Display range of an uncertainty map: 0 to its 99.5th percentile inside the ROI (≥ 0.05)."""
    import numpy as np

    a = np.asarray(volume.array)
    inside = a[a > 0]
    return 0.0, max(0.05, float(np.percentile(inside, 99.5)) if inside.size else 0.05)


def read_result(path: str | Path, reference: Volume) -> list[tuple[str, Volume]]:
    """Every segment of a .seg.nrrd as (name, mask on ``reference``'s grid cropped to its extent,
    :func:`voxmetric.mrml.crop_to_mask`), in label order: what the GUI thread writes as segments."""
    names = tuple(read_segmentation(path).names)
    labels, names = read_label_map(path, names, reference=reference)
    return [(name, mrml.crop_to_mask(labels.with_array((labels.array == k).astype("uint8"))))
            for k, name in enumerate(names, 1)]


class SegmentLogic:
    """Runs Localize / Refine / Segment Prostate for one volume node, one stage at a time.

    ``python``: the interpreter for the child process (default: PythonSlicer inside Slicer,
    else this interpreter). ``env``: extra environment (e.g. ``VOXMETRIC_HOME``). ``timeout``:
    seconds after which a stage is killed (None: never).
    """

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.python = python
        self.env = dict(env or {})
        self.timeout = timeout
        self.workdir: Path | None = None
        self.job: Job | None = None
        self.stage: str | None = None

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    # -- starting a stage ------------------------------------------------------------------------
    def start(self, stage: str, volume_node: Any, roi_node: Any = None, model: str = "", device: str = "auto",
              modality: str = "auto", uncertainty: bool = False) -> Job:
        """Snapshot the inputs (GUI thread) and start ``stage`` (localize | refine | segment):
        a worker writes them for the child process, then the child runs. ``uncertainty``: also
        bring back the refiner's uncertainty map (refine, segment). JobRunningError while a stage
        runs."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        if self.busy:
            raise JobRunningError(f"{(self.stage or 'A stage').capitalize()} is still running: wait for it to finish "
                                  "or press Cancel, then start again.")
        if volume_node is None:
            raise VoxMetricError("Select an input volume first (a CT or MR scan of the pelvis).")
        if stage == "refine" and roi_node is None:
            raise VoxMetricError("Refine needs an ROI box: run Localize first or place an ROI.")
        box = mrml.box_from_roi(roi_node) if stage == "refine" else None
        snapshot: list[Volume] = [mrml.volume_from_node(volume_node)]  # numpy copy; the worker drops it
        grid = mrml.geometry_from_node(volume_node)
        self.cleanup()
        workdir = Path(tempfile.mkdtemp(prefix="voxmetric-"))
        image, seg_out, roi_out, roi_in, unc_out = (workdir / n for n in (
            "input.nrrd", "output.seg.nrrd", "roi.mrk.json", "roi-in.mrk.json", "uncertainty.nrrd"))
        uncertainty = uncertainty and stage in ("refine", "segment")
        args = ["segment", str(image), "-o", str(seg_out), "--stage", {"segment": "all"}.get(stage, stage),
                "--roi-out", str(roi_out), "--device", device, "--modality", modality.lower(), "--events-jsonl"]
        if model:
            args += ["--model", model]
        if box is not None:
            args += ["--roi-file", str(roi_in)]
        if uncertainty:
            args += ["--uncertainty-out", str(unc_out)]

        def prepare(emit: Emit) -> None:
            emit({"event": "progress", "done": 0, "total": 1, "message": "Writing the scan for the engine…"})
            write_volume(snapshot.pop(), image)
            if box is not None:
                write_roi(box, roi_in)

        def collect(emit: Emit) -> StageOutput:
            emit({"event": "progress", "done": 1, "total": 1, "message": "Reading the result…"})
            out = StageOutput()
            if stage in ("localize", "segment") and roi_out.exists():
                out.box = read_roi(roi_out)
            if stage in ("refine", "segment"):
                out.masks = read_result(seg_out, grid)
            if uncertainty and unc_out.exists():
                out.uncertainty = read_volume(unc_out)
            return out

        self.workdir, self.stage = workdir, stage
        self.job = Job(args, python=self.python, env=self.env, timeout=self.timeout, prepare=prepare,
                       collect=collect, cleanup=lambda: remove_tree(workdir))
        return self.job

    # -- collecting the result ---------------------------------------------------------------------
    def finish(self, stage: str, events: list[dict[str, Any]], scene: Any, volume_node: Any, roi_node: Any = None,
               segmentation_node: Any = None, replace: bool = False, uncertainty_node: Any = None) -> StageResult:
        """Turn the finished job's result into nodes (GUI thread: node updates only): the ROI, the
        segments, the QC verdict and warning, and the uncertainty map as a volume node
        (``uncertainty_node`` reused) shown over the input in the slice views. Raises
        VoxMetricError with the engine's message when the job failed, timed out or was cancelled."""
        exit_event = next((e for e in reversed(events) if e.get("event") == "exit"), None)
        errors = [str(e.get("message", "")) for e in events if e.get("event") == "error"]
        if exit_event is None:
            raise VoxMetricError(f"{stage.capitalize()} has not finished yet.")
        if exit_event.get("cancelled"):
            raise VoxMetricError("Cancelled.")
        if exit_event.get("timed_out"):
            raise VoxMetricError(str(exit_event.get("message")))
        if exit_event.get("returncode") != 0:
            tail = (exit_event.get("stderr") or "").strip().splitlines()[-1:]
            detail = errors[-1] if errors else " ".join(tail) or str(exit_event.get("message", ""))
            raise VoxMetricError(f"{stage.capitalize()} failed: {detail}")
        done = next((e for e in reversed(events) if e.get("event") == "done"), {})
        result = StageResult(stage, found=bool(done.get("localized", done.get("found", True))),
                             confidence=done.get("confidence"), timings=dict(done.get("timings", {})),
                             verdict=str(done.get("verdict", "")), qc=dict(done.get("qc") or {}))
        if result.found:  # e.g. "Stage 1's most confident region … gave …; its region 2 … was used instead."
            result.warning = "\n\n".join(t for t in (str(done.get("message") or ""), qc_warning(result.qc)) if t)
        output = self.job.result if self.job is not None else None
        if not isinstance(output, StageOutput):
            raise VoxMetricError(f"{stage.capitalize()} left no result to read.")
        if output.box is not None:
            result.roi_node = mrml.roi_from_box(scene, output.box, "Prostate ROI", node=roi_node)
        for name, mask in output.masks:  # every class of the model, each a named, SNOMED-coded segment
            segmentation_node, sid = mrml.write_mask_segment(
                segmentation_node, mask, volume_node, name=name, replace=replace, scene=scene)
            result.segmentation_node, result.segment_ids[name] = segmentation_node, sid
        if output.uncertainty is not None:
            name = f"{volume_node.GetName()} uncertainty"
            result.uncertainty_node = mrml.node_from_volume(scene, output.uncertainty, name, node=uncertainty_node)
            mrml.show_overlay(scene, volume_node, result.uncertainty_node, 0.5, uncertainty_range(output.uncertainty))
        if not result.found:
            result.message = ("No prostate was found. The ROI box was placed at the centre of the "
                              "scan: move it over the prostate, then press Refine.")
        return result

    def run(self, stage: str, scene: Any, volume_node: Any, roi_node: Any = None, segmentation_node: Any = None,
            timeout: float | None = None, **kw: Any) -> StageResult:
        """Start a stage and wait for it (self-tests and scripts; the GUI polls instead)."""
        job = self.start(stage, volume_node, roi_node=roi_node, **kw)
        job.wait(timeout=timeout)
        events: list[dict[str, Any]] = []
        while not any(e.get("event") == "exit" for e in events):
            events += job.poll_events()
            time.sleep(0.02)
        return self.finish(stage, events, scene, volume_node, roi_node=roi_node,
                           segmentation_node=segmentation_node)

    def cancel(self, wait: float | None = None) -> None:
        """Kill the running stage, if any (its temporary folder is deleted with it); returns at
        once unless ``wait`` (seconds) is given: the exit event follows through the job."""
        if self.job is not None:
            self.job.cancel(wait=wait)

    def cleanup(self) -> None:
        """Cancel a running stage, wait for it, and delete the temporary folder (module or scene
        closed)."""
        self.cancel(wait=10.0)
        if self.job is not None:
            self.job.run_cleanup()
        remove_tree(self.workdir)
        self.workdir = None
