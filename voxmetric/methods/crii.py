"""CRII-Net: semi-supervised coarse-refined segmentation with intra- and inter-patch ranked losses
([CR]; METHODS.md §5 D-1 … D-10 — design choices, the paper gives only its abstract).

Network (D-1, D-2; :class:`voxmetric.nets.crii.CRIINet`): the product's stage-2 backbone — the
2.5D UNet of Table I (``backbone="unet2d"``, 3-slice slabs) or the 3D U-Net (``"unet3d"``, 3D
patches) — with a coarse head on the 1/4-resolution decoder features and a refined head on the
last decoder features ‖ P_c. Inference uses P_r (D-9); the packaged network keeps the coarse
head so that :meth:`CRII.uncertainty` can give ½ Σ_c |P_c − P_r| (for two classes |P_c − P_r| of
the foreground) as the review map.

Loss (D-7, :mod:`voxmetric.learning.crii`): L = L_sup + λ_intra · L_intra + λ_inter · L_inter
+ λ_cons(t) · L_cons. L_sup and the ranked losses use the labelled half of the batch, L_cons every
patch (D-4), with the ramp-up read from ``ctx.iteration / ctx.total``.

Data (D-8): each training item is a labelled patch plus an unlabeled one
(:class:`voxmetric.sampling.PairedDataset`), so a batch of ``batch_size`` items holds as many
labelled as unlabeled patches; without unlabeled cases the items are labelled patches alone and
the consistency term still acts on them. Labelled patches come from ``region``: "label_box" (the
labels' box + 10–30 mm, stage 2 behind a localizer) or "body" (the whole body-cropped case; such
a model needs no localizer: the pipeline gives it the body as its ROI). **Unlabeled cases have no
label box**: their patches are drawn from the whole prepared case, i.e. the body crop that data
preparation makes (METHODS.md §2.2) — a whole-volume recipe that needs no installed localizer
and keeps every item a pure function of (seed, index). ``cons_weight = 0`` (and no unlabeled
cases) is the supervised-only ablation with the same backbone, heads and ranked losses.

SGD, lr 0.01, momentum 0.9, weight decay 1e-4, poly decay (D-8) are its training defaults; the
default batch is 15 items = 15 labelled + 15 unlabeled slabs (the 30 of MetricUNet). 3D users
should pass a small ``--batch-size`` (e.g. 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import ConfigError
from . import register
from .base import Logs, Runtime, SlabConfig, SlabMethod, StepContext, param

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from ..data import DataRecipe, PreparedCase

BACKBONES = ("unet2d", "unet3d")
REGIONS = ("label_box", "body")
PAPER_3D = (32, 64, 128, 256, 320)  # nets.unet3d.PAPER_WIDTHS (kept here: importing nets pulls in torch)
SMALL_3D = (8, 16, 32, 64, 64)


@dataclass(frozen=True)
class CRIIConfig(SlabConfig):
    """Hyper-parameters of CRII-Net (defaults: METHODS.md §5 and §6.5)."""

    backbone: str = param("unet2d", "shared backbone: unet2d (2.5D slabs, Table I) or unet3d (3D patches)")
    base: int = param(32, "unet2d: encoder base width (32 in Table I)")
    embed_channels: int = param(256, "unet2d: width of the last decoder block (256 in Table I)")
    widths: tuple[int, ...] = param(PAPER_3D, "unet3d: channels per U-Net level (at least 4 levels)")
    depth: int = param(32, "unet3d: training patch / inference window depth in z voxels (in-plane: patch)")
    overlap: float = param(0.25, "unet3d: sliding-window overlap at inference")
    head_channels: int = param(64, "width of the refined head's 3x3 conv-BN-ReLU")
    region: str = param("label_box", "labelled patches from: label_box (labels' box + margin, needs a localizer) "
                                     "or body (whole body; the pipeline uses the body as ROI)")
    coarse_weight: float = param(0.5, "weight of (CE + Dice) on the coarse output (D-3)")
    cons_weight: float = param(0.1, "consistency weight after the ramp-up (D-4; 0 = supervised only)")
    rampup: float = param(0.4, "ramp-up length as a fraction of the iterations (D-4)")
    temperature: float = param(0.5, "sharpening temperature of the consistency target (D-4)")
    lam_intra: float = param(0.1, "weight of the intra-patch ranked loss (D-5)")
    lam_inter: float = param(0.1, "weight of the inter-patch ranked loss (D-6)")
    k: int = param(30, "ranked losses: hardest pixels (D-5) and cells (D-6) per side")
    margin: float = param(0.3, "ranked losses: hinge margin")
    band: int = param(3, "intra-patch loss: boundary band half-width (voxels)")
    grid: int = param(8, "inter-patch loss: cells per patch axis")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backbone not in BACKBONES:
            raise ConfigError(f"Unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}.")
        if self.region not in REGIONS:
            raise ConfigError(f"region must be one of {', '.join(REGIONS)}, got {self.region!r}.")
        for name in ("base", "embed_channels", "head_channels", "k", "band", "grid", "depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("coarse_weight", "cons_weight", "lam_intra", "lam_inter", "margin"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}.")
        if not 0 <= self.rampup <= 1 or self.temperature <= 0 or not 0 <= self.overlap < 1:
            raise ConfigError("rampup must lie in [0, 1], temperature be positive and overlap lie in [0, 1).")
        if self.backbone == "unet3d":
            if len(self.widths) < 4 or min(self.widths) < 1:
                raise ConfigError(f"unet3d needs at least four positive widths (a decoder block at 1/4 "
                                  f"resolution), got {self.widths}.")
            multiple = 2 ** (len(self.widths) - 1)
            if self.patch % multiple or self.depth % multiple:
                raise ConfigError(f"unet3d with {len(self.widths)} levels needs patch and depth multiples of "
                                  f"{multiple}, got patch {self.patch}, depth {self.depth}.")

    @property
    def is_3d(self) -> bool:
        return self.backbone == "unet3d"

    def ranked(self) -> Any:
        from ..learning.crii import RankedConfig

        return RankedConfig(self.k, self.margin, self.band, self.grid)


@register
class CRII(SlabMethod[CRIIConfig]):
    """Coarse-refined network trained on labelled and unlabeled cases (CRII-Net design, D-1 … D-9)."""

    config_cls = CRIIConfig
    role = "refiner"
    description = ("semi-supervised coarse-refined network with intra/inter-patch ranked losses; learns from "
                   "unlabeled scans too (CRII-Net, Du et al., JBHI; design from the abstract)")
    presets = {
        "CRII": {},
        "CRII-3D": {"backbone": "unet3d", "patch": 96},
        "CRII-small": {"base": 8, "embed_channels": 32, "head_channels": 16},
        "CRII-3D-small": {"backbone": "unet3d", "widths": SMALL_3D, "patch": 64, "head_channels": 16},
    }
    train_defaults = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 15}
    uses_unlabeled = True
    uncertainty_kind = "coarse-refined disagreement: half the sum over classes of |P_c - P_r| (D-9)"
    #: QC flags a mean disagreement above this inside the segment. bench_crii.py: 0.02–0.10 on held-out
    #: phantoms and real MR with Dice 0.33–0.79, 0.19 on the one failure (Dice 0, MR).
    uncertainty_limit = 0.15
    pad_multiple: ClassVar[int] = 8

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._coarse: tuple[np.ndarray, np.ndarray] | None = None  # (P_r returned by predict, its P_c)

    # ---- data ------------------------------------------------------------------------------------
    def data_recipe(self, cfg: CRIIConfig) -> "DataRecipe":
        from ..data import DataRecipe

        return DataRecipe(spacing_mm=cfg.spacing_mm, region=cfg.region)

    def _sampling(self, cfg: CRIIConfig, fg_fraction: float) -> Any:
        from ..sampling import PatchSampling

        depth = cfg.depth if cfg.is_3d else cfg.slab
        return PatchSampling(depth=depth, size=cfg.patch, per_case=cfg.per_case, fg_fraction=fg_fraction,
                             augment=cfg.augment, centre_label=not cfg.is_3d, fov_cut=cfg.fov_cut,
                             gamma=cfg.gamma)

    def dataset(self, cases: Sequence["PreparedCase"], cfg: CRIIConfig, seed: int,
                unlabeled: Sequence["PreparedCase"] = ()) -> "Dataset[dict[str, Tensor]]":
        """Labelled patches from ``region``; with ``unlabeled`` cases each item also holds an
        unlabeled patch (keys ``u_image``) from the whole body-cropped case (seed + 1)."""
        from ..data import DataRecipe
        from ..sampling import PairedDataset, PatchDataset

        labelled = PatchDataset(cases, self.data_recipe(cfg), self._sampling(cfg, cfg.fg_fraction), seed=seed)
        if not unlabeled:
            return labelled
        if cfg.cons_weight == 0:
            raise ConfigError("cons_weight is 0, so unlabeled cases would not be used; set cons_weight > 0 "
                              "(default 0.1) or leave the unlabeled cases out.")
        whole = DataRecipe(spacing_mm=cfg.spacing_mm, region="body")
        return PairedDataset(labelled, PatchDataset(unlabeled, whole, self._sampling(cfg, 0.0), seed=seed + 1))

    def card_data(self, cfg: CRIIConfig) -> dict[str, Any]:
        r = self.data_recipe(cfg)
        shape = {"patch": [cfg.depth, cfg.patch, cfg.patch]} if cfg.is_3d else {"slab": cfg.slab, "patch": cfg.patch}
        return {"spacing_mm": r.spacing_mm, "region": r.region, "margin_mm": list(r.margin_mm), **shape,
                "per_case": cfg.per_case, "fg_fraction": cfg.fg_fraction, "unlabeled_region": "body"}

    def context_mm(self, cfg: CRIIConfig) -> tuple[float, float, float]:
        side = cfg.patch * cfg.spacing_mm
        return (side, side, cfg.depth * cfg.spacing_mm if cfg.is_3d else 0.0)

    # ---- network ---------------------------------------------------------------------------------
    def build(self, cfg: CRIIConfig, num_classes: int = 2) -> "nn.Module":
        from ..nets import build_network
        from ..nets.crii import CRIINet

        if cfg.is_3d:
            backbone = build_network("unet3d", in_channels=1, num_classes=num_classes, widths=cfg.widths)
        else:
            backbone = build_network("unet2d", in_channels=cfg.slab, num_classes=num_classes, base=cfg.base,
                                     embed_channels=cfg.embed_channels)
        return CRIINet(backbone, num_classes, cfg.head_channels)

    # ---- training --------------------------------------------------------------------------------
    def loss(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: CRIIConfig,
             ctx: StepContext) -> tuple["Tensor", Logs]:
        """D-7 on {"image", "label"} (labelled) and optionally "u_image" (unlabeled), both halves in
        one forward pass (shared BatchNorm statistics)."""
        import torch

        from ..learning.crii import consistency_loss, rampup_weight, ranked_losses, supervised_loss

        x, y = batch["image"], batch["label"]
        n = x.shape[0]
        both = torch.cat([x, batch["u_image"]]) if "u_image" in batch else x
        logits_r, logits_c = model(both)
        sup, logs = supervised_loss(logits_r[:n], logits_c[:n], y, cfg.coarse_weight)
        p_r, p_c = torch.softmax(logits_r.float(), 1), torch.softmax(logits_c.float(), 1)
        intra, inter = ranked_losses(p_r[:n], y, cfg.ranked())
        weight = rampup_weight(ctx.iteration, ctx.total, cfg.cons_weight, cfg.rampup)
        cons = consistency_loss(p_c, p_r, cfg.temperature)
        loss = sup + cfg.lam_intra * intra + cfg.lam_inter * inter + weight * cons
        logs.update(intra=intra.detach(), inter=inter.detach(), cons=cons.detach(),
                    w_cons=torch.tensor(weight, device=loss.device))
        return loss, logs

    # ---- inference -------------------------------------------------------------------------------
    def _both(self, model: "nn.Module", cfg: CRIIConfig, image: np.ndarray, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
        """(P_r, P_c), each float32 (C, Z, Y, X): every axial slab (2D) or Gaussian-blended sliding
        windows (3D), softmax over classes."""
        import torch
        import torch.nn.functional as F

        image = np.asarray(image, dtype=np.float32)
        if cfg.is_3d:
            from monai.inferers.utils import sliding_window_inference

            def net(window: "Tensor") -> "Tensor":
                r, c = model(window)
                return torch.cat([torch.softmax(r.float(), 1), torch.softmax(c.float(), 1)], 1)

            x = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(rt.device)
            with torch.inference_mode(), rt.autocast():
                rt.progress(0.0, "sliding windows")
                out = sliding_window_inference(x, (cfg.depth, cfg.patch, cfg.patch), rt.batch_size, net,
                                               overlap=cfg.overlap, mode="gaussian", padding_mode="constant", cval=0.0)
                rt.progress(1.0, "done")
            both = torch.as_tensor(out)[0].float().cpu().numpy()
            c = both.shape[0] // 2
            return both[:c], both[c:]
        from ..sampling import whole_slices

        z = image.shape[0]
        slabs = whole_slices(image, cfg.slab)
        h, w = image.shape[1:]
        pad = (0, (-w) % self.pad_multiple, 0, (-h) % self.pad_multiple)
        out_r: np.ndarray | None = None
        out_c = out_r
        with torch.inference_mode(), rt.autocast():
            for i in range(0, z, rt.batch_size):
                x = torch.from_numpy(np.array(slabs[i:i + rt.batch_size], dtype=np.float32)).to(rt.device)
                if rt.device.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                r, c = model(F.pad(x, pad))
                pr = torch.softmax(r[:, :, :h, :w].float(), 1).cpu().numpy().transpose(1, 0, 2, 3)
                pc = torch.softmax(c[:, :, :h, :w].float(), 1).cpu().numpy().transpose(1, 0, 2, 3)
                if out_r is None or out_c is None:
                    out_r = np.empty((pr.shape[0], *image.shape), np.float32)
                    out_c = np.empty_like(out_r)
                out_r[:, i:i + rt.batch_size], out_c[:, i:i + rt.batch_size] = pr, pc
                rt.progress(min(i + rt.batch_size, z) / z, f"slices {min(i + rt.batch_size, z)}/{z}")
        assert out_r is not None and out_c is not None
        return out_r, out_c

    def onnx_example(self, cfg: CRIIConfig) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """None: the predictor runs both heads in torch (P_c for the uncertainty), never a graph."""
        return None

    def predict(self, model: "nn.Module", cfg: CRIIConfig, image: np.ndarray, rt: Runtime) -> np.ndarray:
        """P_r (D-9), float32 (C, Z, Y, X). P_c of the same pass is kept for :meth:`uncertainty`."""
        p_r, p_c = self._both(model, cfg, image, rt)
        self._coarse = (p_r, p_c)
        return p_r

    def uncertainty(self, model: "nn.Module | None", cfg: CRIIConfig, image: np.ndarray, rt: Runtime,
                    probs: np.ndarray) -> np.ndarray:
        """½ Σ_c |P_c − P_r| in [0, 1] (two classes: |P_c − P_r| of the foreground), float32
        (Z, Y, X). Uses the P_c of the :meth:`predict` call that returned ``probs`` (no second
        pass); other ``probs`` get a fresh pass for P_c."""
        kept, self._coarse = self._coarse, None
        if kept is not None and kept[0] is probs:
            p_c = kept[1]
        elif model is None:
            raise ConfigError("CRII's uncertainty needs its torch model (it never runs as a compiled graph).")
        else:
            p_c = self._both(model, cfg, image, rt)[1]
        return (0.5 * np.abs(p_c - probs).sum(0)).astype(np.float32)
