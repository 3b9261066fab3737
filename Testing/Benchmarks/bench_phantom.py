"""Time ``make_case`` for a 512×512×150 CT phantom; prints one JSON object per measurement.

    python Testing/Benchmarks/bench_phantom.py [--repeats 3] [--modality ct]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from voxmetric.phantom import make_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modality", default="ct", choices=["ct", "mr"])
    ap.add_argument("--shape", type=int, nargs=3, default=[150, 512, 512], metavar=("Z", "Y", "X"))
    a = ap.parse_args()
    times, cpu = [], []
    for i in range(a.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        case = make_case(i, a.modality, shape=tuple(a.shape), spacing=(0.8, 0.8, 1.5))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # CPU seconds: robust when the machine is shared
        print(json.dumps({"event": "iteration", "seed": i, "seconds": round(times[-1], 3),
                          "cpu_seconds": round(cpu[-1], 3), "shape": list(case.image.shape)}), flush=True)
    print(json.dumps({"event": "done", "benchmark": "phantom.make_case", "modality": a.modality,
                      "shape": a.shape, "spacing": [0.8, 0.8, 1.5], "repeats": a.repeats,
                      "median_s": round(statistics.median(times), 3),
                      "median_cpu_s": round(statistics.median(cpu), 3), "threads": "numpy/scipy default"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
