"""Second phantom family ("B"), for evaluation only: synthetic male-pelvis CT and MR cases with
labels, written independently of :mod:`voxmetric.phantom` (it shares only the label values) and
kept outside the engine package so that no training code can import it.

Anatomy is built from implicit surfaces in a patient frame (LPS mm, origin between the femoral
head centres): the prostate is a tilted, base-wide, posteriorly flattened body with random
radial-basis bumps, zones (peripheral, transition, central, anterior stroma, urethra, capsule,
BPH nodules) and sometimes a median lobe; the bladder is a bumpy dome clipped by the pubis and
the side walls that wraps the prostate base; the rectum is a tube along a spline that follows
the sacrum; bones are tubes, rings and shells (femora, acetabula, pubic rami, ischia, ilia,
sacrum, lumbar spine). Images are drawn per tissue with fractal textures, fat septa and
streaky muscle texture; CT in HU with a patient table, scanner noise, beam hardening,
contrast-filled bladders and metal hips; MR (T2, fat-suppressed T2, T1) with coil bias, Rician
noise and several value ranges. Grids vary (0.4–1.2 mm in-plane, 0.7–5 mm slices, thick ones
averaged from thin sub-slices, tight to abdomen-pelvis fields of view, identity / RAS-flipped /
feet-first / oblique directions). Every case is a pure function of ``(seed, modality)``.

    python Testing/Benchmarks/phantoms_b.py --out DIR --cases N --modality ct|mr --seed S [--max-voxels N]

writes ``caseb_<modality>_<seed>.nrrd`` + ``.seg.nrrd`` (segments Prostate, Bladder, Rectum,
Femoral head left/right) and a ``voxmetric-cases/1`` ``manifest.json``; prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from voxmetric import io as vio  # noqa: E402
from voxmetric.cases import CaseRecord, write_manifest  # noqa: E402
from voxmetric.phantom import LABELS  # noqa: E402  (label values only)
from voxmetric.volume import Volume  # noqa: E402

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


# ---- anatomy ------------------------------------------------------------------------------------
@dataclass
class Anatomy:
    """Every random shape parameter of one case (patient frame: x left, y posterior, z superior,
    mm; origin midway between the femoral-head centres)."""

    hw: float  # femoral-head centre distance from the midline
    rfh: float  # femoral-head radius
    prostate: Blob
    tz: Blob
    median_lobe: Blob | None
    prostate_ml: float  # nominal gland volume
    urethra: Tube
    nodules: list[Blob]
    calcs: list[Blob]
    bladder: Blob
    bladder_wall: float
    bladder_clip: tuple[float, float, float]  # (anterior y, posterior y, half-width x)
    rectum: Tube
    sigmoid: Tube
    rectal_wall: float
    balloon: Blob | None
    svs: list[Tube]
    sym_y: float
    sym_z: float
    body: dict[str, np.ndarray]
    sacrum: Tube
    spine_y: float
    extras: dict[str, object] = field(default_factory=dict)


def sample_anatomy(rng: np.random.Generator, endorectal: bool = False) -> Anatomy:
    """Draw one male pelvis."""
    u = rng.uniform
    hw, rfh = u(82, 98), u(21, 26)
    # prostate: volume (mL) log-normal around 38 mL, sometimes large; tilted apex-anterior
    ml = float(np.clip(np.exp(rng.normal(np.log(38), 0.45)), 16, 140))
    d, h = u(0.62, 0.82), u(0.8, 1.05)
    W = (6 * ml * 1000 / (np.pi * d * h)) ** (1 / 3)
    radii = np.array([W / 2, W * d / 2, W * h / 2])
    tilt = u(10, 38)
    axes = _rot("z", u(-6, 6)) @ _rot("x", tilt)  # columns: lateral, AP (posterior +), axial (base +)
    cp = np.array([rng.normal(0, 2.5), u(-2, 14), -u(0, 28)])
    k = int(rng.integers(6, 12))
    dirs = _sphere_dirs(rng, k)
    amps = rng.normal(0, 0.07, k)
    dirs = np.vstack([dirs, [0, 0.95, 0.3], [0, 0, -1]])  # posterior median sulcus, narrow apex
    amps = np.concatenate([amps, [-u(0.04, 0.12), -u(0.05, 0.2)]])
    widths = np.concatenate([u(0.12, 0.45, k), [0.06, 0.5]])
    prostate = Blob(cp, radii, axes, dirs, amps, widths)
    base_dir, ap_dir = axes[:, 2], axes[:, 1]
    median = None
    if rng.random() < 0.12 + 0.4 * (ml > 50):
        rml = u(7, 15) * (ml / 40) ** 0.25
        c_ml = cp + base_dir * radii[2] * u(0.7, 0.95) - ap_dir * u(0, 5)
        median = Blob(c_ml, np.array([rml * u(1.0, 1.3), rml, rml * u(0.9, 1.3)]), axes)
    s_tz = float(np.clip(0.42 + 0.005 * (ml - 20), 0.45, 0.85)) * u(0.9, 1.1)
    tz = Blob(cp - ap_dir * radii[1] * 0.18 + base_dir * radii[2] * 0.12,
              radii * np.array([s_tz, s_tz * 0.95, s_tz * 1.05]), axes, _sphere_dirs(rng, 5),
              rng.normal(0, 0.08, 5), u(0.2, 0.5, 5))
    # urethra: enters at the bladder neck, bends anteriorly at the verumontanum, exits at the apex
    uc = [cp + base_dir * radii[2] * 1.05 - ap_dir * radii[1] * 0.1,
          cp - ap_dir * radii[1] * 0.15,
          cp - base_dir * radii[2] * 1.05 - ap_dir * radii[1] * 0.3 * u(0.5, 1.5)]
    ur = u(2.0, 3.2)
    urethra = Tube.spline([list(p) + [ur, ur] for p in uc], 3.0)
    nodules = []
    for _ in range(int(rng.poisson(ml / 14))):
        off = rng.normal(0, 0.35, 3) * tz.radii
        r = u(2.5, 8.0) * (ml / 40) ** 0.2
        nodules.append(Blob(tz.center + axes @ off, np.array([r, r * u(0.7, 1.0), r * u(0.8, 1.2)]), axes))
    calcs = []
    for _ in range(int(rng.integers(1, 7))):
        dirn = _sphere_dirs(rng, 1)[0] * np.array([1, 0.5, 0.7])
        c = tz.center + axes @ (dirn / np.linalg.norm(dirn) * tz.radii * u(0.9, 1.1))
        r = u(0.8, 2.5)
        calcs.append(Blob(c, np.array([r, r, r])))
    balloon = None
    y_post = cp[1] + radii[1] * np.cos(np.radians(tilt)) * 0.95
    if endorectal:
        rb = u(19, 26)
        balloon = Blob(np.array([cp[0], y_post + rb + 3.5, cp[2] - u(0, 8)]), np.array([rb * u(1.0, 1.2), rb, rb * u(1.0, 1.3)]))
    # bladder: dome above the neck, pushed against the anterior wall; empty ones are flat cups
    top = cp + base_dir * radii[2]
    vb = float(np.exp(u(np.log(40), np.log(550))))
    fill = (np.log(vb) - np.log(40)) / (np.log(550) - np.log(40))
    ratio = np.array([1.35 - 0.2 * fill, 0.55 + 0.35 * fill, 0.7 + 0.3 * fill])
    s = (3 * vb * 1000 / (4 * np.pi * ratio.prod())) ** (1 / 3)
    brad = ratio * s
    bc = top + np.array([rng.normal(0, 4), -u(4, 14) - 8 * fill, brad[2] * u(0.65, 0.9)])
    kd = int(rng.integers(5, 10))
    bdirs, bamps, bw = _sphere_dirs(rng, kd), rng.normal(0, 0.06, kd), u(0.15, 0.5, kd)
    bdirs = np.vstack([bdirs, [0, 0, 1]])
    bamps = np.concatenate([bamps, [-u(0.05, 0.35) * (1 - fill)]])  # bowel pressing an empty dome
    bw = np.concatenate([bw, [0.3]])
    bladder = Blob(bc, brad, _rot("x", u(-10, 10)) @ _rot("z", u(-8, 8)), bdirs, bamps, bw)
    sym_y = cp[1] - radii[1] - u(14, 28) - 14
    sym_z = cp[2] - radii[2] + 20 + rng.normal(0, 5)
    # seminal vesicles: from the posterior base, out and up between bladder and rectum
    svs = []
    s0y = cp[1] + radii[1] * 0.55
    for side in (-1, 1):
        p0 = top + ap_dir * radii[1] * 0.55 + np.array([side * u(5, 9), 0, -4])
        p0[1] = max(p0[1], s0y)
        p1 = p0 + np.array([side * u(10, 17), u(2, 8), u(8, 14)])
        p2 = p1 + np.array([side * u(8, 16), u(-2, 6), u(3, 10)])
        r = u(3.5, 6.5)
        ctrl = [[*p0, r * 0.7, r * 0.45], [*((p0 + p1) / 2 + rng.normal(0, 1.5, 3)), r, r * 0.6],
                [*p1, r * 1.1, r * 0.65], [*((p1 + p2) / 2 + rng.normal(0, 1.5, 3)), r * 0.9, r * 0.6], [*p2, r * 0.8, r * 0.5]]
        svs.append(Tube.spline(ctrl, 2.5))
    sv_y = max(float(t.pts[:, 1].max() + t.ry.max()) for t in svs)
    # rectum: tube along the sacral curve, from the anal canal to the rectosigmoid
    r_amp = u(13, 24) if balloon is None else balloon.radii[1] + 3
    z_apex = cp[2] - radii[2]
    gap = u(1.0, 3.5)
    x0 = rng.normal(0, 3)
    if balloon is not None:
        mid = [*balloon.center, balloon.radii[0] + 3, balloon.radii[1] + 3]
    else:
        mid = [x0 + rng.normal(0, 3), y_post + gap + r_amp * 0.75, cp[2], r_amp * u(1.1, 1.4), r_amp * 0.75]
    # sacrum: anterior surface knots (coccyx tip .. promontory) a rectum's width behind the prostate
    sac_z = np.array([-40.0, -10, 25, 60, 100]) + rng.normal(0, 6)
    sac_y = y_post + np.array([u(24, 34), u(40, 55), u(50, 68), u(50, 68), u(28, 45)]) + (r_amp - 18) * 0.8
    sac_r = np.array([[5, 5], [14, 7], [32, 11], [46, 15], [52, 20]]) * u(0.9, 1.1)

    def front(z: float) -> float:
        return float(np.interp(z, sac_z, sac_y))

    r_up = u(12, 19)
    z3, z4, z5 = top[2] + 18, top[2] + 55, top[2] + 95
    y3 = min(max(y_post + r_amp + 6, sv_y + r_amp + 1) + u(0, 8), front(z3) - r_amp - 2)
    rect_ctrl = [[x0, y_post + 22, z_apex - 45, 7, 7],
                 [x0, y_post + gap + 10, z_apex - 18, 10, 9],
                 mid,
                 [x0 + rng.normal(0, 5), y3, z3, r_amp * u(1.0, 1.3), r_amp],
                 [x0 + rng.normal(0, 8), front(z4) - r_up - u(3, 12), z4, r_up * 1.2, r_up],
                 [u(5, 30), front(z5) - r_up - u(10, 30), z5, r_up, r_up]]
    rectum = Tube.spline(rect_ctrl, 5.0)
    last = rect_ctrl[-1]
    sigmoid = Tube.spline([last, [last[0] + u(15, 35), last[1] - u(30, 60), last[2] + u(15, 35), 15, 15],
                           [u(40, 70), u(-20, 20), last[2] + u(50, 80), 16, 16], [u(55, 80), u(20, 50), last[2] + 140, 18, 18]], 4.0)
    sacrum = Tube.spline([[0, y + r[1], z, r[0], r[1]] for y, z, r in zip(sac_y, sac_z, sac_r, strict=True)], 4.0)
    spine_y = float(sac_y[-1]) + 14  # L5 body centre; vertebral bodies above (lordosis), posterior arch behind
    # body cross-section knots along z: half width, anterior and posterior (midline) skin
    zk = np.array([-400.0, -70, -25, 40, 110, 200, 500])
    body = {"z": zk}
    w_hip = hw + u(75, 115)
    body["hw"] = np.array([w_hip, w_hip * 0.98, w_hip, w_hip * u(0.95, 1.02), hw + u(45, 90), hw + u(40, 100), hw + 40])
    ya = sym_y - 14 - u(10, 45)
    body["ya"] = np.array([ya, ya, ya, ya - u(0, 25), ya - u(5, 50), ya - u(10, 90), ya - 60])
    # supine: the sacrum region rests on the table; buttocks are pressed flat, the lumbar back lifts slightly
    table = max(front(z) + 2 * float(np.interp(z, sac_z, sac_r[:, 1])) for z in (-10.0, 25.0, 60.0)) + u(12, 30)
    spinous = spine_y + 55 + 10
    body["yp"] = np.array([table - 40, table - u(25, 45), table - u(8, 25), table, max(table - u(0, 15), spinous + 12),
                           max(table - u(0, 25), spinous + 12), table - 20])
    body["n"] = np.array(u(1.9, 2.5))
    body["fat"] = np.array(u(10, 40))  # subcutaneous fat thickness
    body["glut"] = np.array(u(22, 45))
    body["flex"] = np.array(u(20, 40))
    body["buttock"] = np.array(u(25, 55))
    body["crotch"] = np.array(z_apex - u(28, 42))
    body["leg_x"] = np.array(hw + u(0, 20))
    body["leg_r"] = np.array([u(60, 85), u(65, 90)])
    body["leg_y"] = np.array(u(-5, 25))
    body["table"] = np.array(table + u(0, 4))
    clip = (sym_y + 12 + 6, s0y - 2.0, hw - rfh - 14)
    return Anatomy(hw, rfh, prostate, tz, median, ml, urethra, nodules, calcs, bladder,
                   float(u(3.5, 6.0) - 2.0 * fill), clip, rectum, sigmoid, float(u(2.0, 4.0)), balloon, svs,
                   float(sym_y), float(sym_z), body, sacrum, spine_y, extras={"bladder_ml": vb, "fill": fill})


def _bones(a: Anatomy, rng: np.random.Generator, style: dict) -> tuple[list[Prim], list[Prim]]:
    """(bones, femoral-head prims): femora, acetabula, pubis, rami, ischia, ilia, sacrum, spine."""
    u = rng.uniform
    hw, rfh = a.hw, a.rfh
    out: list[Prim] = []
    heads: list[Prim] = []
    cort = u(1.5, 3.0)
    for side in (-1, 1):  # side +1 = patient left (+x)
        s = float(side)
        c = np.array([s * hw, 0.0, 0.0])
        # femur: neck to greater trochanter, shaft; lesser trochanter
        gt = c + np.array([s * u(42, 52), u(0, 10), -u(15, 25)])
        neck_end = c + np.array([s * u(26, 34), -u(0, 8), -u(14, 22)])
        out += _prim(Tube.spline([[*c, rfh * 0.7, rfh * 0.7], [*neck_end, u(14, 17), u(14, 17)], [*gt, u(15, 19), u(15, 19)]], 3.0), bone=cort)
        shaft = Tube.spline([[*(gt + [-s * 8, 0, -10]), 17, 17], [*(c + [s * u(30, 40), u(5, 15), -90]), 14, 14],
                             [*(c + [s * u(22, 32), u(5, 15), -450]), 13, 13]], 6.0)
        out += _prim(shaft, bone=u(4, 7))
        out += _prim(Blob(c + np.array([s * u(14, 22), u(14, 20), -u(50, 60)]), np.array([9.0, 8, 11])), bone=cort)
        # acetabulum: a cup opening laterally, anteriorly and down; cartilage in the joint space
        r_in, r_out = rfh + u(1.5, 2.5), rfh + u(9, 13)
        n_open = np.array([s * 0.7, -0.25, -0.65])
        n_open /= np.linalg.norm(n_open)

        def cup(p: Pts, c: np.ndarray = c, r0: float = r_in, r1: float = r_out, n: np.ndarray = n_open) -> np.ndarray:
            dx, dy, dz = p[0] - c[0], p[1] - c[1], p[2] - c[2]
            r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6
            cover = ((dx * n[0] + dy * n[1] + dz * n[2]) / r - 0.15) * r  # > 0 where the cup is open
            return np.maximum(np.maximum(r0 - r, r - r1), cover).astype(np.float32)

        def joint(p: Pts, c: np.ndarray = c, r0: float = r_in, n: np.ndarray = n_open) -> np.ndarray:
            dx, dy, dz = p[0] - c[0], p[1] - c[1], p[2] - c[2]
            r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6
            cover = ((dx * n[0] + dy * n[1] + dz * n[2]) / r - 0.15) * r
            return np.maximum(np.maximum(rfh - r, r - r0), cover).astype(np.float32)

        lo, hi = c - r_out - 2, c + r_out + 2
        out.append(Prim(lo, hi, cup, bone=cort))
        heads.append(Prim(lo, hi, joint, layers=((0.0, T["cartilage"], 0),)))
        lab = FH_LEFT if side > 0 else FH_RIGHT
        head = Blob(c, np.array([rfh, rfh, rfh]))
        metal = style.get("prosthesis") == side
        if metal:  # a hip prosthesis: stem in the femur, metal head (still labelled as the femoral head)
            stem = Tube.spline([[*c, 6, 6], [*neck_end, 8, 8], [*(c + [s * 33, 10, -60]), 7, 7], [*(c + [s * 30, 10, -150]), 4, 4]], 3.0)
            heads += _prim(stem, layers=((0.0, T["metal"], 0),))
        heads.append(Prim(*head.bbox(1.0), head.sdf,
                          layers=((0.0, T["metal"], lab),) if metal else ((0.0, T["cortex"], lab), (-cort, T["marrow"], lab))))
        # pubic body, superior ramus, inferior ramus to the ischial tuberosity, ischium
        pb = np.array([s * u(8, 11), a.sym_y, a.sym_z])
        out += _prim(Blob(pb, np.array([u(8, 10), u(12, 16), u(18, 24)]), _rot("x", u(10, 30))), bone=cort)
        tub = np.array([s * (hw - u(35, 45)), u(35, 50), -u(45, 60)])
        out += _prim(Tube.spline([[*(pb + [0, 0, 8]), 9, 11], [*(pb + [s * 28, 5, 12]), 8, 10],
                                  [*(c + [-s * (rfh + 4), -12, 10]), 12, 14]], 3.0), bone=cort)
        out += _prim(Tube.spline([[*(pb + [0, 4, -14]), 7, 8], [*(pb + [s * 18, 18, -34]), 6, 7], [*tub, 13, 15]], 3.0), bone=cort)
        out += _prim(Tube.spline([[*(c + [-s * (rfh + 2), 22, -4]), 15, 16], [*(c + [-s * 22, 38, -30]), 14, 15], [*tub, 14, 16]], 3.0), bone=cort)
        # ilium: columns from the acetabulum and a flared wing up to the crest
        si = np.array([s * u(38, 48), u(70, 85), u(70, 90)])
        out += _prim(Tube.spline([[*(c + [-s * (rfh - 2), 15, 18]), 16, 18], [*(c + [-s * 30, 45, 45]), 16, 17], [*si, 16, 18]], 4.0), bone=cort)
        asis = c + np.array([s * u(25, 40), -u(40, 60), u(85, 110)])
        out += _prim(Tube.spline([[*(c + [0, -14, 20]), 12, 13], [*(c + [s * 10, -35, 55]), 9, 10], [*asis, 8, 8]], 4.0), bone=cort)
        wing_c = c + np.array([s * u(5, 25), u(10, 25), u(80, 105)])
        out += _prim(Blob(wing_c, np.array([u(6, 9), u(55, 70), u(40, 55)]), _rot("z", s * u(10, 25)) @ _rot("y", -s * u(25, 45))), bone=u(1.0, 1.8))
    # sacrum and coccyx: an arc of varying width; lumbar vertebrae with discs above
    out += _prim(a.sacrum, bone=cort)
    sy = float(a.sacrum.pts[:, 1].max())
    a.extras["sacrum_y"] = sy
    z, y = float(a.sacrum.pts[-1, 2]) + 12, a.spine_y
    for _ in range(5):
        h = u(25, 30)
        body = Tube.spline([[0, y, z, 24, 17], [0, y, z + h, 24, 17]], 5.0)
        out += _prim(body, bone=cort)
        zm = z + h / 2
        out += _prim(Tube.spline([[-13, y + 16, zm, 5, 6], [-11, y + 34, zm, 5, 6], [0, y + 40, zm, 5, 6], [11, y + 34, zm, 5, 6],
                                  [13, y + 16, zm, 5, 6]], 3.0), bone=cort)  # pedicles and laminae around the canal
        out += _prim(Tube.spline([[0, y + 40, zm, 4, 8], [0, y + 58, zm - 8, 4, 9]], 3.0), bone=cort)  # spinous process
        a.extras.setdefault("discs", []).append((z + h + 4.5, y))  # type: ignore[union-attr]
        z, y = z + h + 9, y - u(2, 8)
    return out, heads


def _soft(a: Anatomy, rng: np.random.Generator, style: dict) -> tuple[list[Prim], list[Prim], list[Prim]]:
    """(muscles, vessels and bowel painted before the bones; organs painted after the bones)."""
    u = rng.uniform
    hw, rfh = a.hw, a.rfh
    b = a.body
    early: list[Prim] = []
    muscles: list[Prim] = []
    musc = ((0.0, T["muscle"], 0),)
    vy = a.spine_y  # lumbar vertebral-body centre (y)
    sy = float(np.interp(45.0, a.sacrum.pts[:, 2], a.sacrum.pts[:, 1]))
    bl_top = float(a.bladder.center[2] + a.bladder.radii[2])
    # small bowel loops and the sigmoid colon above the bladder
    contents = ("fluid", "gas", "feces")
    for _ in range(int(rng.integers(6, 14))):
        p = np.array([u(-hw + 25, hw - 25), u(-60, 40), u(bl_top - 5, bl_top + 160)])
        pts = [p]
        for _ in range(3):
            p = p + _sphere_dirs(rng, 1)[0] * u(20, 40)
            pts.append(p)
        r = u(8, 15)
        early += _prim(Tube.spline([[*q, r, r] for q in pts], 4.0), custom=_bowel_painter(rng, str(rng.choice(contents)), u(1.5, 3)))
    early += _prim(a.sigmoid, custom=_bowel_painter(rng, str(rng.choice(contents)), 3.0))
    for zc, y in a.extras.get("discs", []):  # type: ignore[union-attr]
        early += _prim(Tube.spline([[0, y, zc - 5, 23, 16], [0, y, zc + 5, 23, 16]], 5.0), layers=((0.0, T["disc"], 0),))
    for side in (-1, 1):
        s = float(side)
        # iliopsoas: beside the lumbar spine, over the pelvic brim, in front of the hip to the lesser trochanter
        muscles += _prim(Tube.spline([[s * 30, vy, 300, 14, 16], [s * 42, vy - 5, 170, 20, 22], [s * (hw - 35), vy - 50, 80, 22, 24],
                                      [s * (hw - 12), -rfh - 12, 15, 18, 16], [s * (hw + 5), -8, -55, 14, 13]], 5.0), musc)
        muscles += _prim(Blob(np.array([s * (hw - rfh - u(13, 18)), u(12, 24), -u(15, 30)]), np.array([u(7, 11), u(30, 38), u(24, 32)]),
                              _rot("z", -s * u(5, 20))), musc)  # obturator internus, on the inner side wall
        muscles += _prim(Blob(np.array([s * (hw - u(35, 42)), -u(0, 10), -u(40, 50)]), np.array([14.0, 9, 18]), _rot("y", s * 25)), musc)
        muscles += _prim(Tube.spline([[s * 22, sy - 5, 45, 10, 14], [s * (hw - 10), 35, 5, 12, 12], [s * (hw + 40), 15, -20, 9, 9]], 4.0), musc)
        muscles += _prim(Tube.spline([[s * u(25, 35), vy + 45, 95, 18, 22], [s * u(28, 38), vy + 45, 500, 26, 30]], 20.0), musc)
        zz = np.array([a.sym_z + 25, 120, 220, 420])
        yy = np.interp(zz, b["z"], b["ya"]) + float(b["fat"]) + 7
        muscles += _prim(Tube.spline([[s * u(28, 38), y, z_, 28, 6] for y, z_ in zip(yy, zz, strict=True)], 8.0), musc)
        # vessels: common -> external iliac -> femoral (artery lateral to vein); internal iliac on the side wall
        art = T["artery"]
        for kind, dx, r in (("artery", 0.0, u(3.5, 5.0)), ("vein", -s * 10, u(5.0, 7.5))):
            t = T[kind]
            early += _prim(Tube.spline([[s * 12 + dx, vy - 28, 150, r + 1, r + 1], [s * 45 + dx, vy - 25, 100, r, r],
                                        [s * (hw - 28) + dx, -22, 35, r, r], [s * (hw - 22) + dx, -rfh - 16, -10, r, r],
                                        [s * (hw - 18) + dx, -rfh - 20, -120, r * 0.9, r * 0.9]], 4.0), ((0.0, t, 0),))
        early += _prim(Tube.spline([[s * 45, vy - 20, 95, 3.5, 3.5], [s * (hw - rfh - 8), vy - 30, 40, 3, 3],
                                    [s * (hw - rfh - 12), 25, -10, 2.5, 2.5]], 4.0), ((0.0, art, 0),))
    # levator ani: a U-shaped funnel around the rectum, open anteriorly
    cp = a.prostate.center
    z_apex = float(cp[2] - a.prostate.radii[2])
    y_rect = float(np.interp(z_apex, a.rectum.pts[:, 2], a.rectum.pts[:, 1]))
    apex = np.array([0.0, 0.5 * (cp[1] + y_rect), z_apex - u(15, 25)])
    r0, ang, thick = u(14, 22), np.tan(np.radians(u(28, 42))), u(4.0, 7.0)
    y_cut = float(cp[1] - a.prostate.radii[1] * 0.3)

    def funnel(p: Pts) -> np.ndarray:
        h = p[2] - apex[2]
        r = np.sqrt((p[0] - apex[0]) ** 2 + ((p[1] - apex[1]) * 1.2) ** 2)
        shell = np.abs(r - r0 - np.maximum(h, 0) * ang) - thick / 2
        return np.maximum(np.maximum(shell, -h), np.maximum(h - 70, y_cut - p[1])).astype(np.float32)

    muscles.append(Prim(apex - [90, 90, 0], apex + [90, 90, 75], funnel, musc))
    gen = Blob(np.array([0, a.sym_y - u(15, 30), float(b["crotch"]) - u(5, 20)]), np.array([u(20, 30), u(18, 28), u(25, 40)]))
    early += _prim(gen, ((0.0, T["genital"], 0),))
    return early, muscles, _organs(a, rng, style)


def _bowel_painter(rng: np.random.Generator, content: str, wall: float) -> Painter:
    mottle = _wave_noise(rng, 6, (5.0, 12.0))
    level = rng.uniform(-3, 3)

    def paint(sdf: np.ndarray, p: Pts, cls: np.ndarray, lab: np.ndarray) -> None:
        inside = sdf < 0
        cls[inside], lab[inside] = T["bowel_wall"], 0
        lumen = sdf < -wall
        if content == "gas":
            cls[lumen & (sdf < -wall - 1 + level)] = T["gas"]
            cls[lumen & (sdf >= -wall - 1 + level)] = T["fluid"]
        elif content == "feces":
            cls[lumen] = T["feces"]
            cls[lumen & (mottle(p) > 0.9)] = T["gas"]
        else:
            cls[lumen] = T["fluid"]

    return paint


def _organs(a: Anatomy, rng: np.random.Generator, style: dict) -> list[Prim]:
    """Rectum, seminal vesicles, bladder, prostate (zones), neurovascular bundles, devices."""
    u = rng.uniform
    pr, tz, ml = a.prostate, a.tz, a.median_lobe
    out: list[Prim] = []

    def gland(p: Pts) -> np.ndarray:
        d = pr.sdf(p)
        if ml is not None:
            d = _smin(d, ml.sdf(p), 4.0)
        if a.balloon is not None:
            d = np.maximum(d, 3.0 - a.balloon.sdf(p))
        return d

    lo, hi = pr.bbox(4.0)
    if ml is not None:
        lo, hi = np.minimum(lo, ml.bbox(4)[0]), np.maximum(hi, ml.bbox(4)[1])
    # rectum: carved by the prostate, wall + contents; anal canal collapsed
    content = style["rectum"]
    mottle = _wave_noise(rng, 6, (5.0, 14.0))
    gas_level = float(np.percentile(a.rectum.pts[:, 1], 30) + u(-8, 4))
    wall = a.rectal_wall
    z_canal = float(a.rectum.pts[0, 2] + 25)

    def rect_paint(sdf: np.ndarray, p: Pts, cls: np.ndarray, lab: np.ndarray) -> None:
        inside = sdf < 0
        cls[inside], lab[inside] = T["rectal_wall"], RECTUM
        lumen = (sdf < -wall) & (p[2] > z_canal) if content != "collapsed" else (sdf < -wall - 4)
        if content == "gas":
            cls[lumen] = T["fluid"]
            cls[lumen & (p[1] < gas_level)] = T["gas"]
        elif content == "feces":
            cls[lumen] = T["feces"]
            cls[lumen & ((mottle(p) > 0.8) | (p[1] < gas_level - 6))] = T["gas"]
        else:
            cls[lumen] = T["fluid"]

    for piece in _prim(a.rectum, pad=2.0):
        out.append(Prim(piece.lo, piece.hi, (lambda p, f=piece.sdf: np.maximum(f(p), 2.0 - gland(p))), custom=rect_paint))
    if a.balloon is not None:
        out.append(Prim(*a.balloon.bbox(2.0), a.balloon.sdf, layers=((0.0, T["rectal_wall"], RECTUM), (-1.5, T["balloon"], RECTUM))))
    # seminal vesicles: convoluted fluid-filled tubes
    sv_sep = _wave_noise(rng, 5, (3.0, 6.0))
    for t in a.svs:
        def sv_paint(sdf: np.ndarray, p: Pts, cls: np.ndarray, lab: np.ndarray) -> None:
            inside = sdf < 0
            cls[inside], lab[inside] = T["sv_wall"], 0
            cls[(sdf < -1.0) & (sv_sep(p) < 0.9)] = T["sv_fluid"]

        out += _prim(t, custom=sv_paint)
    # bladder: clipped by the pubis, the seminal vesicles and the pelvic side walls; wraps the prostate base
    y_ant, y_post, x_half = a.bladder_clip
    sym_top = a.sym_z + 20
    ya_wall = float(np.interp(sym_top + 60, a.body["z"], a.body["ya"]) + a.body["fat"] + 20)
    bwall = a.bladder_wall

    def bl_sdf(p: Pts) -> np.ndarray:
        d = a.bladder.sdf(p)
        y_front = y_ant + (ya_wall - y_ant) * np.clip((p[2] - sym_top) / 60.0, 0, 1)
        d = _smax(d, y_front - p[1], 6.0)
        d = _smax(d, p[1] - y_post - np.clip(p[2] - a.svs[0].pts[:, 2].max(), 0, None) * 0.6, 6.0)
        d = _smax(d, np.abs(p[0]) - x_half, 8.0)
        return np.maximum(d, 1.5 - gland(p))

    contrast = style.get("bladder_contrast")
    c_level = float(a.bladder.center[1] + a.bladder.radii[1] * u(-0.3, 0.6))
    foley = style.get("foley", False)
    fb = Blob(pr.center + pr.axes[:, 2] * (pr.radii[2] + u(9, 13)), np.full(3, u(9, 12)))

    def bl_paint(sdf: np.ndarray, p: Pts, cls: np.ndarray, lab: np.ndarray) -> None:
        inside = sdf < 0
        cls[inside], lab[inside] = T["bladder_wall"], BLADDER
        lumen = sdf < -bwall
        cls[lumen] = T["urine"]
        if contrast == "mixed":
            cls[lumen] = T["contrast"]
        elif contrast == "layer":
            cls[lumen & (p[1] > c_level)] = T["contrast"]
        if foley:
            f = fb.sdf(p)
            cls[inside & (f < 0)] = T["catheter"]
            cls[inside & (f < -0.8)] = T["urine"]

    blo, bhi = a.bladder.bbox(3.0)
    out.append(Prim(blo, bhi, bl_sdf, custom=bl_paint))
    # prostate: venous plexus rim, zones, urethra, nodules, calcifications
    inverted = style.get("zones") == "inverted"
    tz_mottle = _wave_noise(rng, 8, (4.0, 10.0))
    plexus, capsule = u(0.8, 2.5), u(0.4, 1.0)
    calc = style.get("calcifications", False)

    def pr_paint(sdf: np.ndarray, p: Pts, cls: np.ndarray, lab: np.ndarray) -> None:
        q = pr.local(p)
        rim = (sdf >= 0) & (sdf < plexus) & (q[1] < 0.3) & (lab == 0)
        cls[rim] = T["plexus"]
        inside = sdf < 0
        cls[inside], lab[inside] = T["capsule"], PROSTATE
        cls[sdf < -capsule] = T["pz"]
        trans = inside & (tz.sdf(p) < 0)
        if ml is not None:
            trans |= inside & (ml.sdf(p) < -1.5)
        cls[trans] = T["tz"]
        cls[inside & (q[1] < -0.55) & ~trans] = T["afs"]
        cls[inside & (np.abs(q[0]) < 0.35) & (q[1] > 0.05) & (q[2] > 0.35) & ~trans] = T["cz"]
        cls[trans & (tz_mottle(p) > 1.2)] = T["nodule_dark"]

    out.append(Prim(lo - plexus, hi + plexus, gland, custom=pr_paint))
    # small structures inside the gland, each evaluated in its own box
    in_tz = (T["tz"], T["nodule_dark"])
    for k, nd in enumerate(a.nodules):
        kind = T["nodule_dark" if (k % 3 or inverted) else "nodule_bright"]
        out.append(Prim(*nd.bbox(1.0), nd.sdf, custom=lambda d, p, cls, lab, kind=kind: cls.__setitem__(
            (d < 0) & np.isin(cls, in_tz), kind)))
    inner: list[tuple[Blob | Tube, int]] = [(a.urethra, T["urethra"])]
    inner += [(c, T["calcification"]) for c in a.calcs] if calc else []
    for shape, kind in inner:
        out += _prim(shape, pad=1.0, custom=lambda d, p, cls, lab, kind=kind: cls.__setitem__((d < 0) & (lab == PROSTATE), kind))
    if foley:  # the catheter runs in the urethra up into the bladder balloon
        out += _prim(a.urethra, pad=1.0, custom=lambda d, p, cls, lab: cls.__setitem__((d < -0.5) & (lab == PROSTATE), T["catheter"]))
    # neurovascular bundles: posterolateral to the gland
    for side in (-1, 1):
        c = pr.center + pr.axes @ (pr.radii * np.array([side * 0.8, 0.75, 0]))
        t = Tube.spline([[*(c + pr.axes[:, 2] * pr.radii[2] * 1.2), 2.5, 2.5], [*c + side * np.array([2.5, 0, 0]), 2.2, 2.2],
                         [*(c - pr.axes[:, 2] * pr.radii[2] * 1.1 - side * np.array([4, 0, 0])), 2, 2]], 3.0)
        out += _prim(t, custom=lambda sdf, p, cls, lab: cls.__setitem__((sdf < 0) & (lab == 0), T["nvb"]))
    return out


def _body_fields(p: Pts, a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """(skin SDF, muscle SDF) in mm on points ``p``: a superellipse trunk with buttocks and a natal
    cleft, two thighs below the crotch, flattened on the table; muscle = gluteal / abdominal-wall
    band under the subcutaneous fat, and the thighs' muscle."""
    x, y, z = p
    b = a.body
    zf = z.ravel()
    hwz, ya, yp = (np.interp(zf, b["z"], b[k]).reshape(z.shape).astype(np.float32) for k in ("hw", "ya", "yp"))
    low = np.clip((60 - z) / 50, 0, 1)
    yp = yp + low * (float(b["buttock"]) * np.exp(-((np.abs(x) - 0.42 * hwz) / (0.3 * hwz)) ** 2) - 9 * np.exp(-(x / 10) ** 2))
    yc, hb = (ya + yp) / 2, (yp - ya) / 2
    n = float(b["n"])
    ux, vy = np.abs(x) / hwz, np.abs(y - yc) / hb
    back = y > yc
    rho = np.where(back, (ux ** (n + 0.6) + vy ** (n + 0.6)) ** (1 / (n + 0.6)), (ux ** n + vy ** n) ** (1 / n)) + 1e-6
    trunk = (rho - 1) / rho * np.sqrt(x ** 2 + (y - yc) ** 2)
    depth = -np.maximum(trunk, y - float(b["table"]))  # within the cross-section (for the muscle layer)
    crotch = float(b["crotch"])  # perineum; the buttocks reach lower behind, the trunk merges into the thighs at the sides
    z_cut = crotch - 30 * np.clip((y - yc) / hb, 0, 1) - 40 * np.clip(np.abs(x) / hwz, 0, 1) ** 2
    trunk = _smax(trunk, z_cut - z, 20.0)
    lr = b["leg_r"]
    shrink = 1 - 0.0009 * np.clip(-150 - z, 0, None)
    legs = None
    for s in (-1, 1):
        dx, dy = (x - s * float(b["leg_x"])) / (lr[0] * shrink), (y - float(b["leg_y"])) / (lr[1] * shrink)
        r = np.sqrt(dx ** 2 + dy ** 2) + 1e-6
        d = (r - 1) * lr.min() * shrink
        legs = d if legs is None else np.minimum(legs, d)
    assert legs is not None
    legs = np.maximum(legs, z - crotch - 25)
    skin = _smin(trunk, legs, 15.0)
    skin = np.maximum(skin, y - float(b["table"]))
    fat = float(b["fat"])
    phi = np.degrees(np.arctan2(y - yc, np.abs(x) + 1e-6))  # 0 lateral, +90 posterior midline, -90 anterior
    win = np.clip((130 - z) / 30, 0, 1) * np.clip((z + 110) / 30, 0, 1)
    glut = np.clip((phi + 15) / 20, 0, 1) * np.clip((62 - phi) / 15, 0, 1)  # gluteal muscles, lateral to posterolateral
    flex = np.clip((phi + 65) / 15, 0, 1) * np.clip((-5 - phi) / 15, 0, 1) * np.clip((70 - z) / 30, 0, 1)  # hip flexors
    rect = np.clip((z - a.sym_z - 20) / 20, 0, 1) * np.clip((-20 - phi) / 20, 0, 1)  # abdominal wall
    t_m = float(b["glut"]) * win * glut + float(b["flex"]) * win * flex + 10 * rect
    reach = 0.42 * np.sqrt(x ** 2 + (y - yc) ** 2) / rho  # muscles stay in the outer part of each ray
    band = np.maximum(fat - depth, depth - np.minimum(fat + t_m, np.maximum(reach, fat + 5)))
    band = np.where(t_m > 1, band, 99.0)
    thigh = np.maximum(legs + fat, z - crotch - 10)
    return skin.astype(np.float32), np.minimum(band, thigh).astype(np.float32)


def sample_style(rng: np.random.Generator, modality: str, slot: int | None = None) -> dict:
    """Acquisition and content choices of one case; ``slot`` (the seed) stratifies the MR contrast
    so that a few consecutive seeds already cover T2, fat-suppressed T2 and T1."""
    u = rng.uniform
    st: dict = {"modality": modality, "rectum": str(rng.choice(["gas", "feces", "fluid", "collapsed"], p=[0.3, 0.35, 0.15, 0.2]))}
    st["prosthesis"] = int(rng.choice([-1, 1])) if rng.random() < 0.12 else None
    if modality == "ct":
        st["iv_contrast"] = bool(rng.random() < 0.3)
        st["bladder_contrast"] = rng.choice([None, "layer", "mixed"], p=[0.72, 0.18, 0.10])
        st["foley"] = bool(rng.random() < 0.08)
        st["calcifications"] = bool(rng.random() < 0.4)
        st["noise"] = u(6, 35)
        st["kernel"] = u(0.3, 0.8)  # reconstruction kernel blur = in-plane noise correlation (sigma, mm)
        st["cupping"] = u(0, 12)
        st["pad"] = rng.choice([None, -1024, -2048, -3024], p=[0.4, 0.3, 0.15, 0.15])
        st["dtype"] = str(rng.choice(["int16", "float32"], p=[0.8, 0.2]))
        st["table"] = bool(rng.random() < 0.92)
    else:
        st["contrast"] = str(rng.choice(["t2", "t2fs", "t1"], p=[0.6, 0.2, 0.2]))
        if slot is not None:
            st["contrast"] = ("t2", "t2fs", "t2", "t1", "t2")[slot % 5]
        st["zones"] = "inverted" if (st["contrast"] != "t1" and rng.random() < 0.12) else "normal"
        st["endorectal"] = bool(st["contrast"] != "t1" and rng.random() < 0.15)
        if st["endorectal"]:
            st["rectum"] = "fluid"
        st["prosthesis"] = None
        st["calcifications"] = bool(rng.random() < 0.3)
        st["noise"] = u(0.01, 0.06)
        st["bias"] = u(0.3, 0.85)
        st["range"] = str(rng.choice(["float1000", "uint4095", "int16", "unit"], p=[0.35, 0.35, 0.2, 0.1]))
    return st


def _direction(rng: np.random.Generator, kind: str, modality: str) -> np.ndarray:
    if kind == "RAS":
        return np.diag([-1.0, -1.0, 1.0])
    if kind == "LPI":
        return np.diag([1.0, 1.0, -1.0])
    if kind == "oblique":
        ang = rng.uniform(4, 15) if modality == "ct" else rng.uniform(6, 25)
        d = _rot("x", float(rng.choice([-1, 1])) * ang)
        if modality == "mr":
            d = _rot("z", rng.normal(0, 3)) @ _rot("y", rng.normal(0, 3)) @ d
            if rng.random() < 0.4:
                d = d @ np.diag([-1.0, -1.0, 1.0])
        return d
    return np.eye(3)


def sample_grid(rng: np.random.Generator, a: Anatomy, modality: str, max_voxels: int | None = None,
                slot: int | None = None) -> tuple[Grid, dict]:
    """Field of view, spacing, slice thickness, direction and patient pose of one case; ``slot``
    (the seed) stratifies the kind of field of view over consecutive seeds."""
    u = rng.uniform
    b = a.body
    cp = a.prostate.center
    info: dict = {}
    if modality == "ct":
        kind = str(rng.choice(["pelvis", "abdomen-pelvis", "tight"], p=[0.55, 0.25, 0.2]))
        if slot is not None:
            kind = ("pelvis", "abdomen-pelvis", "pelvis", "tight")[slot % 4]
        n_xy = int(rng.choice([512, 384, 448], p=[0.75, 0.15, 0.1]))
        if kind == "tight":
            fov = u(220, 300)
            cxy = np.array([cp[0] + rng.normal(0, 8), cp[1] + rng.normal(0, 10)])
            z_lo, z_hi = cp[2] - u(55, 80), cp[2] + u(55, 85)
        else:
            fov = max(2 * float(b["hw"].max()), float(b["yp"].max() - b["ya"].min()) + 40) * u(1.03, 1.25)
            cxy = np.array([rng.normal(0, 5), (b["ya"][3] + b["yp"][3]) / 2 + 15 + rng.normal(0, 8)])
            z_lo, z_hi = (-u(100, 140), u(110, 170)) if kind == "pelvis" else (-u(90, 120), u(240, 300))
        sp = float(np.clip(fov / n_xy, 0.4, 1.2))
        sz = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0], p=[0.1, 0.1, 0.1, 0.15, 0.25, 0.2, 0.1]))
        dir_kind = str(rng.choice(["LPS", "RAS", "LPI", "oblique"], p=[0.45, 0.3, 0.1, 0.15]))
        spacing = np.array([sp, sp, sz])
    else:
        kind = str(rng.choice(["2d", "3d", "large"], p=[0.65, 0.2, 0.15]))
        if slot is not None:
            kind = ("2d", "2d", "3d", "2d", "large", "2d", "3d")[slot % 7]
        if kind == "large":
            fov, n_xy = u(300, 420), int(rng.choice([256, 320, 384]))
            cxy = np.array([rng.normal(0, 5), (b["ya"][2] + b["yp"][2]) / 2 + rng.normal(0, 10)])
            sz = u(4.0, 5.0)
            z_lo, z_hi = cp[2] - u(60, 100), cp[2] + u(90, 160)
            spacing = np.array([0, 0, sz])
        else:
            fov = u(max(175.0, 2 * a.hw + 5), 280)
            cxy = np.array([cp[0] + rng.normal(0, 6), cp[1] + rng.normal(0, 10)])
            ext = u(70, 120) if kind == "2d" else u(90, 140)
            z_lo = cp[2] - ext * u(0.35, 0.55)
            z_hi = z_lo + ext
            if kind == "2d":
                n_xy = int(rng.choice([256, 320, 384, 448, 512]))
                spacing = np.array([0, 0, u(2.5, 5.0)])
            else:
                iso = u(0.6, 1.0)
                n_xy = int(round(fov / iso))
                spacing = np.array([0, 0, max(iso, ext / 150)])
        sp = float(np.clip(fov / n_xy, 0.4, 1.2))
        spacing[:2] = sp
        dir_kind = str(rng.choice(["oblique", "LPS", "RAS", "LPI"], p=[0.45, 0.25, 0.2, 0.1]))
    spacing[2] = max(spacing[2], (z_hi - z_lo) / 150)  # at most 150 slices: long ranges get thicker slices
    n_z = int(max(8, round((z_hi - z_lo) / spacing[2])))
    shape = np.array([n_z, n_xy, n_xy])
    if max_voxels is not None and shape.prod() > max_voxels:  # coarsen the finest axes first, keep the extent
        extent = shape[::-1] * spacing
        lo_e, hi_e = float(spacing.min()), float(extent.max())
        for _ in range(40):
            e = 0.5 * (lo_e + hi_e)
            lo_e, hi_e = (e, hi_e) if np.prod(np.ceil(extent / np.maximum(spacing, e))) > max_voxels else (lo_e, e)
        spacing = np.maximum(spacing, hi_e)
        shape = np.maximum(8, np.round(extent / spacing)).astype(int)[::-1]
        spacing = extent / shape[::-1]
    sub = int(np.clip(round(spacing[2] / 1.6), 1, 3))
    sub = max(1, min(sub, int(24e6 // shape.prod())))
    direction = _direction(rng, dir_kind, modality)
    pose = _rot("z", rng.normal(0, 2.5)) @ _rot("y", rng.normal(0, 2.5)) @ _rot("x", rng.normal(0, 5))
    shift = np.array([u(-30, 30), u(-250, 100), u(-900, 200)])
    center = pose @ np.array([cxy[0], cxy[1], (z_lo + z_hi) / 2]) + shift
    origin = center - direction @ (spacing * (shape[::-1] - 1) / 2)
    grid = Grid(tuple(int(v) for v in shape), spacing, origin, direction, sub, pose, shift)  # type: ignore[arg-type]
    info.update(fov_kind=kind, direction_kind=dir_kind, sub_slices=sub)
    return grid, info


# ---- intensities ------------------------------------------------------------------------------
# tissue -> (mean, coarse texture sd, fine texture sd); CT in HU, MR in relative units (fat ≈ 0.8)
_CT = {"air": (-1000, 0, 0), "table": (-450, 40, 20), "table_shell": (300, 30, 20), "fat": (-100, 8, 6), "skin": (25, 5, 5),
       "muscle": (50, 4, 5), "cortex": (1150, 160, 120), "marrow": (230, 60, 90), "cartilage": (75, 5, 5), "disc": (85, 8, 8),
       "urine": (8, 2, 2), "contrast": (550, 60, 20), "bladder_wall": (42, 4, 4), "pz": (36, 4, 4), "tz": (41, 5, 5), "cz": (39, 3, 3),
       "afs": (46, 3, 3), "urethra": (30, 3, 3), "nodule_dark": (38, 3, 3), "nodule_bright": (46, 3, 3), "calcification": (650, 150, 100),
       "plexus": (38, 4, 4), "capsule": (40, 3, 3), "sv_fluid": (25, 4, 4), "sv_wall": (40, 4, 4), "rectal_wall": (42, 4, 4), "gas": (-970, 20, 15),
       "feces": (-20, 60, 110), "fluid": (12, 5, 5), "balloon": (-900, 10, 10), "bowel_wall": (42, 5, 5), "artery": (42, 3, 3),
       "vein": (40, 3, 3), "nvb": (38, 4, 4), "metal": (3071, 0, 0), "catheter": (180, 20, 10), "genital": (35, 6, 6)}
_T2 = {"air": (0, 0, 0), "table": (0, 0, 0), "table_shell": (0, 0, 0), "fat": (0.8, 0.08, 0.05), "skin": (0.4, 0.05, 0.05),
       "muscle": (0.17, 0.03, 0.025), "cortex": (0.02, 0.01, 0.01), "marrow": (0.55, 0.05, 0.08), "cartilage": (0.35, 0.03, 0.03),
       "disc": (0.6, 0.05, 0.05), "urine": (1.0, 0.02, 0.02), "contrast": (1.0, 0.02, 0.02), "bladder_wall": (0.14, 0.02, 0.02),
       "pz": (0.7, 0.06, 0.06), "tz": (0.34, 0.05, 0.08), "cz": (0.24, 0.03, 0.03), "afs": (0.12, 0.02, 0.02),
       "urethra": (0.5, 0.03, 0.03), "nodule_dark": (0.22, 0.03, 0.04), "nodule_bright": (0.58, 0.05, 0.05),
       "calcification": (0.05, 0.01, 0.01), "plexus": (0.75, 0.08, 0.06), "capsule": (0.15, 0.02, 0.02), "sv_fluid": (0.85, 0.05, 0.05), "sv_wall": (0.2, 0.03, 0.03),
       "rectal_wall": (0.26, 0.04, 0.04), "gas": (0.01, 0.0, 0.0), "feces": (0.32, 0.08, 0.12), "fluid": (0.9, 0.04, 0.04),
       "balloon": (0.03, 0.01, 0.01), "bowel_wall": (0.3, 0.04, 0.04), "artery": (0.04, 0.02, 0.02), "vein": (0.45, 0.1, 0.05),
       "nvb": (0.1, 0.02, 0.02), "metal": (0.0, 0.0, 0.0), "catheter": (0.05, 0.0, 0.0), "genital": (0.6, 0.06, 0.05)}
_T2FS = {**_T2, "fat": (0.09, 0.02, 0.02), "marrow": (0.12, 0.03, 0.03), "muscle": (0.24, 0.02, 0.02), "skin": (0.3, 0.04, 0.04)}
_T1 = {**_T2, "fat": (0.85, 0.05, 0.04), "muscle": (0.33, 0.02, 0.02), "urine": (0.08, 0.01, 0.01), "contrast": (0.08, 0.01, 0.01),
       "bladder_wall": (0.35, 0.02, 0.02), "pz": (0.38, 0.02, 0.03), "tz": (0.38, 0.02, 0.03), "cz": (0.37, 0.02, 0.02),
       "afs": (0.33, 0.02, 0.02), "urethra": (0.36, 0.02, 0.02), "nodule_dark": (0.37, 0.02, 0.02), "nodule_bright": (0.4, 0.02, 0.02),
       "plexus": (0.35, 0.03, 0.03), "capsule": (0.33, 0.02, 0.02), "sv_fluid": (0.3, 0.02, 0.02), "sv_wall": (0.34, 0.02, 0.02), "marrow": (0.75, 0.05, 0.07),
       "disc": (0.3, 0.03, 0.03), "fluid": (0.15, 0.02, 0.02), "feces": (0.4, 0.06, 0.1), "vein": (0.3, 0.05, 0.03),
       "cartilage": (0.3, 0.02, 0.02), "genital": (0.35, 0.03, 0.03), "skin": (0.5, 0.05, 0.05), "rectal_wall": (0.35, 0.03, 0.03)}
_STRIATED = ("muscle",)


def _tables(rng: np.random.Generator, style: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-tissue (mean, coarse sd, fine sd, septum amplitude, small-vessel amplitude) for one case,
    each mean jittered."""
    if style["modality"] == "ct":
        tab = dict(_CT)
        if style["iv_contrast"]:
            for k, add in (("artery", u := rng.uniform(150, 300)), ("vein", u * 0.7), ("pz", rng.uniform(25, 50)),
                           ("tz", rng.uniform(35, 70)), ("bladder_wall", 40), ("bowel_wall", 40), ("plexus", u * 0.5),
                           ("muscle", 10), ("nodule_bright", 70), ("genital", 40)):
                m, s1, s2 = tab[k]
                tab[k] = (m + add, s1 + 0.1 * add, s2)
        tab["contrast"] = (rng.uniform(200, 1000), 40, 20)
        jit = lambda m: m + rng.normal(0, 6) if -200 < m < 200 else m + rng.normal(0, 0.05 * abs(m))  # noqa: E731
    else:
        tab = dict({"t2": _T2, "t2fs": _T2FS, "t1": _T1}[style["contrast"]])
        if style.get("zones") == "inverted":
            tab["pz"], tab["tz"] = (0.3, 0.04, 0.05), (0.55, 0.05, 0.08)
        jit = lambda m: m * rng.uniform(0.85, 1.15)  # noqa: E731
    mean = np.array([jit(tab[t][0]) for t in TISSUES], np.float32)
    for fixed in ("air", "metal", "gas"):
        mean[T[fixed]] = tab[fixed][0] if style["modality"] == "ct" or fixed != "gas" else mean[T[fixed]]
    s1 = np.array([tab[t][1] for t in TISSUES], np.float32)
    s2 = np.array([tab[t][2] for t in TISSUES], np.float32)
    strand = np.zeros(len(TISSUES), np.float32)
    fat = mean[T["fat"]]
    strand[T["fat"]] = (mean[T["muscle"]] - fat) * rng.uniform(0.4, 0.8)  # septa have soft-tissue values
    strand[T["muscle"]] = (fat - mean[T["muscle"]]) * rng.uniform(0.15, 0.35)  # fatty septa between muscle bundles
    for t in _STRIATED:
        s2[T[t]] *= rng.uniform(1.5, 3.0)
    dots = np.zeros(len(TISSUES), np.float32)
    dots[T["fat"]] = (mean[T["vein"]] - fat) * rng.uniform(0.3, 0.8)
    return mean, s1, s2, strand, dots


# ---- rendering --------------------------------------------------------------------------------
def _table_prim(a: Anatomy, rng: np.random.Generator) -> list[Prim]:
    """The CT patient table under the body: a low-density core in a dense shell, curved up at the sides."""
    top = float(a.body["table"]) + rng.uniform(0.2, 1.5)
    th, half, curve = rng.uniform(12, 30), rng.uniform(190, 240), rng.uniform(0, 4e-4)

    def sdf(p: Pts) -> np.ndarray:
        yy = p[1] + curve * p[0] ** 2
        return np.maximum(np.maximum(top - yy, yy - top - th), np.abs(p[0]) - half).astype(np.float32)

    shell = rng.uniform(1.0, 2.5)
    return [Prim(np.array([-half - 5, top - 30, -2000]), np.array([half + 5, top + th + 5, 2000]), sdf,
                 layers=((0.0, T["table_shell"], 0), (-shell, T["table"], 0)))]


def _up2(d: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """Linear 2× upsampling of the last two axes of ``d`` to (…, ny, nx)."""
    for ax, n in ((1, ny), (2, nx)):
        m = d.shape[ax]
        shape = list(d.shape)
        shape[ax] = 2 * m
        out = np.empty(shape, np.float32)
        sl = [slice(None)] * 3
        sl[ax] = slice(0, None, 2)
        out[tuple(sl)] = d
        sl[ax] = slice(1, 2 * m - 2, 2)
        a0 = [slice(None)] * 3
        a1 = [slice(None)] * 3
        a0[ax], a1[ax] = slice(0, m - 1), slice(1, m)
        out[tuple(sl)] = 0.5 * (d[tuple(a0)] + d[tuple(a1)])
        sl[ax] = slice(2 * m - 1, 2 * m)
        a0[ax] = slice(m - 1, m)
        out[tuple(sl)] = d[tuple(a0)]
        sl[ax] = slice(0, n)
        d = out[tuple(sl)]
    return d


def _paint(pr: Prim, box: tuple[slice, slice, slice], zs: slice, grid: Grid, cls: np.ndarray, lab: np.ndarray,
           layers: tuple[tuple[float, int, int], ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Paint one prim into the slab ``zs`` (cls/lab are the slab arrays); returns (sdf, cls view, lab view)."""
    z0, z1 = max(box[0].start, zs.start), min(box[0].stop, zs.stop)
    if z1 <= z0:
        return None
    ny, nx = box[1].stop - box[1].start, box[2].stop - box[2].start
    if pr.custom is None and all(lv <= 0 for _, _, lv in pr.layers) and grid.spacing[0] < 0.9 and min(ny, nx) > 6:
        # an unlabelled structure on a fine grid: its SDF at every other voxel in-plane, interpolated
        p = grid.points(slice(z0, z1), box[1], box[2], 2)
        d = _up2(pr.sdf(p), ny, nx)
    else:
        p = grid.points(slice(z0, z1), box[1], box[2])
        d = pr.sdf(p)
    c = cls[z0 - zs.start:z1 - zs.start, box[1], box[2]]
    lb = lab[z0 - zs.start:z1 - zs.start, box[1], box[2]]
    for thr, t, lv in (pr.layers if layers is None else layers):
        m = d < thr
        c[m] = t
        if lv >= 0:
            lb[m] = lv
    if pr.custom is not None and layers is None:
        pr.custom(d, p, c, lb)
    return d, c, lb


def _coil(grid: Grid, a: Anatomy, style: dict, rng: np.random.Generator) -> tuple[Coarse, np.ndarray]:
    """MR receive-coil sensitivity (multiplicative bias) on a coarse lattice: anterior and
    posterior array elements, plus an endorectal coil when present."""
    co = Coarse(grid, 8.0)
    x, y, z = co.points()
    cp = a.prostate.center
    elems = []
    for yy in (float(np.interp(cp[2], a.body["z"], a.body["ya"])) - 25, float(a.body["yp"].max()) + 25):
        for _ in range(int(rng.integers(2, 5))):
            elems.append((np.array([rng.uniform(-120, 120), yy, cp[2] + rng.uniform(-80, 80)]), rng.uniform(70, 150), rng.uniform(0.6, 1.4)))
    if a.balloon is not None:
        elems.append((a.balloon.center, rng.uniform(15, 25), rng.uniform(6, 12)))

    def sens(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
        return sum(w / (1 + ((px - c[0]) ** 2 + (py - c[1]) ** 2 + (pz - c[2]) ** 2) / L ** 2) for c, L, w in elems)  # type: ignore[return-value]

    s = sens(x, y, z)
    inside = _body_fields((x, y, z), a)[0] < -10
    s = s / (np.median(s[inside]) if inside.any() else s.mean())
    bias = float(style["bias"])
    field = (1 - bias) + bias * s
    field *= np.exp(0.15 * co.noise(rng, 60.0))
    return co, field.astype(np.float32)


def _streaks(grid: Grid, a: Anatomy, rng: np.random.Generator) -> Callable[[int, np.ndarray], None]:
    """Metal artefacts of a hip prosthesis in the axial reconstruction plane: bright and dark streaks
    radiating from the metal (head and stem) and a dark band towards the other hip, fading with
    the distance of the slice from the metal. Returns f(slice index, slice) adding them in place."""
    side = float(a.extras["prosthesis"])  # type: ignore[arg-type]
    src = [(np.array([side * a.hw, 0, 0]), 1.0, a.rfh * 0.9), (np.array([side * (a.hw + 32), 10, -60]), 0.5, 12.0),
           (np.array([side * (a.hw + 30), 10, -120]), 0.35, 12.0)]
    m = grid.pose.T @ grid.direction @ np.diag(grid.spacing)  # output index -> patient frame
    b0 = grid.pose.T @ (grid.origin - grid.shift)
    inv = np.linalg.inv(m)
    sp = grid.spacing
    j, i = np.mgrid[0:grid.shape[1], 0:grid.shape[2]].astype(np.float32)
    o = inv @ (np.array([-side * a.hw, 0, 0]) - b0)
    patterns = []
    for c, w, reach in src:
        ic = inv @ (c - b0)
        dx, dy = (i - ic[0]) * sp[0], (j - ic[1]) * sp[1]
        r = np.sqrt(dx * dx + dy * dy) + 1e-3
        th = np.arctan2(dy, dx)
        acc = np.zeros_like(r)
        n_lines = int(rng.integers(8, 16))
        for t0, am, wd in zip(rng.uniform(-np.pi, np.pi, n_lines), rng.choice([-1, 1], n_lines) * rng.uniform(80, 450, n_lines),
                              rng.uniform(0.01, 0.04, n_lines), strict=True):
            acc += am * np.exp(-((((th - t0 + np.pi) % (2 * np.pi)) - np.pi) / wd) ** 2)
        if w == 1.0:
            th_o = np.arctan2((o[1] - ic[1]) * sp[1], (o[0] - ic[0]) * sp[0])
            acc -= rng.uniform(150, 400) * np.exp(-((((th - th_o + np.pi) % (2 * np.pi)) - np.pi) / 0.08) ** 2)
        acc *= np.exp(-r / rng.uniform(40, 120))
        acc += 500 * np.exp(-np.clip(r - 22, 0, None) / 4)
        patterns.append((ic[2], w, reach, acc.astype(np.float32)))

    def apply(k: int, sl: np.ndarray) -> None:
        for kc, w, reach, pat in patterns:
            wz = w * np.exp(-((k - kc) * sp[2] / reach) ** 2)
            if wz > 0.02:
                sl += wz * pat

    return apply


def render(grid: Grid, a: Anatomy, style: dict, rng: np.random.Generator, seed: int,
           classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8), both (z, y, x) on ``grid``; ``classes`` (uint8, grid shape),
    when given, receives the tissue map of the middle sub-slice of each slice (for inspection)."""
    bones, heads = _bones(a, rng, style)
    early, muscles, organs = _soft(a, rng, style)
    ct = style["modality"] == "ct"
    table = _table_prim(a, rng) if ct and style.get("table") else []
    prims = table + early + muscles + bones + organs + heads
    boxes = [grid.index_box(p.lo, p.hi) for p in prims]
    live = [(p, bx) for p, bx in zip(prims, boxes, strict=True) if bx is not None]
    cb = Coarse(grid, 4.0)
    body_c = np.stack(_body_fields(cb.points(), a), axis=-1)
    c1, c2 = Coarse(grid, 4.0), Coarse(grid, 1.6)
    f1 = c1.noise(rng, 10.0) + 0.5 * c1.noise(rng, 25.0)  # slow variation; fat septa along its zero set
    f1 /= f1.std()
    f2 = c2.noise(rng, (3.0, 0.7, 0.7))  # fine texture, streaky along z (muscle fibres)
    mean, s1, s2, strand, dots = _tables(rng, style)
    nz, ny, nx = grid.shape
    sub = grid.sub
    img = np.empty(grid.shape, np.float32)
    lab_out = np.empty(grid.shape, np.uint8)
    coil = _coil(grid, a, style, rng) if not ct else None
    psf = (float(style["kernel"]) if ct else rng.uniform(0.3, 0.6)) / float(grid.spacing[0])  # mm -> in-plane voxels
    r = int(np.ceil(2.5 * psf))
    kern = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * psf ** 2))
    noise_gain = float((kern / kern.sum()) @ (kern / kern.sum())) ** -1  # filtered white noise keeps unit sd
    cup = style.get("cupping", 0.0)
    band_amp = rng.uniform(5, 30) if ct else 0.0
    band_box = grid.index_box(np.array([-a.hw, -40, -a.rfh - 15]), np.array([a.hw, 40, a.rfh + 15]))
    per = sub * max(1, int(3e6 // (ny * nx * sub)))
    for n_slab, k0 in enumerate(range(0, nz * sub, per)):
        zs = slice(k0, min(nz * sub, k0 + per))
        cls = np.zeros((zs.stop - zs.start, ny, nx), np.uint8)
        lab = np.zeros_like(cls)
        bm = cb.read(body_c, zs)
        skin, musc = bm[..., 0], bm[..., 1]
        cls[skin < 0] = T["fat"]
        cls[(musc < 0) & (skin < -2.5)] = T["muscle"]
        cls[(skin < 0) & (skin > -2.0)] = T["skin"]
        i = 0
        while i < len(live):
            pr, bx = live[i]
            if pr.bone <= 0:
                _paint(pr, bx, zs, grid, cls, lab)
                i += 1
                continue
            group = []
            while i < len(live) and live[i][0].bone > 0:
                r = _paint(live[i][0], live[i][1], zs, grid, cls, lab, ((0.0, T["cortex"], 0),))
                if r is not None:
                    group.append((r, live[i][0].bone))
                i += 1
            for (d, c, lb), t in group:
                c[d < -t] = T["marrow"]
        if classes is not None:
            classes[zs.start // sub:zs.stop // sub] = cls[sub // 2::sub]
        # intensities on the working slab
        f1s, f2s = c1.read(f1, zs), c2.read(f2, zs)
        w = mean[cls] + s1[cls] * f1s + s2[cls] * f2s
        w += strand[cls] * np.maximum(0.0, 1.0 - (f1s / 0.06) ** 2) ** 2 * np.clip(0.5 + 0.6 * f2s, 0, 1)  # septa
        w += dots[cls] * (f2s > 2.6)  # small vessels
        if ct:
            w -= cup * np.clip(-skin / 120.0, 0, 1)
            if band_box is not None and band_amp > 0:
                z0, z1 = max(band_box[0].start, zs.start), min(band_box[0].stop, zs.stop)
                if z1 > z0:
                    p = grid.points(slice(z0, z1), band_box[1], band_box[2])
                    w[z0 - zs.start:z1 - zs.start, band_box[1], band_box[2]] -= (
                        band_amp * np.exp(-(p[1] / 12) ** 2) * np.exp(-(p[2] / (0.7 * a.rfh)) ** 2) * (np.abs(p[0]) < a.hw))
        else:
            assert coil is not None
            w *= coil[0].read(coil[1], zs)
        # thick slices: average the sub-slices; labels by majority
        o = slice(zs.start // sub, zs.stop // sub)
        w = w.reshape(-1, sub, ny, nx).mean(1) if sub > 1 else w
        if ct:  # quantum noise, correlated in-plane by the reconstruction kernel (= the PSF)
            rs = np.random.default_rng([seed, 7, n_slab])
            depth = np.clip(-skin.reshape(-1, sub, ny, nx)[:, sub // 2] / 150.0, 0, 1)
            w += rs.standard_normal(w.shape, dtype=np.float32) * (float(style["noise"]) * noise_gain) * (1 + 0.4 * depth)
        img[o] = ndi.gaussian_filter(w, (0, psf, psf), truncate=2.5)
        if sub > 1:
            votes = np.stack([(lab == v).reshape(-1, sub, ny, nx).sum(1) for v in range(max(LABELS.values()) + 1)])
            lab_out[o] = votes.argmax(0).astype(np.uint8)
        else:
            lab_out[o] = lab
    _finish(img, grid, a, style, rng, seed)
    return img, lab_out


def _finish(img: np.ndarray, grid: Grid, a: Anatomy, style: dict, rng: np.random.Generator, seed: int) -> None:
    """Scanner noise, metal streaks, value conventions (in place)."""
    nz, ny, nx = img.shape
    if style["modality"] == "ct":
        streak = _streaks(grid, a, rng) if style.get("prosthesis") is not None else None
        if streak is not None:
            for k in range(nz):
                streak(k, img[k])
        np.clip(img, -1024, 3071, out=img)
        if style["pad"] is not None:
            j, i = np.ogrid[0:ny, 0:nx]
            outside = ((i - (nx - 1) / 2) ** 2 + (j - (ny - 1) / 2) ** 2) > (min(nx, ny) / 2) ** 2
            img[:, outside] = float(style["pad"])
        return
    ref = float(_T2["fat"][0])
    sd = float(style["noise"]) * ref
    for k0 in range(0, nz, 16):
        sl = img[k0:k0 + 16]
        rs = np.random.default_rng([seed, 11, k0])
        n1 = rs.standard_normal(sl.shape, dtype=np.float32) * sd
        n2 = rs.standard_normal(sl.shape, dtype=np.float32) * sd
        sl[...] = np.sqrt((sl + n1) ** 2 + n2 ** 2)
    top = float(np.percentile(img[:, ::4, ::4], 99.7))
    conv = style["range"]
    scale = {"float1000": 1000.0, "uint4095": rng.uniform(2500, 4000), "int16": rng.uniform(800, 2000), "unit": 1.0}[conv] / top
    img *= scale
    if conv == "int16":
        img -= rng.uniform(0, 40)



# ---- cases --------------------------------------------------------------------------------------
@dataclass
class CaseB:
    """One case: ``image`` and ``labels`` (uint8, values of LABELS) on one grid, and ``info``
    (the random choices, prostate volume, timings)."""

    image: Volume
    labels: Volume
    info: dict


def plan_case(seed: int, modality: str = "ct", max_voxels: int | None = None) -> tuple[dict, Anatomy, Grid, dict, np.random.Generator]:
    """The random choices of case ``seed`` without drawing it: (style, anatomy, grid, grid info,
    the generator to continue with)."""
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    rng = np.random.default_rng([seed, zlib.crc32(b"phantoms_b"), 1 if modality == "ct" else 2])
    style = sample_style(rng, modality, seed)
    a = sample_anatomy(rng, endorectal=bool(style.get("endorectal")))
    a.extras["prosthesis"] = style.get("prosthesis")
    grid, ginfo = sample_grid(rng, a, modality, max_voxels, seed)
    return style, a, grid, ginfo, rng


def make_case_b(seed: int, modality: str = "ct", max_voxels: int | None = None) -> CaseB:
    """Case ``seed`` of the family for ``modality`` ("ct" | "mr"); ``max_voxels`` shrinks the grid
    (same field of view, coarser voxels) for quick tests."""
    t0, c0 = time.perf_counter(), time.process_time()
    style, a, grid, ginfo, rng = plan_case(seed, modality, max_voxels)
    img, lab = render(grid, a, style, rng, seed)
    if modality == "ct":
        arr = np.round(img).astype(np.int16) if style["dtype"] == "int16" else img
    else:
        arr = {"float1000": img, "unit": img, "uint4095": np.clip(np.round(img), 0, 65535).astype(np.uint16),
               "int16": np.round(img).astype(np.int16)}[style["range"]]
    image = Volume(arr, grid.spacing, grid.origin, grid.direction)
    labels = Volume(lab, grid.spacing, grid.origin, grid.direction)
    vox_ml = float(np.prod(grid.spacing)) / 1000
    info = {"seed": seed, "modality": modality, "shape": list(grid.shape), "spacing": [round(float(v), 3) for v in grid.spacing],
            "direction": [round(float(v), 4) for v in grid.direction.ravel()], **ginfo,
            **{k: (v if not isinstance(v, np.generic) else v.item()) for k, v in style.items()},
            "prostate_ml": round(float((lab == PROSTATE).sum()) * vox_ml, 1),
            "bladder_ml": round(float((lab == BLADDER).sum()) * vox_ml, 1),
            "median_lobe": a.median_lobe is not None, "dtype": str(arr.dtype),
            "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2)}
    return CaseB(image, labels, info)


def segments() -> list[vio.SegmentInfo]:
    """SNOMED-coded segment descriptions for the five labels."""
    return [vio.segment_info(name, value) for name, value in LABELS.items()]


def write_cases(out: str | Path, n: int, modality: str = "ct", seed: int = 0, max_voxels: int | None = None,
                log: Callable[[dict], None] | None = None) -> list[CaseRecord]:
    """Write cases ``seed`` … ``seed + n − 1`` as ``caseb_<modality>_<seed>.nrrd`` + ``.seg.nrrd``
    and a ``manifest.json`` (``voxmetric-cases/1``, per-case modality) into ``out``; returns the records."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for s in range(seed, seed + n):
        case = make_case_b(s, modality, max_voxels)
        cid = f"caseb_{modality}_{s:04d}"
        img_p = vio.write_volume(case.image, out / f"{cid}.nrrd")
        lab_p = vio.write_segmentation(out / f"{cid}.seg.nrrd", case.labels, segments())
        records.append(CaseRecord(cid, img_p, lab_p, None, modality))
        if log is not None:
            log({"event": "case", "id": cid, **case.info})
    previous = []
    manifest = out / "manifest.json"
    if manifest.exists():  # keep cases of other runs (e.g. the other modality) in the same folder
        from voxmetric.cases import read_manifest

        try:
            previous = [r for r in read_manifest(manifest, require_labels=False) if r.id not in {c.id for c in records}]
        except Exception:  # an unreadable manifest is replaced
            previous = []
    write_manifest(previous + records, manifest)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (images, .seg.nrrd labels, manifest.json)")
    ap.add_argument("--cases", type=int, default=5, help="number of cases")
    ap.add_argument("--modality", choices=["ct", "mr"], default="ct")
    ap.add_argument("--seed", type=int, default=0, help="first case seed (cases seed … seed+N−1)")
    ap.add_argument("--max-voxels", type=int, default=None, help="shrink grids above this many voxels (quick runs)")
    a = ap.parse_args(argv)
    recs = write_cases(a.out, a.cases, a.modality, a.seed, a.max_voxels, log=lambda d: print(json.dumps(d), flush=True))
    print(json.dumps({"event": "done", "cases": len(recs), "manifest": str(Path(a.out) / "manifest.json")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
