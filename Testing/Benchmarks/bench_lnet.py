"""Stage-1 localizers on CT phantoms: the centroid localizer (method ``Localizer``, §2.3) vs L-Net
(method ``LNet``, §4 / §6.2 option B), trained from scratch with the same budget, cases and seeds,
evaluated on held-out phantoms with the same refiner; prints JSON lines.

    python Testing/Benchmarks/bench_lnet.py [--train 8] [--val 2] [--test 8] [--iterations 400]
        [--batch 8] [--lr 1e-3] [--threads 1] [--work DIR] [--png Resources/lnet_vs_centroid.png]
        [--lsnet-iterations N --lsnet-batch 4]

Phantoms: ``voxmetric.phantom.make_case(seed, "ct")`` at their random native size (in-plane
0.6–1.2 mm, up to 512², 1–3 mm slices); training seeds 1000…, validation 2000…, held-out 5000…
(as ``Testing/Benchmarks/eval_bundled_models.py``). Both localizers train on the same prepared 4 mm
cases with the same TrainConfig (Adam, lr, batch, iterations, seed 0, CPU, weight decay 1e-5) — far
below a real schedule; the bundled localizer ``synth-localizer`` (trained on domain-randomised
synthetic scans, never on these phantoms) is evaluated too, as a reference row.

Per held-out case and localizer (pipeline defaults: threshold 0.5, largest component, extent +
15 mm per side clamped to [60, 128] mm):

* ``iou_raw``: IoU of the first-stage box — the extent of the kept coarse component, before the
  margin (the Localizer's coarse mask; L-Net's union of slice boxes) — with the *true box* = the
  bounding box of the prostate label (voxel edges). This is the paper's first-stage mIoU (I-04).
* ``iou_roi``: IoU of the pipeline's ROI box with the same ROI rule applied to the label (label
  box + 15 mm per side, clamped).
* ``contains``: the prostate was found and the ROI holds every prostate voxel; ``volume_ml``: the
  ROI's volume (the 128 mm "not found" box when nothing was found).
* ``dsc``: the whole pipeline's Dice with the SAME refiner, the bundled
  ``Resources/Models/synth-metricunet-hcp`` (1.5 mm MetricUNet-HCP).

With ``--lsnet-iterations N`` the joint ``LSNet`` (default settings: 2 mm, canvas 256, RoI 128²) is
trained too (N iterations of ``--lsnet-batch``, same cases, Adam, lr) and run as a joint model
(localizer and refiner slots): its rows use its own S-Net output as the coarse mask and the
segmentation. A rerun with the same ``--work`` reuses finished training runs.

Boxes are axis-aligned with the scan (phantom axes may be flipped, never rotated), so IoUs are
computed on their LPS axis-aligned extents. The PNG shows one held-out phantom with both ROIs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

METHODS = ("Localizer", "LNet")
COLOURS = {"Localizer": "cyan", "LNet": "magenta", "synth-localizer": "orange", "LSNet": "yellow"}
STYLES = {"synth-localizer": "--", "LSNet": ":"}


def log(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def aabb(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return points.min(0), points.max(0)


def iou(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    inter = np.prod(np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0, None))
    va, vb = np.prod(a[1] - a[0]), np.prod(b[1] - b[0])
    return float(inter / (va + vb - inter))


def mask_extent(vol: Any) -> tuple[np.ndarray, np.ndarray]:
    """LPS axis-aligned extent (voxel edges) of the non-zero voxels of a Volume."""
    idx = np.argwhere(np.asarray(vol.array) > 0)[:, ::-1]  # x, y, z
    lo, hi = idx.min(0) - 0.5, idx.max(0) + 0.5
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return aabb(vol.index_to_physical(corners))


def phantoms(work: Path, what: str, n: int, seed: int) -> list[Any]:
    from voxmetric.cases import load_cases
    from voxmetric.phantom import write_cases

    manifest = work / f"phantoms-{what}" / "manifest.json"
    if not manifest.exists():
        write_cases(manifest.parent, n, modality="ct", seed=seed)
    return load_cases(manifest)[:n]


def train_localizer(name: str, train: list[Any], val: list[Any], a: argparse.Namespace, iterations: int = 0,
                    batch: int = 0) -> tuple[Any, dict]:
    import torch

    from voxmetric import training
    from voxmetric.methods import get_method
    from voxmetric.pipeline import Stage

    method = get_method(name)
    cfg = method.make_config({"per_case": 200})
    iterations, batch = iterations or a.iterations, batch or a.batch
    tcfg = training.TrainConfig(iterations=iterations, batch_size=batch, optimizer="adam", lr=a.lr,
                                weight_decay=1e-5, amp=False, val_every=iterations, checkpoint_every=min(iterations, 50),
                                log_every=max(1, iterations // 10), seed=0, device="cpu", val_batch=8)
    out = a.work / f"run-{name}"
    resume = (out / "checkpoints" / "last.safetensors").exists()
    t0, c0 = time.perf_counter(), time.process_time()
    res = training.train(method, cfg, tcfg, train, val, out, resume=resume,
                         emit=lambda e: log({"method": name, **e}) if e["event"] in ("iteration", "done") else None)
    torch.set_num_threads(a.threads)
    net = method.build(cfg)
    net.load_state_dict(res.state_dict)
    row = {"method": name, "parameters": sum(p.numel() for p in net.parameters()), "iterations": iterations,
           "batch": batch, "train_cpu_s": round(time.process_time() - c0, 1),
           "train_wall_s": round(time.perf_counter() - t0, 1), "val_dsc": res.metrics.get("dsc"), "resumed": resume}
    return Stage(method, cfg, net.eval(), name), row


def overview(case: Any, boxes: dict[str, Any], path: Path, title: str) -> None:
    """Axial, coronal and sagittal slices through the prostate centre with every ROI box and the
    label's contour (green)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from voxmetric.phantom import LABELS

    img, truth = case.image, case.labels.array == LABELS["Prostate"]
    a = np.asarray(img.array, np.float32)
    c = np.round(np.argwhere(truth).mean(0)).astype(int)  # z, y, x
    sx, sy, sz = img.spacing
    views = [("axial", lambda v: v[c[0]], (0, 1), sy / sx, "upper"),
             ("coronal", lambda v: v[:, c[1], :], (0, 2), sz / sx, "lower"),
             ("sagittal", lambda v: v[:, :, c[2]], (1, 2), sz / sy, "lower")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.9))
    for ax, (name, cut, (ci, ri), aspect, origin) in zip(axes, views):
        ax.imshow(cut(a), cmap="gray", vmin=-200, vmax=250, aspect=aspect, origin=origin, interpolation="nearest")
        ax.contour(cut(truth).astype(np.float32), levels=[0.5], colors="lime", linewidths=1.0)
        for label, box in boxes.items():
            corners = img.physical_to_index(box.corners)
            lo, hi = corners.min(0), corners.max(0)
            ax.add_patch(Rectangle((lo[ci], lo[ri]), hi[ci] - lo[ci], hi[ri] - lo[ri], fill=False,
                                   ec=COLOURS.get(label, "yellow"), ls=STYLES.get(label, "-"), lw=1.4))
        ax.set_title(name)
        ax.axis("off")
    legend = " · ".join(f"{COLOURS.get(k, 'yellow')}: {k} ROI" for k in boxes) + " · green: prostate label"
    fig.suptitle(f"{title}\n{legend}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--train", type=int, default=8)
    p.add_argument("--val", type=int, default=2)
    p.add_argument("--test", type=int, default=8)
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bundled", action="store_true", help="skip the bundled localizer's reference row")
    p.add_argument("--lsnet-iterations", type=int, default=0, help="also train and run the joint LSNet (0: no)")
    p.add_argument("--lsnet-batch", type=int, default=4)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "voxmetric-bench-lnet")
    p.add_argument("--png", type=Path, default=ROOT / "Resources" / "lnet_vs_centroid.png")
    a = p.parse_args()
    import torch

    from voxmetric import models
    from voxmetric.data import DataRecipe, prepare_case
    from voxmetric.metrics import evaluate_masks
    from voxmetric.phantom import LABELS, make_case
    from voxmetric.pipeline import Pipeline, PipelineConfig, Stage, roi_from_mask

    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    t_all, c_all = time.perf_counter(), time.process_time()
    log({"event": "start", "loadavg": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
         "threads": a.threads, "args": {k: str(v) for k, v in vars(a).items()}})
    recipe = DataRecipe(spacing_mm=4.0, region="body")  # both localizers' recipe: one preparation for both
    prep = {what: [prepare_case(r, recipe, cache_dir=a.work / "cache") for r in phantoms(a.work, what, n, seed)]
            for what, n, seed in (("train", a.train, 1000), ("val", a.val, 2000))}
    log({"event": "prepared", "cpu_s": round(time.process_time() - c_all, 1)})

    refiner = models.load_stage(ROOT / "Resources" / "Models" / "synth-metricunet-hcp")
    stages: dict[str, Stage] = {}
    for name in METHODS:
        stages[name], row = train_localizer(name, prep["train"], prep["val"], a)
        log({"event": "trained", **row})
    joint: Stage | None = None
    if a.lsnet_iterations:
        recipe2 = DataRecipe(spacing_mm=2.0, region="label_box")
        prep2 = {what: [prepare_case(r, recipe2, cache_dir=a.work / "cache") for r in phantoms(a.work, what, n, seed)]
                 for what, n, seed in (("train", a.train, 1000), ("val", a.val, 2000))}
        joint, row = train_localizer("LSNet", prep2["train"], prep2["val"], a, a.lsnet_iterations, a.lsnet_batch)
        log({"event": "trained", **row})
    if not a.no_bundled:
        stages["synth-localizer"] = models.load_stage(ROOT / "Resources" / "Models" / "synth-localizer")

    cfg = PipelineConfig()
    rows: dict[str, list[dict]] = {k: [] for k in [*stages, *(["LSNet"] if a.lsnet_iterations else [])]}
    png_case = None
    for seed in range(5000, 5000 + a.test):
        case = make_case(seed, "ct")
        truth = case.labels.array == LABELS["Prostate"]
        truth_vol = case.labels.with_array(truth.astype(np.uint8))
        true_box = mask_extent(truth_vol)
        true_roi = aabb(roi_from_mask(truth_vol, cfg)[0].corners)
        pts = case.image.index_to_physical(np.argwhere(truth)[:, ::-1].astype(float))
        boxes = {}
        runs = [(name, loc, refiner) for name, loc in stages.items()] + ([("LSNet", joint, joint)] if joint else [])
        for name, loc, ref in runs:
            pipe = Pipeline(loc, ref, "ct", cfg)
            torch.set_num_threads(a.threads)
            t0, c0 = time.perf_counter(), time.process_time()
            res = pipe.segment(case.image)
            assert res.mask is not None and res.localization is not None
            coarse = res.localization.coarse_mask
            row = {"event": "case", "seed": seed, "localizer": name, "found": res.found,
                   "iou_raw": round(iou(mask_extent(coarse), true_box), 4) if coarse.array.any() else 0.0,
                   "iou_roi": round(iou(aabb(res.box.corners), true_roi), 4),
                   "contains": bool(res.found and res.box.contains(pts).all()),
                   "covered": round(float(res.box.contains(pts).mean()), 4),
                   "volume_ml": round(float(np.prod(res.box.size)) / 1000, 1),
                   "dsc": round(float(evaluate_masks(res.mask.array, truth, case.image.spacing_zyx)["dsc"]), 4),
                   "localize_s": round(res.timings.get("localize", 0.0), 2),
                   "cpu_s": round(time.process_time() - c0, 2), "wall_s": round(time.perf_counter() - t0, 2)}
            rows[name].append(row)
            boxes[name] = res.box
            log(row)
        if png_case is None:
            png_case = (case, boxes)
    for name, rs in rows.items():
        med = lambda k: round(statistics.median(r[k] for r in rs), 4)  # noqa: E731
        mean = lambda k: round(statistics.mean(r[k] for r in rs), 4)  # noqa: E731
        log({"event": "summary", "localizer": name, "cases": len(rs), "found": sum(r["found"] for r in rs),
             "iou_raw_mean": mean("iou_raw"), "iou_raw_median": med("iou_raw"), "iou_roi_mean": mean("iou_roi"),
             "contains_fraction": round(sum(r["contains"] for r in rs) / len(rs), 3),
             "volume_ml_mean": mean("volume_ml"), "dsc_mean": mean("dsc"), "dsc_median": med("dsc"),
             "dsc_min": round(min(r["dsc"] for r in rs), 4)})
    if png_case is not None and a.png:
        case, boxes = png_case
        overview(case, boxes, a.png, f"held-out CT phantom {case.seed}: stage-1 ROI boxes")
    log({"event": "done", "cpu_s": round(time.process_time() - c_all, 1),
         "wall_s": round(time.perf_counter() - t_all, 1), "loadavg": [round(v, 2) for v in os.getloadavg()],
         "png": str(a.png)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
