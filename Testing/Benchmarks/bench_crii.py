"""CRII-Net benchmark (issue 9): semi-supervised CRII against the same network trained
supervised-only, with the same iterations, labelled batch, seed and learning-rate schedule.

* (a) CT phantoms: 2 labelled + 10 unlabeled phantoms, DSC / HD95 on held-out phantoms;
* (b) real MR: one labelled PROMISE12 case + the five unlabeled NCI-ISBI volumes, tested on the
  other PROMISE12 case, both directions;
* (c) does the uncertainty rank the failures? Spearman correlation between a case's mean
  uncertainty inside its predicted segment and its Dice, over the held-out phantoms of (a)
  (CRII's |P_c − P_r| and, for comparison, the normalised entropy of the same probabilities).

"Supervised-only" is the same method (CRII-small: 2.5D UNet2D backbone, coarse and refined heads,
supervised and ranked losses) with ``cons_weight 0`` and no unlabeled cases: the only difference
is the unlabeled half of each batch and the consistency term. CRII therefore runs twice as many
patches per iteration (its CPU time is reported). Both are evaluated with the trainer's
``validate`` rule (the method's predictor in the label box + 20 mm, the pipeline's
post-processing) on the last weights (there is no validation set to pick a best checkpoint).

Prints one JSON object per training run and per held-out case, then a summary; with ``--png`` it
writes an uncertainty map over a real MR (the (b) CRII model on the held-out PROMISE12 case and
on an NCI-ISBI volume). CPU, one thread per process; run with ``nice``::

    nice -n 10 python Testing/Benchmarks/bench_crii.py --png Resources/uncertainty_example.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Benchmarks"))

import real_data  # noqa: E402
from voxmetric import data, io, phantom  # noqa: E402
from voxmetric.data import PreparedCase  # noqa: E402
from voxmetric.methods import Runtime, get_method, normalised_entropy  # noqa: E402
from voxmetric.metrics import evaluate_masks  # noqa: E402
from voxmetric.postprocess import clean, labels_from_probs  # noqa: E402
from voxmetric.training import TrainConfig, _finite, _validation_region, train  # noqa: E402

METHOD = "CRII-small"


def say(obj: dict[str, Any]) -> None:
    """One strict JSON line (NaN → null)."""
    print(json.dumps(_finite(obj)), flush=True)


# ---- data ---------------------------------------------------------------------------------------
def prepared(image: Any, mask: Any | None, modality: str, case_id: str, spacing: float) -> PreparedCase:
    img, m = data._preprocess(image, modality, spacing, mask)
    if m is None:
        return PreparedCase(case_id, img, img.with_array(np.zeros(img.shape, np.uint8)), modality, ("Prostate",), False)
    return PreparedCase(case_id, img, m.with_array((m.array > 0).astype(np.uint8)), modality, ("Prostate",), True)


def ct_phantom(seed: int, labelled: bool, spacing: float) -> PreparedCase:
    c = phantom.make_case(seed, "ct")
    mask = c.labels.with_array((c.labels.array == phantom.LABELS["Prostate"]).astype(np.uint8)) if labelled else None
    return prepared(c.image, mask, "ct", f"ph{seed}", spacing)


def promise12(i: int, spacing: float) -> PreparedCase:
    image, label = (io.read_volume(f) for f in real_data.promise12(i))
    return prepared(image, label.with_array((label.array > 0).astype(np.uint8)), "mr", f"promise12-{i}", spacing)


def nci_unlabeled(spacing: float) -> list[PreparedCase]:
    return [prepared(io.read_volume(f), None, "mr", name, spacing) for name, f in real_data.ncisbi()]


# ---- runs ---------------------------------------------------------------------------------------
def run(tag: str, semi: bool, labelled: list[PreparedCase], unlabeled: list[PreparedCase], args: argparse.Namespace,
        iterations: int, seed: int, work: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Train CRII (``semi``) or its supervised-only twin; returns (method, cfg, net, record); the
    record's ``card`` is the model card's fields (for ``--save-model``)."""
    method = get_method(METHOD)
    over = {"patch": args.patch, "per_case": 200, "spacing_mm": args.spacing}
    cfg = method.make_config(over if semi else {**over, "cons_weight": 0.0})
    tcfg = TrainConfig(iterations=iterations, batch_size=args.batch, seed=seed, device="cpu", log_every=50,
                       checkpoint_every=iterations, val_every=iterations)
    t_cpu, t_wall = time.process_time(), time.monotonic()
    losses: list[float] = []
    res = train(method, cfg, tcfg, labelled, [], work / f"{tag}-{'crii' if semi else 'sup'}-s{seed}",
                emit=lambda e: losses.append(e["loss"]) if e.get("event") == "iteration" else None,
                unlabeled_cases=unlabeled if semi else [])
    net = method.build(cfg, 2)
    net.load_state_dict(res.state_dict)
    net.eval()
    rec = {"event": "run", "bench": tag, "arm": "CRII" if semi else "supervised-only", "seed": seed,
           "iterations": iterations, "batch_labelled": args.batch, "batch_unlabeled": args.batch if semi else 0,
           "labelled": [c.id for c in labelled], "unlabeled": len(unlabeled) if semi else 0,
           "cpu_s": round(time.process_time() - t_cpu, 1), "wall_s": round(time.monotonic() - t_wall, 1),
           "loss_first50": round(float(losses[0]), 4) if losses else None,
           "loss_last50": round(float(losses[-1]), 4) if losses else None, "load": [round(v, 2) for v in os.getloadavg()]}
    run.cards[id(net)] = res.card_fields  # type: ignore[attr-defined]
    return method, cfg, net, rec


run.cards = {}  # type: ignore[attr-defined]


def evaluate(method: Any, cfg: Any, net: Any, case: PreparedCase) -> dict[str, Any]:
    """The trainer's validation rule on one case + the mean uncertainty inside the prediction."""
    truth = np.asarray(case.mask.array)
    spacing = np.asarray(case.image.spacing_zyx, float)
    box = _validation_region(truth, spacing, "label_box", 20.0, method.context_mm(cfg))
    image = np.asarray(case.image.array, np.float32)[box]
    rt = Runtime(torch.device("cpu"), batch_size=16)
    probs = method.predict(net, cfg, image, rt)
    unc = method.uncertainty(net, cfg, image, rt, probs)
    pred = clean(labels_from_probs(probs)) > 0
    m = evaluate_masks(pred, truth[box] > 0, spacing)
    inside = pred if pred.any() else np.ones_like(pred)
    return {"id": case.id, "dsc": round(float(m["dsc"]), 4), "hd95": round(float(m["hd95"]), 2),
            "mean_unc": round(float(unc[inside].mean()), 4),
            "mean_entropy": round(float(normalised_entropy(probs)[inside].mean()), 4)}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    d = np.array([r["dsc"] for r in rows])
    h = np.array([r["hd95"] for r in rows], float)
    fin = h[np.isfinite(h)]
    return {"dsc_mean": round(float(d.mean()), 4), "dsc_median": round(float(np.median(d)), 4),
            "hd95_median": round(float(np.median(fin)), 2) if fin.size else None, "n": len(rows),
            "failed": int((~np.isfinite(h)).sum())}


def spearman(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    from scipy.stats import spearmanr

    r = spearmanr([x[key] for x in rows], [x["dsc"] for x in rows])
    return {"rho": round(float(r.statistic), 3), "p": round(float(r.pvalue), 4), "n": len(rows)}


# ---- the PNG ---------------------------------------------------------------------------------------
def png(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]) -> None:
    """One column per panel: the image slice, then the same slice with the uncertainty map over it;
    contours: prediction red, truth green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 9.0), squeeze=False)
    for col, (title, img, unc, pred, truth) in enumerate(panels):
        lo, hi = np.percentile(img, (1, 99))
        for row in range(2):
            ax = axes[row][col]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if row == 1:
                shown = ax.imshow(np.ma.masked_less(unc, 0.02), cmap="inferno", vmin=0, vmax=max(0.3, float(unc.max())),
                                  alpha=0.75, interpolation="nearest")
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="|P_c - P_r|")
            for m, colour in ((truth, "lime"), (pred, "red")):
                if m is not None and m.any():
                    ax.contour(m.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.0)
            ax.set_title(title if row == 0 else "uncertainty |P_c - P_r| over the image", fontsize=9)
            ax.axis("off")
    fig.suptitle("CRII-Net (CRII-small, 1 labelled PROMISE12 case + 5 unlabeled NCI-ISBI MR): red prediction, "
                 "green truth", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def slice_of(method: Any, cfg: Any, net: Any, case: PreparedCase, whole: bool) -> tuple[np.ndarray, ...]:
    """(image, uncertainty, prediction, truth) on the axial slice with the most truth (else predicted) voxels."""
    image = np.asarray(case.image.array, np.float32)
    truth = np.asarray(case.mask.array) > 0
    box = (slice(None),) * 3 if whole else _validation_region(truth, case.image.spacing_zyx, "label_box", 20.0,
                                                                 method.context_mm(cfg))
    rt = Runtime(torch.device("cpu"), batch_size=16)
    probs = method.predict(net, cfg, image[box], rt)
    unc = method.uncertainty(net, cfg, image[box], rt, probs)
    pred = clean(labels_from_probs(probs)) > 0
    ref = truth[box] if truth.any() else pred
    k = int(np.argmax(ref.sum((1, 2)))) if ref.any() else image[box].shape[0] // 2
    return image[box][k], unc[k], pred[k], truth[box][k]


# ---- main -------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/voxmetric-bench-crii")
    p.add_argument("--spacing", type=float, default=1.0)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=8, help="labelled items per iteration (CRII adds as many unlabeled)")
    p.add_argument("--iters-ct", type=int, default=1000)
    p.add_argument("--iters-mr", type=int, default=600)
    p.add_argument("--seeds", default="0,1", help="seeds of the CT runs (b uses the first)")
    p.add_argument("--heldout", type=int, default=10, help="held-out CT phantoms")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: a, b")
    p.add_argument("--png", help="write the uncertainty picture here (needs part b)")
    p.add_argument("--save-model", help="save the (b) CRII model trained on PROMISE12 case 0 as a package here "
                                        "(for `voxmetric segment --model`)")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    seeds = [int(s) for s in args.seeds.split(",")]
    out: dict[str, Any] = {"event": "summary", "method": METHOD, "spacing_mm": args.spacing, "patch": args.patch,
                           "batch_labelled": args.batch, "cpu": os.cpu_count(), "torch_threads": 1}
    t0 = time.process_time()
    if "a" not in skip:
        labelled = [ct_phantom(s, True, args.spacing) for s in (0, 1)]
        unlabeled = [ct_phantom(s, False, args.spacing) for s in range(100, 110)]
        held = [ct_phantom(s, True, args.spacing) for s in range(1000, 1000 + args.heldout)]
        part: dict[str, Any] = {}
        for seed in seeds:
            for semi in (True, False):
                method, cfg, net, rec = run("a", semi, labelled, unlabeled, args, args.iters_ct, seed, work)
                rows = [evaluate(method, cfg, net, c) for c in held]
                for r in rows:
                    say({"event": "case", "bench": "a", "arm": rec["arm"], "seed": seed, **r})
                rec.update(summary(rows), spearman_unc=spearman(rows, "mean_unc"),
                           spearman_entropy=spearman(rows, "mean_entropy"))
                say(rec)
                part.setdefault(rec["arm"], []).append(rec)
        out["a"] = part
    if "b" not in skip:
        cases = [promise12(0, args.spacing), promise12(1, args.spacing)]
        unlabeled = nci_unlabeled(args.spacing)
        part = {}
        keep: Any = None
        for train_i, test_i in ((0, 1), (1, 0)):
            for semi in (True, False):
                method, cfg, net, rec = run(f"b{train_i}to{test_i}", semi, [cases[train_i]], unlabeled, args,
                                            args.iters_mr, seeds[0], work)
                r = evaluate(method, cfg, net, cases[test_i])
                rec.update(test=r)
                say(rec)
                part.setdefault(rec["arm"], []).append(rec)
                if semi and train_i == 0:
                    keep = (method, cfg, net)
                    if args.save_model:
                        from voxmetric import models

                        card = {"name": "bench-crii-mr-promise12-0", **run.cards[id(net)],  # type: ignore[attr-defined]
                                "description": "CRII-small from bench_crii.py (b): 1 labelled PROMISE12 case + 5 "
                                               "unlabeled NCI-ISBI MR; a benchmark model, not for clinical use."}
                        out["model"] = str(models.save_package(args.save_model, card, net.state_dict(), overwrite=True))
        out["b"] = part
        if args.png and keep is not None:
            method, cfg, net = keep
            held = slice_of(method, cfg, net, cases[1], whole=False)
            nci = slice_of(method, cfg, net, unlabeled[0], whole=True)
            png(Path(args.png), [("PROMISE12 case 1 (held out; truth green)", *held),
                                 (f"NCI-ISBI {unlabeled[0].id} (unlabeled, seen in training)", nci[0], nci[1], nci[2],
                                  None)])
            out["png"] = args.png
    out["cpu_s_total"] = round(time.process_time() - t0, 1)
    out["load"] = [round(v, 2) for v in os.getloadavg()]
    say(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
