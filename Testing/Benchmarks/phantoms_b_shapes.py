"""Tissues, small geometry (signed-distance blobs and tubes), primitives and grids of the second
phantom family (:mod:`phantoms_b`; evaluation only)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from voxmetric.phantom import LABELS  # noqa: E402  (label values only)

# ---- tissues --------------------------------------------------------------------------------
TISSUES = ("air", "table", "table_shell", "fat", "skin", "muscle", "cortex", "marrow", "cartilage", "disc",
           "urine", "contrast", "bladder_wall", "pz", "tz", "cz", "afs", "urethra", "nodule_dark", "nodule_bright",
           "calcification", "plexus", "capsule", "sv_fluid", "sv_wall", "rectal_wall", "gas", "feces", "fluid", "balloon",
           "bowel_wall", "artery", "vein", "nvb", "metal", "catheter", "genital")
T = {name: i for i, name in enumerate(TISSUES)}
PROSTATE, BLADDER, RECTUM = LABELS["Prostate"], LABELS["Bladder"], LABELS["Rectum"]
FH_LEFT, FH_RIGHT = LABELS["Femoral head left"], LABELS["Femoral head right"]

Pts = tuple[np.ndarray, np.ndarray, np.ndarray]  # (x, y, z) patient-frame mm, broadcastable blocks
SdfFn = Callable[[Pts], np.ndarray]
Painter = Callable[[np.ndarray, Pts, np.ndarray, np.ndarray], None]  # (sdf, pts, cls, lab) blocks


# ---- small geometry ----------------------------------------------------------------------------
def _rot(axis: str, deg: float) -> np.ndarray:
    """3×3 rotation by ``deg`` degrees about the patient-frame axis 'x', 'y' or 'z'."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two SDFs (polynomial blend of width ``k`` mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth intersection of two SDFs."""
    return -_smin(-a, -b, k)


def _sphere_dirs(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@dataclass
class Blob:
    """A star-shaped body: ellipsoid ``radii`` (mm) on ``axes`` (columns = local x, y, z in the
    patient frame) around ``center``, its radius modulated by radial-basis bumps on the sphere
    (``dirs`` (K, 3) local unit vectors, ``amps`` (K,) relative heights, ``widths`` (K,))."""

    center: np.ndarray
    radii: np.ndarray
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))
    dirs: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    amps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    widths: np.ndarray = field(default_factory=lambda: np.ones(0))

    def local(self, p: Pts) -> Pts:
        """Local normalised coordinates (1 = on the plain ellipsoid)."""
        d = [p[0] - self.center[0], p[1] - self.center[1], p[2] - self.center[2]]
        return tuple((d[0] * self.axes[0, k] + d[1] * self.axes[1, k] + d[2] * self.axes[2, k]) / self.radii[k]
                     for k in range(3))  # type: ignore[return-value]

    def sdf(self, p: Pts) -> np.ndarray:
        """Approximate signed distance (mm, < 0 inside): (ρ − R(u)) / |∇ρ|."""
        q = self.local(p)
        rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
        bound = np.ones_like(rho)
        for d, a, w in zip(self.dirs, self.amps, self.widths, strict=True):
            bound += a * np.exp(((q[0] * d[0] + q[1] * d[1] + q[2] * d[2]) / rho - 1.0) / w)
        grad = np.sqrt((q[0] / self.radii[0]) ** 2 + (q[1] / self.radii[1]) ** 2 + (q[2] / self.radii[2]) ** 2) / rho
        return ((rho - bound) / (grad + 1e-6)).astype(np.float32)

    def bbox(self, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        ext = np.abs(self.axes) @ (self.radii * (1.0 + np.abs(self.amps).sum()))
        return self.center - ext - pad, self.center + ext + pad


def _catmull(ctrl: np.ndarray, step: float = 4.0) -> np.ndarray:
    """Points every ~``step`` mm along a Catmull-Rom spline through ``ctrl`` (K, D); extra columns
    (radii) are interpolated the same way."""
    c = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    out = []
    for i in range(1, len(c) - 2):
        p0, p1, p2, p3 = c[i - 1], c[i], c[i + 1], c[i + 2]
        n = max(2, int(np.ceil(np.linalg.norm(p2[:3] - p1[:3]) / step)))
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    out.append(ctrl[-1:])
    return np.vstack(out)


@dataclass
class Tube:
    """A tube along a polyline: ``pts`` (K, 3) mm with per-point ``rx`` (half-width along patient x)
    and ``ry`` (half-width across the other directions), so near-vertical tubes are elliptical."""

    pts: np.ndarray
    rx: np.ndarray
    ry: np.ndarray

    @classmethod
    def spline(cls, ctrl: Sequence[Sequence[float]], step: float = 4.0) -> "Tube":
        """From control rows (x, y, z, rx[, ry])."""
        c = np.array([list(r) + ([r[3]] if len(r) == 4 else []) for r in ctrl], float)
        s = _catmull(c, step)
        return cls(s[:, :3], s[:, 3], s[:, 4])

    def sdf(self, p: Pts, seg: slice | Sequence[int] | None = None) -> np.ndarray:
        """Approximate signed distance (mm) to the tube (segments ``seg`` only when given)."""
        best = None
        n = len(self.pts) - 1
        idx = range(n) if seg is None else (range(n)[seg] if isinstance(seg, slice) else seg)
        for i in idx:
            a, b = self.pts[i], self.pts[i + 1]
            d = b - a
            dd = float(d @ d) + 1e-9
            t = np.clip(((p[0] - a[0]) * d[0] + (p[1] - a[1]) * d[1] + (p[2] - a[2]) * d[2]) / dd, 0.0, 1.0)
            ox, oy, oz = p[0] - a[0] - t * d[0], p[1] - a[1] - t * d[1], p[2] - a[2] - t * d[2]
            rx = self.rx[i] + t * (self.rx[i + 1] - self.rx[i])
            ry = self.ry[i] + t * (self.ry[i + 1] - self.ry[i])
            dist = (np.sqrt((ox / rx) ** 2 + (oy ** 2 + oz ** 2) / ry ** 2) - 1.0) * np.minimum(rx, ry)
            best = dist if best is None else np.minimum(best, dist)
        assert best is not None
        return best.astype(np.float32)

    def bbox(self, pad: float = 0.0, seg: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        sel = np.arange(len(self.pts))[seg] if seg is not None else np.arange(len(self.pts))
        sel = np.unique(np.concatenate([sel, np.minimum(sel + 1, len(self.pts) - 1)]))
        r = np.maximum(self.rx, self.ry)[sel][:, None]
        return (self.pts[sel] - r).min(0) - pad, (self.pts[sel] + r).max(0) + pad


def _wave_noise(rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> SdfFn:
    """An analytic band-limited noise in the patient frame (sum of ``n`` random plane waves,
    values about −1..1): mottled textures that do not depend on the voxel grid."""
    dirs = _sphere_dirs(rng, n) * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    phase = rng.uniform(0, 2 * np.pi, n)

    def f(p: Pts) -> np.ndarray:
        s = sum(np.cos(p[0] * d[0] + p[1] * d[1] + p[2] * d[2] + ph) for d, ph in zip(dirs, phase, strict=True))
        return (s * np.sqrt(2.0 / n)).astype(np.float32)

    return f


# ---- primitives and painting ------------------------------------------------------------------
@dataclass
class Prim:
    """One structure: an SDF over a patient-frame box, painted as ``layers`` (paint ``tissue`` and
    ``label`` where sdf < threshold, in order) and/or by a ``custom`` painter. ``bone`` > 0 marks a
    bone with that cortex thickness (all bones of a run paint cortex first, then marrow)."""

    lo: np.ndarray
    hi: np.ndarray
    sdf: SdfFn
    layers: tuple[tuple[float, int, int], ...] = ()
    custom: Painter | None = None
    bone: float = 0.0


def _prim(shape: Blob | Tube, layers: tuple[tuple[float, int, int], ...] = (), custom: Painter | None = None,
          bone: float = 0.0, pad: float = 2.0) -> list[Prim]:
    """Prims for a blob, or for a tube cut into pieces of a few segments (tight boxes)."""
    if isinstance(shape, Blob):
        lo, hi = shape.bbox(pad)
        return [Prim(lo, hi, shape.sdf, layers, custom, bone)]
    out = []
    n = len(shape.pts) - 1
    r = np.maximum(shape.rx, shape.ry)
    seg_lo = np.minimum(shape.pts[:-1] - r[:-1, None], shape.pts[1:] - r[1:, None])
    seg_hi = np.maximum(shape.pts[:-1] + r[:-1, None], shape.pts[1:] + r[1:, None])
    for s0 in range(0, n, 4):
        lo, hi = shape.bbox(pad, slice(s0, min(n, s0 + 4)))
        # every segment that reaches into this piece's box, so that layers stay right at its ends
        near = list(range(s0, min(n, s0 + 4)))
        if custom is not None or len(layers) > 1:  # nested layers need the true distance at the piece's ends
            near = [int(i) for i in np.flatnonzero(np.all(seg_lo <= hi, axis=1) & np.all(seg_hi >= lo, axis=1))]
        out.append(Prim(lo, hi, (lambda p, near=near: shape.sdf(p, near)), layers, custom, bone))
    return out


@dataclass
class Grid:
    """The output grid (``shape`` (z, y, x), ``spacing`` (x, y, z), LPS ``origin``/``direction``)
    and the working grid: each output slice rendered as ``sub`` thin sub-slices. ``A``, ``b`` map a
    working index (i, j, k) to patient-frame mm."""

    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    sub: int
    pose: np.ndarray  # patient frame -> LPS rotation
    shift: np.ndarray  # LPS position of the patient-frame origin

    @property
    def wshape(self) -> tuple[int, int, int]:
        return (self.shape[0] * self.sub, self.shape[1], self.shape[2])

    @property
    def A(self) -> np.ndarray:
        m = self.pose.T @ self.direction @ np.diag(self.spacing)
        m[:, 2] /= self.sub
        return m

    @property
    def b(self) -> np.ndarray:
        o = self.pose.T @ (self.origin - self.shift)
        m = self.pose.T @ self.direction @ np.diag(self.spacing)
        return o + m[:, 2] * (0.5 / self.sub - 0.5)

    def index_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Working-index ranges (z, y, x) covering the patient-frame box, or None outside."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = (corners - self.b) @ np.linalg.inv(self.A).T
        lo_i, hi_i = np.floor(idx.min(0)).astype(int), np.ceil(idx.max(0)).astype(int) + 1
        n = np.array(self.wshape[::-1])
        lo_i, hi_i = np.maximum(lo_i, 0), np.minimum(hi_i, n)
        if np.any(hi_i <= lo_i):
            return None
        return slice(lo_i[2], hi_i[2]), slice(lo_i[1], hi_i[1]), slice(lo_i[0], hi_i[0])

    def points(self, zs: slice, ys: slice, xs: slice, step: int = 1) -> Pts:
        """Patient-frame coordinates of a working-grid block (every ``step``-th voxel in y and x),
        as full float32 arrays."""
        k = np.arange(zs.start, zs.stop, dtype=np.float64)[:, None, None]
        j = np.arange(ys.start, ys.stop, step, dtype=np.float64)[None, :, None]
        i = np.arange(xs.start, xs.stop, step, dtype=np.float64)[None, None, :]
        a, b = self.A, self.b
        return tuple(((a[r, 2] * k + b[r]) + a[r, 1] * j + a[r, 0] * i).astype(np.float32)  # type: ignore[misc]
                     for r in range(3))


class Coarse:
    """A field on a coarse lattice of the working grid (every ``f`` working voxels), read back
    per slab by separable linear interpolation."""

    def __init__(self, grid: Grid, mm: float) -> None:
        sp = np.array([grid.spacing[2] / grid.sub, grid.spacing[1], grid.spacing[0]])
        self.f = np.maximum(1, np.round(mm / sp)).astype(int)
        self.n = np.array(grid.wshape)
        self.cshape = tuple(int(np.ceil((n - 1) / f)) + 1 for n, f in zip(self.n, self.f, strict=True))
        self.mm = sp * self.f  # coarse spacing (z, y, x) mm
        self._grid = grid

    def points(self) -> Pts:
        """Patient-frame coordinates of the coarse lattice."""
        g = self._grid
        k = (np.arange(self.cshape[0]) * self.f[0])[:, None, None]
        j = (np.arange(self.cshape[1]) * self.f[1])[None, :, None]
        i = (np.arange(self.cshape[2]) * self.f[2])[None, None, :]
        a, b = g.A, g.b
        return tuple(((a[r, 2] * k + b[r]) + a[r, 1] * j + a[r, 0] * i).astype(np.float32)  # type: ignore[misc]
                     for r in range(3))

    def noise(self, rng: np.random.Generator, sigma_mm: float | tuple[float, float, float]) -> np.ndarray:
        """Unit-variance Gaussian-smoothed white noise on the coarse lattice (``sigma_mm`` one
        value or (z, y, x) in mm)."""
        sig = np.maximum(np.asarray(sigma_mm, float) / self.mm, 0.3)
        c = ndi.gaussian_filter(rng.standard_normal(self.cshape).astype(np.float32), sig, mode="wrap")
        return c / (c.std() + 1e-6)

    def _axis(self, ax: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = np.arange(lo, hi) / self.f[ax]
        i0 = np.minimum(np.floor(u).astype(int), self.cshape[ax] - 2) if self.cshape[ax] > 1 else np.zeros(hi - lo, int)
        w = (u - i0).astype(np.float32) if self.cshape[ax] > 1 else np.zeros(hi - lo, np.float32)
        return i0, np.minimum(i0 + 1, self.cshape[ax] - 1), w

    def read(self, c: np.ndarray, zs: slice) -> np.ndarray:
        """The field ``c`` (coarse) interpolated on working slices ``zs`` (all y, x)."""
        e = (None,) * (c.ndim - 3)  # trailing channel axes
        z0, z1, wz = self._axis(0, zs.start, zs.stop)
        v = c[z0] * (1 - wz)[(slice(None), None, None, *e)] + c[z1] * wz[(slice(None), None, None, *e)]
        y0, y1, wy = self._axis(1, 0, int(self.n[1]))
        v = v[:, y0] * (1 - wy)[(None, slice(None), None, *e)] + v[:, y1] * wy[(None, slice(None), None, *e)]
        x0, x1, wx = self._axis(2, 0, int(self.n[2]))
        return v[:, :, x0] * (1 - wx)[(None, None, slice(None), *e)] + v[:, :, x1] * wx[(None, None, slice(None), *e)]


