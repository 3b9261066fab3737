"""Accuracy of a two-stage pipeline on scans it was not trained on; prints JSON lines and writes a
picture of the real scans.

    python Testing/Benchmarks/eval_bundled_models.py [--pipeline NAME | --localizer PKG --refiner PKG]
        [--sets a,b,promise12,real] [--work DIR] [--png Resources/real_scans.png] [--planes axial,coronal,sagittal]
        [--tag TAG] [--candidates N]

Sets (none is used to train or validate the bundled models, see Resources/Models/train_bundled_models.py):

* ``a``: realistic phantoms of ``voxmetric.phantom`` — CT seeds 5000–5009 and MR seeds 5100–5109;
* ``b``: the independent second family (``Testing/Benchmarks/phantoms_b.py``) — 8 CT and 8 MR, seeds 100–107;
* ``promise12``: the two real T2 MR cases with human labels in ``../shared/data/promise12_demo``
  (their true spacing is unknown; the files say 1 mm, so HD95 is only relative);
* ``real``: the unlabeled real pelvic CT and the five NCI-ISBI T2 MR — no Dice; the picture shows
  one axial slice through each result (red) or, when nothing was found, through the scan's middle.

Per case: DSC, HD95 (mm), predicted and true volume (mL), found, the QC verdict (OK / CHECK) and
its codes, timings; per set: mean, median, min, the number of empty results and how often the QC
said CHECK for poor results (DSC < 0.5; every time is the aim) and for good ones (DSC ≥ 0.7).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Benchmarks"))
from real_data import PELVIS_CT, SHARED, ncisbi, promise12, promise12_cases  # noqa: E402


def emit(d: dict) -> None:
    print(json.dumps(d), flush=True)


def labelled_sets(args) -> dict[str, list[tuple[str, object, object, str]]]:
    """{set: [(case id, image Volume, prostate mask array | None, modality)]} loaded lazily."""
    from voxmetric import io
    from voxmetric.phantom import LABELS, make_case

    sets: dict[str, list] = {}
    if "a" in args.sets:
        rows = []
        for modality, first in (("ct", 5000), ("mr", 5100)):
            for seed in range(first, first + args.count):
                c = make_case(seed, modality)
                rows.append((f"a-{modality}-{seed}", c.image, c.labels.array == LABELS["Prostate"], modality))
        sets["a"] = rows
    if "b" in args.sets:
        import phantoms_b

        rows = []
        for modality in ("ct", "mr"):
            for seed in range(100, 100 + min(args.count, 8)):
                c = phantoms_b.make_case_b(seed, modality)
                rows.append((f"b-{modality}-{seed}", c.image, c.labels.array == LABELS["Prostate"], modality))
        sets["b"] = rows
    if "promise12" in args.sets and promise12_cases():
        sets["promise12"] = [(f"promise12-case{i}", io.read_volume(promise12(i)[0]),
                              io.read_segment_mask(promise12(i)[1]).array > 0, "mr") for i in promise12_cases()]
    if "real" in args.sets and SHARED.is_dir():
        rows = [("pelvis-ct", io.read_volume(PELVIS_CT), None, "ct")]
        sets["real"] = rows + [(name, io.read_volume(f), None, "mr") for name, f in ncisbi()]
    return sets


def pipelines(args):
    from voxmetric import models
    from voxmetric.pipeline import Pipeline, PipelineConfig

    config = PipelineConfig(candidates=args.candidates)
    if args.localizer and args.refiner:
        stages = [models.load_stage(path) for path in (args.localizer, args.refiner)]
        return lambda modality: Pipeline(stages[0], stages[1], modality, config, device="cpu")
    cache: dict = {}

    def get(modality: str):
        if modality not in cache:
            cache[modality] = models.load_pipeline(args.pipeline, modality, "cpu", config)
        return cache[modality]

    return get


def qc_counts(rows: list[dict]) -> dict[str, str]:
    """How often the QC verdict is CHECK among poor results (DSC < 0.5: it should be every time)
    and among good ones (DSC ≥ 0.7: false alarms), as "flagged/all"."""
    poor = [r for r in rows if r["dsc"] < 0.5]
    good = [r for r in rows if r["dsc"] >= 0.7]
    return {"check_if_dsc_below_0.5": f"{sum(r['verdict'] == 'CHECK' for r in poor)}/{len(poor)}",
            "check_if_dsc_0.7_or_more": f"{sum(r['verdict'] == 'CHECK' for r in good)}/{len(good)}"}


def slice_png(results: list[tuple[str, object, np.ndarray, object]], path: Path, title: str,
              planes: tuple[str, ...] = ("axial",)) -> None:
    """Per scan, a slice in each of ``planes`` (axial, coronal, sagittal; several: one row per scan)
    through the result's centroid, else the middle; red contour. Superior is up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from voxmetric.pipeline import oriented

    n = len(results) * len(planes)
    cols = len(planes) if len(planes) > 1 else min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, ((name, vol, mask, qc), plane) in zip(axes.ravel(), [(r, p) for r in results for p in planes]):
        img = oriented(vol)  # (z, y, x) along +S, +P, +L
        m = oriented(vol.with_array(mask.astype(np.uint8))).array > 0
        axis = ("axial", "coronal", "sagittal").index(plane)
        k = int(np.argwhere(m).mean(0)[axis]) if m.any() else img.shape[axis] // 2
        a, mk = np.take(img.array, k, axis).astype(np.float32), np.take(m, k, axis)
        sp = img.spacing  # x, y, z
        aspect, origin = {"axial": (sp[1] / sp[0], "upper"), "coronal": (sp[2] / sp[0], "lower"),
                          "sagittal": (sp[2] / sp[1], "lower")}[plane]
        lo, hi = ((-200, 250) if float(np.percentile(img.array, 1)) < -500 else np.percentile(img.array, (1, 99)))
        ax.imshow(a, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, origin=origin)
        if mk.any():
            ax.contour(mk.astype(np.float32), levels=[0.5], colors="red", linewidths=1.0)
        ml = float(m.sum() * np.prod(vol.spacing) / 1000)
        where = "" if len(planes) == 1 else ", " + plane
        ax.set_title(f"{name}{where}\n{ml:.0f} mL{'' if m.any() else ' (nothing found)'}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from io import BytesIO

    from PIL import Image  # matplotlib's own dependency

    buf = BytesIO()
    fig.savefig(buf, dpi=80)
    plt.close(fig)
    # grey scans and red contours: a 128-colour palette keeps the picture and halves the file
    Image.open(buf).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", help="pipeline or refiner name (default: the default pipeline per modality)")
    p.add_argument("--localizer", help="localizer package path (with --refiner: evaluate these two)")
    p.add_argument("--refiner", help="refiner package path")
    p.add_argument("--sets", default="a,b,promise12,real")
    p.add_argument("--count", type=int, default=10, help="phantoms per modality in sets a (and ≤ 8 in b)")
    p.add_argument("--png", type=Path, help="picture of the real scans' results")
    p.add_argument("--planes", default="axial", help="planes of that picture, e.g. axial,coronal,sagittal")
    p.add_argument("--candidates", type=int, default=3,
                   help="stage-1 regions stage 2 may try (segment --candidates; 1: the most confident only)")
    p.add_argument("--tag", default="")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    args.sets = args.sets.split(",")  # "real" must not select set "a"
    import torch

    from voxmetric.metrics import evaluate_masks

    if args.threads:
        torch.set_num_threads(args.threads)
    get = pipelines(args)
    pictures = []
    for set_name, cases in labelled_sets(args).items():
        rows = []
        for cid, vol, truth, modality in cases:
            pipe = get(modality)
            res = pipe.segment(vol)
            pred = res.mask.array == 1 + res.classes.index("Prostate") if res.mask is not None else np.zeros(vol.shape, bool)
            ml = float(pred.sum() * np.prod(vol.spacing) / 1000)
            report = res.qc(modality)
            row = {"set": set_name, "case": cid, "modality": modality, "found": res.found, "pred_ml": round(ml, 1),
                   "verdict": report.verdict, "codes": report.codes,
                   "models": [pipe.localizer.name if pipe.localizer else None, pipe.refiner.name],
                   "seconds": round(res.timings.get("total", 0.0), 2), "tag": args.tag}
            if truth is not None:
                m = evaluate_masks(pred, truth, vol.spacing_zyx)
                row.update(dsc=round(m["dsc"], 4), hd95=round(m["hd95"], 2), true_ml=round(m["vol_ref_ml"], 1))
            else:
                pictures.append((cid, vol, pred, None))
            rows.append(row)
            emit(row)
        scored = [r for r in rows if "dsc" in r]
        if scored:
            for modality in sorted({r["modality"] for r in scored}):
                sel = [r for r in scored if r["modality"] == modality]
                dsc = [r["dsc"] for r in sel]
                hd = [r["hd95"] for r in sel if np.isfinite(r["hd95"])]
                emit({"summary": set_name, "modality": modality, "tag": args.tag, "cases": len(sel),
                      "dsc_mean": round(statistics.mean(dsc), 3), "dsc_median": round(statistics.median(dsc), 3),
                      "dsc_min": round(min(dsc), 3), "hd95_median": round(statistics.median(hd), 1) if hd else None,
                      "empty": sum(r["pred_ml"] == 0 for r in sel), **qc_counts(sel)})
    if args.png and pictures:
        slice_png(pictures, args.png, f"real scans, no labels: prostate found by {args.tag or 'the pipeline'} (red)",
                  tuple(args.planes.split(",")))
        emit({"png": str(args.png)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
