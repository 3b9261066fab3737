"""Every figure of a bundled model's card is written by code (issues 13, 11): by the trainer,
``save_package`` (with its ONNX graph) or ``Resources/Models/train_bundled_models.py``
(``bundled_card``), none by hand."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from test_training import synthetic_case
from voxmetric import models
from voxmetric.methods import get_method
from voxmetric.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "Resources" / "Models"
TINY = {"localizer": {"base": 4, "embed_channels": 4, "patch": 16, "per_case": 8},
        "refiner": {"base": 4, "embed_channels": 8, "patch": 16, "per_case": 8, "k": 4, "spacing_mm": 2.0,
                    "augment": False}}
torch.set_num_threads(1)


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("train_bundled_models", MODELS / "train_bundled_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Dotted paths of every key of a JSON value (list items as ``[]``)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out |= {f"{prefix}{k}"} | key_paths(v, f"{prefix}{k}.")
    elif isinstance(value, list):
        for v in value:
            out |= key_paths(v, f"{prefix}[].")
    return out


@pytest.mark.parametrize("kind", ["localizer", "refiner"])
def test_every_field_of_a_bundled_card_is_written_by_code(kind: str, tmp_path: Path) -> None:
    gen = _generator()
    bundled_path = MODELS / gen.NAMES[kind] / "model.json"
    if not bundled_path.exists():
        pytest.skip(f"no bundled {kind} in {MODELS}")
    bundled = json.loads(bundled_path.read_text(encoding="utf-8"))
    # the code path of the script on a tiny run: trainer card fields -> bundled_card -> save_package
    method = get_method(gen.METHODS[kind])
    cfg = method.make_config(TINY[kind])
    result = train(method, cfg, TrainConfig(iterations=2, batch_size=2, val_every=2, checkpoint_every=2,
                                            average_from=bundled["training"].get("average_from", 0.0)),
                   [synthetic_case(0, "ct"), synthetic_case(1, "mr")], [synthetic_case(2)], tmp_path / "run",
                   emit=lambda e: None)  # CT and MR cases, as the script's mix of contrasts
    pseudo = bundled["training"].get("pseudo_labels")
    real = sum(s["found"] for s in pseudo["scans"]) * pseudo["repeat"] if pseudo else 0
    card = gen.bundled_card(kind, result.card_fields, 2 + real, 5,
                            "python … --ref-iterations 3", 1, 0.01, 0.5, bundled["training"].get("init_from"),
                            pseudo=pseudo)
    written = json.loads((models.save_package(tmp_path / "pkg", card, result.state_dict, half=True)
                          / "model.json").read_text(encoding="utf-8"))
    assert written["training"]["seconds"] > 0 and written["training"]["final_loss"] is not None
    assert written["training"]["data"].startswith("2 synthetic cases")
    by_hand = sorted(key_paths(bundled) - key_paths(written))
    assert not by_hand, f"fields of {bundled_path} that no code writes: {by_hand}"
    assert "onnx" in bundled, f"{bundled_path} has no ONNX graph: voxmetric models export-onnx {gen.NAMES[kind]}"
    # the figures the script derives from the run's settings agree with those settings
    t, v = bundled["training"], bundled["validation"]
    for run in t["recipe"].split("--init-from"):  # each run (a fresh start or a package's weights) and its resumes
        totals = [int(n) for n in re.findall(rf"--{kind[:3]}-iterations (\d+)", run)]
        assert totals and totals == sorted(totals), t["recipe"]
    assert totals[-1] == t["iterations"], (t["recipe"], t["iterations"])
    assert ("--init-from" in t["recipe"]) == ("init_from" in t), t["recipe"]
    threads = int(re.findall(r"(\d+) thread\(s\)", t["machine"])[0])
    assert f"--threads {threads}" in t["recipe"], (t["recipe"], t["machine"])
    again = gen.bundled_card(kind, {"training": t, "validation": v}, t["cases"], len(t["val_case_ids"]),
                             t["recipe"], threads, t["wall_hours"], v["dsc_float16"], t.get("init_from"),
                             "--clutter" in t["recipe"].split("--init-from")[-1], pseudo=t.get("pseudo_labels"))
    for key in ("name", "description", "intended_use", "demo"):
        assert bundled[key] == again[key], key
    for key in ("generator", "data", "recipe", "wall_hours"):
        assert t[key] == again["training"][key], key
    assert re.fullmatch(r"\S+, \d+ CPU cores, torch \S+, \d+ thread\(s\)(, .*GPU.*|, NVIDIA .+)?", t["machine"]), t["machine"]
    assert t["wall_hours"] * 3600 >= t["seconds"] > 0  # the wall time sums every resumed part of the run
    assert abs(v["dsc_float16"] - v["dsc"]) <= 0.002 or bundled["weights_dtype"] == "float32"


def test_the_recipe_lists_every_resumed_total(tmp_path: Path) -> None:
    """A run resumed with a larger total (the poly schedule continues towards it) is one recipe step more."""
    gen = _generator()
    events = tmp_path / "events.jsonl"
    assert gen.schedule(events, 4000) == [4000]
    events.write_text(json.dumps({"event": "log", "message": "iterations changed from 4000 to 10000: the "
                                  "learning-rate schedule follows the new total"}) + "\n")
    assert gen.schedule(events, 10000) == [4000, 10000]


def test_a_run_from_a_package_continues_its_recipe() -> None:
    """A further run ``--init-from`` a package: that package's recipe, then this run's command and
    its settings (learning rate, field-of-view cut, gamma and clutter when they are not the defaults)."""
    import argparse

    gen = _generator()
    defaults = dict(batch=8, ref_base=16, ref_embed=64, device="cpu")
    args = argparse.Namespace(threads=1, lr=1e-3, fov_cut=0.0, gamma=0.0, clutter=False, average_from=0.0, init_from=None,
                              **defaults)
    first = gen.recipe_of("refiner", args, [4000, 10000])
    assert first == ("python Resources/Models/train_bundled_models.py --which refiner --ref-iterations 4000 "
                     "--threads 1, then --resume --ref-iterations 10000")
    args = argparse.Namespace(threads=1, lr=5e-4, fov_cut=0.35, gamma=0.0, clutter=False, average_from=0.0,
                              init_from="synth-metricunet-hcp", **defaults)
    assert gen.recipe_of("refiner", args, [8000], first) == (
        f"{first}, then --init-from synth-metricunet-hcp --ref-iterations 8000 --lr 0.0005 --fov-cut 0.35")
    args.gamma, args.clutter, args.average_from = 0.7, True, 0.5
    assert gen.recipe_of("refiner", args, [6000], "R").endswith(
        "--ref-iterations 6000 --lr 0.0005 --fov-cut 0.35 --gamma 0.7 --average-from 0.5 --clutter")


def test_a_run_that_changed_device_says_which_part_ran_where(tmp_path: Path) -> None:
    """A run started on a GPU and resumed on the CPU (the trainer's start and resume messages): the
    card's ``devices`` and the recipe name both; the batch and the refiner's width when not the defaults."""
    import argparse

    gen = _generator()
    events = tmp_path / "events.jsonl"
    start = "training MetricUNet-HCP (Prostate) on 480 case(s), 48000 items per epoch, validating on 16; device {}, 1 process(es)"
    lines = [start.format("cuda:0 (NVIDIA H200)"), "resumed from c/last.safetensors at iteration 4000", start.format("cpu")]
    events.write_text("".join(json.dumps({"event": "log", "message": m}) + "\n" for m in lines))
    parts = gen.devices(events, 8000)
    assert parts == [("cuda:0 (NVIDIA H200)", 1, 4000), ("cpu", 4001, 8000)]
    args = argparse.Namespace(threads=2, lr=1e-3, fov_cut=0.0, gamma=0.0, clutter=False, average_from=0.0, init_from=None,
                              batch=30, ref_base=32, ref_embed=256, device="cpu")
    assert gen.recipe_of("refiner", args, [8000], None, [d for d, _, _ in parts]) == (
        "python Resources/Models/train_bundled_models.py --which refiner --ref-iterations 8000 --threads 2 --batch 30 "
        "--ref-base 32 --ref-embed 256 --device cuda:0, then --resume --device cpu")
    assert gen.devices(tmp_path / "none.jsonl", 10) == []


def test_the_wall_time_counts_every_run_once(tmp_path: Path) -> None:
    """Done events of runs that kept no time in their checkpoints are added; those the last run's
    carry holds are not counted twice."""
    gen = _generator()
    events = tmp_path / "events.jsonl"

    def done(*runs: dict) -> float:
        events.write_text("".join(json.dumps({"event": "done", **r}) + "\n" for r in runs))
        return round(gen.training_hours(events) * 3600, 6)

    assert done() == 0.0 and done({"seconds": 100.0}) == 100.0
    # a time-keeping chain: 100 s, then a resumed run carrying 130 s (the first run and a killed one)
    assert done({"seconds": 100.0}, {"seconds": 200.0, "carried": 130.0}) == 200.0
    # an old trainer's run (no time in its checkpoint), then one carrying only a killed run's 40 s
    assert done({"seconds": 100.0}, {"seconds": 90.0, "carried": 40.0}) == 190.0


def test_a_resumed_run_keeps_its_training_time_and_final_loss(tmp_path: Path) -> None:
    """Resuming a finished run (to re-package it) used to give a card with the resume's seconds and
    ``final_loss: null``, which had been replaced by hand."""
    method = get_method("Localizer")
    cfg = method.make_config(TINY["localizer"])
    tcfg = TrainConfig(iterations=2, batch_size=2, checkpoint_every=1)
    cases = [synthetic_case(0), synthetic_case(1)]
    first = train(method, cfg, tcfg, cases, [], tmp_path, emit=lambda e: None)
    again = train(method, cfg, tcfg, cases, [], tmp_path, emit=lambda e: None, resume=True)
    assert again.card_fields["training"]["final_loss"] == first.card_fields["training"]["final_loss"] is not None
    assert again.card_fields["training"]["seconds"] >= first.card_fields["training"]["seconds"] - 0.1


def test_self_training_uses_the_scans_the_pipeline_finds(tmp_path: Path) -> None:
    """``--pseudo-label``: the bundled pipeline (no package in ``--models``) segments each scan; a
    phantom it finds becomes a training case labelled with its result, ``repeat`` times; a body without a
    prostate is recorded as not found and not used; the labels are written once per work folder; the
    card and the recipe say so."""
    import argparse

    import numpy as np

    from voxmetric import io
    from voxmetric.phantom import make_case
    from voxmetric.volume import Volume

    gen = _generator()
    if not all((MODELS / n / "model.json").exists() for n in gen.NAMES.values()):
        pytest.skip("no bundled pipeline")
    scans = tmp_path / "scans"
    io.write_volume(make_case(777, "ct").image, scans / "pelvis.nrrd")
    _, y, x = np.indices((24, 64, 64))
    water = np.where((y - 32) ** 2 + (x - 32) ** 2 < 26 ** 2, 40, -1000).astype(np.int16)
    io.write_volume(Volume(water, (4.0, 4.0, 4.0)), scans / "water.nrrd")
    work = tmp_path / "work"
    found = gen.pseudo_labelled(work, [scans], tmp_path / "no-models")
    assert [(s["id"], s["found"]) for s in found] == [("pelvis", True), ("water", False)]
    assert 10 <= found[0]["volume_ml"] <= 300 and found[0]["verdict"].startswith("result: ")
    label = io.read_segment_mask(found[0]["label"], "Prostate")
    assert label.array.sum() * np.prod(label.spacing) / 1000 == pytest.approx(found[0]["volume_ml"], abs=0.06)
    assert gen.pseudo_labelled(work, [], tmp_path / "no-models") == found  # written once: a resume keeps them
    cases = gen.pseudo_cases(found, 3)
    assert [c.id for c in cases] == ["pelvis"] * 3 and cases[0].label == Path(found[0]["label"])

    pseudo = {"folders": [str(scans)], "repeat": 3, "scans": found}
    card = gen.bundled_card("localizer", {"training": {}, "validation": {}}, 10 + 3, 8, "R", 1, 0.1, 0.5, None,
                            pseudo=pseudo)
    assert card["training"]["data"] == ("10 synthetic cases + 1 real scans pseudo-labelled by the pipeline it started "
                                        "from (each ×3); validation: 4 synthetic + 2 CT and 2 MR phantoms")
    assert card["training"]["pseudo_labels"] == pseudo
    args = argparse.Namespace(threads=2, lr=5e-4, fov_cut=0.0, gamma=0.0, clutter=False, average_from=0.0,
                              init_from="synth-localizer", batch=8, device="cpu", pseudo=pseudo)
    assert gen.recipe_of("localizer", args, [1500], "R") == (
        f"R, then --init-from synth-localizer --loc-iterations 1500 --threads 2 --lr 0.0005 --pseudo-label {scans} "
        "--pseudo-repeat 3")
