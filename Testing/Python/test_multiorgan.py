"""Multi-organ end to end: train on several segments, a package that records its classes with
SNOMED terminology, ``segment`` writing every class, ``evaluate`` scoring each segment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from voxmetric import io
from voxmetric.cli import main
from voxmetric.phantom import LABELS, make_case

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "VoxMetricSeg"))

torch.set_num_threads(1)
ORGANS = ("Prostate", "Bladder", "Rectum")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multi")
    rows = []
    for i in range(3):
        c = make_case(100 + i, "ct", shape=(32, 64, 64), spacing=(2.0, 2.0, 2.5))
        io.write_volume(c.image, out / f"case{i}.nrrd")
        io.write_segmentation(out / f"case{i}.seg.nrrd", c.labels, [io.segment_info(n, v) for n, v in LABELS.items()])
        rows.append({"id": f"case{i}", "image": f"case{i}.nrrd", "label": f"case{i}.seg.nrrd", "modality": "ct"})
    (out / "manifest.json").write_text(json.dumps({"format": "voxmetric-cases/1", "cases": rows}))
    return out


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(list(args))
    finally:
        torch.set_num_threads(1)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("method, extra", [
    ("VoxelSimSiam-small", ["--mode", "grid", "--grid", "16,32,32", "--max-features", "128", "--max-fn", "64"]),
    ("UNet", ["--base", "4", "--embed-channels", "8", "--patch", "32", "--per-case", "8"]),
])
def test_train_segment_evaluate_every_organ(phantoms: Path, tmp_path: Path, capsys, monkeypatch,
                                            method: str, extra: list[str]) -> None:
    monkeypatch.setenv("VOXMETRIC_HOME", str(tmp_path / "home"))
    pkg = tmp_path / "multi-model"
    rc, _, err = run(capsys, "train", "--method", method, "--cases", str(phantoms), "--segment", ",".join(ORGANS),
                     "--out", str(pkg), "--iterations", "3", "--batch-size", "2", "--val-cases", "1", "--val-every",
                     "3", "--spacing-mm", "2", "--device", "cpu", "--events-jsonl", *extra)
    assert rc == 0, err
    card = json.loads((pkg / "model.json").read_text(encoding="utf-8"))
    assert card["format"] == "voxmetric-model/2"
    assert [(c["name"], c["value"]) for c in card["classes"]] == [(n, k) for k, n in enumerate(ORGANS, 1)]
    assert "SCT^41216001^Prostate" in card["classes"][0]["terminology"]
    assert "SCT^89837001" in card["classes"][1]["terminology"] and "SCT^34402009" in card["classes"][2]["terminology"]
    assert set(card["validation"]["classes"]) == set(ORGANS)

    out = tmp_path / "seg" / "case0.seg.nrrd"
    args = ["segment", str(phantoms / "case0.nrrd"), "-o", str(out), "--model", str(pkg), "--modality", "ct",
            "--device", "cpu"]
    if method == "UNet":  # a stage-2 model: refine in a given box, no localizer needed
        from voxmetric.markups import write_roi
        from voxmetric.volume import Box

        vol = io.read_volume(phantoms / "case0.nrrd")
        roi = write_roi(Box.from_volume_extent(vol), tmp_path / "roi.mrk.json")
        monkeypatch.setenv("VOXMETRIC_BUNDLED_MODELS", str(tmp_path / "none"))  # no localizer installed at all
        args += ["--stage", "refine", "--roi-file", str(roi)]
    rc, stdout, err = run(capsys, *args)
    assert rc == 0, err
    seg = io.read_segmentation(out)
    assert seg.names == list(ORGANS) and [s.label_value for s in seg.segments] == [1, 2, 3]
    assert all(s.terminology for s in seg.segments)
    assert seg.labelmap.same_grid(io.read_volume(phantoms / "case0.nrrd"))
    timings = json.loads((out.parent / "case0_timings.json").read_text(encoding="utf-8"))
    assert timings["classes"] == list(ORGANS) and set(timings["voxels"]) == set(ORGANS)

    rc, table, err = run(capsys, "evaluate", "--pred", str(out), "--ref", str(phantoms / "case0.seg.nrrd"),
                         "--out", str(tmp_path / "report"))
    assert rc == 0, err
    for organ in ORGANS:
        assert f"segment {organ}:" in table
    doc = json.loads((tmp_path / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert [r["segment"] for r in doc["cases"]] == list(ORGANS) and set(doc["segments"]) == set(ORGANS)
    assert all(0.0 <= r["dsc"] <= 1.0 for r in doc["cases"])


def test_prostate_only_model_output_is_unchanged(tmp_path: Path) -> None:
    """A model trained on the prostate alone writes one segment 'Prostate', label value 1."""
    from voxmetric.pipeline import segment_file

    from test_pipeline import _ct, _stages

    from voxmetric.pipeline import Pipeline

    loc, ref = _stages()
    img = io.write_volume(_ct(), tmp_path / "scan.nrrd")
    summary = segment_file(Pipeline(loc, ref, "ct"), img, tmp_path / "scan.seg.nrrd")
    seg = io.read_segmentation(tmp_path / "scan.seg.nrrd")
    assert seg.names == ["Prostate"] and seg.segments[0].label_value == 1 and "41216001" in seg.segments[0].terminology
    assert set(np.unique(seg.labelmap.array)) == {0, 1} and summary["classes"] == ["Prostate"]


@pytest.mark.mrml
@pytest.mark.slow
def test_slicer_module_writes_every_class_as_a_segment(phantoms: Path, tmp_path: Path, capsys, mrml_scene) -> None:
    """VoxMetric Prostate's logic with a multi-organ model: one named, SNOMED-coded segment per
    class in the segmentation node; a second run adds "Prostate 2", … and overwrites nothing."""
    import sys

    from VoxMetricSegLib import SegmentLogic

    from voxmetric import mrml

    pkg = tmp_path / "grid-model"
    rc, _, err = run(capsys, "train", "--method", "UNet3D-small", "--cases", str(phantoms), "--segment",
                     ",".join(ORGANS), "--out", str(pkg), "--iterations", "2", "--batch-size", "1", "--val-cases", "0",
                     "--mode", "grid", "--grid", "16,32,32", "--spacing-mm", "2", "--device", "cpu")
    assert rc == 0, err
    volume = mrml.node_from_volume(mrml_scene, io.read_volume(phantoms / "case1.nrrd"), "case1")
    logic = SegmentLogic(python=sys.executable)
    first = logic.run("segment", mrml_scene, volume, model=str(pkg), modality="ct", device="cpu")
    seg_node = first.segmentation_node
    segmentation = seg_node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == list(ORGANS) and list(first.segment_ids) == list(ORGANS)
    codes = ("41216001", "89837001", "34402009")
    for organ, code in zip(ORGANS, codes):
        assert code in segmentation.GetSegment(first.segment_ids[organ]).GetTerminology()
    second = logic.run("segment", mrml_scene, volume, segmentation_node=seg_node, model=str(pkg), modality="ct",
                       device="cpu")
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == [*ORGANS, *(f"{o} 2" for o in ORGANS)] and second.segmentation_node is seg_node
    logic.cleanup()
