"""Run a ``voxmetric`` command in a child process and stream its JSON-line events.

This is how the Slicer modules keep the GUI responsive (DESIGN.md rule 5): the engine runs in
``PythonSlicer -m voxmetric … --events-jsonl``; a reader thread parses every stdout line into
an event dict and puts it on a queue that the GUI polls from a timer. ``cancel()`` kills the
whole process tree; a ``timeout`` kills it too. Work that grows with the scan but must happen
in this process (writing the child's input, reading its result) runs in the job's own worker
thread through the ``prepare`` / ``collect`` hooks, never on the caller's (GUI) thread, and
``cleanup`` (e.g. deleting the temporary folder holding a copy of the patient's scan) runs
when the job ends, whatever the outcome, and at interpreter exit. Nothing here imports Slicer
or Qt. :func:`map_in_processes` runs one function over many inputs in worker processes (writing
and preparing cases).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ENGINE_ROOT = str(Path(__file__).resolve().parents[1])  # the folder that holds ``voxmetric/``

#: An event sink: hooks call it with progress events, e.g. ``{"event": "progress", "done": 1, "total": 2}``.
Emit = Callable[[dict[str, Any]], None]


def engine_python() -> str:
    """The interpreter for engine child processes: ``PythonSlicer`` inside Slicer (beside the
    running interpreter or on PATH), else the running interpreter."""
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    if Path(sys.executable).name == name:
        return sys.executable
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    return (shutil.which(name) if "slicer" in sys.modules else None) or sys.executable


class Job:
    """A running ``python -m MODULE ARGS`` child process (``MODULE`` = ``voxmetric`` by default).

    Events are dicts such as ``{"event": "progress", "done": 3, "total": 10}``; lines that are
    not JSON become ``{"event": "log", "message": line}``. When everything is over a final
    ``{"event": "exit", "returncode": rc, "cancelled": bool, "timed_out": bool, "stderr": tail,
    "message": text}`` is queued (``message`` says what went wrong, "" on success).

    Hooks, all run in the job's worker thread (never the caller's):

    - ``prepare(emit)``: before the child starts (e.g. write its input); an exception ends the
      job with an ``error`` event and returncode -1, without starting the child;
    - ``collect(emit)``: after the child exited with 0 (e.g. read its output); its return value
      becomes :attr:`result`; an exception gives an ``error`` event and returncode 1;
    - ``cleanup()``: last, in every case (success, failure, cancel, timeout).

    ``timeout``: seconds from the start; a job still running then is killed (process tree) and
    its exit event has ``timed_out: true``.
    """

    def __init__(self, args: Sequence[str], python: str | None = None, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None, *, module: str = "voxmetric", timeout: float | None = None,
                 prepare: Callable[[Emit], None] | None = None, collect: Callable[[Emit], Any] | None = None,
                 cleanup: Callable[[], None] | None = None) -> None:
        self.command = [python or engine_python(), "-m", module, *map(str, args)]
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.cancelled = False
        self.timed_out = False
        self.timeout = timeout
        self.result: Any = None
        self.process: subprocess.Popen[str] | None = None
        self._cwd, self._env = cwd, _child_env(env)
        self._prepare, self._collect, self._cleanup = prepare, collect, cleanup
        self._stderr: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._started = time.monotonic()
        _LIVE.add(self)
        self._thread = threading.Thread(target=self._run, name="voxmetric-job", daemon=True)
        self._thread.start()

    # -- the worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        rc, message = -1, ""
        try:
            if self._prepare is not None and not self.cancelled:
                try:
                    self._prepare(self.events.put)
                except Exception as e:  # noqa: BLE001  (reported to the user through the events)
                    message = _describe(e)
                    self.events.put({"event": "error", "message": message})
                    return
            rc = self._run_child()
            if self.timed_out:
                message = (f"The job ran longer than its time limit of {self.timeout:.0f} s and was stopped "
                           "(its processes were killed).")
            elif self.cancelled:
                message = "Cancelled."
            elif rc != 0:
                message = f"The engine exited with code {rc}."
            elif self._collect is not None:
                try:
                    self.result = self._collect(self.events.put)
                except Exception as e:  # noqa: BLE001
                    rc, message = 1, _describe(e)
                    self.events.put({"event": "error", "message": message})
        finally:
            self.run_cleanup()
            self._done.set()
            self.events.put({"event": "exit", "returncode": rc, "cancelled": self.cancelled,
                             "timed_out": self.timed_out, "stderr": "\n".join(self._stderr[-20:]),
                             "message": message})
            _LIVE.discard(self)

    def _run_child(self) -> int:
        with self._lock:
            if self.cancelled or self._expired():
                self.timed_out = self._expired() and not self.cancelled
                return -1
            popen_kw: dict[str, Any] = {}
            if os.name == "posix":
                popen_kw["start_new_session"] = True  # own process group: cancel kills the tree
            else:
                popen_kw["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                errors="replace", bufsize=1, cwd=self._cwd, env=self._env, **popen_kw)
        readers = [threading.Thread(target=self._read_stdout, daemon=True),
                   threading.Thread(target=self._read_stderr, daemon=True)]
        for t in readers:
            t.start()
        process = self.process
        while True:
            try:
                rc = process.wait(timeout=None if self.timeout is None else max(self._left(), 0.0) + 0.01)
                break
            except subprocess.TimeoutExpired:
                if self._expired():
                    self.timed_out = True
                    self._kill()
        for t in readers:
            t.join(timeout=5)
        return rc

    def _left(self) -> float:
        return float("inf") if self.timeout is None else self.timeout - (time.monotonic() - self._started)

    def _expired(self) -> bool:
        return self.timeout is not None and self._left() <= 0

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError
            except ValueError:
                event = {"event": "log", "message": line}
            self.events.put(event)

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line.rstrip("\n"))
            del self._stderr[:-200]  # keep the tail only

    # -- the caller's side ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True until the exit event is queued (preparing, child running, or collecting)."""
        return not self._done.is_set()

    def poll_events(self) -> list[dict[str, Any]]:
        """All events queued since the last call (non-blocking)."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the job is over (exit event queued); returns the child's exit code
        (None if the child never ran). TimeoutError when ``timeout`` seconds pass first."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the job is still running after {timeout} s")
        return None if self.process is None else self.process.returncode

    def cancel(self, wait: float | None = 10.0) -> None:
        """Kill the child and everything it started (DataLoader workers, torchrun ranks); a job
        still preparing never starts its child. Waits up to ``wait`` s for the worker thread
        to finish (its cleanup included)."""
        if not self.running:
            return
        with self._lock:
            self.cancelled = True
            self._kill()
        if wait:
            self._done.wait(wait)

    def _kill(self) -> None:
        p = self.process
        if p is None or p.poll() is not None:
            return
        if os.name == "posix":
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:  # Windows: taskkill /T kills the tree
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(p.pid)], capture_output=True)

    def run_cleanup(self) -> None:
        """Run the ``cleanup`` hook now (it runs again when the worker ends, so it must be
        idempotent, e.g. deleting a folder; also called at interpreter exit)."""
        if self._cleanup is not None:
            try:
                self._cleanup()
            except Exception:  # noqa: BLE001  (cleanup must never raise into the GUI)
                pass


def _describe(e: BaseException) -> str:
    from .errors import VoxMetricError

    return str(e) if isinstance(e, VoxMetricError) else f"{type(e).__name__}: {e}"


def remove_tree(path: str | Path | None) -> None:
    """Delete a folder (quietly; a missing one is fine)."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


_LIVE: weakref.WeakSet[Job] = weakref.WeakSet()


def running_jobs() -> list[Job]:
    """Jobs of this process that have not ended yet."""
    return [j for j in list(_LIVE) if j.running]


@atexit.register
def shutdown() -> None:
    """Kill every running job's process tree and run its cleanup (Slicer or Python exits)."""
    for job in list(_LIVE):
        with job._lock:
            job.cancelled = True
            job._kill()
        job.run_cleanup()


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    """This environment plus ``extra``, with the engine's folder first on PYTHONPATH so the
    child imports the same ``voxmetric`` as the parent."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ENGINE_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


def map_in_processes(fn: Callable[..., Any], calls: Sequence[tuple], jobs: int = 1,
                     done: Callable[[int], None] | None = None) -> list[Any]:
    """``[fn(*c) for c in calls]`` in order, in up to ``jobs`` spawned processes when ``jobs`` > 1
    (``fn`` and its arguments must pickle); ``done(k)`` once the first ``k`` results are in."""
    def collect(results: Iterator[Any]) -> list[Any]:
        out = []
        for r in results:
            out.append(r)
            if done is not None:
                done(len(out))
        return out

    if jobs <= 1 or len(calls) < 2:
        return collect(fn(*c) for c in calls)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(jobs, len(calls)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *c) for c in calls]
        return collect(f.result() for f in futures)
