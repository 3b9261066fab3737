"""Achieved GFLOP/s of the paper-resolution refiner against this machine's conv peak (issue 14);
prints JSON lines.

    python Testing/Benchmarks/bench_refiner_gflops.py [--box 70,70,102] [--batches 8,16,34] [--repeats 2]

The refiner: ``MetricUNet-HCP`` with the paper's settings (1 mm, base 32, 256-wide decoder,
3.28 M parameters; random weights: the work does not depend on them) on a ROI of ``--box`` mm
(x, y, z; the pipeline's 70 × 70 × 102 mm prostate box), i.e. ``box_z`` slabs of 3 × 70 × 70
padded to 80 × 80 (a multiple of 16, as ``predict`` does). FLOPs are those executed
(``torch.utils.flop_counter`` over the padded input: multiply-adds × 2 of every conv and
transposed conv). Each runtime (torch fp32 channels-last, ONNX Runtime fp32) runs the method's
real predictor (``method.predict`` through ``Runtime``) at each batch size; the best of
``--repeats`` counts. The conv peak is the best of torch and ONNX Runtime on one 256→256 3×3
conv over 8 × 256 × 64 × 64 (``bench_segment.py --child conv_peak``). Target: ≥ 80 % of peak.
On a shared (loaded) machine compare the GFLOP per CPU-second figures (``*_per_cpu_s``): the
wall-clock rates then mostly measure the load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", default="70,70,102")
    p.add_argument("--batches", default="8,16,34")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench_segment import conv_peak, machine
    from voxmetric.methods import Runtime, get_method
    from voxmetric.runtime import CpuDevice, OnnxNetwork, cpu_threads, export_onnx

    torch.set_num_threads(cpu_threads())
    peak = conv_peak()
    print(json.dumps({"measure": "conv_peak", "machine": machine(), **peak, "load": os.getloadavg()[0]}), flush=True)
    m = get_method("MetricUNet-HCP")
    cfg = m.default_config()
    torch.manual_seed(0)
    net = m.build(cfg).eval()
    params = sum(t.numel() for t in net.parameters())
    x, y, z = (int(round(float(v) / cfg.spacing_mm)) for v in a.box.split(","))
    image = (np.random.default_rng(0).random((z, y, x)) * 255).astype(np.float32)
    n = m.pad_multiple
    padded = (1, cfg.slab, y + (-y) % n, x + (-x) % n)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.zeros(padded))
    gflop = fc.get_total_flops() / 1e9 * z
    graph = export_onnx(net, m.forward, *m.onnx_example(cfg))
    ort = OnnxNetwork(graph)
    netc = net.to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
    best_all = best_cpu = 0.0
    for batch in (int(b) for b in a.batches.split(",")):
        for runtime in ("torch", "onnxruntime"):
            rt = (Runtime(torch.device("cpu"), batch_size=batch) if runtime == "torch" else
                  Runtime(CpuDevice(), batch_size=batch, network=ort))  # pyright: ignore[reportArgumentType]
            model = netc if runtime == "torch" else None
            times, cpus = [], []
            for _ in range(a.repeats):
                t, c = time.perf_counter(), time.process_time()
                m.predict(model, cfg, image, rt)  # pyright: ignore[reportArgumentType]
                times.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
            rate = gflop / min(times)
            best_all = max(best_all, rate)
            best_cpu = max(best_cpu, gflop / min(cpus))
            print(json.dumps({"measure": "paper_refiner", "runtime": runtime, "batch": batch, "roi_mm": a.box,
                              "slices": z, "padded_slice": list(padded[2:]), "params": params,
                              "gflop": round(gflop, 1), "best_s": round(min(times), 3),
                              "cpu_s": round(min(cpus), 3), "gflops_per_s": round(rate, 1),
                              "fraction_of_peak": round(rate / peak["gflops_per_s"], 3),
                              "gflop_per_cpu_s": round(gflop / min(cpus), 1),
                              "fraction_of_peak_per_cpu_s": round(gflop / min(cpus) / peak["gflop_per_cpu_s"], 3),
                              "load": round(os.getloadavg()[0], 2)}), flush=True)
    print(json.dumps({"measure": "summary", "best_gflops_per_s": round(best_all, 1),
                      "conv_peak_gflops_per_s": round(peak["gflops_per_s"], 1),
                      "fraction_of_peak": round(best_all / peak["gflops_per_s"], 3),
                      "best_gflop_per_cpu_s": round(best_cpu, 1), "conv_peak_gflop_per_cpu_s": round(peak["gflop_per_cpu_s"], 1),
                      "fraction_of_peak_per_cpu_s": round(best_cpu / peak["gflop_per_cpu_s"], 3), "target": 0.8}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
