"""Build hook (everything else is in pyproject.toml): the bundled model packages of
``Resources/Models`` (their model.json, weights.safetensors, model.onnx and *.pipeline.json; not the training
script) go into the wheel as ``voxmetric/bundled_models``, so that ``pip install voxmetric`` then
``voxmetric demo`` finds them. An editable install reads them from ``Resources/Models`` itself."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MODELS = Path(__file__).resolve().parent / "Resources" / "Models"


class BuildPyWithModels(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False) or not MODELS.is_dir():
            return
        target = Path(self.build_lib) / "voxmetric" / "bundled_models"
        shutil.rmtree(target, ignore_errors=True)  # a reused build/ folder must not keep models removed since
        for f in sorted(MODELS.rglob("*")):
            if f.is_file() and f.name.endswith((".json", ".safetensors", ".onnx")) and not f.name.startswith("."):
                dest = target / f.relative_to(MODELS)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)


setup(cmdclass={"build_py": BuildPyWithModels})
