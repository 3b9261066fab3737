"""Mask equality of the fast inference path against the reference fp32 torch path (issue 14);
prints one JSON line per case and a summary; exit status 1 when a case is below ``--min-dsc``.

    python Testing/Benchmarks/check_masks.py [--models DIR] [--model synth] [--cases 10]
        [--seed 5000] [--real /work/shared/data/pelvis_ct/example_ct.nii.gz] [--min-dsc 0.995]
        [--reference-src DIR --work DIR]

Cases: ``--cases`` CT phantoms (``voxmetric.phantom.make_case(seed + i, "ct")``, random grids
and orientations) and the real CT ``--real`` when it exists. Models: the pipeline ``--model``
(default: the default pipeline for CT) from ``--models`` (``VOXMETRIC_BUNDLED_MODELS``; default
the bundled ``Resources/Models``); packages without an ONNX graph get one in a temporary copy
(``voxmetric.models.add_onnx``), so the fast path is what ``voxmetric segment`` runs.

- default: in one process, ``load_pipeline(..., runtime="onnx")`` (ONNX Runtime, fp32) against
  ``runtime="torch"`` (the torch fp32 network) on the same image: Dice of the masks, whether both
  found the prostate, the largest difference of the ROI boxes (mm); the fast mask also goes
  through the cropped ``.seg.nrrd`` writer and is read back.
- ``--reference-src DIR``: the reference is instead the ``voxmetric segment`` command of another
  engine checkout (e.g. ``git archive 777bf18 | tar -x -C DIR``: the engine before issue 14) on
  copies of the packages without graphs, and the fast mask this engine's command, both as whole
  processes on image files written to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
REAL = Path("/work/shared/data/pelvis_ct/example_ct.nii.gz")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    n = int(a.sum()) + int(b.sum())
    return 1.0 if n == 0 else 2.0 * int((a & b).sum()) / n


def with_graphs(models: Path, out: Path) -> Path:
    """``models`` when every exportable package there has an ONNX graph, else a copy that has."""
    from voxmetric import models as M

    todo = [c for c in sorted(models.iterdir()) if (c / "model.json").is_file() and "onnx" not in M.read_card(c)
            and M._exportable(M.read_card(c)) is not None]
    if not todo:
        return models
    shutil.copytree(models, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("work", "*.py"))
    for c in todo:
        M.add_onnx(out / c.name)
    return out


def cases(n: int, seed: int, real: Path | None) -> list[tuple[str, object]]:
    from voxmetric import io
    from voxmetric.phantom import make_case

    out: list[tuple[str, object]] = [(f"phantom_ct_{seed + i}", make_case(seed + i, "ct").image) for i in range(n)]
    if real is not None and real.exists():
        out.append((real.name, io.read_volume(real)))
    return out


def in_process(models: Path, name: str | None, items: list, min_dsc: float) -> list[dict]:
    from voxmetric import io, models as M

    os.environ["VOXMETRIC_BUNDLED_MODELS"] = str(models)
    fast = M.load_pipeline(name, "ct", "cpu", runtime="onnx")
    ref = M.load_pipeline(name, "ct", "cpu", runtime="torch")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="voxmetric-check-"))
    try:
        for case, vol in items:
            a, b = fast.segment(vol), ref.segment(vol)
            ma = np.zeros(vol.shape, np.uint8) if a.mask is None else a.mask.array
            mb = np.zeros(vol.shape, np.uint8) if b.mask is None else b.mask.array
            io.write_segmentation(tmp / "fast.seg.nrrd", vol.with_array(ma), [io.segment_info("Prostate", 1)], crop=True)
            back = io.read_segment_mask(tmp / "fast.seg.nrrd", "Prostate")
            box = max(float(np.abs(a.box.center - b.box.center).max()), float(np.abs(a.box.size - b.box.size).max()))
            rows.append({"case": case, "dsc": round(dice(ma, mb), 6), "found": [a.found, b.found],
                         "box_max_diff_mm": round(box, 4), "voxels": [int(ma.sum()), int(mb.sum())],
                         "file_roundtrip_equal": bool(back.same_grid(vol) and np.array_equal(back.array, ma)),
                         "ok": dice(ma, mb) >= min_dsc and a.found == b.found})
            print(json.dumps({"measure": "case", **rows[-1]}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def as_processes(models: Path, name: str | None, items: list, min_dsc: float, src: Path, work: Path) -> list[dict]:
    from voxmetric import io

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_segment import torch_only_copy

    old_models = torch_only_copy(models, work / "models-torch")
    rows = []
    for case, vol in items:
        img = work / "cases" / f"{case}.nrrd"
        if not img.exists():
            io.write_volume(vol, img)  # type: ignore[arg-type]
        outs = {}
        for kind, env in (("fast", dict(os.environ, VOXMETRIC_BUNDLED_MODELS=str(models))),
                          ("ref", dict(os.environ, VOXMETRIC_BUNDLED_MODELS=str(old_models), PYTHONPATH=str(src)))):
            out = work / kind / f"{case}.seg.nrrd"
            cmd = [sys.executable, "-m", "voxmetric", "segment", str(img), "-o", str(out), "--modality", "ct"]
            if name:
                cmd += ["--model", name]
            subprocess.run(cmd, check=True, env=env, cwd=src if kind == "ref" else ROOT, capture_output=True)
            outs[kind] = io.read_segment_mask(out, "Prostate", reference=io.read_volume(img)).array
            outs[kind + "_found"] = json.loads(out.with_name(f"{case}_timings.json").read_text())["found"]
        d = dice(outs["fast"], outs["ref"])
        rows.append({"case": case, "dsc": round(d, 6), "found": [outs["fast_found"], outs["ref_found"]],
                     "voxels": [int(outs["fast"].sum()), int(outs["ref"].sum())],
                     "ok": d >= min_dsc and outs["fast_found"] == outs["ref_found"]})
        print(json.dumps({"measure": "case", **rows[-1]}), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--model", default=None, help="pipeline name (default: the default pipeline for CT)")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--seed", type=int, default=5000)
    p.add_argument("--real", type=Path, default=REAL)
    p.add_argument("--min-dsc", type=float, default=0.995)
    p.add_argument("--reference-src", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "voxmetric-check-masks")
    a = p.parse_args()
    from voxmetric import models as M

    models = (a.models or M.bundled_models_dir()).resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    fast_models = with_graphs(models, a.work / "models-onnx")
    items = cases(a.cases, a.seed, a.real)
    print(json.dumps({"measure": "setup", "models": str(models), "fast_models": str(fast_models), "model": a.model,
                      "cases": [c for c, _ in items], "reference": str(a.reference_src or "torch fp32, this engine")}),
          flush=True)
    if a.reference_src:
        rows = as_processes(fast_models, a.model, items, a.min_dsc, a.reference_src.resolve(), a.work)
    else:
        rows = in_process(fast_models, a.model, items, a.min_dsc)
    ok = all(r["ok"] for r in rows)
    print(json.dumps({"measure": "summary", "cases": len(rows), "min_dsc": min(r["dsc"] for r in rows),
                      "mean_dsc": float(np.mean([r["dsc"] for r in rows])), "threshold": a.min_dsc,
                      "found_agree": all(r["found"][0] == r["found"][1] for r in rows), "pass": ok}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
