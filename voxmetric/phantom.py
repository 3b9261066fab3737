"""Synthetic pelvic CT and T2-like MR cases with ground-truth labels (tests, demo, smoke training).

Anatomy is built in a *patient frame*: LPS millimetres (x → patient left, y → posterior,
z → superior) with the prostate centre at the origin. The image grid is placed in that frame
with a random field of view, spacing and axis flips (encoded in the direction matrix, so the
anatomy stays right in physical space), and shifted by a random scanner offset.

Rendering: a ``uint8`` tissue-class map is painted structure by structure, each structure only
inside its bounding sub-block; a per-case look-up table turns classes into intensities; the
prostate (fuzzy boundary, low CT contrast, MR zones) is blended in; one Gaussian filter gives
partial-volume blur and correlated noise. Labels follow :data:`LABELS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError
from .volume import Volume

LABELS: dict[str, int] = {
    "Prostate": 1,
    "Bladder": 2,
    "Rectum": 3,
    "Femoral head left": 4,
    "Femoral head right": 5,
}
MODALITIES = ("ct", "mr")

# Tissue classes of the intermediate map.
AIR, FAT, MUSCLE, SOFT, CORTEX, MARROW, URINE, BWALL, RWALL, FECES, GAS, SV, BOWEL = range(13)
_N_TISSUE = 13


@dataclass
class PhantomCase:
    """One synthetic case: ``image`` (CT: HU int16; MR: int16 arbitrary units) and ``labels``
    (uint8, values of :data:`LABELS`) on the same grid."""

    image: Volume
    labels: Volume
    modality: str
    seed: int


# ---- geometry helpers ---------------------------------------------------------------------
def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    """3×3 rotation Rz·Ry·Rx (angles in radians); columns = local axes in the patient frame."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Grid:
    """Voxel-centre coordinates of the image grid in the patient frame, one 1D array per axis
    (the direction matrix is diagonal: flips only)."""

    def __init__(self, shape_zyx: tuple[int, int, int], spacing: np.ndarray, origin_frame: np.ndarray, flips: np.ndarray):
        nz, ny, nx = shape_zyx
        self.shape = shape_zyx
        self.x = (origin_frame[0] + flips[0] * spacing[0] * np.arange(nx)).astype(np.float32)
        self.y = (origin_frame[1] + flips[1] * spacing[1] * np.arange(ny)).astype(np.float32)
        self.z = (origin_frame[2] + flips[2] * spacing[2] * np.arange(nz)).astype(np.float32)

    @staticmethod
    def _range(a: np.ndarray, lo: float, hi: float) -> slice | None:
        idx = np.flatnonzero((a >= lo) & (a <= hi))
        return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else None

    def block(self, lo, hi):
        """Sub-block covering the frame box [lo, hi] (x, y, z mm): ``(slices (z, y, x), Z, Y, X)``
        with broadcastable coordinate arrays, or None when the box misses the grid."""
        sx, sy, sz = (self._range(a, l, h) for a, l, h in zip((self.x, self.y, self.z), lo, hi))
        if sx is None or sy is None or sz is None:
            return None
        return ((sz, sy, sx), self.z[sz][:, None, None], self.y[sy][None, :, None], self.x[sx][None, None, :])

    def sphere_block(self, c, r):
        c = np.asarray(c, float)
        return self.block(c - r, c + r)


def _local(c, rot: np.ndarray, Z, Y, X):
    """Local coordinates u_k = Σ_j rot[j, k] (p_j − c_j) of block points (broadcast arrays)."""
    dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
    r = rot.astype(np.float32)
    return [r[0, k] * dx + r[1, k] * dy + r[2, k] * dz for k in range(3)]


class _Lumps:
    """A smooth random radial deformation δ(u) on normalised local coordinates u: a sum of a few
    low-frequency cosines (amplitude ``amp`` each)."""

    def __init__(self, rng: np.random.Generator, amp: float, n: int = 6, freq: tuple[float, float] = (1.2, 2.6)):
        d = rng.normal(size=(n, 3))
        self.w = (d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(*freq, size=(n, 1))).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        self.amp = np.float32(amp)

    def __call__(self, u):
        out = 0.0
        for w, ph in zip(self.w, self.phase):
            out = out + np.cos(w[0] * u[0] + w[1] * u[1] + w[2] * u[2] + ph)
        return self.amp * out


def _ellipsoid_depth(u, semi) -> np.ndarray:
    """Approximate signed depth (mm, > 0 inside) below the surface of an ellipsoid from local
    coordinates u: (1 − r²) / |∇r²| (first order, exact on the surface)."""
    s = [np.float32(v) for v in semi]
    r2 = (u[0] / s[0]) ** 2 + (u[1] / s[1]) ** 2 + (u[2] / s[2]) ** 2
    g = np.sqrt((u[0] / s[0] ** 2) ** 2 + (u[1] / s[1] ** 2) ** 2 + (u[2] / s[2] ** 2) ** 2) * 2 + 1e-6
    return (1 - r2) / g


# ---- the painter --------------------------------------------------------------------------
class _Painter:
    def __init__(self, grid: _Grid, rng: np.random.Generator):
        self.g = grid
        self.rng = rng
        self.tissue = np.zeros(grid.shape, np.uint8)
        self.labels = np.zeros(grid.shape, np.uint8)
        self._bone: list[tuple[tuple[slice, ...], np.ndarray]] = []

    # body-like structures: per-slice ellipses in the axial plane (cheap broadcast tests)
    def ellipses_z(self, zlo: float, zhi: float, fn):
        """``fn(z) -> list of (cx, cy, a, b)`` arrays over the slices z ∈ [zlo, zhi] (a, b ≤ 0:
        absent on that slice); returns (z slice, bool mask (nz', ny, nx) of the union) or None.
        Each row's inside is an x interval, so only one broadcast compare per ellipse."""
        sz = self.g._range(self.g.z, zlo, zhi)
        if sz is None:
            return None
        z = self.g.z[sz]
        mask = np.zeros((z.size,) + self.g.shape[1:], bool)
        tmp = np.empty_like(mask)
        for cx, cy, a, b in fn(z):
            a, b, cx, cy = (np.broadcast_to(np.asarray(v, np.float32), z.shape) for v in (a, b, cx, cy))
            ty = 1 - ((self.g.y[None, :] - cy[:, None]) / np.maximum(b, 1e-3)[:, None]) ** 2
            hw = np.where((b[:, None] > 0) & (ty > 0), a[:, None] * np.sqrt(np.maximum(ty, 0)), -1)
            dx = np.abs(self.g.x[None, :] - cx[:, None])
            np.less_equal(dx[:, None, :], hw[:, :, None].astype(np.float32), out=tmp)
            mask |= tmp
        return sz, mask

    def paint(self, sl, mask: np.ndarray, code: int, label: int | None = None) -> None:
        np.copyto(self.tissue[sl], np.uint8(code), where=mask)
        if label is not None:
            np.copyto(self.labels[sl], np.uint8(label), where=mask)

    # solid bone pieces: remembered as depth maps, painted in two passes (union of pieces)
    def bone_capsule(self, p0, p1, r0: float, r1: float | None = None) -> None:
        r1 = r0 if r1 is None else r1
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        rm = max(r0, r1)
        blk = self.g.block(np.minimum(p0, p1) - rm, np.maximum(p0, p1) + rm)
        if blk is None:
            return
        sl, Z, Y, X = blk
        v = (p1 - p0).astype(np.float32)
        dx, dy, dz = X - np.float32(p0[0]), Y - np.float32(p0[1]), Z - np.float32(p0[2])
        t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / np.float32(v @ v), 0, 1)
        d = np.sqrt((dx - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dz - t * v[2]) ** 2)
        self._bone.append((sl, (r0 + (r1 - r0) * t) - d))

    def bone_ellipsoid(self, c, semi, rot: np.ndarray) -> None:
        blk = self.g.sphere_block(c, max(semi))
        if blk is None:
            return
        sl, Z, Y, X = blk
        self._bone.append((sl, _ellipsoid_depth(_local(c, rot, Z, Y, X), semi)))

    def bone_cup(self, c, r_in: float, r_out: float, axis, cos_lim: float) -> None:
        """A spherical shell (acetabulum) limited to the cap around ``axis``."""
        blk = self.g.sphere_block(c, r_out)
        if blk is None:
            return
        sl, Z, Y, X = blk
        dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
        d = np.sqrt(dx * dx + dy * dy + dz * dz)
        n = np.asarray(axis, np.float32) / np.linalg.norm(axis)
        cos = (dx * n[0] + dy * n[1] + dz * n[2]) / (d + 1e-6)
        depth = np.minimum(d - r_in, r_out - d)
        depth = np.minimum(depth, (cos - cos_lim) * d)  # taper to nothing at the rim
        self._bone.append((sl, depth))

    def flush_bone(self, cortex_mm: float) -> None:
        """Paint the bone pieces: cortex where inside any piece, marrow where deeper than
        ``cortex_mm`` in any (= the union's depth). Organ labels under bone are cleared."""
        for sl, depth in self._bone:
            inside = depth > 0
            self.tissue[sl][inside] = CORTEX
            lab = self.labels[sl]
            lab[inside & (lab <= LABELS["Rectum"])] = 0
        for sl, depth in self._bone:
            self.tissue[sl][depth > cortex_mm] = MARROW
        self._bone.clear()


# ---- intensities --------------------------------------------------------------------------
def _ct_table(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Per-case HU for each tissue class, and the prostate/zone values."""
    soft = rng.uniform(31, 39)
    lut = np.zeros(_N_TISSUE, np.float32)
    lut[AIR] = -1000
    lut[FAT] = rng.uniform(-110, -80)
    lut[MUSCLE] = rng.uniform(45, 60)
    lut[SOFT] = soft
    lut[CORTEX] = rng.uniform(800, 1300)
    lut[MARROW] = rng.uniform(100, 220)
    lut[URINE] = rng.uniform(0, 15)
    lut[BWALL] = soft + rng.uniform(0, 8)
    lut[RWALL] = soft + rng.uniform(2, 10)
    lut[FECES] = rng.uniform(-40, 30)
    lut[GAS] = rng.uniform(-990, -900)
    lut[SV] = soft + rng.uniform(-2, 4)
    lut[BOWEL] = soft + rng.uniform(0, 10)
    p = soft + rng.uniform(3, 7)
    return lut, {"pz": p, "tz": p + rng.uniform(-1, 1), "texture": 20.0}


def _mr_table(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """T2-like arbitrary units: bright urine, fat and peripheral zone; dark muscle, cortex, gas."""
    k = rng.uniform(0.8, 1.25)
    lut = np.zeros(_N_TISSUE, np.float32)
    lut[AIR] = 0
    lut[FAT] = rng.uniform(330, 420)
    lut[MUSCLE] = rng.uniform(70, 100)
    lut[SOFT] = rng.uniform(140, 190)
    lut[CORTEX] = rng.uniform(5, 20)
    lut[MARROW] = rng.uniform(220, 300)
    lut[URINE] = rng.uniform(800, 1000)
    lut[BWALL] = rng.uniform(60, 90)
    lut[RWALL] = rng.uniform(90, 130)
    lut[FECES] = rng.uniform(100, 250)
    lut[GAS] = rng.uniform(0, 10)
    lut[SV] = rng.uniform(450, 600)
    lut[BOWEL] = rng.uniform(150, 250)
    return lut * k, {"pz": rng.uniform(380, 480) * k, "tz": rng.uniform(150, 200) * k, "texture": 45.0 * k}


# ---- anatomy ------------------------------------------------------------------------------
def _body(p: _Painter, rng: np.random.Generator, bs: float) -> None:
    """Skin outline, subcutaneous fat and the muscle mass; thighs separate below the perineum."""
    am = 168 * bs + rng.uniform(0, 14)  # muscle half-width at the hips
    bm = 95 * bs + rng.uniform(0, 12)  # muscle half-depth (AP)
    ym = 25 + rng.uniform(-5, 5)  # muscle centre y (posterior of the prostate)
    f_lat, f_ant, f_post = rng.uniform(6, 30), rng.uniform(10, 45), rng.uniform(5, 20)
    xt, at, bt = 92 * bs, 80 * bs + rng.uniform(0, 8), 75 * bs + rng.uniform(0, 8)
    zp0, zp1 = -75 + rng.uniform(-8, 8), -28 + rng.uniform(-6, 6)  # central body fades out below

    def shapes(z, fat: bool):
        f = np.clip((z - zp0) / (zp1 - zp0), 0, 1)
        waist = 1 - 0.12 * np.clip((z - 60) / 80, 0, 1)
        a = am * waist * np.sqrt(f) + (f_lat if fat else 0)
        tb = (f_ant + f_post) / 2 if fat else 0
        b = bm * f**0.3 + tb
        cy = ym + ((f_post - f_ant) / 2 if fat else 0)
        out: list[tuple[float, float, Any, Any]] = [(0.0, cy, np.where(f > 0, a, 0), np.where(f > 0, b, 0))]
        thigh = z < 5
        if thigh.any():
            e = f_lat if fat else 0
            for s in (-1, 1):
                out.append((s * xt, 15.0, at + e, np.where(thigh, bt + e, 0)))
        return out

    zlo, zhi = float(p.g.z.min()), float(p.g.z.max())
    body = p.ellipses_z(zlo, zhi, lambda z: shapes(z, True))
    muscle = p.ellipses_z(zlo, zhi, lambda z: shapes(z, False))
    if body is None or muscle is None:
        return
    sl = (body[0], slice(None), slice(None))
    p.paint(sl, body[1], FAT)
    p.paint(sl, muscle[1], MUSCLE)
    # a table-side flattening of the back: skin behind y_max is cut
    ycut = ym + bm + f_post * rng.uniform(0.3, 0.8)
    blk = p.g.block((-1e4, ycut, -1e4), (1e4, 1e4, 1e4))
    if blk is not None:
        p.tissue[blk[0]] = AIR
    # intermuscular fat: gluteal planes behind the hips, femoral triangles in front of them
    for s in (-1, 1):
        for _ in range(2):
            c = np.array([s * rng.uniform(85, 115) * bs, rng.uniform(10, 35), 0.0])
            a, b, t = rng.uniform(45, 75) * bs, rng.uniform(50, 80) * bs, rng.uniform(2, 5)
            blk = p.g.block((c[0] - a, c[1], -70), (c[0] + a, c[1] + b, 120))
            if blk is not None:
                sl, Z, Y, X = blk
                rr = np.sqrt(((X - c[0]) / a) ** 2 + ((Y - c[1]) / b) ** 2)
                band = (rr < 1) & (rr > 1 - t / min(a, b)) & (p.tissue[sl] == MUSCLE)
                p.paint(sl, band, FAT)
        c = np.array([s * rng.uniform(62, 78) * bs, rng.uniform(-58, -42), 0.0])
        semi = np.array([rng.uniform(14, 22), rng.uniform(10, 15)])
        blk = p.g.block((c[0] - semi[0], c[1] - semi[1], -90), (c[0] + semi[0], c[1] + semi[1], 25))
        if blk is not None:
            sl, Z, Y, X = blk
            p.paint(sl, (((X - c[0]) / semi[0]) ** 2 + ((Y - c[1]) / semi[1]) ** 2 < 1) & (p.tissue[sl] == MUSCLE), FAT)
            for dx, r in ((-s * 5, 4.0), (-s * 16, 5.5)):  # femoral artery and vein
                p.paint(sl, (X - c[0] - dx * 0.5) ** 2 + (Y - c[1]) ** 2 < r * r, SOFT)


def _pelvic_soft_tissue(p: _Painter, rng: np.random.Generator, bs: float, pro: dict) -> None:
    """Fat of the pelvic cavity (with ischiorectal fossae), levator ani, bowel loops above the
    bladder and the periprostatic soft tissue."""
    a0, b0 = 50 * bs + rng.uniform(-3, 3), 50 + rng.uniform(-3, 5)

    def cavity(z):
        up = np.clip((z - 40) / 60, 0, 1)
        lo = np.clip((z + 58) / 18, 0, 1)
        return [(0 * z, 8 + 6 * up, (a0 + 40 * bs * up) * lo, (b0 + 10 * up) * lo)]

    res = p.ellipses_z(-60, 140, cavity)
    if res is not None:
        sl = (res[0], slice(None), slice(None))
        p.tissue[sl][res[1] & (p.tissue[sl] == MUSCLE)] = FAT
    # levator ani: the lower half of an ellipsoidal shell around prostate and rectum
    c = np.array([0.0, 18.0, -12.0]) + rng.uniform(-2, 2, 3)
    semi = np.array([42.0, 40.0, 38.0]) * bs
    blk = p.g.block(c - semi, c + semi)
    if blk is not None:
        sl, Z, Y, X = blk
        d = _ellipsoid_depth(_local(c, np.eye(3), Z, Y, X), semi)
        p.paint(sl, (d > 0) & (d < rng.uniform(4, 6)) & (Z < c[2] + 6), MUSCLE)
    # bowel loops (wall + fluid/gas) in the false pelvis
    for _ in range(int(rng.integers(4, 9))):
        cc = np.array([rng.uniform(-55, 55), rng.uniform(-35, 35), rng.uniform(70, 135)])
        r = rng.uniform(10, 20)
        blk = p.g.sphere_block(cc, r)
        if blk is None:
            continue
        sl, Z, Y, X = blk
        d2 = (X - cc[0]) ** 2 + (Y - cc[1]) ** 2 + ((Z - cc[2]) * 0.8) ** 2
        p.paint(sl, d2 < r * r, BOWEL)
        inner = d2 < (r - 3) ** 2
        p.paint(sl, inner, FECES)
        if rng.random() < 0.6:
            p.paint(sl, inner & (Y < cc[1] + rng.uniform(-r / 2, r / 3)), GAS)
    # periprostatic soft tissue (~35 HU surroundings that the prostate barely differs from); its
    # own centre, size, tilt and lumps so that its outline does not give the prostate away
    c = pro["c"] + np.array([rng.uniform(-3, 3), rng.uniform(-1, 4), rng.uniform(-3, 3)])
    semi = pro["semi"] + rng.uniform(11, 20, 3)
    rot = _rot(np.deg2rad(rng.uniform(-30, 0)), np.deg2rad(rng.uniform(-8, 8)), np.deg2rad(rng.uniform(-8, 8)))
    lumps = _Lumps(rng, 0.03, n=4)
    blk = p.g.sphere_block(c, 1.1 * max(semi))
    if blk is not None:
        sl, Z, Y, X = blk
        u = _local(c, rot, Z, Y, X)
        un = [u[k] / np.float32(semi[k]) for k in range(3)]
        p.paint(sl, np.sqrt(un[0] ** 2 + un[1] ** 2 + un[2] ** 2) < 1 + lumps(un), SOFT)


def _seminal_vesicles(p: _Painter, rng: np.random.Generator, pro: dict) -> None:
    top = pro["c"][2] + pro["semi"][2] * 0.8
    for s in (-1, 1):
        c = np.array([s * rng.uniform(14, 22), pro["c"][1] + pro["semi"][1] * 0.6 + rng.uniform(2, 6), top + rng.uniform(4, 9)])
        semi = np.array([rng.uniform(15, 22), rng.uniform(4, 6), rng.uniform(6, 9)])
        rot = _rot(0.0, s * np.deg2rad(rng.uniform(-30, -10)), s * np.deg2rad(rng.uniform(5, 20)))
        blk = p.g.sphere_block(c, semi.max())
        if blk is None:
            continue
        sl, Z, Y, X = blk
        p.paint(sl, _ellipsoid_depth(_local(c, rot, Z, Y, X), semi) > 0, SV)


def _bladder(p: _Painter, rng: np.random.Generator, pro: dict) -> None:
    vol = rng.uniform(60, 450) * 1000.0  # mm³
    ratio = np.array([1.2, rng.uniform(0.8, 1.0), rng.uniform(0.75, 0.95)])
    r = (3 * vol / (4 * np.pi * ratio.prod())) ** (1 / 3)
    semi = r * ratio
    top = pro["c"][2] + pro["semi"][2] * 0.9
    c = np.array([rng.uniform(-6, 6), rng.uniform(-14, -4) - 0.25 * semi[1], top + semi[2] - rng.uniform(2, 6)])
    rot = _rot(*np.deg2rad(rng.uniform(-10, 10, 3)))
    lumps = _Lumps(rng, 0.03, freq=(1.0, 2.0))
    blk = p.g.sphere_block(c, semi.max() * 1.15)
    if blk is None:
        return
    sl, Z, Y, X = blk
    u = _local(c, rot, Z, Y, X)
    un = [u[k] / np.float32(semi[k]) for k in range(3)]
    rn = np.sqrt(un[0] ** 2 + un[1] ** 2 + un[2] ** 2) / (1 + lumps(un))
    depth = (1 - rn) * np.float32(semi.min())
    p.paint(sl, depth > 0, BWALL, LABELS["Bladder"])
    p.paint(sl, depth > rng.uniform(2, 4), URINE)


def _rectum(p: _Painter, rng: np.random.Generator, pro: dict) -> dict:
    """Rectum and anal canal along a curved centre line: wall, faeces and gas pockets with a
    horizontal (supine) gas–fluid level; mesorectal fat around it."""
    ar0 = rng.uniform(14, 22)
    br0 = ar0 * rng.uniform(0.65, 0.85)
    y0 = pro["c"][1] + pro["semi"][1] + rng.uniform(1, 4) + br0
    x0, amp, ph = rng.uniform(-4, 4), rng.uniform(0, 6), rng.uniform(0, 2 * np.pi)
    k_up = rng.uniform(0.3, 0.5)
    zlo, zhi = -55.0 + rng.uniform(-5, 5), 85.0 + rng.uniform(-10, 10)
    wall = rng.uniform(3, 5)

    def centre(z):
        cx = x0 + amp * np.sin(z / 40 + ph)
        cy = y0 + k_up * np.maximum(z, 0) ** 2 / 100 + 0.5 * np.maximum(-(z + 20), 0)
        taper = np.clip((z - zlo) / 35, 0.35, 1)  # collapsed anal canal
        return cx, cy, ar0 * taper, br0 * taper

    # mesorectal fat (not on the prostate side)
    res = p.g.block((-80, y0 - 40, max(zlo, -15)), (80, y0 + 100, zhi))
    blk = p.g.block((-40, y0 - 40, zlo), (40, y0 + 100, zhi))
    if res is not None:
        sl, Z, Y, X = res
        cx, cy, a, b = centre(Z)
        rr = ((X - cx) / (a + 9)) ** 2 + ((Y - cy) / (b + 9)) ** 2
        p.paint(sl, (rr < 1) & (Y > cy - 0.2 * b) & (p.tissue[sl] != SV), FAT)
    if blk is None:
        return {}
    sl, Z, Y, X = blk
    cx, cy, a, b = centre(Z)
    inz = (Z >= zlo) & (Z <= zhi)
    outer = (((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2 < 1) & inz
    al, bl = np.maximum(a - wall, 1), np.maximum(b - wall, 1)
    lumen = (((X - cx) / al) ** 2 + ((Y - cy) / bl) ** 2 < 1) & inz
    p.paint(sl, outer, RWALL, LABELS["Rectum"])
    lumen &= Z > zlo + 20  # the anal canal is closed
    p.paint(sl, lumen, FECES)
    for _ in range(int(rng.integers(1, 5))):
        zm, hz = rng.uniform(zlo + 25, zhi - 5), rng.uniform(4, 20)
        # gas rises anteriorly (−y, supine); its depth tapers off at the pocket's ends
        depth = 2 * bl * rng.uniform(0.2, 0.7) * np.maximum(0, 1 - ((Z - zm) / np.float32(hz)) ** 2)
        p.paint(sl, lumen & (Y < cy - bl + depth), GAS)
    return {"slices": sl, "lumen": lumen}


def _bones(p: _Painter, rng: np.random.Generator, bs: float) -> None:
    """Pelvic ring (pubic bodies and rami, ischium, ilium and wings, sacrum/coccyx) and the
    femora (head with cortical rim, neck, trochanters, shaft) with acetabular cups."""
    o = rng.uniform(-4, 4, 3)  # pelvis relative to the prostate

    def P(x, y, z):  # noqa: N802 — a point of the pelvis model
        return o + bs * np.array([x, y, z], float)

    for s in (-1, 1):
        lab = LABELS["Femoral head left"] if s > 0 else LABELS["Femoral head right"]
        rh = rng.uniform(22, 26) * bs
        hc = P(s * 92, -2, 14) + rng.uniform(-2, 2, 3)
        p.bone_ellipsoid(hc, (rh, rh, rh), np.eye(3))  # femoral head
        blk = p.g.sphere_block(hc, rh)
        if blk is not None:
            sl, Z, Y, X = blk
            d2 = (X - hc[0]) ** 2 + (Y - hc[1]) ** 2 + (Z - hc[2]) ** 2
            p.labels[sl][d2 < rh * rh] = lab
        p.bone_cup(hc, rh + 2.0, rh + 9.0 * bs, (-s * 0.75, 0.1, 0.65), -0.1)
        p.bone_capsule(hc, P(s * 122, 8, -12), 0.62 * rh)  # neck
        p.bone_ellipsoid(P(s * 132, 12, -8), bs * np.array([14, 18, 22]), np.eye(3))  # greater trochanter
        p.bone_ellipsoid(P(s * 110, 20, -36), bs * np.array([8, 8, 10]), np.eye(3))  # lesser trochanter
        p.bone_capsule(P(s * 126, 8, -20), P(s * 110, -2, -330), 15 * bs, 13 * bs)  # shaft
        p.bone_capsule(P(s * 9.5, -38, -24), P(s * 9.5, -41, 10), 8.0 * bs)  # pubic body
        p.bone_capsule(P(s * 12, -41, 9), P(s * 70, -18, 18), 8.5 * bs)  # superior ramus
        p.bone_capsule(P(s * 10, -35, -22), P(s * 52, 14, -44), 7.0 * bs)  # inferior ramus
        p.bone_capsule(P(s * 74, 14, 8), P(s * 56, 24, -44), 13.0 * bs, 11.0 * bs)  # ischium
        p.bone_capsule(P(s * 86, 10, 34), P(s * 68, 40, 80), 17.0 * bs, 13.0 * bs)  # iliac body
        ang = np.arctan2(-90, s * 75)
        p.bone_ellipsoid(P(s * 84, 28, 100), bs * np.array([60, 6.5, 42]), _rot(0, 0, ang))  # wing
    # sacrum and coccyx: flat segments along a curve behind the rectum
    pts = [(62, 122, 48, 14), (72, 92, 44, 13), (76, 62, 34, 11), (73, 36, 22, 8), (67, 15, 11, 6), (61, -3, 5, 4)]
    for i, (y, z, w, d) in enumerate(pts):
        (ya, za), (yb, zb) = pts[max(i - 1, 0)][:2], pts[min(i + 1, len(pts) - 1)][:2]
        tilt = np.arctan2(-(ya - yb), za - zb)  # local z along the curve
        p.bone_ellipsoid(P(0, y, z), bs * np.array([w, d, 17]), _rot(tilt, 0, 0))


def _prostate(img: np.ndarray, p: _Painter, rng: np.random.Generator, pro: dict, values: dict, modality: str) -> None:
    """Blend the prostate into ``img`` with a fuzzy boundary and write label 1. The label is the
    level set of the deformed ellipsoid whose volume is ``pro['volume']`` (grid independent)."""
    c, semi, rot, lumps, t = pro["c"], pro["semi"], pro["rot"], pro["lumps"], pro["level"]
    blk = p.g.sphere_block(c, 1.45 * semi.max())
    if blk is None:
        return
    sl, Z, Y, X = blk
    u = _local(c, rot, Z, Y, X)
    rn = _prostate_radius(u, semi, lumps, pro["indent"])
    mean_r = np.float32(semi.mean() * t)
    ramp = np.float32(pro["ramp"])
    w = np.clip(0.5 - (rn - t) * mean_r / ramp, 0, 1)
    # transition zone: an inner ellipsoid shifted anteriorly and superiorly (bigger in BPH)
    tzc = [np.float32(v) for v in (0.0, -0.3 * semi[1], 0.12 * semi[2])]
    tzs = [np.float32(v * pro["tz_scale"]) for v in semi]
    rtz = np.sqrt(((u[0] - tzc[0]) / tzs[0]) ** 2 + ((u[1] - tzc[1]) / tzs[1]) ** 2 + ((u[2] - tzc[2]) / tzs[2]) ** 2)
    wtz = np.clip(0.5 - (rtz - 1) * np.float32(tzs[0]) / ramp, 0, 1)
    val = values["pz"] * (1 - wtz) + values["tz"] * wtz
    # anterior fibromuscular stroma: the anterior surface takes the TZ value
    afs = np.clip((-u[1] / np.float32(semi[1]) - 0.55) / np.float32(0.25), 0, 1)
    val = val * (1 - afs) + np.float32(values["tz"]) * afs
    tex = np.asarray(ndimage.zoom(rng.standard_normal((6, 6, 6)).astype(np.float32), np.array(w.shape) / 6, order=1))
    tex = tex[: w.shape[0], : w.shape[1], : w.shape[2]]
    if tex.shape != w.shape:
        tex = np.pad(tex, [(0, a - b) for a, b in zip(w.shape, tex.shape)], mode="edge")
    val = val + tex * np.float32(values["texture"] * (0.2 if modality == "ct" else 1.0)) * wtz
    blk_img = img[sl]
    blk_img[...] = blk_img * (1 - w) + val * w
    p.labels[sl][rn <= t] = LABELS["Prostate"]
    if modality == "ct" and rng.random() < 0.3:  # a few small calcifications
        for _ in range(int(rng.integers(1, 4))):
            q = c + rot @ (semi * rng.uniform(-0.4, 0.4, 3))
            d2 = (X - q[0]) ** 2 + (Y - q[1]) ** 2 + (Z - q[2]) ** 2
            blk_img[d2 < rng.uniform(0.8, 1.8) ** 2] = rng.uniform(200, 500)


def _prostate_radius(u, semi, lumps: _Lumps, indent: float) -> np.ndarray:
    """Deformed normalised radius: ellipsoid / (1 + low-frequency lumps), with a posterior
    indentation by the rectum."""
    un = [u[k] / np.float32(semi[k]) for k in range(3)]
    rn = np.sqrt(un[0] ** 2 + un[1] ** 2 + un[2] ** 2)
    post = np.maximum(un[1], 0) ** 2 * np.exp(-(un[0] ** 2) / np.float32(0.3))
    return rn * (1 + np.float32(indent) * post) / (1 + lumps(un))


def _prostate_params(rng: np.random.Generator) -> dict:
    vol = rng.uniform(22.0, 55.0) * 1000.0  # mm³ (20–60 mL)
    ratio = np.array([1.0, rng.uniform(0.65, 0.8), rng.uniform(0.78, 0.95)])
    a = (3 * vol / (4 * np.pi * ratio.prod())) ** (1 / 3)
    semi = a * ratio
    rot = _rot(np.deg2rad(rng.uniform(-30, -8)), np.deg2rad(rng.uniform(-8, 8)), np.deg2rad(rng.uniform(-10, 10)))
    pro = {
        "c": rng.uniform(-2, 2, 3),
        "semi": semi,
        "rot": rot,
        "lumps": _Lumps(rng, rng.uniform(0.025, 0.045)),
        "indent": rng.uniform(0.05, 0.25),
        "ramp": rng.uniform(2.0, 4.0),
        "tz_scale": 0.5 + 0.2 * (vol / 1000 - 20) / 40,
        "volume": vol,
    }
    # the level t whose region {r <= t} has the target volume, on a fixed fine local grid
    n = 64
    lin = np.linspace(-1.5, 1.5, n, dtype=np.float32)
    uu = np.meshgrid(lin * semi[0], lin * semi[1], lin * semi[2], indexing="ij", sparse=True)
    rn = _prostate_radius(uu, semi, pro["lumps"], pro["indent"]).ravel()
    cell = np.prod(3.0 * semi / (n - 1))
    k = int(round(vol / cell))
    pro["level"] = float(np.partition(rn, k - 1)[k - 1])
    return pro


# ---- the case -----------------------------------------------------------------------------
def _check(modality: str, shape, spacing) -> str:
    m = str(modality).lower()
    if m not in MODALITIES:
        raise InputError(f"Unknown phantom modality {modality!r}; use 'ct' or 'mr'.")
    if shape is not None and (len(shape) != 3 or min(int(v) for v in shape) < 1):
        raise InputError(f"Phantom shape must be three positive sizes (z, y, x), got {shape!r}.")
    if spacing is not None and (len(spacing) != 3 or min(float(v) for v in spacing) <= 0):
        raise InputError(f"Phantom spacing must be three positive values (x, y, z) mm, got {spacing!r}.")
    return m


def _noise_blur(
    img: np.ndarray,
    rng: np.random.Generator,
    sigma_vox: tuple[float, float, float],
    noise: float,
    finish: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    chunk: int = 8,
) -> np.ndarray:
    """Add white noise to ``img`` (z, y, x) float32 (in place), blur it with a Gaussian
    partial-volume kernel (``sigma_vox`` in voxels, z y x) and return ``finish(block, rng)`` per
    slab of slices. The noise is scaled so that its std is ``noise`` after the blur (correlated,
    as in reconstructed CT); it is drawn as uniform bytes, which the blur makes Gaussian. Done in
    slabs with a halo (cache-friendly, same result as one 3D filter)."""
    gain = 1.0
    radius = []
    for s in sigma_vox:
        r = int(3.0 * s + 0.5)
        radius.append(r)
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        k /= k.sum()
        gain *= float(np.sqrt((k * k).sum()))
    table = ((np.arange(256, dtype=np.float32) - 127.5) * np.float32(noise / gain / np.sqrt((256**2 - 1) / 12))).astype(np.float32)
    nz = img.shape[0]
    plane = int(np.prod(img.shape[1:]))
    for z0 in range(0, nz, chunk):
        z1 = min(nz, z0 + chunk)
        b = np.frombuffer(rng.bytes((z1 - z0) * plane), np.uint8).reshape((z1 - z0,) + img.shape[1:])
        img[z0:z1] += table[b]
    out = None
    h = radius[0]
    for z0 in range(0, nz, chunk):
        z1 = min(nz, z0 + chunk)
        lo, hi = max(0, z0 - h), min(nz, z1 + h)
        f = ndimage.gaussian_filter(img[lo:hi], sigma_vox, truncate=3.0, output=np.float32)
        res = finish(f[z0 - lo : z1 - lo], rng)
        if out is None:
            out = np.empty(img.shape, res.dtype)
        out[z0:z1] = res
    return out  # type: ignore[return-value]


def _ct_finish(block: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.rint(np.clip(block, -1024, 3071)).astype(np.int16)


def _mr_finish(sd: float) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """Magnitude image of a complex signal: sqrt(real² + imag²) with Gaussian imaginary noise
    (Rician statistics in the background)."""

    def finish(block: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        im = rng.standard_normal(block.shape, dtype=np.float32) * np.float32(sd)
        return np.rint(np.clip(np.sqrt(block * block + im * im), 0, 32767)).astype(np.int16)

    return finish


def make_case(
    seed: int,
    modality: str = "ct",
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> PhantomCase:
    """A synthetic pelvic case, deterministic per ``seed``.

    ``shape`` (z, y, x) voxels and ``spacing`` (x, y, z) mm; None = random per seed (CT:
    in-plane 0.6–1.2 mm up to 512², slices 1–3 mm over 120–200 mm; MR: a smaller field of
    view). Random axis flips are encoded in the direction matrix (physical LPS anatomy is
    unchanged). CT image in HU (int16); MR T2-like (int16, arbitrary units).
    """
    mod = _check(modality, shape, spacing)
    rng = np.random.default_rng(seed)
    if spacing is None:
        sxy = float(np.round(rng.uniform(0.6, 1.2), 3))
        sp = np.array([sxy, sxy, float(np.round(rng.uniform(1.0, 3.0), 2))])
    else:
        sp = np.array([float(v) for v in spacing])
    if shape is None:
        fov, ext = (rng.uniform(360, 500), rng.uniform(120, 200)) if mod == "ct" else (rng.uniform(180, 260), rng.uniform(70, 110))
        nxy = int(min(512, np.ceil(fov / sp[0])))
        shp = (int(max(8, round(ext / sp[2]))), nxy, nxy)
    else:
        shp = (int(shape[0]), int(shape[1]), int(shape[2]))
    flips = np.where(rng.random(3) < 0.3, -1.0, 1.0)
    ext_xyz = np.array(shp[::-1]) * sp
    # field-of-view centre in the patient frame, jittered but keeping the prostate inside
    target = np.array([0.0, 10.0, 15.0]) + rng.uniform(-15, 15, 3)
    limit = np.maximum(0.0, ext_xyz / 2 - np.array([35.0, 35.0, 30.0]))
    centre = np.clip(target, -limit, limit)
    half = (np.array(shp[::-1]) - 1) * sp / 2
    origin_frame = centre - flips * half
    scanner = np.array([rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-500, -50)])
    grid = _Grid(shp, sp, origin_frame, flips)

    bs = rng.uniform(0.92, 1.08)  # bone / body scale
    pro = _prostate_params(rng)
    p = _Painter(grid, rng)
    _body(p, rng, bs)
    _pelvic_soft_tissue(p, rng, bs, pro)
    _seminal_vesicles(p, rng, pro)
    _bladder(p, rng, pro)
    rect = _rectum(p, rng, pro)
    _bones(p, rng, bs)
    p.flush_bone(cortex_mm=rng.uniform(2.0, 3.5))

    lut, values = _ct_table(rng) if mod == "ct" else _mr_table(rng)
    img = lut[p.tissue]
    p.tissue = None  # type: ignore[assignment]  (free memory early)
    if rect:  # faecal texture
        sl, lumen = rect["slices"], rect["lumen"]
        tex = np.asarray(ndimage.zoom(rng.standard_normal((8, 8, 8)).astype(np.float32), np.array(lumen.shape) / 8,
                                      order=1))
        tex = np.pad(tex, [(0, max(0, a - b)) for a, b in zip(lumen.shape, tex.shape)], mode="edge")[tuple(slice(0, n) for n in lumen.shape)]
        blk = img[sl]
        sel = lumen & (blk > lut[GAS] + 1) & (blk < lut[FECES] + 1) & (blk > lut[FECES] - 1)
        blk[sel] += tex[sel] * np.float32(abs(lut[FECES] - lut[SOFT]) * 0.6 + 20)
    _prostate(img, p, rng, pro, values, mod)

    sigma = (0.45, max(0.5, 0.45 / sp[1]), max(0.5, 0.45 / sp[0]))
    if mod == "ct":
        arr = _noise_blur(img, rng, sigma, rng.uniform(10, 20), _ct_finish)
    else:
        # smooth coil-sensitivity bias (separable), blur + Rician-like magnitude noise
        bias = [1 + rng.uniform(-0.2, 0.2) * np.cos(a / rng.uniform(150, 300) + rng.uniform(0, np.pi)) for a in (grid.z, grid.y, grid.x)]
        img *= (bias[0][:, None, None] * bias[1][None, :, None] * bias[2][None, None, :]).astype(np.float32)
        sd = rng.uniform(8, 18)
        arr = _noise_blur(img, rng, sigma, sd, _mr_finish(sd))

    direction = np.diag(flips)
    origin = origin_frame + scanner
    image = Volume(arr, sp, origin, direction)
    return PhantomCase(image, Volume(p.labels, sp, origin, direction), mod, int(seed))


def write_cases(
    out: str | Path,
    n: int,
    modality: str = "ct",
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    jobs: int = 1,
) -> Path:
    """Write ``n`` cases (seeds ``seed``…``seed+n-1``) as ``caseNNN.nrrd`` + ``caseNNN.seg.nrrd``
    and a ``manifest.json`` (format ``voxmetric-cases/1``) into ``out``; returns the manifest.
    Existing files of those names are an OutputError (before any case is made) unless ``overwrite``.
    ``jobs``: processes that make the cases (the same files for any number)."""
    mod = _check(modality, shape, spacing)
    if int(n) < 1:
        raise InputError(f"Number of phantom cases must be at least 1, got {n}.")
    make = partial(_manifest_case, seed=int(seed), modality=mod, shape=shape, spacing=spacing)
    return write_case_folder(out, int(n), make, lambda i: f"({mod})", progress, overwrite, jobs)


def _manifest_case(i: int, *, seed: int, modality: str, shape: tuple[int, int, int] | None,
                   spacing: tuple[float, float, float] | None) -> tuple[PhantomCase, dict[str, Any]]:
    """Case ``seed + i`` and no extra manifest fields (a module function, so that worker processes can run it)."""
    return make_case(seed + i, modality, shape, spacing), {}


def write_case_folder(out: str | Path, n: int, make: Callable[[int], tuple[PhantomCase, dict[str, Any]]],
                      describe: Callable[[int], str], progress: Callable[[int, int, str], None] | None,
                      overwrite: bool, jobs: int = 1) -> Path:
    """Write cases ``make(0)``, …, ``make(n - 1)`` (each a case and extra manifest fields) as
    ``caseNNN.nrrd`` + ``caseNNN.seg.nrrd`` (SNOMED-coded segments) and a ``manifest.json``
    (``voxmetric-cases/1``) into ``out``; every target is checked first (OutputError for an existing
    one unless ``overwrite``). ``describe(i)``: the progress text after the case id. ``jobs`` > 1:
    that many processes make and write the cases (``make`` must then pickle, e.g. a
    ``functools.partial`` of a module function); the files are the same."""
    from .files import check_free, write_json
    from .jobs import map_in_processes

    folder = Path(out)
    ids = [f"case{i:03d}" for i in range(n)]
    for name in ["manifest.json", *(f"{c}{ext}" for c in ids for ext in (".nrrd", ".seg.nrrd"))]:
        check_free(folder / name, overwrite)
    say = None if progress is None else (lambda k: progress(k, n, f"{ids[k - 1]} {describe(k - 1)}"))
    cases = map_in_processes(_write_one, [(make, folder, cid, i, overwrite) for i, cid in enumerate(ids)], jobs, say)
    manifest = write_json(folder / "manifest.json", {"format": "voxmetric-cases/1", "cases": cases},
                          overwrite=overwrite)
    if progress is not None:
        progress(n, n, "done")
    return manifest


def _write_one(make: Callable[[int], tuple[PhantomCase, dict[str, Any]]], folder: Path, cid: str, i: int,
               overwrite: bool) -> dict[str, Any]:
    """Make case ``i``, write it as ``cid`` into ``folder``; its manifest entry."""
    from . import io

    case, extra = make(i)
    segments = [io.segment_info(name, value) for name, value in LABELS.items()]
    io.write_volume(case.image, folder / f"{cid}.nrrd", overwrite=overwrite)
    io.write_segmentation(folder / f"{cid}.seg.nrrd", case.labels, segments, overwrite=overwrite)
    return {"id": cid, "image": f"{cid}.nrrd", "label": f"{cid}.seg.nrrd", "modality": case.modality,
            "segment": "Prostate", **extra}
