"""Exact resume, proven under faults (issue 13): ``resume_faults_job.py`` SIGKILLs a training run
at random points and inside checkpoint writes, resumes it after every kill, and compares the end
with an uninterrupted run bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow  # ~15 s of CPU; a minute of wall time on a busy 2-core machine
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the job forks a child per attempt")
def test_training_killed_a_dozen_times_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "resume_faults_job.py"), str(tmp_path), "--kills", "12"],
                          env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    attempts, summary = lines[1:-1], lines[-1]["summary"]
    killed = [a for a in attempts if a["result"] == "killed by signal 9"]
    assert len(killed) >= 10 and summary["kills_in_a_checkpoint_write"] >= 3, lines
    assert any(a["kind"] == "write" and 0 < a["fraction"] < 1 for a in killed)  # a torn temporary file
    assert attempts[-1]["result"] == "exit 0" and attempts[-1]["to_iteration"] == 16
    assert summary["final_weights_equal"] and summary["last_checkpoint_equal"] and summary["best_checkpoint_equal"]
    assert summary["temp_files_left"] == [], "a resumed run clears the torn checkpoint copies"
