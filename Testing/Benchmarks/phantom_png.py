"""Render a CT (or MR) phantom as a PNG: axial, coronal and sagittal slices through the prostate
centroid, displayed in patient orientation (radiological convention), with label contours.

    python Testing/Benchmarks/phantom_png.py --out phantom_ct.png [--seed 0] [--modality ct]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from voxmetric.phantom import LABELS, make_case  # noqa: E402

COLOURS = {1: "yellow", 2: "cyan", 3: "orange", 4: "lime", 5: "magenta"}


def to_lps_canonical(arr: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Flip array axes so that index increases along +x (L), +y (P), +z (S)."""
    flips = np.sign(np.diag(direction))[::-1]  # (z, y, x)
    return arr[tuple(slice(None, None, -1) if f < 0 else slice(None) for f in flips)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="phantom_ct.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modality", default="ct", choices=["ct", "mr"])
    a = ap.parse_args()
    case = make_case(a.seed, a.modality)
    img = to_lps_canonical(case.image.array, case.image.direction)
    lab = to_lps_canonical(case.labels.array, case.labels.direction)
    sx, sy, sz = case.image.spacing
    zc, yc, xc = (int(round(v)) for v in np.argwhere(lab == LABELS["Prostate"]).mean(axis=0))
    if a.modality == "ct":
        lo, hi = -200, 250
    else:
        lo, hi = np.percentile(img, [0.5, 99.5])
    # Radiological display: patient right on the image left → show +x (left) on the right.
    views = [
        ("axial", img[zc], lab[zc], sy / sx, False),  # rows = y (anterior up), cols = x
        ("coronal", img[:, yc], lab[:, yc], sz / sx, True),  # rows = z (superior up)
        ("sagittal", img[:, :, xc], lab[:, :, xc], sz / sy, True),  # rows = z, cols = y (ant. left)
    ]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.5), facecolor="black")
    for ax, (name, im, lb, aspect, flip_rows) in zip(axes, views, strict=True):
        if flip_rows:
            im, lb = im[::-1], lb[::-1]
        ax.imshow(im, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        for v, colour in COLOURS.items():
            if (lb == v).any():
                ax.contour(lb == v, levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(name, color="white")
        ax.axis("off")
    names = ", ".join(f"{n}={COLOURS[v]}" for n, v in LABELS.items())
    fig.suptitle(f"{a.modality.upper()} phantom seed {a.seed}, shape {case.image.shape}, spacing "
                 f"{tuple(round(float(s), 2) for s in case.image.spacing)} mm\n{names}", color="white")
    fig.tight_layout()
    fig.savefig(a.out, dpi=80, facecolor="black")
    print(json.dumps({"event": "done", "png": str(Path(a.out).resolve()), "seed": a.seed, "modality": a.modality,
                      "shape": list(case.image.shape), "spacing": list(np.round(case.image.spacing, 3))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
