"""Volumes and boxes in physical space.

Conventions (DESIGN.md): arrays are ``(z, y, x)`` as SimpleITK gives them; ``spacing``,
``origin`` and the columns of ``direction`` are in ITK ``(x, y, z)`` order; physical points
are LPS millimetres. A :class:`Box` is a centre (mm), a size (mm, along its own axes) and a
3×3 matrix whose columns are the box axes in LPS.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk

from .errors import GeometryError, InputError

Vec3 = tuple[float, float, float]


def _vec3(v: object, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise InputError(f"{name} must be 3 finite numbers, got {v!r}.")
    return a


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image: ``array`` (z, y, x), ``spacing`` (x, y, z) mm, ``origin`` LPS mm of voxel
    (0, 0, 0), ``direction`` 3×3 with columns = the x, y, z index axes in LPS."""

    array: np.ndarray
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise InputError(
                f"Expected a 3D volume, got an array of {arr.ndim} dimension(s) with shape "
                f"{arr.shape}. Load a 3D CT or MR series, not a single slice or a 4D series."
            )
        if arr.size == 0:
            raise InputError("The volume has no voxels (one of its dimensions is 0).")
        object.__setattr__(self, "array", arr)
        sp = _vec3(self.spacing, "spacing")
        if np.any(sp <= 0):
            raise InputError(f"Voxel spacing must be positive, got {tuple(sp)} mm.")
        object.__setattr__(self, "spacing", sp)
        object.__setattr__(self, "origin", _vec3(self.origin, "origin"))
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise InputError("The direction matrix is not orthonormal; the image header is broken.")
        object.__setattr__(self, "direction", d)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size_xyz(self) -> np.ndarray:
        """Grid size in ITK order (x, y, z)."""
        return np.array(self.array.shape[::-1])

    @property
    def spacing_zyx(self) -> np.ndarray:
        """Spacing in array axis order (z, y, x), mm."""
        return self.spacing[::-1].copy()

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """4×4 affine mapping a continuous index (x, y, z, 1) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def index_to_physical(self, idx_xyz: np.ndarray) -> np.ndarray:
        """(..., 3) continuous indices (x, y, z) → (..., 3) LPS mm."""
        idx = np.asarray(idx_xyz, dtype=np.float64)
        return idx @ (self.direction @ np.diag(self.spacing)).T + self.origin

    def physical_to_index(self, pts: np.ndarray) -> np.ndarray:
        """(..., 3) LPS mm → (..., 3) continuous indices (x, y, z)."""
        p = np.asarray(pts, dtype=np.float64) - self.origin
        return p @ self.direction / self.spacing

    def same_grid(self, other: "Volume", tol: float = 1e-3) -> bool:
        """True when both volumes share size, spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol * 10)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def check_same_grid(self, other: "Volume", what: str = "image and label") -> None:
        """Raise :class:`GeometryError` naming the first difference when grids differ."""
        if self.same_grid(other):
            return

        def rounded(v: np.ndarray) -> tuple[float, ...]:
            return tuple(float(x) for x in np.round(v, 4))

        checks = (  # most telling difference first
            ("spacing (mm)", self.spacing, other.spacing, 1e-3),
            ("direction", self.direction.ravel(), other.direction.ravel(), 1e-3),
            ("size (z, y, x)", np.array(self.shape), np.array(other.shape), 0.0),
            ("origin (mm)", self.origin, other.origin, 1e-2),
        )
        for name, a, b, tol in checks:
            if a.shape != b.shape or not np.allclose(a, b, atol=tol, rtol=0):
                shown = (tuple(int(x) for x in a), tuple(int(x) for x in b)) if tol == 0 else (rounded(a), rounded(b))
                raise GeometryError(
                    f"The {what} do not share a voxel grid: {name} {shown[0]} vs {shown[1]}. "
                    "Export the label on the image's geometry (in Slicer: Segmentations → "
                    "Export to labelmap with the image as reference)."
                )
        raise GeometryError(f"The {what} do not share a voxel grid.")

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxel values (shape must match)."""
        array = np.asarray(array)
        if array.shape != self.shape:
            raise GeometryError(f"Array shape {array.shape} does not match the volume {self.shape}.")
        return replace(self, array=array)

    # -- SimpleITK ---------------------------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same voxels and geometry."""
        arr = self.array
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        elif arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Volume":
        """Read voxels and geometry from a 3D scalar SimpleITK image."""
        if img.GetDimension() != 3:
            raise InputError(
                f"Expected a 3D image, got a {img.GetDimension()}D image of size {img.GetSize()}."
            )
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                f"Expected a scalar image, got {img.GetNumberOfComponentsPerPixel()} components "
                "per voxel (a colour or vector image)."
            )
        return cls(
            sitk.GetArrayFromImage(img),
            np.array(img.GetSpacing()),
            np.array(img.GetOrigin()),
            np.array(img.GetDirection()).reshape(3, 3),
        )


@dataclass(frozen=True, eq=False)
class Box:
    """An oriented box: ``center`` LPS mm, ``size`` mm along its axes, ``axes`` 3×3 with
    columns = unit box axes in LPS (identity = axis-aligned with LPS)."""

    center: np.ndarray
    size: np.ndarray
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", _vec3(self.center, "box centre"))
        s = _vec3(self.size, "box size")
        if np.any(s <= 0):
            raise InputError(f"Box size must be positive, got {tuple(s)} mm.")
        object.__setattr__(self, "size", s)
        a = np.asarray(self.axes, dtype=np.float64).reshape(3, 3)
        if not np.allclose(a.T @ a, np.eye(3), atol=1e-4):
            raise InputError("Box axes must be orthonormal (a rotation, no scaling or shear).")
        object.__setattr__(self, "axes", a)

    @property
    def corners(self) -> np.ndarray:
        """(8, 3) corner points in LPS mm."""
        signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], float)
        return self.center + (signs * self.size / 2) @ self.axes.T

    def contains(self, pts: np.ndarray) -> np.ndarray:
        """Boolean (...,) whether LPS points (..., 3) lie inside the box."""
        local = (np.asarray(pts, float) - self.center) @ self.axes
        return np.all(np.abs(local) <= self.size / 2 + 1e-6, axis=-1)

    def overlaps(self, other: "Box") -> bool:
        """True when the two (solid) boxes share some volume: no separating axis among the
        15 of two oriented boxes (the 3 + 3 face normals and their 9 cross products)."""
        a, b = self.axes, other.axes
        ha, hb = self.size / 2, other.size / 2
        d = other.center - self.center
        cand = [a[:, i] for i in range(3)] + [b[:, j] for j in range(3)]
        cand += [np.cross(a[:, i], b[:, j]) for i in range(3) for j in range(3)]
        for axis in cand:
            n = float(np.linalg.norm(axis))
            if n < 1e-9:
                continue  # parallel edges: covered by the face normals
            axis = axis / n
            ra = float(np.sum(ha * np.abs(axis @ a)))
            rb = float(np.sum(hb * np.abs(axis @ b)))
            if abs(float(axis @ d)) > ra + rb - 1e-9:
                return False
        return True

    @classmethod
    def from_volume_extent(cls, vol: Volume) -> "Box":
        """The box covering the whole volume, aligned with its axes."""
        ext = vol.size_xyz * vol.spacing
        center = vol.index_to_physical((vol.size_xyz - 1) / 2.0)
        return cls(center, ext, vol.direction)


def resample(vol: Volume, spacing: Vec3 | np.ndarray, is_label: bool = False) -> Volume:
    """Resample onto a grid of ``spacing`` (x, y, z) mm covering the same extent.

    Images: linear interpolation (float32 out). Labels: nearest neighbour, values kept.
    """
    sp = _vec3(spacing, "spacing")
    size = np.maximum(1, np.round(vol.size_xyz * vol.spacing / sp)).astype(int)
    # Keep the physical extent centred: the first voxel centre moves by half the difference.
    offset = (vol.spacing - sp) / 2.0
    origin = vol.origin + vol.direction @ (-offset)
    ref = Volume(np.zeros(size[::-1], np.uint8), sp, origin, vol.direction)
    return resample_to(vol, ref, is_label=is_label)


def resample_to(vol: Volume, reference: Volume, is_label: bool = False, fill: float = 0.0) -> Volume:
    """Resample ``vol`` onto ``reference``'s grid (linear for images, nearest for labels)."""
    src = vol.to_sitk()
    if not is_label:
        src = sitk.Cast(src, sitk.sitkFloat32)
    f = sitk.ResampleImageFilter()
    f.SetOutputSpacing(tuple(float(v) for v in reference.spacing))
    f.SetOutputOrigin(tuple(float(v) for v in reference.origin))
    f.SetOutputDirection(tuple(float(v) for v in reference.direction.ravel()))
    f.SetSize([int(v) for v in reference.size_xyz])
    f.SetInterpolator(sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear)
    f.SetDefaultPixelValue(float(fill))
    f.SetOutputPixelType(src.GetPixelID())
    out = Volume.from_sitk(f.Execute(src))
    if is_label and out.array.dtype != vol.array.dtype:
        out = out.with_array(out.array.astype(vol.array.dtype))
    return out


def box_grid(box: Box, spacing: Vec3 | np.ndarray) -> Volume:
    """An empty (uint8) grid aligned with ``box``: voxel centres tile the box at ``spacing``."""
    sp = _vec3(spacing, "spacing")
    n = np.maximum(1, np.round(box.size / sp)).astype(int)
    origin = box.center - box.axes @ ((n - 1) * sp / 2.0)
    return Volume(np.zeros(n[::-1], np.uint8), sp, origin, box.axes)


def crop(vol: Volume, box: Box, spacing: Vec3 | np.ndarray, is_label: bool = False, fill: float = 0.0) -> Volume:
    """Resample ``vol`` onto the box-aligned grid at ``spacing`` (x, y, z) mm; rotated boxes
    are honoured. Voxels outside the image get ``fill``."""
    return resample_to(vol, box_grid(box, spacing), is_label=is_label, fill=fill)


def paste(values: Volume, reference: Volume, is_label: bool = True) -> np.ndarray:
    """Map a box-grid volume back onto ``reference``'s grid; outside the box → 0.

    Binary masks (values 0/1) are interpolated linearly and thresholded at 0.5, which is
    exact on aligned grids and smooth for rotated boxes; other labels use nearest neighbour.
    For probabilities pass ``is_label=False`` (linear, float32). Returns ``reference.shape``.
    """
    a = values.array
    if is_label and (a.dtype == bool or np.isin(a, (0, 1)).all()):
        soft = resample_to(values.with_array(a.astype(np.float32)), reference, is_label=False)
        return (soft.array >= 0.5).astype(a.dtype)
    return resample_to(values, reference, is_label=is_label, fill=0.0).array
