"""Voxel-tuple samplers and the MetricUNet metric loss (Eq. 2), plus Dice/focal losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from voxmetric.errors import ConfigError, InputError
from voxmetric.learning.losses import focal_loss, soft_dice_loss
from voxmetric.learning.metric import (MetricLossConfig, boundary_mask, sample_from_pool, sample_tuples,
                                       strategy_pools, tuple_loss, voxel_metric_loss)
from voxmetric.nets import UNet2D

torch.set_num_threads(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blob_labels(b: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """(B,H,W) long: a random ellipse per image, away from the patch edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((b, h, w), np.int64)
    for i in range(b):
        cy, cx = rng.uniform(0.375 * h, 0.625 * h), rng.uniform(0.375 * w, 0.625 * w)
        ry, rx = rng.uniform(h / 8, h / 4), rng.uniform(w / 8, w / 4)
        out[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return torch.from_numpy(out)


def members(pool: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> bool:
    """All valid flat indices (B, ...) lie in the (B,H,W) pool."""
    flat = pool.flatten(1)
    got = flat.gather(1, idx.flatten(1))
    return bool(got[valid.flatten(1)].all())


def test_boundary_matches_scipy_erosion_with_cross() -> None:
    labels = blob_labels(4)
    fg = labels == 1
    cross = ndimage.generate_binary_structure(2, 1)
    for i in range(4):
        ref = fg[i].numpy() & ~ndimage.binary_erosion(fg[i].numpy(), cross)
        assert np.array_equal(boundary_mask(fg)[i].numpy(), ref)


def test_boundary_ignores_patch_edge() -> None:
    fg = torch.zeros(1, 8, 8, dtype=torch.bool)
    fg[0, :4] = True  # organ cut by the top edge of the patch
    edge = boundary_mask(fg)[0]
    assert edge[3].all() and edge.sum() == 8


@pytest.mark.parametrize("strategy", ["R", "H", "C"])
def test_samplers_draw_the_right_labels(strategy: str) -> None:
    labels = blob_labels(3)
    prob = torch.rand(3, 32, 32, generator=gen(5))
    t = sample_tuples(strategy, labels, prob, k=20, m=3, generator=gen(1))
    anchor_pool, same_pool, opp_pool = strategy_pools(strategy, labels, prob)
    assert t.anchor.shape == (3, 20) and t.same.shape == (3, 20, 3) and t.opposite.shape == (3, 20, 3)
    assert t.anchor_valid.all() and t.same_valid.all() and t.opposite_valid.all()
    assert members(anchor_pool, t.anchor, t.anchor_valid)
    assert members(labels == 1, t.same, t.same_valid) and members(same_pool, t.same, t.same_valid)
    assert members(labels == 0, t.opposite, t.opposite_valid)
    assert not (t.same == t.anchor[..., None]).any()  # anchor never its own positive
    # anchors are distinct within an image; the m samples per anchor are distinct too
    assert all(len(set(row.tolist())) == 20 for row in t.anchor)
    assert (t.same[..., 0] != t.same[..., 1]).all() and (t.opposite[..., 1] != t.opposite[..., 2]).all()


def test_hard_anchors_are_exactly_the_underconfident_positives() -> None:
    labels = blob_labels(2)
    prob = torch.ones(2, 32, 32)
    prob[labels == 0] = 0.3  # background errors are never anchors
    pos = (labels[0] == 1).nonzero()
    chosen = pos[torch.randperm(len(pos), generator=gen(3))[:7]]
    prob[0, chosen[:, 0], chosen[:, 1]] = torch.tensor([0.0, 0.2, 0.5, 0.85, 0.899, 0.3, 0.6])
    prob[0, pos[-1, 0], pos[-1, 1]] = 0.95  # |0.95 - 1| = 0.05 <= tau: not hard
    t = sample_tuples("H", labels, prob, k=20, m=1, tau=0.1, generator=gen(0))
    got = set(t.anchor[0][t.anchor_valid[0]].tolist())
    assert got == set((chosen[:, 0] * 32 + chosen[:, 1]).tolist())
    assert not t.anchor_valid[1].any() and not t.same_valid[1].any()  # no hard voxel in image 1


def test_contour_anchors_lie_on_the_boundary() -> None:
    labels = blob_labels(3, seed=4)
    t = sample_tuples("C", labels, torch.zeros(3, 32, 32), k=20, m=1, generator=gen(2))
    edge = boundary_mask(labels == 1)
    assert t.anchor_valid.all() and members(edge, t.anchor, t.anchor_valid)
    assert members(edge, t.same, t.same_valid)
    interior = (labels == 1) & ~edge
    assert not members(interior, t.anchor, t.anchor_valid)


def test_small_pools_are_used_whole() -> None:
    pool = torch.zeros(2, 50, dtype=torch.bool)
    pool[0, [3, 9, 41]] = True
    pool[1, :30] = True
    idx, valid = sample_from_pool(pool, 20, gen(0))
    assert set(idx[0][valid[0]].tolist()) == {3, 9, 41} and valid[0].sum() == 3
    assert valid[1].all() and len(set(idx[1].tolist())) == 20 and (idx[1] < 30).all()


def test_empty_pools_give_zero_without_nan() -> None:
    cfg = MetricLossConfig(strategies=("R", "H", "C"))
    labels = torch.zeros(3, 16, 16, dtype=torch.long)
    labels[1] = 1  # image 0: no prostate, image 1: no background
    labels[2, 5, 5] = 1  # image 2: a single prostate voxel (no same-label partner)
    emb = torch.randn(3, 8, 16, 16, requires_grad=True)
    loss = voxel_metric_loss(emb, labels, torch.zeros(3, 16, 16), cfg, gen(0))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() == 0
    # normalised features of zero vectors must not produce NaN either
    emb0 = torch.zeros(3, 8, 16, 16, requires_grad=True)
    labels[0, 2:7, 2:7] = 1  # 25 prostate voxels: 20 anchors, each triplet costs sigma
    cfg_n = MetricLossConfig(strategies=("R",), normalize=True)
    loss = voxel_metric_loss(emb0, labels, torch.zeros(3, 16, 16), cfg_n, gen(0))
    loss.backward()
    assert loss.item() == pytest.approx(20 * 0.7) and torch.isfinite(emb0.grad).all()


def test_triplet_is_zero_when_separated_and_positive_otherwise() -> None:
    labels = blob_labels(2)
    onehot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 3.0  # classes 3 apart: d_aq = 18 > σ
    cfg = MetricLossConfig(strategies=("R", "H", "C"), sigma=1.0)
    prob = torch.zeros(2, 32, 32)
    assert voxel_metric_loss(onehot, labels, prob, cfg, gen(0)).item() == 0.0
    # identical features: every triplet costs exactly σ, pairs cost 0 (d_ap = 0 < ε)
    same = torch.ones(2, 4, 32, 32)
    assert voxel_metric_loss(same, labels, prob, MetricLossConfig(strategies=("R",), sigma=1.0), gen(0)).item() \
        == pytest.approx(2 * 20 * 1.0)
    assert voxel_metric_loss(torch.randn(2, 4, 32, 32), labels, prob, cfg, gen(0)).item() > 0


@pytest.mark.parametrize("normalize", [False, True])
def test_tuple_loss_matches_a_reference_loop(normalize: bool) -> None:
    labels = blob_labels(2, h=16, w=16, seed=7)
    labels[1, :3] = 1  # a second region touching the edge
    emb = torch.randn(2, 5, 16, 16, generator=gen(9)).to(memory_format=torch.channels_last)
    cfg = MetricLossConfig(strategies=("R",), m=2, k=6, sigma=0.7, eps=0.5, beta=0.1, normalize=normalize)
    t = sample_tuples("R", labels, torch.zeros(2, 16, 16), cfg.k, cfg.m, generator=gen(4))
    feats = emb.flatten(2).transpose(1, 2)
    if normalize:
        feats = F.normalize(feats, dim=-1)
    ref = 0.0
    for b in range(2):
        for i in range(cfg.k):
            if not t.anchor_valid[b, i]:
                continue
            a = feats[b, t.anchor[b, i]]
            for j in range(cfg.m):
                d_ap = float(((a - feats[b, t.same[b, i, j]]) ** 2).sum())
                ref += cfg.beta * max(0.0, d_ap - cfg.eps)
                for l in range(cfg.m):
                    d_aq = float(((a - feats[b, t.opposite[b, i, l]]) ** 2).sum())
                    ref += max(0.0, d_ap - d_aq + cfg.sigma)
    assert tuple_loss(emb, t, cfg).item() == pytest.approx(ref, rel=1e-5)
    cfg.pair_term = False
    assert tuple_loss(emb, t, cfg).item() < ref


def test_sampling_is_deterministic_with_a_seeded_generator() -> None:
    labels, prob = blob_labels(3), torch.rand(3, 32, 32, generator=gen(1))
    a = sample_tuples("H", labels, prob, generator=gen(123))
    b = sample_tuples("H", labels, prob, generator=gen(123))
    c = sample_tuples("H", labels, prob, generator=gen(124))
    assert torch.equal(a.anchor, b.anchor) and torch.equal(a.same, b.same) and torch.equal(a.opposite, b.opposite)
    assert not torch.equal(a.anchor, c.anchor)
    emb = torch.randn(3, 8, 32, 32)
    cfg = MetricLossConfig()
    assert voxel_metric_loss(emb, labels, prob, cfg, gen(7)) == voxel_metric_loss(emb, labels, prob, cfg, gen(7))


def test_metric_gradients_reach_the_embedding_and_the_sep_split() -> None:
    net = UNet2D(base=8, embed_channels=16)
    x, labels = torch.randn(2, 3, 32, 32), blob_labels(2)
    logits, emb = net(x, detach_embedding=True)
    prob = logits.softmax(1)[:, 1]
    metric = voxel_metric_loss(emb, labels, prob, MetricLossConfig(strategies=("H", "C")), gen(0))
    assert metric.item() > 0
    emb.retain_grad()
    (F.cross_entropy(logits, labels) + 0.01 * metric).backward()
    assert emb.grad.abs().sum() > 0 and net.conv6d[0].weight.grad.abs().sum() > 0
    assert net.conv1a[0].weight.grad.abs().sum() > 0  # metric loss trains the backbone ...
    assert net.segb.weight.grad.abs().sum() > 0  # ... CE trains the head
    # CE alone with a detached embedding leaves the backbone untouched
    net.zero_grad(set_to_none=True)
    logits, emb = net(x, detach_embedding=True)
    F.cross_entropy(logits, labels).backward()
    assert net.conv6d[0].weight.grad is None and net.conv1a[0].weight.grad is None


def test_config_and_input_validation() -> None:
    assert MetricLossConfig(strategies=["h", "c"]).strategies == ("H", "C")
    assert MetricLossConfig(strategies="HCP"[:2]).strategies == ("H", "C")
    with pytest.raises(ConfigError, match="R/H/C"):
        MetricLossConfig(strategies=("H", "X"))
    with pytest.raises(ConfigError, match="k >= 1"):
        MetricLossConfig(k=0)
    with pytest.raises(InputError, match="labels and prob_fg"):
        voxel_metric_loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 8, 9, dtype=torch.long),
                          torch.zeros(1, 8, 9), MetricLossConfig())


def test_soft_dice_and_focal() -> None:
    labels = blob_labels(2)
    onehot = F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(onehot, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(1 - onehot, labels).item() == pytest.approx(1.0, abs=1e-6)
    assert soft_dice_loss(torch.full_like(onehot, 0.5), onehot, include_background=False).item() \
        == pytest.approx(1 - 2 * 0.5 * labels.sum().item() / (0.25 * labels.numel() + labels.sum().item()), rel=1e-5)
    logits, target = torch.randn(4, 10), torch.rand(4, 10)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(bce.mean().item(), rel=1e-5)
    p = torch.sigmoid(logits)
    assert focal_loss(logits, target, reduction="sum").item() == pytest.approx(
        ((target - p).abs() ** 2 * bce).sum().item(), rel=1e-5)
    with pytest.raises(InputError, match="shaped like"):
        soft_dice_loss(onehot, torch.zeros(2, 5))
