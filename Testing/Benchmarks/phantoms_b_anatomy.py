"""Anatomy, style and acquisition grid of the second phantom family (:mod:`phantoms_b`; evaluation
only)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from phantoms_b_shapes import (  # noqa: E402
    BLADDER,
    FH_LEFT,
    FH_RIGHT,
    PROSTATE,
    RECTUM,
    Blob,
    Grid,
    Painter,
    Prim,
    Pts,
    T,
    Tube,
    _prim,
    _rot,
    _smax,
    _smin,
    _sphere_dirs,
    _wave_noise,
)


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


