"""``pip install voxmetric`` then ``voxmetric demo`` (issues 13, 11): the wheel carries the bundled
models with their ONNX graphs (``Resources/Models`` → ``voxmetric/bundled_models``), and the demo
runs without matplotlib (an optional dependency: no overview picture, a note saying how to get it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = sorted(p.parent.name for p in (ROOT / "Resources" / "Models").glob("*/model.json"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("voxmetric-*.whl"))


@pytest.mark.slow
def test_the_wheel_carries_the_bundled_models(wheel: Path) -> None:
    assert BUNDLED, "no bundled models in Resources/Models"
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in BUNDLED:
        for f in ("model.json", "weights.safetensors", "model.onnx"):
            assert f"voxmetric/bundled_models/{model}/{f}" in names, sorted(n for n in names if "bundled" in n)
    assert "voxmetric/bundled_models/synth.pipeline.json" in names
    assert not any(n.endswith(".py") and "bundled_models" in n for n in names)


@pytest.mark.slow
def test_installed_demo_runs_without_matplotlib(wheel: Path, tmp_path: Path) -> None:
    """The wheel installed on its own (not this checkout), matplotlib and torch made unimportable:
    the bundled packages' ONNX graphs run on ONNX Runtime."""
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('No module named matplotlib')\n")
    (blocker / "torch.py").write_text("raise ImportError('No module named torch')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXMETRIC_")}
    env.update(PYTHONPATH=os.pathsep.join([str(blocker), str(site)]), VOXMETRIC_HOME=str(tmp_path / "home"),
               OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import voxmetric, voxmetric.models as m; "
                            "print(voxmetric.__file__); print(m.bundled_models_dir())"],
                           env=env, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace")
    assert where.stdout.splitlines()[0].startswith(str(site)), where.stdout + where.stderr
    assert where.stdout.splitlines()[1] == str(site / "voxmetric" / "bundled_models")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "voxmetric.cli", "demo", "--out", str(out), "--device", "cpu"],
                          env=env, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "matplotlib" in proc.stderr and "pip install" in proc.stderr
    cases = json.loads((out / "metrics.json").read_text())["cases"]
    assert [c["modality"] for c in cases] == ["ct", "mr"] and all(c["found"] for c in cases)
    assert (out / "ct_prediction.seg.nrrd").is_file() and (out / "mr_prediction.seg.nrrd").is_file()
    assert not (out / "overview.png").exists()
