"""Registry of trainable methods. Each module in this package registers its :class:`Method`
subclass with :func:`register`; every preset name of that class becomes selectable by
:func:`get_method` (case-insensitive). Adding a method = adding one file here."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar

from ..errors import ConfigError
from .base import (FieldSpec, Logs, Method, Role, Runtime, SlabConfig, SlabMethod, StepContext, config_fields,
                   normalised_entropy)

_REGISTRY: dict[str, type[Method[Any]]] = {}
M = TypeVar("M", bound=type[Method[Any]])


def register(cls: M) -> M:
    """Class decorator: make every name in ``cls.presets`` available to :func:`get_method`."""
    if not cls.presets:
        raise ConfigError(f"{cls.__name__} declares no preset names.")
    for name in cls.presets:
        other = _REGISTRY.get(name.lower())
        if other is not None and other is not cls:
            raise ConfigError(f"Method name {name!r} is registered twice ({other.__name__}, {cls.__name__}).")
        _REGISTRY[name.lower()] = cls
    return cls


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def available_methods() -> list[str]:
    """All method names (presets), in registration order."""
    return [name for cls in dict.fromkeys(_REGISTRY.values()) for name in cls.presets]


def method_classes() -> list[type[Method[Any]]]:
    """The registered Method classes (one per method file)."""
    return list(dict.fromkeys(_REGISTRY.values()))


def get_method(name: str) -> Method[Any]:
    """The method called ``name`` (case-insensitive); ConfigError listing the names otherwise."""
    cls = _REGISTRY.get(str(name).lower())
    if cls is None:
        raise ConfigError(f"Unknown method {name!r}. Available methods: {', '.join(available_methods())}.")
    canonical = next(n for n in cls.presets if n.lower() == str(name).lower())
    return cls(canonical)


_load_all()

__all__ = ["FieldSpec", "Logs", "Method", "Role", "Runtime", "SlabConfig", "SlabMethod", "StepContext", "available_methods",
           "config_fields", "get_method", "method_classes", "normalised_entropy", "register"]
