"""VoxMetricTrain logic: labelled cases → ``voxmetric train`` child process → live loss curve →
model package installed into the user's models folder (so VoxMetricSeg lists it at once).

Cases come from the scene (volume node + segmentation node + segment name per case, exported
to ``caseNNN.nrrd`` + ``caseNNN.seg.nrrd`` and a ``manifest.json``) or from a folder/manifest.
Every training run lives in ``<models home>/training/<model name>/`` (``run.json`` with the
settings, ``cases/``, ``work/`` with checkpoints, ``model/`` with the package), so Resume works
after a cancel, a crash or a Slicer restart. The engine runs as ``python -m voxmetric train …
--events-jsonl`` (:class:`voxmetric.jobs.Job`); its JSON-line events feed a table node (columns
iteration, loss, dsc) that a plot chart node shows. Nothing here imports Slicer, VTK or Qt.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxmetric import models, mrml
from voxmetric.cases import CaseRecord, split_segments
from voxmetric.errors import ConfigError, InputError, VoxMetricError
from voxmetric.files import write_json
from voxmetric.io import segment_info, write_segmentation, write_volume
from voxmetric.jobs import Emit, Job
from voxmetric.volume import Volume

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
RUN_FILE = "run.json"
DEVICES = ("auto", "cpu", "cuda")
MODALITIES = ("auto", "ct", "mr")


class JobRunningError(VoxMetricError):
    """A second training run was started while one runs."""


@dataclass
class CasePair:
    """One labelled case in the scene: a scalar volume node, a segmentation node and the name
    of the segment to learn (case-insensitive; comma-separated for a multi-class model:
    "Prostate,Bladder,Rectum")."""

    volume_node: Any
    segmentation_node: Any
    segment: str = "Prostate"


@dataclass
class Update:
    """What the GUI should show for one event (None = leave as is)."""

    percent: int | None = None
    status: str | None = None
    log: str | None = None


def pairs_from_scene(scene, segment: str = "Prostate") -> list[CasePair]:
    """Every segmentation node that holds ``segment`` (every one of them when comma-separated;
    case-insensitive) paired with its reference-geometry volume (the volume it was drawn on), in
    scene order; the pair's segment is spelt as in the node."""
    wanted = split_segments(segment)
    pairs = []
    for k in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        seg_node = scene.GetNthNodeByClass(k, "vtkMRMLSegmentationNode")
        volume = seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole())
        names = [_segment_name(seg_node, w) for w in wanted]
        if volume is not None and volume.IsA("vtkMRMLScalarVolumeNode") and wanted and None not in names:
            pairs.append(CasePair(volume, seg_node, ",".join(n for n in names if n)))
    return pairs


def _segment_name(seg_node, wanted: str) -> str | None:
    """The segment's own spelling of ``wanted`` (case-insensitive), or None."""
    seg = seg_node.GetSegmentation()
    names = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
    return next((n for n in names if n.casefold() == wanted.strip().casefold()), None)


@dataclass
class CaseSnapshot:
    """One scene case read on the GUI thread (numpy copies; no MRML reads later): the image,
    each segment's name and mask cropped to its extent on the image grid (class order), and the
    volume's name for messages."""

    id: str
    image: Volume
    masks: list[tuple[str, Volume]]
    volume_name: str

    @property
    def segment(self) -> str:
        """The segment names, comma-separated (``voxmetric train --segment``)."""
        return ",".join(name for name, _ in self.masks)


def check_pairs(pairs: Sequence[CasePair]) -> None:
    """InputError for an empty list, a row without nodes or segment name, or a repeated row."""
    if not pairs:
        raise InputError("No training cases: add at least two (volume, segmentation, segment) rows.")
    seen: set[tuple[str, str, str]] = set()
    for i, pair in enumerate(pairs):
        row = f"Row {i + 1}"
        if pair.volume_node is None or pair.segmentation_node is None:
            raise InputError(f"{row}: pick both a volume and a segmentation.")
        if not split_segments(pair.segment):
            raise InputError(f"{row}: type the name of the segment to learn (e.g. Prostate).")
        key = (pair.volume_node.GetID(), pair.segmentation_node.GetID(), pair.segment.strip().casefold())
        if key in seen:
            raise InputError(f"{row} repeats '{pair.volume_node.GetName()}' / '{pair.segmentation_node.GetName()}' "
                             f"/ '{pair.segment}'; remove the duplicate row.")
        seen.add(key)


def snapshot_case(pair: CasePair, index: int) -> CaseSnapshot:
    """GUI-thread part of exporting one case: copy the volume's voxels and each segment's own
    extent (``mask_from_segment(crop=True)``). InputError when the segments are all empty."""
    row = f"Row {index + 1}"
    image = mrml.volume_from_node(pair.volume_node)
    masks = [(_segment_name(pair.segmentation_node, w) or w,
              mrml.mask_from_segment(pair.segmentation_node, w, pair.volume_node, crop=True))
             for w in split_segments(pair.segment)]
    if not any(m.array.any() for _, m in masks):
        raise InputError(f"{row}: segment '{pair.segment}' of '{pair.segmentation_node.GetName()}' is empty "
                         f"on '{pair.volume_node.GetName()}'; draw it or remove the row.")
    return CaseSnapshot(f"case{index:03d}", image, masks, pair.volume_node.GetName())


def write_case(case: CaseSnapshot, folder: str | Path, modality: str = "auto") -> CaseRecord:
    """Worker part: ``<id>.nrrd`` (the volume, compressed) + ``<id>.seg.nrrd`` (segment k as label
    k + 1 on the volume's grid — an earlier segment wins where they overlap — spelt as in the
    scene, SNOMED-coded by :func:`voxmetric.io.segment_info`); returns its manifest record
    ("auto" modality is guessed from the intensities)."""
    from voxmetric.intensity import looks_like_ct

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(case.image, folder / f"{case.id}.nrrd")
    labels = np.zeros(case.image.shape, np.uint8)
    for k, (_, mask) in reversed(list(enumerate(case.masks, 1))):
        labels[mrml.paste_into(mask, case.image).array > 0] = k
    write_segmentation(folder / f"{case.id}.seg.nrrd", case.image.with_array(labels),
                       [segment_info(name, k) for k, (name, _) in enumerate(case.masks, 1)])
    return CaseRecord(case.id, folder / f"{case.id}.nrrd", folder / f"{case.id}.seg.nrrd", case.segment,
                      ("ct" if looks_like_ct(case.image.array) else "mr") if modality == "auto" else modality)


def write_cases(cases: Sequence[CaseSnapshot], folder: str | Path, modality: str = "auto",
                progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Write every snapshot (:func:`write_case`) and a ``manifest.json``; returns the manifest."""
    from voxmetric.cases import write_manifest

    records = []
    for i, case in enumerate(cases):
        records.append(write_case(case, folder, modality))
        if progress is not None:
            progress(i + 1, len(cases), f"exported {case.id} ({case.volume_name})")
    return write_manifest(records, Path(folder) / "manifest.json")


def export_cases(pairs: Sequence[CasePair], folder: str | Path, modality: str = "auto",
                 progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Write each pair as ``caseNNN.nrrd`` + ``caseNNN.seg.nrrd`` and a ``manifest.json`` in one
    go (scripts; the panel snapshots on the GUI thread and writes in a worker); returns the
    manifest. InputError for a missing node, an empty segment or a pair listed twice."""
    if modality not in MODALITIES:
        raise ConfigError(f"Unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}.")
    check_pairs(pairs)
    return write_cases([snapshot_case(p, i) for i, p in enumerate(pairs)], folder, modality, progress)


class TrainLogic:
    """Starts, follows, cancels and resumes one training run at a time.

    ``python``: interpreter of the child process (Slicer: ``PythonSlicer``; tests:
    ``sys.executable``). ``env``: extra environment for it. The models home
    (``VOXMETRIC_HOME``) is read when a run starts and handed to the child, so the parent
    (which installs the package) and the child agree on it.
    """

    def __init__(self, python: str | None = None, env: dict[str, str] | None = None,
                 timeout: float | None = None) -> None:
        self.python = python
        self.extra_env = dict(env or {})
        self.timeout = timeout
        self._pending: Generator[str, None, None] | None = None
        self.job: Job | None = None
        self.run_dir: Path | None = None
        self.name: str | None = None
        self.events: list[dict] = []
        self.table_node: Any = None
        self.chart_node: Any = None
        self.case_pairs: dict[str, CasePair] = {}  # case id → its scene row, for the run started here
        self.model: models.ModelInfo | None = None  # the model the last run installed

    # -- where runs live -------------------------------------------------------------------------
    @staticmethod
    def runs_dir() -> Path:
        """``<models home>/training``: one folder per model name."""
        return models.models_home() / "training"

    @property
    def busy(self) -> bool:
        """A run is being prepared (scene cases read) or running."""
        return self._pending is not None or (self.job is not None and self.job.running)

    def _env(self) -> dict[str, str]:
        return {"VOXMETRIC_HOME": str(models.models_home()), **self.extra_env}

    # -- starting ----------------------------------------------------------------------------------
    def start(self, scene: Any, method: str, cases: str | Path | Sequence[CasePair], segment: str, name: str,
              iterations: int, batch_size: int, device: str = "auto", modality: str = "auto",
              extra_args: Sequence[str] = (), unlabeled: str | Path | Sequence[Any] | None = None,
              init_from: str = "", freeze_encoder: bool = False) -> Job:
        """Check the settings, snapshot scene cases (if ``cases`` is a list of :class:`CasePair`),
        write ``run.json`` and start training: a worker writes the cases, then the child process
        trains. ``scene`` gets a loss table and a chart (None: no nodes). ``extra_args``: more
        ``voxmetric train`` flags, e.g. the method's settings (``--base 16``, see
        :func:`VoxMetricTrainLib.form.method_flags`) or ``--val-every 100``. ``unlabeled``: images
        without labels for a semi-supervised method — volume nodes of the scene or a folder /
        manifest (:mod:`VoxMetricTrainLib.unlabeled`). ``init_from``: fine-tune this bundled or
        installed model (``--init-from``; "" = from scratch), ``freeze_encoder`` keeping its
        encoder fixed (``--freeze-encoder``); ``run.json`` records both, so Resume keeps them."""
        for _ in self.start_steps(scene, method, cases, segment, name, iterations, batch_size, device, modality,
                                  extra_args, unlabeled, init_from, freeze_encoder):
            pass
        assert self.job is not None
        return self.job

    def start_steps(self, scene: Any, method: str, cases: str | Path | Sequence[CasePair], segment: str, name: str,
                    iterations: int, batch_size: int, device: str = "auto", modality: str = "auto",
                    extra_args: Sequence[str] = (), unlabeled: str | Path | Sequence[Any] | None = None,
                    init_from: str = "", freeze_encoder: bool = False) -> Iterator[str]:
        """:meth:`start` in GUI-thread steps: yields a status text after each case snapshot, so
        the panel can take one case per timer tick; the job starts after the last step. The
        logic counts as busy meanwhile; closing the iterator early abandons the run."""
        from voxmetric.methods import get_method

        if self.busy:
            raise JobRunningError("A training run is in progress; wait for it or press Cancel first.")
        method = get_method(method).name  # ConfigError listing the methods on a typo
        name = self._check_name(name)
        if device not in DEVICES and not str(device).startswith("cuda:"):
            raise ConfigError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
        if modality not in MODALITIES:
            raise ConfigError(f"Unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}.")
        if int(iterations) < 1 or int(batch_size) < 1:
            raise ConfigError("Iterations and batch size must be at least 1.")
        init_from = (init_from or "").strip()
        if freeze_encoder and not init_from:
            raise ConfigError("Freeze encoder keeps the encoder of a model to start from fixed; choose that model "
                              "in Start from, or untick Freeze encoder.")
        if init_from:  # the card's settings must be the method's (the child checks the weights too)
            models.init_config(models.read_card(models.find_model(init_from).path), get_method(method))
        run = self.runs_dir() / name
        checkpoints = run / "work" / "checkpoints"
        if (checkpoints / "last.safetensors").exists():
            raise ConfigError(f"A training run called '{name}' was interrupted ({run}). Press Resume to "
                              "continue it, or choose another model name.")
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            raise ConfigError(f"{checkpoints} holds checkpoints of an earlier run that cannot be resumed; "
                              "choose another model name (or delete that folder).")
        from_folder = isinstance(cases, (str, Path))
        if from_folder and (not str(cases).strip() or not Path(cases).expanduser().exists()):
            raise InputError(f"The cases folder or manifest '{cases}' does not exist; pick a folder of "
                             "image + .seg.nrrd pairs or a manifest.json.")
        pairs: list[CasePair] = [] if isinstance(cases, (str, Path)) else list(cases)
        if not from_folder:
            check_pairs(pairs)
        from .unlabeled import check_method, check_unlabeled, unlabeled_argument

        u_arg = unlabeled_argument(unlabeled, run)  # InputError for a folder that does not exist
        check_method(method, u_arg is not None)
        u_nodes = list(unlabeled or []) if u_arg is not None and not isinstance(unlabeled, (str, Path)) else []
        check_unlabeled(u_nodes, [p.volume_node for p in pairs])
        self._pending = self._prepare_run(scene, run, method, cases, pairs, segment, name, iterations, batch_size,
                                          device, modality, extra_args, u_nodes, u_arg,
                                          {"init_from": init_from or None, "freeze_encoder": bool(freeze_encoder)})
        return self._pending

    def _prepare_run(self, scene: Any, run: Path, method: str, cases: str | Path | Sequence[CasePair],
                     pairs: list[CasePair], segment: str, name: str, iterations: int, batch_size: int, device: str,
                     modality: str, extra_args: Sequence[str], u_nodes: Sequence[Any] = (),
                     u_arg: str | None = None, start: dict[str, Any] | None = None) -> Generator[str, None, None]:
        from .unlabeled import FOLDER, snapshot_unlabeled, write_unlabeled

        started = False
        try:
            snapshots = []
            for i, pair in enumerate(pairs):
                snapshots.append(snapshot_case(pair, i))
                yield f"Read case {i + 1}/{len(pairs)} ({pair.volume_node.GetName()}) from the scene…"
            self.case_pairs = {snap.id: pair for snap, pair in zip(snapshots, pairs)}
            u_snaps = []
            for i, node in enumerate(u_nodes):
                u_snaps.append(snapshot_unlabeled(node, i))
                yield f"Read unlabeled volume {i + 1}/{len(u_nodes)} ({node.GetName()}) from the scene…"
            if run.exists():  # an earlier attempt that stopped before its first checkpoint: nothing to keep
                shutil.rmtree(run)
            run.mkdir(parents=True)
            cases_arg = str(Path(cases).expanduser().resolve()) if isinstance(cases, (str, Path)) \
                else str(run / "cases" / "manifest.json")
            settings = {"method": method, "cases": cases_arg, "segment": segment.strip(), "name": name,
                        "iterations": int(iterations), "batch_size": int(batch_size), "device": device,
                        "extra_args": [str(a) for a in extra_args], **(start or {})}
            if u_arg is not None:
                settings["unlabeled"] = u_arg
            _write_json(run / RUN_FILE, settings)

            def prepare(emit: Emit) -> None:
                def progress(done: int, total: int, message: str) -> None:
                    emit({"event": "progress", "stage": "export", "done": done, "total": total, "message": message})

                if snapshots:
                    write_cases(snapshots, run / "cases", modality, progress)
                    snapshots.clear()  # the copies of the scans are on disk now
                if u_snaps:
                    write_unlabeled(u_snaps, run / FOLDER, modality, progress)
                    u_snaps.clear()

            self._launch(scene, run, settings, resume=False, prepare=prepare)
            started = True
        finally:
            self._pending = None
            if not started and run.exists() and not (run / "work").exists():
                shutil.rmtree(run, ignore_errors=True)

    def resume(self, scene, name: str, iterations: int | None = None, device: str | None = None) -> Job:
        """Continue the interrupted run ``name`` from its last checkpoint with the settings it
        was started with (``iterations`` / ``device`` may change)."""
        if self.busy:
            raise JobRunningError("A training run is in progress; wait for it or press Cancel first.")
        run = self.runs_dir() / self._check_name(name, installed_ok=True)
        try:
            settings = json.loads((run / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(f"There is no training run called '{name}' to resume (looked in {run}). "
                              "Press Train to start one.") from None
        if (run / "model").exists():
            raise ConfigError(f"The training run '{name}' has finished already; its model is in {run / 'model'}. "
                              "Choose another model name and press Train to train again.")
        if not (run / "work" / "checkpoints" / "last.safetensors").exists():
            raise ConfigError(f"The training run '{name}' stopped before its first checkpoint; press Train "
                              "to start it again.")
        self.case_pairs = {}  # the run's scene rows are not known here: review reads its exported cases
        if iterations is not None:
            settings["iterations"] = int(iterations)
        if device is not None:
            settings["device"] = device
        _write_json(run / RUN_FILE, settings)
        return self._launch(scene, run, settings, resume=True)

    def can_resume(self, name: str) -> bool:
        """True when ``name`` has an interrupted run (a checkpoint, no finished model)."""
        if not NAME_PATTERN.match((name or "").strip()):
            return False
        run = self.runs_dir() / name.strip()
        return (run / "work" / "checkpoints" / "last.safetensors").exists() and not (run / "model").exists()

    def _check_name(self, name: str, installed_ok: bool = False) -> str:
        name = (name or "").strip()
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"Model name {name!r} is not valid: use 1–64 letters, digits, '.', '_', '+' or '-', "
                              "starting with a letter or digit (e.g. MyProstateCT).")
        if not installed_ok and any(m.name == name for m in models.list_models()):
            raise ConfigError(f"A model called '{name}' is already installed; choose another model name "
                              f"(or remove it with `voxmetric models remove {name}`).")
        return name

    def _launch(self, scene: Any, run: Path, s: dict[str, Any], resume: bool,
                prepare: Callable[[Emit], None] | None = None) -> Job:
        args = ["train", "--method", s["method"], "--cases", s["cases"], "--out", str(run / "model"),
                "--work-dir", str(run / "work"), "--name", s["name"], "--iterations", str(s["iterations"]),
                "--batch-size", str(s["batch_size"]), "--device", s["device"], "--events-jsonl"]
        if s.get("segment"):
            args += ["--segment", s["segment"]]
        if s.get("unlabeled"):
            args += ["--unlabeled", s["unlabeled"]]
        if s.get("init_from"):  # fine-tuning (kept by Resume: the child checks the package again)
            args += ["--init-from", s["init_from"]] + (["--freeze-encoder"] if s.get("freeze_encoder") else [])
        args += list(s.get("extra_args", []))
        if resume:
            args.append("--resume")
        self.run_dir, self.name, self.events = run, s["name"], []
        title = f"{s['name']} training curve"
        same_table = resume and self.table_node is not None and self.table_node.GetScene() is scene \
            and self.table_node.GetName() == title
        if scene is not None and not same_table:  # a resumed run continues its own curve
            self.table_node = mrml.loss_table(scene, title)
            self.chart_node = mrml.loss_chart(scene, self.table_node, title)
        name = s["name"]

        def install(emit: Emit) -> models.ModelInfo:  # in the worker: hashing, copying, verifying
            emit({"event": "progress", "stage": "install", "done": 0, "total": 1, "message": "installing the model"})
            return models.install(run / "model", name=name)

        self.job = Job(args, python=self.python, env=self._env(), timeout=self.timeout, prepare=prepare,
                       collect=install)
        return self.job

    # -- following ---------------------------------------------------------------------------------
    def handle(self, event: dict) -> Update:
        """Record ``event``, add its numbers to the loss table, and say what to show."""
        self.events.append(event)
        kind = event.get("event")
        if kind == "iteration":
            it, total = int(event["iteration"]), max(int(event["total"]), 1)
            self._rows([{"iteration": it, "loss": event.get("loss")}])
            text = f"iteration {it}/{total}: loss {_num(event.get('loss'), 4)}  ({_num(event.get('it_per_s'), 1)} it/s)"
            return Update(int(100 * it / total), text, text)
        if kind == "validation":
            self._rows([{"iteration": int(event["iteration"]), "dsc": event.get("dsc")}])
            text = (f"validation at iteration {event['iteration']}: DSC {_num(event.get('dsc'), 3)}, "
                    f"HD95 {_num(event.get('hd95'), 1)} mm" + ("  (best so far)" if event.get("best") else ""))
            return Update(None, text, text)
        if kind == "progress":
            text = f"{event.get('stage', 'working')}: {event.get('done')}/{event.get('total')} {event.get('message', '')}"
            return Update(None, text.strip(), None)
        if kind == "checkpoint":
            return Update(None, None, f"checkpoint ({event.get('kind')}) at iteration {event.get('iteration')}")
        if kind == "log":
            return Update(None, None, str(event.get("message", "")))
        if kind == "error":
            return Update(None, str(event.get("message")), f"error: {event.get('message')}")
        if kind == "done":
            return Update(100, f"finished {event.get('iteration')} iterations in {_num(event.get('seconds'), 0)} s; "
                          "installing the model…", f"done: package {event.get('package')}")
        if kind == "exit":
            if event.get("cancelled"):
                return Update(None, "Cancelled. Press Resume to continue from the last checkpoint.", "cancelled")
            if event.get("returncode") != 0:
                return Update(None, None, (event.get("stderr") or "").strip() or f"exit code {event.get('returncode')}")
        return Update()

    def _rows(self, rows: list[dict]) -> None:
        if self.table_node is not None:
            mrml.append_rows(self.table_node, rows)

    def finish(self, events: Sequence[dict] | None = None) -> models.ModelInfo | None:
        """After the child exited: install the package into the models folder and return its
        registry entry; None when cancelled. VoxMetricError with the engine's message on failure."""
        events = self.events if events is None else events
        exit_event = next((e for e in reversed(events) if e.get("event") == "exit"), None)
        if exit_event is None:
            raise VoxMetricError("The training process has not finished yet.")
        if exit_event.get("cancelled"):
            return None
        if exit_event.get("timed_out"):
            raise VoxMetricError(str(exit_event.get("message")))
        if exit_event.get("returncode") != 0:
            errors = [str(e.get("message", "")) for e in events if e.get("event") == "error"]
            tail = (exit_event.get("stderr") or "").strip().splitlines()[-1:]
            raise VoxMetricError(f"Training failed: {errors[-1] if errors else ' '.join(tail) or 'no message'}")
        result = self.job.result if self.job is not None else None
        if not isinstance(result, models.ModelInfo):
            raise VoxMetricError("Training finished but its model was not installed; see the log.")
        self.model = result
        return result

    def run(self, scene, *args: Any, resume: bool = False, timeout: float | None = None,
            **kw: Any) -> tuple[models.ModelInfo | None, list[dict]]:
        """Start (or resume) and wait, handling every event (scripts, self-tests; the GUI polls).
        Returns (installed model, events)."""
        (self.resume if resume else self.start)(scene, *args, **kw)
        assert self.job is not None
        end = None if timeout is None else time.monotonic() + timeout
        while not any(e.get("event") == "exit" for e in self.events):
            if end is not None and time.monotonic() > end:
                self.cancel()
            for event in self.job.poll_events():
                self.handle(event)
            time.sleep(0.05)
        return self.finish(), list(self.events)

    def cancel(self, wait: float | None = None) -> None:
        """Kill the running training (and its data-loader workers); Resume continues it. Returns
        at once unless ``wait`` (seconds) is given: the exit event follows through the job. A run
        still reading its cases from the scene is abandoned."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.close()
            return
        if self.job is not None:
            self.job.cancel(wait=wait)


def _num(value: Any, digits: int) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _write_json(path: Path, data: dict) -> None:
    write_json(path, data, indent=1)
