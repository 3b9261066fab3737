"""Anatomy for :mod:`voxmetric.synth`: random male pelvic label maps as ordered paint operations.

The anatomy frame is LPS millimetres (x → patient left, y → posterior, z → superior) with the
prostate centre at the origin. :func:`sample_anatomy` draws a pelvis as a list of operations
(each: an analytic shape — ellipsoid, shell, capsule, tube along z — its bounding box, the tissue
class it paints and the classes it may paint over); :func:`paint` evaluates them on any voxel
grid placed in that frame (:class:`Grid`, an affine index → frame map, so flips, obliquity and
anisotropic spacing cost nothing extra), slab by slab. Shapes are grid independent: one seed
gives the same anatomy on every grid. Tissue classes: :data:`CLASS_NAMES`; label values: those of
:data:`voxmetric.phantom.LABELS` (prostate, bladder and rectum by class, femoral heads by shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .phantom import LABELS

# ---- tissue classes ---------------------------------------------------------------------------
CLASS_NAMES = (
    "air", "subcutaneous fat", "pelvic fat", "muscle", "pelvic muscle", "periprostatic tissue",
    "cortical bone", "bone marrow", "urine", "bladder wall", "rectal wall", "faeces", "rectal gas",
    "seminal vesicle", "bowel wall", "bowel content", "bowel gas", "peripheral zone",
    "transition zone", "nodule", "vessel", "calcification", "table",
    # the abdomen above the pelvis (fov="abdomen" only: voxmetric.synth_abdomen)
    "liver", "gallbladder", "spleen", "kidney", "renal pelvis", "perirenal fat", "adrenal", "stomach wall",
    "gastric content", "pancreas", "colon wall", "colon content", "aorta", "psoas", "intervertebral disc",
    "spinal canal", "lung", "heart", "costal cartilage",
)
(AIR, FAT, PFAT, MUSCLE, PMUSCLE, SOFT, CORTEX, MARROW, URINE, BWALL, RWALL, FECES, RGAS, SV,
 BOWEL, BCONTENT, BGAS, PZ, TZ, NODULE, VESSEL, CALC, TABLE,
 LIVER, GALLB, SPLEEN, KIDNEY, RPELVIS, RFAT, ADRENAL, STOMACH, SCONTENT, PANCREAS, COLON, CCONTENT, AORTA,
 PSOAS, DISC, CANAL, LUNG, HEART, CARTILAGE) = range(len(CLASS_NAMES))
N_CLASSES = len(CLASS_NAMES)
N_PELVIS_CLASSES = LIVER
"""The pelvic classes come first (0 … 22); the ``pelvis`` and ``roi`` fields of view use only these."""
BONE = (CORTEX, MARROW)
PROSTATE_CLASSES = (PZ, TZ, NODULE, CALC)
CLASS_LABEL = np.zeros(N_CLASSES, np.uint8)
"""Label value of each tissue class (femoral heads are labelled by geometry, not by class)."""
CLASS_LABEL[list(PROSTATE_CLASSES)] = LABELS["Prostate"]
CLASS_LABEL[[URINE, BWALL]] = LABELS["Bladder"]
CLASS_LABEL[[RWALL, FECES, RGAS]] = LABELS["Rectum"]


# ---- geometry ---------------------------------------------------------------------------------
def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation Rz·Ry·Rx (radians); columns = the rotated axes."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rotation(rng: np.random.Generator, limits: tuple[float, float, float]) -> np.ndarray:
    """A rotation by uniform random angles within ±``limits`` degrees about x, y and z."""
    return _rot(*np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(limits)))


class Grid:
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


class Ops:
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


def paint(grid: Grid, ops: Ops, block_voxels: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
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
    bound on the gland's distance from the origin, used to keep it inside fields of view;
    ``frame``: the pelvis's landmarks and body outline, mm in the anatomy frame, from which
    :func:`voxmetric.synth_abdomen.add_abdomen` builds the abdomen above it)."""

    ops: Ops
    prostate_ml: float
    radius: float
    frame: dict = field(default_factory=dict)


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
    p["points"] = pts[:: max(1, len(pts) // 4000)]
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


def sample_anatomy(rng: np.random.Generator, abdomen: bool = False) -> Anatomy:
    """Draw one male pelvis as ordered paint operations in the anatomy frame (LPS mm: x → left,
    y → posterior, z → superior; prostate centre at the origin). ``abdomen``: the same draws,
    with the upper sacrum brought inside the body (it meets the lumbar spine of
    :func:`voxmetric.synth_abdomen.add_abdomen`; the pelvis's own fields of view rarely reach it)."""
    o = Ops()
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

            o.add(_shell(c, semi, rng.uniform(2, 6), random_rotation(rng, (20, 20, 40)), extra=side), FAT, _allow(MUSCLE))

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
                         random_rotation(rng, (10, 15, 10))), PFAT, _allow(MUSCLE))
        sx = rng.uniform(7, 14) * bs
        c = np.array([s * (a0 + 0.5 * sx), y_head + rng.uniform(-5, 12), z_head - rng.uniform(5, 25)])
        o.add(_ellipsoid(c, np.array([sx, rng.uniform(25, 40) * bs, rng.uniform(28, 45) * bs]),
                         random_rotation(rng, (10, 10, 15))), PMUSCLE, _allow(MUSCLE, PFAT))  # obturator internus
    c_lev = np.array([x_r, y_r0 - 0.3 * br, apex + rng.uniform(0, 15)])
    semi_lev = np.array([rng.uniform(30, 46), rng.uniform(30, 45), rng.uniform(28, 42)]) * bs
    o.add(_shell(c_lev, semi_lev, rng.uniform(3, 8), extra=lambda X, Y, Z: Z < c_lev[2]), PMUSCLE, _allow(PFAT, MUSCLE))
    # mesorectal fat
    g_meso = rng.uniform(5, 16)
    o.add(_ztube(max(apex, z_r0), z_r1, lambda Z: rect(Z, g_meso), (-120, 120), (post - 20, y_sac + 40)), PFAT,
          _allow(MUSCLE, PMUSCLE))

    # ---- vessels: external iliac → femoral, both sides ----
    iliac_top = {}
    for s in (-1, 1):
        pts = [np.array([s * rng.uniform(35, 55) * bs, y_head - rng.uniform(20, 45), z_head + rng.uniform(80, 120)]),
               np.array([s * (hx - rng.uniform(10, 25)), y_head - rng.uniform(30, 45), z_head + rng.uniform(10, 30)]),
               np.array([s * (hx - rng.uniform(-5, 10)), y_head - rng.uniform(35, 55), z_head - rng.uniform(60, 120)])]
        iliac_top[s] = pts[0]
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
    rot_b = random_rotation(rng, (12, 10, 10))
    hb = _half_extent(semi_b, rot_b)
    c_b = np.array([rng.uniform(-8, 8), rng.uniform(-14, 0) - 0.25 * semi_b[1], 0.0])
    pts = pro["points"]  # the bladder rests on the gland's upper surface below its centre (pressed in a little)
    near = pts[(np.abs(pts[:, 0] - c_b[0]) < 10) & (np.abs(pts[:, 1] - c_b[1]) < 10)]
    c_b[2] = (near[:, 2].max() if len(near) else base) + hb[2] - rng.uniform(1, 7)
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
        o.add(_ellipsoid(c, sp, pro["rot"] @ random_rotation(rng, (8, 8, 8)), _Wobble(rng, 0.05, 5),
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

    lobe = pro.get("lobe")  # (centre, semi-axes) of a median lobe, or None
    if lobe is not None:
        o.add(_ellipsoid(lobe[0], lobe[1] + rng.uniform(1.5, 3.5), R), BWALL, _allow(URINE))
    o.add((-ext_p, ext_p, gland), PZ, _deny(*BONE))
    if lobe is not None:
        o.add(_ellipsoid(lobe[0], lobe[1], R, _Wobble(rng, 0.04, 4)), TZ, _deny(*BONE))
    tc, ts = pro["tz"]
    o.add(_ellipsoid(R @ tc, ts, R, _Wobble(rng, 0.05, 5)), TZ, _allow(PZ))
    for _ in range(int(rng.poisson(1.5 + 3 * pro["big"]))):
        c = R @ (tc + ts * rng.uniform(-0.6, 0.6, 3))
        o.add(_ellipsoid(c, rng.uniform(2.5, 4 + 8 * pro["big"], 3), random_rotation(rng, (90, 90, 90))), NODULE, _allow(TZ))
    if rng.random() < 0.25:  # a lesion in the peripheral zone
        c = R @ (semi * lvl * np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.3, 0.75), rng.uniform(-0.6, 0.5)]))
        o.add(_ellipsoid(c, rng.uniform(3, 11, 3), random_rotation(rng, (90, 90, 90)), _Wobble(rng, 0.1, 4)), NODULE, _allow(PZ))
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
        bones.append(("ellipsoid", (tro, np.array([13, 17, 22]) * sb, random_rotation(rng, (10, 10, 10)))))  # greater trochanter
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
        bones.append(("ellipsoid", (wing_c, np.array([58, 6.5, 42]) * sb, _rot(0, 0, ang) @ random_rotation(rng, (8, 8, 8)))))
        bones.append(("cup", (hc, rh + 1.5, rh + 9 * bs, np.array([-s * 0.75, 0.1, 0.65]))))
    # sacrum and coccyx: flat pieces on a curve behind the rectum, widening upward
    zs = np.linspace(apex + rng.uniform(0, 15), z_head + rng.uniform(100, 140), 12)
    ys = [float(rect(np.float32(z))[1]) + ar + rng.uniform(12, 24) + 8 for z in zs]
    if abdomen:  # the upper sacrum inside the body, in line with the lumbar spine above it
        ys = [min(y, ym + bm - (20 + 55 * t) - (4 + 11 * t) * bs) for t, y in zip(np.linspace(0, 1, len(ys)), ys)]
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
    frame = {"bs": bs, "hx": hx, "rh": rh, "y_head": y_head, "z_head": z_head, "y_sym": y_sym, "apex": apex,
             "torso": torso, "ym": ym, "bm": bm, "y_back": y_back, "rect": rect, "z_r1": z_r1,
             "cavity": cavity, "bladder": (c_b, semi_b), "iliac_top": iliac_top,
             "s1": (np.array([0.0, ys[-1] + (4 + 11) * bs, zs[-1]]), np.array([55.0, 15.0, 14.0]) * bs)}
    return Anatomy(o, pro["vol"] / 1000.0, r_all, frame)


def _cup(c, r_in: float, r_out: float, n: np.ndarray):
    """(lo, hi, mask) of a spherical shell (acetabulum) limited to the cap around ``n``."""
    c = np.asarray(c, float)

    def fn(X, Y, Z):
        dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
        d = np.sqrt(dx * dx + dy * dy + dz * dz)
        cos = (dx * np.float32(n[0]) + dy * np.float32(n[1]) + dz * np.float32(n[2])) / (d + np.float32(1e-6))
        return (d > r_in) & (d < r_out) & (cos > -0.1)

    return c - r_out, c + r_out, fn
