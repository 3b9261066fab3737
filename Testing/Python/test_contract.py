"""The method contract (DESIGN.md rule 4): every registered method conforms to it, a joint model
with two optimisers and alternating updates trains and resumes exactly through it, resume refuses
changed settings, and nothing outside ``voxmetric/methods`` branches on a method."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from voxmetric.data import DataRecipe, PreparedCase
from voxmetric.errors import ConfigError
from voxmetric.methods import Method, Runtime, get_method, method_classes
from voxmetric.training import TrainConfig, TrainResult, _StepContext, load_checkpoint, train
from voxmetric.volume import Volume

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("Prostate", "Bladder")
torch.set_num_threads(1)

#: A small configuration of each method class (every registered class must have one).
SMALL = {
    "CRII": ("CRII-small", {"base": 4, "embed_channels": 8, "head_channels": 4, "patch": 16, "per_case": 8, "k": 4}),
    "LNet": ("LNet", {"canvas": 32, "per_case": 8, "lnet_base": 4, "head_channels": 8, "spacing_mm": 1.0}),
    "LSNet": ("LSNet", {"canvas": 32, "per_case": 8, "lnet_base": 4, "head_channels": 8, "spacing_mm": 1.0,
                        "roi_size": 16, "snet_base": 4, "snet_embed": 4}),
    "Localizer": ("Localizer", {"base": 4, "embed_channels": 4, "patch": 16, "per_case": 8, "spacing_mm": 1.0}),
    "MetricUNet": ("MetricUNet-HCP", {"base": 4, "embed_channels": 8, "patch": 16, "per_case": 8, "k": 4}),
    "VoxelSimSiam": ("VoxelSimSiam-small", {"patch": "16,16,16", "grid": "16,32,32", "per_case": 8,
                                            "max_features": 64, "max_fn": 32}),
}


def two_class_case(i: int, shape: tuple[int, int, int] = (20, 40, 40)) -> PreparedCase:
    """Prepared 0..255 image with a 'prostate' (1) ellipsoid and a 'bladder' (2) above it."""
    rng = np.random.default_rng(i)
    z, y, x = np.indices(shape)
    c = np.array(shape) // 2 + rng.integers(-2, 3, 3)
    lab = np.zeros(shape, np.uint8)
    lab[((z - c[0]) / 5.0) ** 2 + ((y - c[1]) / 7.0) ** 2 + ((x - c[2]) / 7.0) ** 2 <= 1] = 1
    lab[((z - c[0]) / 4.0) ** 2 + ((y - c[1] + 11) / 4.0) ** 2 + ((x - c[2]) / 6.0) ** 2 <= 1] = 2
    img = (60 + rng.normal(0, 15, shape) + 80 * (lab == 1) + 150 * (lab == 2)).astype(np.float32)
    vol = Volume(img)
    return PreparedCase(f"two{i}", vol, vol.with_array(lab), "ct", CLASSES)


def small(cls_name: str) -> tuple[Method, object]:
    name, overrides = SMALL[cls_name]
    method = get_method(name)
    return method, method.make_config(overrides)


@pytest.mark.parametrize("cls_name", sorted(SMALL))
def test_every_method_conforms(cls_name: str) -> None:
    method, cfg = small(cls_name)
    cases = [two_class_case(0), two_class_case(1)]
    recipe = method.data_recipe(cfg)
    assert isinstance(recipe, DataRecipe) and recipe.check() is recipe
    json.dumps(method.card_data(cfg))
    assert set(method.train_defaults) <= {f.name for f in dataclasses.fields(TrainConfig)}
    ds = method.dataset(cases, cfg, seed=3)
    assert len(ds) >= 1 and set(ds[0]) >= {"image", "label"}
    assert all(torch.equal(ds[5][k], method.dataset(cases, cfg, seed=3)[5][k]) for k in ds[5])  # pure in (seed, g)
    net = method.build(cfg, len(CLASSES) + 1)
    model = method.training_model(cfg, net)
    assert method.inference_net(model) is net
    groups = method.optimizer_groups(model, cfg)
    opts = {g: torch.optim.SGD(p, lr=0.01) for g, p in groups.items()}
    ctx = _StepContext(opts, torch.amp.GradScaler("cuda", enabled=False), torch.device("cpu"), 4)
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ds[0]}
    before = [p.detach().clone() for p in net.parameters()]
    logs = method.training_step(model, batch, cfg, ctx)
    assert ctx.steps >= 1 and torch.isfinite(logs["loss"]) and logs["loss"].ndim == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    net.eval()
    image = cases[0].image.array[:12, :24, :28]
    probs = method.predict(net, cfg, image, Runtime(torch.device("cpu"), batch_size=4))
    assert probs.shape == (3, *image.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    assert len(method.context_mm(cfg)) == 3


def test_every_registered_method_class_has_a_conformance_config() -> None:
    assert {cls.__name__ for cls in method_classes()} <= set(SMALL)


# ---- a joint model: two optimisers, alternating updates --------------------------------------------
@dataclass(frozen=True)
class JointConfig:
    width: int = 4


class Joint(nn.Module):
    """A 'locator' that predicts a per-pixel gate and a 'segmenter' fed with the gated image."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.loc = nn.Conv2d(3, 1, 3, padding=1)
        self.seg = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 1))

    def forward(self, x: torch.Tensor, part: str = "all") -> torch.Tensor:
        gate = torch.sigmoid(self.loc(x / 255.0))
        return gate if part == "loc" else self.seg(x / 255.0 * gate)


class Alternating(Method[JointConfig]):
    """Update the locator with its own loss, then both with the segmentation loss (like L-SNet)."""

    config_cls = JointConfig
    presets = {"Alternating": {}}
    role = "joint"

    def data_recipe(self, cfg: JointConfig) -> DataRecipe:
        return DataRecipe(region="label_box")

    def dataset(self, cases: Sequence[PreparedCase], cfg: JointConfig, seed: int, unlabeled=()):
        return get_method("UNet").dataset(cases, get_method("UNet").make_config({"patch": 16, "per_case": 8}), seed)

    def build(self, cfg: JointConfig, num_classes: int = 2) -> nn.Module:
        return Joint(cfg.width)

    def optimizer_groups(self, model: nn.Module, cfg: JointConfig) -> dict[str, list[nn.Parameter]]:
        return {"loc": list(model.loc.parameters()), "seg": list(model.seg.parameters())}

    def training_step(self, model, batch, cfg, ctx):
        fg = (batch["label"] > 0).float()[:, None]
        loc_loss = nn.functional.binary_cross_entropy(model(batch["image"], "loc"), fg)
        seg_before = [p.detach().clone() for p in model.seg.parameters()]
        ctx.step(loc_loss, "loc")
        assert all(torch.equal(a, b) for a, b in zip(seg_before, model.seg.parameters()))  # only "loc" moved
        seg_loss = nn.functional.cross_entropy(model(batch["image"]), batch["label"])
        ctx.step(seg_loss, ("loc", "seg"))
        return {"loss": (loc_loss + seg_loss).detach(), "loc": loc_loss.detach(), "seg": seg_loss.detach()}

    def predict(self, model, cfg, image, rt):
        x = torch.from_numpy(np.stack([image] * 3, 0)).permute(1, 0, 2, 3)
        with torch.inference_mode():
            return torch.softmax(model(x), 1).permute(1, 0, 2, 3).numpy()


def _joint_run(out: Path, **kw) -> TrainResult:
    tcfg = TrainConfig(iterations=6, batch_size=2, checkpoint_every=3, log_every=1, val_every=3, optimizer="adam",
                       lr=1e-2)
    method = Alternating("Alternating")
    return train(method, JointConfig(), tcfg, [two_class_case(0), two_class_case(1)], [two_class_case(2)], out, **kw)


def test_joint_model_two_optimisers_alternating_and_exact_resume(tmp_path: Path) -> None:
    events: list[dict] = []
    full = _joint_run(tmp_path / "a", emit=events.append)
    its = [e for e in events if e["event"] == "iteration"]
    assert len(its) == 6 and {"loc", "seg"} <= set(its[0]) and full.card_fields["role"] == "joint"
    assert full.card_fields["classes"][1]["name"] == "Bladder" and "terminology" in full.card_fields["classes"][0]
    tensors, meta = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.safetensors")
    assert set(meta["optimizer"]) == {"loc", "seg"} and set(meta["scheduler"]) == {"loc", "seg"}
    assert any(k.startswith("optim.seg.") for k in tensors) and any(k.startswith("optim.loc.") for k in tensors)

    from test_training import Killed, kill_at

    with pytest.raises(Killed):
        _joint_run(tmp_path / "b", emit=kill_at(3))
    resumed = _joint_run(tmp_path / "b", emit=lambda e: None, resume=True)
    assert all(torch.equal(full.state_dict[k], resumed.state_dict[k]) for k in full.state_dict)


def test_resume_refuses_changed_settings_and_names_them(tmp_path: Path) -> None:
    method, cfg = small("MetricUNet")
    cases, val = [two_class_case(0), two_class_case(1)], [two_class_case(2)]
    tcfg = TrainConfig(iterations=2, batch_size=2, checkpoint_every=1, val_every=2)
    train(method, cfg, tcfg, cases, val, tmp_path, emit=lambda e: None)
    for change, words in ((dict(tcfg=dataclasses.replace(tcfg, batch_size=3)), "batch_size 2 → 3"),
                          (dict(tcfg=dataclasses.replace(tcfg, lr=0.1)), "lr 0.01 → 0.1"),
                          (dict(tcfg=dataclasses.replace(tcfg, seed=1)), "seed 0 → 1"),
                          (dict(tcfg=dataclasses.replace(tcfg, optimizer="adam")), "optimizer 'sgd' → 'adam'"),
                          (dict(cases=[two_class_case(0), two_class_case(3)]), "training cases"),
                          (dict(cfg=method.make_config({**SMALL["MetricUNet"][1], "k": 5})), "k 4 → 5")):
        kw = {"tcfg": dataclasses.replace(tcfg, iterations=4), "cases": cases, "cfg": cfg, **change}
        with pytest.raises(ConfigError, match=re.escape(words)):
            train(method, kw["cfg"], kw["tcfg"], kw["cases"], val, tmp_path, emit=lambda e: None, resume=True)
    one = [dataclasses.replace(c, mask=c.mask.with_array((c.mask.array == 1).astype(np.uint8)), classes=("Prostate",))
           for c in cases]
    with pytest.raises(ConfigError, match="segments"):
        train(method, cfg, dataclasses.replace(tcfg, iterations=4), one, [], tmp_path, emit=lambda e: None,
              resume=True)
    for change, words in ((dict(momentum=0.5), "momentum 0.9 → 0.5"), (dict(weight_decay=0.0), "weight_decay"),
                          (dict(poly_power=1.0), "poly_power 0.9 → 1.0"), (dict(amp=False), "amp True → False")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            train(method, cfg, dataclasses.replace(tcfg, iterations=4, **change), cases, val, tmp_path,
                  emit=lambda e: None, resume=True)
    with pytest.raises(ConfigError, match="validation cases"):
        train(method, cfg, dataclasses.replace(tcfg, iterations=4), cases, [two_class_case(4)], tmp_path,
              emit=lambda e: None, resume=True)
    # a checkpoint of a 2-process (DDP) run does not resume in one process: the batches differ
    last = tmp_path / "checkpoints" / "last.safetensors"
    tensors, meta = load_checkpoint(last)
    from voxmetric.training import _save_checkpoint

    _save_checkpoint(last, tensors, {**meta, "world_size": 2, "rng": meta["rng"] * 2})
    with pytest.raises(ConfigError, match=re.escape("number of processes 2 → 1")):
        train(method, cfg, dataclasses.replace(tcfg, iterations=4), cases, val, tmp_path, emit=lambda e: None,
              resume=True)
    _save_checkpoint(last, tensors, meta)
    # more iterations alone is fine
    res = train(method, cfg, dataclasses.replace(tcfg, iterations=3), cases, val, tmp_path, emit=lambda e: None,
                resume=True)
    assert res.iteration == 3


def test_unlabeled_cases_need_a_semi_supervised_method(tmp_path: Path) -> None:
    method, cfg = small("MetricUNet")
    with pytest.raises(ConfigError, match="labelled cases only"):
        train(method, cfg, TrainConfig(iterations=1, batch_size=1), [two_class_case(0)], [], tmp_path,
              emit=lambda e: None, unlabeled_cases=[two_class_case(1)])


def test_cases_must_share_their_segments(tmp_path: Path) -> None:
    from voxmetric.errors import InputError

    method, cfg = small("MetricUNet")
    odd = dataclasses.replace(two_class_case(1), classes=("Prostate", "Rectum"))
    with pytest.raises(InputError, match="same segments"):
        train(method, cfg, TrainConfig(iterations=1, batch_size=1), [two_class_case(0), odd], [], tmp_path,
              emit=lambda e: None)


def test_no_method_branching_outside_methods() -> None:
    """Rule 4: the trainer, pipeline, CLI and both Slicer modules never branch on a method."""
    from voxmetric.methods import available_methods

    names = "|".join(re.escape(n) for n in available_methods())
    pattern = re.compile(rf"(method(_name)?|\.method|\bname)\s*(==|!=|in)\s*[\(\[\{{]?\s*['\"]({names})['\"]"
                         r"|isinstance\([^)]*(Method|SlabMethod|Localizer|MetricUNet|VoxelSimSiam)\b")
    files = [p for p in (ROOT / "voxmetric").rglob("*.py") if "methods" not in p.parts]
    files += list((ROOT / "VoxMetricSeg").rglob("*.py")) + list((ROOT / "VoxMetricTrain").rglob("*.py"))
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
