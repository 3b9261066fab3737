"""The method plug-in interface (DESIGN.md rule 4): one class per method file, one config
dataclass per class, and named presets of that dataclass (e.g. Table II's ``MetricUNet-HCP``).

The trainer, the pipeline, the CLI and the Slicer module only talk to :class:`Method`; they
never branch on a method's name. Config dataclasses hold JSON-serialisable fields only (bool,
int, float, str and tuples of them) so that they round-trip through checkpoints, model cards
and command-line flags one-to-one.

Method modules keep their import light (torch is imported inside the functions that need it)
so that ``voxmetric --help`` and the flag generation of ``voxmetric train`` stay fast.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

    from ..data import DataRecipe

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


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


@dataclasses.dataclass(frozen=True)
class SlabConfig:
    """The data settings every 2.5D slab method shares (they make its :class:`DataRecipe`)."""

    spacing_mm: float = param(1.0, "isotropic resampling spacing (mm)")
    slab: int = param(3, "adjacent axial slices per input (odd)")
    patch: int = param(64, "training patch size (pixels)")
    per_case: int = param(500, "training patches per case per epoch")
    fg_fraction: float = param(0.5, "fraction of patches centred on a prostate voxel")
    augment: bool = param(True, "flips, ±10° rotations, ±10% intensity jitter of patches")

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


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class Method:
    """A trainable method: network + loss + data recipe, selected by a preset ``name``.

    Subclasses set ``config_cls`` (a dataclass), ``presets`` (name -> field overrides of
    ``config_cls``; an empty dict means the dataclass defaults), ``role`` and implement
    :meth:`data_recipe`, :meth:`build`, :meth:`training_step` and :meth:`predict`.
    """

    config_cls: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    role: ClassVar[str] = "refiner"  # "refiner" | "localizer" | "joint"
    description: ClassVar[str] = ""

    def __init__(self, name: str) -> None:
        if name not in self.presets:
            raise ConfigError(f"{type(self).__name__} has no preset {name!r}; presets: {', '.join(self.presets)}.")
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ---- configuration -------------------------------------------------------------------
    def default_config(self) -> Any:
        """The config of this preset (dataclass defaults + the preset's overrides)."""
        return self.config_cls(**self.presets[self.name])

    def make_config(self, overrides: Mapping[str, Any] | None = None, base: Any = None) -> Any:
        """``base`` (default: this preset) with ``overrides`` applied. Values may be strings
        as typed on a command line (``"H,C"``, ``"true"``, ``"0.7"``). ConfigError on an
        unknown field (the message lists the valid ones) or a bad value."""
        cfg = self.default_config() if base is None else base
        specs = {s.name: s for s in config_fields(self.config_cls)}
        changes = {}
        for key, value in (overrides or {}).items():
            field = key.replace("-", "_")
            if field not in specs:
                raise ConfigError(
                    f"Method {self.name!r} has no setting {key!r}. Its settings are: "
                    f"{', '.join(specs)}.")
            changes[field] = _coerce(value, specs[field].type, field)
        return dataclasses.replace(cfg, **changes)

    def config_to_dict(self, cfg: Any) -> dict[str, Any]:
        """JSON-ready dict of a config (tuples become lists)."""
        return {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}

    def config_from_dict(self, data: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`config_to_dict`; fields absent from ``data`` keep their defaults."""
        return self.make_config(data, base=self.config_cls())

    def config_flags(self, cfg: Any) -> dict[str, Any]:
        """Fields of ``cfg`` that differ from this preset (what a user changed)."""
        ref = self.default_config()
        return {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if getattr(cfg, f.name) != getattr(ref, f.name)}

    # ---- the plug-in contract ---------------------------------------------------------------
    def data_recipe(self, cfg: Any) -> "DataRecipe":
        """How to cut training samples and inference slabs for this method."""
        raise NotImplementedError

    def build(self, cfg: Any) -> "nn.Module":
        """A freshly initialised network for ``cfg``."""
        raise NotImplementedError

    def training_step(self, model: "nn.Module", batch: dict[str, "Tensor"], cfg: Any,
                      step: int) -> tuple["Tensor", dict[str, float]]:
        """Loss (scalar tensor, differentiable) and its parts as floats for logging.

        ``batch``: {"image": float (B, slab, P, P) on the model's device, "label": int64 (B, P, P)}.
        """
        raise NotImplementedError

    def predict(self, model: "nn.Module", x: "Tensor") -> "Tensor":
        """Foreground probability (B, H, W) for slabs x (B, slab, H, W) of any H, W."""
        raise NotImplementedError


class SlabMethod(Method):
    """A method whose network maps slabs (B, slab, H, W) to (logits, embedding) and whose
    config is a :class:`SlabConfig`; ``region`` says where training patches are drawn."""

    region: ClassVar[str] = "label_box"  # "label_box" (stage 2) | "body" (stage 1)
    pad_multiple: ClassVar[int] = 16  # the network's input size must be a multiple of this

    def data_recipe(self, cfg: SlabConfig) -> "DataRecipe":
        from ..data import DataRecipe

        return DataRecipe(spacing_mm=cfg.spacing_mm, slab=cfg.slab, patch=cfg.patch, per_case=cfg.per_case,
                          region=self.region, fg_fraction=cfg.fg_fraction, augment=cfg.augment)

    def predict(self, model: "nn.Module", x: "Tensor") -> "Tensor":
        """Foreground probability (B, H, W) for x (B, slab, H, W); H, W are padded with
        intensity 0 (I-14) to a multiple of ``pad_multiple`` and cropped back."""
        import torch
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        n = self.pad_multiple
        logits, _ = model(F.pad(x, (0, (-w) % n, 0, (-h) % n)))
        return torch.softmax(logits.float(), dim=1)[:, 1, :h, :w]
