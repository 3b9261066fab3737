"""Voxel-level SimSiam 3D U-Net ([VS], METHODS.md §3): the network, the sampling, the loss and the
method (training-only heads, both data recipes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voxmetric.learning.simsiam import (SimSiamConfig, SimSiamHeads, class_mean_loss, sample_voxels,
                                        voxel_simsiam_loss)
from voxmetric.methods import get_method
from voxmetric.nets import UNet3D

torch.set_num_threads(1)


def test_paper_preset_has_about_16_3_million_parameters() -> None:
    net = get_method("VoxelSimSiam").build(get_method("VoxelSimSiam").default_config(), 9)  # 8 organs + background
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 16.313e6) / 16.313e6 < 0.02, n  # [VS] Table II: 16.313 M
    small = get_method("VoxelSimSiam-small").build(get_method("VoxelSimSiam-small").default_config(), 9)
    assert sum(p.numel() for p in small.parameters()) < 1.0e6


def test_unet3d_shapes_and_features_deepest_first() -> None:
    net = UNet3D(1, 4, (4, 8, 16))
    logits, feats = net(torch.rand(2, 1, 8, 12, 16))
    assert logits.shape == (2, 4, 8, 12, 16)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 2, 3, 4), (8, 4, 6, 8), (4, 8, 12, 16)]
    with pytest.raises(Exception, match="multiples of 4"):
        net(torch.rand(1, 1, 6, 12, 16))


def test_stop_gradient_blocks_the_target_branch() -> None:
    torch.manual_seed(0)
    p = torch.randn(10, 8, requires_grad=True)
    z = torch.randn(10, 8, requires_grad=True)
    cls = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    class_mean_loss(p, z, cls, 3).backward()
    assert z.grad is None and p.grad is not None and p.grad.abs().sum() > 0


def test_identical_directions_give_minus_one() -> None:
    u = torch.randn(1, 16)
    p = u.repeat(7, 1) * torch.rand(7, 1).add(0.5)  # same direction, other lengths
    cls = torch.zeros(7, dtype=torch.long)
    assert class_mean_loss(p, p.clone(), cls, 2, class_weighting=False).item() == pytest.approx(-1.0, abs=1e-6)
    opposite = class_mean_loss(p, -p, cls, 2, class_weighting=False)
    assert opposite.item() == pytest.approx(1.0, abs=1e-6)


def test_class_weights_as_documented() -> None:
    """w_c = 1 − |S_c| / Σ|S|: with identical directions every L_c = −1, so the loss is −Σ_c w_c."""
    u = torch.randn(1, 8)
    p = u.repeat(10, 1)
    cls = torch.tensor([0] * 6 + [1] * 3 + [3])  # |S| = 6, 3, (class 2 absent), 1
    expected = -((1 - 6 / 10) + (1 - 3 / 10) + (1 - 1 / 10))
    assert class_mean_loss(p, p, cls, 4).item() == pytest.approx(expected, abs=1e-6)
    assert class_mean_loss(p, p, cls, 4, class_weighting=False).item() == pytest.approx(-3.0, abs=1e-6)


def test_absent_class_gives_no_nan_and_single_class_weight_zero() -> None:
    p = torch.randn(5, 8, requires_grad=True)
    loss = class_mean_loss(p, torch.randn(5, 8), torch.zeros(5, dtype=torch.long), 9)
    assert torch.isfinite(loss) and loss.item() == 0.0  # one class present: weight 1 − 5/5 = 0
    loss.backward()
    assert torch.isfinite(p.grad).all()


def test_sampling_prefers_false_negatives_and_caps() -> None:
    torch.manual_seed(1)
    labels = torch.zeros(2, 4, 8, 8, dtype=torch.long)
    labels[:, 1:3, 2:6, 2:6] = 1
    pred = labels.clone()
    pred[0, 1, 2:6, 2:6] = 0  # 16 false negatives
    idx = sample_voxels(labels, pred, max_features=40, max_fn=10)
    flat_l, flat_p = labels.reshape(-1), pred.reshape(-1)
    assert len(idx) == 40 and len(set(idx.tolist())) == 40
    assert int((flat_l[idx] != flat_p[idx]).sum()) == 10  # capped at max_fn, taken first
    idx = sample_voxels(labels, pred, max_features=40, max_fn=30)
    assert int((flat_l[idx] != flat_p[idx]).sum()) == 16  # all of them when fewer
    assert len(sample_voxels(labels, pred, max_features=10_000, max_fn=100)) == labels.numel()


def test_loss_over_layers_reaches_encoder_and_heads() -> None:
    torch.manual_seed(0)
    net = UNet3D(1, 3, (4, 8, 16))
    heads = SimSiamHeads([16, 8], hidden=8)
    labels = torch.zeros(2, 8, 16, 16, dtype=torch.long)
    labels[:, 2:6, 4:12, 4:12] = 1
    labels[:, 2:6, 4:8, 4:8] = 2
    logits, feats = net(torch.rand(2, 1, 8, 16, 16))
    loss, logs = voxel_simsiam_loss(feats, heads, labels, logits, SimSiamConfig(layers=2, hidden=8, max_features=200,
                                                                                max_fn=50))
    assert set(logs) == {"sim_l1", "sim_l2"} and torch.isfinite(loss)
    loss.backward()
    assert net.enc[2][0].weight.grad.abs().sum() > 0 and heads.predictions[0][0].weight.grad is not None
    assert net.head.weight.grad is None  # the feature term does not touch the segmentation head


def _case(i: int):
    from test_contract import two_class_case

    return two_class_case(i, (16, 32, 32))


@pytest.mark.parametrize("mode", ["patch", "grid"])
def test_training_falls_and_heads_never_enter_the_package(tmp_path: Path, mode: str) -> None:
    from voxmetric.training import TrainConfig, load_checkpoint, train

    method = get_method("VoxelSimSiam-small")
    cfg = method.make_config({"mode": mode, "patch": "16,32,32", "grid": "16,32,32", "per_case": 10,
                              "max_features": 128, "max_fn": 64})
    events: list[dict] = []
    res = train(method, cfg, TrainConfig(iterations=24, batch_size=2, optimizer="adam", lr=1e-2, log_every=4,
                                         val_every=24, checkpoint_every=24),
                [_case(0), _case(1)], [_case(2)], tmp_path, emit=events.append)
    dice = [e["dice"] for e in events if e["event"] == "iteration"]
    assert dice[-1] < 0.8 * dice[0], dice
    assert any(e["event"] == "iteration" and "feature" in e for e in events)
    assert not any(k.startswith("heads.") for k in res.state_dict)
    assert set(res.state_dict) == set(method.build(cfg, 3).state_dict())
    tensors, _ = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert any(k.startswith("model.heads.") for k in tensors)  # the checkpoint keeps them for resume
    assert set(res.card_fields["validation"]["classes"]) == {"Prostate", "Bladder"}
    assert res.card_fields["data"]["mode"] == mode and res.card_fields["training"]["optimizer"] == "adam"


def test_grid_mode_uses_the_body_and_patch_mode_widens_the_roi() -> None:
    method = get_method("VoxelSimSiam-small")
    grid = method.make_config({"mode": "grid"})
    patch = method.make_config({"mode": "patch", "patch": "32,64,64", "spacing_mm": 1.5})
    assert method.data_recipe(grid).region == "body" and method.context_mm(grid) == (0.0, 0.0, 0.0)
    assert method.data_recipe(patch).region == "label_box" and method.context_mm(patch) == (96.0, 96.0, 48.0)
    from voxmetric.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of 16"):
        method.make_config({"patch": "20,64,64"})
