"""3D U-Net with voxel-level SimSiam representation learning ([VS], METHODS.md §3, I-27 … I-37).

Loss (Eq. 8): ``L = L_Dice + λ · L_feature`` (λ = 10, I-35) — soft Dice over every class (I-05)
and the voxel SimSiam term on the ``layers`` deepest encoder outputs (:mod:`voxmetric.learning.simsiam`);
``lam = 0`` is the plain 3D U-Net baseline (preset ``UNet3D``). The projection and prediction heads
exist only in the training model; the packaged network is the plain 3D U-Net.

Two data recipes (``mode``):

* ``"patch"`` (default; our stage-2 refiner): 3D patches (``patch`` = z, y, x voxels) at
  ``spacing_mm`` drawn inside the labels' box + 10–30 mm; inference slides the patch window over
  the ROI (MONAI ``sliding_window_inference``, Gaussian blending, overlap 0.25);
* ``"grid"`` (the paper, [VS] §3.1): the whole body-cropped case resampled to ``grid`` (z, y, x;
  64 × 128 × 128); inference resamples the image the same way and the probabilities back. Such a
  model is given the whole body as its ROI by the pipeline (``region`` "body").

Adam, lr 1e-3, weight decay 1e-5, batch 4 ([VS] §IV-B) are its training defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..errors import ConfigError
from . import register
from .base import Logs, Method, Runtime, StepContext, param

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from ..data import DataRecipe, PreparedCase

MODES = ("patch", "grid")
PAPER = (32, 64, 128, 256, 320)  # nets.unet3d.PAPER_WIDTHS (kept here: importing nets pulls in torch)
SMALL = (8, 16, 32, 64, 64)


@dataclass(frozen=True)
class VoxelSimSiamConfig:
    """Hyper-parameters of the 3D U-Net + voxel SimSiam (defaults: the paper, METHODS.md §3, §6.5)."""

    mode: str = param("patch", "data recipe: patch (3D patches in the ROI, stage 2) or grid (whole case on a fixed grid)")
    spacing_mm: float = param(1.0, "isotropic resampling spacing (mm) of the prepared cases")
    patch: tuple[int, ...] = param((32, 96, 96), "patch mode: training patch / inference window (z, y, x voxels)")
    grid: tuple[int, ...] = param((64, 128, 128), "grid mode: the fixed grid (z, y, x voxels) every case is resampled to")
    per_case: int = param(100, "patch mode: training patches per case per epoch")
    fg_fraction: float = param(0.5, "patch mode: fraction of patches centred on a labelled voxel")
    augment: bool = param(True, "flips, ±10° in-plane rotations (patch mode), ±10% intensity jitter")
    widths: tuple[int, ...] = param(PAPER, "channels per U-Net level (paper: 32,64,128,256,320 ≈ 16.5 M parameters)")
    lam: float = param(10.0, "weight λ of the voxel SimSiam term (0 = plain 3D U-Net with Dice)")
    layers: int = param(3, "deepest encoder layers that get SimSiam heads")
    hidden: int = param(64, "projection / prediction head width")
    max_features: int = param(1700, "voxel features sampled per layer and mini-batch")
    max_fn: int = param(1000, "of which at most this many false negatives")
    class_weighting: bool = param(True, "weight class c by 1 − |S_c| / Σ|S|")
    overlap: float = param(0.25, "patch mode: sliding-window overlap at inference")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        multiple = 2 ** (len(self.widths) - 1)
        for name in ("patch", "grid"):
            v = getattr(self, name)
            if len(v) != 3 or any(int(s) < multiple or int(s) % multiple for s in v):
                raise ConfigError(f"{name} must be three sizes (z, y, x), each a multiple of {multiple} "
                                  f"(2^(levels-1)), got {','.join(map(str, v))}.")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ConfigError(f"widths needs at least two positive numbers, got {self.widths}.")
        if not 1 <= self.layers <= len(self.widths):
            raise ConfigError(f"layers must lie in [1, {len(self.widths)}] (the encoder levels), got {self.layers}.")
        if self.spacing_mm <= 0 or self.per_case < 1 or self.lam < 0 or not 0 <= self.overlap < 1:
            raise ConfigError("spacing_mm must be > 0, per_case ≥ 1, lam ≥ 0 and overlap in [0, 1).")
        if not 0 <= self.fg_fraction <= 1:
            raise ConfigError(f"fg_fraction must lie in [0, 1], got {self.fg_fraction}.")

    def simsiam(self) -> Any:
        from ..learning.simsiam import SimSiamConfig

        return SimSiamConfig(self.layers, self.hidden, self.max_features, self.max_fn, self.class_weighting)


def _training_model(net: "nn.Module", cfg: VoxelSimSiamConfig) -> "nn.Module":
    from torch import nn

    from ..learning.simsiam import SimSiamHeads

    class WithHeads(nn.Module):
        """The 3D U-Net (``net``) and its training-only SimSiam heads (``heads``)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.heads = SimSiamHeads(list(cfg.widths[::-1][:cfg.layers]), cfg.hidden)

        def forward(self, x: "Tensor") -> tuple["Tensor", list["Tensor"]]:
            return self.net(x)

    return WithHeads()


@register
class VoxelSimSiam(Method[VoxelSimSiamConfig]):
    """3D U-Net refiner trained with soft Dice + λ · voxel-level SimSiam (Dice alone when λ = 0)."""

    config_cls = VoxelSimSiamConfig
    role = "refiner"
    description = "3D U-Net with voxel-level SimSiam representation learning (multi-organ, [VS])"
    presets = {
        "VoxelSimSiam": {},
        "UNet3D": {"lam": 0.0},
        "VoxelSimSiam-small": {"widths": SMALL, "patch": (32, 64, 64), "grid": (32, 64, 64)},
        "UNet3D-small": {"lam": 0.0, "widths": SMALL, "patch": (32, 64, 64), "grid": (32, 64, 64)},
    }
    train_defaults = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "batch_size": 4}

    # ---- data ----------------------------------------------------------------------------------
    def data_recipe(self, cfg: VoxelSimSiamConfig) -> "DataRecipe":
        from ..data import DataRecipe

        return DataRecipe(spacing_mm=cfg.spacing_mm, region="label_box" if cfg.mode == "patch" else "body")

    def dataset(self, cases: Sequence["PreparedCase"], cfg: VoxelSimSiamConfig, seed: int,
                unlabeled: Sequence["PreparedCase"] = ()) -> "Dataset[dict[str, Tensor]]":
        from ..sampling import GridDataset, PatchDataset, PatchSampling

        if cfg.mode == "grid":
            return GridDataset(cases, cfg.grid, cfg.augment, seed)
        depth, h, w = cfg.patch
        if h != w:
            raise ConfigError(f"patch mode needs square in-plane patches (y = x), got {cfg.patch}.")
        return PatchDataset(cases, self.data_recipe(cfg), PatchSampling(
            depth=depth, size=h, per_case=cfg.per_case, fg_fraction=cfg.fg_fraction, augment=cfg.augment,
            centre_label=False), seed=seed)

    def card_data(self, cfg: VoxelSimSiamConfig) -> dict[str, Any]:
        r = self.data_recipe(cfg)
        shape = {"patch": list(cfg.patch)} if cfg.mode == "patch" else {"grid": list(cfg.grid)}
        return {"spacing_mm": r.spacing_mm, "region": r.region, "mode": cfg.mode, **shape}

    def context_mm(self, cfg: VoxelSimSiamConfig) -> tuple[float, float, float]:
        if cfg.mode == "grid":
            return (0.0, 0.0, 0.0)
        z, y, x = (s * cfg.spacing_mm for s in cfg.patch)
        return (x, y, z)

    # ---- networks ------------------------------------------------------------------------------
    def build(self, cfg: VoxelSimSiamConfig, num_classes: int = 2) -> "nn.Module":
        from ..nets import build_network

        return build_network("unet3d", in_channels=1, num_classes=num_classes, widths=cfg.widths)

    def training_model(self, cfg: VoxelSimSiamConfig, net: "nn.Module") -> "nn.Module":
        return _training_model(net, cfg) if cfg.lam > 0 else net

    # ---- training ------------------------------------------------------------------------------
    def loss(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: VoxelSimSiamConfig,
             ctx: StepContext) -> tuple["Tensor", Logs]:
        """Soft Dice (+ λ · L_feature) on {"image": (B, 1, D, H, W), "label": (B, D, H, W) int64}."""
        import torch

        from ..learning.losses import soft_dice_loss

        logits, features = model(batch["image"])
        dice = soft_dice_loss(torch.softmax(logits.float(), 1), batch["label"])
        logs: Logs = {"dice": dice.detach()}
        if cfg.lam == 0:
            return dice, logs
        from ..learning.simsiam import SimSiamHeads, voxel_simsiam_loss

        heads = cast(SimSiamHeads, getattr(model, "module", model).heads)  # DDP wraps the training model
        feature, parts = voxel_simsiam_loss(features, heads, batch["label"], logits, cfg.simsiam())
        if not feature.requires_grad:  # nothing sampled: keep every head in the graph (DDP needs all grads)
            feature = feature + 0.0 * sum(p.sum() for p in heads.parameters())
        logs.update(feature=feature.detach(), **parts)
        return dice + cfg.lam * feature, logs

    # ---- inference -----------------------------------------------------------------------------
    def predict(self, model: "nn.Module", cfg: VoxelSimSiamConfig, image: np.ndarray, rt: Runtime) -> np.ndarray:
        """Patch mode: sliding windows of ``patch`` (zero-padded to at least one window), Gaussian
        blending; grid mode: resampled to ``grid`` and back. Softmax → (C, Z, Y, X)."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(rt.device)
        with torch.inference_mode(), rt.autocast():
            if cfg.mode == "grid":
                rt.progress(0.1, "whole volume on the grid")
                small = F.interpolate(x, size=tuple(cfg.grid), mode="trilinear", align_corners=False)
                logits = model(small)[0].float()
                probs = F.interpolate(torch.softmax(logits, 1), size=tuple(image.shape), mode="trilinear",
                                      align_corners=False)
            else:
                from monai.inferers.utils import sliding_window_inference

                done = [0]

                def net(window: "Tensor") -> "Tensor":
                    done[0] += 1
                    rt.progress(min(done[0] / max(n_windows, 1), 1.0), f"windows {done[0]}/{n_windows}")
                    return torch.softmax(model(window)[0].float(), 1)

                step = [max(1, int(p * (1 - cfg.overlap))) for p in cfg.patch]
                n_windows = int(np.prod([max(1, int(np.ceil((max(s, p) - p) / st)) + 1)
                                         for s, p, st in zip(image.shape, cfg.patch, step)]))
                n_windows = int(np.ceil(n_windows / rt.batch_size))
                probs = sliding_window_inference(x, tuple(cfg.patch), rt.batch_size, net, overlap=cfg.overlap,
                                                 mode="gaussian", padding_mode="constant", cval=0.0)
            rt.progress(1.0, "done")
        return probs[0].float().cpu().numpy()
