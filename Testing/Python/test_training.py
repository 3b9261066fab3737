"""Method registry (Table II presets), the generic trainer (loss falls, exact resume, events,
errors), the ``voxmetric train`` command and DDP with two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from voxmetric.errors import ConfigError, DeviceError, InputError, SegmentNotFoundError
from voxmetric.methods import available_methods, config_fields, get_method

ROOT = Path(__file__).resolve().parents[2]
TABLE_II = ["UNet", "UNet++", "MetricUNet-R", "MetricUNet-R-Sep", "MetricUNet-H", "MetricUNet++-H", "MetricUNet-C",
            "MetricUNet-HR", "MetricUNet-HC", "MetricUNet-HP", "MetricUNet-HRP", "MetricUNet-HCP"]
SMALL = {"base": 8, "embed_channels": 16, "patch": 32, "per_case": 50}

torch.set_num_threads(1)


def synthetic_case(i: int, modality: str = "ct"):
    """A prepared 24×48×48 case: noisy background with a brighter ellipsoid 'prostate'."""
    from voxmetric.data import PreparedCase
    from voxmetric.volume import Volume

    rng = np.random.default_rng(i)
    z, y, x = np.mgrid[:24, :48, :48]
    c = np.array([12, 24, 24]) + rng.integers(-3, 4, 3)
    mask = (((z - c[0]) / 6.0) ** 2 + ((y - c[1]) / 9.0) ** 2 + ((x - c[2]) / 8.0) ** 2 <= 1).astype(np.uint8)
    image = (80 + rng.normal(0, 20, mask.shape) + 70 * mask).astype(np.float32)
    vol = Volume(image)
    return PreparedCase(f"case{i}", vol, vol.with_array(mask), modality)


def small(name: str = "MetricUNet-HCP", **extra):
    method = get_method(name)
    return method, method.make_config({**SMALL, **extra})


class Ctx:
    """A StepContext for calling ``Method.loss`` directly (no optimiser)."""

    iteration, total = 0, 1

    def step(self, loss, groups=None) -> None:
        raise AssertionError("not used by loss()")


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Killed(Exception):
    """Raised by :func:`kill_at`'s callback: the run stops as a killed process would."""


def kill_at(iteration: int):
    """An ``emit`` callback that stops training once the last checkpoint of ``iteration`` is written."""

    def emit(e: dict) -> None:
        if e["event"] == "checkpoint" and e["kind"] == "last" and e["iteration"] == iteration:
            raise Killed

    return emit


# ---- registry and presets -----------------------------------------------------------------------
def test_every_table_ii_name_resolves_to_its_preset() -> None:
    names = available_methods()
    for name in TABLE_II:
        assert name in names
        method = get_method(name.lower())  # case-insensitive
        assert method.name == name and method.role == "refiner"
        cfg = method.default_config()
        letters = name.split("-", 1)[1].replace("-Sep", "") if name.startswith("MetricUNet") else ""
        assert set(cfg.strategies) == set(letters.replace("P", ""))
        assert cfg.pair_term == letters.endswith("P")
        assert cfg.detach_embedding == name.endswith("-Sep")
        assert cfg.backbone == ("unetpp2d" if "++" in name else "unet2d")
        assert cfg.k == 20 and cfg.m == 1 and cfg.sigma == 0.7 and cfg.lam == 0.01 and cfg.tau == 0.1
        assert (cfg.spacing_mm, cfg.slab, cfg.patch, cfg.per_case) == (1.0, 3, 64, 500)
        json.dumps(method.config_to_dict(cfg))  # JSON-serialisable
        assert method.config_from_dict(method.config_to_dict(cfg)) == cfg
    hcp = get_method("MetricUNet-HCP").default_config()
    assert hcp.strategies == ("H", "C") and hcp.pair_term and hcp.beta == 0.1 and not hcp.detach_embedding
    assert get_method("MetricUNet-R-Sep").default_config().detach_embedding
    assert get_method("UNet").default_config().strategies == ()


def test_unknown_method_and_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="Available methods: .*UNet, UNet\\+\\+, .*MetricUNet-HCP"):
        get_method("MetricUNet-XYZ")
    method = get_method("MetricUNet-HCP")
    cfg = method.make_config({"strategies": "R,H", "k": "5", "pair-term": "false", "sigma": "1.0"})
    assert cfg.strategies == ("R", "H") and cfg.k == 5 and cfg.pair_term is False and cfg.sigma == 1.0
    assert method.config_flags(cfg) == {"strategies": ["R", "H"], "pair_term": False, "k": 5, "sigma": 1.0}
    with pytest.raises(ConfigError, match="no setting 'kk'.*strategies"):
        method.make_config({"kk": 3})
    with pytest.raises(ConfigError, match="strategies"):
        method.make_config({"strategies": "H,X"})
    with pytest.raises(ConfigError, match="Bad value for 'k'"):
        method.make_config({"k": "many"})
    with pytest.raises(ConfigError, match="multiple of 16"):
        get_method("UNet++").make_config({"patch": 40})
    with pytest.raises(ConfigError, match="detach_embedding needs"):
        get_method("UNet").make_config({"detach_embedding": True})
    assert {f.name for f in config_fields(method.config_cls)} >= {"strategies", "pair_term", "k", "m", "sigma",
                                                                 "eps", "beta", "lam", "tau", "normalize", "backbone"}


def test_training_step_is_ce_plus_lambda_metric_and_sep_detaches() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 255
    y = torch.zeros(2, 32, 32, dtype=torch.long)
    y[:, 8:24, 10:22] = 1
    method, cfg = small("MetricUNet-HCP")
    model = method.build(cfg)
    loss, logs = method.loss(model, {"image": x, "label": y}, cfg, Ctx())
    assert logs["metric"] > 0
    assert float(loss.detach()) == pytest.approx(float(logs["ce"] + cfg.lam * logs["metric"]), rel=1e-5)
    # CE alone (λ = 0): -Sep leaves the body without gradient, the plain variant does not
    for name, body_learns in (("MetricUNet-R-Sep", False), ("MetricUNet-R", True)):
        method, cfg = small(name, lam=0.0)
        model = method.build(cfg)
        loss, _ = method.loss(model, {"image": x, "label": y}, cfg, Ctx())
        loss.backward()
        body = model.conv1a[0].weight.grad
        assert (body is not None and bool(body.abs().sum() > 0)) == body_learns
        assert model.segb.weight.grad.abs().sum() > 0


def test_predict_pads_any_slice_size() -> None:
    from voxmetric.methods import Runtime

    method, cfg = small("UNet++")
    model = method.build(cfg, 3).eval()
    seen: list[float] = []
    p = method.predict(model, cfg, np.random.rand(5, 37, 45).astype(np.float32) * 255,
                       Runtime(torch.device("cpu"), batch_size=2, progress=lambda f, m: seen.append(f)))
    assert p.shape == (3, 5, 37, 45) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)  # softmax over the classes
    assert seen == [0.4, 0.8, 1.0]
    rec = method.data_recipe(cfg)
    assert (rec.spacing_mm, rec.region) == (1.0, "label_box")
    assert method.card_data(cfg) == {"spacing_mm": 1.0, "region": "label_box", "margin_mm": [10.0, 30.0], "slab": 3,
                                     "patch": 32, "per_case": 50, "fg_fraction": 0.5}
    assert method.context_mm(cfg) == (32.0, 32.0, 0.0)


# ---- the trainer -----------------------------------------------------------------------------------
def test_loss_falls_and_events_are_json(tmp_path: Path) -> None:
    from voxmetric.training import TrainConfig, load_checkpoint, train

    method, cfg = small("MetricUNet-HCP")
    events: list[dict] = []
    tcfg = TrainConfig(iterations=40, batch_size=4, log_every=1, val_every=20, checkpoint_every=20)
    result = train(method, cfg, tcfg, [synthetic_case(0), synthetic_case(1)], [synthetic_case(2)], tmp_path,
                   emit=events.append)
    losses = [e["loss"] for e in events if e["event"] == "iteration"]
    assert len(losses) == 40 and result.losses == pytest.approx(losses)
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert {e["event"] for e in events} >= {"log", "progress", "iteration", "validation", "checkpoint", "done"}
    for e in events:
        json.loads(json.dumps(e, allow_nan=False))  # strict JSON (no NaN/inf)
    vals = [e for e in events if e["event"] == "validation"]
    assert [v["iteration"] for v in vals] == [20, 40] and vals[0]["best"]
    assert all(0 <= v["dsc"] <= 1 and v["cases"][0]["id"] == "case2" for v in vals)
    assert events[-1]["event"] == "done"
    assert (tmp_path / "checkpoints" / "last.safetensors").read_bytes()[8:9] == b"{"  # safetensors, no pickle
    tensors, meta = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert meta["iteration"] == 40 and meta["method"] == "MetricUNet-HCP" and len(meta["rng"]) == 1
    card = result.card_fields
    assert card["method"] == "MetricUNet-HCP" and card["role"] == "refiner" and card["modality"] == "ct"
    assert card["config"]["base"] == 8 and card["data"]["slab"] == 3 and card["training"]["cases"] == 2
    assert card["validation"]["iteration"] == result.best_iteration
    assert set(result.state_dict) == set(method.build(cfg).state_dict())


def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path) -> None:
    from voxmetric.training import TrainConfig, train

    method, cfg = small("MetricUNet-HC", k=5)
    cases, val = [synthetic_case(3), synthetic_case(4)], [synthetic_case(5)]
    tcfg = TrainConfig(iterations=8, batch_size=3, val_every=4, checkpoint_every=4, log_every=2)
    full = train(method, cfg, tcfg, cases, val, tmp_path / "a", emit=lambda e: None)

    with pytest.raises(Killed):
        train(method, cfg, tcfg, cases, val, tmp_path / "b", emit=kill_at(4))
    events: list[dict] = []
    resumed = train(method, cfg, tcfg, cases, val, tmp_path / "b", emit=events.append, resume=True)
    assert any("resumed" in e.get("message", "") for e in events)
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [6, 8]
    assert state_equal(full.state_dict, resumed.state_dict)
    assert not state_equal(full.state_dict, {k: v * 0 for k, v in full.state_dict.items()})
    assert full.metrics["dsc"] == resumed.metrics["dsc"]
    # a finished run is not silently overwritten; resume needs a checkpoint and the same settings
    with pytest.raises(ConfigError, match="--resume"):
        train(method, cfg, tcfg, cases, val, tmp_path / "b", emit=lambda e: None)
    with pytest.raises(ConfigError, match="Nothing to resume"):
        train(method, cfg, tcfg, cases, val, tmp_path / "c", emit=lambda e: None, resume=True)
    with pytest.raises(ConfigError, match="same method and settings"):
        train(method, method.make_config({**SMALL, "k": 6}), tcfg, cases, val, tmp_path / "b",
              emit=lambda e: None, resume=True)


def test_weight_averaging_keeps_the_mean_weights_and_resumes_exactly(tmp_path: Path) -> None:
    """``average_from`` 0.5 of 8 iterations: the result is the running mean of the weights after
    iterations 5…8 (held in the checkpoint, so a killed run resumes to the same mean), validated
    once at the end; it differs from the last weights; the card names the setting."""
    from safetensors.torch import load_file

    from voxmetric.training import TrainConfig, train

    method, cfg = small("MetricUNet-HC", k=5)
    cases, val = [synthetic_case(3), synthetic_case(4)], [synthetic_case(5)]
    tcfg = TrainConfig(iterations=8, batch_size=3, val_every=4, checkpoint_every=2, log_every=2, average_from=0.5)
    events: list[dict] = []
    full = train(method, cfg, tcfg, cases, val, tmp_path / "a", emit=events.append)
    last = load_file(str(tmp_path / "a" / "checkpoints" / "last.safetensors"))
    assert int(last["average.n_averaged"]) == 4
    mean = {k[len("average.module."):]: v for k, v in last.items() if k.startswith("average.module.")}
    assert state_equal(full.state_dict, mean)
    weights = {k[6:]: v for k, v in last.items() if k.startswith("model.")}
    assert not state_equal(full.state_dict, weights)
    counters = [k for k, v in weights.items() if not v.is_floating_point()]  # BatchNorm's num_batches_tracked
    assert counters and all(torch.equal(mean[k], weights[k]) for k in counters)
    final = [e for e in events if e["event"] == "validation"][-1]
    assert final["average_of"] == [5, 8] and full.metrics["dsc"] == final["dsc"]
    assert full.card_fields["training"]["average_from"] == 0.5 and full.card_fields["validation"]["iteration"] == 8

    with pytest.raises(Killed):
        train(method, cfg, tcfg, cases, val, tmp_path / "b", emit=kill_at(6))
    resumed = train(method, cfg, tcfg, cases, val, tmp_path / "b", emit=lambda e: None, resume=True)
    assert state_equal(full.state_dict, resumed.state_dict)
    with pytest.raises(ConfigError, match="average_from"):
        TrainConfig(average_from=1.0)


def test_the_running_mean_of_weights_keeps_integer_counters() -> None:
    """The weight average's update: floats averaged, integer buffers (BatchNorm's counters) copied —
    torch's own update of a CUDA model stopped a GPU run at the first averaged iteration."""
    from voxmetric.training import _running_mean

    floats, counter = [torch.tensor([1.0, 3.0])], [torch.tensor(3)]
    _running_mean(floats, [torch.tensor([4.0, 6.0])], torch.tensor(2))  # the mean of 3 values: two before, one new
    _running_mean(counter, [torch.tensor(7)], torch.tensor(2))
    assert torch.equal(floats[0], torch.tensor([2.0, 4.0])) and int(counter[0]) == 7


@pytest.mark.gpu
def test_weight_averaging_on_cuda(tmp_path: Path) -> None:
    """The mean weights on a GPU (the run that found the integer-counter failure)."""
    from voxmetric.training import TrainConfig, train

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    method, cfg = small("MetricUNet-HC", k=5)
    tcfg = TrainConfig(iterations=4, batch_size=3, val_every=4, checkpoint_every=2, average_from=0.5, device="cuda")
    result = train(method, cfg, tcfg, [synthetic_case(3), synthetic_case(4)], [synthetic_case(5)], tmp_path,
                   emit=lambda e: None)
    assert result.iteration == 4 and all(torch.isfinite(v).all() for v in result.state_dict.values())


def test_trainer_errors_before_training(tmp_path: Path) -> None:
    from voxmetric.training import TrainConfig, resolve_device, split_cases, train

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(DeviceError, match="no usable CUDA"):
                resolve_device(name)
    with pytest.raises(ConfigError, match="too few"):
        split_cases([1, 2], val_cases=2)
    with pytest.raises(ConfigError, match="too few"):
        split_cases([1])  # default fraction needs one validation case
    tr, va = split_cases(list(range(10)), seed=3)
    assert len(va) == 1 and sorted(tr + va) == list(range(10)) and split_cases(list(range(10)), seed=3) == (tr, va)
    assert split_cases([1], val_cases=0) == ([1], [])
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    empty = synthetic_case(0)
    empty.mask = empty.mask.with_array(np.zeros_like(empty.mask.array))
    method, cfg = small("UNet")
    events: list[dict] = []
    with pytest.raises(InputError, match="empty"):
        train(method, cfg, TrainConfig(iterations=2, batch_size=2), [synthetic_case(1), empty], [], tmp_path,
              emit=events.append)
    assert events[-1]["event"] == "error" and "empty" in events[-1]["message"]
    assert not (tmp_path / "checkpoints").exists()


# ---- the command line ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small phantom CT cases on disk (image .nrrd + .seg.nrrd)."""
    from voxmetric import io
    from voxmetric.phantom import LABELS, make_case

    out = tmp_path_factory.mktemp("cases")
    rows = []
    for i in range(3):
        c = make_case(i, "ct", shape=(24, 40, 40), spacing=(2.0, 2.0, 2.5))
        io.write_volume(c.image, out / f"case{i:03d}.nrrd")
        io.write_segmentation(out / f"case{i:03d}.seg.nrrd", c.labels,
                              [io.segment_info(n, v) for n, v in LABELS.items()])
        rows.append({"id": f"case{i:03d}", "image": f"case{i:03d}.nrrd", "label": f"case{i:03d}.seg.nrrd",
                     "modality": "ct"})  # a 40-voxel field of view has no air to tell CT by
    (out / "manifest.json").write_text(json.dumps({"format": "voxmetric-cases/1", "cases": rows}))
    return out


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from voxmetric.cli import main

    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_train_writes_a_model_package(case_dir: Path, tmp_path: Path, capsys) -> None:
    from voxmetric import models

    out = tmp_path / "pkg"
    rc, stdout, err = run_cli(["train", "--method", "MetricUNet-HP", "--cases", str(case_dir), "--segment", "prostate",
                               "--out", str(out), "--device", "cpu", "--iterations", "4", "--batch-size", "2",
                               "--val-cases", "1", "--val-every", "4", "--events-jsonl", "--base", "8",
                               "--embed-channels", "16", "--patch", "32", "--per-case", "20", "--k", "5",
                               "--spacing-mm", "2", "--pair-term", "--sigma", "1.0", "--average-from", "0.5"], capsys)
    assert rc == 0, err
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["package"] == str(out)
    assert any(e["event"] == "validation" for e in events)
    pkg = models.load_package(out)
    card = pkg.card
    assert card["method"] == "MetricUNet-HP" and card["role"] == "refiner" and card["modality"] == "ct"
    assert card["config"]["sigma"] == 1.0 and card["config"]["k"] == 5 and card["config"]["strategies"] == ["H"]
    assert card["data"]["spacing_mm"] == 2.0 and card["training"]["cases"] == 2 and "dsc" in card["validation"]
    assert card["training"]["average_from"] == 0.5  # the mean weights of iterations 3 and 4
    method, cfg, model = models.build_model(pkg)
    assert method.name == "MetricUNet-HP" and cfg.base == 8 and not model.training
    assert (tmp_path / "pkg.work" / "checkpoints" / "last.safetensors").is_file()
    # the package is never overwritten silently
    rc, _, err = run_cli(["train", "--method", "UNet", "--cases", str(case_dir), "--out", str(out)], capsys)
    assert rc == 2 and "already exists" in err


@pytest.mark.parametrize("args, message", [
    (["--method", "MetricUNet-XYZ"], "Available methods: "),
    (["--method", "Localizer", "--k", "5"], "--k is not a setting of Localizer"),
    (["--method", "UNet", "--k", "x"], "Bad value for 'k'"),
    (["--method", "UNet", "--segment", "Kidney"], "Kidney"),
    (["--method", "UNet", "--segment", "Prostate", "--val-cases", "3"], "too few"),
    (["--method", "UNet", "--device", "tpu"], "Unknown device"),
])
def test_cli_train_errors(case_dir: Path, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    rc, _, err = run_cli(["train", "--cases", str(case_dir), "--out", str(tmp_path / "m"), *args], capsys)
    assert rc == 2 and message in err, err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.work").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cli_cuda_absent(case_dir: Path, tmp_path: Path, capsys) -> None:
    rc, _, err = run_cli(["train", "--method", "UNet", "--cases", str(case_dir), "--out", str(tmp_path / "m"),
                          "--device", "cuda"], capsys)
    assert rc == 2 and "no usable CUDA" in err


def test_cli_missing_segment_names_the_case(case_dir: Path, tmp_path: Path) -> None:
    from voxmetric.cases import load_cases, validate_cases

    with pytest.raises(SegmentNotFoundError, match="Prostate"):
        validate_cases(load_cases(case_dir, "Kidney"))


# ---- DDP ----------------------------------------------------------------------------------------------
DDP_SCRIPT = """
import os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
from test_training import small, synthetic_case
from voxmetric.training import TrainConfig, train
method, cfg = small("MetricUNet-HC", k=5)
res = train(method, cfg, TrainConfig(iterations=6, batch_size=2, checkpoint_every=3, log_every=3),
            [synthetic_case(0), synthetic_case(1)], [], {out!r}, emit=lambda e: print(e, flush=True))
save_file(res.state_dict, os.path.join({out!r}, "rank%s.safetensors" % os.environ["RANK"]))
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from voxmetric.training import load_checkpoint

    script = tmp_path / "ddp_job.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert state_equal(r0, r1)
    _, meta = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert meta["world_size"] == 2 and len(meta["rng"]) == 2 and meta["rng"][0]["torch"] != meta["rng"][1]["torch"]
    assert proc.stdout.count("'event': 'done'") == 1  # only rank 0 emits events


def test_cli_fine_tunes_from_a_model(case_dir: Path, tmp_path: Path, capsys) -> None:
    from voxmetric import models

    base = tmp_path / "base"
    common = ["--cases", str(case_dir), "--segment", "Prostate", "--device", "cpu", "--iterations", "2",
              "--batch-size", "2", "--val-cases", "0", "--events-jsonl"]
    rc, _, err = run_cli(["train", "--method", "UNet", "--out", str(base), *common, "--base", "4",
                          "--embed-channels", "8", "--patch", "32", "--per-case", "4", "--spacing-mm", "2"], capsys)
    assert rc == 0, err
    start = models.load_package(base).state_dict
    # the package's settings are the defaults: no --base / --patch needed; the encoder stays as it was
    tuned = tmp_path / "tuned"
    rc, _, err = run_cli(["train", "--method", "UNet", "--out", str(tuned), *common, "--init-from", str(base),
                          "--freeze-encoder"], capsys)
    assert rc == 0, err
    pkg = models.load_package(tuned)
    assert pkg.card["config"]["base"] == 4 and pkg.card["training"]["init_from"]["name"] == "base"
    assert pkg.card["training"]["freeze_encoder"] is True
    enc = [k for k in start if k.startswith(("conv1", "conv2", "conv3", "enc4")) and "running" not in k
           and "num_batches" not in k]
    assert enc and all(torch.equal(start[k], pkg.state_dict[k]) for k in enc)
    assert not torch.equal(start["segb.weight"], pkg.state_dict["segb.weight"])
    # the wrong method, or freezing without a model, are refused with what to do
    rc, _, err = run_cli(["train", "--method", "Localizer", "--out", str(tmp_path / "x"), *common,
                          "--init-from", str(base)], capsys)
    assert rc == 2 and "fine-tune it with --method UNet" in err
    rc, _, err = run_cli(["train", "--method", "UNet", "--out", str(tmp_path / "y"), *common, "--freeze-encoder"],
                         capsys)
    assert rc == 2 and "--init-from" in err
    rc, _, err = run_cli(["train", "--method", "UNet", "--out", str(tmp_path / "z"), *common, "--init-from",
                          "no-such-model"], capsys)
    assert rc == 2 and "no-such-model" in err


DDP_FAULT_SCRIPT = """
import os, sys, time, torch
from datetime import timedelta
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_training import small, synthetic_case
from voxmetric import training
from voxmetric.errors import InputError
from voxmetric.training import TrainConfig, train
fault, rank = {fault!r}, int(os.environ["RANK"])
method, cfg = small("MetricUNet-HC", k=5)
if fault == "prepare" and rank == 0:  # rank 0 fails while the others wait for its cache
    def broken(*args, **kwargs):
        raise InputError("case001.nrrd cannot be read; re-export it")
    training._prepare = broken
if fault == "step" and rank == 1:  # rank 1 fails in the middle of an iteration
    real = method.training_step
    def step(model, batch, cfg, ctx):
        if ctx.iteration == 2:
            raise RuntimeError("rank 1 ran out of memory")
        return real(model, batch, cfg, ctx)
    method.training_step = step
if fault == "slow_validation":  # validation (rank 0 alone) outlasts the training group's timeout
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=3))
    real_validate = training.validate
    def slow(*args, **kwargs):
        time.sleep(8)
        return real_validate(*args, **kwargs)
    training.validate = slow
train(method, cfg, TrainConfig(iterations=4, batch_size=2, checkpoint_every=2, log_every=2, val_every=4),
      [synthetic_case(0), synthetic_case(1)], [synthetic_case(2)], {out!r}, emit=lambda e: None)
print("rank", rank, "finished", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("fault, failing, words", [
    ("prepare", 0, "Training process 0 of 2 failed: case001.nrrd cannot be read; re-export it"),
    ("step", 1, "Training process 1 of 2 failed: rank 1 ran out of memory"),
    ("slow_validation", None, None),
])
def test_ddp_fails_fast_with_the_message_on_every_rank(tmp_path: Path, fault: str, failing: int | None,
                                                       words: str | None) -> None:
    """An exception on one rank ends every rank within seconds (the training group's timeout is
    30 min) and each says why; rank 0's long validation does not time the others out."""
    import time

    script = tmp_path / "ddp_fault.py"
    script.write_text(DDP_FAULT_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "run"),
                                              fault=fault))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=240)
    seconds, out = time.monotonic() - t0, proc.stdout + proc.stderr
    if failing is None:
        assert proc.returncode == 0, out[-4000:]
        assert out.count("finished") == 2
        return
    assert proc.returncode != 0 and seconds < 120, (seconds, out[-4000:])
    other = 1 - failing
    said = [line for line in out.splitlines() if line.startswith(f"[rank{other}]:") and "VoxMetricError" in line]
    assert said and words in said[-1], out[-4000:]
    assert "finished" not in out
