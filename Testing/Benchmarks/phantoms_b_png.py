"""Picture of the second phantom family: CT and MR cases, axial and sagittal slices through the
prostate centroid in the acquisition plane (axes flipped to patient orientation, radiological
display), with label contours.

    python Testing/Benchmarks/phantoms_b_png.py --out Resources/phantoms_b.png [--ct-seeds 0 1 4] [--mr-seeds 5 0 6]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import phantoms_b as pb  # noqa: E402

COLOURS = {pb.PROSTATE: "yellow", pb.BLADDER: "cyan", pb.RECTUM: "orange", pb.FH_LEFT: "lime", pb.FH_RIGHT: "magenta"}


def canonical(arr: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Flip array axes so that index increases along +x (L), +y (P), +z (S) (closest axis)."""
    flips = np.sign(np.diag(direction))[::-1]
    return arr[tuple(slice(None, None, -1) if f < 0 else slice(None) for f in flips)]


def panels(case: pb.CaseB) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """(title, image, labels, aspect) for the axial and sagittal views."""
    img = canonical(case.image.array.astype(np.float32), case.image.direction)
    lab = canonical(case.labels.array, case.labels.direction)
    sx, sy, sz = case.image.spacing
    zc, yc, xc = (int(round(v)) for v in np.argwhere(lab == pb.PROSTATE).mean(axis=0))
    return [("axial", img[zc], lab[zc], sy / sx), ("sagittal", img[:, :, xc][::-1], lab[:, :, xc][::-1], sz / sy)]


def window(case: pb.CaseB, im: np.ndarray) -> tuple[float, float]:
    if case.info["modality"] == "ct":
        return -220.0, 280.0
    lo, hi = np.percentile(im, [1, 99.5])
    return float(lo), float(hi)


def describe(info: dict) -> str:
    m = info["modality"].upper()
    extra = info["contrast"].upper() if m == "MR" else ("IV+" if info["iv_contrast"] else "plain")
    if m == "MR" and info.get("endorectal"):
        extra += " ERC"
    if info.get("prosthesis") is not None:
        extra += " hip metal"
    if info.get("bladder_contrast"):
        extra += f" bladder {info['bladder_contrast']}"
    sp = info["spacing"]
    return (f"{m} seed {info['seed']}: {extra}, {info['direction_kind']}, {info['dtype']}\n"
            f"{info['shape'][2]}x{info['shape'][1]}x{info['shape'][0]} @ {sp[0]:.2f}x{sp[1]:.2f}x{sp[2]:.1f} mm, "
            f"prostate {info['prostate_ml']:.0f} mL")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="Resources/phantoms_b.png")
    ap.add_argument("--ct-seeds", type=int, nargs="+", default=[0, 1, 4])
    ap.add_argument("--mr-seeds", type=int, nargs="+", default=[5, 0, 6])
    ap.add_argument("--max-voxels", type=int, default=None)
    ap.add_argument("--dpi", type=int, default=60)
    a = ap.parse_args()
    cases = [pb.make_case_b(s, "ct", a.max_voxels) for s in a.ct_seeds] + [pb.make_case_b(s, "mr", a.max_voxels) for s in a.mr_seeds]
    n_rows = max(len(a.ct_seeds), len(a.mr_seeds))
    fig, axes = plt.subplots(n_rows, 4, figsize=(16, 4.3 * n_rows), facecolor="black", squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, case in enumerate(cases):
        col = 0 if case.info["modality"] == "ct" else 2
        row = k if col == 0 else k - len(a.ct_seeds)
        for j, (name, im, lb, aspect) in enumerate(panels(case)):
            ax = axes[row, col + j]
            lo, hi = window(case, case.image.array)
            ax.imshow(np.clip(im, lo, hi), cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="antialiased")
            for v, colour in COLOURS.items():
                if (lb == v).any():
                    ax.contour(lb == v, levels=[0.5], colors=colour, linewidths=0.7)
            ax.set_title(describe(case.info) if j == 0 else name, color="white", fontsize=8, loc="left")
        print(json.dumps({"case": case.info["modality"] + str(case.info["seed"]), "seconds": case.info["seconds"],
                          "shape": case.info["shape"]}))
    fig.suptitle("Second phantom family (evaluation only): prostate yellow, bladder cyan, rectum orange, "
                 "femoral heads green/magenta", color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, dpi=a.dpi, facecolor="black", format="png")
    from PIL import Image  # matplotlib's own dependency

    Image.open(buf).convert("RGB").quantize(colors=160, method=Image.Quantize.FASTOCTREE).save(a.out, optimize=True)  # palette: small file
    print(json.dumps({"event": "done", "png": str(Path(a.out).resolve()), "bytes": Path(a.out).stat().st_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
