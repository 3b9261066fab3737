"""Phantom accuracy of the bundled demo pipeline on held-out seeds; prints JSON lines.

    python Testing/Benchmarks/eval_demo_models.py [--seeds 5000-5009] [--threads N]

Held-out: the demo models were trained on seeds 1000… and validated on 2000… (see
Resources/Models/train_demo_models.py). One line per case (DSC, PPV, SEN, HD95, ASD, ROI
coverage of the true prostate, timings), then the mean / median / min over the cases.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="5000-5009", help="first-last (inclusive)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    a = p.parse_args()
    import numpy as np
    import torch

    from voxmetric import models
    from voxmetric.metrics import evaluate_masks
    from voxmetric.phantom import LABELS, make_case

    first, last = (int(v) for v in a.seeds.split("-"))
    pipe = models.load_pipeline(None, "ct", "cpu")
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for seed in range(first, last + 1):
        case = make_case(seed, "ct")
        truth = case.labels.array == LABELS["Prostate"]
        res = pipe.segment(case.image)
        m = evaluate_masks(res.mask.array, truth, case.image.spacing_zyx)
        pts = case.image.index_to_physical(np.argwhere(truth)[:, ::-1].astype(float))
        row = {"seed": seed, "found": res.found, **{k: round(float(m[k]), 4) for k in ("dsc", "ppv", "sen", "hd95", "asd")},
               "roi_covers_prostate": round(float(res.box.contains(pts).mean()), 4),
               "timings": {k: round(v, 2) for k, v in res.timings.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    dsc = [r["dsc"] for r in rows]
    print(json.dumps({"summary": f"seeds {first}-{last}", "models": [pipe.localizer.name, pipe.refiner.name],
                      "dsc_mean": round(statistics.mean(dsc), 4), "dsc_median": round(statistics.median(dsc), 4),
                      "dsc_min": round(min(dsc), 4),
                      "hd95_mean": round(statistics.mean(r["hd95"] for r in rows), 2),
                      "asd_mean": round(statistics.mean(r["asd"] for r in rows), 2),
                      "found": sum(r["found"] for r in rows), "cases": len(rows)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
