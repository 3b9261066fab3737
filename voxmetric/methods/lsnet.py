"""L-SNet [LS] (METHODS.md §4) as two methods: ``LNet`` (stage-1 localizer, §6.2 option B) and
``LSNet`` (L-Net + S-Net trained jointly; a joint model that fills both pipeline slots).

**Data.** Both train on whole axial slices (2.5D slabs of ``slab`` slices, edge slices
replicated) of the body-cropped case at the method's spacing (LNet: the localizer's 4 mm, 5
slices; LSNet: 2 mm, 3 slices), placed on a ``canvas``² pixel canvas (zero = air outside the
body): smaller slices at a random offset, larger ones cropped at random but keeping the label's
extent when it fits; with ``augment`` also left-right flips and intensity ``v · s + t`` (s in
[0.9, 1.1], t within ±10 % of 255) on the image part. A fraction ``fg_fraction`` of the slices
holds the label, the rest are drawn from all slices. Item ``g`` is a pure function of
(seed, g) (:class:`voxmetric.learning.lsnet.SliceDataset`).

**LNet** (role ``localizer``): L-Net alone, trained with the L-Net loss (Eq. 5; as L-SNet with
γ = 0, §6.2). Its predictor runs L-Net on every axial slice (batched) and, on each slice whose
heatmap has a component above ``heatmap_threshold`` (its peak then exceeds it too), takes the
centroid of each component as a keypoint (I-56) and the box (l, r, t, b) read there. The
returned class probabilities are, per slice, the union of those boxes filled with the slice's
heatmap peak: p_1 = peak inside the union, p_0 = 1 − p_1 (C = 2 for a prostate model; with more
classes the boxes go to class 1, the others stay 0). **The 3D box** then follows from the
pipeline's existing rule, unchanged: p > 0.5 (so exactly the slice boxes of slices whose peak
exceeds 0.5), the largest 26-connected 3D component of that union, its extent + ``margin_mm``
(15 mm) per side, clamped to [60, 128] mm (``voxmetric.pipeline.roi_from_mask``) — §6.2 option
B's "union of the boxes over slices whose peak heatmap exceeds 0.5, padded by 15 mm"; the
confidence is the mean peak over that component.

**LSNet** (role ``joint``): L-Net + S-Net (our :class:`~voxmetric.nets.unet2d.UNet2D`) with two
Adam optimisers (groups ``lnet`` and ``snet``, I-55) and alternating updates in each iteration
(:meth:`LSNet.training_step`): (1) update L-Net with L_L; (2) run L-Net again, pick one of the
top-3 keypoints per image at random (I-54, global torch RNG — the trainer checkpoints it), build
θ from its regressed box, warp image and label (bilinear, > 0.5; I-47), segment the RoI with
S-Net and update both networks with L_S (focal + 0.2 · Dice), S-Net with the full gradient,
L-Net with it scaled by γ = ``grad_decay`` (I-49). Phase (2) re-runs L-Net's forward instead
of reusing phase (1)'s: phase (1)'s backward freed its graph, L-Net's weights changed in its
step (the paper locates the RoI with the just-updated L-Net), and under DDP every backward must
follow its own forward through the wrapped model (``StepContext.step``). Phase (2) steps L-Net's
own Adam: Adam's per-parameter normalisation keeps its γ-scaled step small next to phase (1)'s
(its second moments are phase (1)'s), but its momentum moves L-Net a second time per iteration.
Validation (region ``label_box``) predicts on the label's slices ± 20 mm, widened in-plane to the
whole canvas like the pipeline's refine crop. The predictor runs
L-Net per slice → keypoints (threshold + centroids) → RoIs (θ with the ``roi_margin``) → S-Net →
softmax → inverse warp (θ⁻¹ with ε) → foreground classes merged by max over the RoIs of a slice,
background = 1 − their sum → (C, Z, Y, X). In the pipeline it localises (whole body, the same
largest-component + 15 mm rule) and refines (its ``context_mm`` is the whole canvas in-plane, so
the refine crop gives it whole slices over the box's z-range, as in training).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np

from ..errors import ConfigError
from . import register
from .base import Logs, Method, Runtime, StepContext, param

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from ..data import DataRecipe, PreparedCase

MULTIPLE = 32  # L-Net pools five times


@dataclass(frozen=True)
class LNetConfig:
    """L-Net settings (defaults: METHODS.md §4 and §6.5; spacing and slab: the stage-1 localizer's)."""

    spacing_mm: float = param(4.0, "isotropic resampling spacing (mm); 4 mm as the stage-1 localizer")
    slab: int = param(5, "adjacent axial slices per input (odd)")
    canvas: int = param(128, "training slices are placed on canvas x canvas pixels (multiple of 32)")
    per_case: int = param(200, "training slices per case per epoch")
    fg_fraction: float = param(0.5, "fraction of training slices that hold the label")
    augment: bool = param(True, "random placement on the canvas, left-right flips, ±10% intensity jitter")
    lnet_base: int = param(16, "L-Net encoder base width (widths base x 1,2,4,8,8,8)")
    head_channels: int = param(64, "width of the keypoint and box heads (I-45: 64)")
    heatmap_sigma: float = param(2.0, "Gaussian sigma of the keypoint heatmap, feature cells (I-44)")
    box_delta: float = param(0.5, "box loss on cells whose target heatmap exceeds delta")
    dice_weight: float = param(0.2, "weight of the Dice term next to the focal loss")
    focal_gamma: float = param(2.0, "focal loss exponent")
    heatmap_threshold: float = param(0.5, "inference: heatmap threshold for keypoints (I-56)")

    def __post_init__(self) -> None:
        for name in ("slab", "canvas", "per_case", "lnet_base", "head_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.slab % 2 == 0:
            raise ConfigError(f"slab must be odd (the centre slice is labelled), got {self.slab}.")
        if self.canvas % MULTIPLE:
            raise ConfigError(f"canvas must be a multiple of {MULTIPLE} (L-Net pools five times), got {self.canvas}.")
        if self.spacing_mm <= 0 or self.heatmap_sigma <= 0 or self.focal_gamma < 0 or self.dice_weight < 0:
            raise ConfigError("spacing_mm and heatmap_sigma must be positive, focal_gamma and dice_weight ≥ 0.")
        for name in ("fg_fraction", "box_delta", "heatmap_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")


@dataclass(frozen=True)
class LSNetConfig(LNetConfig):
    """L-SNet settings: L-Net's plus the RoI recalibration and S-Net (METHODS.md §4.3–4.6)."""

    spacing_mm: float = param(2.0, "isotropic resampling spacing (mm) of L-Net and S-Net")
    slab: int = param(3, "adjacent axial slices per input (odd)")
    canvas: int = param(256, "training slices are placed on canvas x canvas pixels (multiple of 32)")
    roi_size: int = param(128, "S-Net input: RoIs are resampled to roi_size x roi_size pixels (multiple of 8)")
    roi_margin: float = param(15.0, "border margin m around each RoI, pixels (15 in the paper)")
    grad_decay: float = param(0.1, "gamma: S-Net's gradient reaches L-Net scaled by this (I-49)")
    snet_base: int = param(32, "S-Net (UNet2D) encoder base width")
    snet_embed: int = param(32, "S-Net (UNet2D) last decoder width")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.roi_size < 8 or self.roi_size % 8:
            raise ConfigError(f"roi_size must be a positive multiple of 8, got {self.roi_size}.")
        if self.roi_margin < 0 or self.grad_decay < 0 or self.snet_base < 1 or self.snet_embed < 1:
            raise ConfigError("roi_margin and grad_decay must be ≥ 0, snet_base and snet_embed ≥ 1.")


# ---- inference helpers ----------------------------------------------------------------------------------
def _lnet_batches(lnet: "nn.Module", slab: int, image: np.ndarray, rt: Runtime
                  ) -> Iterator[tuple[int, "Tensor", np.ndarray, np.ndarray]]:
    """L-Net over every axial slice of ``image`` (Z, Y, X), ``rt.batch_size`` slabs at a time,
    padded with zeros to multiples of 32: yields (first slice, padded slabs (B, slab, Hp, Wp),
    heatmap probabilities (B, h, w), distances (B, 4, h, w)), under inference mode."""
    import torch
    import torch.nn.functional as F

    from ..sampling import whole_slices

    z, h, w = image.shape
    slabs = whole_slices(np.asarray(image, dtype=np.float32), slab)
    pad = (0, (-w) % MULTIPLE, 0, (-h) % MULTIPLE)
    for i in range(0, z, rt.batch_size):
        x = torch.from_numpy(np.array(slabs[i:i + rt.batch_size], dtype=np.float32)).to(rt.device)
        x = F.pad(x, pad)
        if rt.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            heat, dist = lnet(x)
        yield i, x, torch.sigmoid(heat.float())[:, 0].cpu().numpy(), dist.float().cpu().numpy()
        rt.progress(min(i + rt.batch_size, z) / z, f"slices {min(i + rt.batch_size, z)}/{z}")


def _slice_rois(heat: np.ndarray, dist: np.ndarray, threshold: float, stride: int) -> list[tuple[float, float, tuple]]:
    """(keypoint x, y in pixels, box (x0, y0, x1, y1)) of every keypoint of one slice (I-56)."""
    from ..learning.lsnet import inference_keypoints, keypoint_box

    out = []
    for row, col, _ in inference_keypoints(heat, threshold):
        out.append((col * stride + (stride - 1) / 2.0, row * stride + (stride - 1) / 2.0,
                    keypoint_box(row, col, dist, stride)))
    return out


def _dataset(cases: Sequence["PreparedCase"], cfg: LNetConfig, seed: int) -> "Dataset[dict[str, Tensor]]":
    from ..learning.lsnet import SliceDataset

    return SliceDataset(cases, cfg.slab, cfg.canvas, cfg.per_case, cfg.fg_fraction, cfg.augment,
                        cfg.heatmap_sigma, seed)


def _class_count(model: "nn.Module") -> int:
    return int(cast(Any, model).num_classes)


class _LNetBase:
    """Config-independent parts shared by both methods."""

    train_defaults: ClassVar[dict[str, Any]] = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "batch_size": 8}

    def dataset(self, cases: Sequence["PreparedCase"], cfg: LNetConfig, seed: int,
                unlabeled: Sequence["PreparedCase"] = ()) -> "Dataset[dict[str, Tensor]]":
        return _dataset(cases, cfg, seed)

    def _data_recipe(self, cfg: LNetConfig, region: str) -> "DataRecipe":
        from ..data import DataRecipe

        return DataRecipe(spacing_mm=cfg.spacing_mm, region=region)

    @staticmethod
    def _card(recipe: "DataRecipe", cfg: LNetConfig) -> dict[str, Any]:
        return {"spacing_mm": recipe.spacing_mm, "region": recipe.region, "slab": cfg.slab, "canvas": cfg.canvas,
                "per_case": cfg.per_case, "fg_fraction": cfg.fg_fraction, "sampling": "whole slices on a canvas"}


@register
class LNet(_LNetBase, Method[LNetConfig]):
    """L-Net alone: per-slice keypoints and boxes → the union of slice boxes → the ROI box."""

    config_cls = LNetConfig
    role = "localizer"
    description = "stage-1 L-Net: anchor-free keypoint + box per axial slice; union of slice boxes -> ROI (L-SNet §2.1)"
    presets = {"LNet": {}}

    def data_recipe(self, cfg: LNetConfig) -> "DataRecipe":
        return self._data_recipe(cfg, "body")

    def card_data(self, cfg: LNetConfig) -> dict[str, Any]:
        return self._card(self.data_recipe(cfg), cfg)

    def build(self, cfg: LNetConfig, num_classes: int = 2) -> "nn.Module":
        from ..nets.lsnet import LNet as Net

        return Net(cfg.slab, cfg.lnet_base, cfg.head_channels, num_classes)

    def loss(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: LNetConfig,
             ctx: StepContext) -> tuple["Tensor", Logs]:
        """L-Net loss (Eq. 5) on a batch of ``SliceDataset`` items."""
        from ..learning.lsnet import lnet_loss

        heat, dist = model(batch["image"])
        return lnet_loss(heat, dist, batch["heatmap"], batch["boxes"], batch["objects"], delta=cfg.box_delta,
                         dice_weight=cfg.dice_weight, focal_gamma=cfg.focal_gamma)

    def predict(self, model: "nn.Module", cfg: LNetConfig, image: np.ndarray, rt: Runtime) -> np.ndarray:
        """Per slice, the union of the keypoint boxes filled with the slice's heatmap peak (class 1)
        → (C, Z, Y, X); see the module docstring for how the pipeline turns it into a 3D box."""
        import torch

        from ..nets.lsnet import STRIDE

        z, h, w = image.shape
        out = np.zeros((_class_count(model), z, h, w), np.float32)
        out[0] = 1.0
        with torch.inference_mode():
            for i, _, heat, dist in _lnet_batches(model, cfg.slab, image, rt):
                for b in range(len(heat)):
                    rois = _slice_rois(heat[b], dist[b], cfg.heatmap_threshold, STRIDE)
                    if not rois:
                        continue
                    fill = np.zeros((h, w), bool)
                    for px, py, (x0, y0, x1, y1) in rois:
                        c0, c1 = max(int(np.ceil(x0)), 0), min(int(np.floor(x1)), w - 1)
                        r0, r1 = max(int(np.ceil(y0)), 0), min(int(np.floor(y1)), h - 1)
                        fill[r0:r1 + 1, c0:c1 + 1] = True
                        fill[min(max(int(round(py)), 0), h - 1), min(max(int(round(px)), 0), w - 1)] = True
                    peak = float(heat[b].max())
                    out[1, i + b][fill], out[0, i + b][fill] = peak, 1.0 - peak
        return out


@register
class LSNet(_LNetBase, Method[LSNetConfig]):
    """L-Net + RoI recalibration + S-Net, trained jointly with alternating updates."""

    config_cls = LSNetConfig
    role = "joint"
    description = "L-SNet: L-Net localises RoIs per slice, S-Net segments the recalibrated RoIs (trained jointly)"
    presets = {"LSNet": {}}

    def data_recipe(self, cfg: LSNetConfig) -> "DataRecipe":
        return self._data_recipe(cfg, "label_box")

    def card_data(self, cfg: LSNetConfig) -> dict[str, Any]:
        return {**self._card(self.data_recipe(cfg), cfg), "roi_size": cfg.roi_size, "roi_margin": cfg.roi_margin}

    def context_mm(self, cfg: LSNetConfig) -> tuple[float, float, float]:
        side = cfg.canvas * cfg.spacing_mm  # L-Net was trained on whole slices of this extent
        return (side, side, 0.0)

    def build(self, cfg: LSNetConfig, num_classes: int = 2) -> "nn.Module":
        from ..nets.lsnet import LSNet as Net

        return Net(cfg.slab, num_classes, cfg.lnet_base, cfg.head_channels, cfg.snet_base, cfg.snet_embed,
                   cfg.roi_size, cfg.roi_margin)

    def optimizer_groups(self, model: "nn.Module", cfg: LSNetConfig) -> dict[str, list["nn.Parameter"]]:
        """One optimiser per network (I-55): ``lnet`` and ``snet``."""
        m = cast(Any, model)
        return {"lnet": list(m.lnet.parameters()), "snet": list(m.snet.parameters())}

    def training_step(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: LSNetConfig,
                      ctx: StepContext) -> Logs:
        """(1) L-Net ← L_L; (2) L-Net forward again (see the module docstring for why), a random
        top-3 keypoint per image, θ, RoI, S-Net ← L_S and L-Net ← γ · ∂L_S."""
        from ..learning.lsnet import lnet_loss, snet_loss, training_keypoints, warp_labels

        x = batch["image"]
        heat, dist = model(x, mode="lnet")
        loss_l, parts = lnet_loss(heat, dist, batch["heatmap"], batch["boxes"], batch["objects"], delta=cfg.box_delta,
                                  dice_weight=cfg.dice_weight, focal_gamma=cfg.focal_gamma)
        ctx.step(loss_l, "lnet")
        _, _, theta, seg = model(x, mode="joint", select=training_keypoints, gamma=cfg.grad_decay)
        target = warp_labels(batch["label"], theta, cfg.roi_size, seg.shape[1])
        loss_s, seg_parts = snet_loss(seg, target, dice_weight=cfg.dice_weight, focal_gamma=cfg.focal_gamma)
        ctx.step(loss_s, ("lnet", "snet"))
        return {"loss": (loss_l + loss_s).detach(), "lnet": loss_l.detach(), "snet": loss_s.detach(), **parts,
                **seg_parts}

    def predict(self, model: "nn.Module", cfg: LSNetConfig, image: np.ndarray, rt: Runtime) -> np.ndarray:
        """L-Net per slice → RoIs → S-Net → θ⁻¹ → max over RoIs → class probabilities (C, Z, Y, X)."""
        import torch

        from ..nets.lsnet import STRIDE, merge_rois, paste_back, roi_theta

        net = cast(Any, model)
        z, h, w = image.shape
        out = np.zeros((_class_count(model), z, h, w), np.float32)
        out[0] = 1.0
        with torch.inference_mode():
            for i, x, heat, dist in _lnet_batches(net.lnet, cfg.slab, image, rt):
                owner, kps, ds = [], [], []
                for b in range(len(heat)):
                    for px, py, (x0, y0, x1, y1) in _slice_rois(heat[b], dist[b], cfg.heatmap_threshold, STRIDE):
                        owner.append(b)
                        kps.append((px, py))
                        ds.append((px - x0, x1 - px, py - y0, y1 - py))
                if not owner:
                    continue
                own = torch.tensor(owner, device=x.device)
                theta = roi_theta(torch.tensor(kps, device=x.device), torch.tensor(ds, device=x.device),
                                  x.shape[-2:], cfg.roi_margin)
                pasted = []
                for j in range(0, len(owner), rt.batch_size):
                    sl = slice(j, j + rt.batch_size)
                    with rt.autocast():
                        logits = net.segment_rois(x[own[sl]], theta[sl])
                    probs = torch.softmax(logits.float(), 1)[:, 1:]
                    pasted.append(paste_back(probs, theta[sl], x.shape[-2:]))
                fg = merge_rois(torch.cat(pasted), own, len(heat))[:, :, :h, :w]  # (B, C-1, h, w)
                bg = (1.0 - fg.sum(1, keepdim=True)).clamp(min=0.0)
                probs = torch.cat([bg, fg], 1)
                probs = probs / probs.sum(1, keepdim=True).clamp(min=1e-6)
                out[:, i:i + len(heat)] = probs.cpu().numpy().transpose(1, 0, 2, 3)
        return out
