"""VoxMetric Prostate's Evaluate section on a phantom, next to `voxmetric evaluate` on the same
files (the README's "Compare with a reference" example).

    nice -n 10 python Testing/Benchmarks/compare_in_slicer.py [--work DIR] [--seed 12345]

1. A CT phantom (``voxmetric phantom``-style, ``phantom.make_case(seed)``) is written as
   ``phantom.nrrd`` and its ground truth as ``truth.seg.nrrd``; the bundled pipeline segments
   the phantom (``voxmetric segment … -o result.seg.nrrd``, a child process, as the panel runs it).
2. A slicer-core MRML scene loads the three files as Slicer does (the volume; both .seg.nrrd files
   through Slicer's segmentation storage node — loaded segmentations name no reference volume, so
   the phantom is picked under "Compare on", as a user would), and the Evaluate section's logic
   (``VoxMetricSegLib.evaluate``: masks copied on the calling thread, metrics in the worker)
   appends a row to a "VoxMetric comparison" table node.
3. ``voxmetric evaluate --pred result.seg.nrrd --ref truth.seg.nrrd`` runs on the same files.

Prints JSON lines: ``table`` (the table node's columns and last row), ``cli`` (the CLI's stdout
table and its metrics.json row), one ``metric`` line per column (table value, CLI value, equal), and
``timing`` (median seconds over ``--repeat`` comparisons copying the masks on the calling thread
and computing in the worker; for scale, copying both masks on the whole grid; the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "VoxMetricSeg"), str(ROOT / "Testing" / "Python")]
import numpy as np  # noqa: E402
import slicer  # noqa: E402
from slicer_standins import new_mrml_scene  # type: ignore  # noqa: E402  (a real MRML scene, Slicer's logics wired)
from VoxMetricSegLib import evaluate  # noqa: E402

from voxmetric import mrml  # noqa: E402
from voxmetric.io import read_volume, segment_info, write_segmentation, write_volume  # noqa: E402
from voxmetric.phantom import LABELS, make_case  # noqa: E402


def say(**event: object) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)


def load_segmentation(scene, path: Path, name: str):
    """A .seg.nrrd loaded as Slicer loads it: a segmentation node read by its storage node."""
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if storage.ReadData(node) != 1:
        raise SystemExit(f"Slicer could not read {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--work", help="folder for the files (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=12345, help="phantom seed (default 12345, the demo's)")
    ap.add_argument("--repeat", type=int, default=5, help="comparisons to time (median; default 5)")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="voxmetric-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}

    case = make_case(a.seed, "ct")
    image, truth = work / "phantom.nrrd", work / "truth.seg.nrrd"
    write_volume(case.image, image)
    write_segmentation(truth, case.labels, [segment_info(n, v) for n, v in LABELS.items()])
    result = work / "result.seg.nrrd"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "voxmetric", "segment", str(image), "-o", str(result), "--device", "cpu"],
                   check=True, env=env, capture_output=True, text=True)
    say(event="segmented", image=str(image), result=str(result), seconds=round(time.perf_counter() - t0, 1),
        shape_zyx=list(case.image.shape), spacing_xyz_mm=[round(float(v), 3) for v in case.image.spacing])

    scene = new_mrml_scene()
    slicer.mrmlScene = scene
    volume = mrml.node_from_volume(scene, read_volume(image), "phantom")
    model = load_segmentation(scene, result, "result")
    reference = load_segmentation(scene, truth, "truth")
    plan = evaluate.plan(model, "Prostate", reference, "Prostate")
    say(event="plan_without_volume", runnable=plan.runnable, reason=plan.reason)
    plan = evaluate.plan(model, "Prostate", reference, "Prostate", volume)
    say(event="plan", runnable=plan.runnable, text=plan.grid_text)

    evaluator, table = evaluate.Evaluator(), None
    snapshot_s: list[float] = []
    worker_s: list[float] = []
    for _ in range(a.repeat):  # one row per comparison, appended
        t0 = time.perf_counter()
        evaluator.start(model, "Prostate", reference, "Prostate", volume)  # the GUI-thread part: the snapshots
        snapshot_s.append(time.perf_counter() - t0)
        while evaluator.busy:
            time.sleep(0.005)
        done = evaluator.result()
        assert done is not None
        worker_s.append(done.seconds)
        table = evaluate.record(scene, table, done)
    t0 = time.perf_counter()
    for node in (model, reference):  # for scale: copying the two masks on the whole grid
        mrml.mask_from_segment(node, "Prostate", volume)
    whole_s = time.perf_counter() - t0
    assert table is not None
    header, rows = mrml.read_table(table)
    row: dict[str, Any] = dict(zip(header, rows[-1]))
    say(event="table", node=table.GetName(), columns=header, row=row,
        units={c: table.GetColumnUnitLabel(c) for c in header if table.GetColumnUnitLabel(c)})

    out = subprocess.run([sys.executable, "-m", "voxmetric", "evaluate", "--pred", str(result), "--ref", str(truth),
                          "--out", str(work / "cli")], check=True, env=env, capture_output=True, text=True)
    (cli,) = json.loads((work / "cli" / "metrics.json").read_text(encoding="utf-8"))["cases"]
    say(event="cli", command=f"voxmetric evaluate --pred {result.name} --ref {truth.name}",
        stdout=out.stdout.splitlines()[:3], row={k: cli[k] for k, _, _ in evaluate.METRIC_COLUMNS})
    same = True
    for key, title, unit in evaluate.METRIC_COLUMNS:
        equal = bool(np.isclose(float(row[title]), float(cli[key]), rtol=1e-12, atol=0))
        same &= equal
        say(event="metric", column=title, unit=unit, table=row[title], cli=cli[key], equal=equal)
    say(event="timing", repeat=a.repeat, snapshot_median_s=round(float(np.median(snapshot_s)), 4),
        worker_median_s=round(float(np.median(worker_s)), 4), whole_grid_copies_s=round(whole_s, 4), all_equal=same,
        load=[round(v, 2) for v in os.getloadavg()], machine=platform.processor() or platform.machine(),
        cpus=os.cpu_count())
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
