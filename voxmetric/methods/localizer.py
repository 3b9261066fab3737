"""Stage-1 prostate localizer of MetricUNet [MU] §III-A (METHODS.md §2.3, I-10, I-11).

A conventional 2D UNet (base width 32 doubling per level, three poolings, symmetric 32-wide
decoder: ``UNet2D(in_channels=5, base=32, embed_channels=32)``) trained with cross-entropy on
5-slice slabs of the body-cropped volume downsampled to 4 mm (64×64 training patches drawn from
the whole body). At inference it runs on whole 4 mm slices; the pipeline turns the coarse mask
into the ROI box (``voxmetric.pipeline.localize``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from . import register
from .base import Logs, SlabConfig, SlabMethod, StepContext, param

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn


@dataclass(frozen=True)
class LocalizerConfig(SlabConfig):
    """Hyper-parameters of the stage-1 localizer (defaults: METHODS.md §2.3)."""

    base: int = param(32, "encoder base width ('filter number 32', I-11)")
    embed_channels: int = param(32, "width of the last decoder block (symmetric decoder: 32)")
    spacing_mm: float = param(4.0, "isotropic resampling spacing (mm); 1 mm / 4 (I-10)")
    slab: int = param(5, "adjacent axial slices per input (odd)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("base", "embed_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")


@register
class Localizer(SlabMethod[LocalizerConfig]):
    """Coarse whole-body prostate mask at 4 mm; its largest component gives the ROI."""

    config_cls = LocalizerConfig
    role = "localizer"
    description = "stage-1 2.5D UNet on 4 mm slabs of 5 slices; coarse mask -> ROI box (He et al. §III-A)"
    presets = {"Localizer": {}}
    region = "body"
    pad_multiple = 8  # three poolings

    def build(self, cfg: LocalizerConfig, num_classes: int = 2) -> "nn.Module":
        from ..nets import build_network

        return build_network("unet2d", in_channels=cfg.slab, num_classes=num_classes, base=cfg.base,
                             embed_channels=cfg.embed_channels)

    def loss(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: LocalizerConfig,
             ctx: StepContext) -> tuple["Tensor", Logs]:
        """Cross-entropy on {"image": (B,slab,P,P), "label": (B,P,P) int64}."""
        import torch.nn.functional as F

        logits, _ = model(batch["image"])
        ce = F.cross_entropy(logits.float(), batch["label"])
        return ce, {"ce": ce.detach()}
