"""MetricUNet [MU] and its Table II ablations (METHODS.md §2.4–2.7) as presets of one config.

Loss (Eqs. 3–4): ``L = CE + λ Σ_{t ∈ strategies} L_metric^t`` on the conv6d embedding; the
"-Sep" variant feeds ``conv6d.detach()`` to the head (``detach_embedding``). Role: refiner
(stage 2) on 1 mm, 3-slice slabs, 64² training patches, 500 per case, inside the label's box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from . import register
from .base import Logs, SlabConfig, SlabMethod, StepContext, param

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

STRATEGIES = ("R", "H", "C")
BACKBONES = ("unet2d", "unetpp2d")
_CE_ONLY: dict[str, Any] = {"strategies": (), "pair_term": False}


@dataclass(frozen=True)
class MetricUNetConfig(SlabConfig):
    """Hyper-parameters of MetricUNet (defaults: the final model, MetricUNet-HCP)."""

    backbone: str = param("unet2d", "network: unet2d (Table I) or unetpp2d (UNet++)")
    strategies: tuple[str, ...] = param(("H", "C"), "voxel sampling strategies, any of R,H,C (empty = plain CE)")
    pair_term: bool = param(True, "add the positive-pair term (the 'P' configurations)")
    detach_embedding: bool = param(False, "'-Sep': the head sees conv6d.detach(); the body learns from the metric loss only")
    k: int = param(20, "anchors per image")
    m: int = param(1, "same-label and opposite-label samples per anchor")
    sigma: float = param(0.7, "triplet margin σ")
    eps: float = param(0.01, "largest allowed positive-pair distance ε")
    beta: float = param(0.1, "weight β of the positive-pair term (used when pair_term is on)")
    lam: float = param(0.01, "weight λ of the metric loss")
    tau: float = param(0.1, "H strategy: anchors are prostate voxels with |p_fg - 1| > τ")
    normalize: bool = param(False, "L2-normalise the embedding before distances")
    base: int = param(32, "encoder base width (32 in the paper)")
    embed_channels: int = param(256, "width of up-block 3 / the embedding (256 in the paper)")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies must be distinct letters from {','.join(STRATEGIES)}; got {','.join(self.strategies)}.")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"Unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}.")
        if self.detach_embedding and not self.strategies:
            raise ConfigError("detach_embedding needs at least one sampling strategy (otherwise the "
                              "network body gets no training signal); set strategies, e.g. R.")
        for name in ("k", "m", "base", "embed_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("sigma", "eps", "beta", "lam", "tau"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}.")
        multiple = 16 if self.backbone == "unetpp2d" else 8
        if self.patch % multiple:
            raise ConfigError(f"patch must be a multiple of {multiple} for {self.backbone}, got {self.patch}.")


def _network_kwargs(cfg: MetricUNetConfig) -> dict[str, Any]:
    b = cfg.base
    if cfg.backbone == "unetpp2d":  # I-25: the embedding is the last conv of X^{0,4}
        return {"features": (b, b, 2 * b, 4 * b, 8 * b, cfg.embed_channels)}
    return {"base": b, "embed_channels": cfg.embed_channels}


@register
class MetricUNet(SlabMethod[MetricUNetConfig]):
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

    def build(self, cfg: MetricUNetConfig, num_classes: int = 2) -> "nn.Module":
        from ..nets import build_network

        return build_network(cfg.backbone, in_channels=cfg.slab, num_classes=num_classes, **_network_kwargs(cfg))

    @staticmethod
    def metric_config(cfg: MetricUNetConfig) -> Any:
        """The :class:`voxmetric.learning.metric.MetricLossConfig` of ``cfg`` (its fields are a
        subset of MetricUNetConfig's, copied by name)."""
        from dataclasses import fields

        from ..learning.metric import MetricLossConfig

        return MetricLossConfig(**{f.name: getattr(cfg, f.name) for f in fields(MetricLossConfig)})

    def loss(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: MetricUNetConfig,
             ctx: StepContext) -> tuple["Tensor", Logs]:
        """CE + λ Σ_t L_metric^t on a batch {"image": (B,slab,P,P), "label": (B,P,P) int64}.

        The metric loss runs in float32 on the conv6d embedding; anchors are drawn with the
        global torch RNG (seeded and checkpointed by the trainer). With several classes the
        metric loss separates foreground (any class) from background: P = {y > 0} and ŷ =
        1 − p_background."""
        import torch
        import torch.nn.functional as F

        x, y = batch["image"], batch["label"]
        logits, emb = model(x, detach_embedding=cfg.detach_embedding)
        ce = F.cross_entropy(logits.float(), y)
        logs: Logs = {"ce": ce.detach()}
        if not cfg.strategies:
            return ce, logs
        from ..learning.metric import voxel_metric_loss

        prob_fg = 1.0 - torch.softmax(logits.detach().float(), dim=1)[:, 0]
        metric = voxel_metric_loss(emb.float(), (y > 0).long(), prob_fg, self.metric_config(cfg), None)
        if not metric.requires_grad:  # every pool empty: keep the graph whole (DDP needs all grads)
            metric = metric + 0.0 * emb.sum()
        logs["metric"] = metric.detach()
        return ce + cfg.lam * metric, logs
