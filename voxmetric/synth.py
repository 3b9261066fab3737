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

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError
from .phantom import LABELS, PhantomCase
from .synth_abdomen import add_abdomen
from .synth_anatomy import (ADRENAL, AIR, AORTA, BCONTENT, BGAS, BONE, BOWEL, BWALL, CALC, CANAL, CARTILAGE, CCONTENT,
                            CLASS_LABEL, CLASS_NAMES, COLON, CORTEX, DISC, FAT, FECES, GALLB, HEART, KIDNEY, LIVER, LUNG,
                            MARROW, MUSCLE, N_CLASSES, N_PELVIS_CLASSES, NODULE, PANCREAS, PFAT, PMUSCLE, PROSTATE_CLASSES,
                            PSOAS, PZ, RFAT, RGAS, RPELVIS, RWALL, SCONTENT, SOFT, SPLEEN, STOMACH, SV, TABLE, TZ, URINE,
                            VESSEL, Anatomy, Grid, paint, random_rotation, sample_anatomy)
from .synth_fov import FOV_HELP, FOVS
from .volume import Volume

__all__ = ["BONE", "CLASS_LABEL", "CLASS_NAMES", "CONTRASTS", "FOVS", "N_CLASSES", "PROSTATE_CLASSES", "SynthCase",
           "SynthGrid", "SynthLabels", "contrast_of", "make_synth_case", "make_synth_labels", "sample_anatomy",
           "sample_grid", "write_synth_cases"]

CONTRASTS = ("ct", "mr", "random")

MAX_PAINT_VOXELS = 24_000_000  # pelvis mode: cap on the painted (sub-slice) grid, ~100 MB float32
MAX_ABDOMEN_PAINT_VOXELS = 12_000_000  # abdomen mode: a lower cap (more paint operations per voxel)


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
    grid: Grid

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
    if fov == "abdomen":
        return _sample_grid_abdomen(rng, anat, shape, spacing)
    tilt = random_rotation(rng, (12, 8, 8)) if rng.random() < 0.7 else np.eye(3)
    c_pat = np.array([rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-500, -50)])
    plane = int(rng.choice(3, p=[0.8, 0.1, 0.1]))
    d = _PLANES[plane] * np.where(rng.random(3) < 0.3, -1.0, 1.0)[None, :]
    if rng.random() < (0.35 if fov == "pelvis" else 0.6):
        d = random_rotation(rng, (15, 15, 15)) @ d
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
    grid = Grid((shp[0] * k, shp[1], shp[2]), m, t)
    return SynthGrid(fov, shp, sp, d, origin, acq, k, grid)  # type: ignore[arg-type]


def _sample_grid_abdomen(rng: np.random.Generator, anat: Anatomy, shape=None, spacing=None) -> SynthGrid:
    """An abdomen–pelvis acquisition: axial (85 %) or coronal, 300–500 mm in-plane field of view
    (≤ 512²), 1–6 mm slices, 300–550 mm from foot to head with the prostate in the lowest 5–30 %
    (in 30 % of cases 0.5–5 %: at the very edge, partly cut), mild tilt and obliquity. The
    in-plane spacing grows where the painted grid would pass :data:`MAX_ABDOMEN_PAINT_VOXELS`."""
    tilt = random_rotation(rng, (6, 5, 5)) if rng.random() < 0.6 else np.eye(3)
    c_pat = np.array([rng.uniform(-20, 20), rng.uniform(-40, 40), rng.uniform(-500, -50)])
    plane = int(rng.choice(2, p=[0.85, 0.15]))
    d = _PLANES[plane] * np.where(rng.random(3) < 0.3, -1.0, 1.0)[None, :]
    if rng.random() < 0.2:
        d = random_rotation(rng, (8, 8, 8)) @ d
    fov_xy, ext_si = rng.uniform(300, 500), rng.uniform(300, 550)
    ext_lps = np.array([fov_xy, fov_xy if plane == 0 else rng.uniform(180, 300), ext_si])  # L-R, A-P, S-I mm
    sxy, sz = float(rng.uniform(0.6, 1.6)), round(float(rng.uniform(1.0, 6.0)), 2)
    frac = rng.uniform(0.005, 0.05) if rng.random() < 0.3 else rng.uniform(0.05, 0.30)
    axis_lps = np.argmax(np.abs(d), axis=0)  # the patient axis each grid axis runs along
    ext = ext_lps[axis_lps]
    if spacing is not None:
        sp = np.array([float(v) for v in spacing])
    else:
        sp = np.array([sxy, sxy, sz])
        sp[:2] = np.maximum(sp[:2], ext[:2].max() / 512)  # ≤ 512² in-plane
    k = 2 * int(round((sp[2] / 2.0 - 1) / 2)) + 1 if sp[2] > 2.0 else 1  # sub-slices ≤ ~2 mm apart
    if shape is None:
        n = np.maximum(8, np.round(ext / sp)).astype(int)
        over = n.prod() * k / MAX_ABDOMEN_PAINT_VOXELS
        if over > 1 and spacing is None:  # coarser in-plane, same field of view
            sp[:2] = np.round(sp[:2] * np.sqrt(over), 3) + 0.001
            n[:2] = np.maximum(8, np.floor(ext[:2] / sp[:2])).astype(int)
        shp = (int(n[2]), int(n[1]), int(n[0]))
    else:
        shp = tuple(int(v) for v in shape)
    nv = np.array(shp[::-1], float)
    ext_grid = nv * sp
    si = int(np.argmax(np.abs(d[2, :])))  # the grid axis closest to superior
    # the grid centre in the anatomy frame: the body's middle, the prostate `frac` up from the foot end
    ym = float(anat.frame.get("ym", 0.0))
    a_c = np.array([rng.uniform(-20, 20), ym + rng.uniform(-20, 20), (0.5 - frac) * ext_grid[si]])
    off = d.T @ tilt @ a_c
    origin = c_pat + d @ off - d @ ((nv - 1) * sp / 2)
    m = tilt.T @ d @ np.diag(sp / np.array([1, 1, k]))
    t = tilt.T @ (origin - c_pat) - m[:, 2] * (k // 2)
    grid = Grid((shp[0] * k, shp[1], shp[2]), m, t)
    return SynthGrid("abdomen", shp, sp, d, origin, sp.copy(), k, grid)  # type: ignore[arg-type]


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
# the abdominal classes (fov="abdomen"), drawn from their own stream: unenhanced CT, and the ranges
# a contrast phase moves them to ((mean low, mean high) in HU)
_CT_ABD = {LIVER: (40, 80, 3, 12), GALLB: (-5, 25, 1, 6), SPLEEN: (40, 70, 3, 12), KIDNEY: (30, 45, 3, 12),
           RPELVIS: (-5, 25, 1, 8), RFAT: (-120, -60, 4, 20), ADRENAL: (20, 60, 3, 12), STOMACH: (25, 60, 3, 12),
           SCONTENT: (-60, 60, 5, 40), PANCREAS: (30, 60, 3, 12), COLON: (18, 60, 3, 12), CCONTENT: (-250, 60, 15, 120),
           AORTA: (30, 55, 2, 10), PSOAS: (30, 70, 3, 15), DISC: (60, 110, 3, 15), CANAL: (0, 30, 2, 10),
           LUNG: (-920, -700, 20, 80), HEART: (30, 55, 3, 12), CARTILAGE: (60, 250, 10, 40)}
_CT_ARTERIAL = {AORTA: (180, 450), HEART: (100, 300), KIDNEY: (120, 200), SPLEEN: (90, 140), LIVER: (55, 85),
                PANCREAS: (90, 140), VESSEL: (60, 150), STOMACH: (50, 100)}
_CT_PORTAL = {AORTA: (120, 220), HEART: (100, 200), KIDNEY: (120, 200), SPLEEN: (90, 130), LIVER: (80, 120),
              PANCREAS: (70, 110), VESSEL: (120, 220), STOMACH: (50, 90)}
_MR_ABD = {LIVER: (0.08, 0.25, 0.01, 0.04), GALLB: (0.7, 1.0, 0.01, 0.05), SPLEEN: (0.25, 0.5, 0.02, 0.06),
           KIDNEY: (0.3, 0.6, 0.02, 0.08), RPELVIS: (0.7, 1.0, 0.01, 0.05), RFAT: (0.45, 0.95, 0.02, 0.08),
           ADRENAL: (0.1, 0.3, 0.01, 0.05), STOMACH: (0.1, 0.3, 0.01, 0.05), SCONTENT: (0.1, 1.0, 0.02, 0.15),
           PANCREAS: (0.15, 0.35, 0.01, 0.05), COLON: (0.1, 0.3, 0.01, 0.05), CCONTENT: (0.02, 0.5, 0.03, 0.15),
           AORTA: (0.0, 0.4, 0.01, 0.1), PSOAS: (0.05, 0.25, 0.01, 0.04), DISC: (0.3, 0.9, 0.02, 0.08),
           CANAL: (0.7, 1.0, 0.01, 0.05), LUNG: (0.0, 0.05, 0.0, 0.02), HEART: (0.0, 0.4, 0.02, 0.1),
           CARTILAGE: (0.05, 0.3, 0.01, 0.05)}


def _intensities(contrast: str, rng: np.random.Generator,
                 rx: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (mean, spread) float32 arrays for ``contrast``: CT in HU, MR and random in
    arbitrary units (≈ 0 … 1). The prostate may come out brighter, darker or equal to any
    neighbour. The pelvic classes come from ``rng``; the abdominal ones from ``rx`` (the
    abdomen's own stream, which may also give the CT a contrast phase), or table midpoints
    when it is None (they are then absent from the image)."""
    mean, std = _pelvic_intensities(contrast, rng)
    return _abdominal_intensities(contrast, rx, mean, std)


def _abdominal_intensities(contrast: str, rx: np.random.Generator | None, mean: np.ndarray,
                           std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mean``, ``std`` (the pelvic classes) extended by the abdominal classes, float32."""
    n_abd = N_CLASSES - N_PELVIS_CLASSES
    table = _CT_ABD if contrast == "ct" else _MR_ABD
    lo, hi, slo, shi = (np.array([table[c][i] for c in range(N_PELVIS_CLASSES, N_CLASSES)], float) for i in range(4))
    if rx is None:
        return (np.concatenate([mean, (lo + hi) / 2]).astype(np.float32),
                np.concatenate([std, (slo + shi) / 2]).astype(np.float32))
    mean, std = mean.astype(float), std.astype(float)
    if contrast == "random":
        m_abd, s_abd = rx.uniform(0, 1, n_abd), rx.uniform(0, 0.1, n_abd)
    else:
        m_abd, s_abd = rx.uniform(lo, hi), rx.uniform(slo, shi)
    mean, std = np.concatenate([mean, m_abd]), np.concatenate([std, s_abd])
    if contrast == "ct":
        phase = rx.choice(3, p=[0.35, 0.2, 0.45])  # unenhanced, arterial, portal venous
        for c, (a, b) in ({} if phase == 0 else _CT_ARTERIAL if phase == 1 else _CT_PORTAL).items():
            mean[c] = rx.uniform(a, b)
        if rx.random() < 0.1:  # excretory phase: contrast in the collecting system
            mean[RPELVIS] = rx.uniform(300, 1200)
        if rx.random() < 0.2:  # oral contrast
            mean[[SCONTENT, BCONTENT]] = rx.uniform(150, 500, 2)
    elif contrast == "mr":
        if mean[FAT] < _MR[FAT][0]:  # the pelvic draw chose fat suppression
            mean[RFAT] *= mean[FAT] / rx.uniform(*_MR[FAT][:2])
        mean[SPLEEN] = max(mean[SPLEEN], mean[LIVER] + rx.uniform(0.05, 0.2))  # T2: the liver darker than the spleen
    return mean.astype(np.float32), std.astype(np.float32)


def _pelvic_intensities(contrast: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(mean, spread) of the pelvic classes (0 … N_PELVIS_CLASSES − 1) for ``contrast``."""
    if contrast == "random":
        mean = rng.uniform(0, 1, N_PELVIS_CLASSES)
        std = rng.uniform(0, 0.1, N_PELVIS_CLASSES)
        if rng.random() < 0.5:  # a homogeneous gland
            mean[[TZ, NODULE]] = mean[PZ]
        equal_p, neighbours = 0.25, _NEIGHBOURS
    else:
        table = _CT if contrast == "ct" else _MR
        lo, hi, slo, shi = (np.array([table[c][i] for c in range(N_PELVIS_CLASSES)], float) for i in range(4))
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
    return mean, std


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


def _smooth(rng: np.random.Generator, shape, cells: tuple[int, ...]) -> np.ndarray:
    """A smooth random field of unit-ish amplitude: a coarse normal grid of ``cells`` (z, y, x),
    refined by a cubic spline ×4, then linear onto ``shape``."""
    coarse = rng.standard_normal(tuple(max(2, int(c)) for c in cells)).astype(np.float32)
    fine = np.asarray(ndimage.zoom(coarse, 4, order=3, mode="nearest", grid_mode=True))
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


_CLUTTER = np.isin(np.arange(N_CLASSES), (FAT, PFAT, RFAT, MUSCLE, PMUSCLE, PSOAS, SOFT))
_FATS = np.isin(np.arange(N_CLASSES), (FAT, PFAT, RFAT))


def _clutter(img: np.ndarray, tissue: np.ndarray, contrast: str, mean: np.ndarray, rng: np.random.Generator,
             spacing_zyx: np.ndarray) -> None:
    """Structure in the background tissues (in place), as SynthSeg's many labels give: fat, muscle
    and periprostatic tissue split into up to four parts by the signs of two smooth random fields
    (cells 10–35 mm), each part of each class shifted by its own offset; then thin curved sheets
    (fascia, small vessels, fat planes: where a third field, cells 5–15 mm, is near zero) that
    look like soft tissue in the fat and like fat in the muscle. The labels do not change."""
    sel = _CLUTTER[tissue]
    if not sel.any():
        return
    shape = tissue.shape

    def field(mm: float) -> np.ndarray:
        return _smooth(rng, shape, tuple(np.ceil(np.array(shape) * spacing_zyx / mm / 4) + 1))

    ref = 1.0 if contrast == "ct" else float(np.ptp(mean[:N_PELVIS_CLASSES]))
    span = {"ct": 25.0, "mr": 0.15, "random": 0.3}[contrast] * ref
    part = (field(rng.uniform(10, 35)) > 0).astype(np.uint8) + 2 * (field(rng.uniform(10, 35)) > 0).astype(np.uint8)
    offset = (rng.uniform(-span, span, (N_CLASSES, 4)) * _CLUTTER[:, None]).astype(np.float32)
    img += offset[tissue, part]
    del part
    sheet = np.abs(field(rng.uniform(5, 15))) < np.float32(rng.uniform(0.04, 0.1))
    sheet &= sel
    fat = _FATS[tissue[sheet]]
    soft = mean[PMUSCLE] + rng.normal(0, 0.5) * abs(float(mean[SOFT] - mean[PMUSCLE]) + 1e-3)
    img[sheet] = np.where(fat, np.float32(soft), np.float32(mean[PFAT]))


def _render(tissue: np.ndarray, labels: np.ndarray, plan: SynthGrid, contrast: str, rng: np.random.Generator,
            rx: np.random.Generator | None = None, rc: np.random.Generator | None = None) -> np.ndarray:
    """The image on the output grid (float32): class intensities with texture on the painting
    grid, fuzzy prostate edge, CT streaks, slice profile and in-plane blur, acquisition
    resampling, bias field, noise, gamma. ``rx``: the abdominal classes' stream (abdomen);
    ``rc``: the stream of :func:`_clutter` (None: no clutter)."""
    mean, std = _intensities(contrast, rng, rx)
    sp_zyx = plan.paint_spacing[::-1]
    img = mean[tissue]
    if rc is not None:
        _clutter(img, tissue, contrast, mean, rc, sp_zyx)
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
    if plan.fov != "roi":  # pelvis, abdomen: painted on the acquisition grid
        if sig[0] > 0.2:
            img = ndimage.gaussian_filter1d(img, sig[0], axis=0, truncate=3.0)
        img = np.ascontiguousarray(img[plan.k // 2 :: plan.k])
        sig_in = rng.uniform(0.3, 0.9) * (1 + (rng.random() < 0.3) * rng.uniform(0, 1.5))
        img = ndimage.gaussian_filter(img, (0, sig_in, sig_in), truncate=3.0)
        coarse: tuple[int, ...] = tuple(int(n) for n in img.shape)
    else:
        img = ndimage.gaussian_filter(img, sig, truncate=3.0)
        coarse = tuple(int(max(4, round(n * s / a))) if a > 1.15 * s else n for n, s, a in zip(img.shape, sp_zyx, acq_zyx))
        img = _resize_linear(img, coarse)

    # bias field and noise on the acquisition grid
    drawn = mean if rx is not None else mean[:N_PELVIS_CLASSES]  # the classes this field of view can hold
    ref = float(drawn.max() - drawn.min()) if contrast != "ct" else 1.0
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
        raise InputError(f"Unknown synthetic field of view {fov!r}; use one of "
                         + ", ".join(f"'{k}' ({v})" for k, v in FOV_HELP.items()) + ".")
    if int(seed) < 0:
        raise InputError(f"The seed must be ≥ 0, got {seed}.")
    return c, f


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent random streams of one seed: anatomy, grid, image, contrast choice."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)]


def _abdomen_streams(seed: int) -> list[np.random.Generator]:
    """Two more streams of the seed, for the abdomen only (its anatomy, its classes' intensities):
    the first four (:func:`_streams`) are the same, so the pelvis of a seed is the same in every
    field of view and the ``pelvis`` / ``roi`` cases do not change."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(6)[4:]]


def _anatomy(seed: int, fov: str, ra: np.random.Generator) -> Anatomy:
    """The anatomy of ``seed``: the pelvis from ``ra``; for ``abdomen`` the abdomen above it."""
    anat = sample_anatomy(ra, abdomen=fov == "abdomen")
    if fov == "abdomen":
        add_abdomen(anat, _abdomen_streams(seed)[0])
    return anat


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
    return _sample_grid(rg, sample_anatomy(ra), f, shape, spacing)  # the grid needs only the pelvis


def make_synth_labels(seed: int, fov: str = "roi", *, shape=None, spacing=None) -> SynthLabels:
    """The label map (and tissue classes) of ``seed`` without an image: the same anatomy as
    :func:`make_synth_case` (its own random stream), on that grid or on ``shape`` / ``spacing``.
    Cheap at coarse spacing (for statistics over many seeds)."""
    _, f = _check("ct", fov, seed)
    _check_geometry(shape, spacing)
    ra, rg, _, _ = _streams(seed)
    anat = _anatomy(seed, f, ra)
    plan = _sample_grid(rg, anat, f, shape, spacing)
    tissue, labels = paint(plan.grid, anat.ops)
    c = plan.k // 2
    tissue, labels = tissue[c :: plan.k], labels[c :: plan.k]
    geo = (plan.spacing, plan.origin, plan.direction)
    return SynthLabels(Volume(labels, *geo), Volume(np.ascontiguousarray(tissue), *geo), anat.prostate_ml, int(seed))


def make_synth_case(seed: int, contrast: str = "mix", fov: str = "pelvis", *, shape=None, spacing=None,
                    clutter: bool = False) -> SynthCase:
    """A domain-randomised synthetic pelvic case, deterministic per ``seed``.

    ``contrast``: "ct" (HU, int16), "mr" (T2-like), "random" (every class independent) or
    "mix" (one of the three, drawn from the seed). ``fov``: "pelvis" = a scan on its random
    acquisition grid (0.3–1.5 mm in-plane, 1–6 mm slices, ≤ 512² in-plane, 60–260 mm through
    plane); "roi" = a 120–160 mm region around the prostate on a 1 mm grid with the acquisition
    simulated. ``shape`` (z, y, x) / ``spacing`` (x, y, z) mm override the output grid (tests).
    ``clutter``: structure in fat and muscle (:func:`_clutter`, its own stream: the same case
    otherwise). Modality is "ct" for CT-like cases and "mr" otherwise.
    """
    c, f = _check(contrast, fov, seed)
    _check_geometry(shape, spacing)
    ra, rg, ri, _ = _streams(seed)
    c = contrast_of(seed, c)
    anat = _anatomy(seed, f, ra)
    plan = _sample_grid(rg, anat, f, shape, spacing)
    tissue, labels = paint(plan.grid, anat.ops)
    rc = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(7)[6]) if clutter else None
    img = _render(tissue, labels, plan, c, ri, _abdomen_streams(seed)[1] if f == "abdomen" else None, rc)
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
    overwrite: bool = False,
    clutter: bool = False,
    jobs: int = 1,
) -> Path:
    """Write ``n`` cases (seeds ``seed``…``seed+n-1``) as ``caseNNN.nrrd`` + ``caseNNN.seg.nrrd``
    (SNOMED-coded segments) and a ``manifest.json`` (``voxmetric-cases/1``; per case its
    modality, and the generator's ``contrast``, ``fov`` and ``clutter``) into ``out``; returns the manifest.
    Existing files of those names are an OutputError (before any case is made) unless ``overwrite``.
    ``jobs``: processes that make the cases (the same files for any number)."""
    from .phantom import write_case_folder

    c, f = _check(contrast, fov, seed)
    _check_geometry(shape, spacing)
    if int(n) < 1:
        raise InputError(f"Number of synthetic cases must be at least 1, got {n}.")
    make = partial(_manifest_case, seed=int(seed), contrast=c, fov=f, shape=shape, spacing=spacing, clutter=clutter)
    return write_case_folder(out, int(n), make, lambda i: f"({contrast_of(int(seed) + i, c)}, {f})", progress,
                             overwrite, jobs)


def _manifest_case(i: int, *, seed: int, contrast: str, fov: str, shape: Any, spacing: Any,
                   clutter: bool) -> tuple[SynthCase, dict]:
    """Case ``seed + i`` and its manifest fields (a module function, so that worker processes can run it)."""
    case = make_synth_case(seed + i, contrast, fov, shape=shape, spacing=spacing, clutter=clutter)
    return case, {"generator": "synth", "contrast": case.contrast, "fov": fov, "seed": seed + i,
                  **({"clutter": True} if clutter else {})}
