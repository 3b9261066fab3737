"""Diagnosis, not a result: the bundled pipeline on the two PROMISE12 cases at other voxel spacings
(issue 11). Their files lost their spacing and say 1 mm (``../shared/data/README.md``), which
makes the glands 15-18 mL and 32 mm deep; this asks whether stage 1 finds them at spacings a T2 scan
could have had. The true spacing is unknown, so no figure here is a score of the model.

    python Testing/Benchmarks/promise12_spacing.py [--spacings 1,1,1 1.5,1.5,1.5 1.5,1.5,3] [--threads 2]

Prints one JSON object per case and spacing (x, y, z in mm): found, stage-1 confidence, DSC against
the label, the result's and the label's volume in mL at that spacing.
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
from real_data import promise12, promise12_cases  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--spacings", nargs="+", default=["1,1,1", "1.5,1.5,1.5", "1.2,1.2,2.5", "1.5,1.5,3"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    from voxmetric import io, models
    from voxmetric.metrics import evaluate_masks
    from voxmetric.volume import Volume

    torch.set_num_threads(args.threads)
    pipe = models.load_pipeline(None, "mr", "cpu")
    for case in promise12_cases():
        image_path, label_path = promise12(case)
        image, truth = io.read_volume(image_path), io.read_volume(label_path).array > 0
        for text in args.spacings:
            spacing = tuple(float(v) for v in text.split(","))
            scan = Volume(image.array, np.array(spacing), image.origin, image.direction)
            res = pipe.segment(scan)
            mask = res.mask.array > 0 if res.mask is not None else np.zeros_like(truth)
            voxel_ml = float(np.prod(spacing)) / 1000
            dsc = evaluate_masks(mask, truth, scan.spacing_zyx)["dsc"]
            print(json.dumps({"case": case, "spacing_mm": spacing, "found": res.found,
                              "confidence": round(res.confidence, 2), "dsc": round(dsc, 3),
                              "ml": round(float(mask.sum()) * voxel_ml, 1),
                              "truth_ml": round(float(truth.sum()) * voxel_ml, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
