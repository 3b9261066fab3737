"""Training-step time on the CPU: UNet vs MetricUNet-HCP on the same batch (GitHub issue 3).

    nice -n 10 python Testing/Benchmarks/bench_train_step.py [--batch 30] [--steps 10] [--warmup 2]
        [--threads 1] [--profile]

One CT phantom (``phantom.write_cases``, seed ``--phantom-seed``) is prepared with the real
pipeline (``data.prepare_case``, 1 mm) and one batch of ``--batch`` 3×64×64 slabs is drawn from
the method's own dataset (``method.dataset``: 2.5D slab patches (label box + margin, half the patches
centred on the prostate), so the H/C samplers see real foreground and boundary pools. Both
networks start from the same weights and each has its own SGD (lr 0.01, momentum 0.9, weight
decay 1e-4, as the trainer). A step = ``method.loss`` + ``backward`` + ``optimizer.step``
(fp32, no AMP on the CPU). Steps alternate UNet, HCP, UNet, HCP, … in one process; the first
``--warmup`` pairs are not counted. Wall-clock and process CPU seconds are recorded per step
(CPU time is the robust one on a shared machine). ``--profile`` adds timings of the metric loss
alone (forward + backward on a fixed embedding) and of its parts.

Prints one JSON object per line: ``{"event": "step", ...}`` per step, ``{"event": "metric_loss",
...}`` with ``--profile``, and a final ``{"event": "summary", ...}`` with the ratio HCP/UNet of the
median step times (the paper: MetricUNet needs < 10% more training time, i.e. ratio < 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from voxmetric.cases import load_cases  # noqa: E402
from voxmetric.data import prepare_case  # noqa: E402
from voxmetric.sampling import make_loader  # noqa: E402
from voxmetric.learning.metric import boundary_mask, sample_tuples, tuple_loss, voxel_metric_loss  # noqa: E402
from voxmetric.methods import get_method  # noqa: E402
from voxmetric.phantom import write_cases  # noqa: E402

METHODS = ("UNet", "MetricUNet-HCP")


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


def machine() -> dict:
    return {"processor": platform.processor() or platform.machine(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def real_batch(batch: int, phantom_seed: int, work: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """One batch of slab patches from a CT phantom through the real data path."""
    method = get_method("MetricUNet-HCP")
    recipe = method.data_recipe(method.default_config())
    manifest = write_cases(work / "phantom", 1, "ct", seed=phantom_seed)
    case = prepare_case(load_cases(manifest)[0], recipe, cache_dir=work / "cache")
    dataset = method.dataset([case], method.default_config(), seed=0)
    b = next(iter(make_loader(dataset, batch, "cpu", 0, seed=0)))
    y = b["label"]
    fg = y == 1
    info = {"case_shape_zyx": list(case.image.shape), "batch_image": list(b["image"].shape),
            "images_with_fg": int(fg.flatten(1).any(1).sum()),
            "fg_pixels_per_image_mean": round(float(fg.flatten(1).sum(1).float().mean()), 1),
            "boundary_pixels_per_image_mean": round(float(boundary_mask(fg).flatten(1).sum(1).float().mean()), 1)}
    return b, info


def make_runner(name: str, seed: int) -> tuple:
    method = get_method(name)
    cfg = method.default_config()
    torch.manual_seed(seed)  # same initial weights for both networks
    model = method.build(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    return method, cfg, model, opt


def one_step(runner: tuple, batch: dict, it: int) -> tuple[float, float, dict]:
    method, cfg, model, opt = runner
    t0, c0 = time.perf_counter(), time.process_time()
    loss, logs = method.loss(model, batch, cfg, None)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, {k: round(float(v), 4) for k, v in logs.items()}


def profile_metric_loss(runner: tuple, batch: dict, repeats: int) -> None:
    """Time the metric loss alone (forward + backward) on a fixed conv6d embedding, and its parts."""
    method, cfg, model, _ = runner
    with torch.no_grad():
        logits, emb = model(batch["image"])
    prob = torch.softmax(logits, 1)[:, 1]
    y = batch["label"]
    mcfg = method.metric_config(cfg)
    parts: dict[str, list[float]] = {"loss_fwd_bwd": [], **{f"sample_{s}": [] for s in mcfg.strategies},
                                     **{f"tuple_loss_fwd_bwd_{s}": [] for s in mcfg.strategies}}
    for _ in range(repeats + 1):  # first round = warm-up
        e = emb.clone().requires_grad_(True)
        t0 = time.perf_counter()
        voxel_metric_loss(e, y, prob, mcfg).backward()
        parts["loss_fwd_bwd"].append(time.perf_counter() - t0)
        for s in mcfg.strategies:
            t0 = time.perf_counter()
            tuples = sample_tuples(s, y, prob, mcfg.k, mcfg.m, mcfg.tau)
            parts[f"sample_{s}"].append(time.perf_counter() - t0)
            e = emb.clone().requires_grad_(True)
            t0 = time.perf_counter()
            tuple_loss(e, tuples, mcfg).backward()
            parts[f"tuple_loss_fwd_bwd_{s}"].append(time.perf_counter() - t0)
    emit({"event": "metric_loss", "embedding": list(emb.shape), "repeats": repeats,
          "median_ms": {k: round(1000 * statistics.median(v[1:]), 2) for k, v in parts.items()}})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--steps", type=int, default=10, help="counted steps per method")
    ap.add_argument("--warmup", type=int, default=2, help="uncounted steps per method")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--phantom-seed", type=int, default=5000)
    ap.add_argument("--profile", action="store_true", help="also time the metric loss alone")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    with tempfile.TemporaryDirectory(prefix="vm-bench-") as tmp:
        batch, info = real_batch(a.batch, a.phantom_seed, Path(tmp))
    emit({"event": "setup", "methods": list(METHODS), "steps": a.steps, "warmup": a.warmup,
          "phantom_seed": a.phantom_seed, **info, **machine()})
    runners = {name: make_runner(name, seed=0) for name in METHODS}
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in METHODS}
    for it in range(a.warmup + a.steps):
        for name in METHODS:  # interleaved: A B A B ...
            wall, cpu, logs = one_step(runners[name], batch, it)
            counted = it >= a.warmup
            if counted:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
            emit({"event": "step", "method": name, "step": it, "counted": counted, "wall_s": round(wall, 4),
                  "cpu_s": round(cpu, 4), **logs})
    if a.profile:
        profile_metric_loss(runners["MetricUNet-HCP"], batch, repeats=5)

    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    pair = {k: statistics.median(h / u for h, u in zip(times["MetricUNet-HCP"][k], times["UNet"][k]))
            for k in ("wall", "cpu")}
    emit({"event": "summary", "benchmark": "train_step", "batch": [a.batch, 3, 64, 64], "steps": a.steps,
          "warmup": a.warmup,
          "median_wall_s": {n: round(m["wall"], 4) for n, m in med.items()},
          "median_cpu_s": {n: round(m["cpu"], 4) for n, m in med.items()},
          "ratio_hcp_unet_wall": round(med["MetricUNet-HCP"]["wall"] / med["UNet"]["wall"], 4),
          "ratio_hcp_unet_cpu": round(med["MetricUNet-HCP"]["cpu"] / med["UNet"]["cpu"], 4),
          "median_pairwise_ratio_wall": round(pair["wall"], 4), "median_pairwise_ratio_cpu": round(pair["cpu"], 4),
          "paper_claim": "< 1.10", **machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
