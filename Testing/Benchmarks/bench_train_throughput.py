"""Training throughput of the default recipe on a CPU, and what changes it most (issue 14);
prints JSON lines.

    nice -n 10 python Testing/Benchmarks/bench_train_throughput.py [--steps 2] [--warmup 1]
        [--variants baseline,threads1,channels_last,workers1,batch16,batch8]

The default recipe: ``MetricUNet-HCP`` with the paper's settings (1 mm, base 32, 256-wide
decoder) and the trainer's defaults (batch 30 slabs of 3 × 64 × 64, SGD lr 0.01, momentum 0.9,
weight decay 1e-4, fp32 on the CPU), items from the method's own dataset over 2 prepared CT
phantoms through ``voxmetric.sampling.make_loader`` (as ``voxmetric train`` does). An iteration
= drawing the batch from the loader + the method's ``training_step`` (forward, H/C metric loss,
backward, optimiser step). Each variant changes one thing from the baseline (all cores, NCHW,
0 loader workers, batch 30): ``threads1`` (one torch thread), ``channels_last`` (model and batch
in channels-last memory), ``workers1`` (one loader process), ``batchN``. Per variant:
``--warmup`` iterations not counted, then ``--steps`` timed; iterations/s and slabs/s from the
median wall time, with the process CPU seconds and the load before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

VARIANTS = {"baseline": {}, "threads1": {"threads": 1}, "channels_last": {"channels_last": True},
            "workers1": {"workers": 1}, "batch16": {"batch": 16}, "batch8": {"batch": 8}}


class _Ctx:
    def __init__(self, opt, total: int) -> None:
        self.opt, self.iteration, self.total = opt, 0, total

    def step(self, loss, groups=None) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def run_variant(name: str, cases: list, steps: int, warmup: int) -> dict:
    import torch

    from voxmetric.methods import get_method
    from voxmetric.runtime import cpu_threads
    from voxmetric.sampling import make_loader

    v = {"threads": cpu_threads(), "channels_last": False, "workers": 0, "batch": 30, **VARIANTS[name]}
    torch.set_num_threads(v["threads"])
    method = get_method("MetricUNet-HCP")
    cfg = method.default_config()
    torch.manual_seed(0)
    model = method.training_model(cfg, method.build(cfg)).train()
    if v["channels_last"]:
        model = model.to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = iter(make_loader(method.dataset(cases, cfg, seed=0), v["batch"], "cpu", v["workers"], seed=0))
    ctx = _Ctx(opt, warmup + steps)
    walls, cpus = [], []
    load_before = os.getloadavg()[0]
    for i in range(warmup + steps):
        t, c = time.perf_counter(), time.process_time()
        batch = next(loader)
        if v["channels_last"]:
            batch = {k: (t_.contiguous(memory_format=torch.channels_last) if t_.ndim == 4 else t_)
                     for k, t_ in batch.items()}
        ctx.iteration = i
        method.training_step(model, batch, cfg, ctx)
        if i >= warmup:
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    w = statistics.median(walls)
    return {"measure": "variant", "variant": name, **v, "it_per_s": round(1.0 / w, 4),
            "slabs_per_s": round(v["batch"] / w, 2), "median_step_s": round(w, 3), "steps_s": [round(x, 2) for x in walls],
            "median_step_cpu_s": round(statistics.median(cpus), 3), "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "voxmetric-train-throughput")
    a = p.parse_args()
    import torch

    from bench_segment import machine
    from voxmetric.cases import load_cases
    from voxmetric.data import prepare_case
    from voxmetric.methods import get_method
    from voxmetric.phantom import write_cases

    method = get_method("MetricUNet-HCP")
    recipe = method.data_recipe(method.default_config())
    manifest = a.work / "phantoms" / "manifest.json"
    if not manifest.exists():
        write_cases(a.work / "phantoms", 2, "ct", seed=900)
    cases = [prepare_case(r, recipe, cache_dir=a.work / "cache") for r in load_cases(manifest, "Prostate")]
    print(json.dumps({"measure": "setup", "machine": machine(), "torch": torch.__version__,
                      "recipe": "MetricUNet-HCP paper settings, batch 30 x 3 x 64 x 64, SGD, fp32"}), flush=True)
    rows = []
    for name in a.variants.split(","):
        rows.append(run_variant(name.strip(), cases, a.steps, a.warmup))
        print(json.dumps(rows[-1]), flush=True)
    base = next((r for r in rows if r["variant"] == "baseline"), None)
    if base:
        print(json.dumps({"measure": "summary", "baseline_it_per_s": base["it_per_s"],
                          "slabs_per_s_relative": {r["variant"]: round(r["slabs_per_s"] / base["slabs_per_s"], 3)
                                                   for r in rows}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
