"""MetricUNet [MU] and its Table II ablations (METHODS.md §2.4–2.7) as presets of one config.

Loss (Eqs. 3–4): ``L = CE + λ Σ_{t ∈ strategies} L_metric^t`` on the conv6d embedding; the
"-Sep" variant feeds ``conv6d.detach()`` to the head (``detach_embedding``). Role: refiner
(stage 2) on 1 mm, 3-slice slabs, 64² training patches, 500 per case, inside the label's box.
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

STRATEGIES = ("R", "H", "C")
BACKBONES = ("unet2d", "unetpp2d")
_CE_ONLY: dict[str, Any] = {"strategies": (), "pair_term": False}


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class MetricUNetConfig:
    """Hyper-parameters of MetricUNet (defaults: the final model, MetricUNet-HCP)."""

    backbone: str = _f("unet2d", "network: unet2d (Table I) or unetpp2d (UNet++)")
    strategies: tuple[str, ...] = _f(("H", "C"), "voxel sampling strategies, any of R,H,C (empty = plain CE)")
    pair_term: bool = _f(True, "add the positive-pair term (the 'P' configurations)")
    detach_embedding: bool = _f(False, "'-Sep': the head sees conv6d.detach(); the body learns from the metric loss only")
    k: int = _f(20, "anchors per image")
    m: int = _f(1, "same-label and opposite-label samples per anchor")
    sigma: float = _f(0.7, "triplet margin σ")
    eps: float = _f(0.01, "largest allowed positive-pair distance ε")
    beta: float = _f(0.1, "weight β of the positive-pair term (used when pair_term is on)")
    lam: float = _f(0.01, "weight λ of the metric loss")
    tau: float = _f(0.1, "H strategy: anchors are prostate voxels with |p_fg - 1| > τ")
    normalize: bool = _f(False, "L2-normalise the embedding before distances")
    base: int = _f(32, "encoder base width (32 in the paper)")
    embed_channels: int = _f(256, "width of up-block 3 / the embedding (256 in the paper)")
    spacing_mm: float = _f(1.0, "isotropic resampling spacing (mm)")
    slab: int = _f(3, "adjacent axial slices per input (odd)")
    patch: int = _f(64, "training patch size (pixels)")
    per_case: int = _f(500, "training patches per case per epoch")
    fg_fraction: float = _f(0.5, "fraction of patches centred on a prostate voxel")
    augment: bool = _f(True, "flips, ±10° rotations, ±10% intensity jitter (the paper used none, §2.2)")

    def __post_init__(self) -> None:
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies must be distinct letters from {','.join(STRATEGIES)}; got {','.join(self.strategies)}.")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"Unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}.")
        if self.detach_embedding and not self.strategies:
            raise ConfigError("detach_embedding needs at least one sampling strategy (otherwise the "
                              "network body gets no training signal); set strategies, e.g. R.")
        for name in ("k", "m", "base", "embed_channels", "slab", "patch", "per_case"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise ConfigError(f"fg_fraction must lie in [0, 1], got {self.fg_fraction}.")
        for name in ("sigma", "eps", "beta", "lam", "tau"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}.")
        if self.slab % 2 == 0:
            raise ConfigError(f"slab must be odd (the centre slice is labelled), got {self.slab}.")
        multiple = 16 if self.backbone == "unetpp2d" else 8
        if self.patch % multiple:
            raise ConfigError(f"patch must be a multiple of {multiple} for {self.backbone}, got {self.patch}.")
        if self.spacing_mm <= 0:
            raise ConfigError(f"spacing_mm must be positive, got {self.spacing_mm}.")


def _network_kwargs(cfg: MetricUNetConfig) -> dict[str, Any]:
    b = cfg.base
    if cfg.backbone == "unetpp2d":  # I-25: the embedding is the last conv of X^{0,4}
        return {"features": (b, b, 2 * b, 4 * b, 8 * b, cfg.embed_channels)}
    return {"base": b, "embed_channels": cfg.embed_channels}


@register
class MetricUNet(Method):
    """UNet / UNet++ trained with cross-entropy plus online voxel-metric learning."""

    config_cls = MetricUNetConfig
    role = "refiner"
    description = "2.5D UNet refiner with online voxel-metric learning (He et al., MedIA 2021)"
    presets = {  # Table II
        "UNet": {**_CE_ONLY},
        "UNet++": {**_CE_ONLY, "backbone": "unetpp2d"},
        "MetricUNet-R-Sep": {"strategies": ("R",), "pair_term": False, "detach_embedding": True},
        "MetricUNet-R": {"strategies": ("R",), "pair_term": False},
        "MetricUNet-H": {"strategies": ("H",), "pair_term": False},
        "MetricUNet++-H": {"strategies": ("H",), "pair_term": False, "backbone": "unetpp2d"},
        "MetricUNet-C": {"strategies": ("C",), "pair_term": False},
        "MetricUNet-HR": {"strategies": ("H", "R"), "pair_term": False},
        "MetricUNet-HC": {"strategies": ("H", "C"), "pair_term": False},
        "MetricUNet-HP": {"strategies": ("H",), "pair_term": True},
        "MetricUNet-HRP": {"strategies": ("H", "R"), "pair_term": True},
        "MetricUNet-HCP": {"strategies": ("H", "C"), "pair_term": True},
    }

    def data_recipe(self, cfg: MetricUNetConfig) -> "DataRecipe":
        from ..data import DataRecipe

        return DataRecipe(spacing_mm=cfg.spacing_mm, slab=cfg.slab, patch=cfg.patch,
                          per_case=cfg.per_case, region="label_box", fg_fraction=cfg.fg_fraction,
                          augment=cfg.augment)

    def build(self, cfg: MetricUNetConfig) -> "nn.Module":
        from ..nets import build_network

        return build_network(cfg.backbone, in_channels=cfg.slab, num_classes=2, **_network_kwargs(cfg))

    @staticmethod
    def metric_config(cfg: MetricUNetConfig) -> Any:
        """The :class:`voxmetric.learning.metric.MetricLossConfig` of ``cfg``."""
        from ..learning.metric import MetricLossConfig

        return MetricLossConfig(strategies=tuple(cfg.strategies), pair_term=cfg.pair_term, k=cfg.k, m=cfg.m,
                                sigma=cfg.sigma, eps=cfg.eps, beta=cfg.beta, lam=cfg.lam, tau=cfg.tau,
                                normalize=cfg.normalize)

    def training_step(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: MetricUNetConfig,
                      step: int) -> tuple["Tensor", dict[str, "Tensor"]]:
        """CE + λ Σ_t L_metric^t on a batch {"image": (B,slab,P,P), "label": (B,P,P) int64}.

        The metric loss runs in float32 on the conv6d embedding; anchors are drawn with the
        global torch RNG (seeded and checkpointed by the trainer)."""
        import torch
        import torch.nn.functional as F

        x, y = batch["image"], batch["label"]
        logits, emb = model(x, detach_embedding=cfg.detach_embedding)
        ce = F.cross_entropy(logits.float(), y)
        logs: dict[str, Tensor] = {"ce": ce.detach()}
        if not cfg.strategies:
            return ce, logs
        from ..learning.metric import voxel_metric_loss

        prob_fg = torch.softmax(logits.detach().float(), dim=1)[:, 1]
        metric = voxel_metric_loss(emb.float(), y, prob_fg, self.metric_config(cfg), None)
        if not metric.requires_grad:  # every pool empty: keep the graph whole (DDP needs all grads)
            metric = metric + 0.0 * emb.sum()
        logs["metric"] = metric.detach()
        return ce + cfg.lam * metric, logs

    def predict(self, model: "nn.Module", x: "Tensor") -> "Tensor":
        """Foreground probability (B,H,W) for x (B,slab,H,W); pads H, W to a multiple of 16
        with intensity 0 (I-14) and crops back."""
        import torch
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        xp = F.pad(x, (0, (-w) % 16, 0, (-h) % 16))
        logits, _ = model(xp)
        return torch.softmax(logits.float(), dim=1)[:, 1, :h, :w]
