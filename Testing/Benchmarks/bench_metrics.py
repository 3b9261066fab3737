"""Speed and agreement of voxmetric.metrics against MONAI (and medpy when installed).

    python Testing/Benchmarks/bench_metrics.py [--medpy]     # timing, 512×512×200 ellipsoid pair
    python Testing/Benchmarks/bench_metrics.py --crosscheck  # max |ours − reference| on random shapes

Prints one JSON object per line. Reference definitions used for the comparison:

* MONAI ``compute_hausdorff_distance(percentile=95)`` = max of the two directed 95th percentiles
  (our default, METHODS I-01); surfaces = scipy erosion with the 6-connected cross (same as ours);
  distances by KD-tree on CPU (exact, float32). MONAI's ``compute_average_surface_distance(
  symmetric=True)`` pools both directed sets (weights the side with more surface voxels); we compare
  our ASD with the mean of MONAI's two *directed* ASDs and report the pooled gap separately.
* medpy 0.5: ``asd`` is directed, so our ASD is compared with ½(asd(S,G) + asd(G,S)); medpy's
  ``assd`` pools both directed sets (like MONAI's symmetric ASD; medpy < 0.5 averaged the two means);
  ``hd`` = ours; ``hd95`` pools both directed sets (= our ``hd95_definition="pooled"``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from voxmetric.metrics import evaluate_masks  # noqa: E402


def ellipsoid(shape: tuple[int, int, int], spacing_zyx: tuple[float, float, float], center_mm, radii_mm) -> np.ndarray:
    """Bool (z, y, x) ellipsoid with centre/radii in mm (z, y, x)."""
    axes = [((np.arange(n) + 0.5) * s - c) / r for n, s, c, r in zip(shape, spacing_zyx, center_mm, radii_mm)]
    z, y, x = axes
    return (z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2) <= 1.0


def monai_metrics(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    sp = [float(s) for s in spacing]
    kw = dict(include_background=True, spacing=sp)
    d_pr = float(compute_average_surface_distance(p, r, symmetric=False, **kw))
    d_rp = float(compute_average_surface_distance(r, p, symmetric=False, **kw))
    return {
        "dsc": float(2 * (pred & ref).sum() / (pred.sum() + ref.sum())),
        "asd": 0.5 * (d_pr + d_rp),
        "asd_pooled": float(compute_average_surface_distance(p, r, symmetric=True, **kw)),
        "hd": float(compute_hausdorff_distance(p, r, **kw)),
        "hd95": float(compute_hausdorff_distance(p, r, percentile=95, **kw)),
    }


def medpy_metrics(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float] | None:
    try:
        from medpy.metric import binary
    except ImportError:
        return None
    return {
        "dsc": float(binary.dc(pred, ref)),
        "asd": 0.5 * float(binary.asd(pred, ref, voxelspacing=spacing) + binary.asd(ref, pred, voxelspacing=spacing)),
        "asd_pooled": float(binary.assd(pred, ref, voxelspacing=spacing)),
        "hd": float(binary.hd(pred, ref, voxelspacing=spacing)),
        "hd95_pooled": float(binary.hd95(pred, ref, voxelspacing=spacing)),
    }


def random_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Two overlapping random blobs (ellipsoids, unions, holes, a stray island) on a random grid."""
    shape = tuple(int(n) for n in rng.integers(16, 48, size=3))
    spacing = (float(rng.uniform(1.0, 4.0)), float(rng.uniform(0.4, 1.2)), float(rng.uniform(0.4, 1.2)))
    ext = np.array(shape) * np.array(spacing)

    def blob() -> np.ndarray:
        m = np.zeros(shape, bool)
        for _ in range(int(rng.integers(1, 4))):
            c = ext * rng.uniform(0.3, 0.7, 3)
            m |= ellipsoid(shape, spacing, c, ext * rng.uniform(0.08, 0.3, 3))
        if rng.random() < 0.3:  # a hole
            m &= ~ellipsoid(shape, spacing, ext * rng.uniform(0.4, 0.6, 3), ext * 0.05)
        if rng.random() < 0.3:  # a stray island
            m[tuple(int(rng.integers(0, n)) for n in shape)] = True
        return m

    return blob(), blob(), spacing


def crosscheck(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    worst: dict[str, float] = {}
    for i in range(n):
        pred, ref, sp = random_pair(rng)
        if not pred.any() or not ref.any():
            continue
        ours = evaluate_masks(pred, ref, sp)
        pooled = evaluate_masks(pred, ref, sp, hd95_definition="pooled")["hd95"]
        mo = monai_metrics(pred, ref, sp)
        me = medpy_metrics(pred, ref, sp)
        diffs = {f"monai_{k}": abs(ours[k] - mo[k]) for k in ("dsc", "asd", "hd", "hd95")}
        diffs["monai_asd_pooled_vs_ours"] = abs(ours["asd"] - mo["asd_pooled"])
        if me is not None:
            diffs.update({f"medpy_{k}": abs(ours[k] - me[k]) for k in ("dsc", "asd", "hd")})
            diffs["medpy_hd95_pooled"] = abs(pooled - me["hd95_pooled"])
            diffs["medpy_assd_pooled_vs_ours"] = abs(ours["asd"] - me["asd_pooled"])
            diffs["medpy_hd95_pooled_vs_ours_directed"] = abs(ours["hd95"] - me["hd95_pooled"])
        for k, v in diffs.items():
            worst[k] = max(worst.get(k, 0.0), v)
        print(json.dumps({"case": i, "shape": list(pred.shape), "spacing_zyx": [round(s, 3) for s in sp],
                          "ours": {k: round(ours[k], 4) for k in ("dsc", "asd", "hd", "hd95")},
                          "max_diff": {k: round(v, 6) for k, v in diffs.items()}}))
    print(json.dumps({"summary": "max abs difference over cases", "cases": n,
                      **{k: round(v, 6) for k, v in worst.items()}}))


def timed(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench(repeat: int, with_medpy: bool) -> None:
    shape, sp = (200, 512, 512), (2.5, 0.8, 0.8)
    # Prostate-sized: radii 20×24×20 mm → 4/3·π·20·24·20 ≈ 40 mL; prediction shifted and rescaled.
    centre = np.array([250.0, 205.0, 205.0])
    ref = ellipsoid(shape, sp, centre, (20.0, 24.0, 20.0))
    pred = ellipsoid(shape, sp, centre + (2.5, 1.6, -0.8), (21.0, 22.0, 20.5))
    ours = evaluate_masks(pred, ref, sp)
    print(json.dumps({"input": "bool (z,y,x)=200x512x512 ellipsoid pair", "spacing_zyx": sp,
                      "vol_ref_ml": round(ours["vol_ref_ml"], 2), "vol_pred_ml": round(ours["vol_pred_ml"], 2)}))
    t_ours = timed(lambda: evaluate_masks(pred, ref, sp), repeat)
    t_ours_u8 = timed(lambda: evaluate_masks(pred.view(np.uint8), ref.view(np.uint8), sp), repeat)
    t_monai = timed(lambda: monai_metrics(pred, ref, sp), repeat)
    t_monai_hd95 = timed(lambda: monai_hd95_only(pred, ref, sp), repeat)
    mo = monai_metrics(pred, ref, sp)
    print(json.dumps({"bench": "evaluate_masks (all metrics)", "median_s": round(t_ours, 4),
                      "median_s_uint8_input": round(t_ours_u8, 4), "metrics": {k: round(v, 4) for k, v in ours.items()}}))
    print(json.dumps({"bench": "monai all (2 directed ASD + pooled ASD + HD + HD95)", "median_s": round(t_monai, 4),
                      "metrics": {k: round(v, 4) for k, v in mo.items()}}))
    print(json.dumps({"bench": "monai compute_hausdorff_distance(percentile=95) only", "median_s": round(t_monai_hd95, 4)}))
    print(json.dumps({"ratio_ours_over_monai_all": round(t_ours / t_monai, 4),
                      "ratio_ours_over_monai_hd95_only": round(t_ours / t_monai_hd95, 4)}))
    if with_medpy:
        t = time.perf_counter()
        me = medpy_metrics(pred, ref, sp)
        t_medpy = time.perf_counter() - t
        if me is not None:
            print(json.dumps({"bench": "medpy (dc, 2 asd, assd, hd, hd95) full volume, 1 run", "s": round(t_medpy, 3),
                              "metrics": {k: round(v, 4) for k, v in me.items()}}))


def monai_hd95_only(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    from monai.metrics import compute_hausdorff_distance

    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    return float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(spacing)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crosscheck", action="store_true", help="agreement on random shapes instead of timing")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--medpy", action="store_true", help="also time medpy once (full-volume EDTs: minutes)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.crosscheck:
        crosscheck(a.cases, a.seed)
    else:
        bench(a.repeat, a.medpy)


if __name__ == "__main__":
    main()
