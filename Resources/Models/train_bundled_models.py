"""Reproduce the bundled research pipeline ``synth``: a stage-1 localizer and a MetricUNet-HCP
refiner trained only on domain-randomised synthetic images (``voxmetric.synth``, SynthSeg-style),
for CT and MR alike (modality ``any``). Research use only, not for clinical use.

    python Resources/Models/train_bundled_models.py [--work DIR] [--which localizer,refiner]
        [--loc-iterations 4000] [--ref-iterations 10000] [--threads 1] [--resume]
        [--init-from MODEL] [--lr 1e-3] [--fov-cut 0.0] [--gamma 0] [--clutter] [--average-from 0]
        [--batch 8] [--ref-base 16] [--ref-embed 64] [--device cpu] [--workers 0] [--jobs 1] [--models DIR]
        [--prepare-only] [--pseudo-label DIR ...] [--pseudo-repeat 20]

1. writes synthetic cases (``synth.write_synth_cases``, contrast ``mix``: CT-like in Hounsfield
   units, T2-MR-like and fully random contrasts in turn): 160 whole-pelvis scans (seeds 20000…),
   160 abdomen-pelvis scans (seeds 50000…) and 320 stage-2 crops around the prostate (seeds
   30000…); validation: 6 + 6 (+ 4 abdomen for the localizer) other synthetic seeds (40000…,
   41000…, 51000…) and 2 + 2 realistic CT / MR phantoms (``voxmetric.phantom``, seeds 2000…);
   held-out evaluations use none of these (``Testing/Benchmarks/eval_bundled_models.py``);
2. trains the ``Localizer`` (4 mm, 5-slice slabs, the paper's stage 1) on the pelvis and
   abdomen scans and half of the crops, and a ``MetricUNet-HCP`` refiner (1.5 mm, base width 16, 64-d embedding:
   the paper's network scaled down 4× in width for a CPU budget) on all of them, each case
   normalised as its modality says (CT: HU window; MR and random contrasts: percentiles);
   ``--init-from MODEL`` starts a further run (output folder ``run-<kind>-ft``) from a package's
   weights with a fresh optimiser; its card's recipe and wall time carry the package's before it;
   ``--fov-cut P``: that share of training patches sees a field of view cut up to the gland's
   middle (``sampling._cut_fov``: tight MR slabs, cropped scans, a scan ending at the gland);
3. keeps the checkpoint with the best validation Dice, stores float16 weights when that changes
   the validation Dice by at most 0.002 (else float32), and writes ``Resources/Models/<name>/``
   and the pipeline file ``synth.pipeline.json`` (``--models DIR``: there instead). The cards record
   the recipe, the data, the budget and the wall time; every figure in them is written by this script.

Self-training on unlabeled real scans (``--pseudo-label DIR``, repeatable; with ``--init-from``): the
packages in ``--models`` segment every image in DIR as ``voxmetric segment`` does; the scans it
reports as found (stage 1 found the organ, a plausible volume) join the training set of every model
of this run, labelled with that result, each ``--pseudo-repeat`` times (``pseudo_labelled``). The
labels and a further run's output folder (``run-<kind>-ft``) are written once per ``--work``: give
each further run a work folder of its own (its synthetic case folders may be links to another's).

On a GPU: ``--device cuda --workers 6 --jobs 15`` (loader processes and processes that write and
prepare the cases; neither changes the patches drawn) with ``--batch`` and the refiner's width
(``--ref-base``, ``--ref-embed``) as the machine allows; the card names the GPU and which device ran
which iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the engine of this checkout

SELF_TRAINED_USE = ("research model: trained on synthetic images (domain randomisation) and self-trained on "
                    "unlabeled real scans; not validated on patients; not for clinical use")
INTENDED_USE = ("research model: trained only on synthetic images (domain randomisation); not validated on "
                "patients; not for clinical use")
NAMES = {"localizer": "synth-localizer", "refiner": "synth-metricunet-hcp"}
METHODS = {"localizer": "Localizer", "refiner": "MetricUNet-HCP"}
CONFIGS = {"localizer": {"per_case": 100},
           "refiner": {"spacing_mm": 1.5, "base": 16, "embed_channels": 64, "per_case": 100}}


EVENTS: list[Path] = []  # the run's event log (appended across resumes)


def log(event: dict) -> None:
    if event.get("event") != "progress":
        line = json.dumps({k: v for k, v in event.items() if k != "cases"})
        print(line, flush=True)
        for path in EVENTS:
            with path.open("a") as f:
                f.write(line + "\n")


def schedule(events: Path, iterations: int) -> list[int]:
    """The iteration totals of every run of this output folder, in order (a resumed run that raised
    ``--*-iterations`` continues the poly schedule towards the new total)."""
    lines = events.read_text().splitlines() if events.exists() else []
    totals = [int(m.group(1)) for x in lines for m in [re.search(r"iterations changed from (\d+) to", x)] if m]
    return totals + [iterations]


def devices(events: Path, iterations: int) -> list[tuple[str, int, int]]:
    """(device, first, last iteration) of each part of the run in this output folder, from the
    trainer's start messages ("device cuda (NVIDIA H200)") and resumes ("at iteration N"); parts on
    the same device as the one before are merged."""
    parts: list[tuple[str, int]] = []
    start = 0
    for line in events.read_text().splitlines() if events.exists() else []:
        if m := re.search(r"resumed from .* at iteration (\d+)", line):
            start = int(m.group(1))
        elif m := re.search(r'"training .*; device (.+?), \d+ process', line):
            parts.append((m.group(1), start))
            start = 0
    merged = [p for i, p in enumerate(parts) if i == 0 or p[0] != parts[i - 1][0]]
    return [(d, a + 1, b) for (d, a), b in zip(merged, [a for _, a in merged[1:]] + [iterations])]


def training_hours(events: Path) -> float:
    """Training wall time over every run of this output folder, from the trainer's ``done`` events:
    the last one's ``seconds`` (which include the ``carried`` time of the checkpoint it resumed
    from) plus the earlier done events that this carry does not hold (runs by a trainer that kept no
    time in its checkpoints; their events have no ``carried``)."""
    lines = events.read_text().splitlines() if events.exists() else []
    done = [json.loads(x) for x in lines if '"event": "done"' in x]
    if not done:
        return 0.0
    total, carry = done[-1]["seconds"], done[-1].get("carried", 0.0)
    for event in reversed(done[:-1]):
        if event["seconds"] <= carry + 1e-6:
            carry -= event["seconds"]  # held in the later run's carry
        else:
            total += event["seconds"]
    return total / 3600


def synthetic(work: Path, name: str, n: int, seed: int, fov: str, clutter: bool = False, jobs: int = 1) -> list:
    from voxmetric.cases import load_cases
    from voxmetric.synth import write_synth_cases

    folder = work / (f"{name}-clutter" if clutter else name)
    if not (folder / "manifest.json").exists():
        write_synth_cases(folder, n, "mix", seed, fov, clutter=clutter, jobs=jobs, overwrite=True)
    return load_cases(folder / "manifest.json", "Prostate")


def realistic(work: Path) -> list:
    from voxmetric.cases import load_cases
    from voxmetric.phantom import write_cases

    out = []
    for modality in ("ct", "mr"):
        folder = work / f"phantom-{modality}"
        if not (folder / "manifest.json").exists():
            write_cases(folder, 2, modality=modality, seed=2000)
        out += load_cases(folder / "manifest.json", "Prostate")
    return out


def data(work: Path, clutter: bool = False, which: tuple[str, ...] = ("localizer", "refiner"),
         jobs: int = 1) -> dict[str, list]:
    """Training sets (``clutter``: the same seeds drawn with clutter) and validation sets (never
    cluttered) of the models in ``which`` (the abdomen scans only for the localizer); ``jobs``
    processes write them."""
    pelvis = synthetic(work, "synth-pelvis", 160, 20000, "pelvis", clutter, jobs)
    roi = synthetic(work, "synth-roi", 320, 30000, "roi", clutter, jobs)
    val = (synthetic(work, "synth-val-pelvis", 6, 40000, "pelvis", jobs=jobs)
           + synthetic(work, "synth-val-roi", 6, 41000, "roi", jobs=jobs))
    sets = {"refiner": pelvis + roi, "refiner-val": val + realistic(work)}
    if "localizer" in which:
        abdomen = synthetic(work, "synth-abdomen", 160, 50000, "abdomen", clutter, jobs)
        val_abdomen = synthetic(work, "synth-val-abdomen", 4, 51000, "abdomen", jobs=jobs)
        sets |= {"localizer": pelvis + abdomen + roi[:160], "localizer-val": val + val_abdomen + realistic(work)}
    return sets


def pseudo_labelled(work: Path, folders: list[Path], models: Path) -> list[dict]:
    """Self-training labels: every image in ``folders`` segmented by the pipeline of the packages in
    ``models`` (the bundled ones where it has none; both stages, :func:`voxmetric.pipeline.segment_file`),
    one entry per scan (id, image, label, found, verdict, volume in mL, stage-1 confidence). Written
    once per work folder (``pseudo-labels/pseudo.json``) so that a resumed run keeps its labels."""
    from voxmetric.cases import load_cases
    from voxmetric.files import write_json
    from voxmetric.models import load_stage
    from voxmetric.pipeline import Pipeline, segment_file

    out = work / "pseudo-labels"
    if (out / "pseudo.json").exists():
        return json.loads((out / "pseudo.json").read_text(encoding="utf-8"))
    localizer, refiner = (load_stage(next(p for p in (models / NAMES[k], HERE / NAMES[k]) if p.exists()))
                          for k in ("localizer", "refiner"))
    scans = []
    for case in (c for folder in folders for c in load_cases(folder, require_labels=False)):
        label = out / f"{case.id}.seg.nrrd"
        s = segment_file(lambda mod: Pipeline(localizer, refiner, mod), case.image, label, overwrite=True)
        volume = s["qc"]["classes"].get("Prostate", {}).get("volume_ml", 0.0)
        scans.append({"id": case.id, "image": str(case.image.resolve()), "label": str(label.resolve()),
                      "found": s["found"], "verdict": s["verdict"], "volume_ml": round(volume, 1),
                      "confidence": round(s["confidence"], 2)})
        log({"event": "log", "message": f"pseudo-label {case.id}: {s['verdict']}"
                                        f"{'' if s['found'] else ' (not found: not used)'}"})
    write_json(out / "pseudo.json", scans)
    return scans


def pseudo_cases(scans: list[dict], repeat: int) -> list:
    """The training cases of the found pseudo-labelled ``scans``, each ``repeat`` times."""
    from voxmetric.cases import CaseRecord

    return [CaseRecord(s["id"], Path(s["image"]), Path(s["label"]), "Prostate") for s in scans if s["found"]] * repeat


def train_one(kind: str, args: argparse.Namespace, sets: dict[str, list]) -> None:
    from voxmetric import models, training
    from voxmetric.data import prepare_cases
    from voxmetric.methods import get_method

    method = get_method(METHODS[kind])
    width = {"base": args.ref_base, "embed_channels": args.ref_embed} if kind == "refiner" else {}
    cfg = method.make_config(dict(CONFIGS[kind], fov_cut=args.fov_cut, gamma=args.gamma, **width))
    iterations = args.loc_iterations if kind == "localizer" else args.ref_iterations
    tcfg = training.TrainConfig(iterations=iterations, batch_size=args.batch, optimizer="adam", lr=args.lr,
                                weight_decay=1e-5, amp=False, val_every=max(1, iterations // 6), checkpoint_every=50,
                                log_every=10, seed=0, device=args.device, workers=args.workers, val_batch=8,
                                average_from=args.average_from)
    before, init = {}, None
    if args.init_from:
        init = models.initial_weights(args.init_from, method)
        before = init.card["training"]
    out = args.work / (f"run-{kind}-ft" if init else f"run-{kind}")
    resume = args.resume and (out / "checkpoints" / "last.safetensors").exists()
    out.mkdir(parents=True, exist_ok=True)
    EVENTS[:] = [out / "events.jsonl"]
    recipe = method.data_recipe(cfg)
    if args.jobs > 1 or args.prepare_only:  # fill the trainer's preparation cache with --jobs processes
        for what in (kind, f"{kind}-val"):
            prepare_cases(sets[what], recipe, out / "cache", jobs=args.jobs)
    if args.prepare_only:
        return
    result = training.train(method, cfg, tcfg, sets[kind], sets[f"{kind}-val"], out, emit=log, resume=resume,
                            init_state=init.state_dict if init else None)
    hours = training_hours(out / "events.jsonl") + float(before.get("wall_hours", 0.0))

    # float16 storage when the validation Dice barely changes
    state16 = {k: (v.half().float() if v.is_floating_point() else v) for k, v in result.state_dict.items()}
    net = method.build(cfg, 2)
    net.load_state_dict(state16)
    val_prep = prepare_cases(sets[f"{kind}-val"], recipe, out / "cache")
    device = training.resolve_device(args.device)
    v16 = training.validate(method, net.to(device), cfg, val_prep, recipe, device, tcfg, ("Prostate",))
    dsc32 = float(result.metrics.get("dsc", float("nan")))
    half = abs(v16["dsc"] - dsc32) <= 0.002
    runs = schedule(out / "events.jsonl", iterations)
    parts = devices(out / "events.jsonl", iterations)
    recipe_line = recipe_of(kind, args, runs, before.get("recipe"), [d for d, _, _ in parts])
    card = bundled_card(kind, result.card_fields, len(sets[kind]), len(sets[f"{kind}-val"]), recipe_line, args.threads,
                        hours, v16["dsc"], init.source if init else None, args.clutter, device,
                        "; ".join(f"{d}: iterations {a}–{b}" for d, a, b in parts), args.pseudo)
    models.save_package(args.models / NAMES[kind], card, result.state_dict, half=half, overwrite=True)
    log({"event": "log", "message": f"saved {args.models / NAMES[kind]} (validation DSC fp32 {dsc32:.4f}, fp16 "
                                    f"{v16['dsc']:.4f}, stored as {'float16' if half else 'float32'})"})


def recipe_of(kind: str, args: argparse.Namespace, runs: list[int], before: str | None = None,
              parts: list[str] | None = None) -> str:
    """The command line(s) that made a package: the first run, its resumed totals (``runs``) and,
    for a run started ``--init-from`` a package, that package's recipe (``before``) first (the
    further run names its threads when not 1);
    ``parts``: the device of each part (:func:`devices`; default ``--device``) — the first one's
    command names it, a resume on another device says so."""
    first, *later = [d.split(" ")[0] for d in parts or [args.device]]
    flag = "--loc-iterations" if kind == "localizer" else "--ref-iterations"
    settings = [("lr", args.lr, 1e-3), ("fov-cut", args.fov_cut, 0.0), ("gamma", args.gamma, 0.0),
                ("average-from", args.average_from, 0.0), ("batch", args.batch, 8)]
    if kind == "refiner":
        settings += [("ref-base", args.ref_base, 16), ("ref-embed", args.ref_embed, 64)]
    extra = "".join(f" --{flag} {value:g}" for flag, value, default in settings if value != default)
    extra += " --clutter" if args.clutter else ""
    if getattr(args, "pseudo", None):
        extra += "".join(f" --pseudo-label {d}" for d in args.pseudo["folders"]) + f" --pseudo-repeat {args.pseudo['repeat']}"
    extra += f" --device {first}" if first != "cpu" else ""
    head = (f"{before}, then --init-from {args.init_from} {flag} {runs[0]}"
            + (f" --threads {args.threads}" if args.threads != 1 else "") if before else
            f"python Resources/Models/train_bundled_models.py --which {kind} {flag} {runs[0]} --threads {args.threads}")
    return (head + extra + "".join(f", then --resume {flag} {n}" for n in runs[1:])
            + "".join(f", then --resume --device {d}" for d in later))


def bundled_card(kind: str, card_fields: dict, n_train: int, n_val: int, recipe: str, threads: int, hours: float,
                 dsc_float16: float, init_from: dict | None = None, clutter: bool = False, device=None,
                 parts: str = "", pseudo: dict | None = None) -> dict:
    """The card of a bundled model: the trainer's ``card_fields`` (method, config, data, training
    incl. time and final loss, validation) plus what this script knows (name, demo flag, intended
    use, description, generator, data, recipe, wall time over every resumed part, machine, float16
    validation Dice and, for a further run, the package it started from; ``clutter``: its training
    cases were drawn with clutter; ``device``: the torch device it trained on, named in ``machine`` when a
    GPU; ``parts``: the device of each part of a run that changed device, else the one device; ``pseudo``: the
    self-training scans (folders, repeat, scans: :func:`pseudo_labelled`), counted in ``n_train``). ``n_val`` counts the
    validation cases, 4 of them realistic phantoms. Nothing else: ``Testing/Python/test_demo_cards.py``
    checks that no field of a bundled card is written by hand."""
    import torch

    card = dict(card_fields)
    used = [s for s in pseudo["scans"] if s["found"]] if pseudo else []
    n_real = len(used) * pseudo["repeat"] if pseudo else 0
    real = (f" + {len(used)} real scans pseudo-labelled by the pipeline it started from (each ×{pseudo['repeat']})"
            if pseudo and used else "")
    card.update(
        name=NAMES[kind], demo=True,
        intended_use=SELF_TRAINED_USE if real else INTENDED_USE,
        description=(f"{METHODS[kind]} {kind} trained {'' if real else 'only '}on domain-randomised synthetic images "
                     "(CT-like, T2-MR-like and random contrasts)"
                     + (f" and self-trained on {len(used)} unlabeled real scans labelled by its own pipeline" if real
                        else "") + ", for CT and MR. Research model, not for clinical use."),
    )
    training: dict = dict(
        card.get("training", {}), generator=f"voxmetric.synth (contrast mix{', clutter' if clutter else ''})",
        data=f"{n_train - n_real} synthetic cases{' with clutter' if clutter else ''}{real}; validation: {n_val - 4} "
             "synthetic + 2 CT and 2 MR phantoms",
        recipe=recipe,
        wall_hours=round(hours, 2),
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {threads} thread(s)"
                + (f", {torch.cuda.get_device_name(device)}" if device is not None and device.type == "cuda" else ""),
        devices=parts or (str(device) if device is not None else "cpu"))
    if init_from:  # the package a further run started from (models.initial_weights' source)
        training["init_from"] = init_from
    if pseudo:
        training["pseudo_labels"] = pseudo
    card["training"] = training
    card["validation"] = dict(card.get("validation", {}), dsc_float16=dsc_float16)
    return card


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "voxmetric-bundled-train")
    p.add_argument("--which", default="localizer,refiner")
    p.add_argument("--loc-iterations", type=int, default=4000)
    p.add_argument("--ref-iterations", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init-from", metavar="MODEL", help="start from this package's weights (a further run)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--fov-cut", type=float, default=0.0, help="share of patches with a cut field of view")
    p.add_argument("--gamma", type=float, default=0.0, help="per-patch gamma curve, ln γ uniform in ±GAMMA")
    p.add_argument("--clutter", action="store_true", help="train on the cases drawn with clutter (synth-*-clutter)")
    p.add_argument("--average-from", type=float, default=0.0, help="keep the mean weights from this fraction on (SWA)")
    p.add_argument("--batch", type=int, default=8, help="training patches per iteration")
    p.add_argument("--ref-base", type=int, default=16, help="refiner encoder base width (the paper: 32)")
    p.add_argument("--ref-embed", type=int, default=64, help="refiner embedding width (the paper: 256)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=0, help="loader processes (the patches drawn do not change)")
    p.add_argument("--jobs", type=int, default=1, help="processes that write and prepare the synthetic cases")
    p.add_argument("--models", type=Path, default=HERE, help="where the packages go (default: beside this script)")
    p.add_argument("--prepare-only", action="store_true",
                   help="write and prepare the cases of --which, train nothing (several runs on one data set)")
    p.add_argument("--pseudo-label", type=Path, action="append", default=[], metavar="DIR",
                   help="unlabeled real scans to self-train on (with --init-from; repeatable)")
    p.add_argument("--pseudo-repeat", type=int, default=20, help="times each pseudo-labelled scan is in the training set")
    args = p.parse_args()
    if args.pseudo_label and not args.init_from:
        p.error("--pseudo-label needs --init-from: the labels come from the pipeline a run starts from")
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    which = tuple(k.strip() for k in args.which.split(","))
    sets = data(args.work, args.clutter, which, args.jobs)
    args.pseudo = None
    if args.pseudo_label:
        scans = pseudo_labelled(args.work, args.pseudo_label, args.models)
        for kind in which:
            sets[kind] = sets[kind] + pseudo_cases(scans, args.pseudo_repeat)
        args.pseudo = {"folders": [str(d) for d in args.pseudo_label], "repeat": args.pseudo_repeat,
                       "scans": [{k: v for k, v in s.items() if k not in ("image", "label")} for s in scans]}
    for kind in which:
        train_one(kind, args, sets)
    if all((args.models / n / "model.json").exists() for n in NAMES.values()):
        from voxmetric.files import write_json

        write_json(args.models / "synth.pipeline.json",
                   {"name": "synth", "localizer": NAMES["localizer"], "refiner": NAMES["refiner"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
