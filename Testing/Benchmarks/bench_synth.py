"""Cost of the domain-randomised generator (voxmetric.synth) per case, for both fields of view:
seconds (wall and CPU) to draw a case, its size in memory, the seconds to write it as cached
NRRD + .seg.nrrd and the MB on disk. Prints one JSON object per case and one summary (medians)
per field of view.

    python Testing/Benchmarks/bench_synth.py [--cases 6] [--first 1000] [--fov roi pelvis abdomen] [--clutter]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from voxmetric import io  # noqa: E402
from voxmetric.phantom import LABELS  # noqa: E402
from voxmetric.synth import CONTRASTS, FOVS, make_synth_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=6, help="cases per field of view (contrasts cycle ct, mr, random)")
    ap.add_argument("--first", type=int, default=1000, help="first seed")
    ap.add_argument("--fov", nargs="+", default=["roi", "pelvis"], choices=list(FOVS),
                    help="fields of view in order (the peak RSS reported is the process's so far: roi first)")
    ap.add_argument("--clutter", action="store_true", help="draw the cases with clutter (the same seeds)")
    a = ap.parse_args()
    segments = [io.segment_info(n, v) for n, v in LABELS.items()]
    for fov in a.fov:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(a.cases):
                seed, contrast = a.first + i, CONTRASTS[i % 3]
                t0, c0 = time.perf_counter(), time.process_time()
                case = make_synth_case(seed, contrast, fov, clutter=a.clutter)
                gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
                t1 = time.perf_counter()
                img = io.write_volume(case.image, Path(tmp) / f"c{i}.nrrd")
                lab = io.write_segmentation(Path(tmp) / f"c{i}.seg.nrrd", case.labels, segments)
                write_s = time.perf_counter() - t1
                disk = (Path(img).stat().st_size + Path(lab).stat().st_size) / 1e6
                mem = (case.image.array.nbytes + case.labels.array.nbytes) / 1e6
                row = {"event": "iteration", "fov": fov, "seed": seed, "contrast": contrast,
                       "shape": list(case.image.shape), "spacing": [round(float(s), 3) for s in case.image.spacing],
                       "acq_spacing": [round(float(s), 3) for s in case.acquisition_spacing],
                       "seconds": round(gen_s, 3), "cpu_seconds": round(gen_cpu, 3), "memory_mb": round(mem, 2),
                       "write_seconds": round(write_s, 3), "disk_mb": round(disk, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        med = {k: round(statistics.median(r[k] for r in rows), 3)
               for k in ("seconds", "cpu_seconds", "memory_mb", "write_seconds", "disk_mb")}
        print(json.dumps({"event": "done", "benchmark": "synth.make_synth_case", "fov": fov, "clutter": a.clutter,
                          "cases": len(rows),
                          **{f"median_{k}": v for k, v in med.items()},
                          "max_memory_mb": round(max(r["memory_mb"] for r in rows), 2),
                          "peak_rss_mb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                          "threads": "numpy/scipy default"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
