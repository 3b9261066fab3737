"""Python dependencies inside Slicer, installed in child processes (never on the GUI thread).

torch comes the way the PyTorch extension installs it (``light-the-torch``, which picks the
CUDA build that fits the driver); the other packages from ``Resources/requirements.txt``. Each
step is a ``PythonSlicer -m pip|light_the_torch …`` :class:`~voxmetric.jobs.Job` that the
panel polls like an engine job, so Slicer stays responsive and Cancel kills it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxmetric.jobs import Job

TORCH_REQUIREMENT = "torch>=2.1"
LTT_REQUIREMENT = "light-the-torch>=0.5"


@dataclass(frozen=True)
class Step:
    """One install command: ``python -m <module> <args>``, and what it does in words."""

    module: str
    args: tuple[str, ...]
    text: str


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def requirement_names(requirements: Path) -> list[str]:
    """The requirement lines of a requirements file (comments and blanks dropped)."""
    lines = requirements.read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def missing(requirements: Path, installed: Callable[[str], bool] = _installed,
            has_torch: Callable[[], bool] | None = None) -> list[str]:
    """Requirements not installed yet (torch first when absent); versions are left to pip."""
    torch = has_torch() if has_torch is not None else importlib.util.find_spec("torch") is not None
    out = [] if torch else [TORCH_REQUIREMENT]
    for req in requirement_names(requirements):
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]
        if not installed(name):
            out.append(req)
    return out


def plan(requirements: Path, todo: Sequence[str], installed: Callable[[str], bool] = _installed) -> list[Step]:
    """The install commands for ``todo`` (from :func:`missing`), in order."""
    steps: list[Step] = []
    rest = [r for r in todo if r != TORCH_REQUIREMENT]
    if TORCH_REQUIREMENT in todo:
        if not installed("light-the-torch"):
            steps.append(Step("pip", ("install", LTT_REQUIREMENT), "installing light-the-torch"))
        steps.append(Step("light_the_torch", ("install", TORCH_REQUIREMENT),
                          "installing PyTorch (the build that fits this computer's GPU, else the CPU one)"))
    if rest:
        steps.append(Step("pip", ("install", *rest), "installing " + ", ".join(rest)))
    return steps


class Installer:
    """Runs :func:`plan`'s steps one after the other as child processes.

    Poll it like a job: :meth:`poll_events` returns the current step's events (progress lines
    for each step start) and one final ``{"event": "exit", "returncode": …, "message": …}``
    after the last step or the first failure."""

    def __init__(self, steps: Sequence[Step], python: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.steps = list(steps)
        self.python, self.env = python, env
        self.index = -1
        self.job: Job | None = None
        self.cancelled = False
        self._finished = False
        self._queued: list[dict[str, Any]] = [self._next()]

    def _next(self) -> dict[str, Any]:
        self.index += 1
        if self.index >= len(self.steps):
            self._finished = True
            importlib.invalidate_caches()  # the new packages can be imported at once
            return {"event": "exit", "returncode": 0, "cancelled": False, "timed_out": False, "stderr": "",
                    "message": ""}
        step = self.steps[self.index]
        self.job = Job(list(step.args), python=self.python, env=self.env, module=step.module)
        return {"event": "progress", "done": self.index, "total": len(self.steps),
                "message": f"Step {self.index + 1}/{len(self.steps)}: {step.text}…"}

    @property
    def running(self) -> bool:
        return not self._finished

    def poll_events(self) -> list[dict[str, Any]]:
        out, self._queued = self._queued, []
        if self._finished or self.job is None:
            return out
        for event in self.job.poll_events():
            if event.get("event") != "exit":
                continue  # pip's own lines are not shown in the status line
            if event.get("returncode") != 0 or self.cancelled:
                self._finished = True
                step = self.steps[self.index]
                tail = (event.get("stderr") or "").strip().splitlines()[-1:]
                out.append({**event, "cancelled": self.cancelled, "message": "Cancelled." if self.cancelled else
                            f"Could not finish {step.text} ({' '.join(tail) or 'exit code ' + str(event.get('returncode'))}). "
                            "Check the internet connection, or install the packages in the Python console "
                            f"(slicer.util.pip_install('{' '.join(step.args[1:])}'))."})
                return out
            out.append(self._next())
        return out

    def cancel(self) -> None:
        self.cancelled = True
        if self.job is not None:
            self.job.cancel()
