"""VoxMetricSeg logic: MRML nodes → engine child process → MRML nodes.

The engine runs as ``python -m voxmetric segment … --events-jsonl`` in its own process
(:class:`voxmetric.jobs.Job`), so the GUI stays responsive and Cancel kills the whole process
tree. All node conversions go through :mod:`voxmetric.mrml`; nothing here imports Qt.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from voxmetric import mrml
from voxmetric.errors import VoxMetricError
from voxmetric.io import read_segment_mask, write_volume
from voxmetric.jobs import Job
from voxmetric.markups import read_roi, write_roi

STAGES = ("localize", "refine", "segment")


@dataclass
class StageResult:
    """What a finished stage produced (nodes are None when the stage did not make them)."""

    stage: str
    found: bool = True
    confidence: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    roi_node: object | None = None
    segmentation_node: object | None = None
    segment_id: str | None = None
    message: str = ""


class SegmentLogic:
    """Runs Localize / Refine / Segment Prostate for one volume node.

    ``python``: the interpreter for the child process (default: PythonSlicer inside Slicer,
    else this interpreter). ``env``: extra environment (e.g. ``VOXMETRIC_HOME``).
    """

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None) -> None:
        self.python = python
        self.env = dict(env or {})
        self.workdir: Path | None = None
        self.job: Job | None = None

    # -- starting a stage ------------------------------------------------------------------------
    def start(self, stage: str, volume_node, roi_node=None, model: str = "", device: str = "auto",
              modality: str = "auto") -> Job:
        """Export the inputs and start ``stage`` (localize | refine | segment) in a child process."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        if volume_node is None:
            raise VoxMetricError("Select an input volume first (a CT or MR scan of the pelvis).")
        if stage == "refine" and roi_node is None:
            raise VoxMetricError("Refine needs an ROI box: run Localize first or place an ROI.")
        self.cleanup()
        self.workdir = Path(tempfile.mkdtemp(prefix="voxmetric-"))
        image = self.workdir / "input.nrrd"
        write_volume(mrml.volume_from_node(volume_node), image)
        args = ["segment", str(image), "-o", str(self.workdir / "output.seg.nrrd"),
                "--stage", {"segment": "all"}.get(stage, stage), "--roi-out", str(self.workdir / "roi.mrk.json"),
                "--device", device, "--modality", modality.lower(), "--events-jsonl"]
        if model:
            args += ["--model", model]
        if stage == "refine":
            write_roi(mrml.box_from_roi(roi_node), self.workdir / "roi-in.mrk.json")
            args += ["--roi-file", str(self.workdir / "roi-in.mrk.json")]
        self.job = Job(args, python=self.python, env=self.env)
        return self.job

    # -- collecting the result ---------------------------------------------------------------------
    def finish(self, stage: str, events: list[dict], scene, volume_node, roi_node=None,
               segmentation_node=None, replace: bool = False) -> StageResult:
        """Turn the finished job's files into nodes. Raises VoxMetricError with the engine's
        message when the job failed or was cancelled."""
        exit_event = next((e for e in reversed(events) if e.get("event") == "exit"), None)
        errors = [e.get("message", "") for e in events if e.get("event") == "error"]
        if exit_event is None or exit_event.get("cancelled"):
            raise VoxMetricError("Cancelled.")
        if exit_event.get("returncode") != 0:
            detail = errors[-1] if errors else (exit_event.get("stderr") or "").strip().splitlines()[-1:]
            raise VoxMetricError(f"{stage.capitalize()} failed: {detail if isinstance(detail, str) else ' '.join(detail)}")
        done = next((e for e in reversed(events) if e.get("event") == "done"), {})
        result = StageResult(stage, found=bool(done.get("found", True)), confidence=done.get("confidence"),
                             timings=dict(done.get("timings", {})))
        assert self.workdir is not None
        roi_file = self.workdir / "roi.mrk.json"
        if stage in ("localize", "segment") and roi_file.exists():
            result.roi_node = mrml.roi_from_box(scene, read_roi(roi_file), "Prostate ROI", node=roi_node)
        if stage in ("refine", "segment"):
            reference = mrml.volume_from_node(volume_node)
            mask = read_segment_mask(self.workdir / "output.seg.nrrd", "Prostate", reference=reference)
            result.segmentation_node, result.segment_id = mrml.write_mask_segment(
                segmentation_node, mask, volume_node, name="Prostate", replace=replace, scene=scene)
        if not result.found:
            result.message = ("No prostate was found. The ROI box was placed at the centre of the "
                              "scan: move it over the prostate, then press Refine.")
        return result

    def run(self, stage: str, scene, volume_node, roi_node=None, segmentation_node=None,
            timeout: float | None = None, **kw) -> StageResult:
        """Start a stage and wait for it (self-tests and scripts; the GUI polls instead)."""
        job = self.start(stage, volume_node, roi_node=roi_node, **kw)
        job.wait(timeout=timeout)
        events: list[dict] = []
        while not any(e.get("event") == "exit" for e in events):
            events += job.poll_events()
            time.sleep(0.02)
        return self.finish(stage, events, scene, volume_node, roi_node=roi_node,
                           segmentation_node=segmentation_node)

    def cancel(self) -> None:
        """Kill the running stage, if any."""
        if self.job is not None:
            self.job.cancel()

    def cleanup(self) -> None:
        """Remove the temporary folder of the previous stage."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def progress_of(event: dict) -> tuple[int, str] | None:
    """(percent, message) for a progress-bar update, or None for events that carry none."""
    if event.get("event") != "progress":
        return None
    total = max(int(event.get("total", 1)), 1)
    return int(100 * int(event.get("done", 0)) / total), str(event.get("message", ""))


def describe_timings(timings: dict[str, float]) -> str:
    """'localize 1.2 s · refine 3.4 s · total 4.6 s'"""
    return " · ".join(f"{k} {v:.1f} s" for k, v in timings.items())


