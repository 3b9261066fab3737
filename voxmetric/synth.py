"""Domain-randomised synthetic pelvic training cases, in the spirit of SynthSeg (Billot et al.,
Medical Image Analysis 2023): images drawn from label maps with every tissue's intensity, the
contrast, bias field, resolution, slice thickness, noise and shape randomised far beyond realism,
so that a network learns the prostate's shape and context rather than one scanner's look.
:mod:`voxmetric.phantom` stays the realistic phantom for tests and the demo.

A case is made in three steps, each from its own random stream of the seed (so the anatomy of a
seed does not depend on the contrast or the grid):

1. *Anatomy* (:func:`sample_anatomy`): an ordered list of paint operations in an anatomy frame
   (LPS mm, prostate centre at the origin): body outline of varying size, subcutaneous and
   pelvic fat, muscles, bowel loops, vessels, a bladder from empty to full, seminal vesicles, a
   rectum (collapsed, with faeces, with gas, or with an endorectal balloon), a prostate of
   15–120 mL (log-uniform) with zones, nodules, lesions and sometimes a median lobe pushing into
   the bladder, at any tilt, then the pelvic bones and femora. :data:`N_CLASSES` tissue classes
   (:data:`CLASS_NAMES`); the label map holds the values of :data:`voxmetric.phantom.LABELS`.
2. *Grid* (:func:`sample_grid`): acquisition spacing (0.3–1.5 mm in-plane, 1–6 mm slices), plane
   (axial, coronal or sagittal), field of view and its offset, flips and obliquity in the
   direction matrix (the physical anatomy stays right), a patient tilt and a scanner offset.
   ``fov="pelvis"``: a scan-like volume on the acquisition grid (painted on sub-slices, so thick
   slices carry partial volume). ``fov="roi"``: a 120–160 mm region around the prostate on a
   ~1 mm grid, the acquisition simulated by blur, down- and up-sampling (labels stay sharp).
3. *Image* (:func:`_render`): per class mean and spread (``"ct"``: Hounsfield units, ``"mr"``:
   T2-like, ``"random"``: every class independent), texture, a prostate edge from absent to
   sharp, CT streaks, slice profile and in-plane blur, bias field, Gaussian or Rician noise,
   gamma; stored as int16.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import InputError
from .phantom import LABELS, PhantomCase
from .volume import Volume

CONTRASTS = ("ct", "mr", "random")
FOVS = ("pelvis", "roi")

# ---- tissue classes ---------------------------------------------------------------------------
CLASS_NAMES = (
    "air", "subcutaneous fat", "pelvic fat", "muscle", "pelvic muscle", "periprostatic tissue",
    "cortical bone", "bone marrow", "urine", "bladder wall", "rectal wall", "faeces", "rectal gas",
    "seminal vesicle", "bowel wall", "bowel content", "bowel gas", "peripheral zone",
    "transition zone", "nodule", "vessel", "calcification", "table",
)
(AIR, FAT, PFAT, MUSCLE, PMUSCLE, SOFT, CORTEX, MARROW, URINE, BWALL, RWALL, FECES, RGAS, SV,
 BOWEL, BCONTENT, BGAS, PZ, TZ, NODULE, VESSEL, CALC, TABLE) = range(len(CLASS_NAMES))
N_CLASSES = len(CLASS_NAMES)
BONE = (CORTEX, MARROW)
PROSTATE_CLASSES = (PZ, TZ, NODULE, CALC)
CLASS_LABEL = np.zeros(N_CLASSES, np.uint8)
"""Label value of each tissue class (femoral heads are labelled by geometry, not by class)."""
CLASS_LABEL[list(PROSTATE_CLASSES)] = LABELS["Prostate"]
CLASS_LABEL[[URINE, BWALL]] = LABELS["Bladder"]
CLASS_LABEL[[RWALL, FECES, RGAS]] = LABELS["Rectum"]

MAX_PAINT_VOXELS = 24_000_000  # pelvis mode: cap on the painted (sub-slice) grid, ~100 MB float32


@dataclass
class SynthCase(PhantomCase):
    """A :class:`~voxmetric.phantom.PhantomCase` (``image`` int16, ``labels`` uint8 on the same
    grid, ``modality`` "ct" | "mr", ``seed``) with the generator's choices: ``contrast``,
    ``fov``, the simulated ``acquisition_spacing`` (x, y, z) mm along the grid axes and the
    drawn ``prostate_ml``."""

    contrast: str = "ct"
    fov: str = "pelvis"
    acquisition_spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    prostate_ml: float = 0.0


@dataclass
class SynthLabels:
    """A label map without an image: ``labels`` (uint8, :data:`LABELS`), ``tissue`` (uint8
    classes, :data:`CLASS_NAMES`) on the same grid, and the drawn ``prostate_ml``."""

    labels: Volume
    tissue: Volume
    prostate_ml: float
    seed: int


# ---- geometry ---------------------------------------------------------------------------------
def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation Rz·Ry·Rx (radians); columns = the rotated axes."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _deg_rot(rng: np.random.Generator, limits: tuple[float, float, float]) -> np.ndarray:
    return _rot(*np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(limits)))


class _Grid:
    """A voxel grid (z, y, x) placed in the anatomy frame: point(ix, iy, iz) = t + m @ (ix, iy, iz)."""

    def __init__(self, shape_zyx: tuple[int, int, int], m: np.ndarray, t: np.ndarray):
        self.shape = tuple(int(v) for v in shape_zyx)
        self.m = np.asarray(m, float)
        self.t = np.asarray(t, float)
        self.minv = np.linalg.inv(self.m)

    def index_box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Index range [a, b) (x, y, z) covering the anatomy box [lo, hi], or None if outside."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        idx = (corners - self.t) @ self.minv.T
        n = np.array(self.shape[::-1])
        a = np.clip(np.floor(idx.min(0)).astype(int), 0, n)
        b = np.clip(np.ceil(idx.max(0)).astype(int) + 1, 0, n)
        return None if np.any(b <= a) else (a, b)

    def coords(self, a, b) -> list[np.ndarray]:
        """Anatomy coordinates X, Y, Z (float32, broadcastable to the block) of indices [a, b)."""
        axes = [np.arange(a[i], b[i], dtype=np.float32).reshape(s) for i, s in enumerate(((1, 1, -1), (1, -1, 1), (-1, 1, 1)))]
        out = []
        for r in range(3):
            v = np.full((1, 1, 1), self.t[r], np.float32)
            for i in range(3):
                if abs(self.m[r, i]) > 1e-9:
                    v = v + np.float32(self.m[r, i]) * axes[i]
            out.append(v)
        return out


Mask = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class _Op:
    """Paint ``code`` where ``fn(X, Y, Z)`` holds inside the anatomy box [lo, hi], and (when
    ``only`` is given, a bool table over classes) only where the current class is allowed.
    A label operation writes the label value ``code`` instead."""

    lo: np.ndarray
    hi: np.ndarray
    fn: Mask
    code: int
    only: np.ndarray | None = None


def _allow(*classes: int) -> np.ndarray:
    t = np.zeros(N_CLASSES, bool)
    t[list(classes)] = True
    return t


def _deny(*classes: int) -> np.ndarray:
    return ~_allow(*classes)


def _local(X, Y, Z, c, rot) -> list[np.ndarray]:
    """Local coordinates u_k = Σ_j rot[j, k] (p_j − c_j)."""
    d = (X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2]))
    r = np.asarray(rot, np.float32)
    return [r[0, k] * d[0] + r[1, k] * d[1] + r[2, k] * d[2] for k in range(3)]


class _Wobble:
    """Smooth random relative deformation of a radius on normalised local coordinates: a sum of
    ``n`` low-frequency cosines of amplitude ``amp``."""

    def __init__(self, rng: np.random.Generator, amp: float, n: int = 5, freq: tuple[float, float] = (1.0, 2.6)):
        d = rng.normal(size=(n, 3))
        self.w = (d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(*freq, size=(n, 1))).astype(np.float32)
        self.ph = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        self.amp = np.float32(amp)
        self.bound = float(amp) * n

    def __call__(self, u):
        s = 0.0
        for w, ph in zip(self.w, self.ph):
            s = s + np.cos(w[0] * u[0] + w[1] * u[1] + w[2] * u[2] + ph)
        return self.amp * s


def _half_extent(semi, rot) -> np.ndarray:
    """Half extent along the frame axes of an ellipsoid with ``semi`` axes rotated by ``rot``."""
    return np.sqrt(((np.asarray(rot) * np.asarray(semi)[None, :]) ** 2).sum(axis=1))


def _ellipsoid(c, semi, rot=None, wobble: _Wobble | None = None, level: float = 1.0, extra: Mask | None = None):
    """(lo, hi, mask) of an ellipsoid (optionally deformed by ``wobble``, scaled by ``level``)."""
    c, semi = np.asarray(c, float), np.asarray(semi, float)
    rot = np.eye(3) if rot is None else np.asarray(rot)
    grow = level * (1 + (wobble.bound if wobble else 0.0)) + 0.05
    ext = _half_extent(semi, rot) * grow + 1.0
    inv = [np.float32(1 / v) for v in semi]

    def fn(X, Y, Z):
        u = _local(X, Y, Z, c, rot)
        un = [u[k] * inv[k] for k in range(3)]
        r2 = un[0] * un[0] + un[1] * un[1] + un[2] * un[2]
        m = r2 < np.float32(level * level) if wobble is None else np.sqrt(r2) < np.float32(level) * (1 + wobble(un))
        return m & extra(X, Y, Z) if extra is not None else m

    return c - ext, c + ext, fn


def _shell(c, semi, thick: float, rot=None, extra: Mask | None = None):
    """(lo, hi, mask) of an ellipsoidal shell of approximate thickness ``thick`` mm."""
    c, semi = np.asarray(c, float), np.asarray(semi, float)
    rot = np.eye(3) if rot is None else np.asarray(rot)
    inner = np.float32(max(0.05, 1 - thick / semi.min()) ** 2)
    ext = _half_extent(semi, rot) + 1.0

    def fn(X, Y, Z):
        u = _local(X, Y, Z, c, rot)
        r2 = (u[0] / np.float32(semi[0])) ** 2 + (u[1] / np.float32(semi[1])) ** 2 + (u[2] / np.float32(semi[2])) ** 2
        m = (r2 < 1) & (r2 > inner)
        return m & extra(X, Y, Z) if extra is not None else m

    return c - ext, c + ext, fn


def _capsule(p0, p1, r0: float, r1: float | None = None):
    """(lo, hi, mask) of a segment p0–p1 with radius tapering from r0 to r1 (mm)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    r1 = r0 if r1 is None else r1
    v = (p1 - p0).astype(np.float32)
    vv = np.float32(max(float(v @ v), 1e-6))
    rm = max(r0, r1)

    def fn(X, Y, Z):
        dx, dy, dz = X - np.float32(p0[0]), Y - np.float32(p0[1]), Z - np.float32(p0[2])
        t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / vv, 0, 1)
        d2 = (dx - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dz - t * v[2]) ** 2
        r = np.float32(r0) + np.float32(r1 - r0) * t
        return d2 < r * r

    return np.minimum(p0, p1) - rm, np.maximum(p0, p1) + rm, fn


Profile = Callable[[np.ndarray], tuple]


def _ztube(zlo: float, zhi: float, prof: Profile, xr: tuple[float, float], yr: tuple[float, float], extra: Mask | None = None):
    """(lo, hi, mask) of a tube along the anatomy z axis: ``prof(Z) -> (cx, cy, a, b)`` gives the
    centre and semi-axes of its elliptical cross-section (a ≤ 0: absent). On large blocks the
    profile is tabulated every 0.25 mm of z and looked up (a rotated grid has a z per voxel)."""
    far = np.float32(1e6)

    def table(z):
        cx, cy, a, b = (np.broadcast_to(np.asarray(v, np.float32), z.shape) for v in prof(z))
        ok = (a > 0) & (b > 0) & (z >= zlo) & (z <= zhi)
        ia = np.where(ok, 1 / np.maximum(a, 1e-3), 1).astype(np.float32)  # absent: q ≈ 1e12
        ib = np.where(ok, 1 / np.maximum(b, 1e-3), 1).astype(np.float32)
        return np.where(ok, cx, far).astype(np.float32), np.where(ok, cy, far).astype(np.float32), ia, ib

    def fn(X, Y, Z):
        if Z.size > 4096:
            z0, z1 = float(Z.min()), float(Z.max())
            n = int((z1 - z0) / 0.25) + 2
            cx, cy, ia, ib = table(np.linspace(z0, z1, n, dtype=np.float32))
            i = ((Z - np.float32(z0)) * np.float32((n - 1) / max(z1 - z0, 1e-6)) + np.float32(0.5)).astype(np.intp)
            q = ((X - cx[i]) * ia[i]) ** 2 + ((Y - cy[i]) * ib[i]) ** 2
        else:
            cx, cy, ia, ib = table(Z)
            q = ((X - cx) * ia) ** 2 + ((Y - cy) * ib) ** 2
        m = q < 1
        return m & extra(X, Y, Z) if extra is not None else m

    return np.array([xr[0], yr[0], zlo]), np.array([xr[1], yr[1], zhi]), fn


class _Ops:
    """An ordered list of paint operations (later ones paint over earlier ones)."""

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        self.label_ops: list[_Op] = []

    def add(self, shape, code: int, only: np.ndarray | None = None) -> None:
        lo, hi, fn = shape
        self.ops.append(_Op(np.asarray(lo, float), np.asarray(hi, float), fn, int(code), only))

    def label(self, shape, value: int, only: np.ndarray | None = None) -> None:
        lo, hi, fn = shape
        self.label_ops.append(_Op(np.asarray(lo, float), np.asarray(hi, float), fn, int(value), only))


def _paint(grid: _Grid, ops: _Ops, block_voxels: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Paint the operations on ``grid`` slab by slab: (tissue classes, labels), uint8 (z, y, x)."""
    nz, ny, nx = grid.shape
    tissue = np.zeros(grid.shape, np.uint8)
    labels = np.zeros(grid.shape, np.uint8)
    slab = max(1, block_voxels // (ny * nx))

    def run(op_list: list[_Op], target: np.ndarray) -> None:
        boxes = [grid.index_box(o.lo, o.hi) for o in op_list]
        for z0 in range(0, nz, slab):
            z1 = min(nz, z0 + slab)
            for o, box in zip(op_list, boxes):
                if box is None:
                    continue
                a, b = box[0].copy(), box[1].copy()
                a[2], b[2] = max(a[2], z0), min(b[2], z1)
                if b[2] <= a[2]:
                    continue
                sl = (slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0]))
                m = np.broadcast_to(o.fn(*grid.coords(a, b)), target[sl].shape)
                if o.only is not None:
                    m = m & o.only[tissue[sl]]
                np.copyto(target[sl], np.uint8(o.code), where=m)

    run(ops.ops, tissue)
    np.take(CLASS_LABEL, tissue, out=labels)
    run(ops.label_ops, labels)
    return tissue, labels


# ---- anatomy ----------------------------------------------------------------------------------
@dataclass
class Anatomy:
    """The drawn anatomy: paint operations and a few numbers (``prostate_ml``; ``radius`` mm, a
    bound on the gland's distance from the origin, used to keep it inside fields of view)."""

    ops: _Ops
    prostate_ml: float
    radius: float
    body_half: np.ndarray  # rough half-size (x, y) of the body outline, mm


def _prostate(rng: np.random.Generator) -> dict:
    """Prostate parameters: total volume log-uniform 15–120 mL, shape, tilt, zones, median lobe."""
    vol = float(np.exp(rng.uniform(np.log(15.0), np.log(120.0)))) * 1000.0
    big = (np.log(vol / 1000) - np.log(15)) / (np.log(120) - np.log(15))  # 0 … 1
    lobe = rng.random() < 0.1 + 0.4 * big
    lobe_frac = rng.uniform(0.04, 0.14) if lobe else 0.0
    body_vol = vol / (1 + 0.6 * lobe_frac)
    ratio = np.array([1.0, rng.uniform(0.6, 0.88), rng.uniform(0.72, 1.05)])
    semi = (3 * body_vol / (4 * np.pi * ratio.prod())) ** (1 / 3) * ratio
    rot = _rot(np.deg2rad(rng.uniform(-45, 15)), np.deg2rad(rng.uniform(-15, 15)), np.deg2rad(rng.uniform(-15, 15)))
    p = {"vol": vol, "semi": semi, "rot": rot, "wobble": _Wobble(rng, rng.uniform(0.01, 0.06)),
         "indent": rng.uniform(0.0, 0.35), "taper": rng.uniform(0.0, 0.3), "taper_y": rng.uniform(0.0, 0.35), "big": big}
    # the level whose region has the drawn body volume, on a fixed local grid (grid independent)
    n = 48
    lin = np.linspace(-1.6, 1.6, n, dtype=np.float32)
    uu = np.meshgrid(lin * semi[0], lin * semi[1], lin * semi[2], indexing="ij", sparse=True)
    rn = _prostate_rn(uu, p)
    cell = np.prod(3.2 * semi / (n - 1))
    k = int(np.clip(round(body_vol / cell), 1, rn.size))
    p["level"] = float(np.partition(rn.ravel(), k - 1)[k - 1])
    inside = np.argwhere(rn <= p["level"])
    pts = (lin[inside] * semi) @ rot.T  # (n, 3) anatomy offsets of inside points
    p["extent"] = np.abs(pts).max(axis=0)
    if lobe:  # a median lobe on the base, pushing up into the bladder
        ls = (3 * lobe_frac * vol / (4 * np.pi)) ** (1 / 3) * np.array([rng.uniform(0.8, 1.2), rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.4)])
        lc = rot @ np.array([rng.uniform(-2, 2), rng.uniform(-0.3, 0.1) * semi[1], semi[2] * p["level"] * rng.uniform(0.75, 0.95)])
        p["lobe"] = (lc, ls)
        p["extent"] = np.maximum(p["extent"], np.abs(lc) + ls.max())
    tz_frac = float(np.clip(0.25 + 0.5 * big + rng.normal(0, 0.08), 0.12, 0.8))
    p["tz"] = (np.array([0.0, -rng.uniform(0.1, 0.3), rng.uniform(0.0, 0.2)]) * semi,
               semi * p["level"] * tz_frac ** (1 / 3))
    return p


def _prostate_rn(u, p: dict) -> np.ndarray:
    """Deformed normalised radius of the gland body (< level inside): an ellipsoid narrowing
    towards the apex and anteriorly (pear / chestnut), with random lumps and a posterior
    indentation by the rectum."""
    semi = p["semi"]
    un = [u[k] / np.float32(semi[k]) for k in range(3)]
    g = 1 + np.float32(p["taper"]) * un[2]
    gy = 1 + np.float32(p["taper_y"]) * np.clip(un[1], -1, 1)
    rn = np.sqrt((un[0] / (g * gy)) ** 2 + (un[1] / g) ** 2 + un[2] ** 2)
    post = np.maximum(un[1], 0) ** 2 * np.exp(-(un[0] ** 2) / np.float32(0.3))
    return rn * (1 + np.float32(p["indent"]) * post) / (1 + p["wobble"](un))


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one male pelvis as ordered paint operations in the anatomy frame (LPS mm: x → left,
    y → posterior, z → superior; prostate centre at the origin)."""
    o = _Ops()
    pro = _prostate(rng)
    ext = pro["extent"]
    apex, base, post, ant = -ext[2], ext[2], ext[1], -ext[1]
    bs = rng.uniform(0.85, 1.2)  # skeleton and body scale

    # landmarks of the bony pelvis, relative to the gland
    y_sym = ant - rng.uniform(6, 22) - 8 * bs
    z_sym = rng.uniform(-14, 10)
    hx = rng.uniform(76, 98) * bs
    y_head = y_sym + rng.uniform(30, 46) * bs
    z_head = z_sym + rng.uniform(6, 24)
    rh = rng.uniform(20, 27) * bs
    z_per = apex - rng.uniform(18, 40)

    # rectum centre line (behind the gland, curving back along the sacrum, anal canal below)
    ar = rng.uniform(8, 23)
    br = ar * rng.uniform(0.4, 0.85)
    wall_r = rng.uniform(2, 5)
    x_r, amp_r, ph_r = rng.uniform(-6, 6), rng.uniform(0, 8), rng.uniform(0, 2 * np.pi)
    y_r0 = post + rng.uniform(0.5, 5) + br
    k_up = rng.uniform(0.2, 0.5)
    z_r0, z_r1 = z_per - rng.uniform(0, 10), base + rng.uniform(55, 110)

    def rect(Z, grow: float = 0.0):
        cx = x_r + amp_r * np.sin(Z / 40 + ph_r)
        cy = y_r0 + k_up * np.maximum(Z - base, 0) ** 2 / 100 + 0.45 * np.maximum(apex - 5 - Z, 0)
        taper = np.clip((Z - z_r0) / 30, 0.3, 1.0) * (1 + 0.25 * np.exp(-(((Z - base - 25) / 30) ** 2)))
        return cx, cy, ar * taper + grow, br * taper + grow

    y_sac = float(rect(np.float32(base + 20))[1]) + br + rng.uniform(14, 30)  # sacrum front at mid-pelvis

    # ---- body: subcutaneous fat outline, muscle, back on the table, table ----
    f_lat, f_ant, f_post = rng.uniform(4, 60), rng.uniform(6, 80), rng.uniform(4, 40)
    am = rng.uniform(135, 175) * bs
    ym = y_head + rng.uniform(5, 30)
    bm = max(rng.uniform(85, 120) * bs, ym - y_sym + 18, y_sac + 45 - ym)
    xt, at, bt = hx + rng.uniform(0, 15), rng.uniform(60, 85) * bs, rng.uniform(55, 80) * bs
    zp0, zp1 = z_per - rng.uniform(15, 35), z_per + rng.uniform(20, 40)

    def torso(Z, fat: bool):
        f = np.clip((Z - zp0) / (zp1 - zp0), 0, 1)
        waist = 1 - 0.15 * np.clip((Z - z_head - 60) / 90, 0, 1)
        a = (am * waist * np.sqrt(f) + (f_lat if fat else 0)) * (f > 0)
        b = (bm * f ** 0.3 + ((f_ant + f_post) / 2 if fat else 0)) * (f > 0)
        return 0.0, ym + ((f_post - f_ant) / 2 if fat else 0), a, b

    def thigh(s: int, fat: bool):
        def prof(Z):
            e = f_lat * 0.7 if fat else 0.0
            shrink = 1 - 0.15 * np.clip((z_per - Z) / 150, 0, 1)
            return s * xt, y_head + 12, (at * shrink + e), (bt * shrink + e)
        return prof

    big = 1000.0
    half = np.array([am + f_lat + 20, bm + max(f_ant, f_post) + 20])
    for fat, code, only in ((True, FAT, None), (False, MUSCLE, _allow(FAT))):
        o.add(_ztube(zp0, big, lambda Z, fat=fat: torso(Z, fat), (-half[0], half[0]), (ym - half[1], ym + half[1])), code, only)
        for s in (-1, 1):
            o.add(_ztube(-big, z_per + 15, thigh(s, fat), (s * xt - 150, s * xt + 150), (y_head - 140, y_head + 160)), code, only)
    y_back = ym + bm + f_post * rng.uniform(0.2, 0.9)
    o.add(((-400, y_back, -big), (400, y_back + 400, big), lambda X, Y, Z: Y > y_back), AIR)
    gap, th = rng.uniform(0, 15), rng.uniform(5, 45)
    xtab = rng.uniform(180, 260)
    o.add(((-xtab, y_back + gap, -big), (xtab, y_back + gap + th, big),
           lambda X, Y, Z: (Y > y_back + gap) & (Y < y_back + gap + th) & (np.abs(X) < xtab)), TABLE, _allow(AIR))
    # intermuscular fat planes (gluteal, femoral triangles): open arcs of ellipsoidal shells
    for s in (-1, 1):
        for _ in range(int(rng.integers(1, 4))):
            c = np.array([s * rng.uniform(70, 130) * bs, y_head + rng.uniform(-50, 60), z_head + rng.uniform(-80, 60)])
            semi = np.array([rng.uniform(30, 70), rng.uniform(30, 80), rng.uniform(40, 120)]) * bs
            nv = rng.normal(size=3)
            nv /= np.linalg.norm(nv)

            def side(X, Y, Z, c=c, nv=nv, cut=rng.uniform(-0.2, 0.5) * semi.min()):
                return (X - c[0]) * nv[0] + (Y - c[1]) * nv[1] + (Z - c[2]) * nv[2] > cut

            o.add(_shell(c, semi, rng.uniform(2, 6), _deg_rot(rng, (20, 20, 40)), extra=side), FAT, _allow(MUSCLE))

    # ---- pelvic cavity fat (true and false pelvis), ischiorectal fossae, pelvic muscles ----
    a0 = max(30.0, hx - rh - rng.uniform(10, 22) * bs)
    b0 = max(30.0, (y_sac - y_sym) / 2 * rng.uniform(0.85, 1.0))
    cy0 = (y_sym + y_sac) / 2 + rng.uniform(-5, 5)
    z_floor = apex - rng.uniform(15, 35)

    def cavity(Z):
        up = np.clip((Z - z_head - 20) / 70, 0, 1)
        lo = np.sqrt(np.clip((Z - z_floor) / 25, 0, 1))
        return 0.0, cy0 - 20 * up, (a0 + 60 * bs * up) * lo, (b0 + 25 * up) * lo

    o.add(_ztube(z_floor, big, cavity, (-200, 200), (cy0 - 120, cy0 + 120)), PFAT, _allow(MUSCLE))
    for s in (-1, 1):  # ischiorectal fossae beside the anal canal
        c = np.array([s * rng.uniform(22, 38), y_r0 + rng.uniform(5, 20), apex - rng.uniform(10, 25)])
        o.add(_ellipsoid(c, np.array([rng.uniform(14, 26), rng.uniform(20, 32), rng.uniform(20, 32)]) * bs,
                         _deg_rot(rng, (10, 15, 10))), PFAT, _allow(MUSCLE))
        sx = rng.uniform(7, 14) * bs
        c = np.array([s * (a0 + 0.5 * sx), y_head + rng.uniform(-5, 12), z_head - rng.uniform(5, 25)])
        o.add(_ellipsoid(c, np.array([sx, rng.uniform(25, 40) * bs, rng.uniform(28, 45) * bs]),
                         _deg_rot(rng, (10, 10, 15))), PMUSCLE, _allow(MUSCLE, PFAT))  # obturator internus
    c_lev = np.array([x_r, y_r0 - 0.3 * br, apex + rng.uniform(0, 15)])
    semi_lev = np.array([rng.uniform(30, 46), rng.uniform(30, 45), rng.uniform(28, 42)]) * bs
    o.add(_shell(c_lev, semi_lev, rng.uniform(3, 8), extra=lambda X, Y, Z: Z < c_lev[2]), PMUSCLE, _allow(PFAT, MUSCLE))
    # mesorectal fat
    g_meso = rng.uniform(5, 16)
    o.add(_ztube(max(apex, z_r0), z_r1, lambda Z: rect(Z, g_meso), (-120, 120), (post - 20, y_sac + 40)), PFAT,
          _allow(MUSCLE, PMUSCLE))

    # ---- vessels: external iliac → femoral, both sides ----
    for s in (-1, 1):
        pts = [np.array([s * rng.uniform(35, 55) * bs, y_head - rng.uniform(20, 45), z_head + rng.uniform(80, 120)]),
               np.array([s * (hx - rng.uniform(10, 25)), y_head - rng.uniform(30, 45), z_head + rng.uniform(10, 30)]),
               np.array([s * (hx - rng.uniform(-5, 10)), y_head - rng.uniform(35, 55), z_head - rng.uniform(60, 120)])]
        for off, r in ((0.0, rng.uniform(3, 5.5)), (-s * rng.uniform(8, 14), rng.uniform(4, 7.5))):
            shift = np.array([off, 0, 0])
            for p0, p1 in zip(pts[:-1], pts[1:]):
                o.add(_capsule(p0 + shift, p1 + shift, r), VESSEL, _allow(PFAT, MUSCLE, FAT, PMUSCLE))

    # ---- bladder: volume 20–650 mL (log-uniform); empty ones are small, flat and thick-walled ----
    vb = float(np.exp(rng.uniform(np.log(20), np.log(650)))) * 1000
    full = (np.log(vb / 1000) - np.log(20)) / (np.log(650) - np.log(20))
    ratio = np.array([rng.uniform(1.05, 1.4), rng.uniform(0.8, 1.05), rng.uniform(0.5, 0.75) + 0.25 * full])
    semi_b = (3 * vb / (4 * np.pi * ratio.prod())) ** (1 / 3) * ratio
    wall_b = rng.uniform(1.5, 3.0) + (1 - full) * rng.uniform(0.5, 5.0)
    rot_b = _deg_rot(rng, (12, 10, 10))
    hb = _half_extent(semi_b, rot_b)
    c_b = np.array([rng.uniform(-8, 8), rng.uniform(-14, 0) - 0.25 * semi_b[1], base + hb[2] - rng.uniform(0, 6)])
    wob_b = _Wobble(rng, rng.uniform(0.015, 0.05) + 0.03 * (1 - full), freq=(0.8, 2.2))
    bladder_top = c_b[2] + hb[2]

    # ---- bowel loops in the false pelvis (and in the true pelvis when the bladder is empty) ----
    for _ in range(int(rng.integers(2, 10))):
        p = np.array([rng.uniform(-70, 70) * bs, rng.uniform(-60, 30), rng.uniform(bladder_top - 30 * (1 - full), z_head + 160)])
        r, wall = rng.uniform(8, 20), rng.uniform(1.5, 4)
        gas = rng.random() < 0.5
        for _ in range(int(rng.integers(2, 6))):
            d = rng.normal(size=3)
            q = p + d / np.linalg.norm(d) * rng.uniform(15, 35)
            o.add(_capsule(p, q, r), BOWEL, _allow(PFAT, VESSEL))
            o.add(_capsule(p, q, r - wall), BCONTENT, _allow(BOWEL))
            if gas:
                lvl = (p[1] + q[1]) / 2 + rng.uniform(-r / 2, r / 3)
                lo, hi, fn = _capsule(p, q, r - wall)
                o.add((lo, hi, lambda X, Y, Z, fn=fn, lvl=lvl: fn(X, Y, Z) & (Y < lvl)), BGAS, _allow(BCONTENT))
            p = q

    # ---- periprostatic tissue and neurovascular bundles ----
    if rng.random() < 0.85:  # venous plexus / fascia: thicker anteriorly, sometimes only in front
        c = np.array([rng.uniform(-3, 3), -rng.uniform(0, 6), rng.uniform(-3, 3)])
        sp = pro["semi"] * pro["level"] + rng.uniform(1, 6, 3)
        y_cut = rng.uniform(-0.3, 1.2) * ext[1]
        o.add(_ellipsoid(c, sp, pro["rot"] @ _deg_rot(rng, (8, 8, 8)), _Wobble(rng, 0.05, 5),
                         extra=lambda X, Y, Z: Y < y_cut), SOFT, _allow(PFAT, PMUSCLE, MUSCLE, VESSEL, BOWEL, BCONTENT))
    for s in (-1, 1):
        r = rng.uniform(1.5, 4.5)
        x = s * (ext[0] * rng.uniform(0.5, 0.9))
        o.add(_capsule((x, post - rng.uniform(0, 8), apex - 8), (x * 1.2, post + rng.uniform(0, 6), base + 10), r),
              SOFT, _allow(PFAT, PMUSCLE, MUSCLE))

    # ---- bladder (over bowel and fat), seminal vesicles, rectum ----
    o.add(_ellipsoid(c_b, semi_b, rot_b, wob_b), BWALL, _deny(*BONE))
    o.add(_ellipsoid(c_b, semi_b, rot_b, wob_b, level=max(0.3, 1 - wall_b / semi_b.min())), URINE, _allow(BWALL))
    not_bladder = _deny(URINE, BWALL, *BONE)
    for s in (-1, 1):
        c = np.array([s * rng.uniform(10, 24), post * rng.uniform(0.3, 0.9) + rng.uniform(1, 8), base + rng.uniform(0, 12)])
        semi = np.array([rng.uniform(9, 26), rng.uniform(3, 8), rng.uniform(4, 11)])
        rot = _rot(0.0, s * np.deg2rad(rng.uniform(-35, -5)), s * np.deg2rad(rng.uniform(0, 35)))
        o.add(_ellipsoid(c, semi, rot, _Wobble(rng, 0.06, 4, (1.5, 3.5))), SV, not_bladder)
    o.add(_ztube(z_r0, z_r1, rect, (-100, 100), (post - 30, y_sac + 20)), RWALL, not_bladder)
    state = rng.choice(["collapsed", "faeces", "gas"], p=[0.3, 0.35, 0.35])
    shrink = 0.3 if state == "collapsed" else 1.0
    z_lumen = z_r0 + rng.uniform(15, 30)  # the anal canal is closed

    def lumen(Z):
        cx, cy, a, b = rect(Z)
        return cx, cy, np.maximum(a - wall_r, 0.6) * shrink, np.maximum(b - wall_r, 0.6) * shrink

    o.add(_ztube(z_lumen, z_r1, lumen, (-100, 100), (post - 30, y_sac + 20)), FECES, _allow(RWALL))
    if state == "gas":
        for _ in range(int(rng.integers(1, 5))):
            zm, hz, depth = rng.uniform(z_lumen + 5, z_r1), rng.uniform(5, 25), rng.uniform(0.2, 0.8)

            def gasfn(X, Y, Z, zm=zm, hz=hz, depth=depth):
                cx, cy, a, b = rect(Z)
                return (Y < cy - b + 2 * b * depth * np.maximum(0, 1 - ((Z - zm) / hz) ** 2))

            o.add(_ztube(zm - hz, zm + hz, lumen, (-100, 100), (post - 30, y_sac + 20), gasfn), RGAS, _allow(FECES))
    if rng.random() < 0.08:  # endorectal coil balloon
        rb = rng.uniform(13, 24)
        c = np.array([x_r, post + rb + wall_r + rng.uniform(0, 3), rng.uniform(apex, base)])
        o.add(_ellipsoid(c, (rb * 1.15 + wall_r, rb + wall_r, rb * 1.2 + wall_r)), RWALL, not_bladder)
        o.add(_ellipsoid(c, (rb * 1.15, rb, rb * 1.2)), RGAS if rng.random() < 0.7 else FECES, _allow(RWALL))

    # ---- prostate: gland (peripheral zone), median lobe, transition zone, nodules, lesions ----
    R, semi, lvl = pro["rot"], pro["semi"], pro["level"]
    ext_p = _half_extent(semi, R) * lvl * 1.7 + 2

    def gland(X, Y, Z):
        return _prostate_rn(_local(X, Y, Z, (0, 0, 0), R), pro) < np.float32(lvl)

    if "lobe" in pro:
        lc, ls = pro["lobe"]
        o.add(_ellipsoid(lc, ls + rng.uniform(1.5, 3.5), R), BWALL, _allow(URINE))
    o.add((-ext_p, ext_p, gland), PZ, _deny(*BONE))
    if "lobe" in pro:
        o.add(_ellipsoid(lc, ls, R, _Wobble(rng, 0.04, 4)), TZ, _deny(*BONE))
    tc, ts = pro["tz"]
    o.add(_ellipsoid(R @ tc, ts, R, _Wobble(rng, 0.05, 5)), TZ, _allow(PZ))
    for _ in range(int(rng.poisson(1.5 + 3 * pro["big"]))):
        c = R @ (tc + ts * rng.uniform(-0.6, 0.6, 3))
        o.add(_ellipsoid(c, rng.uniform(2.5, 4 + 8 * pro["big"], 3), _deg_rot(rng, (90, 90, 90))), NODULE, _allow(TZ))
    if rng.random() < 0.25:  # a lesion in the peripheral zone
        c = R @ (semi * lvl * np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.3, 0.75), rng.uniform(-0.6, 0.5)]))
        o.add(_ellipsoid(c, rng.uniform(3, 11, 3), _deg_rot(rng, (90, 90, 90)), _Wobble(rng, 0.1, 4)), NODULE, _allow(PZ))
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 5))):
            c = R @ (semi * lvl * rng.uniform(-0.5, 0.5, 3))
            o.add(_ellipsoid(c, np.full(3, rng.uniform(0.8, 2.5))), CALC, _allow(PZ, TZ, NODULE))

    # ---- bones: the pelvic ring, sacrum and coccyx, femora; cortex first, then marrow ----
    cortex = rng.uniform(1.2, 3.5)
    bones: list[tuple[str, tuple]] = []  # ("capsule"|"ellipsoid", args) in the anatomy frame
    sb = bs * rng.uniform(0.9, 1.1, 3)

    def P(x, y, z):  # noqa: N802 — a point of the pelvis model
        return np.array([x, y, z], float)

    heads = []
    for s in (-1, 1):
        hc = P(s * hx, y_head, z_head) + rng.uniform(-3, 3, 3)
        heads.append((s, hc))
        bones.append(("ellipsoid", (hc, np.full(3, rh), np.eye(3))))
        tro = P(s * (hx + rng.uniform(32, 45) * bs), y_head + rng.uniform(0, 15), z_head - rng.uniform(15, 30))
        bones.append(("capsule", (hc, tro, 0.62 * rh, 0.7 * rh)))  # neck
        bones.append(("ellipsoid", (tro, np.array([13, 17, 22]) * sb, _deg_rot(rng, (10, 10, 10)))))  # greater trochanter
        bones.append(("capsule", (tro - P(0, 0, 10), P(s * (hx + rng.uniform(10, 25)), y_head + rng.uniform(-10, 10), z_head - 420),
                                  14 * bs, 12 * bs)))  # shaft
        bones.append(("capsule", (P(s * 9, y_sym, z_sym - 18 * bs), P(s * 9, y_sym - 3, z_sym + 16 * bs), 8 * bs)))  # pubic body
        bones.append(("capsule", (P(s * 12, y_sym, z_sym + 10), hc + P(-s * 22, -16, 4) * bs, 8.5 * bs)))  # superior ramus
        isch = P(s * rng.uniform(0.5, 0.62) * hx, y_head + rng.uniform(18, 32), z_head - rng.uniform(45, 60) * bs)
        bones.append(("capsule", (P(s * 10, y_sym + 4, z_sym - 18), isch, 7 * bs)))  # inferior ramus
        bones.append(("capsule", (hc + P(-s * 6, 14, -4) * bs, isch, 14 * bs, 11 * bs)))  # ischium
        il0 = hc + P(-s * 4, 10, 26) * bs
        il1 = P(s * rng.uniform(0.75, 0.95) * hx, y_head + rng.uniform(30, 55), z_head + rng.uniform(65, 85))
        bones.append(("capsule", (il0, il1, 17 * bs, 13 * bs)))  # iliac body
        wing_c = il1 + P(s * 8, -5, 25) * bs
        ang = np.arctan2(-rng.uniform(70, 110), s * 70)
        bones.append(("ellipsoid", (wing_c, np.array([58, 6.5, 42]) * sb, _rot(0, 0, ang) @ _deg_rot(rng, (8, 8, 8)))))
        bones.append(("cup", (hc, rh + 1.5, rh + 9 * bs, np.array([-s * 0.75, 0.1, 0.65]))))
    # sacrum and coccyx: flat pieces on a curve behind the rectum, widening upward
    zs = np.linspace(apex + rng.uniform(0, 15), z_head + rng.uniform(100, 140), 12)
    ys = [float(rect(np.float32(z))[1]) + ar + rng.uniform(12, 24) + 8 for z in zs]
    for i, (z, y) in enumerate(zip(zs, ys)):
        t = i / (len(zs) - 1)
        j0, j1 = max(i - 1, 0), min(i + 1, len(zs) - 1)
        tilt = np.arctan2(-(ys[j1] - ys[j0]), zs[j1] - zs[j0])
        w, d = (5 + 50 * t ** 1.3) * bs, (4 + 11 * t) * bs
        bones.append(("ellipsoid", (P(0, y + d, z), np.array([w, d, 14 * bs]), _rot(tilt, 0, 0))))
    for grow, code in ((0.0, CORTEX), (-cortex, MARROW)):
        only = _deny(*PROSTATE_CLASSES) if code == CORTEX else _allow(CORTEX)
        for kind, args in bones:
            if kind == "ellipsoid":
                c, semi_, rot_ = args
                if semi_.min() + grow > 0.5:
                    o.add(_ellipsoid(c, semi_ + grow, rot_), code, only)
            elif kind == "capsule":
                p0, p1, r0, *r1 = args
                r1v = r1[0] if r1 else r0
                if min(r0, r1v) + grow > 0.5:
                    o.add(_capsule(p0, p1, r0 + grow, r1v + grow), code, only)
            else:
                c, r_in, r_out, n = args
                n = n / np.linalg.norm(n)
                ri, ro = r_in - grow, r_out + grow
                if ro - ri > 1.0:
                    o.add(_cup(c, ri, ro, n), code, only)
    for s, hc in heads:
        lab = LABELS["Femoral head left"] if s > 0 else LABELS["Femoral head right"]
        o.label(_ellipsoid(hc, np.full(3, rh)), lab, _allow(*BONE))
    r_all = float(np.linalg.norm(ext)) + 2
    return Anatomy(o, pro["vol"] / 1000.0, r_all, half)


def _cup(c, r_in: float, r_out: float, n: np.ndarray):
    """(lo, hi, mask) of a spherical shell (acetabulum) limited to the cap around ``n``."""
    c = np.asarray(c, float)

    def fn(X, Y, Z):
        dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
        d = np.sqrt(dx * dx + dy * dy + dz * dz)
        cos = (dx * np.float32(n[0]) + dy * np.float32(n[1]) + dz * np.float32(n[2])) / (d + np.float32(1e-6))
        return (d > r_in) & (d < r_out) & (cos > -0.1)

    return c - r_out, c + r_out, fn


# ---- grids ------------------------------------------------------------------------------------
@dataclass
class SynthGrid:
    """Output grid (``shape`` z y x, ``spacing`` x y z mm, LPS ``direction`` and ``origin``), the
    simulated acquisition spacing ``acq`` (x, y, z) mm along the grid axes, and the painting
    grid (pelvis: ``k`` sub-slices per output slice; roi: the output grid itself)."""

    fov: str
    shape: tuple[int, int, int]
    spacing: np.ndarray
    direction: np.ndarray
    origin: np.ndarray
    acq: np.ndarray
    k: int
    grid: _Grid

    @property
    def paint_spacing(self) -> np.ndarray:
        return self.spacing / np.array([1.0, 1.0, self.k])


_PLANES = (  # grid axes (columns x, y, z) in LPS: axial, coronal, sagittal acquisitions
    np.eye(3),
    np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]).T,
    np.array([[0, 1.0, 0], [0, 0, -1], [1, 0, 0]]).T,
)


def _check_geometry(shape, spacing) -> None:
    if shape is not None and (len(shape) != 3 or min(int(v) for v in shape) < 4):
        raise InputError(f"Synthetic case shape must be three sizes ≥ 4 (z, y, x), got {shape!r}.")
    if spacing is not None and (len(spacing) != 3 or min(float(v) for v in spacing) <= 0):
        raise InputError(f"Synthetic case spacing must be three positive values (x, y, z) mm, got {spacing!r}.")


def _sample_grid(rng: np.random.Generator, anat: Anatomy, fov: str, shape=None, spacing=None) -> SynthGrid:
    """Draw the grid: acquisition spacing and plane, field of view and offset, flips, obliquity,
    patient tilt and scanner offset. ``shape`` (z, y, x) / ``spacing`` (x, y, z) override."""
    tilt = _deg_rot(rng, (12, 8, 8)) if rng.random() < 0.7 else np.eye(3)
    c_pat = np.array([rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-500, -50)])
    plane = int(rng.choice(3, p=[0.8, 0.1, 0.1]))
    d = _PLANES[plane] * np.where(rng.random(3) < 0.3, -1.0, 1.0)[None, :]
    if rng.random() < (0.35 if fov == "pelvis" else 0.6):
        d = _deg_rot(rng, (15, 15, 15)) @ d
    sxy, sz = round(float(rng.uniform(0.3, 1.5)), 3), round(float(rng.uniform(1.0, 6.0)), 2)
    acq = np.array([sxy, sxy, sz])
    r_p = anat.radius
    if fov == "pelvis":
        if spacing is not None:  # the output grid is the acquisition grid
            acq = np.array([float(v) for v in spacing])
        sp = acq.copy()
        k = 2 * int(round((sp[2] / 1.25 - 1) / 2)) + 1 if sp[2] > 1.25 else 1
        if shape is None:
            nxy = int(np.clip(round(rng.uniform(140, 480) / sp[0]), 32, 512))
            nz = max(8, int(round(max(rng.uniform(60, 260), 2 * r_p + 20) / sp[2])))
            nz = max(int(np.ceil((2 * r_p + 10) / sp[2])), min(nz, MAX_PAINT_VOXELS // (nxy * nxy * k)))
            nxy = min(nxy, int(np.sqrt(MAX_PAINT_VOXELS / (nz * k))))  # keep the painted grid under the cap
            shp = (nz, nxy, nxy)
        else:
            shp = tuple(int(v) for v in shape)
        off_lim = np.maximum(0.0, (np.array(shp[::-1]) - 1) * sp / 2 - r_p - 5)
    else:
        sp = np.full(3, 1.0) if spacing is None else np.array([float(v) for v in spacing])
        k = 1
        shp = tuple(int(round(v)) for v in rng.uniform(120, 160, 3)[::-1] / sp[::-1]) if shape is None else tuple(int(v) for v in shape)
        off_lim = np.minimum(20.0, np.maximum(0.0, (np.array(shp[::-1]) - 1) * sp / 2 - r_p - 3))
    off = rng.uniform(-1, 1, 3) * off_lim
    n = np.array(shp[::-1], float)
    origin = c_pat + d @ off - d @ ((n - 1) * sp / 2)
    m = tilt.T @ d @ np.diag(sp / np.array([1, 1, k]))
    t = tilt.T @ (origin - c_pat) - m[:, 2] * (k // 2)
    grid = _Grid((shp[0] * k, shp[1], shp[2]), m, t)
    return SynthGrid(fov, shp, sp, d, origin, acq, k, grid)  # type: ignore[arg-type]


# ---- intensities ------------------------------------------------------------------------------
# (mean low, mean high, spread low, spread high) per class. CT in HU; MR relative to urine ≈ 1.
_CT = {AIR: (-1010, -960, 2, 15), FAT: (-130, -70, 4, 20), PFAT: (-120, -45, 4, 25), MUSCLE: (28, 70, 3, 15),
       PMUSCLE: (22, 70, 3, 15), SOFT: (12, 65, 3, 15), CORTEX: (500, 1600, 20, 150), MARROW: (60, 400, 15, 80),
       URINE: (-5, 25, 1, 8), BWALL: (18, 60, 3, 12), RWALL: (18, 60, 3, 12), FECES: (-100, 60, 10, 80),
       RGAS: (-1010, -850, 5, 40), SV: (8, 55, 3, 12), BOWEL: (18, 60, 3, 12), BCONTENT: (-30, 50, 5, 30),
       BGAS: (-1010, -850, 5, 40), PZ: (12, 70, 2, 15), TZ: (12, 70, 2, 15), NODULE: (12, 75, 2, 15),
       VESSEL: (25, 60, 2, 10), CALC: (150, 900, 20, 100), TABLE: (-400, 300, 10, 60)}
_MR = {AIR: (0, 0.03, 0, 0.01), FAT: (0.45, 0.95, 0.02, 0.08), PFAT: (0.4, 0.9, 0.02, 0.1), MUSCLE: (0.05, 0.25, 0.01, 0.04),
       PMUSCLE: (0.05, 0.25, 0.01, 0.04), SOFT: (0.15, 0.5, 0.02, 0.08), CORTEX: (0, 0.06, 0, 0.02),
       MARROW: (0.3, 0.75, 0.02, 0.08), URINE: (0.75, 1.0, 0.01, 0.04), BWALL: (0.08, 0.3, 0.01, 0.05),
       RWALL: (0.1, 0.4, 0.01, 0.06), FECES: (0.05, 0.6, 0.03, 0.15), RGAS: (0, 0.05, 0, 0.02), SV: (0.5, 1.0, 0.02, 0.1),
       BOWEL: (0.15, 0.45, 0.01, 0.06), BCONTENT: (0.1, 0.9, 0.02, 0.12), BGAS: (0, 0.05, 0, 0.02),
       PZ: (0.35, 0.9, 0.02, 0.1), TZ: (0.15, 0.5, 0.02, 0.1), NODULE: (0.1, 0.7, 0.02, 0.08), VESSEL: (0.0, 0.7, 0.01, 0.08),
       CALC: (0, 0.05, 0, 0.02), TABLE: (0, 0.02, 0, 0.01)}
_NEIGHBOURS = (SOFT, PMUSCLE, MUSCLE, BWALL, RWALL, SV, PFAT, URINE)


def _intensities(contrast: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (mean, spread) float32 arrays for ``contrast``: CT in HU, MR and random in
    arbitrary units (≈ 0 … 1). The prostate may come out brighter, darker or equal to any
    neighbour."""
    if contrast == "random":
        mean = rng.uniform(0, 1, N_CLASSES)
        std = rng.uniform(0, 0.1, N_CLASSES)
        if rng.random() < 0.5:  # a homogeneous gland
            mean[[TZ, NODULE]] = mean[PZ]
        equal_p, neighbours = 0.25, _NEIGHBOURS
    else:
        table = _CT if contrast == "ct" else _MR
        lo, hi, slo, shi = (np.array([table[c][i] for c in range(N_CLASSES)], float) for i in range(4))
        mean, std = rng.uniform(lo, hi), rng.uniform(slo, shi)
        if contrast == "ct":
            if rng.random() < 0.1:  # contrast medium in the urine, the bowel, the vessels
                mean[URINE] = rng.uniform(150, 700)
            if rng.random() < 0.15:
                mean[BCONTENT] = rng.uniform(150, 500)
            if rng.random() < 0.2:
                mean[VESSEL] = rng.uniform(120, 300)
            equal_p, neighbours = 0.2, _NEIGHBOURS[:6]
        else:
            if rng.random() < 0.15:  # fat suppression
                mean[[FAT, PFAT, MARROW]] *= rng.uniform(0.05, 0.3)
            equal_p, neighbours = 0.15, _NEIGHBOURS
    if rng.random() < equal_p:  # no contrast between the gland and one neighbour
        mean[[PZ, TZ, NODULE]] = mean[int(rng.choice(neighbours))] + rng.normal(0, 0.01 if contrast != "ct" else 1.0, 3)
    return mean.astype(np.float32), std.astype(np.float32)


def _white(rng: np.random.Generator, shape) -> np.ndarray:
    """Unit-variance white noise (uniform, from bytes: fast), float32."""
    table = ((np.arange(256, dtype=np.float32) - 127.5) * np.float32(np.sqrt(12.0) / 256)).astype(np.float32)
    return table[np.frombuffer(rng.bytes(int(np.prod(shape))), np.uint8).reshape(shape)]


def _resize_linear(a: np.ndarray, shape) -> np.ndarray:
    """Separable linear resampling of ``a`` onto ``shape`` (cell-centred, edges clamped)."""
    a = np.asarray(a, np.float32)
    order = sorted(range(a.ndim), key=lambda ax: shape[ax] / a.shape[ax])  # shrink first
    for ax in order:
        m, n = a.shape[ax], int(shape[ax])
        if m == n:
            continue
        pos = np.clip((np.arange(n) + 0.5) * (m / n) - 0.5, 0, m - 1)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, m - 1)
        sh = [1] * a.ndim
        sh[ax] = n
        w = (pos - i0).astype(np.float32).reshape(sh)
        a = np.take(a, i0, axis=ax) * (1 - w) + np.take(a, i1, axis=ax) * w
    return a


def _smooth(rng: np.random.Generator, shape, cells: tuple[int, int, int]) -> np.ndarray:
    """A smooth random field of unit-ish amplitude: a coarse normal grid of ``cells`` (z, y, x),
    refined by a cubic spline ×4, then linear onto ``shape``."""
    coarse = rng.standard_normal(tuple(max(2, int(c)) for c in cells)).astype(np.float32)
    fine = ndimage.zoom(coarse, 4, order=3, mode="nearest", grid_mode=True)
    return _resize_linear(fine, shape)


def _gain(sigma: float) -> float:
    """Std of unit white noise after a 1D Gaussian filter of ``sigma`` voxels."""
    if sigma < 0.05:
        return 1.0
    r = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    return float(np.sqrt((k * k).sum()))


def _fuzzy_prostate(img: np.ndarray, labels: np.ndarray, spacing_zyx: np.ndarray, sigma_mm: float) -> None:
    """Blur the image across the prostate boundary (in place) with ``sigma_mm``: from no edge
    blur (0) to a wide fuzzy transition."""
    pro = labels == LABELS["Prostate"]
    if sigma_mm <= 0 or not pro.any():
        return
    sv = sigma_mm / spacing_zyx
    pad = np.ceil(3 * sv).astype(int) + 1
    idx = [np.flatnonzero(pro.any(axis=tuple(j for j in range(3) if j != ax))) for ax in range(3)]
    sl = tuple(slice(max(0, int(i[0]) - p), min(n, int(i[-1]) + 1 + p)) for i, p, n in zip(idx, pad, img.shape))
    g = ndimage.gaussian_filter(pro[sl].astype(np.float32), sv)
    w = 4 * g * (1 - g)
    blk = img[sl]
    blk += w * (ndimage.gaussian_filter(blk, sv) - blk)


def _streaks(img: np.ndarray, rng: np.random.Generator, spacing_zyx: np.ndarray) -> None:
    """CT streaks (beam hardening / metal-like): a few bright or dark lines in the grid's
    slice planes over a band of slices (in place, HU)."""
    nz, ny, nx = img.shape
    yy, xx = np.meshgrid(np.arange(ny, dtype=np.float32) * spacing_zyx[1], np.arange(nx, dtype=np.float32) * spacing_zyx[2], indexing="ij")
    pat = np.zeros((ny, nx), np.float32)
    y0, x0 = rng.uniform(0.3, 0.7) * ny * spacing_zyx[1], rng.uniform(0.3, 0.7) * nx * spacing_zyx[2]
    for _ in range(int(rng.integers(1, 7))):
        th = rng.uniform(-0.5, 0.5) + (0 if rng.random() < 0.6 else np.pi / 2)
        yc, xc = y0 + rng.normal(0, 15), x0 + rng.normal(0, 30)
        d = np.abs((xx - xc) * np.sin(th) - (yy - yc) * np.cos(th))
        pat += np.float32(rng.uniform(30, 200) * rng.choice([-1, 1])) * np.exp(-0.5 * (d / np.float32(rng.uniform(1, 6))) ** 2)
    z = np.arange(nz) * spacing_zyx[0]
    win = np.exp(-0.5 * ((z - rng.uniform(0.2, 0.8) * z[-1]) / rng.uniform(10, 60)) ** 2).astype(np.float32)
    img += win[:, None, None] * pat[None]


def _render(tissue: np.ndarray, labels: np.ndarray, plan: SynthGrid, contrast: str, rng: np.random.Generator) -> np.ndarray:
    """The image on the output grid (float32): class intensities with texture on the painting
    grid, fuzzy prostate edge, CT streaks, slice profile and in-plane blur, acquisition
    resampling, bias field, noise, gamma."""
    mean, std = _intensities(contrast, rng)
    sp_zyx = plan.paint_spacing[::-1]
    img = mean[tissue]
    w = np.float32(rng.uniform(0.2, 1.0))
    tex = _white(rng, tissue.shape)
    tex *= w
    cell = rng.uniform(4, 15)  # mm
    tex += np.float32(np.sqrt(1 - w * w)) * _smooth(rng, tissue.shape, tuple(np.ceil(np.array(tissue.shape) * sp_zyx / cell / 4) + 1))
    tex *= std[tissue]
    img += tex
    del tex
    _fuzzy_prostate(img, labels, sp_zyx, 0.0 if rng.random() < 0.3 else rng.uniform(0.5, 4.0))
    if contrast == "ct" and rng.random() < 0.3:
        _streaks(img, rng, sp_zyx)

    # resolution: point-spread function and sampling on the acquisition grid
    acq_zyx = plan.acq[::-1]
    fwhm = acq_zyx * np.array([rng.uniform(0.8, 1.3), rng.uniform(0.6, 1.4), 1.0])
    fwhm[2] = fwhm[1]
    sig = np.sqrt(np.maximum((fwhm / 2.355) ** 2 - (0.35 * sp_zyx) ** 2, 0)) / sp_zyx
    if plan.fov == "pelvis":
        if sig[0] > 0.2:
            img = ndimage.gaussian_filter1d(img, sig[0], axis=0, truncate=3.0)
        img = np.ascontiguousarray(img[plan.k // 2 :: plan.k])
        sig_in = rng.uniform(0.3, 0.9) * (1 + (rng.random() < 0.3) * rng.uniform(0, 1.5))
        img = ndimage.gaussian_filter(img, (0, sig_in, sig_in), truncate=3.0)
        coarse = img.shape
    else:
        img = ndimage.gaussian_filter(img, sig, truncate=3.0)
        coarse = tuple(int(max(4, round(n * s / a))) if a > 1.15 * s else n for n, s, a in zip(img.shape, sp_zyx, acq_zyx))
        img = _resize_linear(img, coarse)

    # bias field and noise on the acquisition grid
    ref = float(mean.max() - mean.min()) if contrast != "ct" else 1.0
    cells = tuple(int(rng.integers(2, 5)) for _ in range(3))
    if contrast == "ct":
        if rng.random() < 0.5:  # low-frequency shading (cupping, scatter)
            img += np.float32(rng.uniform(0, 25)) * _smooth(rng, coarse, cells)
        sn = rng.uniform(4, 35)
        sc = rng.uniform(0.4, 1.2)
        noise = ndimage.gaussian_filter(_white(rng, coarse), (0, sc, sc), truncate=3.0)
        img += noise * np.float32(sn / _gain(sc) ** 2)
    else:
        img *= np.exp(np.float32(rng.uniform(0.0, 0.35 if contrast == "mr" else 0.5)) * _smooth(rng, coarse, cells))
        if contrast == "mr" and rng.random() < 0.5:  # receive-coil profile: brighter towards two sides
            yc = np.linspace(-1, 1, coarse[1], dtype=np.float32)[None, :, None]
            img *= 1 + np.float32(rng.uniform(0.1, 0.5)) * yc * yc
        sn = np.float32(rng.uniform(0.003, 0.06 if contrast == "mr" else 0.08) * ref)
        if contrast == "mr" or rng.random() < 0.5:  # Rician magnitude
            re = img + sn * rng.standard_normal(coarse, dtype=np.float32)
            im = sn * rng.standard_normal(coarse, dtype=np.float32)
            img = np.sqrt(re * re + im * im)
        else:
            img += sn * rng.standard_normal(coarse, dtype=np.float32)
    if img.shape != plan.shape:
        img = _resize_linear(img, plan.shape)

    if contrast != "ct":  # gamma on [0, 1] at the 99.5th percentile, then a random scale
        sample = img.ravel()[rng.integers(0, img.size, 200_000)]
        hi = float(np.percentile(sample, 99.5)) or 1.0
        img = np.clip(img / np.float32(hi), 0, None)
        img **= np.float32(np.exp(np.clip(rng.normal(0, 0.3), -0.7, 0.7)))
        img *= np.float32(rng.uniform(300, 3000))
    return img


# ---- cases ------------------------------------------------------------------------------------
def _check(contrast: str, fov: str, seed: int) -> tuple[str, str]:
    c, f = str(contrast).lower(), str(fov).lower()
    if c not in (*CONTRASTS, "mix"):
        raise InputError(f"Unknown synthetic contrast {contrast!r}; use one of {', '.join(CONTRASTS)} or 'mix'.")
    if f not in FOVS:
        raise InputError(f"Unknown synthetic field of view {fov!r}; use 'pelvis' (whole scan) or 'roi' (stage-2 crop).")
    if int(seed) < 0:
        raise InputError(f"The seed must be ≥ 0, got {seed}.")
    return c, f


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent random streams of one seed: anatomy, grid, image, contrast choice."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)]


def contrast_of(seed: int, contrast: str = "mix") -> str:
    """The contrast a case of ``seed`` gets: ``contrast`` itself, or for "mix" one of
    :data:`CONTRASTS` drawn from the seed (equal odds)."""
    c = str(contrast).lower()
    return CONTRASTS[int(_streams(seed)[3].integers(3))] if c == "mix" else c


def sample_grid(seed: int, fov: str = "pelvis", *, shape=None, spacing=None) -> SynthGrid:
    """The grid :func:`make_synth_case` uses for ``seed`` (no painting: cheap)."""
    _, f = _check("ct", fov, seed)
    _check_geometry(shape, spacing)
    ra, rg, _, _ = _streams(seed)
    return _sample_grid(rg, sample_anatomy(ra), f, shape, spacing)


def make_synth_labels(seed: int, fov: str = "roi", *, shape=None, spacing=None) -> SynthLabels:
    """The label map (and tissue classes) of ``seed`` without an image: the same anatomy as
    :func:`make_synth_case` (its own random stream), on that grid or on ``shape`` / ``spacing``.
    Cheap at coarse spacing (for statistics over many seeds)."""
    _, f = _check("ct", fov, seed)
    _check_geometry(shape, spacing)
    ra, rg, _, _ = _streams(seed)
    anat = sample_anatomy(ra)
    plan = _sample_grid(rg, anat, f, shape, spacing)
    tissue, labels = _paint(plan.grid, anat.ops)
    c = plan.k // 2
    tissue, labels = tissue[c :: plan.k], labels[c :: plan.k]
    geo = (plan.spacing, plan.origin, plan.direction)
    return SynthLabels(Volume(labels, *geo), Volume(np.ascontiguousarray(tissue), *geo), anat.prostate_ml, int(seed))


def make_synth_case(seed: int, contrast: str = "mix", fov: str = "pelvis", *, shape=None, spacing=None) -> SynthCase:
    """A domain-randomised synthetic pelvic case, deterministic per ``seed``.

    ``contrast``: "ct" (HU, int16), "mr" (T2-like), "random" (every class independent) or
    "mix" (one of the three, drawn from the seed). ``fov``: "pelvis" = a scan on its random
    acquisition grid (0.3–1.5 mm in-plane, 1–6 mm slices, ≤ 512² in-plane, 60–260 mm through
    plane); "roi" = a 120–160 mm region around the prostate on a 1 mm grid with the acquisition
    simulated. ``shape`` (z, y, x) / ``spacing`` (x, y, z) mm override the output grid (tests).
    Modality is "ct" for CT-like cases and "mr" otherwise.
    """
    c, f = _check(contrast, fov, seed)
    _check_geometry(shape, spacing)
    ra, rg, ri, _ = _streams(seed)
    c = contrast_of(seed, c)
    anat = sample_anatomy(ra)
    plan = _sample_grid(rg, anat, f, shape, spacing)
    tissue, labels = _paint(plan.grid, anat.ops)
    img = _render(tissue, labels, plan, c, ri)
    del tissue
    labels = np.ascontiguousarray(labels[plan.k // 2 :: plan.k])
    if c == "ct":
        arr = np.rint(np.clip(img, -1024, 3071)).astype(np.int16)
    else:
        arr = np.rint(np.clip(img, 0, 32767)).astype(np.int16)
    geo = (plan.spacing, plan.origin, plan.direction)
    return SynthCase(Volume(arr, *geo), Volume(labels, *geo), "ct" if c == "ct" else "mr", int(seed),
                     contrast=c, fov=f, acquisition_spacing=plan.acq.copy(), prostate_ml=anat.prostate_ml)


def write_synth_cases(
    out: str | Path,
    n: int,
    contrast: str = "mix",
    seed: int = 0,
    fov: str = "pelvis",
    progress: Callable[[int, int, str], None] | None = None,
    *,
    shape=None,
    spacing=None,
) -> Path:
    """Write ``n`` cases (seeds ``seed``…``seed+n-1``) as ``caseNNN.nrrd`` + ``caseNNN.seg.nrrd``
    (SNOMED-coded segments) and a ``manifest.json`` (``voxmetric-cases/1``; per case its
    modality, and the generator's ``contrast`` and ``fov``) into ``out``; returns the manifest."""
    from . import io

    c, f = _check(contrast, fov, seed)
    _check_geometry(shape, spacing)
    if int(n) < 1:
        raise InputError(f"Number of synthetic cases must be at least 1, got {n}.")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    segments = [io.segment_info(name, value) for name, value in LABELS.items()]
    cases = []
    for i in range(int(n)):
        cid = f"case{i:03d}"
        s = int(seed) + i
        if progress is not None:
            progress(i, int(n), f"{cid} ({contrast_of(s, c)}, {f})")
        case = make_synth_case(s, c, f, shape=shape, spacing=spacing)
        io.write_volume(case.image, folder / f"{cid}.nrrd")
        io.write_segmentation(folder / f"{cid}.seg.nrrd", case.labels, segments)
        cases.append({"id": cid, "image": f"{cid}.nrrd", "label": f"{cid}.seg.nrrd", "modality": case.modality,
                      "segment": "Prostate", "generator": "synth", "contrast": case.contrast, "fov": f, "seed": s})
    manifest = folder / "manifest.json"
    tmp = folder / ".manifest.json.tmp"
    tmp.write_text(json.dumps({"format": "voxmetric-cases/1", "cases": cases}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest)
    if progress is not None:
        progress(int(n), int(n), "done")
    return manifest
