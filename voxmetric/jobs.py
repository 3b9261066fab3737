"""Run a ``voxmetric`` command in a child process and stream its JSON-line events.

This is how the Slicer modules keep the GUI responsive (DESIGN.md rule 5): the engine runs in
``PythonSlicer -m voxmetric … --events-jsonl``; a reader thread parses every stdout line into
an event dict and puts it on a queue that the GUI polls from a timer. ``cancel()`` kills the
whole process tree. Nothing here imports Slicer or Qt.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

ENGINE_ROOT = str(Path(__file__).resolve().parents[1])  # the folder that holds ``voxmetric/``


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
    """A running ``python -m voxmetric ARGS`` child process.

    Events are dicts such as ``{"event": "progress", "done": 3, "total": 10}``; lines that are
    not JSON become ``{"event": "log", "message": line}``. When the process ends a final
    ``{"event": "exit", "returncode": rc, "stderr": tail}`` is queued.
    """

    def __init__(self, args: Sequence[str], python: str | None = None, cwd: str | Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.command = [python or engine_python(), "-m", "voxmetric", *map(str, args)]
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.cancelled = False
        self._stderr: list[str] = []
        popen_kw: dict = {}
        if os.name == "posix":
            popen_kw["start_new_session"] = True  # own process group: cancel kills the tree
        else:
            popen_kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
            errors="replace", bufsize=1,
            cwd=cwd, env=_child_env(env), **popen_kw,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        threading.Thread(target=self._wait, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
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
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line.rstrip("\n"))
            del self._stderr[:-200]  # keep the tail only

    def _wait(self) -> None:
        rc = self.process.wait()
        for t in self._threads:
            t.join(timeout=5)
        self.events.put({"event": "exit", "returncode": rc, "cancelled": self.cancelled,
                         "stderr": "\n".join(self._stderr[-20:])})

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def poll_events(self) -> list[dict]:
        """All events queued since the last call (non-blocking)."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child exits; returns its exit code."""
        return self.process.wait(timeout=timeout)

    def cancel(self) -> None:
        """Kill the child and everything it started (DataLoader workers, torchrun ranks)."""
        if not self.running:
            return
        self.cancelled = True
        if os.name == "posix":
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:  # Windows: taskkill /T kills the tree
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True)
        self.process.wait()


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    """This environment plus ``extra``, with the engine's folder first on PYTHONPATH so the
    child imports the same ``voxmetric`` as the parent."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ENGINE_ROOT, env.get("PYTHONPATH", "")) if p)
    return env
