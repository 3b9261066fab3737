"""VoxMetricTrain's Qt-free logic on a real MRML scene (slicer-core): the module's self-test
body (scene cases → export → a short training in a child process → loss table → installed
model), export checks, event handling, and cancel → resume."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "VoxMetricTrain"))

from VoxMetricTrainLib import CasePair, TrainLogic, export_cases, pairs_from_scene  # noqa: E402
from VoxMetricTrainLib.selftest import TINY_UNET, add_phantom_cases, models_home, run_train_from_scene  # noqa: E402

from voxmetric.errors import ConfigError, InputError, SegmentNotFoundError  # noqa: E402

pytestmark = pytest.mark.mrml
QUIET = {"OMP_NUM_THREADS": "1"}  # the CI machine has 2 shared cores


@pytest.mark.slow
def test_self_test_body_trains_and_installs_a_model(mrml_scene, tmp_path):
    result = run_train_from_scene(mrml_scene, TrainLogic(python=sys.executable, env=QUIET), tmp_path / "home")
    assert result["rows"] == 2 and Path(result["model"]).is_dir()
    print(result)


def test_export_writes_scene_voxels_segments_and_manifest(mrml_scene, tmp_path):
    from voxmetric import mrml
    from voxmetric.cases import load_cases
    from voxmetric.io import read_segmentation, read_volume

    pairs = add_phantom_cases(mrml_scene, 2, shape=(12, 40, 40))
    manifest = export_cases(pairs, tmp_path / "cases", modality="ct")
    records = load_cases(manifest)
    assert [r.id for r in records] == ["case000", "case001"]
    for pair, rec in zip(pairs, records):
        image = read_volume(rec.image)
        node = mrml.volume_from_node(pair.volume_node)
        np.testing.assert_array_equal(image.array, node.array)
        np.testing.assert_allclose(image.index_to_physical_matrix, node.index_to_physical_matrix, atol=1e-6)
        seg = read_segmentation(rec.label)
        assert seg.names == ["Prostate"] and "41216001" in (seg.segments[0].terminology or "")
        np.testing.assert_array_equal(seg.mask("prostate").array,
                                      mrml.mask_from_segment(pair.segmentation_node, "Prostate", pair.volume_node).array)
    assert pairs_from_scene(mrml_scene, "Bladder") == []


def test_export_several_segments_as_classes(mrml_scene, tmp_path):
    from voxmetric import mrml
    from voxmetric.cases import load_cases
    from voxmetric.io import read_label_map, read_segmentation

    pairs = add_phantom_cases(mrml_scene, 2, shape=(12, 40, 40))
    vol, seg = pairs[0].volume_node, pairs[0].segmentation_node
    shape = mrml.volume_from_node(vol).shape
    bladder = np.zeros(shape, np.uint8)
    bladder[2:6, 5:15, 5:15] = 1
    mrml.write_mask_segment(seg, bladder, vol, "bladder")  # spelt differently from the request
    multi = pairs_from_scene(mrml_scene, "Prostate, Bladder")
    assert [p.segment for p in multi] == ["Prostate,bladder"]  # only the case that has both
    manifest = export_cases(multi, tmp_path / "cases", modality="ct")
    (rec,) = load_cases(manifest)
    assert rec.segments == ("Prostate", "bladder")
    saved = read_segmentation(rec.label)
    assert saved.names == ["Prostate", "bladder"] and [s.label_value for s in saved.segments] == [1, 2]
    assert "89837001" in (saved.segments[1].terminology or "")  # SNOMED CT urinary bladder
    labels, names = read_label_map(rec.label, rec.segments)
    prostate = mrml.mask_from_segment(seg, "Prostate", vol).array > 0
    np.testing.assert_array_equal(labels.array == 1, prostate)  # the first listed wins any overlap
    np.testing.assert_array_equal(labels.array == 2, (bladder > 0) & ~prostate)


def test_export_rejects_bad_rows(mrml_scene, tmp_path):
    from voxmetric import mrml

    pairs = add_phantom_cases(mrml_scene, 1, shape=(12, 40, 40))
    vol, seg = pairs[0].volume_node, pairs[0].segmentation_node
    with pytest.raises(InputError, match="No training cases"):
        export_cases([], tmp_path)
    with pytest.raises(InputError, match="pick both"):
        export_cases([CasePair(vol, None)], tmp_path)
    with pytest.raises(InputError, match="repeats"):
        export_cases([pairs[0], CasePair(vol, seg, "PROSTATE")], tmp_path)
    with pytest.raises(SegmentNotFoundError, match="Available segments: 'Prostate'"):
        export_cases([CasePair(vol, seg, "Rectum")], tmp_path)
    mrml.write_mask_segment(seg, np.zeros(mrml.volume_from_node(vol).shape, np.uint8), vol, "Bladder")
    with pytest.raises(InputError, match="is empty"):
        export_cases([CasePair(vol, seg, "Bladder")], tmp_path)


def test_start_checks_settings_before_starting(mrml_scene, tmp_path):
    logic = TrainLogic(python=sys.executable)
    with models_home(tmp_path):
        with pytest.raises(ConfigError, match="Unknown method"):
            logic.start(mrml_scene, "NoSuchNet", tmp_path, "Prostate", "m1", 10, 2)
        with pytest.raises(ConfigError, match="not valid"):
            logic.start(mrml_scene, "UNet", tmp_path, "Prostate", "bad name/..", 10, 2)
        with pytest.raises(InputError, match="does not exist"):
            logic.start(mrml_scene, "UNet", tmp_path / "nowhere", "Prostate", "m1", 10, 2)
        with pytest.raises(ConfigError, match="Unknown device"):
            logic.start(mrml_scene, "UNet", tmp_path, "Prostate", "m1", 10, 2, device="tpu")
        with pytest.raises(ConfigError, match="no training run called 'm2'"):
            logic.resume(mrml_scene, "m2")
        # checkpoints of an earlier run are never deleted by a new Train
        ckpts = logic.runs_dir() / "m3" / "work" / "checkpoints"
        ckpts.mkdir(parents=True)
        (ckpts / "best.safetensors").write_bytes(b"x")
        with pytest.raises(ConfigError, match="cannot be resumed"):
            logic.start(mrml_scene, "UNet", tmp_path, "Prostate", "m3", 10, 2)
        (ckpts / "last.safetensors").write_bytes(b"x")
        with pytest.raises(ConfigError, match="Press Resume"):
            logic.start(mrml_scene, "UNet", tmp_path, "Prostate", "m3", 10, 2)
        assert (ckpts / "best.safetensors").read_bytes() == b"x"
        assert logic.job is None and not logic.busy


def test_fine_tuning_reaches_the_command_run_json_and_resume(mrml_scene, tmp_path, monkeypatch):
    """Start from a model: --init-from / --freeze-encoder in the command, both in run.json, and
    Resume (after a restart: a new logic) passes them again; bad choices are refused first."""
    import json

    from VoxMetricTrainLib import logic as logic_module
    from VoxMetricTrainLib.selftest import save_tiny_model

    from voxmetric.errors import ModelError

    class Recorded:  # the child process, recorded instead of started
        def __init__(self, args, **_kw):
            self.args, self.running = list(args), False

    monkeypatch.setattr(logic_module, "Job", Recorded)
    with models_home(tmp_path / "home"):
        save_tiny_model(tmp_path, "base-unet")
        cases = tmp_path / "cases"
        cases.mkdir()
        logic = TrainLogic()
        job = logic.start(None, "UNet", cases, "Prostate", "tuned", 4, 2, device="cpu", init_from="base-unet",
                          freeze_encoder=True)
        tail = job.args[job.args.index("--events-jsonl") + 1:]
        assert tail == ["--segment", "Prostate", "--init-from", "base-unet", "--freeze-encoder"], job.args
        run = logic.runs_dir() / "tuned"
        settings = json.loads((run / "run.json").read_text())
        assert settings["init_from"] == "base-unet" and settings["freeze_encoder"] is True
        (run / "work" / "checkpoints").mkdir(parents=True)
        (run / "work" / "checkpoints" / "last.safetensors").write_bytes(b"x")  # interrupted
        again = TrainLogic().resume(None, "tuned", device="cpu")
        assert again.args[-4:] == ["--init-from", "base-unet", "--freeze-encoder", "--resume"], again.args
        assert json.loads((run / "run.json").read_text())["init_from"] == "base-unet"
        # from scratch: no flags, and run.json says so
        plain = logic.start(None, "UNet", cases, "Prostate", "plain", 4, 2)
        assert "--init-from" not in plain.args and "--freeze-encoder" not in plain.args
        assert json.loads((logic.runs_dir() / "plain" / "run.json").read_text())["init_from"] is None
        with pytest.raises(ConfigError, match="Freeze encoder"):
            logic.start(None, "UNet", cases, "Prostate", "m1", 4, 2, freeze_encoder=True)
        with pytest.raises(ModelError, match="no-such-model"):
            logic.start(None, "UNet", cases, "Prostate", "m1", 4, 2, init_from="no-such-model")
        with pytest.raises(ModelError, match="fine-tune it with --method UNet"):
            logic.start(None, "Localizer", cases, "Prostate", "m1", 4, 2, init_from="base-unet")
        assert not (logic.runs_dir() / "m1").exists()


def test_events_fill_the_loss_table_and_the_status(mrml_scene):
    from voxmetric import mrml

    logic = TrainLogic()
    logic.table_node = mrml.loss_table(mrml_scene, "t")
    up = logic.handle({"event": "iteration", "iteration": 10, "total": 40, "loss": 0.5, "it_per_s": 3.0})
    assert up.percent == 25 and "loss 0.5000" in up.status and up.log == up.status
    up = logic.handle({"event": "validation", "iteration": 10, "dsc": 0.71, "hd95": None, "best": True})
    assert up.percent is None and "DSC 0.710" in up.status and "HD95 n/a" in up.status and "best" in up.status
    logic.handle({"event": "validation", "iteration": 15, "dsc": None})
    assert logic.handle({"event": "log", "message": "hello"}).log == "hello"
    assert logic.handle({"event": "error", "message": "bad cases"}).status == "bad cases"
    assert logic.handle({"event": "exit", "returncode": 0, "cancelled": True}).status.startswith("Cancelled")
    table = logic.table_node.GetTable()
    assert table.GetNumberOfRows() == 2
    assert [table.GetValue(0, c).ToDouble() for c in range(3)] == [10.0, 0.5, 0.71]
    assert math.isnan(table.GetValue(1, 1).ToDouble()) and math.isnan(table.GetValue(1, 2).ToDouble())
    assert logic.finish() is None  # cancelled: nothing to install
    with pytest.raises(Exception, match="Training failed: bad cases"):
        logic.finish([{"event": "error", "message": "bad cases"}, {"event": "exit", "returncode": 2}])


@pytest.mark.slow
def test_cancel_then_resume_finishes_and_installs(mrml_scene, tmp_path):
    from voxmetric import models

    with models_home(tmp_path / "home"):
        pairs = add_phantom_cases(mrml_scene, 3)
        logic = TrainLogic(python=sys.executable, env=QUIET)
        args = ("UNet", pairs, "Prostate", "resumed", 20, 2)
        job = logic.start(mrml_scene, *args, device="cpu", modality="ct",
                          extra_args=[*TINY_UNET, "--checkpoint-every", "10"])
        end = time.time() + 300
        while time.time() < end and not any(e.get("kind") == "last" for e in logic.events):
            for e in job.poll_events():
                logic.handle(e)
            time.sleep(0.02)
        logic.cancel()
        while not any(e.get("event") == "exit" for e in logic.events):
            for e in job.poll_events():
                logic.handle(e)
            time.sleep(0.02)
        assert logic.finish() is None and not (logic.run_dir / "model").exists()
        with pytest.raises(ConfigError, match="Press Resume"):
            logic.start(mrml_scene, *args)
        rows_before = logic.table_node.GetNumberOfRows()
        info, events = logic.run(mrml_scene, "resumed", resume=True, timeout=300)
        assert any(e.get("message", "").startswith("resumed from") for e in events)
        assert [e["iteration"] for e in events if e.get("event") == "iteration"][-1] == 20
        assert logic.table_node.GetNumberOfRows() > rows_before  # the same curve continues
        assert info is not None and info.name == "resumed" and "resumed" in [m.name for m in models.list_models()]
