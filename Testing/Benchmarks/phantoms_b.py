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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its anatomy and shapes modules
from voxmetric import io as vio  # noqa: E402
from voxmetric.cases import CaseRecord, write_manifest  # noqa: E402
from voxmetric.phantom import LABELS  # noqa: E402  (label values only)
from voxmetric.volume import Volume  # noqa: E402

from phantoms_b_anatomy import Anatomy, _body_fields, _bones, _soft, sample_anatomy, sample_grid, sample_style  # noqa: E402
from phantoms_b_shapes import BLADDER, PROSTATE, TISSUES, Coarse, Grid, Prim, Pts, T  # noqa: E402  # noqa: E402

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
