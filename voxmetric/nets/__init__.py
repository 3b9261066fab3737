"""Network architectures only (no losses, no data). Every net returns (logits, features): the
2D nets their embedding layer, the 3D U-Net its encoder outputs deepest first."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from voxmetric.errors import ConfigError
from voxmetric.nets.unet2d import UNet2D
from voxmetric.nets.unet3d import UNet3D


def _unetpp(**kwargs: Any) -> nn.Module:
    from voxmetric.nets.unetpp import UNetPlusPlus2D

    return UNetPlusPlus2D(**kwargs)


def __getattr__(name: str) -> Any:
    """``UNetPlusPlus2D`` is imported on first use: MONAI takes seconds to import."""
    if name == "UNetPlusPlus2D":
        from voxmetric.nets.unetpp import UNetPlusPlus2D

        return UNetPlusPlus2D
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


NETWORKS: dict[str, Callable[..., nn.Module]] = {"unet2d": UNet2D, "unetpp2d": _unetpp, "unet3d": UNet3D}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Build the network registered as ``name`` (case-insensitive) with constructor ``kwargs``."""
    key = name.lower()
    if key not in NETWORKS:
        raise ConfigError(f"Unknown network {name!r}; choose one of: {', '.join(sorted(NETWORKS))}.")
    try:
        return NETWORKS[key](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"Bad arguments for network {name!r}: {exc}.") from exc


__all__ = ["NETWORKS", "UNet2D", "UNet3D", "build_network"]  # UNetPlusPlus2D: imported on first use (__getattr__)
