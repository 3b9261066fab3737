"""Exact resume under faults (issue 13): train a tiny MetricUNet, SIGKILL it at random points
(a timer that fires anywhere: data, forward, backward, optimiser step, validation, a checkpoint
write) and inside checkpoint writes (after a random part of the bytes reached the temporary file),
resume after each kill, and compare the end with an uninterrupted run.

    python Testing/Python/resume_faults_job.py OUT_DIR [--kills 12] [--seed 0]

Each attempt runs in a forked child (torch is imported once); one JSON line per attempt, then a
summary line ``{"summary": ...}`` with ``"equal": true`` when the final weights, the last
checkpoint (model, optimiser, schedulers, RNG states, best score) and the best-model weights all
equal the uninterrupted run's (``torch.equal``), and the temporary files left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from safetensors.torch import load_file, save, save_file  # noqa: E402
from test_training import small, synthetic_case  # noqa: E402

from voxmetric import training  # noqa: E402
from voxmetric.training import TrainConfig, load_checkpoint, train  # noqa: E402

METHOD, CFG = small("MetricUNet-HC", k=5)
CASES, VAL = [synthetic_case(3), synthetic_case(4)], [synthetic_case(5)]
TCFG = TrainConfig(iterations=16, batch_size=2, val_every=8, checkpoint_every=2, log_every=2)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _child(out: Path, fault: dict) -> None:
    """Train in ``out`` (resuming when it holds a checkpoint) with ``fault`` armed; never returns."""
    try:
        if fault["kind"] == "timer":
            threading.Timer(fault["after_s"], _kill_self).start()
        elif fault["kind"] == "write":
            real, calls = training.save_file, [0]

            def torn_write(tensors, filename, metadata=None):
                calls[0] += 1
                if calls[0] == fault["at_write"]:  # a part of the bytes, on disk, then the process dies
                    data = save(tensors, metadata=metadata)
                    with open(filename, "wb") as fh:
                        fh.write(data[: int(len(data) * fault["fraction"])])
                        fh.flush()
                        os.fsync(fh.fileno())
                    _kill_self()
                return real(tensors, filename, metadata=metadata)

            training.save_file = torn_write
        resume = (out / "checkpoints" / "last.safetensors").exists()
        res = train(METHOD, CFG, TCFG, CASES, VAL, out, emit=lambda e: None, resume=resume)
        save_file(res.state_dict, str(out / "result.safetensors"))
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        os._exit(1)


def attempt(out: Path, fault: dict) -> dict:
    before = _iteration(out)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(out, fault)
    _, status = os.waitpid(pid, 0)
    how = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    return {**fault, "from_iteration": before, "to_iteration": _iteration(out), "result": how,
            "seconds": round(time.monotonic() - t0, 2)}


def _iteration(out: Path) -> int | None:
    last = out / "checkpoints" / "last.safetensors"
    return load_checkpoint(last)[1]["iteration"] if last.exists() else None


def _same_checkpoint(a: Path, b: Path) -> bool:
    (ta, ma), (tb, mb) = load_checkpoint(a), load_checkpoint(b)
    for m in (ma, mb):
        m.pop("train_seconds", None)  # wall time, not a result
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta) and ma == mb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    ref, run = a.out / "uninterrupted", a.out / "faulted"
    first = attempt(ref, {"kind": "none"})
    print(json.dumps({"attempt": "uninterrupted", **first}), flush=True)
    per_run = max(first["seconds"], 0.5)
    kills, write_kills, n = 0, 0, 0
    while not (run / "result.safetensors").exists():
        n += 1
        if kills >= a.kills or n > 4 * a.kills:
            fault: dict = {"kind": "none"}
        elif n % 2:
            fault = {"kind": "timer", "after_s": round(rng.uniform(0.05, 0.35 * per_run), 3)}
        else:
            fault = {"kind": "write", "at_write": rng.randint(1, 3), "fraction": round(rng.uniform(0.0, 1.0), 3)}
        r = attempt(run, fault)
        kills += r["result"] == "killed by signal 9"
        write_kills += r["result"] == "killed by signal 9" and fault["kind"] == "write"
        print(json.dumps({"attempt": n, **r}), flush=True)
        if r["result"].startswith("exit") and r["result"] != "exit 0":
            return 1
    ckpts = run / "checkpoints"
    ra, rb = load_file(ref / "result.safetensors"), load_file(run / "result.safetensors")
    summary = {
        "kills": kills, "attempts": n,
        "kills_in_a_checkpoint_write": write_kills,
        "final_weights_equal": ra.keys() == rb.keys() and all(torch.equal(ra[k], rb[k]) for k in ra),
        "last_checkpoint_equal": _same_checkpoint(ref / "checkpoints" / "last.safetensors", ckpts / "last.safetensors"),
        "best_checkpoint_equal": _same_checkpoint(ref / "checkpoints" / "best.safetensors", ckpts / "best.safetensors"),
        "temp_files_left": sorted(f.name for f in run.rglob("*") if ".tmp" in f.name),
    }
    summary["equal"] = all(summary[k] for k in ("final_weights_equal", "last_checkpoint_equal",
                                                 "best_checkpoint_equal"))
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
