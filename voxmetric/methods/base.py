"""The method plug-in contract (DESIGN.md rule 4): one class per method file, one config
dataclass per class, and named presets of that dataclass (e.g. Table II's ``MetricUNet-HCP``).

A :class:`Method` owns what differs between methods:

* its **data**: :meth:`Method.data_recipe` (how cases are prepared: spacing, training region)
  and :meth:`Method.dataset` (how training items are drawn from prepared cases: 2.5D slabs,
  3D patches or whole volumes on a fixed grid; labelled and unlabeled cases);
* its **networks**: :meth:`Method.build` (the inference network that a model package holds) and
  :meth:`Method.training_model` (that network plus training-only parts, e.g. projection heads);
* its **training step**: :meth:`Method.training_step`, given a :class:`StepContext` whose
  :meth:`StepContext.step` back-propagates a loss and steps one or several named optimisers
  (:meth:`Method.optimizer_groups`), so joint models with alternating updates fit too; most
  methods only implement :meth:`Method.loss`;
* its **predictor**: :meth:`Method.predict`, a normalised image (Z, Y, X) on the method's grid →
  class probabilities (C, Z, Y, X). The pipeline and the trainer's validation both call it;
* its **uncertainty**: :meth:`Method.uncertainty`, the same image and those probabilities → a
  review map (Z, Y, X) in [0, 1]; every method has one (default: the normalised entropy of the
  class probabilities; CRII-Net: |P_c − P_r|), used by ``segment --uncertainty-out`` and by the
  quality control of results (:mod:`voxmetric.qc`, with :attr:`Method.uncertainty_limit`).

The trainer, the pipeline, the CLI and the Slicer modules only talk to this interface; they never
branch on a method's name. Config dataclasses hold JSON-serialisable fields only (bool, int,
float, str and tuples of them) so that they round-trip through checkpoints, model cards and
command-line flags one-to-one. Method modules keep their import light (torch is imported inside
the functions that need it) so that ``voxmetric --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

import numpy as np

from ..errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor, nn
    from torch.utils.data import Dataset

    from ..data import DataRecipe, PreparedCase
    from ..runtime import Network

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}

Role = Literal["localizer", "refiner", "joint"]
Logs = dict[str, "Tensor"]
C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One config field as the CLI and the Slicer UI see it."""

    name: str
    type: Any
    default: Any
    help: str


def config_fields(config_cls: type) -> list[FieldSpec]:
    """The fields of a config dataclass with resolved types, defaults and help texts."""
    hints = typing.get_type_hints(config_cls)
    return [FieldSpec(f.name, hints[f.name], f.default, str(f.metadata.get("help", "")))
            for f in dataclasses.fields(config_cls)]


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` (possibly a command-line string) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(f"not a yes/no value: {value!r}")
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            return float(value)
        if tp is str:
            return str(value)
        if origin is tuple:
            args = typing.get_args(tp)
            item = args[0] if args else str
            if isinstance(value, str):
                parts = [p.strip() for p in value.split(",") if p.strip()]
                if value.strip().lower() in ("", "none"):
                    parts = []
            else:
                parts = list(value)
            return tuple(_coerce(p, item, name) for p in parts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Bad value for {name!r}: {exc}. Expected {getattr(tp, '__name__', tp)}.") from exc
    raise ConfigError(f"Config field {name!r} has an unsupported type {tp!r} (use bool/int/float/str/tuple).")


def param(default: Any, help: str) -> Any:
    """A config field with a default and the help text the CLI and the Slicer UI show."""
    return dataclasses.field(default=default, metadata={"help": help})


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ---- what the trainer and the pipeline hand to a method ------------------------------------------
class StepContext(Protocol):
    """Given to :meth:`Method.training_step` by the trainer."""

    iteration: int  # 0-based iteration being run
    total: int  # iterations of the whole run (schedules such as ramp-ups use iteration / total)

    def step(self, loss: "Tensor", groups: str | Sequence[str] | None = None) -> None:
        """Back-propagate ``loss`` and step the optimisers of ``groups`` (names from
        :meth:`Method.optimizer_groups`; None = all). Their gradients are zeroed first; under DDP
        the backward must follow its own forward pass through the (wrapped) model."""
        ...


@dataclass
class Runtime:
    """How :meth:`Method.predict` runs: ``device``, slices or windows per forward pass, bf16
    autocast (CPU; CUDA always uses AMP), a progress callback ``(fraction 0..1, message)`` and
    ``network``: a compiled forward pass of the stage's model (e.g. a verified ONNX Runtime
    session, :mod:`voxmetric.runtime`) that replaces it; then ``device`` may be a
    :class:`voxmetric.runtime.CpuDevice` (torch not loaded) and the model None."""

    device: "torch.device"
    batch_size: int = 16
    bf16: bool = False
    progress: Callable[[float, str], None] = field(default=lambda fraction, message: None)
    network: "Network | None" = None

    def autocast(self) -> Any:
        """The autocast context for a forward pass on :attr:`device`."""
        import torch

        cuda = self.device.type == "cuda"
        dtype = torch.bfloat16 if (not cuda or torch.cuda.is_bf16_supported()) else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=cuda or self.bf16)

    def network_of(self, method: "Method[Any]", model: "nn.Module | None") -> "Network":
        """``x (numpy) -> method.forward output (numpy)``: :attr:`network` when set, else the torch
        ``model`` on :attr:`device` (fp32, or this runtime's autocast)."""
        if self.network is not None:
            return self.network
        if model is None:
            raise ConfigError(f"{method!r} was given neither a torch model nor a compiled network to predict with.")
        from ..runtime import TorchNetwork

        return TorchNetwork(lambda x: method.forward(model, x), self.device, self.autocast)


# ---- the contract ----------------------------------------------------------------------------------
class Method(ABC, Generic[C]):
    """A trainable method selected by a preset ``name``.

    Subclasses set ``config_cls`` (a frozen dataclass), ``presets`` (name → field overrides;
    ``{}`` = the dataclass defaults), ``role``, ``description`` and, optionally,
    ``train_defaults`` (TrainConfig fields such as ``optimizer``, ``lr``, ``batch_size`` that
    suit the method) and ``uses_unlabeled`` (the method can learn from unlabeled cases).
    """

    config_cls: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    role: ClassVar[Role] = "refiner"
    description: ClassVar[str] = ""
    train_defaults: ClassVar[dict[str, Any]] = {}
    uses_unlabeled: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        if name not in self.presets:
            raise ConfigError(f"{type(self).__name__} has no preset {name!r}; presets: {', '.join(self.presets)}.")
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ---- configuration -------------------------------------------------------------------------
    def default_config(self) -> C:
        """The config of this preset (dataclass defaults + the preset's overrides)."""
        return self.config_cls(**self.presets[self.name])

    def make_config(self, overrides: Mapping[str, Any] | None = None, base: C | None = None) -> C:
        """``base`` (default: this preset) with ``overrides`` applied. Values may be strings
        as typed on a command line (``"H,C"``, ``"true"``, ``"0.7"``). ConfigError on an
        unknown field (the message lists the valid ones) or a bad value."""
        cfg = self.default_config() if base is None else base
        specs = {s.name: s for s in config_fields(self.config_cls)}
        changes = {}
        for key, value in (overrides or {}).items():
            name = key.replace("-", "_")
            if name not in specs:
                raise ConfigError(
                    f"Method {self.name!r} has no setting {key!r}. Its settings are: "
                    f"{', '.join(specs)}.")
            changes[name] = _coerce(value, specs[name].type, name)
        return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]

    def config_to_dict(self, cfg: C) -> dict[str, Any]:
        """JSON-ready dict of a config (tuples become lists)."""
        return {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]

    def config_from_dict(self, data: Mapping[str, Any]) -> C:
        """Inverse of :meth:`config_to_dict`; fields absent from ``data`` keep their defaults."""
        return self.make_config(data, base=self.config_cls())

    def config_flags(self, cfg: C) -> dict[str, Any]:
        """Fields of ``cfg`` that differ from this preset (what a user changed)."""
        ref = self.default_config()
        return {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)  # type: ignore[arg-type]
                if getattr(cfg, f.name) != getattr(ref, f.name)}

    # ---- data ------------------------------------------------------------------------------------
    @abstractmethod
    def data_recipe(self, cfg: C) -> "DataRecipe":
        """How cases are prepared (spacing, training region, normalisation) for this method."""

    @abstractmethod
    def dataset(self, cases: Sequence["PreparedCase"], cfg: C, seed: int,
                unlabeled: Sequence["PreparedCase"] = ()) -> "Dataset[dict[str, Tensor]]":
        """Training items drawn from prepared ``cases`` (and ``unlabeled`` ones when
        :attr:`uses_unlabeled`). Item ``g`` (any ``g`` ≥ 0; ``len`` = items per epoch) must be a
        pure function of ``(seed, g)`` so that resumed runs draw the same items."""

    def card_data(self, cfg: C) -> dict[str, Any]:
        """The model card's ``data`` block (spacing, sampling); the recipe's fields by default."""
        recipe = self.data_recipe(cfg)
        return {k: _jsonable(v) for k, v in dataclasses.asdict(recipe).items()}

    # ---- networks --------------------------------------------------------------------------------
    @abstractmethod
    def build(self, cfg: C, num_classes: int = 2) -> "nn.Module":
        """A freshly initialised inference network for ``num_classes`` classes (background
        included); its ``state_dict`` is what a model package stores."""

    def training_model(self, cfg: C, net: "nn.Module") -> "nn.Module":
        """``net`` plus the parts used only while training (e.g. projection heads); trained and
        checkpointed, never packaged. Default: ``net`` itself."""
        return net

    def inference_net(self, model: "nn.Module") -> "nn.Module":
        """The inference network inside a :meth:`training_model` (the inverse of wrapping)."""
        return getattr(model, "net", model)

    def optimizer_groups(self, model: "nn.Module", cfg: C) -> dict[str, list["nn.Parameter"]]:
        """Named parameter groups, one optimiser (and learning-rate schedule) each. Default: one
        group ``"main"`` with every trainable parameter of the training model."""
        return {"main": [p for p in model.parameters() if p.requires_grad]}

    # ---- training --------------------------------------------------------------------------------
    def loss(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: C,
             ctx: StepContext) -> tuple["Tensor", Logs]:
        """The training objective of a single-objective method: (scalar loss, detached parts
        for logging). ``batch`` holds the dataset's keys, batched, on the model's device."""
        raise NotImplementedError(f"{type(self).__name__} implements neither loss() nor training_step().")

    def training_step(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: C,
                      ctx: StepContext) -> Logs:
        """One training iteration; returns detached logs including ``"loss"``. Default: one
        :meth:`loss`, one ``ctx.step`` over every optimiser. Joint models override this and call
        ``ctx.step`` several times (alternating updates)."""
        loss, logs = self.loss(model, batch, cfg, ctx)
        ctx.step(loss)
        return {"loss": loss.detach(), **logs}

    # ---- inference -------------------------------------------------------------------------------
    @abstractmethod
    def predict(self, model: "nn.Module", cfg: C, image: np.ndarray, rt: Runtime) -> np.ndarray:
        """Class probabilities float32 (C, Z, Y, X) of a normalised image float32 (Z, Y, X) on the
        method's grid (``data_recipe(cfg).spacing_mm``), the model in eval mode on ``rt.device``.
        The pipeline and validation both call this. A method whose :meth:`onnx_example` is not
        None runs its network through ``rt.network_of(self, model)`` (numpy in, numpy out), so the
        pipeline can hand it a compiled network (``rt.network``) and ``model`` None."""

    def forward(self, model: "nn.Module", x: "Tensor") -> "Tensor":
        """The one network call :meth:`predict` makes: input (B, C_in, *S) → output (B, K, *S)
        (logits). It is what an exported ONNX graph computes. Default: ``model(x)``."""
        return model(x)

    def onnx_example(self, cfg: C) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(example input shape, axes that vary) when :meth:`forward` can be exported to ONNX and
        :meth:`predict` runs it through ``rt.network_of``; None (the default) when the predictor
        needs torch operations — the pipeline then keeps the torch runtime."""
        return None

    def context_mm(self, cfg: C) -> tuple[float, float, float]:
        """Smallest (x, y, z) extent in mm of an image :meth:`predict` is given (the pipeline widens
        a smaller ROI crop to this much context). Default: no minimum."""
        return (0.0, 0.0, 0.0)

    #: What :meth:`uncertainty` measures, in words (model cards, ``segment`` summaries).
    uncertainty_kind: ClassVar[str] = "normalised entropy of the class probabilities"
    #: Quality control flags a segment whose mean :meth:`uncertainty` exceeds this (``voxmetric.qc``).
    #: Entropy 0.8 ≈ a mean foreground probability below about 0.75 inside the segment.
    uncertainty_limit: ClassVar[float] = 0.8

    def uncertainty(self, model: "nn.Module | None", cfg: C, image: np.ndarray, rt: Runtime,
                    probs: np.ndarray) -> np.ndarray:
        """A voxel-wise uncertainty map float32 (Z, Y, X) in [0, 1] (0 = certain) for a review of
        the result, given the image and the class probabilities (C, Z, Y, X) that :meth:`predict`
        just returned for it. Default (every method): the normalised entropy
        −Σ_c p_c log p_c / log C — 0 where one class has probability 1, 1 where all C classes are
        equally likely. Methods with a better signal override it (CRII-Net: |P_c − P_r|). ``model``
        is None when the predictor ran a compiled network (:attr:`Runtime.network`)."""
        return normalised_entropy(probs)


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """−Σ_c p_c log p_c / log C of class probabilities (C, *S) → float32 (*S) in [0, 1]
    (0 for a single class), computed one slice of the first spatial axis at a time."""
    p = np.asarray(probs)
    c = p.shape[0]
    out = np.zeros(p.shape[1:], np.float32)
    if c < 2:
        return out
    for i in range(p.shape[1]):
        q = np.clip(p[:, i].astype(np.float32), 1e-12, 1.0)
        out[i] = -(q * np.log(q)).sum(0) / np.float32(np.log(c))
    return np.clip(out, 0.0, 1.0)


# ---- 2.5D slab methods -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SlabConfig:
    """The data settings every 2.5D slab method shares (they make its :class:`DataRecipe`)."""

    spacing_mm: float = param(1.0, "isotropic resampling spacing (mm)")
    slab: int = param(3, "adjacent axial slices per input (odd)")
    patch: int = param(64, "training patch size (pixels)")
    per_case: int = param(500, "training patches per case per epoch")
    fg_fraction: float = param(0.5, "fraction of patches centred on a labelled voxel")
    augment: bool = param(True, "flips, ±10° rotations, ±10% intensity jitter of patches")
    fov_cut: float = param(0.0, "probability that a patch's field of view is cut, up to the gland's middle")
    gamma: float = param(0.0, "per-patch gamma curve, ln γ uniform in ±gamma (0: off; 0.7: γ 0.5–2)")

    def __post_init__(self) -> None:
        for name in ("slab", "patch", "per_case"):
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
        if not 0.0 <= self.fov_cut <= 1.0:
            raise ConfigError(f"fov_cut must lie in [0, 1], got {self.fov_cut}.")
        if not 0.0 <= self.gamma <= 2.0:
            raise ConfigError(f"gamma must lie in [0, 2], got {self.gamma}.")


S = TypeVar("S", bound=SlabConfig)


class SlabMethod(Method[S]):
    """A method whose network maps slabs (B, slab, H, W) to ``(logits (B, C, H, W), embedding)``;
    training items are 2.5D slab patches, inference runs every axial slice with its neighbours.
    ``region`` says where training patches are drawn ("label_box" stage 2, "body" stage 1)."""

    region: ClassVar[str] = "label_box"
    pad_multiple: ClassVar[int] = 16  # the network's input size must be a multiple of this

    def data_recipe(self, cfg: S) -> "DataRecipe":
        from ..data import DataRecipe

        return DataRecipe(spacing_mm=cfg.spacing_mm, region=self.region)

    def dataset(self, cases: Sequence["PreparedCase"], cfg: S, seed: int,
                unlabeled: Sequence["PreparedCase"] = ()) -> "Dataset[dict[str, Tensor]]":
        from ..sampling import PatchDataset, PatchSampling

        return PatchDataset(cases, self.data_recipe(cfg), PatchSampling(
            depth=cfg.slab, size=cfg.patch, per_case=cfg.per_case, fg_fraction=cfg.fg_fraction,
            augment=cfg.augment, centre_label=True, fov_cut=cfg.fov_cut, gamma=cfg.gamma), seed=seed)

    def card_data(self, cfg: S) -> dict[str, Any]:
        r = self.data_recipe(cfg)
        return {"spacing_mm": r.spacing_mm, "region": r.region, "margin_mm": list(r.margin_mm), "slab": cfg.slab,
                "patch": cfg.patch, "per_case": cfg.per_case, "fg_fraction": cfg.fg_fraction}

    def context_mm(self, cfg: S) -> tuple[float, float, float]:
        side = cfg.patch * cfg.spacing_mm  # the network never saw slices smaller than a patch
        return (side, side, 0.0)

    def logits(self, model: "nn.Module", x: "Tensor") -> "Tensor":
        """Logits (B, C, H, W) of slabs x (B, slab, H, W) of any H, W: padded with intensity 0
        (I-14) to a multiple of ``pad_multiple`` and cropped back."""
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        n = self.pad_multiple
        out = self.forward(model, F.pad(x, (0, (-w) % n, 0, (-h) % n)))
        return out[:, :, :h, :w]

    def forward(self, model: "nn.Module", x: "Tensor") -> "Tensor":
        """Logits (B, C, H, W) of slabs (B, slab, H, W), H and W multiples of ``pad_multiple``."""
        return model(x)[0]

    def onnx_example(self, cfg: S) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        return (1, cfg.slab, cfg.patch, cfg.patch), (0, 2, 3)

    def predict(self, model: "nn.Module", cfg: S, image: np.ndarray, rt: Runtime) -> np.ndarray:
        """Every axial slice with its ``slab`` neighbours (edge slices replicated, I-15),
        ``rt.batch_size`` slabs per forward pass, padded with intensity 0 (I-14) to a multiple of
        ``pad_multiple``; softmax over classes → (C, Z, Y, X)."""
        from ..runtime import softmax

        net = rt.network_of(self, model)
        a = np.asarray(image, dtype=np.float32)
        if a.ndim != 3 or a.size == 0:
            raise InputError(f"The image to segment has no slices (shape {tuple(a.shape)}); give a 3D volume.")
        z, h, w = a.shape
        n, half = self.pad_multiple, cfg.slab // 2
        # padded copy once: slices edge-replicated along z, zeros to a multiple of n in-plane
        padded = np.zeros((z + 2 * half, h + (-h) % n, w + (-w) % n), np.float32)
        padded[half:half + z, :h, :w] = a
        padded[:half, :h, :w] = a[:1]
        padded[half + z:, :h, :w] = a[-1:]
        out: np.ndarray | None = None
        for i in range(0, z, rt.batch_size):
            j = min(i + rt.batch_size, z)
            x = np.lib.stride_tricks.sliding_window_view(padded[i:j + 2 * half], cfg.slab, axis=0)  # (b, H, W, slab)
            p = softmax(net(np.ascontiguousarray(np.moveaxis(x, -1, 1))))[:, :, :h, :w]
            if out is None:
                out = np.empty((p.shape[1], *a.shape), np.float32)
            out[:, i:j] = p.transpose(1, 0, 2, 3)
            rt.progress(j / z, f"slices {j}/{z}")
        assert out is not None  # internal invariant: z > 0 was checked above
        return out
