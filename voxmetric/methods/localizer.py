"""Stage-1 prostate localizer of MetricUNet [MU] §III-A (METHODS.md §2.3, I-10, I-11).

A conventional 2D UNet (base width 32 doubling per level, three poolings, symmetric 32-wide
decoder: ``UNet2D(in_channels=5, base=32, embed_channels=32)``) trained with cross-entropy on
5-slice slabs of the body-cropped volume downsampled to 4 mm (64×64 training patches drawn from
the whole body). At inference it runs on whole 4 mm slices; the pipeline turns the coarse mask
into the ROI box (``voxmetric.pipeline.localize``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from . import register
from .base import Method

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ..data import DataRecipe


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class LocalizerConfig:
    """Hyper-parameters of the stage-1 localizer (defaults: METHODS.md §2.3)."""

    base: int = _f(32, "encoder base width ('filter number 32', I-11)")
    embed_channels: int = _f(32, "width of the last decoder block (symmetric decoder: 32)")
    spacing_mm: float = _f(4.0, "isotropic resampling spacing (mm); 1 mm / 4 (I-10)")
    slab: int = _f(5, "adjacent axial slices per input (odd)")
    patch: int = _f(64, "training patch size (pixels)")
    per_case: int = _f(500, "training patches per case per epoch")
    fg_fraction: float = _f(0.5, "fraction of patches centred on a prostate voxel")
    augment: bool = _f(True, "random rotation / flips / intensity jitter of patches")

    def __post_init__(self) -> None:
        for name in ("base", "embed_channels", "slab", "patch", "per_case"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.slab % 2 == 0:
            raise ConfigError(f"slab must be odd (the centre slice is labelled), got {self.slab}.")
        if self.patch % 8:
            raise ConfigError(f"patch must be a multiple of 8, got {self.patch}.")
        if self.spacing_mm <= 0:
            raise ConfigError(f"spacing_mm must be positive, got {self.spacing_mm}.")
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise ConfigError(f"fg_fraction must lie in [0, 1], got {self.fg_fraction}.")


@register
class Localizer(Method):
    """Coarse whole-body prostate mask at 4 mm; its largest component gives the ROI."""

    config_cls = LocalizerConfig
    role = "localizer"
    description = "stage-1 2.5D UNet on 4 mm slabs of 5 slices; coarse mask -> ROI box (He et al. §III-A)"
    presets = {"Localizer": {}}

    def data_recipe(self, cfg: LocalizerConfig) -> "DataRecipe":
        from ..data import DataRecipe

        return DataRecipe(spacing_mm=cfg.spacing_mm, slab=cfg.slab, patch=cfg.patch, per_case=cfg.per_case,
                          region="body", fg_fraction=cfg.fg_fraction, augment=cfg.augment)

    def build(self, cfg: LocalizerConfig) -> "nn.Module":
        from ..nets import build_network

        return build_network("unet2d", in_channels=cfg.slab, num_classes=2, base=cfg.base,
                             embed_channels=cfg.embed_channels)

    def training_step(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: LocalizerConfig,
                      step: int) -> tuple["Tensor", dict[str, "Tensor"]]:
        """Cross-entropy on {"image": (B,slab,P,P), "label": (B,P,P) int64}."""
        import torch.nn.functional as F

        logits, _ = model(batch["image"])
        ce = F.cross_entropy(logits.float(), batch["label"])
        return ce, {"ce": ce.detach()}

    def predict(self, model: "nn.Module", x: "Tensor") -> "Tensor":
        """Foreground probability (B,H,W) for x (B,slab,H,W); H, W padded with 0 to a multiple
        of 8 and cropped back."""
        import torch
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        logits, _ = model(F.pad(x, (0, (-w) % 8, 0, (-h) % 8)))
        return torch.softmax(logits.float(), dim=1)[:, 1, :h, :w]
