"""The abdomen above the synthetic pelvis, for :mod:`voxmetric.synth`'s ``fov="abdomen"``.

:func:`add_abdomen` appends paint operations to a pelvis drawn by
:func:`voxmetric.synth_anatomy.sample_anatomy`, built on its landmarks (``Anatomy.frame``: the
sacrum, the femoral heads, the body outline, the iliac vessels, the rectum, the bladder) in the
same anatomy frame (LPS mm, prostate centre at the origin, z → superior): the body widening over
the rib cage, the abdominal cavity and wall, back muscles, lumbar and lower thoracic spine with
discs and spinal canal, ribs with the costal margin and sternum, the diaphragm with the lung
bases and the heart above it, psoas muscles from the spine into the pelvis, aorta and IVC with
their iliac and renal branches, kidneys (fat capsule, renal pelvis, ureters), adrenals, a liver
with its vessels and a gallbladder, spleen, stomach (gas, fluid or food), pancreas, duodenum,
colon and small-bowel loops with gas and contents. Every organ has its own tissue class
(:data:`voxmetric.synth_anatomy.CLASS_NAMES`) and label 0. It draws from its own random stream,
so the pelvis of a seed is the same in every field of view.
"""

from __future__ import annotations

import numpy as np

from .synth_anatomy import (ADRENAL, AIR, AORTA, BCONTENT, BGAS, BOWEL, CANAL, CARTILAGE, CCONTENT, COLON, CORTEX,
                            DISC, FAT, GALLB, HEART, KIDNEY, LIVER, LUNG, MARROW, MUSCLE, PANCREAS, PFAT, PSOAS,
                            RFAT, RPELVIS, SCONTENT, SPLEEN, STOMACH, VESSEL, Anatomy, Ops, _allow, _capsule,
                            _ellipsoid, _rot, _Wobble, _ztube, random_rotation)

_LEVELS = ("L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7", "T6", "T5")


def _tube(o: Ops, pts, radii, code: int, only, content: int | None = None, wall: float = 0.0,
          gas_only: np.ndarray | None = None, gas_level: float | None = None) -> None:
    """A chain of capsules through ``pts`` (radii per point): the wall class ``code``, then (when
    ``content`` is given) the lumen ``wall`` mm inside it, then gas anterior of ``gas_level`` (y)."""
    segs = list(zip(pts[:-1], pts[1:], radii[:-1], radii[1:]))
    for p, q, r0, r1 in segs:
        o.add(_capsule(p, q, r0, r1), code, only)
    if content is None:
        return
    for p, q, r0, r1 in segs:
        o.add(_capsule(p, q, max(r0 - wall, 1.0), max(r1 - wall, 1.0)), content, _allow(code))
    if gas_level is not None:
        for p, q, r0, r1 in segs:
            lo, hi, fn = _capsule(p, q, max(r0 - wall, 1.0), max(r1 - wall, 1.0))
            o.add((lo, hi, lambda X, Y, Z, fn=fn: fn(X, Y, Z) & (Y < np.float32(gas_level))), BGAS,
                  gas_only if gas_only is not None else _allow(content))


def _path(rng: np.random.Generator, anchors, jitter: float, per: int = 2) -> list[np.ndarray]:
    """Points through ``anchors`` with ``per`` − 1 jittered points between each pair."""
    out = [np.asarray(anchors[0], float)]
    for a, b in zip(anchors[:-1], anchors[1:]):
        a, b = np.asarray(a, float), np.asarray(b, float)
        for t in np.linspace(0, 1, per + 1)[1:]:
            p = a + (b - a) * t
            out.append(p if t == 1 else p + rng.normal(0, jitter, 3))
    return out


def add_abdomen(anat: Anatomy, rng: np.random.Generator) -> dict:
    """Append the abdomen to ``anat.ops`` (in place); returns a few of its landmarks (z of the
    vertebral levels, of the diaphragm domes), mm in the anatomy frame."""
    f = anat.frame
    o = anat.ops
    bs, hx, rh = f["bs"], f["hx"], f["rh"]
    y_head, z_head, torso, ym, y_back = f["y_head"], f["z_head"], f["torso"], f["ym"], f["y_back"]
    soft = _allow(PFAT, MUSCLE)

    # ---- spine levels: bodies and discs from the top of S1 up ----
    s1c, s1s = f["s1"]
    z = float(s1c[2] + s1s[2])
    big = 1000.0
    zc, ab = [], []  # body centre z; (half width, half depth, half height)
    discs = []
    for i in range(len(_LEVELS)):
        lumbar = i < 5
        hd = rng.uniform(7, 12) if lumbar else rng.uniform(4, 7)
        hb = (rng.uniform(24, 30) if lumbar else rng.uniform(18, 24)) * bs
        discs.append((z, z + hd))
        z += hd
        zc.append(z + hb / 2)
        t = min(i / 7, 1.0)
        ab.append(((22 - 5 * t) * bs * rng.uniform(0.92, 1.08), (16 - 3 * t) * bs * rng.uniform(0.92, 1.08), hb / 2))
        z += hb
    zc_a, aa, ba = np.array(zc), np.array([v[0] for v in ab]), np.array([v[1] for v in ab])
    lv = {name: zc[i] for i, name in enumerate(_LEVELS)}
    z_l5, z_t12 = lv["L5"], lv["T12"]
    y_l5 = float(s1c[1]) - rng.uniform(0, 6)
    lord, kyph = rng.uniform(4, 22), rng.uniform(10, 35)

    y_lim, cover = ym + f["bm"], rng.uniform(50, 65)  # the back muscles' surface; body to it, mm

    def y_sp(Z):
        t = np.clip((Z - z_l5) / (z_t12 - z_l5), 0, 1)
        y = y_l5 - lord * np.sin(np.pi * t) + kyph * np.clip((Z - z_t12) / 160, 0, 1)
        return np.minimum(y, y_lim - cover - np.interp(Z, zc_a, ba))

    zz = np.linspace(float(s1c[2]) - 40, big, 400)
    yb = (float(np.min(y_sp(zz))) - 30, float(np.max(y_sp(zz) + np.interp(zz, zc_a, ba))) + 30)  # y range of the bodies

    def a_of(Z):
        return np.interp(Z, zc_a, aa)

    def b_of(Z):
        return np.interp(Z, zc_a, ba)

    # ---- body: the rib cage flares the waist again; abdominal cavity inside a muscular wall ----
    flare = rng.uniform(0.05, 0.3)  # relative to the pelvis's width: undoes its narrowing waist and more
    z_fl0, z_fl1 = z_head + 60, lv["T12"]

    def body(Z, fat: bool):
        cx, cy, a, b = torso(Z, fat)
        am = torso(Z, False)[2]
        return cx, cy, a + am * flare * np.clip((Z - z_fl0) / (z_fl1 - z_fl0), 0, 1), b

    span = (-400, 400), (ym - 400, ym + 400)
    o.add(_ztube(z_fl0, big, lambda Z: body(Z, True), *span, extra=lambda X, Y, Z: Y < y_back), FAT, _allow(AIR))
    o.add(_ztube(z_fl0, big, lambda Z: body(Z, False), *span), MUSCLE, _allow(FAT))
    w_lat, w_ant, rear = rng.uniform(6, 16), rng.uniform(8, 18), rng.uniform(12, 28)
    cav_p = f["cavity"]
    z_c0, z_c1 = z_head + rng.uniform(50, 80), z_head + rng.uniform(130, 160)

    def cavity(Z):
        _, cy, am, bm = body(Z, False)
        a = am - w_lat
        y0, y1 = cy - bm + w_ant, y_sp(Z) + b_of(Z) + rear
        t = np.clip((Z - z_c0) / (z_c1 - z_c0), 0, 1)
        _, cyp, ap, bp = cav_p(Z)
        return 0.0, cyp * (1 - t) + (y0 + y1) / 2 * t, ap * (1 - t) + a * t, bp * (1 - t) + (y1 - y0) / 2 * t

    o.add(_ztube(z_c0, big, cavity, *span), PFAT, _allow(MUSCLE))
    back_w, back_d, w_back = rng.uniform(0.75, 0.92), rng.uniform(35, 55), rng.uniform(8, 20)

    def flat_back(Z):  # the posterior wall is flatter than an ellipse: room for kidneys beside the spine
        _, cy, a, b = cavity(Z)
        t = np.clip((Z - z_c1) / 40, 0, 1)
        y1 = cy + b
        reach = np.maximum(0, (ym + f["bm"] - w_back) - y1)  # fat behind, up to the back wall
        return 0.0, y1 - back_d + reach / 2, a * back_w * t, (back_d + reach / 2) * t

    o.add(_ztube(z_c1, big, flat_back, *span), PFAT, _allow(MUSCLE))
    # back muscles (erector spinae, quadratus lumborum) stay muscle
    for s in (-1, 1):
        xe, ye, ae, be = s * rng.uniform(24, 36) * bs, rng.uniform(35, 50), rng.uniform(18, 30) * bs, rng.uniform(20, 32)
        o.add(_ztube(z_l5 - 20, big, lambda Z, xe=xe, ye=ye, ae=ae, be=be: (xe, y_sp(Z) + b_of(Z) + ye, ae, be),
                     (xe - ae - 1, xe + ae + 1), (yb[0], yb[1] + ye + be)), MUSCLE, _allow(PFAT))
        xq, aq, bq = rng.uniform(30, 45), rng.uniform(10, 18), rng.uniform(7, 13)
        o.add(_ztube(lv["L4"], lv["T12"], lambda Z, s=s, xq=xq, aq=aq, bq=bq: (s * (a_of(Z) + xq), y_sp(Z) + b_of(Z) + 8, aq, bq),
                     (-150, 150), (yb[0], yb[1] + 30)), MUSCLE, _allow(PFAT))

    # ---- diaphragm, lung bases, heart ----
    z_dome_r = lv["L1"] + rng.uniform(85, 150)
    z_dome_l = z_dome_r - rng.uniform(0, 30)
    x_dome, rx_d, ry_d = rng.uniform(45, 80), rng.uniform(70, 110), rng.uniform(70, 110)
    drop, back = rng.uniform(60, 110), rng.uniform(1.2, 2.0)
    t_dia = rng.uniform(3, 7)

    def dome(X, Y, Z):
        cy = np.float32(ym - 10)
        zd = None
        for s, ztop in ((-1, z_dome_r), (1, z_dome_l)):
            dy = (Y - cy) / np.float32(ry_d)
            q = ((X - np.float32(s * x_dome)) / np.float32(rx_d)) ** 2 + dy * dy * np.where(dy > 0, np.float32(back), 1)
            zs = np.float32(ztop) - np.float32(drop) * q
            zd = zs if zd is None else np.maximum(zd, zs)
        return zd

    z_dlo = min(z_dome_r, z_dome_l) - 2.5 * drop
    x_med = rng.uniform(15, 30)

    def diaphragm(X, Y, Z):
        h = Z - dome(X, Y, Z)
        return (h > -np.float32(t_dia)) & (h < 0)

    def lung(X, Y, Z):
        return (Z > dome(X, Y, Z)) & (np.abs(X) > np.float32(x_med)) & (Y < y_sp(Z) + b_of(Z) * 0.5 + 12)

    o.add(((-400, ym - 400, z_dlo), (400, ym + 400, big), diaphragm), MUSCLE, _allow(PFAT))
    o.add(((-400, ym - 400, z_dlo), (400, yb[1], big), lung), LUNG, _allow(PFAT))
    z_tendon = min(z_dome_r, z_dome_l) - rng.uniform(10, 30)
    semi_h = np.array([rng.uniform(50, 68), rng.uniform(42, 58), rng.uniform(48, 64)])
    c_h = np.array([rng.uniform(10, 40), ym - rng.uniform(25, 50), z_tendon + semi_h[2] * rng.uniform(0.75, 0.95)])
    o.add(_ellipsoid(c_h, semi_h, _rot(0, 0, np.deg2rad(rng.uniform(20, 45))) @ random_rotation(rng, (10, 10, 10)),
                     extra=lambda X, Y, Z: Z > np.float32(z_tendon)), HEART, _allow(LUNG, PFAT, MUSCLE))

    # ---- skeleton: vertebral bodies, arches and processes, ribs, costal cartilage, sternum ----
    bones: list[tuple[str, tuple]] = []
    rc_x, rc_y = rng.uniform(9, 12), rng.uniform(7, 10)  # spinal canal
    for i, name in enumerate(_LEVELS):
        a, b, hh = ab[i]
        z0 = zc[i]
        bones.append(("body", (z0 - hh, z0 + hh)))
        yc = float(y_sp(np.float32(z0)) + b)
        yk = yc + rc_y + 2  # canal centre
        ring = (rc_x + rng.uniform(5, 8), rc_y + rng.uniform(5, 8))
        bones.append(("arch", (z0 - hh * 0.8, z0 + hh * 0.8, yk, ring)))
        sp_len = rng.uniform(25, 40) * bs
        bones.append(("capsule", ((0, yk + ring[1] - 2, z0), (0, yk + ring[1] + sp_len, z0 - sp_len * rng.uniform(0.2, 0.8)),
                                  rng.uniform(3.5, 5.5))))
        if i < 5:  # lumbar transverse processes
            for s in (-1, 1):
                tl = rng.uniform(22, 36) * bs if name != "L1" else rng.uniform(12, 20)
                bones.append(("capsule", ((s * rc_x, yk - 2, z0), (s * (a + tl), yk - rng.uniform(0, 10), z0 + rng.uniform(-4, 4)),
                                          rng.uniform(3.5, 5.0))))
    # ribs T5 … T12 round the body wall, the upper ones ending in the costal margin
    z_xiph = lv["T9"] - rng.uniform(0, 30)
    sag = rng.uniform(60, 120)
    cart: list[tuple] = []
    for i, name in enumerate(_LEVELS[5:], start=5):
        z0, a, b = zc[i], ab[i][0], ab[i][1]
        ysp = float(y_sp(np.float32(z0)))
        for s in (-1, 1):
            if name == "T12":
                th_end = rng.uniform(0.9, 1.4)
            elif name == "T11":
                th_end = rng.uniform(1.4, 1.9)
            else:
                th_end = rng.uniform(2.2, 2.6)
            r_rib = rng.uniform(3.5, 5.5)
            pts = []
            for th in np.linspace(0.35, th_end, 6):
                zz = z0 - sag * (th - 0.35) / 2.3 * rng.uniform(0.95, 1.05)
                _, cy, am, bm = body(np.float32(zz), False)
                rx = float(am) - rng.uniform(4, 10)
                y_post = ysp + b * 0.6
                yc_r = float(cy)
                ry = (y_post - yc_r) / np.cos(0.35) if np.cos(th) > 0 else (yc_r - (float(cy) - float(bm) + rng.uniform(4, 10)))
                pts.append(np.array([s * rx * np.sin(th), yc_r + ry * np.cos(th), zz]))
            pts[0] = np.array([s * (a + 8), ysp + b * 0.8, z0])  # the head beside the vertebra
            for p, q in zip(pts[:-1], pts[1:]):
                bones.append(("capsule", (p, q, r_rib)))
            if th_end > 2.0:  # costal cartilage up to the xiphoid / sternum
                tip = pts[-1]
                z_end = max(z_xiph, tip[2]) if name in ("T7", "T8", "T9", "T10") else tip[2] + rng.uniform(0, 15)
                mid = np.array([tip[0] * 0.5, tip[1] - rng.uniform(0, 8), (tip[2] + z_end) / 2 - rng.uniform(0, 10)])
                end = np.array([s * rng.uniform(8, 18), tip[1] - rng.uniform(5, 15), z_end])
                cart += [(tip, mid, r_rib), (mid, end, r_rib * 0.9)]
    y_st = float(body(np.float32(z_xiph), False)[1] - body(np.float32(z_xiph), False)[3]) + rng.uniform(6, 14)
    bones.append(("capsule", ((0, y_st + 3, z_xiph - rng.uniform(15, 35)), (0, y_st, z_xiph), rng.uniform(3, 6))))  # xiphoid
    bones.append(("capsule", ((0, y_st, z_xiph), (0, y_st - rng.uniform(0, 15), z_xiph + 250), rng.uniform(6, 10))))  # sternum
    cortex = rng.uniform(1.2, 2.5)
    bone_only = _allow(MUSCLE, PFAT, FAT, LUNG)
    for grow, code in ((0.0, CORTEX), (-cortex, MARROW)):
        only = bone_only if code == CORTEX else _allow(CORTEX)
        for kind, args in bones:
            if kind == "body":
                z0, z1 = args
                o.add(_ztube(z0 - grow, z1 + grow, lambda Z, g=grow: (0.0, y_sp(Z), a_of(Z) + g, b_of(Z) + g), (-60, 60), yb), code, only)
            elif kind == "arch":
                z0, z1, yk, ring = args
                o.add(_ztube(z0, z1, lambda Z, yk=yk, ring=ring, g=grow: (0.0, yk, ring[0] + g, ring[1] + g), (-60, 60),
                             (yk - 40, yk + 40)), code, only)
            else:
                p0, p1, r = args
                if r + grow > 0.8:
                    o.add(_capsule(p0, p1, r + grow), code, only)
    for p, q, r in cart:
        o.add(_capsule(p, q, r), CARTILAGE, bone_only)
    z_sp0, z_sp1 = float(s1c[2]) - 30, big
    o.add(_ztube(discs[0][0] - 0.5, discs[-1][1] + 0.5, lambda Z: (0.0, y_sp(Z), a_of(Z) - 0.5, b_of(Z) - 0.5), (-60, 60), yb,
                 extra=lambda X, Y, Z: _in_discs(Z, discs)), DISC, _allow(MUSCLE, PFAT, FAT, LUNG, CORTEX))
    o.add(_ztube(z_sp0, z_sp1, lambda Z: (0.0, y_sp(Z) + b_of(Z) + rc_y + 2, rc_x, rc_y), (-60, 60), (yb[0], yb[1] + 40)), CANAL,
          _allow(CORTEX, MARROW, MUSCLE, PFAT, DISC))

    # ---- psoas: from T12 / L1 beside the bodies over the pelvic brim, in front of the hip ----
    for s in (-1, 1):
        pts = [np.array([s * (a_of(z_t12) + 2), y_sp(z_t12) - 0.1 * b_of(z_t12), z_t12]),
               np.array([s * (a_of(lv["L3"]) + rng.uniform(8, 14)), y_sp(lv["L3"]) - rng.uniform(0.1, 0.4) * b_of(lv["L3"]), lv["L3"]]),
               np.array([s * (a_of(z_l5) + rng.uniform(18, 28)), y_sp(z_l5) - rng.uniform(0.3, 0.7) * b_of(z_l5), z_l5]),
               np.array([s * (hx - rh * rng.uniform(0.2, 0.5)), y_head - rh - rng.uniform(4, 12), z_head + rng.uniform(25, 45)]),
               np.array([s * (hx - rng.uniform(-5, 8)), y_head - rh - rng.uniform(0, 8), z_head - rng.uniform(25, 45)])]
        radii = [rng.uniform(6, 10), rng.uniform(13, 19), rng.uniform(17, 25), rng.uniform(14, 20), rng.uniform(10, 15)]
        radii = [r * bs for r in radii]
        _tube(o, pts, radii, PSOAS, soft)

    # ---- great vessels ----
    z_bif = lv["L4"] + rng.uniform(-15, 15)
    r_ao = rng.uniform(8, 13)
    x_ao = rng.uniform(5, 22)
    ao_top = np.array([x_ao * 0.5, float(y_sp(np.float32(z_dome_r + 60))) - rng.uniform(0, 10), z_dome_r + 200])
    ao_mid = np.array([x_ao, float(y_sp(np.float32(lv["L1"])) - b_of(lv["L1"])) - r_ao - rng.uniform(0, 6), lv["L1"]])
    ao_bif = np.array([x_ao * 0.7, float(y_sp(np.float32(z_bif)) - b_of(z_bif)) - r_ao - rng.uniform(0, 6), z_bif])
    vessel_only = _allow(PFAT, MUSCLE, PSOAS, LUNG, FAT)
    _tube(o, [ao_top, ao_mid, ao_bif], [r_ao * 1.15, r_ao, r_ao * 0.8], AORTA, vessel_only)
    il = f["iliac_top"]
    for s in (-1, 1):
        _tube(o, [ao_bif, il[s] + np.array([0, 0, 25.0])], [r_ao * 0.55, rng.uniform(4, 6.5)], AORTA, vessel_only)
    r_ivc = rng.uniform(8, 13)
    x_ivc = -rng.uniform(15, 30)
    ivc = [np.array([x_ivc * 0.9, float(y_sp(np.float32(z_dome_r))) - b_of(z_dome_r) - r_ivc - rng.uniform(5, 30), z_dome_r + 20]),
           np.array([x_ivc, float(y_sp(np.float32(lv["L2"])) - b_of(lv["L2"])) - r_ivc * 0.6, lv["L2"]]),
           np.array([x_ivc * 0.6, float(y_sp(np.float32(z_l5)) - b_of(z_l5)) - r_ivc * 0.6, z_l5])]
    _tube(o, ivc, [r_ivc, r_ivc, r_ivc * 0.9], VESSEL, vessel_only)
    for s in (-1, 1):
        _tube(o, [ivc[-1], il[s] + np.array([-s * 10, 0, 20.0])], [r_ivc * 0.6, rng.uniform(5, 7.5)], VESSEL, vessel_only)

    # ---- kidneys with the perirenal fat, renal pelvis and ureter; adrenals; renal vessels ----
    kid = {}
    z_kl = lv["L1"] + rng.uniform(-20, 20)
    for s, zk in ((1, z_kl), (-1, z_kl - rng.uniform(5, 30))):
        semi = np.array([rng.uniform(22, 30), rng.uniform(17, 24), rng.uniform(45, 62)]) * rng.uniform(0.9, 1.1)
        rot = _rot(np.deg2rad(rng.uniform(-25, -5)), np.deg2rad(s * rng.uniform(5, 20)), np.deg2rad(s * rng.uniform(20, 45)))
        yk = float(y_sp(np.float32(zk))) + rng.uniform(-10, 20)
        c = np.array([s * (a_of(zk) + rng.uniform(22, 35) + semi[0]), yk, zk])
        kid[s] = (c, semi, rot)
        fat = rng.uniform(4, 20)
        o.add(_ellipsoid(c, semi + fat, rot, _Wobble(rng, 0.05, 4)), RFAT, _allow(PFAT, MUSCLE))
        hil = c + rot @ np.array([-s * semi[0] * 0.75, -semi[1] * 0.2, 0])  # medial, a bit anterior
        notch = _ellipsoid(hil, np.array([semi[0] * 0.45, semi[1] * 0.5, semi[2] * 0.35]), rot)[2]
        o.add(_ellipsoid(c, semi, rot, _Wobble(rng, 0.03, 4), extra=lambda X, Y, Z, n=notch: ~n(X, Y, Z)), KIDNEY,
              _allow(RFAT, PFAT))
        o.add(_ellipsoid(hil, np.array([semi[0] * 0.5, semi[1] * 0.45, semi[2] * 0.45]), rot), RFAT, _allow(KIDNEY))
        o.add(_ellipsoid(hil + rot @ np.array([s * 2, 0, 0]), np.array([rng.uniform(5, 13), rng.uniform(4, 9), rng.uniform(8, 18)]), rot),
              RPELVIS, _allow(KIDNEY, RFAT))
        cb, sb = f["bladder"]
        ure = [hil - np.array([s * 4, 4, 5]), np.array([s * (a_of(lv["L4"]) + rng.uniform(10, 20)), y_sp(lv["L4"]) - b_of(lv["L4"]) - 10, lv["L4"]]),
               np.array([s * rng.uniform(45, 70), y_head + rng.uniform(-10, 20), z_head + rng.uniform(20, 50)]),
               cb + np.array([s * sb[0] * 0.6, sb[1] * 0.6, 0])]
        _tube(o, ure, [rng.uniform(2, 4)] * 4, RPELVIS, _allow(PFAT, PSOAS, MUSCLE))
        top = c + rot @ np.array([-s * semi[0] * 0.3, 0, semi[2] * 0.9])
        o.add(_ellipsoid(top + np.array([-s * 8, -5, 15]), np.array([rng.uniform(3, 5), rng.uniform(10, 16), rng.uniform(12, 22)]),
                         random_rotation(rng, (20, 20, 40))), ADRENAL, _allow(PFAT, RFAT))
        src = ao_mid if s > 0 else ivc[1]
        o.add(_capsule(src + np.array([0, 0, -10.0]), hil, rng.uniform(3, 5.5)), VESSEL if s < 0 else AORTA, _allow(PFAT, RFAT, PSOAS))

    # ---- liver (right upper quadrant, filling the right dome), its vessels, gallbladder ----
    _, cy_mid, am_mid, bm_mid = body(np.float32(z_dome_r - 60), False)
    y_front = float(cy_mid - bm_mid) + w_ant
    a_cav = float(am_mid) - w_lat
    semi_r = np.array([rng.uniform(70, 95), rng.uniform(65, 95), rng.uniform(75, 110)]) * rng.uniform(0.85, 1.1)
    c_r = np.array([-(a_cav - semi_r[0] * rng.uniform(0.7, 0.95)), float(cy_mid) + rng.uniform(-10, 15),
                    z_dome_r - semi_r[2] * rng.uniform(0.45, 0.7)])
    rot_r = random_rotation(rng, (10, 10, 15))
    o.add(_ellipsoid(c_r, semi_r, rot_r, _Wobble(rng, rng.uniform(0.03, 0.08), 5)), LIVER, _allow(PFAT))
    semi_l = np.array([rng.uniform(45, 85), rng.uniform(25, 45), rng.uniform(30, 55)])
    c_l = np.array([rng.uniform(0, 45), y_front + semi_l[1] * rng.uniform(0.8, 1.1), z_dome_l - semi_l[2] * rng.uniform(0.6, 1.0)])
    o.add(_ellipsoid(c_l, semi_l, random_rotation(rng, (10, 10, 20)), _Wobble(rng, rng.uniform(0.03, 0.08), 5)), LIVER, _allow(PFAT))
    if rng.random() < 0.3:  # Riedel's lobe: a tongue of the right lobe reaching down
        o.add(_ellipsoid(c_r + np.array([-semi_r[0] * 0.3, -semi_r[1] * 0.2, -semi_r[2] * 0.8]),
                         np.array([rng.uniform(20, 35), rng.uniform(25, 40), rng.uniform(40, 70)])), LIVER, _allow(PFAT))
    porta = c_r + np.array([semi_r[0] * 0.5, -semi_r[1] * 0.1, -semi_r[2] * 0.35])
    for _ in range(int(rng.integers(4, 9))):
        d = rng.normal(size=3) * np.array([1.0, 0.6, 0.8])
        q = porta + d / np.linalg.norm(d) * rng.uniform(30, 80)
        o.add(_capsule(porta, q, rng.uniform(3, 7), rng.uniform(1.5, 3)), VESSEL, _allow(LIVER))
    z_liver_low = float(c_r[2] - semi_r[2])
    if rng.random() < 0.85:
        semi_g = np.array([rng.uniform(10, 20), rng.uniform(10, 20), rng.uniform(22, 45)])
        c_g = np.array([c_r[0] + semi_r[0] * rng.uniform(0.2, 0.6), y_front + rng.uniform(25, 55), c_r[2] - semi_r[2] * rng.uniform(0.45, 0.8)])
        o.add(_ellipsoid(c_g, semi_g, _rot(np.deg2rad(rng.uniform(20, 60)), np.deg2rad(rng.uniform(-20, 20)), 0)), GALLB,
              _allow(LIVER, PFAT))

    # ---- spleen (left upper, posterior) ----
    semi_s = np.array([rng.uniform(18, 32), rng.uniform(35, 60), rng.uniform(40, 70)])
    c_s = np.array([a_cav - semi_s[0] * rng.uniform(1.0, 1.6), float(y_sp(np.float32(z_dome_l))) + rng.uniform(-25, 15),
                    z_dome_l - rng.uniform(40, 80)])
    o.add(_ellipsoid(c_s, semi_s, _rot(0, 0, np.deg2rad(rng.uniform(-50, -20))) @ random_rotation(rng, (15, 15, 15)),
                     _Wobble(rng, rng.uniform(0.03, 0.08), 5)), SPLEEN, _allow(PFAT))

    # ---- stomach: fundus under the left dome, body down the front, antrum to the pylorus ----
    state = rng.choice(["empty", "fluid", "food", "gas"], p=[0.25, 0.3, 0.25, 0.2])
    rs = rng.uniform(12, 22) if state == "empty" else rng.uniform(25, 48)
    wall = rng.uniform(5, 10) if state == "empty" else rng.uniform(3, 6)
    p0 = np.array([rng.uniform(35, 70), float(cy_mid) + rng.uniform(0, 30), z_dome_l - rs - rng.uniform(5, 20)])
    p1 = np.array([rng.uniform(40, 75), y_front + rs + rng.uniform(5, 25), p0[2] - rng.uniform(50, 90)])
    p2 = np.array([rng.uniform(0, 30), y_front + rs * 0.7 + rng.uniform(5, 20), p1[2] - rng.uniform(0, 35)])
    pyl = np.array([-rng.uniform(15, 35), y_front + rng.uniform(35, 60), p2[2] + rng.uniform(0, 25)])
    lvl = None if state in ("empty", "food") else float(y_front + rs * rng.uniform(0.3, 1.2))
    _tube(o, _path(rng, [p0, p1, p2, pyl], 6.0), [rs, rs, rs * 0.9, rs * 0.8, rs * 0.6, rs * 0.45, rs * 0.35],
          STOMACH, _allow(PFAT), SCONTENT, wall, gas_level=lvl)

    # ---- pancreas in front of the aorta, duodenal C-loop round its head ----
    z_pan = lv["L1"] + rng.uniform(-25, 10)
    y_pre = float(y_sp(np.float32(z_pan)) - b_of(z_pan)) - r_ao * 2
    head = np.array([-rng.uniform(25, 45), y_pre - rng.uniform(5, 20), z_pan - rng.uniform(5, 20)])
    neck = np.array([rng.uniform(-5, 10), y_pre - rng.uniform(15, 30), z_pan])
    tail = c_s + np.array([-semi_s[0] * rng.uniform(1.0, 1.8), -rng.uniform(5, 20), -rng.uniform(0, 30)])
    body_p = (neck + tail) / 2 + np.array([0, -rng.uniform(0, 15), 0])
    _tube(o, [head, neck, body_p, tail], [rng.uniform(13, 20), rng.uniform(7, 11), rng.uniform(8, 13), rng.uniform(6, 11)],
          PANCREAS, _allow(PFAT))
    rd = rng.uniform(9, 16)
    d1 = pyl + np.array([-rng.uniform(10, 25), rng.uniform(10, 30), 0])
    d2 = np.array([head[0] - rng.uniform(18, 28), head[1] + rng.uniform(-5, 10), head[2] - rng.uniform(30, 50)])
    d3 = np.array([rng.uniform(-5, 20), y_pre + rng.uniform(0, 10), d2[2] - rng.uniform(0, 15)])
    d4 = np.array([rng.uniform(25, 45), y_pre - rng.uniform(0, 15), z_pan - rng.uniform(0, 20)])
    _tube(o, _path(rng, [pyl, d1, d2, d3, d4], 3.0, 1), [rd * 0.8, rd, rd, rd, rd], BOWEL, _allow(PFAT), BCONTENT, rng.uniform(2, 3.5),
          gas_level=float(d1[1] - rd * rng.uniform(0, 0.6)) if rng.random() < 0.5 else None)

    # ---- colon: caecum, ascending, hepatic flexure, transverse, splenic flexure, descending, sigmoid ----
    cavx = a_cav
    rect = f["rect"]
    z_r1 = f["z_r1"]
    cx_r, cy_r, _, _ = rect(np.float32(z_r1))
    rcol = rng.uniform(18, 32)
    anchors = [np.array([-(cavx - rcol - rng.uniform(5, 30)), y_front + rng.uniform(40, 90), z_head + rng.uniform(50, 90)]),
               np.array([-(cavx - rcol - rng.uniform(5, 20)), float(cy_mid) + rng.uniform(-10, 30), z_liver_low + rng.uniform(-20, 20)]),
               np.array([rng.uniform(-20, 20), y_front + rcol + rng.uniform(0, 25), lv["L3"] + rng.uniform(-40, 40)]),
               np.array([cavx - rcol - rng.uniform(5, 20), float(cy_mid) + rng.uniform(0, 30), c_s[2] - semi_s[2] * rng.uniform(0.3, 1.0)]),
               np.array([cavx - rcol - rng.uniform(5, 25), float(cy_mid) + rng.uniform(0, 40), z_head + rng.uniform(70, 110)]),
               np.array([rng.uniform(0, 50), y_front + rng.uniform(40, 90), z_head + rng.uniform(40, 80)]),
               np.array([float(cx_r), float(cy_r), float(z_r1) - 5])]
    pts = _path(rng, anchors, 10.0, 3)
    radii = [rcol * rng.uniform(0.75, 1.1) for _ in pts]
    radii[-4:] = [r * 0.65 for r in radii[-4:]]  # the sigmoid is narrower
    colon_lvl = float(y_front + rcol * rng.uniform(0.3, 1.8))
    _tube(o, pts, radii, COLON, _allow(PFAT), CCONTENT, rng.uniform(1.5, 3.5), gas_level=colon_lvl)
    for _ in range(int(rng.integers(3, 15))):  # gas bubbles in the faeces
        q = pts[int(rng.integers(len(pts)))] + rng.normal(0, 8, 3)
        o.add(_ellipsoid(q, rng.uniform(3, 10, 3)), BGAS, _allow(CCONTENT))

    # ---- small bowel loops filling the mid and lower abdomen ----
    z_sb0, z_sb1 = z_head + rng.uniform(30, 60), lv["L1"] + rng.uniform(-20, 20)
    for _ in range(int(rng.integers(6, 14))):
        p = np.array([rng.uniform(-0.7, 0.7) * cavx, rng.uniform(y_front + 20, y_front + 110), rng.uniform(z_sb0, z_sb1)])
        r, wall = rng.uniform(9, 17), rng.uniform(1.5, 3.0)
        gas = rng.random() < 0.35
        chain = [p]
        for _ in range(int(rng.integers(2, 6))):
            d = rng.normal(size=3)
            chain.append(chain[-1] + d / np.linalg.norm(d) * rng.uniform(15, 35))
        lvl_b = float(np.mean([c[1] for c in chain]) + rng.uniform(-r / 2, r / 3)) if gas else None
        _tube(o, chain, [r] * len(chain), BOWEL, _allow(PFAT), BCONTENT, wall, gas_level=lvl_b)
    return {"levels": lv, "dome": (z_dome_r, z_dome_l)}


def _in_discs(Z, discs) -> np.ndarray:
    """Whether each z (mm) lies in one of the ``discs`` (z ranges)."""
    m = np.zeros(np.shape(Z), bool)
    for z0, z1 in discs:
        m |= (Z >= np.float32(z0)) & (Z < np.float32(z1))
    return m
