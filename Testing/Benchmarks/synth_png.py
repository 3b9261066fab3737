"""Render a grid of domain-randomised synthetic cases (voxmetric.synth) as one PNG: rows of
CT-like, T2-MR-like and random-contrast samples (whole-pelvis field of view), a row of
stage-2 crops (roi, mixed contrasts) and a row of abdomen–pelvis scans (abdomen, mixed
contrasts); per case an axial and a sagittal slice through the prostate centroid (abdomen: a
coronal slice through the kidneys and a sagittal one), resampled onto patient axes
(radiological view: patient left on the right, anterior up / left), with the label contours.

    python Testing/Benchmarks/synth_png.py --out Resources/synth_samples.png [--seeds 4] [--first 0] [--clutter]

``--clutter``: the same cases drawn with clutter in fat and muscle (``make_synth_case(clutter=True)``).
"""

from __future__ import annotations

import argparse
import io as pyio
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from voxmetric.phantom import LABELS  # noqa: E402
from voxmetric.synth import make_synth_case  # noqa: E402
from voxmetric.volume import Volume, resample_to  # noqa: E402

COLOURS = {1: "yellow", 2: "cyan", 3: "orange", 4: "lime", 5: "magenta"}
VIEWS = {  # slice axes (columns x, y of the picture, z = slice normal) in LPS
    "axial": np.eye(3),  # columns → patient left (radiological: patient right on the left), rows → posterior
    "sagittal": np.array([[0, 1.0, 0], [0, 0, -1], [1, 0, 0]]).T,  # cols anterior → posterior, rows superior → inferior
}
COR_VIEWS = {  # abdomen: coronal (cols → patient left, rows superior → inferior) and sagittal
    "coronal": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]).T,
    "sagittal": VIEWS["sagittal"],
}


def view_slice(case, centre: np.ndarray, axes: np.ndarray, size_mm: float, px: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) on a px × px plane through ``centre`` spanned by ``axes`` columns 0, 1."""
    sp = size_mm / px
    origin = centre - axes @ np.array([(px - 1) * sp / 2, (px - 1) * sp / 2, 0.0])
    ref = Volume(np.zeros((1, px, px), np.uint8), (sp, sp, 1.0), origin, axes)
    img = resample_to(case.image.with_array(case.image.array.astype(np.float32)), ref, fill=np.nan).array[0]
    lab = resample_to(case.labels, ref, is_label=True).array[0]
    return img, lab


def palette(n_grey: int) -> Image.Image:
    """A fixed palette: ``n_grey`` grey levels plus the contour colours (a small PNG in which
    thin contours keep their colour)."""
    rgb = [tuple(int(round(v)) for v in (g, g, g)) for g in np.linspace(0, 255, n_grey)]
    rgb += [tuple(int(255 * c) for c in matplotlib.colors.to_rgb(name)) for name in COLOURS.values()]
    flat = [v for c in rgb for v in c]
    pal = Image.new("P", (1, 1))
    pal.putpalette(flat + [0] * (768 - len(flat)))
    return pal


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="Resources/synth_samples.png")
    ap.add_argument("--seeds", type=int, default=4, help="cases per row")
    ap.add_argument("--first", type=int, default=0, help="first seed")
    ap.add_argument("--px", type=int, default=150, help="pixels per panel side")
    ap.add_argument("--colors", type=int, default=40, help="grey levels of the saved PNG's palette (keeps it small)")
    ap.add_argument("--clutter", action="store_true", help="draw the cases with clutter")
    a = ap.parse_args()
    rows = [("ct", "pelvis"), ("mr", "pelvis"), ("random", "pelvis"), ("mix", "roi"), ("mix", "abdomen")]
    fig, axs = plt.subplots(len(rows), 2 * a.seeds, figsize=(2 * a.seeds * 1.8, len(rows) * 2.05), facecolor="black")
    info = []
    t0 = time.perf_counter()
    for r, (contrast, fov) in enumerate(rows):
        for j in range(a.seeds):
            seed = a.first + 100 * r + j
            case = make_synth_case(seed, contrast, fov, clutter=a.clutter)
            pro = np.argwhere(case.labels.array == LABELS["Prostate"]).mean(axis=0)
            centre = case.labels.index_to_physical(pro[::-1])
            ext = np.sort(np.array(case.image.shape[::-1]) * case.image.spacing)
            size = float(np.clip(ext[1], 120, 260)) if fov == "pelvis" else 150.0  # fill the panel
            views = VIEWS
            if fov == "abdomen":  # the scan's middle in z, behind the prostate (kidneys), the whole length
                mid = case.image.index_to_physical((np.array(case.image.shape[::-1]) - 1) / 2)
                centre = np.array([centre[0], centre[1] + 35.0, mid[2]])
                size, views = float(np.clip(ext[2], 300, 560)), COR_VIEWS
            vals = case.image.array
            if case.contrast == "ct":
                lo, hi = -200.0, 250.0
            else:
                lo, hi = (float(v) for v in np.percentile(vals[:: max(1, vals.shape[0] // 8)], [0.5, 99.5]))
            for v, (name, axes) in enumerate(views.items()):
                img, lab = view_slice(case, centre, axes, size, a.px)
                ax = axs[r, 2 * j + v]
                ax.imshow(np.nan_to_num(img, nan=lo), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
                for value, colour in COLOURS.items():
                    if (lab == value).any():
                        ax.contour(lab == value, levels=[0.5], colors=colour, linewidths=0.6)
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if v == 0:
                    sx, _, sz = case.acquisition_spacing
                    ax.set_title(f"{case.contrast} {fov} s{seed}\n{sx:.2f}×{sz:.1f} mm, {case.prostate_ml:.0f} mL",
                                 color="white", fontsize=6.5, loc="left")
            info.append({"seed": seed, "contrast": case.contrast, "fov": fov, "shape": list(case.image.shape),
                         "acq_spacing": [round(float(s), 3) for s in case.acquisition_spacing],
                         "prostate_ml": round(case.prostate_ml, 1)})
    names = ", ".join(f"{n}={COLOURS[v]}" for n, v in LABELS.items())
    fig.suptitle(f"voxmetric.synth samples (axial | sagittal per case, abdomen: coronal | sagittal; CT window "
                 f"−200…250 HU{', with clutter' if a.clutter else ''})\n{names}",
                 color="white", fontsize=8)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=0.92, wspace=0.03, hspace=0.3)
    buf = pyio.BytesIO()
    fig.savefig(buf, dpi=100, facecolor="black")
    img = Image.open(buf).convert("RGB").quantize(palette=palette(a.colors), dither=Image.Dither.NONE)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    print(json.dumps({"event": "done", "png": str(out.resolve()), "kb": round(out.stat().st_size / 1024, 1),
                      "seconds": round(time.perf_counter() - t0, 1), "cases": info}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
