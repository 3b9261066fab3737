"""Small ablation on synthetic low-contrast CT phantoms: UNet vs MetricUNet-R vs MetricUNet-HCP
(GitHub issue 3), with the real trainer and whole-case evaluation on held-out phantoms.

    nice -n 10 python Testing/Benchmarks/ablation.py [--work DIR] [--iterations 400] [--batch 8]
        [--methods UNet,MetricUNet-R,MetricUNet-HCP] [--spacing 2] [--patch 32] [--base 16] [--embed 64]

Every method gets the same budget and data: the same training / validation / test phantoms
(``phantom.write_cases``; seeds ``--train-seed``…, ``--val-seed``…, ``--test-seed``…), the same
preparation (``data.prepare_case`` with the methods' shared recipe, done once), the same trainer
settings and seed (``training.train``: iterations, batch, optimiser, lr, poly schedule, patch
stream), and the same network size; only the loss differs (the Table II presets). The weights
with the best validation DSC are kept (``training.train``'s choice). Test evaluation is
``training.validate`` on the held-out phantoms: whole-slice inference over the label box + 20 mm
margin (the stage-2 refiner's setting), thresholded at 0.5, then ``metrics.evaluate_masks`` (DSC,
ASD and HD95 in mm on the prepared grid).

The defaults are scaled down so that three runs fit in ~30 min on 2 shared CPU cores: a 2 mm
grid, 32² patches (64 mm, the paper's 64 px at 1 mm), encoder base 16 and embedding 64 channels
(the paper: 1 mm, 64², 32/256), Adam. Everything is recorded in the ``config`` event.

Prints one JSON object per line: ``config``, per-method trainer events (``iteration`` /
``validation`` / ``done``, tagged with ``method``), per test case ``test_case``, per method
``test_summary`` (mean, std, median, min, max, n, n_inf per metric) and a final ``table``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from voxmetric import training  # noqa: E402
from voxmetric.cases import load_cases  # noqa: E402
from voxmetric.data import prepare_cases  # noqa: E402
from voxmetric.methods import get_method  # noqa: E402
from voxmetric.metrics import summarize  # noqa: E402
from voxmetric.phantom import write_cases  # noqa: E402

KEYS = ("dsc", "asd", "hd95")


def emit(event: dict) -> None:
    print(json.dumps(training._finite(event)), flush=True)


def phantoms(work: Path, what: str, n: int, seed: int, shape: tuple[int, int, int] | None) -> list:
    folder = work / f"phantoms-{what}-{seed}-{n}"
    manifest = folder / "manifest.json"
    if not manifest.exists():
        write_cases(folder, n, "ct", seed=seed, shape=shape)
    return load_cases(manifest)


def fmt(s: dict, digits: int) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} / {s['median']:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "voxmetric-ablation")
    ap.add_argument("--methods", default="UNet,MetricUNet-R,MetricUNet-HCP")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--optimizer", default="adam", choices=training.OPTIMIZERS)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-5)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="trainer seed (weights, patch stream, anchors)")
    ap.add_argument("--train-cases", type=int, default=8)
    ap.add_argument("--val-cases", type=int, default=2)
    ap.add_argument("--test-cases", type=int, default=6)
    ap.add_argument("--train-seed", type=int, default=100)
    ap.add_argument("--val-seed", type=int, default=200)
    ap.add_argument("--test-seed", type=int, default=300)
    ap.add_argument("--shape", type=int, nargs=3, default=[80, 256, 256], metavar=("Z", "Y", "X"),
                    help="phantom grid (z y x); spacing stays random per seed. 0 0 0 = random FOV too")
    ap.add_argument("--spacing", type=float, default=2.0, help="training/evaluation grid (mm); paper: 1")
    ap.add_argument("--patch", type=int, default=32, help="paper: 64 (at 1 mm)")
    ap.add_argument("--base", type=int, default=16, help="encoder base width; paper: 32")
    ap.add_argument("--embed", type=int, default=64, help="embedding (conv6d) width; paper: 256")
    ap.add_argument("--per-case", type=int, default=200)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="extra method setting for every method, e.g. --set lam=0.001 (repeatable)")
    ap.add_argument("--tag", default="default", help="run folder <work>/runs/<tag>/<method> (phantoms are shared)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.monotonic()

    methods = [get_method(n.strip()) for n in a.methods.split(",") if n.strip()]
    overrides = {"spacing_mm": a.spacing, "patch": a.patch, "base": a.base, "embed_channels": a.embed,
                 "per_case": a.per_case}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set expects FIELD=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    cfgs = {m.name: m.make_config(overrides) for m in methods}
    recipes = {n: m.data_recipe(cfgs[n]) for n, m in zip(cfgs, methods)}
    recipe = next(iter(recipes.values()))
    assert all(r == recipe for r in recipes.values()), "the methods must share one data recipe"
    tcfg = training.TrainConfig(iterations=a.iterations, batch_size=a.batch, optimizer=a.optimizer, lr=a.lr,
                                weight_decay=a.weight_decay, amp=False, val_every=a.val_every,
                                checkpoint_every=a.iterations, log_every=max(1, a.iterations // 20), seed=a.seed,
                                device="cpu", val_batch=16, val_margin_mm=20.0)
    emit({"event": "config", "methods": [m.name for m in methods], "overrides": overrides,
          "train_config": {k: getattr(tcfg, k) for k in ("iterations", "batch_size", "optimizer", "lr",
                                                         "momentum", "weight_decay", "poly_power", "seed",
                                                         "val_every", "val_margin_mm")},
          "recipe": {k: getattr(recipe, k) for k in ("spacing_mm", "slab", "patch", "per_case", "region",
                                                     "margin_mm", "fg_fraction", "augment")},
          "cases": {"train": [a.train_cases, a.train_seed], "val": [a.val_cases, a.val_seed],
                    "test": [a.test_cases, a.test_seed]}, "phantom_shape_zyx": a.shape,
          "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                      "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                      "loadavg_1min": round(os.getloadavg()[0], 2)}})

    shape = None if not any(a.shape) else tuple(a.shape)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    sets = {}
    for what, n, seed in (("train", a.train_cases, a.train_seed), ("val", a.val_cases, a.val_seed),
                          ("test", a.test_cases, a.test_seed)):
        sets[what] = prepare_cases(phantoms(a.work, what, n, seed, shape), recipe, cache_dir=a.work / "cache")
    emit({"event": "data", "seconds": round(time.monotonic() - t0, 1),
          **{f"{k}_shapes_zyx": [list(c.image.shape) for c in v] for k, v in sets.items()}})

    summaries: dict[str, dict] = {}
    for method in methods:
        cfg = cfgs[method.name]
        out = a.work / "runs" / a.tag / method.name
        shutil.rmtree(out, ignore_errors=True)

        def tagged(event: dict, name: str = method.name) -> None:
            if event.get("event") in ("iteration", "validation", "done", "error", "log"):
                event = {k: v for k, v in event.items() if k != "cases"}
                emit({"method": name, **event})

        t0 = time.monotonic()
        result = training.train(method, cfg, tcfg, sets["train"], sets["val"], out, emit=tagged)
        train_s = time.monotonic() - t0
        model = method.build(cfg)
        model.load_state_dict(result.state_dict)
        test = training.validate(method, model, cfg, sets["test"], recipe, torch.device("cpu"), tcfg, ("Prostate",))
        for row in test["cases"]:
            emit({"event": "test_case", "method": method.name, **row})
        summ = summarize(test["cases"], keys=KEYS)
        summaries[method.name] = summ
        emit({"event": "test_summary", "method": method.name, "train_seconds": round(train_s, 1),
              "best_iteration": result.best_iteration, "best_val_dsc": result.metrics.get("dsc"), **summ})

    rows = [f"| {n} | {fmt(s['dsc'], 3)} | {fmt(s['asd'], 2)} | {fmt(s['hd95'], 2)} | "
            f"{max(s[k]['n_inf'] for k in KEYS)} |" for n, s in summaries.items()]
    table = "\n".join(["| Method | DSC | ASD (mm) | HD95 (mm) | failed |", "|---|---|---|---|---|", *rows])
    emit({"event": "table", "markdown": table, "total_seconds": round(time.monotonic() - t_start, 1),
          "note": "cells: mean ± std / median over the held-out phantoms (finite values)"})
    return 0 if all(not math.isnan(s["dsc"]["mean"]) for s in summaries.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
