"""The child-process runner the Slicer modules use: events, exit codes, cancel kills the tree."""

from __future__ import annotations

import time

from voxmetric.jobs import Job


def _drain(job: Job, timeout: float = 60) -> list[dict]:
    events: list[dict] = []
    end = time.time() + timeout
    while time.time() < end and not any(e["event"] == "exit" for e in events):
        events += job.poll_events()
        time.sleep(0.02)
    return events


def test_error_message_reaches_the_parent(tmp_path):
    job = Job(["evaluate", "--pred", str(tmp_path / "missing.nrrd"), "--ref", str(tmp_path / "missing.nrrd")])
    events = _drain(job)
    exit_event = events[-1]
    assert exit_event["event"] == "exit" and exit_event["returncode"] == 2
    assert "missing.nrrd" in exit_event["stderr"]


def test_cancel_kills_the_process_tree(tmp_path):
    job = Job(["phantom", "--out", str(tmp_path), "--cases", "500", "--modality", "ct"])
    time.sleep(1.5)
    assert job.running
    t0 = time.time()
    job.cancel()
    assert not job.running and time.time() - t0 < 5
    events = _drain(job, 10)
    assert events[-1]["cancelled"] is True and events[-1]["returncode"] != 0
    assert len(list(tmp_path.glob("*.seg.nrrd"))) < 500
