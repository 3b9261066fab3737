"""Method-agnostic trainer (DESIGN.md rule 4): optimisers, poly schedule, AMP, validation,
checkpoints with exact resume, JSON-line events and PyTorch DDP under ``torchrun``
(:mod:`voxmetric.distributed`).

The method (:class:`voxmetric.methods.Method`) supplies the dataset, the networks, named
optimiser groups and the training step; the trainer gives each group an optimiser and a poly
schedule and hands the step a :class:`voxmetric.methods.StepContext` whose ``step(loss, groups)``
back-propagates and steps (one call per iteration for most methods, several for joint models).
Validation runs the method's predictor and the pipeline's post-processing (:func:`validate`).
Defaults follow METHODS.md §2.6: SGD, lr 0.01, momentum 0.9, weight decay 1e-4 (I-22), "poly"
decay with power 0.9 (I-23), batch 30 per process; a method may suggest others
(``Method.train_defaults``).

Checkpoints (``<out>/checkpoints/last.safetensors`` and ``best.safetensors``) are single
safetensors files: the tensors are the training model and optimiser states, the JSON header
metadata holds everything else (configs, classes, case ids, iteration, schedulers, scaler, RNG
states of every rank, best score); resume refuses a run whose result-changing settings differ.
No pickle is written or read. Batch ``t`` of rank ``r`` depends only on (seed, t, r), so a run
resumed from iteration ``t`` draws the same patches as one that was never stopped; on the CPU
the resumed weights equal the uninterrupted ones bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from . import __version__, distributed
from .errors import ConfigError, DeviceError, InputError, VoxMetricError
from .files import atomic_path, remove_stale

Emit = Callable[[dict[str, Any]], None]
CHECKPOINT_FORMAT = "voxmetric-checkpoint/2"
OPTIMIZERS = ("sgd", "adam")
NORMALISATION = {"ct": "HU window [-200, 250] -> [0, 255]", "mr": "percentiles [0.5, 99.5] -> [0, 255]"}


def print_json(event: Mapping[str, Any]) -> None:
    """Default ``emit``: one JSON object per line on stdout."""
    sys.stdout.write(json.dumps(_finite(event)) + "\n")
    sys.stdout.flush()


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists, numpy scalars Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method (METHODS.md §2.6)."""

    iterations: int = 10000
    batch_size: int = 30
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    amp: bool = True
    val_every: int = 500
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    val_batch: int = 16
    val_margin_mm: float = 20.0
    freeze_encoder: bool = False
    average_from: float = 0.0  # > 0: the result is the mean of the weights over the run's last (1 − this) part

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        for name in ("iterations", "batch_size", "val_every", "checkpoint_every", "log_every", "val_batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise ConfigError(f"The learning rate must be positive, got {self.lr}.")
        if self.workers < 0:
            raise ConfigError(f"workers must be 0 or more, got {self.workers}.")
        if not 0.0 <= self.average_from < 1.0:
            raise ConfigError(f"average_from must lie in [0, 1), got {self.average_from}.")


@dataclass
class TrainResult:
    """``state_dict``: CPU weights for the package (best validation DSC; the last weights when
    there was no validation or on ranks other than 0). ``metrics``: validation summary of those
    weights. ``card_fields``: method, role, config, modality, data, training, validation."""

    state_dict: dict[str, Tensor]
    metrics: dict[str, Any]
    card_fields: dict[str, Any]
    iteration: int
    best_iteration: int | None = None
    losses: list[float] = field(default_factory=list)


# ---- devices and processes -------------------------------------------------------------------
def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    DeviceError when CUDA (or GPU N) is asked for but absent."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"Device {name!r} was asked for, but this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}). Use --device cpu or --device auto.")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"GPU {dev.index} does not exist; this machine has {torch.cuda.device_count()} "
                              f"GPU(s) (cuda:0 … cuda:{torch.cuda.device_count() - 1}).")
        return dev
    raise DeviceError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.")


# ---- RNG --------------------------------------------------------------------------------------
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """All global RNG states as JSON-ready lists."""
    npst: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    py = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
        "python": [py[0], list(py[1]), py[2]],
    }


def _set_rng_state(st: Mapping[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    if st.get("cuda") and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in st["cuda"]])
    n = st["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = st["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# ---- data order ---------------------------------------------------------------------------------
def _batches(dataset: Any, cfg: TrainConfig, dist: distributed.Dist, start: int, device: torch.device) -> Iterator[dict]:
    """Endless batches for this rank from iteration ``start`` on. Item indices are global
    (``sampling.make_loader``): batch ``t`` depends only on (seed, t, rank, world), so a resumed
    run draws exactly the items an uninterrupted one would."""
    from .sampling import make_loader

    yield from make_loader(dataset, cfg.batch_size, device, cfg.workers, start_item=start * cfg.batch_size * dist.world,
                           seed=cfg.seed, rank=dist.rank, world_size=dist.world)


def _running_mean(averaged: Sequence[Tensor], current: Sequence[Tensor], n: Tensor | int) -> None:
    """``AveragedModel`` update of one group of tensors (one device and dtype): the running mean of
    float tensors after ``n`` earlier ones; integer buffers (BatchNorm's step counters) take the
    current value (torch's own update of a CUDA model divides them with ``addcdiv``, which torch refuses
    for integers: "Integer division with addcdiv is no longer supported")."""
    weight = 1.0 / (float(n) + 1.0)
    for a, c in zip(averaged, current):
        if a.is_floating_point():
            a.lerp_(c, weight)
        else:
            a.copy_(c)


# ---- checkpoints ---------------------------------------------------------------------------------
def _save_checkpoint(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write tensors + JSON metadata into one safetensors file (:func:`voxmetric.files.atomic_path`:
    a killed run leaves the previous checkpoint whole)."""
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={"voxmetric": json.dumps(_finite(meta))})
    return path


def stored_state(tensors: Mapping[str, Tensor], part: str = "model") -> dict[str, Tensor]:
    """The state dict a checkpoint's ``tensors`` hold under ``part.`` ("model": the training
    network, "average": the weight average's ``AveragedModel``)."""
    n = len(part) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(part + ".")}


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` of a checkpoint written by the trainer. InputError if unreadable."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["voxmetric"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise InputError(f"Cannot read the checkpoint {path} ({exc}); it is damaged or not a VoxMetric "
                         "checkpoint. Start again without --resume in a new output folder.") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a checkpoint this engine can resume (format {meta.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT}). Start again without --resume in a new output folder.")
    return tensors, meta


def _optimizer_split(group: str, state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, rest = {}, {}
    for idx, st in state["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{group}.{idx}.{key}"] = value
            else:
                rest.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": rest}


def _optimizer_join(group: str, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{group}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


#: TrainConfig fields that change the result; resume refuses a run whose values differ.
RESULT_FIELDS = ("batch_size", "optimizer", "lr", "momentum", "weight_decay", "poly_power", "amp", "seed",
                 "freeze_encoder")


def _resume_differences(meta: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between a checkpoint's run and this one, in words (empty: resumable)."""
    diffs = []
    if meta["method"] != now["method"]:
        diffs.append(f"method {meta['method']} → {now['method']}")
    for key, value in now["config"].items():
        if meta["config"].get(key) != value:
            diffs.append(f"{key} {meta['config'].get(key)!r} → {value!r}")
    for key in RESULT_FIELDS:
        if meta["train_config"].get(key) != now["train_config"][key]:
            diffs.append(f"{key} {meta['train_config'].get(key)!r} → {now['train_config'][key]!r}")
    for key, what in (("classes", "segments"), ("train_cases", "training cases"), ("val_cases", "validation cases"),
                      ("unlabeled_cases", "unlabeled cases"), ("world_size", "number of processes")):
        if meta.get(key) != now[key]:
            diffs.append(f"{what} {meta.get(key)!r} → {now[key]!r}")
    return diffs


# ---- one training iteration --------------------------------------------------------------------------
class _StepContext:
    """:class:`voxmetric.methods.StepContext`: backward + optimiser steps for named groups."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], scaler: torch.amp.GradScaler,
                 device: torch.device, total: int) -> None:
        self.optimizers, self.scaler, self.device, self.total = optimizers, scaler, device, total
        self.iteration = 0
        self.steps = 0

    def step(self, loss: Tensor, groups: str | Sequence[str] | None = None) -> None:
        names = list(self.optimizers) if groups is None else [groups] if isinstance(groups, str) else list(groups)
        unknown = [n for n in names if n not in self.optimizers]
        if unknown:
            raise ConfigError(f"No optimiser group {unknown[0]!r}; the method declares {', '.join(self.optimizers)}.")
        for n in names:
            self.optimizers[n].zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=False):  # backward outside the forward's autocast
            self.scaler.scale(loss).backward()
        for n in names:
            self.scaler.step(self.optimizers[n])
        self.scaler.update()
        self.steps += 1


# ---- validation ---------------------------------------------------------------------------------
def _validation_region(mask: np.ndarray, spacing_zyx: np.ndarray, region: str, margin_mm: float,
                       context_xyz_mm: Sequence[float]) -> tuple[slice, ...]:
    """The labels' bounding box + ``margin_mm`` (stage-2 methods), grown about its centre to at
    least ``context_xyz_mm`` as the pipeline grows a small ROI; the whole case for "body"."""
    if region != "label_box" or not mask.any():
        return (slice(None),) * 3
    nz = np.nonzero(mask)
    lo = np.array([a.min() for a in nz], float) - margin_mm / spacing_zyx
    hi = np.array([a.max() for a in nz], float) + margin_mm / spacing_zyx
    need = np.asarray(context_xyz_mm, float)[::-1] / spacing_zyx
    grow = np.maximum(need - (hi - lo + 1), 0) / 2
    lo, hi = np.floor(lo - grow).astype(int), np.ceil(hi + grow).astype(int)
    return tuple(slice(max(0, a), min(n, b + 1)) for a, b, n in zip(lo, hi, mask.shape))


def validate(method: Any, net: nn.Module, cfg: Any, cases: Sequence[Any], recipe: Any, device: torch.device,
             tcfg: TrainConfig, classes: Sequence[str], emit: Emit | None = None) -> dict[str, Any]:
    """The method's predictor (as ``segment`` runs it) and the pipeline's post-processing on each
    prepared case, in the label box + margin → {"dsc", "hd95", "asd" (means over cases of the
    class means), "failed", "cases": [{"id", "dsc", …, "classes": {name: {"dsc", "hd95", "asd"}}}]}."""
    from .methods import Runtime
    from .metrics import evaluate_masks, summarize
    from .postprocess import clean, labels_from_probs

    was_training = net.training
    net.eval()
    rows = []
    rt = Runtime(device, batch_size=tcfg.val_batch)
    try:
        for i, case in enumerate(cases):
            truth = np.asarray(case.mask.array)
            spacing = np.asarray(case.image.spacing_zyx, dtype=float)
            box = _validation_region(truth, spacing, recipe.region, tcfg.val_margin_mm, method.context_mm(cfg))
            probs = method.predict(net, cfg, np.asarray(case.image.array, dtype=np.float32)[box], rt)
            pred = clean(labels_from_probs(probs))
            per = {name: evaluate_masks(pred == k, truth[box] == k, spacing) for k, name in enumerate(classes, 1)}
            row: dict[str, Any] = {"id": case.id, **{m: float(np.mean([v[m] for v in per.values()]))
                                                     for m in ("dsc", "hd95", "asd")}}
            if len(classes) > 1:
                row["classes"] = {n: {m: v[m] for m in ("dsc", "hd95", "asd")} for n, v in per.items()}
            rows.append(row)
            if emit:
                emit({"event": "progress", "stage": "validation", "done": i + 1, "total": len(cases),
                      "message": f"validated {case.id}"})
    finally:
        net.train(was_training)
    summary = summarize(rows, keys=("dsc", "hd95", "asd"))
    out: dict[str, Any] = {k: summary[k]["mean"] for k in ("dsc", "hd95", "asd")}
    out["failed"] = int(summary["hd95"]["n_inf"])
    if len(classes) > 1:
        out["classes"] = {n: {m: summarize([r["classes"][n] for r in rows], keys=(m,))[m]["mean"]
                              for m in ("dsc", "hd95", "asd")} for n in classes}
    out["cases"] = rows
    return out


# ---- the trainer ---------------------------------------------------------------------------------
def _prepare(records: Sequence[Any], recipe: Any, cache: Path, emit: Emit, what: str, labelled: bool = True) -> list[Any]:
    from .data import prepare_case

    out = []
    for i, rec in enumerate(records):
        case = rec if hasattr(rec, "mask") and hasattr(rec, "image") and not isinstance(rec.image, (str, Path)) \
            else prepare_case(rec, recipe, cache_dir=cache)
        if labelled and not np.any(np.asarray(case.mask.array)):
            raise InputError(f"The label of case {case.id!r} is empty after preparation; draw the segment "
                             "or leave the case out.")
        out.append(case)
        emit({"event": "progress", "stage": f"prepare {what}", "done": i + 1, "total": len(records),
              "message": f"prepared {case.id}"})
    return out


def _check_unlabeled_modality(labelled: Sequence[Any], unlabeled: Sequence[Any]) -> None:
    """InputError naming the unlabeled cases whose modality (given or guessed from the
    intensities) is not one of the labelled cases'."""
    have = {str(c.modality).lower() for c in labelled}
    odd = [f"{c.id} ({str(c.modality).upper()})" for c in unlabeled if str(c.modality).lower() not in have]
    if odd:
        raise InputError(f"Unlabeled case(s) {', '.join(odd[:10])} are not of the labelled cases' modality "
                         f"({', '.join(sorted(m.upper() for m in have))}); semi-supervised training needs images of "
                         "the same kind. Remove them, or give their modality in a manifest if it was guessed wrong.")


def _classes(cases: Sequence[Any]) -> tuple[str, ...]:
    """The class names all labelled cases share (case-insensitively); InputError otherwise."""
    first = tuple(cases[0].classes)
    for c in cases[1:]:
        if [n.casefold() for n in c.classes] != [n.casefold() for n in first]:
            raise InputError(f"Case {c.id!r} has the segments {list(c.classes)} but case {cases[0].id!r} has "
                             f"{list(first)}; give every case the same segments (--segment A,B,...).")
    return first


def class_entries(classes: Sequence[str]) -> list[dict[str, Any]]:
    """The model card's ``classes``: name, label value, colour and SNOMED terminology of each."""
    from .io import segment_info

    out = []
    for value, name in enumerate(classes, 1):
        info = segment_info(name, value)
        entry: dict[str, Any] = {"name": name, "value": value, "color": list(info.color)}
        if info.terminology:
            entry["terminology"] = info.terminology
        out.append(entry)
    return out


def _card_fields(method: Any, mcfg: Any, cfg: TrainConfig, classes: Sequence[str], train: Sequence[Any],
                 val: Sequence[Any], unlabeled: Sequence[Any], dist: distributed.Dist, device: torch.device, seconds: float,
                 validation: dict[str, Any] | None, best_it: int | None, last_loss: float | None) -> dict[str, Any]:
    modalities = sorted({str(c.modality).lower() for c in [*train, *unlabeled] if c.modality})
    modality = modalities[0] if len(modalities) == 1 else "any"
    data = method.card_data(mcfg)
    data["normalisation"] = NORMALISATION.get(modality, NORMALISATION)
    val_fields = {}
    if validation:
        val_fields = {k: validation[k] for k in ("dsc", "hd95", "asd", "failed", "classes") if k in validation}
        val_fields.update(iteration=best_it, cases=len(val), per_case=validation["cases"])
    return _finite({
        "method": method.name, "role": method.role, "config": method.config_to_dict(mcfg),
        "modality": modality, "classes": class_entries(classes), "data": data,
        "training": {"cases": len(train), "case_ids": [c.id for c in train], "val_case_ids": [c.id for c in val],
                     "unlabeled_cases": len(unlabeled), "iterations": cfg.iterations, "batch_size": cfg.batch_size,
                     "world_size": dist.world, "optimizer": cfg.optimizer, "lr": cfg.lr, "momentum": cfg.momentum,
                     "weight_decay": cfg.weight_decay, "poly_power": cfg.poly_power, "seed": cfg.seed,
                     "freeze_encoder": cfg.freeze_encoder,
                     **({"average_from": cfg.average_from} if cfg.average_from else {}),
                     "amp": cfg.amp and device.type == "cuda", "device": device.type, "seconds": round(seconds, 1),
                     "final_loss": last_loss, "engine_version": __version__},
        "validation": val_fields,
    })


def train(method: Any, method_cfg: Any, train_cfg: TrainConfig, train_cases: Sequence[Any],
          val_cases: Sequence[Any], out_dir: str | Path, emit: Emit = print_json,
          resume: bool = False, unlabeled_cases: Sequence[Any] = (),
          init_state: Mapping[str, Tensor] | None = None) -> TrainResult:
    """Train ``method`` with ``method_cfg`` on ``train_cases``; validate on ``val_cases``.

    Cases are ``cases.CaseRecord`` s (prepared here, cached in ``<out_dir>/cache``) or
    ``data.PreparedCase`` s; ``unlabeled_cases`` (images only) go to methods that learn from
    them. ``init_state``: weights of the inference network to start from (fine-tuning; with
    ``train_cfg.freeze_encoder`` the network's ``encoder_prefixes`` stay fixed). Checkpoints go to
    ``<out_dir>/checkpoints``; ``resume=True`` continues exactly from
    ``last.safetensors`` and refuses, naming the difference, when a setting that changes the
    result differs. Under ``torchrun`` every rank calls this; rank 0 alone writes checkpoints
    and emits events. Events are dicts with key ``"event"``. With ``train_cfg.average_from`` > 0
    the result is not the best validated weights but the running mean of the weights (and
    BatchNorm statistics) after every iteration from ``average_from`` × iterations on — stochastic
    weight averaging (Izmailov et al., UAI 2018), dense as in SWAD (Cha et al., NeurIPS 2021),
    which finds flatter optima that hold up better on unseen domains — validated once at the end.
    """
    dist = distributed.from_env()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.safetensors", ckpt_dir / "best.safetensors"

    def say(event: dict[str, Any]) -> None:  # strict JSON values; rank 0 speaks for all
        if dist.main:
            emit(_finite(event))

    if not train_cases:
        raise InputError("No training cases; give at least one case with a label.")
    if unlabeled_cases and not method.uses_unlabeled:
        raise ConfigError(f"{method.name} learns from labelled cases only; drop the unlabeled cases or pick a "
                          "semi-supervised method.")
    if dist.main:  # what a killed run was writing: the previous checkpoint is whole, the torn copy goes
        for name in (last_path.name, best_path.name):
            remove_stale(ckpt_dir, name)
        remove_stale(out_dir / "cache", "*")  # half-written preparation cache entries
    if resume and not last_path.exists():
        raise ConfigError(f"Nothing to resume: {last_path} does not exist. Start without --resume.")
    if not resume and last_path.exists():
        raise ConfigError(f"{out_dir} already holds a training run ({last_path}); pass --resume to continue "
                          "it or choose another output folder.")
    with distributed.joined(dist, resolve_device(train_cfg.device)) as (dist, device):
        try:
            return _train(method, method_cfg, train_cfg, train_cases, val_cases, unlabeled_cases, out_dir, say,
                          resume, dist, device, last_path, best_path, init_state)
        except VoxMetricError as exc:
            say({"event": "error", "message": str(exc), "type": type(exc).__name__, "exit_code": 2})
            exc.event_emitted = dist.main  # type: ignore[attr-defined]  (the CLI does not repeat it)
            if dist.world > 1:
                distributed.publish_failure(dist, exc)
            raise
        except Exception as exc:  # under DDP: a peer's death said with its message; this rank's error shared
            peer = distributed.peer_failure(dist, exc)
            if peer is not None:
                say({"event": "error", "message": str(peer), "type": "VoxMetricError", "exit_code": 2})
                peer.event_emitted = dist.main  # type: ignore[attr-defined]
                raise peer from exc
            if dist.world > 1:
                distributed.publish_failure(dist, exc)
            raise


def _train(method: Any, mcfg: Any, cfg: TrainConfig, train_cases: Sequence[Any], val_cases: Sequence[Any],
           unlabeled_cases: Sequence[Any], out_dir: Path, say: Emit, resume: bool, dist: distributed.Dist,
           device: torch.device, last_path: Path, best_path: Path,
           init_state: Mapping[str, Tensor] | None = None) -> TrainResult:
    t0 = time.monotonic()
    recipe = method.data_recipe(mcfg)
    cache = out_dir / "cache"

    def prepare(val: bool) -> tuple[list[Any], list[Any], list[Any]]:
        return (_prepare(train_cases, recipe, cache, say, "training cases"),
                _prepare(unlabeled_cases, recipe, cache, say, "unlabeled cases", labelled=False),
                _prepare(val_cases, recipe, cache, say, "validation cases") if val else [])

    # rank 0 fills the preparation cache first (the others wait in the control group, and stop with
    # its message if it fails); then the other ranks read it (rank 0 alone validates)
    first = distributed.together(dist, (lambda: prepare(True)) if dist.main else None)
    second = distributed.together(dist, None if dist.main else (lambda: prepare(False)))
    train_prep, unlabeled_prep, val_prep = first if dist.main else second
    _check_unlabeled_modality(train_prep, unlabeled_prep)
    validating = bool(val_cases)  # the same on every rank
    classes = _classes([*train_prep, *val_prep])

    _seed_all(cfg.seed)  # identical initial weights on every rank
    dataset = method.dataset(train_prep, mcfg, cfg.seed, unlabeled_prep)
    net = method.build(mcfg, len(classes) + 1)
    if init_state is not None:
        try:
            net.load_state_dict(dict(init_state))
        except RuntimeError as e:
            raise ConfigError(f"The weights to start from do not fit {method.name} with {len(classes)} class(es) "
                              f"({str(e).splitlines()[0]}); train the same segments as that model.") from e
    if cfg.freeze_encoder:
        prefixes = tuple(getattr(net, "encoder_prefixes", ()))
        if not prefixes:
            raise ConfigError(f"{method.name}'s network does not say which layers are its encoder; train without "
                              "--freeze-encoder.")
        for pname, p in net.named_parameters():
            if pname.startswith(prefixes):
                p.requires_grad_(False)
    model = method.training_model(mcfg, net).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    groups = method.optimizer_groups(model, mcfg)
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for name, params in groups.items():
        if cfg.optimizer == "sgd":
            optimizers[name] = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            optimizers[name] = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.iterations
    scheds = {n: torch.optim.lr_scheduler.LambdaLR(o, lambda it: max(0.0, 1.0 - it / total) ** cfg.poly_power)
              for n, o in optimizers.items()}
    amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    run = {"method": method.name, "config": method.config_to_dict(mcfg), "train_config": dataclasses.asdict(cfg),
           "classes": list(classes), "train_cases": [c.id for c in train_prep],
           "val_cases": [c.id for c in val_prep] if dist.main else None,
           "unlabeled_cases": [c.id for c in unlabeled_prep], "world_size": dist.world}

    averaged = (torch.optim.swa_utils.AveragedModel(model, use_buffers=True, multi_avg_fn=_running_mean)
                if cfg.average_from else None)
    avg_start = int(math.floor(cfg.average_from * total))
    start, best_score, best_it, best_val = 0, -math.inf, None, None
    seconds_before, loss_before = 0.0, None  # a resumed run's earlier parts (training time, last loss)
    losses: list[float] = []
    _seed_all(cfg.seed + 1000003 * dist.rank)  # per-rank stream for sampling/augmentation
    if resume:
        tensors, meta = load_checkpoint(last_path)
        now = {**run, "val_cases": meta.get("val_cases") if not dist.main else run["val_cases"]}
        diffs = _resume_differences(meta, now)
        if diffs:
            raise ConfigError(f"The checkpoint in {last_path.parent} was made with other settings: "
                              + "; ".join(diffs) + ". Resume with the same method and settings, or start a new "
                              "run in another output folder.")
        if meta["train_config"]["iterations"] != cfg.iterations:
            say({"event": "log", "message": f"iterations changed from {meta['train_config']['iterations']} "
                 f"to {cfg.iterations}: the learning-rate schedule follows the new total"})
        model.load_state_dict(stored_state(tensors))
        if averaged is not None and any(k.startswith("average.") for k in tensors):
            averaged.load_state_dict(stored_state(tensors, "average"))
        for name, opt in optimizers.items():
            opt.load_state_dict(_optimizer_join(name, tensors, meta["optimizer"][name]))
            scheds[name].load_state_dict(meta["scheduler"][name])
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        _set_rng_state(meta["rng"][dist.rank])
        start, best_score, best_it = meta["iteration"], meta["best_score"], meta["best_iteration"]
        best_val = meta.get("best_validation")
        seconds_before, loss_before = float(meta.get("train_seconds") or 0.0), meta.get("last_loss")
        best_score = -math.inf if best_score is None else best_score
        say({"event": "log", "message": f"resumed from {last_path} at iteration {start}"})

    train_net: nn.Module = model
    if dist.world > 1:
        train_net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=len(optimizers) > 1)
    train_net.train()
    ctx = _StepContext(optimizers, scaler, device, total)

    def checkpoint(path: Path, iteration: int, gather: bool = True) -> None:
        """Write a checkpoint (rank 0). ``gather``: collect every rank's RNG state and agree on
        the write's success (collective calls: all ranks must make them; the best-model
        checkpoint, written inside rank 0's validation, skips them)."""
        rng = _rng_state()
        if dist.world > 1 and gather:
            gathered: list[Any] = [None] * dist.world
            torch.distributed.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        if gather:
            distributed.together(dist, (lambda: write(path, iteration, rngs)) if dist.main else None)
        elif dist.main:
            write(path, iteration, rngs)

    def write(path: Path, iteration: int, rngs: list[Any]) -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        if averaged is not None:
            tensors |= {f"average.{k}": v for k, v in averaged.state_dict().items()}
        opt_meta = {}
        for name, opt in optimizers.items():
            t, opt_meta[name] = _optimizer_split(name, opt.state_dict())
            tensors |= t
        meta = {"format": CHECKPOINT_FORMAT, "engine_version": __version__, **run, "iteration": iteration,
                "optimizer": opt_meta, "scheduler": {n: s.state_dict() for n, s in scheds.items()},
                "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "rng": rngs,
                "best_score": best_score if math.isfinite(best_score) else None, "best_iteration": best_it,
                "best_validation": best_val, "train_seconds": round(seconds_before + time.monotonic() - t0, 3),
                "last_loss": losses[-1] if losses else loss_before}
        _save_checkpoint(path, tensors, meta)
        say({"event": "checkpoint", "iteration": iteration, "path": str(path), "kind": path.stem})

    def validate_and_keep_best(done: int) -> None:
        nonlocal best_score, best_it, best_val
        result = validate(method, method.inference_net(model), mcfg, val_prep, recipe, device, cfg, classes, say)
        score = result["dsc"] if math.isfinite(result["dsc"]) else -1.0
        is_best = score > best_score
        say({"event": "validation", "iteration": done, **result, "best": is_best})
        if is_best:
            best_score, best_it, best_val = score, done, _finite(result)
            checkpoint(best_path, done, gather=False)

    say({"event": "log", "message": f"training {method.name} ({', '.join(classes)}) on {len(train_prep)} case(s)"
         + (f" + {len(unlabeled_prep)} unlabeled" if unlabeled_prep else "")
         + f", {len(dataset)} items per epoch, validating on {len(val_prep)}; device {device}"
         + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "") + ", "
         f"{dist.world} process(es)"})
    window: list[dict[str, Tensor]] = []
    tick = time.monotonic()
    batches = _batches(dataset, cfg, dist, start, device)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if amp else nullcontext
    for it in range(start, total):
        batch = next(batches)
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
        ctx.iteration, steps = it, ctx.steps
        with autocast():
            logs = method.training_step(train_net, batch, mcfg, ctx)
        if ctx.steps == steps:
            raise ConfigError(f"{method.name}.training_step made no optimiser step; it must call ctx.step(loss).")
        for sched in scheds.values():
            sched.step()
        if averaged is not None and it >= avg_start:
            averaged.update_parameters(model)
        window.append({k: v.detach() for k, v in logs.items()})
        done = it + 1
        if done % cfg.log_every == 0 or done == total:
            values = torch.stack([w["loss"] for w in window]).float().cpu()
            if not torch.isfinite(values).all():
                raise VoxMetricError(f"The loss became {values[-1].item()} at iteration {done}; training "
                                     "diverged. Lower the learning rate (--lr) or turn off AMP.")
            losses.extend(values.tolist())
            now = time.monotonic()
            parts = {k: float(torch.stack([w[k] for w in window]).float().mean()) for k in window[-1] if k != "loss"}
            say({"event": "iteration", "iteration": done, "total": total, "loss": float(values.mean()),
                 "lr": next(iter(scheds.values())).get_last_lr()[0], "it_per_s": len(window) / max(now - tick, 1e-9),
                 **parts})
            window, tick = [], now
        if validating and (done % cfg.val_every == 0 or done == total):
            # rank 0 validates; the others wait in the control group (no training collective to time out)
            distributed.together(dist, (lambda: validate_and_keep_best(done)) if dist.main else None)
        if done % cfg.checkpoint_every == 0 or done == total:
            checkpoint(last_path, done)

    if dist.world > 1:  # DDP syncs BatchNorm buffers at each forward; align the last update too
        for buf in model.buffers():
            torch.distributed.broadcast(buf, 0)
    if averaged is not None:  # the mean weights, validated once
        model.load_state_dict(averaged.module.state_dict())
        if validating and dist.main:
            best_it, best_val = total, _finite(validate(method, method.inference_net(model), mcfg, val_prep, recipe,
                                                        device, cfg, classes, say))
            say({"event": "validation", "iteration": total, **best_val, "average_of": [avg_start + 1, total]})
    elif dist.main and best_it is not None and best_path.exists():
        tensors, _ = load_checkpoint(best_path)
        model.load_state_dict(stored_state(tensors))
    state = {k: v.detach().cpu().clone() for k, v in method.inference_net(model).state_dict().items()}
    seconds = seconds_before + time.monotonic() - t0  # over every resumed part of the run
    fields = _card_fields(method, mcfg, cfg, classes, train_prep, val_prep, unlabeled_prep, dist, device, seconds,
                          best_val, best_it, losses[-1] if losses else loss_before)
    metrics = fields["validation"]
    say({"event": "done", "iteration": total, "seconds": round(seconds, 2), "carried": round(seconds_before, 2),
         "best_iteration": best_it,
         "metrics": {k: metrics.get(k) for k in ("dsc", "hd95", "asd")} if metrics else {}})
    return TrainResult(state, metrics, fields, total, best_it, losses)


def split_cases(cases: Sequence[Any], val_cases: int | None = None, val_fraction: float | None = None,
                seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Random train/validation split (seeded). ``val_cases`` (a count) wins over ``val_fraction``
    (default 0.1, at least one case). ConfigError when too few cases remain for training."""
    n = len(cases)
    if val_cases is None:
        frac = 0.1 if val_fraction is None else float(val_fraction)
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {frac}.")
        val_cases = 0 if frac == 0 else max(1, int(round(frac * n)))
    if val_cases < 0:
        raise ConfigError(f"--val-cases must be 0 or more, got {val_cases}.")
    if n - val_cases < 1:
        raise ConfigError(f"{n} case(s) are too few for {val_cases} validation case(s) and at least one "
                          "training case; add cases or pass --val-cases 0 to train without validation.")
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:val_cases].tolist())
    return [c for i, c in enumerate(cases) if i not in val_idx], [c for i, c in enumerate(cases) if i in val_idx]
