"""Benchmark `Pipeline.segment` on a synthetic 512×512×200 CT (0.8×0.8×2.5 mm); prints JSON lines.

    python Testing/Benchmarks/bench_segment.py [--repeats 3] [--baseline-repeats 1] [--work DIR]

Measurements (each in its own subprocess, so peak RSS = ``resource.getrusage`` of that run):

- ``ours``: localizer (the bundled demo localizer when present, else random weights) + the
  paper-architecture refiner (MetricUNet-HCP, 3.28 M parameters, 1 mm; random weights — run
  time does not depend on the weights once the ROI is fixed): total and per-stage wall time
  (median of ``--repeats``), peak RSS, the refiner's conv FLOPs (``torch.utils.flop_counter``)
  and achieved GFLOP/s against this CPU's measured conv peak (a 256→256 3×3 conv, channels_last);
- ``ours_demo``: the same with the bundled demo refiner (2 mm) when present;
- ``baseline``: single-stage MONAI ``sliding_window_inference`` (96³ windows, overlap 0.25) with
  a MONAI 3D UNet of similar size over the whole body resampled to 1.5 mm; and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def emit(d: dict) -> None:
    print(json.dumps(d), flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_input(path: Path) -> Path:
    from voxmetric import io
    from voxmetric.phantom import make_case

    if not path.exists():
        case = make_case(4242, "ct", shape=(200, 512, 512), spacing=(0.8, 0.8, 2.5))
        io.write_volume(case.image, path)
    return path


def _pipeline(kind: str):
    import torch

    from voxmetric import models
    from voxmetric.errors import ModelError
    from voxmetric.methods import get_method
    from voxmetric.pipeline import Pipeline, Stage

    try:
        bundled = models.load_pipeline(None, "ct", "cpu")
        loc = bundled.localizer
    except ModelError:
        bundled = None
        L = get_method("Localizer")
        lc = L.default_config()
        loc = Stage(L, lc, L.build(lc).eval(), "random-localizer")
    if kind == "ours_demo":
        if bundled is None:
            return None
        ref = bundled.refiner
    else:
        torch.manual_seed(0)
        R = get_method("MetricUNet-HCP")
        rc = R.default_config()
        ref = Stage(R, rc, R.build(rc).eval(), "paper-MetricUNet-HCP-random")
    return Pipeline(loc, ref, "ct", device="cpu")


def child_ours(image: Path, kind: str) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from voxmetric import io
    from voxmetric.methods import Runtime
    from voxmetric.pipeline import canonical_box

    pipe = _pipeline(kind)
    if pipe is None:
        return {"skipped": "no bundled models"}
    net_time = {"localize": 0.0, "refine": 0.0}
    predict = pipe._predict

    def timed(stage, image_arr, say, what):
        t = time.perf_counter()
        out = predict(stage, image_arr, say, what)
        net_time[what] += time.perf_counter() - t
        return out

    pipe._predict = timed  # type: ignore[method-assign]
    vol = io.read_volume(image)
    t0 = time.perf_counter()
    res = pipe.segment(vol)
    wall = time.perf_counter() - t0
    box = res.box
    if not res.found:  # still time the refiner, on the not-found default box
        t = time.perf_counter()
        pipe.refine(vol, box)
        res.timings["refine"] = time.perf_counter() - t
        wall += res.timings["refine"]
    ref = pipe.refiner
    sp = ref.spacing_mm
    size = np.maximum(canonical_box(box).size, ref.method.context_mm(ref.cfg))  # the pipeline widens the ROI to it
    n = np.maximum(1, np.round(size / sp)).astype(int)  # x, y, z voxels of the network's input grid
    with FlopCounterMode(display=False) as fc:
        ref.method.predict(ref.model, ref.cfg, np.zeros(n[::-1], np.float32), Runtime(torch.device("cpu")))
    flops = fc.get_total_flops()
    return {"wall_s": wall, "timings": {k: v for k, v in res.timings.items()}, "network_s": net_time,
            "found": res.found, "box_mm": [round(float(v), 1) for v in box.size], "roi_voxels": n.tolist(),
            "refiner": pipe.refiner.name, "localizer": pipe.localizer.name, "refiner_gflop": flops / 1e9,
            "refiner_gflops_per_s": flops / 1e9 / max(net_time["refine"], 1e-9), "threads": torch.get_num_threads(),
            "peak_rss_mb": peak_rss_mb()}


def child_baseline(image: Path) -> dict:
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from voxmetric import intensity, io
    from voxmetric.volume import crop

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
               strides=(2, 2, 2, 2), num_res_units=1).eval()
    params = sum(p.numel() for p in net.parameters())
    vol = io.read_volume(image)
    t0 = time.perf_counter()
    body = intensity.body_box(vol, "ct")
    iso = crop(vol, body, (1.5, 1.5, 1.5), fill=-1024.0)
    x = torch.from_numpy(intensity.normalize_ct(iso.array) / 255.0)[None, None]
    t1 = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_inference(x, (96, 96, 96), 1, net, overlap=0.25)
    t2 = time.perf_counter()
    prob = torch.softmax(logits, 1)[0, 1].numpy()
    from voxmetric.volume import resample_to

    resample_to(iso.with_array((prob > 0.5).astype(np.uint8)), vol, is_label=True)
    t3 = time.perf_counter()
    return {"wall_s": t3 - t0, "timings": {"preprocess": t1 - t0, "network": t2 - t1, "paste": t3 - t2},
            "params": params, "grid": list(iso.shape), "peak_rss_mb": peak_rss_mb()}


def conv_peak() -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.rand(8, 256, 64, 64).contiguous(memory_format=torch.channels_last)
    flops = 2 * 8 * 256 * 256 * 9 * 64 * 64
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(3):
            t = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t)
    return {"gflops_per_s": flops / 1e9 / best, "shape": "8x256x64x64, 3x3, 256->256, fp32 channels_last",
            "threads": torch.get_num_threads()}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    ok = [r for r in runs if "wall_s" in r]
    if not ok:
        return runs[0] if runs else {}
    med = dict(ok[0])
    med["wall_s"] = statistics.median(r["wall_s"] for r in ok)
    med["timings"] = {k: statistics.median(r["timings"][k] for r in ok) for k in ok[0]["timings"]}
    med["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    med["runs"] = [round(r["wall_s"], 2) for r in ok]
    if "network_s" in ok[0]:
        med["network_s"] = {k: statistics.median(r["network_s"][k] for r in ok) for k in ok[0]["network_s"]}
        med["refiner_gflops_per_s"] = med["refiner_gflop"] / max(med["network_s"]["refine"], 1e-9)
    return med


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-repeats", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "voxmetric-bench")
    p.add_argument("--child", choices=["ours", "ours_demo", "baseline", "peak"])
    p.add_argument("--image", type=Path)
    p.add_argument("--skip-baseline", action="store_true")
    a = p.parse_args()
    if a.child:
        result = {"peak": lambda: conv_peak(), "baseline": lambda: child_baseline(a.image)}.get(
            a.child, lambda: child_ours(a.image, a.child))()
        print(json.dumps(result))
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    image = make_input(a.work / "ct_512x512x200.nrrd")
    peak = run_child(["--child", "peak"])
    emit({"measure": "conv_peak", **peak})
    results = {}
    for kind in ("ours", "ours_demo"):
        runs = [run_child(["--child", kind, "--image", str(image)]) for _ in range(a.repeats)]
        med = median_of(runs)
        if "refiner_gflops_per_s" in med and "gflops_per_s" in peak:
            med["fraction_of_conv_peak"] = med["refiner_gflops_per_s"] / peak["gflops_per_s"]
        results[kind] = med
        emit({"measure": kind, "input": "512x512x200 CT, 0.8x0.8x2.5 mm", "target": "<= 10 s, <= 2048 MB", **med})
    if not a.skip_baseline:
        runs = [run_child(["--child", "baseline", "--image", str(image)]) for _ in range(a.baseline_repeats)]
        base = median_of(runs)
        emit({"measure": "baseline_monai_sliding_window_unet3d_1.5mm", **base})
        if "wall_s" in base:
            for kind, med in results.items():
                if "wall_s" in med:
                    emit({"measure": f"ratio_{kind}_to_baseline", "time_ratio": med["wall_s"] / base["wall_s"],
                          "rss_ratio": med["peak_rss_mb"] / base["peak_rss_mb"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
