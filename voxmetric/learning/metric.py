"""Online voxel-metric learning of MetricUNet (METHODS.md §2.5, Eqs. 1-2; I-16 to I-21, I-26).

Per image, k anchors are drawn from a strategy's anchor pool; per anchor, m same-label and m
opposite-label voxels (the anchor excluded from its own same-label pool):

=========  ==============================  ================  ==============
strategy   anchor pool                     same-label pool   opposite pool
=========  ==============================  ================  ==============
R          P                               P                 Q
H          P ∩ {|ŷ − y| > τ}  (ŷ < 1 − τ)  P                 Q
C          ∂P = P minus erode(P, 3x3 +)    ∂P                Q
=========  ==============================  ================  ==============

P = {y = 1}, Q = {y = 0}. Pools smaller than the draw are used whole; an image whose P or Q
is empty adds 0 for that strategy. Everything is vectorised over the batch on the embedding's
device: uniform sampling without replacement is "random keys in [0, 1), non-members set to
−1, top-k", so no Python loop touches images, anchors or voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from voxmetric.errors import ConfigError, InputError

STRATEGIES = ("R", "H", "C")


@dataclass
class MetricLossConfig:
    """Hyper-parameters of the voxel-metric loss (defaults: METHODS.md §2.5, model HCP).

    ``lam`` is carried here for the method but NOT applied by :func:`voxel_metric_loss`;
    ``beta`` is used only when ``pair_term`` is on; ``normalize`` L2-normalises the sampled
    features before distances (I-21, default off).
    """

    strategies: tuple[str, ...] = ("H", "C")
    pair_term: bool = True
    k: int = 20
    m: int = 1
    sigma: float = 0.7
    eps: float = 0.01
    beta: float = 0.1
    lam: float = 0.01
    tau: float = 0.1
    normalize: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.strategies, str):
            self.strategies = tuple(self.strategies)
        self.strategies = tuple(str(s).upper() for s in self.strategies)
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"Metric strategies must be distinct letters among {'/'.join(STRATEGIES)}, "
                              f"got {list(self.strategies)}.")
        if self.k < 1 or self.m < 1:
            raise ConfigError(f"Metric sampling needs k >= 1 anchors and m >= 1 samples, got k={self.k}, m={self.m}.")
        if not 0.0 <= self.tau < 1.0:
            raise ConfigError(f"tau must lie in [0, 1), got {self.tau}.")
        if self.sigma < 0 or self.eps < 0 or self.beta < 0 or self.lam < 0:
            raise ConfigError("sigma, eps, beta and lam must be >= 0.")


@dataclass
class Tuples:
    """Sampled voxel tuples of one strategy; indices are flat into H*W.

    anchor, anchor_valid: (B, k); same, same_valid, opposite, opposite_valid: (B, k, m);
    image_valid: (B,) — False where P or Q is empty (the image then contributes 0).
    Every ``*_valid`` flag already implies a valid anchor in a valid image.
    k and m shrink to H*W when an image has fewer voxels than that.
    """

    anchor: Tensor
    anchor_valid: Tensor
    same: Tensor
    same_valid: Tensor
    opposite: Tensor
    opposite_valid: Tensor
    image_valid: Tensor


def boundary_mask(fg: Tensor) -> Tensor:
    """∂P of a (B, H, W) bool mask: P minus its binary erosion with a 3x3 cross (I-19).

    The patch edge is padded by replication, so a cut at the patch border is not a contour.
    """
    x = F.pad(fg[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    eroded = (x[:, 1:-1, 1:-1] * x[:, :-2, 1:-1] * x[:, 2:, 1:-1] * x[:, 1:-1, :-2] * x[:, 1:-1, 2:]) > 0
    return fg & ~eroded


def strategy_pools(strategy: str, labels: Tensor, prob_fg: Tensor, tau: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """(anchor, same-label, opposite-label) pools, each (B, H, W) bool, for strategy R, H or C.

    labels (B,H,W) integer (1 = foreground, 0 = background, anything else ignored);
    prob_fg (B,H,W) foreground probability ŷ (used by H only).
    """
    fg, bg = labels == 1, labels == 0
    if strategy == "R":
        return fg, fg, bg
    if strategy == "H":
        return fg & ((prob_fg - 1.0).abs() > tau), fg, bg
    if strategy == "C":
        edge = boundary_mask(fg)
        return edge, edge, bg
    raise ConfigError(f"Unknown sampling strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")


def _random_keys(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    if generator is not None and generator.device.type != device.type:
        raise ConfigError(f"The sampling generator is on {generator.device} but the data are on {device}; "
                          f"create it with torch.Generator(device={str(device)!r}).")
    return torch.rand(shape, device=device, generator=generator)


def sample_from_pool(pool: Tensor, count: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw ``count`` members of each boolean ``pool`` (..., N) uniformly without replacement.

    Returns (index (..., c) long, valid (..., c) bool) with c = min(count, N); where a pool has
    fewer than ``count`` members all of them are returned and the rest are marked invalid.
    """
    keys = _random_keys(tuple(pool.shape), pool.device, generator)
    return _top_members(keys, pool, count)


def _top_members(keys: Tensor, pool: Tensor, count: int) -> tuple[Tensor, Tensor]:
    score, index = keys.masked_fill(~pool, -1.0).topk(min(count, keys.shape[-1]), dim=-1)
    return index, score >= 0


def sample_tuples(strategy: str, labels: Tensor, prob_fg: Tensor, k: int = 20, m: int = 1, tau: float = 0.1,
                  generator: torch.Generator | None = None) -> Tuples:
    """Sample k anchors per image and m same-/opposite-label voxels per anchor (see module doc).

    labels (B,H,W) integer, prob_fg (B,H,W) float; all sampling runs on their device.
    """
    anchor_pool, same_pool, opp_pool = (p.flatten(1) for p in strategy_pools(strategy, labels, prob_fg, tau))
    b, n = anchor_pool.shape
    anchor, anchor_valid = sample_from_pool(anchor_pool, k, generator)
    # One key per (anchor, voxel): the same- and opposite-label pools are disjoint, so sharing
    # the keys keeps the two draws independent. The anchor's own key is removed first.
    keys = _random_keys((b, anchor.shape[1], n), labels.device, generator)
    keys.scatter_(2, anchor[..., None], -1.0)
    same, same_valid = _top_members(keys, same_pool[:, None, :], m)
    opposite, opposite_valid = _top_members(keys, opp_pool[:, None, :], m)
    labels_flat = labels.flatten(1)
    image_valid = (labels_flat == 1).any(1) & (labels_flat == 0).any(1)
    anchor_valid = anchor_valid & image_valid[:, None]
    same_valid, opposite_valid = same_valid & anchor_valid[..., None], opposite_valid & anchor_valid[..., None]
    return Tuples(anchor, anchor_valid, same, same_valid, opposite, opposite_valid, image_valid)


def tuple_loss(embedding: Tensor, tuples: Tuples, cfg: MetricLossConfig) -> Tensor:
    """Eq. 2 for one strategy: Σ [‖a−p‖² − ‖a−q‖² + σ]_+ + β Σ [‖a−p‖² − ε]_+ (β only if pair_term).

    embedding (B,C,H,W) in any memory format; returns a scalar (sum over images and tuples).
    """
    b, c = embedding.shape[:2]
    k, m = tuples.anchor.shape[1], tuples.same.shape[2]
    index = torch.cat([tuples.anchor, tuples.same.flatten(1), tuples.opposite.flatten(1)], dim=1)
    feats = embedding.flatten(2).gather(2, index[:, None, :].expand(b, c, -1)).transpose(1, 2)  # (B, k+2km, C)
    feats = feats.float()  # distances in fp32 under AMP; only k(1+2m) vectors per image
    if cfg.normalize:
        feats = F.normalize(feats, dim=-1)
    a = feats[:, :k, None, :]
    p = feats[:, k:k + k * m].reshape(b, k, m, c)
    q = feats[:, k + k * m:].reshape(b, k, m, c)
    d_ap, d_aq = (a - p).pow(2).sum(-1), (a - q).pow(2).sum(-1)  # (B, k, m)
    ok_ap = tuples.same_valid  # implies a valid anchor in a valid image
    ok_apq = ok_ap[..., :, None] & tuples.opposite_valid[..., None, :]
    triplet = F.relu(d_ap[..., :, None] - d_aq[..., None, :] + cfg.sigma)  # (B, k, m, m)
    loss = torch.where(ok_apq, triplet, torch.zeros_like(triplet)).sum()
    if cfg.pair_term and cfg.beta > 0:
        pair = F.relu(d_ap - cfg.eps)
        loss = loss + cfg.beta * torch.where(ok_ap, pair, torch.zeros_like(pair)).sum()
    return loss


def voxel_metric_loss(embedding: Tensor, labels: Tensor, prob_fg: Tensor, cfg: MetricLossConfig,
                      generator: torch.Generator | None = None) -> Tensor:
    """Σ over cfg.strategies of Eq. 2 (NOT multiplied by cfg.lam).

    embedding (B,C,H,W) float (e.g. conv6d); labels (B,H,W) long centre-slice label;
    prob_fg (B,H,W) foreground probability softmax(logits)[:, 1] (detached here). The generator,
    if given, must live on the embedding's device. Returns a scalar; 0 (with a graph) when no
    image has a usable tuple.
    """
    if embedding.ndim != 4 or labels.shape != (embedding.shape[0], *embedding.shape[2:]) \
            or prob_fg.shape != labels.shape:
        raise InputError(f"voxel_metric_loss needs embedding (B,C,H,W) with labels and prob_fg (B,H,W); got "
                         f"{tuple(embedding.shape)}, {tuple(labels.shape)}, {tuple(prob_fg.shape)}.")
    prob_fg = prob_fg.detach()
    loss = embedding.new_zeros(())
    for strategy in cfg.strategies:
        tuples = sample_tuples(strategy, labels, prob_fg, cfg.k, cfg.m, cfg.tau, generator)
        loss = loss + tuple_loss(embedding, tuples, cfg)
    return loss
