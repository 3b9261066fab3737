"""What the Slicer modules run on the GUI thread, timed on a 512×512×200 CT; prints JSON lines.

    python Testing/Benchmarks/bench_gui_thread.py [--repeats 3] [--shape 200 512 512] [--only before|after]

A synthetic CT (int16 HU, 0.8×0.8×2.0 mm, body ellipse with noise) is put into a real
``slicer-core`` MRML scene; a prostate-sized mask (≈ 45×35×35 mm) plays the engine's result.

``before``: the steps the panels ran on the GUI thread up to this change (same engine calls, in
the same order): modality guess on the whole array, volume copy + compressed NRRD write of the
child's input, reading the result on the reference grid + writing the segment, closed surface,
and exporting one training case (copy, segment export, compressed NRRD + .seg.nrrd).

``after``: what is left on the GUI thread now (the writing, reading and compressing run in a
worker thread; see VoxMetricSegLib.logic / VoxMetricTrainLib.logic): a strided modality guess,
the numpy snapshot of the volume, the segment update from the cropped mask, the ROI update,
the snapshot of one training case, and the closed surface (only on request: the "Show 3D" button).

Each line: {"mode", "step", "seconds" (median of --repeats), "runs"}; target: every "after"
step under 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT, ROOT / "Testing" / "Python", ROOT / "VoxMetricSeg", ROOT / "VoxMetricTrain"):
    sys.path.insert(0, str(p))


def emit(d: dict) -> None:
    print(json.dumps(d), flush=True)


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0):
    """int16 HU volume (z, y, x): air −1000, a body ellipse of soft tissue with noise, bone ring."""
    from voxmetric.volume import Volume

    rng = np.random.default_rng(seed)
    z, y, x = shape
    yy, xx = np.ogrid[:y, :x]
    body = ((yy - y / 2) / (0.38 * y)) ** 2 + ((xx - x / 2) / (0.45 * x)) ** 2 <= 1
    ring = body & (((yy - y / 2) / (0.30 * y)) ** 2 + ((xx - x / 2) / (0.36 * x)) ** 2 > 1)
    slab = np.where(body, 40, -1000).astype(np.int16)
    slab[ring] = 700
    a = np.empty(shape, np.int16)
    for k in range(z):
        a[k] = slab + rng.normal(0, 15, (y, x)).astype(np.int16)
    return Volume(a, np.array([0.8, 0.8, 2.0]), np.array([-204.8, -204.8, -200.0]), np.eye(3))


def prostate_mask(image):
    """uint8 (z, y, x) ellipsoid of semi-axes 22×17×17 mm at the centre of ``image``."""
    z, y, x = image.shape
    sx, sy, sz = image.spacing
    zz, yy, xx = np.ogrid[:z, :y, :x]
    e = (((xx - x / 2) * sx / 22) ** 2 + ((yy - y / 2) * sy / 17) ** 2 + ((zz - z / 2) * sz / 17) ** 2) <= 1
    return image.with_array(e.astype(np.uint8))


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    runs, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=(200, 512, 512), metavar=("Z", "Y", "X"))
    ap.add_argument("--only", choices=["before", "after"])
    a = ap.parse_args()

    import slicer
    from slicer_standins import new_mrml_scene

    from voxmetric import io, mrml
    from voxmetric.intensity import looks_like_ct
    from voxmetric.volume import Box

    scene = new_mrml_scene()
    slicer.mrmlScene = scene
    image = synthetic_ct(tuple(a.shape))
    truth = prostate_mask(image)
    node = mrml.node_from_volume(scene, image, "CT")
    work = Path(tempfile.mkdtemp(prefix="voxmetric-bench-"))
    result_file = io.write_segmentation(work / "output.seg.nrrd", truth, [io.PROSTATE])
    box = Box(np.array(image.index_to_physical(np.array(image.size_xyz) / 2)), np.array([70.0, 60, 60]), np.eye(3))
    seg_for_case, _ = mrml.write_mask_segment(None, truth, node, "Prostate", scene=scene)
    base = {"shape_zyx": list(a.shape), "voxels": int(np.prod(a.shape))}

    def report(mode: str, step: str, fn: Callable[[], Any], repeats: int = a.repeats) -> Any:
        med, runs, out = timed(fn, repeats)
        emit({"mode": mode, "step": step, "seconds": round(med, 4), "runs": [round(r, 4) for r in runs], **base})
        return out

    if a.only in (None, "before"):
        from VoxMetricTrainLib.logic import CasePair, export_cases

        report("before", "guess modality (whole array)", lambda: looks_like_ct(slicer.util.arrayFromVolume(node)))
        report("before", "write the child's input (copy + compressed NRRD)",
               lambda: io.write_volume(mrml.volume_from_node(node), work / "input.nrrd"))
        mask = report("before", "read the result onto the reference grid", lambda: io.read_segment_mask(
            result_file, "Prostate", reference=mrml.volume_from_node(node)))
        seg_nodes: list = []
        report("before", "write the segment node (full grid)",
               lambda: seg_nodes.append(mrml.write_mask_segment(None, mask, node, "Prostate", scene=scene)[0]))
        report("before", "closed surface", lambda: seg_nodes.pop().CreateClosedSurfaceRepresentation())
        report("before", "ROI node update", lambda: mrml.roi_from_box(scene, box, "Prostate ROI"))
        report("before", "export one training case (copy, segment, compressed NRRD + .seg.nrrd)",
               lambda: export_cases([CasePair(node, seg_for_case, "Prostate")], work / "cases-before", "ct"))

    if a.only in (None, "after"):
        from VoxMetricSegLib import panel
        from VoxMetricSegLib.logic import read_result
        from VoxMetricTrainLib.logic import CasePair, snapshot_case, write_case

        report("after", "guess modality (strided view)", lambda: panel.guess_modality(slicer.util.arrayFromVolume(node)))
        snap = report("after", "snapshot the input volume (numpy copy)", lambda: mrml.volume_from_node(node))
        worker = report("after", "[worker] write the child's input (compressed NRRD)",
                        lambda: io.write_volume(snap, work / "input-after.nrrd"), 1)
        del worker
        (_, cropped), = report("after", "[worker] read the result, crop to the mask",
                               lambda: read_result(result_file, mrml.geometry_from_node(node)), 1)
        seg_nodes = []
        report("after", "write the segment node (cropped mask)",
               lambda: seg_nodes.append(mrml.write_mask_segment(None, cropped, node, "Prostate", scene=scene)[0]))
        report("after", "ROI node update", lambda: mrml.roi_from_box(scene, box, "Prostate ROI"))
        report("after", "closed surface (on request, Show 3D)", lambda: seg_nodes.pop().CreateClosedSurfaceRepresentation())
        case = report("after", "snapshot one training case (numpy copies)",
                      lambda: snapshot_case(CasePair(node, seg_for_case, "Prostate"), 0))
        report("after", "[worker] write one training case (compressed NRRD + .seg.nrrd)",
               lambda: write_case(case, work / "cases-after", "ct"), 1)

    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
