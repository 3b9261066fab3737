"""Errors that speak to people: each says what is wrong and what to do (DESIGN.md rule 7)."""

from __future__ import annotations


class VoxMetricError(Exception):
    """Base class: the CLI prints the message (no traceback) and exits non-zero."""


class InputError(VoxMetricError):
    """An image or label cannot be used: unreadable, empty, NaN, 2D, wrong type."""


class GeometryError(VoxMetricError):
    """Two images that must share a grid do not (size, spacing, origin or direction)."""


class SegmentNotFoundError(InputError):
    """A segment name is not in a segmentation; the message lists the available names."""


class ConfigError(VoxMetricError):
    """An unknown method, flag or a value out of range."""


class ModelError(VoxMetricError):
    """A model package is missing, corrupt, tampered with or for another modality."""


class DeviceError(VoxMetricError):
    """A device was asked for that this machine does not have."""
