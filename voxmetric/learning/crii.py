"""CRII-Net losses (METHODS.md §5, D-3 … D-7; design choices, the paper gives only its abstract).

* :func:`supervised_loss` (D-3): (CE + Dice)(P_r) + 0.5 · (CE + Dice)(P_c) on labelled patches;
* :func:`consistency_loss` (D-4): MSE of P_c and P_r to the detached target
  T = sharpen(½(P_c + P_r), temperature 0.5), on every patch, labelled or not, weighted by
  :func:`rampup_weight` (0.1 · exp(−5 (1 − t/t_r)²) until t_r = 40 % of the run, then 0.1);
* :func:`intra_prl` (D-5): per labelled patch, in the band dilate(G, r) \\ erode(G, r) around the
  boundary (r = 3 voxels, square / cubic structuring element), the K hardest false positives
  (background, highest p) against the K hardest false negatives (foreground, lowest p), hinge
  max(0, p_neg − p_pos + margin) averaged over the K × K pairs;
* :func:`inter_prl` (D-6): each labelled patch split into a grid of cells (8 per axis; cell score
  = mean p); positive cells (foreground fraction ≥ 0.5) and negative cells (no foreground) pooled
  over the batch; the K lowest-scoring positive against the K highest-scoring negative cells,
  the same hinge.

``p`` is a class probability of the refined output; several classes are handled one-vs-rest
(:func:`ranked_losses`). Shapes: probabilities (B, C, *S) with S = (H, W) or (D, H, W); labels
(B, *S) int64 class indices (0 = background). An empty band or pool contributes 0 (a tensor that
still carries a graph to its input, so every parameter gets a gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from voxmetric.errors import ConfigError, InputError
from voxmetric.learning.losses import soft_dice_loss


@dataclass(frozen=True)
class RankedConfig:
    """Settings of the two ranked losses (METHODS.md §6.5 "CRII-Net")."""

    k: int = 30
    margin: float = 0.3
    band: int = 3
    grid: int = 8

    def __post_init__(self) -> None:
        if self.k < 1 or self.band < 1 or self.grid < 1:
            raise ConfigError(f"k, band and grid must be at least 1, got {self.k}, {self.band}, {self.grid}.")
        if self.margin < 0:
            raise ConfigError(f"margin must not be negative, got {self.margin}.")


# ---- D-3, D-4 -------------------------------------------------------------------------------------
def supervised_loss(logits_r: Tensor, logits_c: Tensor, label: Tensor, coarse_weight: float = 0.5
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """D-3: (CE + soft Dice)(refined) + ``coarse_weight`` · (CE + soft Dice)(coarse); logits
    (B, C, *S), label (B, *S). Returns (loss, detached parts "sup_r", "sup_c")."""
    parts = {}
    for name, logits in (("sup_r", logits_r), ("sup_c", logits_c)):
        logits = logits.float()
        parts[name] = F.cross_entropy(logits, label) + soft_dice_loss(torch.softmax(logits, 1), label)
    loss = parts["sup_r"] + coarse_weight * parts["sup_c"]
    return loss, {k: v.detach() for k, v in parts.items()}


def sharpen(p: Tensor, temperature: float = 0.5) -> Tensor:
    """p^(1/T) renormalised over the class axis (dim 1): T < 1 makes the distribution peakier."""
    if temperature <= 0:
        raise ConfigError(f"The sharpening temperature must be positive, got {temperature}.")
    q = p.clamp_min(1e-8).pow(1.0 / temperature)
    return q / q.sum(1, keepdim=True)


def consistency_loss(p_c: Tensor, p_r: Tensor, temperature: float = 0.5) -> Tensor:
    """D-4: MSE(P_c, T) + MSE(P_r, T), T = sharpen(½(P_c + P_r)) detached; P (B, C, *S)."""
    if p_c.shape != p_r.shape:
        raise InputError(f"P_c {tuple(p_c.shape)} and P_r {tuple(p_r.shape)} must have the same shape.")
    target = sharpen(0.5 * (p_c + p_r), temperature).detach()
    return F.mse_loss(p_c, target) + F.mse_loss(p_r, target)


def rampup_weight(iteration: int, total: int, weight: float = 0.1, fraction: float = 0.4) -> float:
    """D-4: λ_cons(t) = weight · exp(−5 (1 − t/t_r)²) for t < t_r = ``fraction`` · ``total``, then
    ``weight`` (``fraction`` 0: no ramp-up). ``iteration`` is 0-based."""
    t_r = fraction * total
    if t_r <= 0 or iteration >= t_r:
        return float(weight)
    return float(weight * math.exp(-5.0 * (1.0 - max(iteration, 0) / t_r) ** 2))


# ---- D-5, D-6 ---------------------------------------------------------------------------------------
def _pool(x: Tensor, size: int) -> Tensor:
    """Max over a cube of side ``size`` (stride 1, same size) of x (B, *S) float."""
    pool = F.max_pool2d if x.ndim == 3 else F.max_pool3d
    return pool(x[:, None], size, stride=1, padding=size // 2)[:, 0]


def boundary_band(g: Tensor, radius: int = 3) -> Tensor:
    """dilate(G, r) \\ erode(G, r) with a (2r + 1)-wide square (2D) or cube (3D): g (B, *S) bool
    → bool, the voxels within ``radius`` of the boundary on either side. Voxels beyond the patch
    edge count as neither foreground nor background (no boundary at the patch edge)."""
    if g.ndim not in (3, 4):
        raise InputError(f"boundary_band expects (B, H, W) or (B, D, H, W) masks, got {tuple(g.shape)}.")
    f = g.float()
    size = 2 * radius + 1
    dilated = _pool(f, size) > 0
    eroded = -_pool(-f, size) > 0
    return dilated & ~eroded


def ranked_hinge(neg: Tensor, pos: Tensor, neg_ok: Tensor, pos_ok: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Mean of max(0, n − p + margin) over the valid (n, p) pairs of each row: neg, pos (R, K)
    scores with validity masks (R, K) → (per-row mean (R,), row has pairs (R,) bool)."""
    pairs = neg_ok[:, :, None] & pos_ok[:, None, :]
    hinge = F.relu(neg[:, :, None] - pos[:, None, :] + margin) * pairs
    count = pairs.sum((1, 2))
    return hinge.sum((1, 2)) / count.clamp_min(1), count > 0


def _hardest(p: Tensor, candidates: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """The ``k`` largest (or smallest) values of p (R, N) in [0, 1] among ``candidates`` (R, N) bool per row:
    (values (R, k'), valid (R, k')), k' = min(k, N)."""
    k = min(k, p.shape[1])
    fill = -1.0 if largest else 2.0  # outside [0, 1]: never chosen before a candidate
    values, idx = torch.topk(p.masked_fill(~candidates, fill), k, dim=1, largest=largest)
    return values, torch.gather(candidates, 1, idx)


def _zero(p: Tensor) -> Tensor:
    return (p * 0.0).sum()


def intra_prl(p: Tensor, g: Tensor, cfg: RankedConfig = RankedConfig()) -> Tensor:
    """D-5 for one class: p (B, *S) its probability, g (B, *S) bool its ground truth. Patches with
    no boundary band (no foreground, or no background near it) contribute nothing; 0 when none has."""
    band = boundary_band(g, cfg.band)
    flat_p, flat_g, flat_b = p.flatten(1), g.flatten(1), band.flatten(1)
    neg, neg_ok = _hardest(flat_p, flat_b & ~flat_g, cfg.k, largest=True)  # hardest false positives
    pos, pos_ok = _hardest(flat_p, flat_b & flat_g, cfg.k, largest=False)  # hardest false negatives
    per_patch, has = ranked_hinge(neg, pos, neg_ok, pos_ok, cfg.margin)
    return per_patch[has].mean() if bool(has.any()) else _zero(p)


def inter_prl(p: Tensor, g: Tensor, cfg: RankedConfig = RankedConfig()) -> Tensor:
    """D-6 for one class: cells of a grid with ``cfg.grid`` cells per axis (fewer when a patch is
    smaller) over every patch, pooled over the batch; positive cells have a foreground fraction
    ≥ 0.5, negative ones none; 0 when either pool is empty."""
    score, frac = _cells(p, cfg.grid), _cells(g.float(), cfg.grid)
    pos_cells, neg_cells = frac >= 0.5, frac <= 0.0
    neg, neg_ok = _hardest(score[None], neg_cells[None], cfg.k, largest=True)
    pos, pos_ok = _hardest(score[None], pos_cells[None], cfg.k, largest=False)
    loss, has = ranked_hinge(neg, pos, neg_ok, pos_ok, cfg.margin)
    return loss[0] if bool(has[0]) else _zero(p)


def _cells(x: Tensor, grid: int) -> Tensor:
    """Means of x (B, *S) over a grid of ``grid`` cells per axis (fewer on a shorter axis),
    flattened over the batch: (B · cells,)."""
    if x.ndim == 3:
        return F.adaptive_avg_pool2d(x[:, None], (min(grid, x.shape[1]), min(grid, x.shape[2]))).flatten()
    size = (min(grid, x.shape[1]), min(grid, x.shape[2]), min(grid, x.shape[3]))
    return F.adaptive_avg_pool3d(x[:, None], size).flatten()


def ranked_losses(probs: Tensor, label: Tensor, cfg: RankedConfig = RankedConfig()) -> tuple[Tensor, Tensor]:
    """(L_intra, L_inter) of probabilities (B, C, *S) against labels (B, *S), one-vs-rest over
    the foreground classes 1 … C − 1 and averaged over them."""
    if probs.shape[0] != label.shape[0] or probs.shape[2:] != label.shape[1:]:
        raise InputError(f"probabilities {tuple(probs.shape)} and labels {tuple(label.shape)} do not match.")
    intra, inter = [], []
    for c in range(1, probs.shape[1]):
        g = label == c
        intra.append(intra_prl(probs[:, c], g, cfg))
        inter.append(inter_prl(probs[:, c], g, cfg))
    return torch.stack(intra).mean(), torch.stack(inter).mean()


__all__ = ["RankedConfig", "boundary_band", "consistency_loss", "inter_prl", "intra_prl", "rampup_weight",
           "ranked_hinge", "ranked_losses", "sharpen", "supervised_loss"]
