"""Every figure of a bundled demo model's card is written by code (issue 13): by the trainer,
``save_package`` or ``Resources/Models/train_demo_models.py`` (``demo_card``), none by hand."""

from __future__ import annotations

import importlib.util
import json
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
    spec = importlib.util.spec_from_file_location("train_demo_models", MODELS / "train_demo_models.py")
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
    # the code path of the script on a tiny run: trainer card fields -> demo_card -> save_package
    method = get_method(gen.METHODS[kind])
    cfg = method.make_config(TINY[kind])
    result = train(method, cfg, TrainConfig(iterations=2, batch_size=2, val_every=2, checkpoint_every=2),
                   [synthetic_case(0), synthetic_case(1)], [synthetic_case(2)], tmp_path / "run", emit=lambda e: None)
    card = gen.demo_card(kind, result.card_fields, 2, 1, 2, 2, 1e-3, 0.5, 0.5 if kind == "refiner" else None)
    written = json.loads((models.save_package(tmp_path / "pkg", card, result.state_dict, half=True)
                          / "model.json").read_text(encoding="utf-8"))
    assert written["training"]["made_by"] == gen.MADE_BY and written["training"]["seconds"] > 0
    assert written["training"]["final_loss"] is not None
    by_hand = sorted(key_paths(bundled) - key_paths(written))
    if "made_by" not in bundled.get("training", {}) and by_hand:
        pytest.xfail(f"the bundled {kind} card predates train_demo_models.py writing every field; fields no code "
                     f"writes: {by_hand}. Regenerate it: python Resources/Models/train_demo_models.py")
    assert not by_hand, f"fields of {bundled_path} that no code writes: {by_hand}"
    # the figures the script derives from the run's settings agree with those settings
    t = bundled["training"]
    again = gen.demo_card(kind, {k: bundled[k] for k in ("training", "validation")}, t["cases"],
                          len(t["val_case_ids"]), t["iterations"], t["batch_size"], t["lr"],
                          bundled["validation"]["dsc_float16"])
    assert bundled["description"] == again["description"]
    assert (t["phantom_seeds"], t["budget"]) == (again["training"]["phantom_seeds"], again["training"]["budget"])


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
