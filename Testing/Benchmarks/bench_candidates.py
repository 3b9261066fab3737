"""What stage 2 checking stage 1 costs the user: the whole ``voxmetric segment`` process with
``--candidates 3`` (the default) against ``--candidates 1`` on the same scan, alternating in one
run; prints JSON lines (one per measurement, then a summary with medians and the ratio).

    python Testing/Benchmarks/bench_candidates.py [--repeats 5] [--work DIR] [--image SCAN]

Default scan: the real pelvic CT of ``../shared/data`` (stage 1's most confident region refines
to an implausible prostate there, so the check refines a second region). Each measurement is one
child process, spawn to exit (``bench_segment.run_measured``), with the bundled ``synth`` models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segment import emit, machine, run_measured, summarize  # noqa: E402
from real_data import PELVIS_CT  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "voxmetric-bench-candidates")
    p.add_argument("--image", type=Path, default=PELVIS_CT)
    args = p.parse_args()
    if not args.image.exists():
        raise SystemExit(f"{args.image} is absent")
    args.work.mkdir(parents=True, exist_ok=True)
    emit({"measure": "machine", **machine(), "image": str(args.image)})
    runs: dict[int, list[dict]] = {1: [], 3: []}
    for i in range(args.repeats):
        for n in (1, 3):
            out = args.work / f"c{n}.seg.nrrd"
            r = run_measured([sys.executable, "-m", "voxmetric", "segment", str(args.image), "-o", str(out),
                              "--model", "synth", "--candidates", str(n), "--device", "cpu", "--overwrite"])
            if r["rc"] == 0:
                t = json.loads((args.work / f"c{n}_timings.json").read_text())
                r.update(in_process_s=t["timings"]["total"], verdict=t["verdict"], message=t["message"])
            emit({"measure": "run", "round": i, "candidates": n, **{k: v for k, v in r.items() if k != "stderr"}})
            runs[n].append(r)
    s1, s3 = summarize(runs[1]), summarize(runs[3])
    ratio = s3["wall_s_median"] / s1["wall_s_median"] if "wall_s_median" in s1 and "wall_s_median" in s3 else None
    inproc = {n: statistics.median(r["in_process_s"] for r in runs[n] if "in_process_s" in r) for n in (1, 3)}
    emit({"measure": "summary", "candidates_1": s1, "candidates_3": s3, "ratio_wall_3_over_1": ratio,
          "in_process_median_s": inproc})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
