"""Multi-organ phantoms: 3D U-Net with vs without the voxel-level SimSiam term ([VS], issue 8).

    python Testing/Benchmarks/bench_simsiam.py [--work DIR] [--iterations 600] [--seeds 0,1]
        [--device cpu|cuda] [--methods UNet3D-small,VoxelSimSiam-small]

Same data, budget and seeds for both: 3D U-Net (``UNet3D-small``, soft Dice) and the same network
with λ·L_feature (``VoxelSimSiam-small``, λ = 10, three layers, 64-d heads), whole-volume recipe
([VS] §3.1) on a fixed grid, Adam 1e-3 / wd 1e-5 (the paper's), batch 2. Data: realistic CT
phantoms (``voxmetric.phantom``) with five organs (prostate, bladder, rectum, femoral heads):
10 training, 2 validation (best checkpoint by mean DSC), 8 held-out. Held-out scoring runs the
trained package through the pipeline (``segment``: whole body as ROI, probabilities pasted back to
the scan's grid) and scores every organ on the native grid (DSC, HD95 in mm). Step time: the
training step of each method on the same batch, interleaved, CPU seconds (1 thread; on CUDA:
wall seconds after a synchronise). ``--methods UNet3D,VoxelSimSiam`` runs the paper-width networks
(16.5 M parameters; a GPU's job).
Prints one JSON object per line; the last lines are the summary table rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ORGANS = ("Prostate", "Bladder", "Rectum", "Femoral head left", "Femoral head right")
METHODS = ("UNet3D-small", "VoxelSimSiam-small")


def emit(d: dict) -> None:
    print(json.dumps(d), flush=True)


def write_phantoms(folder: Path, seeds: range) -> list:
    from voxmetric import io
    from voxmetric.cases import CaseRecord, write_manifest
    from voxmetric.phantom import LABELS, make_case

    records = []
    for s in seeds:
        img, seg = folder / f"p{s}.nrrd", folder / f"p{s}.seg.nrrd"
        if not seg.exists():
            c = make_case(s, "ct", shape=(40, 96, 96), spacing=(3.5, 3.5, 4.0))
            io.write_volume(c.image, img)
            io.write_segmentation(seg, c.labels, [io.segment_info(n, v) for n, v in LABELS.items()])
        records.append(CaseRecord(f"p{s}", img, seg, ",".join(ORGANS), "ct"))
    write_manifest(records, folder / "manifest.json")
    return records


def config(method, args):
    return method.make_config({"mode": "grid", "grid": args.grid, "spacing_mm": 3.0, "augment": True})


def train_one(name: str, seed: int, args, train, val) -> Path:
    from voxmetric import models
    from voxmetric.methods import get_method
    from voxmetric.training import TrainConfig, train as run

    method = get_method(name)
    cfg = config(method, args)
    out = args.work / "runs" / f"{name}-seed{seed}-{args.iterations}"  # a run is reused only for the same budget
    pkg = out / "package"
    if pkg.exists():
        return pkg
    tcfg = TrainConfig(iterations=args.iterations, batch_size=2, optimizer="adam", lr=1e-3, weight_decay=1e-5,
                       val_every=max(1, args.iterations // 6), checkpoint_every=100, log_every=20, seed=seed,
                       device=args.device, val_batch=2)
    t0 = time.monotonic()

    def relay(e: dict) -> None:
        if e["event"] in ("iteration", "validation", "done", "error"):
            emit({"method": name, "seed": seed, **{k: v for k, v in e.items() if k not in ("cases",)}})

    res = run(method, cfg, tcfg, train, val, out / "work", emit=relay)
    card = {"name": f"{name}-seed{seed}", **res.card_fields, "intended_use": "benchmark"}
    models.save_package(pkg, card, res.state_dict)
    emit({"event": "trained", "method": name, "seed": seed, "seconds": round(time.monotonic() - t0, 1)})
    return pkg


def score(pkg: Path, name: str, seed: int, test, device: str = "cpu") -> list[dict]:
    from voxmetric import io, models
    from voxmetric.metrics import evaluate_masks

    pipe = models.load_pipeline(str(pkg), "ct", device, stages=("refiner",))
    rows = []
    for rec in test:
        vol = io.read_volume(rec.image)
        truth, _ = io.read_label_map(rec.label, ORGANS, reference=vol)
        res = pipe.segment(vol)
        for k, organ in enumerate(ORGANS, 1):
            m = evaluate_masks(res.mask.array == k, truth.array == k, vol.spacing_zyx)
            rows.append({"method": name, "seed": seed, "case": rec.id, "organ": organ, "dsc": m["dsc"],
                         "hd95": m["hd95"]})
    return rows


def step_times(args, batch) -> dict:
    """Seconds per training step of each method on the same batch, interleaved: CPU seconds
    (1 thread), or wall seconds after a synchronise on CUDA."""
    import torch

    from voxmetric.methods import get_method
    from voxmetric.training import _StepContext

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    batch = {k: v.to(dev) for k, v in batch.items()}
    clock = time.perf_counter if cuda else time.process_time
    runners = []
    for name in args.methods:
        method = get_method(name)
        cfg = config(method, args)
        torch.manual_seed(0)
        model = method.training_model(cfg, method.build(cfg, len(ORGANS) + 1)).train().to(dev)
        opts = {g: torch.optim.Adam(p, 1e-3) for g, p in method.optimizer_groups(model, cfg).items()}
        ctx = _StepContext(opts, torch.amp.GradScaler("cuda", enabled=False), dev, 100)
        runners.append((name, method, cfg, model, ctx))
    times: dict[str, list[float]] = {n: [] for n in args.methods}
    for i in range(args.step_repeats + 1):
        for name, method, cfg, model, ctx in runners:
            c0 = clock()
            method.training_step(model, batch, cfg, ctx)
            if cuda:
                torch.cuda.synchronize()
            if i:  # the first round warms up
                times[name].append(clock() - c0)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {"event": "step_time", ("wall_s" if cuda else "cpu_s"): {n: round(v, 4) for n, v in med.items()},
            "ratio_simsiam_over_unet": round(med[args.methods[1]] / med[args.methods[0]], 3),
            "repeats": args.step_repeats, "device": dev.type}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "voxmetric-bench-simsiam")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--seeds", default="0,1", help="trainer seeds (the data stay the same)")
    p.add_argument("--grid", default="32,64,64")
    p.add_argument("--step-repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", default=",".join(METHODS), help="the U-Net preset, then the SimSiam preset")
    args = p.parse_args()
    args.methods = tuple(m.strip() for m in args.methods.split(","))
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    emit({"event": "machine", "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
          "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", "methods": args.methods,
          "loadavg_1min": round(os.getloadavg()[0], 2)})
    (args.work / "train").mkdir(exist_ok=True)
    (args.work / "val").mkdir(exist_ok=True)
    (args.work / "test").mkdir(exist_ok=True)
    train = write_phantoms(args.work / "train", range(7000, 7010))
    val = write_phantoms(args.work / "val", range(7100, 7102))
    test = write_phantoms(args.work / "test", range(7200, 7208))

    rows: list[dict] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.methods:
            pkg = train_one(name, seed, args, train, val)
            case_rows = score(pkg, name, seed, test, args.device)
            for r in case_rows:
                emit({"event": "test_case", **r})
            rows += case_rows

    from voxmetric.data import prepare_case
    from voxmetric.methods import get_method

    method = get_method(args.methods[0])
    prepared = [prepare_case(r, method.data_recipe(config(method, args)), args.work / "cache") for r in train[:2]]
    ds = method.dataset(prepared, config(method, args), seed=0)
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ds[0]}
    emit(step_times(args, batch))

    for name in args.methods:
        for organ in (*ORGANS, "mean"):
            sel = [r for r in rows if r["method"] == name and (organ == "mean" or r["organ"] == organ)]
            dsc = [r["dsc"] for r in sel]
            hd = [r["hd95"] for r in sel if np.isfinite(r["hd95"])]
            emit({"event": "summary", "method": name, "organ": organ, "dsc_mean": round(float(np.mean(dsc)), 3),
                  "dsc_sd": round(float(np.std(dsc, ddof=1)), 3), "hd95_median_mm": round(float(np.median(hd)), 1)
                  if hd else None, "n": len(sel), "failed": len(sel) - len(hd)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
