"""Where the stage-1 localizer looks on real T2 MR: its prostate probability over the real scans of
``../shared/data`` (the five NCI-ISBI scans and the two PROMISE12 scans), whether or not stage 1
reports a prostate.

    python Testing/Benchmarks/localizer_heatmaps.py [--pipeline synth] [--localizer PKG] [--png OUT.png]
        [--weights CHECKPOINT] [--gamma 0.5 1 2]

Prints one JSON line per scan (peak probability, the voxels above 0.5 in mL, stage 1's verdict) and
writes a picture: per scan, the axial slice of the peak with the probability over the localizer's
4 mm input (yellow = 1), and the PROMISE12 truth (green) where there is one. ``--weights``: a
trainer checkpoint (``<run>/checkpoints/*.safetensors``) of that localizer's network instead of the
package's weights; ``--gamma``: also run stage 1 on each scan bent by these gamma curves
(``(v / p99.5)^γ``; the JSON line gets ``peak_by_gamma`` and ``found_by_gamma``; the picture stays γ 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Benchmarks"))
from real_data import SHARED, ncisbi, promise12, promise12_cases  # noqa: E402


def scans() -> list[tuple[str, Path, Path | None]]:
    """(name, image, truth or None) of the real MR scans present."""
    out: list[tuple[str, Path, Path | None]] = [(name, f, None) for name, f in ncisbi()]
    return out + [(f"PROMISE12 case {case}", *promise12(case)) for case in promise12_cases()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default="synth")
    p.add_argument("--localizer", help="a localizer package folder instead of the pipeline's")
    p.add_argument("--png", type=Path, default=Path("localizer_heatmaps.png"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", type=Path, help="a trainer checkpoint of the localizer's network")
    p.add_argument("--gamma", type=float, nargs="+", default=[], help="also run on the scans bent by these gammas")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from voxmetric import io, models
    from voxmetric.pipeline import Pipeline
    from voxmetric.volume import resample_to

    torch.set_num_threads(args.threads)
    rows = scans()
    if not rows:
        raise SystemExit(f"no real MR scans under {SHARED}")
    pipe = models.load_pipeline(args.pipeline, "mr", "cpu", runtime="torch" if args.weights else "auto")
    if args.localizer:
        pipe = Pipeline(models.load_stage(args.localizer), pipe.refiner, "mr", device="cpu")
    loc = pipe.localizer
    if loc is None:
        raise SystemExit(f"pipeline {args.pipeline!r} has no localizer")
    if args.weights:
        from voxmetric.training import load_checkpoint, stored_state

        assert loc.model is not None
        loc.model.load_state_dict(stored_state(load_checkpoint(args.weights)[0]))
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 3.0), squeeze=False)
    for ax, (name, image, truth_path) in zip(axes[0], rows):
        vol = io.read_volume(image)
        stage1 = pipe.localize(vol)
        assert stage1.probability is not None
        grid, prob = stage1.probability, stage1.probability.array
        z = int(np.unravel_index(int(prob.argmax()), prob.shape)[0])
        row = {"scan": name, "peak": round(float(prob.max()), 3),
               "above_half_ml": round(float((prob > 0.5).sum() * np.prod(grid.spacing) / 1000), 2),
               "found": stage1.found, "confidence": round(stage1.confidence, 3)}
        if args.gamma:
            a = vol.array.astype(np.float32)
            top = float(np.percentile(a, 99.5)) or 1.0
            bent = [pipe.localize(vol.with_array(np.clip(a / top, 0, None) ** g * 1000)) for g in args.gamma]
            assert all(b.probability is not None for b in bent)
            row["peak_by_gamma"] = {str(g): round(float(b.probability.array.max()), 3)  # type: ignore[union-attr]
                                    for g, b in zip(args.gamma, bent)}
            row["found_by_gamma"] = {str(g): b.found for g, b in zip(args.gamma, bent)}
        print(json.dumps(row), flush=True)
        shown = resample_to(vol.with_array(vol.array.astype(np.float32)), grid, is_label=False).array[z]
        ax.imshow(shown, cmap="gray", vmin=float(np.percentile(shown, 0.5)), vmax=float(np.percentile(shown, 99.5)))
        ax.imshow(np.ma.masked_less(prob[z], 0.05), cmap="inferno", vmin=0, vmax=1, alpha=0.6)
        if truth_path is not None and truth_path.exists():
            truth = io.read_segment_mask(truth_path)
            t = resample_to(truth.with_array(truth.array.astype(np.float32)), grid, is_label=False).array > 0.5
            if t[z].any():
                ax.contour(t[z], [0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"{name}\npeak {row['peak']:.2f}, {'found' if row['found'] else 'not found'}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"stage-1 prostate probability on real T2 MR ({loc.name})", fontsize=9)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=80)
    print(json.dumps({"png": str(args.png)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
