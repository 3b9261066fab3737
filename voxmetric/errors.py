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


class OutputError(VoxMetricError, OSError):
    """An output cannot be written: it exists (and replacing it was not asked for), its folder
    cannot be made, permission is denied or the disk is full. Also an ``OSError`` (``errno`` and
    ``filename`` of the failure when there was one); ``str()`` is the message."""

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno, self.filename = errno, filename  # pyright: ignore[reportAttributeAccessIssue]

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
