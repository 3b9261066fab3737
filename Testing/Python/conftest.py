"""Shared pytest fixtures: the real-data folder and a real Slicer MRML scene (slicer-core)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("VOXMETRIC_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real MR with labels, a real pelvic CT); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set VOXMETRIC_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def mrml_scene():
    """A fresh real MRML scene with the module logics Slicer's application would wire up.

    Skips when the ``slicer-core`` wheel is not installed. Sets ``slicer.mrmlScene`` so that
    ``slicer.util`` array helpers work.
    """
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
    from slicer_standins import new_mrml_scene

    scene = new_mrml_scene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)
    slicer.mrmlScene = previous


MODULES = ("VoxMetricSeg", "VoxMetricTrain")


@pytest.fixture()
def standins(mrml_scene):
    """Slicer's application layer stood in (Testing/Python/slicer_standins.py) around a real
    scene; fails the test when a slot raised an exception it did not expect (``standins.
    SLOT_ERRORS``: clear what you expect). Yields the stand-ins module."""
    import slicer_standins

    saved = slicer_standins.install()
    for module in MODULES:
        if str(ROOT / module) not in sys.path:
            sys.path.insert(0, str(ROOT / module))
    try:
        yield slicer_standins
        errors = list(slicer_standins.SLOT_ERRORS)
        assert not errors, f"exceptions in slots: {errors}"
    finally:
        for module in MODULES:
            sys.modules.pop(module, None)
        slicer_standins.uninstall(saved)


def load_module(name: str):
    """Import ``<ROOT>/<name>/<name>.py`` afresh (the module file as Slicer loads it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / name / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def train_widget(home, monkeypatch):
    """(module, widget): VoxMetric Train loaded afresh and set up on the stand-ins (the test asks
    for the ``standins`` fixture), models under ``home``, jobs run by this Python on one thread."""
    monkeypatch.setenv("VOXMETRIC_HOME", str(home))
    module = load_module("VoxMetricTrain")
    widget = module.VoxMetricTrainWidget()
    widget.setup()
    widget.logic.engine.python = sys.executable
    widget.logic.engine.extra_env = {"OMP_NUM_THREADS": "1"}
    widget.parent.isEntered = True
    return module, widget
