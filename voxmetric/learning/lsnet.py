"""L-SNet losses, targets and keypoints [LS] (METHODS.md §4.2, §4.5, §4.6).

* :func:`heatmap_targets`: the Gaussian keypoint heatmap of a label slice (Eq. 1, I-42), one box
  per connected component of the foreground (I-43), σ in feature cells (I-44, default 2), and the
  box each feature cell regresses (the object whose Gaussian is largest there);
* :func:`lnet_loss` (Eq. 5, I-52): focal (I-06, γf = 2) + 0.2 · soft Dice on the heatmap, plus DIoU
  on the boxes at the cells whose target heatmap exceeds δ = 0.5, averaged over those N_pos cells;
* :func:`snet_loss` (Eq. 6, I-53): focal + 0.2 · soft Dice on S-Net's RoI output;
* :func:`training_keypoints` (I-54): one of the top-3 heatmap peaks after 3×3 max-pool suppression,
  picked at random with the global torch RNG (the trainer seeds and checkpoints it);
* :func:`inference_keypoints` (I-56): heatmap > 0.5, the centroid of each 8-connected component;
* :func:`warp_labels` (I-47): labels warped with the RoI θ: bilinear on the one-hot maps, then 0.5;
* :class:`SliceDataset`: the training items of both L-SNet methods — whole axial slices (2.5D
  slabs) of prepared cases on a fixed canvas, with their heatmap and box targets.

Normalisers (I-52 leaves them open): the heatmap focal loss is summed over cells and divided by the
number of objects in the batch (CenterNet's normaliser; at least 1), its Dice is one soft Dice over
the batch; S-Net's focal loss is the mean over RoI pixels and classes (one-vs-rest on the softmax,
:func:`one_vs_rest_logits`), its Dice the V-Net soft Dice over classes (I-05).
Boxes are (x0, y0, x1, y1) in input pixels, edges at voxel boundaries (a component spanning
columns a … b has x0 = a − 0.5, x1 = b + 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from voxmetric.errors import ConfigError, InputError
from voxmetric.learning.losses import focal_loss, soft_dice_loss
from voxmetric.nets.lsnet import STRIDE, cell_to_pixel, recalibrate
from voxmetric.sampling import SeededDataset

if TYPE_CHECKING:  # pragma: no cover
    from voxmetric.data import PreparedCase

EIGHT = np.ones((3, 3), bool)  # 8-connectivity in a slice


# ---- targets ---------------------------------------------------------------------------------------------
def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(int32 component labels, count) of the 8-connected components of a boolean slice."""
    comp = np.zeros(mask.shape, np.int32)
    ndimage.label(mask, structure=EIGHT, output=comp)
    return comp, int(comp.max(initial=0))


def object_boxes(label: np.ndarray) -> np.ndarray:
    """Boxes (n, 4) = (x0, y0, x1, y1) pixel edges of the 8-connected foreground components of a
    label slice (H, W) (any class > 0 is foreground; one box per component, I-43)."""
    comp, n = _components(np.asarray(label) > 0)
    boxes = np.zeros((n, 4), np.float32)
    for k, sl in enumerate(ndimage.find_objects(comp)):
        if sl is not None:
            boxes[k] = (sl[1].start - 0.5, sl[0].start - 0.5, sl[1].stop - 0.5, sl[0].stop - 0.5)
    return boxes


def heatmap_targets(label: np.ndarray, stride: int = STRIDE, sigma: float = 2.0) -> tuple[np.ndarray, np.ndarray, int]:
    """(heatmap (h, w) float32 in [0, 1], target boxes (4, h, w) float32, number of objects) of a
    label slice (H, W), h = H // stride, w = W // stride.

    ``Y = max_c exp(−((x − c̃_x)² + (y − c̃_y)²) / (2σ²))`` over the centres c of the component
    boxes in feature coordinates, c̃ = (c − (s − 1)/2) / s (the inverse of I-40's cell → pixel map);
    each cell's target box is that of the object whose Gaussian is largest there (zeros when
    there is no object)."""
    if sigma <= 0:
        raise InputError(f"the heatmap sigma must be positive, got {sigma}.")
    h, w = label.shape[0] // stride, label.shape[1] // stride
    boxes = object_boxes(label)
    heat = np.zeros((h, w), np.float32)
    target = np.zeros((4, h, w), np.float32)
    if len(boxes) == 0:
        return heat, target, 0
    centres = (np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1) - (stride - 1) / 2) / stride
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = np.exp(-((xx[None] - centres[:, 0, None, None]) ** 2 + (yy[None] - centres[:, 1, None, None]) ** 2)
               / (2 * sigma ** 2))
    owner = np.argmax(g, 0)
    heat = g.max(0).astype(np.float32)
    target = np.moveaxis(boxes[owner], -1, 0).astype(np.float32)
    return heat, target, len(boxes)


# ---- keypoints --------------------------------------------------------------------------------------------
def peaks(heat: Tensor, kernel: int = 3) -> Tensor:
    """``heat`` (B, 1, h, w) where it is a local maximum of its ``kernel``² window, else −inf
    (max-pool suppression)."""
    pooled = F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    return torch.where(heat == pooled, heat, torch.full_like(heat, -torch.inf))


def training_keypoints(heat: Tensor, k: int = 3) -> Tensor:
    """One keypoint cell (row, col) per image (B, 2) long: one of the ``k`` highest peaks of the
    heatmap (logits or probabilities, B × 1 × h × w) after 3×3 max-pool suppression, chosen
    uniformly at random with the global torch RNG (I-54)."""
    b, _, h, w = heat.shape
    scores = peaks(heat.float()).flatten(1)  # (B, h·w)
    k = min(k, h * w)
    top, idx = scores.topk(k, dim=1)
    valid = torch.isfinite(top).sum(1).clamp(min=1)  # a flat map has one peak per plateau cell at least
    pick = (torch.rand(b, device=heat.device) * valid).long().clamp(max=k - 1)
    flat = idx.gather(1, pick[:, None])[:, 0]
    return torch.stack([flat // w, flat % w], 1)


def inference_keypoints(heat: np.ndarray, threshold: float = 0.5) -> list[tuple[float, float, float]]:
    """Keypoints of a heatmap (h, w) of probabilities (I-56): the centroid (row, col) in feature
    cells of every 8-connected component of ``heat > threshold``, with the component's peak."""
    comp, n = _components(np.asarray(heat) > threshold)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    centres = ndimage.center_of_mass(np.ones_like(heat), comp, index)
    tops = ndimage.maximum(heat, comp, index)
    return [(float(c[0]), float(c[1]), float(p)) for c, p in zip(centres, np.atleast_1d(tops))]


def keypoint_box(row: float, col: float, dist: np.ndarray, stride: int = STRIDE) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1) in input pixels of a keypoint at feature cell (row, col) whose
    distances are read at the nearest cell of ``dist`` (4, h, w) = (l, r, t, b)."""
    i = int(np.clip(round(row), 0, dist.shape[1] - 1))
    j = int(np.clip(round(col), 0, dist.shape[2] - 1))
    l, r, t, b = (float(v) for v in dist[:, i, j])
    x, y = col * stride + (stride - 1) / 2.0, row * stride + (stride - 1) / 2.0
    return x - l, y - t, x + r, y + b


# ---- losses -----------------------------------------------------------------------------------------------
def diou_loss(pred: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """DIoU loss (N,) of boxes (N, 4) = (x0, y0, x1, y1): ``1 − IoU + ρ²(centres) / c²`` with c the
    diagonal of the smallest box enclosing both."""
    iw = (torch.minimum(pred[:, 2], target[:, 2]) - torch.maximum(pred[:, 0], target[:, 0])).clamp(min=0)
    ih = (torch.minimum(pred[:, 3], target[:, 3]) - torch.maximum(pred[:, 1], target[:, 1])).clamp(min=0)
    inter = iw * ih
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    iou = inter / (area_p + area_t - inter + eps)
    cw = torch.maximum(pred[:, 2], target[:, 2]) - torch.minimum(pred[:, 0], target[:, 0])
    ch = torch.maximum(pred[:, 3], target[:, 3]) - torch.minimum(pred[:, 1], target[:, 1])
    rho2 = ((pred[:, 0] + pred[:, 2] - target[:, 0] - target[:, 2]) ** 2
            + (pred[:, 1] + pred[:, 3] - target[:, 1] - target[:, 3]) ** 2) / 4
    return 1 - iou + rho2 / (cw ** 2 + ch ** 2 + eps)


def cell_pixels(shape: Sequence[int], stride: int = STRIDE, device: torch.device | str = "cpu") -> Tensor:
    """Input-pixel positions (2, h, w) = (x, y) of the cells of an (h, w) feature map (I-40)."""
    h, w = int(shape[0]), int(shape[1])
    ys = cell_to_pixel(torch.arange(h, device=device), stride).view(h, 1).expand(h, w)
    xs = cell_to_pixel(torch.arange(w, device=device), stride).view(1, w).expand(h, w)
    return torch.stack([xs, ys])


def predicted_boxes(dist: Tensor, stride: int = STRIDE) -> Tensor:
    """Boxes (B, 4, h, w) = (x0, y0, x1, y1) in input pixels predicted at every cell from its
    distances ``dist`` (B, 4, h, w) = (l, r, t, b)."""
    xs, ys = cell_pixels(dist.shape[-2:], stride, dist.device).to(dist.dtype)
    l, r, t, b = dist.unbind(1)
    return torch.stack([xs - l, ys - t, xs + r, ys + b], 1)


def lnet_loss(heat_logits: Tensor, dist: Tensor, heatmap: Tensor, boxes: Tensor, objects: Tensor, *,
              delta: float = 0.5, dice_weight: float = 0.2, focal_gamma: float = 2.0,
              stride: int = STRIDE) -> tuple[Tensor, dict[str, Tensor]]:
    """L-Net loss (Eq. 5) of heatmap logits (B, 1, h, w) and distances (B, 4, h, w) against target
    ``heatmap`` (B, 1, h, w), target ``boxes`` (B, 4, h, w) and ``objects`` (B,) per image →
    (loss, detached parts {"heat", "box"}). The box term covers the cells with target > ``delta``
    whose pixel lies inside their target box: with σ = 2 cells the δ-region (radius 2.35 cells)
    is wider than a small organ's box, and non-negative distances cannot describe a box from a
    point outside it (FCOS's rule; I-52 does not say)."""
    logits = heat_logits.float()
    target = heatmap.to(logits.dtype).view_as(logits)
    focal = focal_loss(logits, target, focal_gamma, "sum") / objects.float().sum().clamp(min=1.0)
    heat = focal + dice_weight * soft_dice_loss(torch.sigmoid(logits), target)
    pred = predicted_boxes(dist.float(), stride)  # (B, 4, h, w)
    tb = boxes.float()
    xy = cell_pixels(dist.shape[-2:], stride, dist.device)  # (2, h, w) = (x, y)
    inside = ((xy >= tb[:, :2]) & (xy <= tb[:, 2:])).all(1)
    pos = (target[:, 0] > delta) & inside  # (B, h, w)
    if pos.any():
        box = diou_loss(pred.permute(0, 2, 3, 1)[pos], tb.permute(0, 2, 3, 1)[pos]).mean()
    else:  # no object in the batch: keep the head in the graph (DDP needs every gradient)
        box = 0.0 * dist.float().sum()
    return heat + box, {"heat": heat.detach(), "box": box.detach()}


def one_vs_rest_logits(logits: Tensor) -> Tensor:
    """Per-class logits (B, K, …) whose sigmoid is the softmax probability of that class:
    ``z_c − logsumexp_{k≠c} z_k`` (so the binary focal loss applies to a softmax output)."""
    k = logits.shape[1]
    if k < 2:
        raise InputError(f"one_vs_rest_logits needs at least two classes, got {k}.")
    z = logits.unsqueeze(1).expand(-1, k, *logits.shape[1:])  # (B, K(c), K(k), …)
    eye = torch.eye(k, dtype=torch.bool, device=logits.device).view(1, k, k, *([1] * (logits.ndim - 2)))
    others = torch.logsumexp(z.masked_fill(eye, -torch.inf), dim=2)
    return logits - others


def snet_loss(logits: Tensor, labels: Tensor, *, dice_weight: float = 0.2,
              focal_gamma: float = 2.0) -> tuple[Tensor, dict[str, Tensor]]:
    """S-Net loss (Eq. 6): focal on the one-vs-rest logits of the softmax + ``dice_weight`` · soft
    Dice, for logits (B, K, R, R) and labels (B, R, R) long → (loss, detached {"focal", "dice"})."""
    logits = logits.float()
    onehot = F.one_hot(labels.long(), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    focal = focal_loss(one_vs_rest_logits(logits), onehot, focal_gamma, "mean")
    dice = soft_dice_loss(torch.softmax(logits, 1), labels)
    return focal + dice_weight * dice, {"focal": focal.detach(), "dice": dice.detach()}


def warp_labels(labels: Tensor, theta: Tensor, size: int, num_classes: int) -> Tensor:
    """Label maps (B, H, W) warped into the RoIs θ (B, 2, 3) → (B, size, size) long: each
    foreground class's one-hot map bilinear, then > 0.5 (I-47); 0 elsewhere."""
    onehot = F.one_hot(labels.long(), num_classes).movedim(-1, 1)[:, 1:].float()  # (B, K-1, H, W)
    warped = recalibrate(onehot, theta.detach().float(), (size, size))
    best, cls = warped.max(1)
    return torch.where(best > 0.5, cls + 1, torch.zeros_like(cls))


# ---- training items ----------------------------------------------------------------------------------------
def _placement(n: int, size: int, lo: int | None, hi: int | None, rng: np.random.Generator | None) -> tuple[int, int, int]:
    """(source start, canvas start, length) placing ``n`` pixels on ``size``: at a random (or,
    without ``rng``, centred) offset when they fit, else a random (centred) window of ``size``
    that keeps the label's extent ``lo`` … ``hi`` when it can."""
    if n <= size:
        off = int(rng.integers(0, size - n + 1)) if rng is not None else (size - n) // 2
        return 0, off, n
    a, b = 0, n - size
    if lo is not None and hi is not None and max(a, hi - size + 1) <= min(b, lo):
        a, b = max(a, hi - size + 1), min(b, lo)
    start = int(rng.integers(a, b + 1)) if rng is not None else (a + b) // 2
    return start, 0, size


class SliceDataset(SeededDataset):
    """Whole axial slices of prepared cases on a ``canvas``² canvas: ``{"image": float32 (slab, S, S),
    "label": int64 (S, S), "heatmap": float32 (1, S/4, S/4), "boxes": float32 (4, S/4, S/4),
    "objects": float32 ()}`` (targets: :func:`heatmap_targets` with ``sigma``).

    Each epoch visits every case ``per_case`` times in a seeded order. Per item: the centre slice
    (with probability ``fg_fraction`` one that holds the label, else any), its ``slab`` neighbours
    (edge slices replicated, I-15), placed on the zero canvas — a slice smaller than the canvas at
    a random offset (centred without ``augment``), a larger one cropped at random keeping the
    label's extent when it fits; ``augment`` adds intensity ``v · s + t`` on the slice (s in
    [0.9, 1.1], t within ±10 % of 255; the zero padding stays air) and left-right flips. Item ``g``
    is a pure function of ``(seed, g)``."""

    def __init__(self, cases: Sequence["PreparedCase"], slab: int, canvas: int, per_case: int,
                 fg_fraction: float = 0.5, augment: bool = True, sigma: float = 2.0, seed: int = 0) -> None:
        if not cases:
            raise InputError("No prepared cases to draw training slices from.")
        if seed < 0 or slab < 1 or slab % 2 == 0 or canvas < STRIDE or per_case < 1:
            raise ConfigError(f"SliceDataset needs seed ≥ 0, an odd slab, canvas ≥ {STRIDE} and per_case ≥ 1; got "
                              f"{seed}, {slab}, {canvas}, {per_case}.")
        self.slab, self.canvas, self.per_case, self.fg_fraction = slab, canvas, per_case, fg_fraction
        self.augment, self.sigma, self.seed, self.ids = augment, sigma, int(seed), [c.id for c in cases]
        self._images = [np.ascontiguousarray(c.image.array, np.float32) for c in cases]
        self._labels = [np.ascontiguousarray(c.mask.array, np.uint8) for c in cases]
        self._fg = [np.flatnonzero(lab.reshape(len(lab), -1).any(1)) for lab in self._labels]

    def __len__(self) -> int:
        return self.per_case * len(self._images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        index = int(index)
        if index < 0:
            raise IndexError(f"index must be ≥ 0, got {index}")
        epoch, i = divmod(index, len(self))
        k = int(np.random.default_rng([self.seed, epoch, 1]).permutation(len(self))[i] // self.per_case)
        image, label, fg = self._images[k], self._labels[k], self._fg[k]
        rng = np.random.default_rng([self.seed, index, 0])
        pick_fg = len(fg) > 0 and rng.random() < self.fg_fraction
        z = int(fg[rng.integers(len(fg))]) if pick_fg else int(rng.integers(len(image)))
        zs = np.clip(z + np.arange(self.slab) - self.slab // 2, 0, len(image) - 1)
        lab, s = label[z], self.canvas
        ys, xs = np.nonzero(lab)
        place = rng if self.augment else None
        (sy, oy, ny), (sx, ox, nx) = (
            _placement(n, s, int(v.min()) if len(v) else None, int(v.max()) if len(v) else None, place)
            for n, v in ((lab.shape[0], ys), (lab.shape[1], xs)))
        img = np.zeros((self.slab, s, s), np.float32)
        out = np.zeros((s, s), np.int64)
        img[:, oy:oy + ny, ox:ox + nx] = image[zs, sy:sy + ny, sx:sx + nx]
        out[oy:oy + ny, ox:ox + nx] = lab[sy:sy + ny, sx:sx + nx]
        if self.augment:
            scale, shift = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1) * 255.0
            img[:, oy:oy + ny, ox:ox + nx] = img[:, oy:oy + ny, ox:ox + nx] * np.float32(scale) + np.float32(shift)
            if rng.random() < 0.5:
                img, out = np.ascontiguousarray(img[:, :, ::-1]), np.ascontiguousarray(out[:, ::-1])
        heat, boxes, n = heatmap_targets(out, STRIDE, self.sigma)
        return {"image": torch.from_numpy(img), "label": torch.from_numpy(out),
                "heatmap": torch.from_numpy(heat[None]), "boxes": torch.from_numpy(boxes), "objects": torch.tensor(float(n))}


__all__ = ["SliceDataset", "cell_pixels", "diou_loss", "heatmap_targets", "inference_keypoints", "keypoint_box",
           "lnet_loss", "object_boxes", "one_vs_rest_logits", "peaks", "predicted_boxes", "snet_loss", "training_keypoints", "warp_labels"]
