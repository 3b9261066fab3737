"""Fine-tuning the bundled refiner on one real MR case against training it from scratch (issue 11).

    python Testing/Benchmarks/finetune_promise12.py [--iterations 200] [--work DIR] [--refiner PKG]
        [--kinds bundled,scratch,fine-tuned]

For each direction (train on PROMISE12 case 0, test on case 1; and the reverse) and the same
budget (``--iterations`` × batch 8, Adam 1e-3, seed 0, no validation), three refiners of the
bundled refiner's architecture (MetricUNet-HCP, base 16, 64-d embedding, 1.5 mm):

* ``bundled``: the bundled ``synth-metricunet-hcp`` as it is (never saw a PROMISE12 scan or a human label);
* ``scratch``: trained on the one case from random weights;
* ``fine-tuned``: trained on the one case from the bundled weights (``--init-from``).

Each is scored on the other case through the whole pipeline with the bundled localizer
(``segment``), and inside the true prostate box + 15 mm (the refiner alone, ``--stage refine``).
``--refiner PKG``: another refiner package in place of the bundled one (scored as ``bundled``, and
the start of ``fine-tuned``); ``--kinds``: which of the three to run (``bundled`` alone: no training).
The true spacing of these files is unknown (they say 1 mm): HD95 is only relative.
Prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Benchmarks"))
from real_data import PROMISE12, promise12, promise12_cases  # noqa: E402
REFINER = "synth-metricunet-hcp"


def emit(d: dict) -> None:
    print(json.dumps(d), flush=True)


def train(work: Path, case: int, iterations: int, init: bool, refiner: str = REFINER) -> Path:
    from voxmetric import models
    from voxmetric.cases import CaseRecord, write_manifest
    from voxmetric.cli import main

    folder = work / f"case{case}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest([CaseRecord(f"case{case}", *promise12(case), None, "mr")], folder / "manifest.json")
    # a model trained before is reused only for the same budget and, fine-tuned, the same starting weights
    start = models.read_card(models.find_model(refiner).path)["weights_sha256"][:12] if init else "random"
    out = work / f"{'finetuned' if init else 'scratch'}-case{case}-{iterations}-{start}"
    if (out / "model.json").exists():
        return out
    args = ["train", "--method", "MetricUNet-HCP", "--cases", str(manifest), "--out", str(out), "--iterations",
            str(iterations), "--batch-size", "8", "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "1e-5",
            "--val-cases", "0", "--device", "cpu", "--events-jsonl", "--checkpoint-every", str(iterations)]
    args += ["--init-from", refiner] if init else ["--spacing-mm", "1.5", "--base", "16", "--embed-channels", "64"]
    if main(args) != 0:
        raise SystemExit(f"training failed: {args}")
    return out


def score(refiner: str | Path, case: int) -> dict:
    from voxmetric import io, models
    from voxmetric.metrics import evaluate_masks
    from voxmetric.volume import Box

    image, label = promise12(case)
    vol = io.read_volume(image)
    truth = io.read_segment_mask(label).array > 0
    pipe = models.load_pipeline(str(refiner), "mr", "cpu")
    whole = pipe.segment(vol)
    idx = np.argwhere(truth)
    lo, hi = vol.index_to_physical(idx.min(0)[::-1].astype(float)), vol.index_to_physical(idx.max(0)[::-1].astype(float))
    box = Box((lo + hi) / 2, np.abs(hi - lo) + 30.0, vol.direction)
    inside = pipe.refine(vol, box)
    out = {}
    for key, mask in (("pipeline", whole.mask.array > 0), ("true_box", inside.array > 0)):
        m = evaluate_masks(mask, truth, vol.spacing_zyx)
        out[key] = {"dsc": round(m["dsc"], 4), "hd95": round(m["hd95"], 2), "ml": round(m["vol_pred_ml"], 1)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "voxmetric-finetune")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--refiner", default=REFINER, help="refiner package (name or folder) in place of the bundled one")
    p.add_argument("--kinds", default="bundled,scratch,fine-tuned", help="which refiners to score")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if promise12_cases() != [0, 1]:
        raise SystemExit(f"needs both cases in {PROMISE12}")
    for train_case, test_case in ((0, 1), (1, 0)):
        for kind in args.kinds.split(","):
            refiner: str | Path = args.refiner if kind == "bundled" else train(args.work, train_case, args.iterations,
                                                                               kind == "fine-tuned", args.refiner)
            emit({"train": f"case{train_case}", "test": f"case{test_case}", "refiner": kind,
                  "iterations": 0 if kind == "bundled" else args.iterations, **score(refiner, test_case)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
