"""Segmentation losses shared by several methods (METHODS.md §1.2: soft Dice I-05, focal I-06)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from voxmetric.errors import InputError


def _as_target(probs: Tensor, target: Tensor) -> Tensor:
    """Integer labels (B, *S) -> one-hot (B, K, *S); a soft target of probs' shape passes through."""
    if target.shape == probs.shape:
        return target.to(probs.dtype)
    if target.dtype.is_floating_point or target.shape != (probs.shape[0], *probs.shape[2:]):
        raise InputError(f"Target must be integer labels (B, *S) or a soft map shaped like the "
                         f"prediction {tuple(probs.shape)}; got {tuple(target.shape)} {target.dtype}.")
    return F.one_hot(target.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)


def soft_dice_loss(probs: Tensor, target: Tensor, smooth: float = 1e-5, include_background: bool = True) -> Tensor:
    """V-Net soft Dice (I-05): 1 − mean_c (2Σ p g + s) / (Σ p² + Σ g² + s), sums over batch and space.

    probs (B, K, *S) class probabilities; target (B, *S) integer labels or (B, K, *S) soft.
    """
    g = _as_target(probs, target)
    if not include_background and probs.shape[1] > 1:
        probs, g = probs[:, 1:], g[:, 1:]
    dims = [0, *range(2, probs.ndim)]
    inter = (probs * g).sum(dims)
    denom = probs.pow(2).sum(dims) + g.pow(2).sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, reduction: str = "mean") -> Tensor:
    """Binary focal loss for soft targets (I-06): −|g − p|^γ [g log p + (1 − g) log(1 − p)], p = σ(logits).

    logits and target (any shape, target in [0, 1]); reduction "mean" or "sum" over elements.
    """
    if target.shape != logits.shape:
        raise InputError(f"focal_loss needs target shaped like logits {tuple(logits.shape)}, got {tuple(target.shape)}.")
    g = target.to(logits.dtype)
    ce = -(g * F.logsigmoid(logits) + (1.0 - g) * F.logsigmoid(-logits))
    loss = (g - torch.sigmoid(logits)).abs().pow(gamma) * ce
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise InputError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
