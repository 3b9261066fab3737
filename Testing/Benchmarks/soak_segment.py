"""Soak test (issue 13; run by hand, not in CI): one ``voxmetric segment FOLDER`` batch run over
N small CT phantoms with the bundled models; watches the process from outside (``/proc/PID``) at
the start of every case (``--events-jsonl`` progress events) and after the last one.

    python Testing/Benchmarks/soak_segment.py [--cases 50] [--work DIR] [--threads 2]

Per case: the peak resident memory of that case (``VmHWM``, reset at each case start by writing
5 to ``/proc/PID/clear_refs``; without permission the high-water mark of the run so far), the
resident memory and the open file descriptors at its start. At the end: the temporary files left
in the run's ``TMPDIR`` and in the output folder (``*.tmp*``), the output files written. Prints
one JSON object (the figures of the first and last case, their ratio, the medians of the first
and last ten, and every case's figures under ``"cases"``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (MiB) and the number of open file descriptors of ``pid``."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024.0
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def _reset_peak(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=50)
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    p.add_argument("--threads", type=int, default=2, help="OMP/torch threads of the segment run")
    p.add_argument("--shape", default="48,144,144", help="phantom size z,y,x (voxels)")
    p.add_argument("--spacing", type=float, default=3.0, help="phantom voxel size (mm, isotropic)")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="voxmetric-soak-"))
    images, out, tmp = work / "phantoms", work / "out", work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from voxmetric.phantom import write_cases

    if not (images / "manifest.json").exists():
        write_cases(images, a.cases, "ct", seed=5000, shape=tuple(int(v) for v in a.shape.split(",")),
                    spacing=(a.spacing,) * 3)
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": str(a.threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", f"import torch; torch.set_num_threads({a.threads}); "
           "from voxmetric.cli import main; raise SystemExit(main())",
           "segment", str(images), "-o", str(out), "--events-jsonl", "--device", "cpu", "--overwrite"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[dict[str, float]] = []
    resets = False
    done: dict = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] in ("progress", "done"):
            s = _status(proc.pid)
            s["t"] = round(time.monotonic() - t0, 2)
            samples.append(s)
            resets = _reset_peak(proc.pid)
        if event["event"] == "done":
            done = event
            # the process is still alive here (it prints "done" last): its descriptors now
            samples[-1]["fds_after_last"] = samples[-1]["fds"]
    rc = proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    if rc != 0:
        print(json.dumps({"error": f"segment exited {rc}", "stderr": err[-2000:]}))
        return 1
    # case i's peak is the high-water mark read at the start of case i + 1 (or at "done")
    cases = [{"case": i + 1, "peak_rss_mib": round(samples[i + 1]["VmHWM"], 1),
              "rss_at_start_mib": round(samples[i]["VmRSS"], 1), "fds_at_start": int(samples[i]["fds"]),
              "seconds": round(samples[i + 1]["t"] - samples[i]["t"], 2)} for i in range(len(samples) - 1)]
    peaks = [c["peak_rss_mib"] for c in cases]
    left_tmp = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*"))
    left_out = sorted(f.name for f in out.iterdir() if ".tmp" in f.name)
    print(json.dumps({
        "cases": len(cases), "wall_s": round(time.monotonic() - t0, 1), "threads": a.threads,
        "phantom": {"shape_zyx": a.shape, "spacing_mm": a.spacing},
        "peak_rss_mib": {"first_case": peaks[0], "last_case": peaks[-1], "last_over_first": round(peaks[-1] / peaks[0], 3),
                         "median_cases_2_11": statistics.median(peaks[1:11]), "median_last_10": statistics.median(peaks[-10:]),
                         "per_case_reset": resets},
        "open_fds": {"first_case": cases[0]["fds_at_start"], "last_case": cases[-1]["fds_at_start"],
                     "after_last": int(samples[-1]["fds"])},
        "temp_files_left": {"tmpdir": left_tmp, "output_folder": left_out},
        "outputs": len(list(out.glob("*.seg.nrrd"))), "found": done.get("found"), "not_found": done.get("not_found"),
        "load_avg": [round(v, 2) for v in os.getloadavg()],
        "per_case": cases,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
