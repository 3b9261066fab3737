"""Voxel-level SimSiam representation learning ([VS] §3.3–3.4, METHODS.md §3, I-29 … I-36).

On each of the ``layers`` deepest encoder feature maps f^l (B, C_l, d, h, w):

1. **Sampling** (I-36): labels and the detached argmax prediction are brought to the layer's
   resolution by nearest-neighbour resampling; at most ``max_features`` voxels are drawn per
   layer and mini-batch, false negatives first (a voxel of class c predicted as another class; at
   most ``max_fn`` of them, uniformly), the rest filled with correctly predicted voxels (uniformly).
   Background counts as a class.
2. **Heads** (I-31): projection g = Linear(C_l, d)–BN–ReLU–Linear(d, d)–BN and prediction
   h = Linear(d, d)–BN–ReLU–Linear(d, d), d = ``hidden`` (64), one pair per layer; training only.
3. **Loss** (Eqs. 4–6, I-32, I-33): with p̄ = h(g(v))/‖·‖ and z̄ = sg(g(v))/‖·‖ over the sampled
   voxels S_c of class c (pooled over the batch), L_c = −⟨mean_{i∈S_c} p̄_i, mean_{j∈S_c} z̄_j⟩
   (identical directions give −1), L_sim = Σ_c w_c L_c with w_c = 1 − |S_c| / Σ_c' |S_c'|
   (``class_weighting``; else w_c = 1). Classes with no sampled voxel add nothing (no NaN).
4. L_feature = Σ_l L_sim(f^l) (α_l = 1, Eq. 7); the method adds λ · L_feature to the Dice loss.

Sampling is vectorised with random keys and top-k on the features' device (global torch RNG,
seeded and checkpointed by the trainer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxmetric.errors import ConfigError


@dataclass(frozen=True)
class SimSiamConfig:
    """Hyper-parameters of the voxel SimSiam term (defaults: [VS] §IV-B, METHODS.md §6.5)."""

    layers: int = 3
    hidden: int = 64
    max_features: int = 1700
    max_fn: int = 1000
    class_weighting: bool = True

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "max_features"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.max_fn <= self.max_features:
            raise ConfigError(f"max_fn must lie in [0, max_features], got {self.max_fn}.")


def projection_head(channels: int, hidden: int) -> nn.Sequential:
    """g: Linear(C, d)–BN–ReLU–Linear(d, d)–BN on gathered voxel vectors (N, C) → (N, d)."""
    return nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden))


def prediction_head(hidden: int) -> nn.Sequential:
    """h: Linear(d, d)–BN–ReLU–Linear(d, d): (N, d) → (N, d)."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden))


class SimSiamHeads(nn.Module):
    """One (projection, prediction) head pair per sampled layer; ``channels[l]`` = C_l."""

    def __init__(self, channels: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        self.projections = nn.ModuleList(projection_head(c, hidden) for c in channels)
        self.predictions = nn.ModuleList(prediction_head(hidden) for _ in channels)


def _take(keys: Tensor, member: Tensor, k: int) -> Tensor:
    """Indices of up to ``k`` members drawn uniformly (largest random keys among members)."""
    n = int(member.sum())
    if n == 0 or k <= 0:
        return torch.zeros(0, dtype=torch.long, device=keys.device)
    return torch.topk(torch.where(member, keys, torch.full_like(keys, -1.0)), min(k, n)).indices


def sample_voxels(labels: Tensor, pred: Tensor, max_features: int, max_fn: int) -> Tensor:
    """Flat indices (M,) into ``labels.view(-1)``: up to ``max_fn`` false negatives (``pred !=
    labels``), filled up to ``max_features`` with correct voxels; labels, pred: int (B, d, h, w)."""
    lab, prd = labels.reshape(-1), pred.reshape(-1)
    keys = torch.rand(lab.shape, device=lab.device)
    fn = _take(keys, lab != prd, max_fn)
    tp = _take(keys, lab == prd, max_features - len(fn))
    return torch.cat([fn, tp])


def class_mean_loss(p: Tensor, z: Tensor, cls: Tensor, num_classes: int, class_weighting: bool = True) -> Tensor:
    """Σ_c w_c · −⟨mean p̄_c, mean sg(z̄)_c⟩ over the classes present in ``cls`` (M,); p, z (M, d)."""
    pn, zn = F.normalize(p, dim=1), F.normalize(z.detach(), dim=1)
    onehot = F.one_hot(cls, num_classes).to(p.dtype)  # (M, K)
    count = onehot.sum(0)  # |S_c|
    present = count > 0
    mean_p = (onehot.t() @ pn)[present] / count[present, None]
    mean_z = (onehot.t() @ zn)[present] / count[present, None]
    losses = -(mean_p * mean_z).sum(1)
    weights = 1.0 - count[present] / count.sum() if class_weighting else torch.ones_like(losses)
    return (weights * losses).sum()


def voxel_simsiam_loss(features: Sequence[Tensor], heads: SimSiamHeads, labels: Tensor, logits: Tensor,
                       cfg: SimSiamConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """L_feature over the first ``len(heads.projections)`` of ``features`` (deepest first, each
    (B, C_l, d, h, w)); ``labels`` int64 (B, D, H, W) and ``logits`` (B, K, D, H, W) at full
    resolution. Returns (loss, {"sim_l<k>": per-layer loss})."""
    num_classes = logits.shape[1]
    pred = logits.detach().argmax(1)
    total = features[0].new_zeros(())
    logs: dict[str, Tensor] = {}
    for k, (feat, g, h) in enumerate(zip(features, heads.projections, heads.predictions)):
        size = feat.shape[2:]
        lab = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        prd = F.interpolate(pred[:, None].float(), size=size, mode="nearest")[:, 0].long()
        idx = sample_voxels(lab, prd, cfg.max_features, cfg.max_fn)
        if len(idx) < 2:  # BatchNorm needs two vectors; nothing to learn from one
            continue
        vectors = feat.float().permute(0, 2, 3, 4, 1).reshape(-1, feat.shape[1])[idx]  # (M, C_l)
        z = g(vectors)
        loss = class_mean_loss(h(z), z, lab.reshape(-1)[idx], num_classes, cfg.class_weighting)
        logs[f"sim_l{k + 1}"] = loss.detach()
        total = total + loss
    return total, logs
