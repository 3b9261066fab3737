"""The ``voxmetric`` command. Each sub-command is a thin wrapper over an engine function.

Every way out of it says, in one line on stderr, what went wrong and what to do, and under
``--events-jsonl`` also prints an ``error`` event (message, type, exit code); a traceback only
with ``--debug`` (or ``VOXMETRIC_DEBUG=1``). Exit codes: 0 done; 2 a problem the user can fix
(a :class:`VoxMetricError`: bad input, settings, model, device, an output that exists; an
``OSError``: a missing file, permission, a full disk; a bad flag); 1 an internal error (a bug:
report it with the ``--debug`` traceback); 130 / 143 interrupted (Ctrl+C) / terminated (SIGTERM),
after the file being written was discarded."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import cli_dicom
from .errors import VoxMetricError

if TYPE_CHECKING:
    from pathlib import Path

    from .pipeline import Pipeline

Handler = Callable[[argparse.Namespace], int]


# ---- phantom -------------------------------------------------------------------------------
def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write synthetic pelvic CT/MR cases with labels")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cases", type=int, default=4, help="number of cases (default 4)")
    p.add_argument("--modality", choices=["ct", "mr"], default=None,
                   help="realistic phantom's modality (default ct); with --generator synth, same as --contrast")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed+i")
    p.add_argument("--generator", choices=["phantom", "synth"], default="phantom",
                   help="phantom: realistic CT/MR phantoms (tests, demo); synth: domain-randomised training "
                        "data (SynthSeg-style: random shapes, contrasts, resolutions, noise)")
    p.add_argument("--contrast", choices=["ct", "mr", "random", "mix"], default=None,
                   help="synth only: CT-like (HU), T2-MR-like, fully random per tissue, or a per-seed mix (default)")
    from .synth_fov import FOV_HELP, FOVS

    p.add_argument("--fov", choices=list(FOVS), default="pelvis",
                   help="synth only: " + "; ".join(f"{k}: {v}" for k, v in FOV_HELP.items()))
    p.add_argument("--clutter", action="store_true",
                   help="synth only: sub-regions and thin sheets in fat and muscle, as real anatomy has")
    p.add_argument("--overwrite", action="store_true", help="replace existing caseNNN files and manifest.json in --out")
    p.add_argument("--jobs", type=int, default=1, help="processes that make the cases (the same files; default 1)")
    p.set_defaults(func=_run_phantom)


def _run_phantom(a: argparse.Namespace) -> int:
    from .errors import ConfigError

    if a.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {a.jobs}.")
    if a.generator == "synth":
        from .synth import write_synth_cases

        write_synth_cases(a.out, a.cases, contrast=a.contrast or a.modality or "mix", seed=a.seed, fov=a.fov,
                          progress=_progress_printer(), overwrite=a.overwrite, clutter=a.clutter, jobs=a.jobs)
        return 0
    from .phantom import write_cases

    if a.contrast is not None or a.fov != "pelvis" or a.clutter:
        raise ConfigError("--contrast, --fov and --clutter choose what the synth generator draws; add --generator synth, "
                          "or use --modality ct|mr with the realistic phantom.")
    write_cases(a.out, a.cases, modality=a.modality or "ct", seed=a.seed, progress=_progress_printer(),
                overwrite=a.overwrite, jobs=a.jobs)
    return 0


# ---- models --------------------------------------------------------------------------------
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, show, install or remove model packages")
    msub = p.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="table of bundled and installed models (and pipelines)")
    s = msub.add_parser("show", help="print a model's card and verify its weights' SHA-256")
    s.add_argument("name", help="model name or package path")
    i = msub.add_parser("install", help="verify a package (folder or .zip) and copy it into the models folder")
    i.add_argument("path", help="package folder or .zip")
    i.add_argument("--name", help="install under this name instead of the card's")
    e = msub.add_parser("export-onnx", help="store the verified ONNX graph of a model in its package (fast CPU "
                                            "inference without torch)")
    e.add_argument("name", help="model name or package path")
    r = msub.add_parser("remove", help="delete an installed (not bundled) model")
    r.add_argument("name")
    p.set_defaults(func=_run_models)


def _run_models(a: argparse.Namespace) -> int:
    import json

    from . import models

    if a.action == "list":
        infos = models.list_models()
        print(f"installed models: {models.models_dir()}   bundled models: {models.bundled_models_dir()}")
        if not infos:
            print("no models found; install one with `voxmetric models install PATH`")
        rows = [("NAME", "ROLE", "MODALITY", "METHOD", "FLAGS")] + [
            (m.name, m.role, m.modality, m.method, ",".join(f for f, on in (("bundled", m.bundled), ("demo", m.demo)) if on))
            for m in infos
        ]
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        for r in rows if infos else []:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
        for pl in models.list_pipelines():
            print(f"pipeline {pl.name}: {pl.localizer} -> {pl.refiner}")
    elif a.action == "show":
        info = models.find_model(a.name)
        card, _ = models.read_verified(info.path)
        print(f"{card['name']}  ({'bundled' if info.bundled else 'installed'}: {info.path})")
        for key in ("method", "role", "modality", "demo", "intended_use", "description", "engine_version", "created"):
            if key in card:
                print(f"  {key + ':':<16}{card[key]}")
        print(f"  {'weights:':<16}{card['weights_bytes']} bytes {card.get('weights_dtype', 'float32')}, "
              f"SHA-256 {card['weights_sha256']} (verified)")
        for key in ("config", "data", "training", "validation", "onnx"):
            if key in card:
                print(f"  {key + ':':<16}{json.dumps(card[key], sort_keys=True)}")
    elif a.action == "export-onnx":
        info = models.find_model(a.name)
        path = models.add_onnx(info.path)
        block = models.read_card(path)["onnx"]
        print(f"stored {path / block['file'] if path.is_dir() else path} ({block['bytes']} bytes, SHA-256 "
              f"{block['sha256'][:16]}..., verified against torch: max relative difference {block['max_rel_diff']:g})")
    elif a.action == "install":
        info = models.install(a.path, name=a.name)
        print(f"installed {info.name} ({info.role}, {info.modality}, {info.method}) at {info.path}")
    else:
        path = models.remove(a.name)
        print(f"removed {a.name} ({path})")
    return 0


# ---- train ---------------------------------------------------------------------------------
_TRAIN_ARGS = ("method", "cases", "segment", "out", "work_dir", "name", "overwrite", "device", "iterations",
               "batch_size", "lr", "optimizer", "momentum", "weight_decay", "val_cases", "val_fraction",
               "val_every", "checkpoint_every", "seed", "workers", "no_amp", "resume", "events_jsonl", "init_from",
               "freeze_encoder", "unlabeled", "average_from")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .methods import available_methods, config_fields, method_classes

    p = sub.add_parser(
        "train", help="train a method on labelled cases and write a model package",
        description="Train a method (e.g. MetricUNet-HCP) on labelled cases; the result is a model package "
                    "(model.json + weights.safetensors). Under torchrun every process trains one data shard (DDP).")
    p.add_argument("--method", required=True, help="one of: " + ", ".join(available_methods()))
    p.add_argument("--cases", required=True, help="folder of image + label pairs, or a manifest.json")
    p.add_argument("--unlabeled", metavar="DIR",
                   help="folder or manifest.json of images WITHOUT labels for semi-supervised methods (e.g. CRII): "
                        "same modality as --cases; their training patches come from the whole body-cropped image")
    p.add_argument("--segment", help="segment(s) to learn, comma-separated for a multi-class model, e.g. Prostate or "
                                     "Prostate,Bladder,Rectum (default: the manifest's, or the only one)")
    p.add_argument("--out", required=True, help="model package folder to write")
    p.add_argument("--work-dir", help="checkpoints and cache (default: OUT.work)")
    p.add_argument("--name", help="model name in the card (default: the --out folder name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package at --out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--iterations", type=int, default=10000, help="training iterations (default 10000)")
    p.add_argument("--batch-size", type=int, help="items per iteration and process (default: the method's, "
                                                   "30 for 2.5D slabs)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="default: the method's (sgd for MetricUNet)")
    p.add_argument("--lr", type=float, help="learning rate (default: the method's, else 0.01 for sgd, 0.001 for adam), "
                                            "poly decay")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--weight-decay", type=float, help="default: the method's, else 1e-4")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-cases", type=int, help="number of held-out validation cases (0 = none)")
    val.add_argument("--val-fraction", type=float, help="fraction of cases held out (default 0.1, at least one)")
    p.add_argument("--val-every", type=int, default=500, help="validate every N iterations (default 500)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every N iterations (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--init-from", metavar="MODEL", help="fine-tune: start from this model's weights (a name from "
                   "`voxmetric models list` or a package path); its method settings are the defaults")
    p.add_argument("--freeze-encoder", action="store_true", help="with --init-from: train the decoder and heads only")
    p.add_argument("--average-from", type=float, default=0.0, metavar="F",
                   help="keep the mean of the weights over the last (1 - F) of the run instead of the best validated "
                        "ones (stochastic weight averaging; e.g. 0.5: the second half; default 0: off)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the last checkpoint in --work-dir")
    p.add_argument("--events-jsonl", action="store_true", help="print JSON-line events on stdout, no progress bar")
    g = p.add_argument_group("method settings (fields of the method's config; default: the method's preset)")
    seen: set[str] = set(_TRAIN_ARGS)
    for cls in method_classes():
        for spec in config_fields(cls.config_cls):
            if spec.name in seen:
                continue
            seen.add(spec.name)
            flag = "--" + spec.name.replace("_", "-")
            text = spec.help.replace("%", "%%")  # argparse formats help strings with %
            if spec.type is bool:
                g.add_argument(flag, dest=f"m_{spec.name}", nargs="?", const="true", metavar="true|false", help=text)
            else:
                g.add_argument(flag, dest=f"m_{spec.name}", metavar=spec.name.upper(), help=text)
    p.set_defaults(func=_run_train)


def _train_printer(emit_json: bool) -> Callable[[dict], None]:
    """Events → JSON lines on stdout, or a progress bar and short messages on stderr."""
    if emit_json:
        from .training import print_json

        return print_json
    bar = _progress_printer()

    def show(e: dict) -> None:
        kind = e.get("event")
        if kind == "iteration":
            bar(e["iteration"], e["total"], f"loss {e['loss']:.4f} lr {e['lr']:.2e}")
        elif kind == "progress":
            bar(e["done"], e["total"], str(e.get("message", "")))
        elif kind == "validation":
            f = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"  # noqa: E731
            sys.stderr.write(f"\nvalidation @ {e['iteration']}: DSC {f(e['dsc'])}  HD95 {f(e['hd95'])} mm  "
                             f"ASD {f(e['asd'])} mm{'  (best)' if e.get('best') else ''}\n")
        elif kind in ("log", "done"):
            sys.stderr.write(f"{e.get('message') or kind}\n" if kind == "log" else
                             f"done: {e['iteration']} iterations in {e['seconds']:.0f} s, model at {e.get('package')}\n")

    return show


def train_config(method: Any, a: argparse.Namespace) -> Any:
    """The TrainConfig of ``a``: flags the user gave, else the method's ``train_defaults``, else the
    trainer's defaults (the learning rate follows the optimiser: 0.01 SGD, 0.001 Adam)."""
    from .training import TrainConfig

    d = method.train_defaults
    pick = {k: getattr(a, k) if getattr(a, k) is not None else d.get(k) for k in
            ("batch_size", "optimizer", "lr", "momentum", "weight_decay")}
    pick["optimizer"] = pick["optimizer"] or "sgd"
    if pick["lr"] is None:
        pick["lr"] = 0.01 if pick["optimizer"] == "sgd" else 1e-3
    given = {k: v for k, v in pick.items() if v is not None}
    if a.freeze_encoder and not a.init_from:
        from .errors import ConfigError

        raise ConfigError("--freeze-encoder keeps pretrained weights fixed; give the model to start from "
                          "(--init-from MODEL).")
    return TrainConfig(iterations=a.iterations, amp=not a.no_amp, val_every=a.val_every,
                       checkpoint_every=a.checkpoint_every, seed=a.seed, device=a.device, workers=a.workers,
                       freeze_encoder=a.freeze_encoder, average_from=a.average_from, **given)


def _run_train(a: argparse.Namespace) -> int:
    import os
    import re
    from pathlib import Path

    from . import models
    from .cases import load_cases, load_unlabeled, validate_cases, validate_unlabeled
    from .errors import ConfigError
    from .methods import config_fields, get_method
    from .training import resolve_device, split_cases, train

    method = get_method(a.method)
    own = {s.name for s in config_fields(method.config_cls)}
    given = {k[2:]: v for k, v in vars(a).items() if k.startswith("m_") and v is not None}
    alien = sorted(set(given) - own)
    if alien:
        raise ConfigError(f"--{alien[0].replace('_', '-')} is not a setting of {method.name}; its settings are: "
                          + ", ".join("--" + n.replace("_", "-") for n in sorted(own)) + ".")
    init = None
    if a.init_from:
        init = models.initial_weights(a.init_from, method)
        mcfg = method.make_config(given, base=init.config)
    else:
        mcfg = method.make_config(given)
    tcfg = train_config(method, a)
    resolve_device(a.device)
    out = Path(a.out)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if out.exists() and not a.overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite to replace it.")
    name = a.name or re.sub(r"[^A-Za-z0-9._+-]", "-", out.name.removesuffix(".zip")).lstrip("._+-")[:64] or "model"
    if a.unlabeled and not method.uses_unlabeled:
        raise ConfigError(f"{method.name} learns from labelled cases only; drop --unlabeled or pick a semi-supervised "
                          "method (e.g. CRII).")
    records = load_cases(a.cases, a.segment)
    validate_cases(records)
    unlabeled = load_unlabeled(a.unlabeled) if a.unlabeled else []
    validate_unlabeled(unlabeled, records)
    train_cases, val_cases = split_cases(records, a.val_cases, a.val_fraction, seed=a.seed)
    emit = _train_printer(a.events_jsonl)
    held: list[dict] = []

    def relay(e: dict) -> None:  # hold "done" back until the package is written
        (held.append if e.get("event") == "done" else emit)(e)

    work = Path(a.work_dir) if a.work_dir else out.with_name(out.name + ".work")
    result = train(method, mcfg, tcfg, train_cases, val_cases, work, emit=relay, resume=a.resume,
                   init_state=init.state_dict if init else None, unlabeled_cases=unlabeled)
    if rank0:
        if init is not None:
            result.card_fields["training"]["init_from"] = init.source
        card = {"name": name, **result.card_fields,
                "description": f"{method.name}: {method.description}; trained with `voxmetric train`."}
        path = models.save_package(out, card, result.state_dict, overwrite=a.overwrite)
        for e in held:
            emit({**e, "package": str(path)})
    return 0


# ---- evaluate ------------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="DSC, PPV, SEN, ASD, HD, HD95 (mm) of predicted labels against references")
    p.add_argument("--pred", required=True, help="predicted label file or folder (cases matched by file name)")
    p.add_argument("--ref", required=True, help="reference label file or folder (or a folder with manifest.json)")
    p.add_argument("--segment", help="segment name in both (default: the only / first non-empty segment)")
    p.add_argument("--images", help="reference image file or folder: read both labels onto the image grid")
    p.add_argument("--hd95", choices=["directed", "pooled"], default="directed",
                   help="HD95 definition: max of the two directed 95th percentiles (default) or pooled")
    p.add_argument("--out", help="folder for metrics.csv and metrics.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing metrics.csv / metrics.json in --out")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(a: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    from .files import check_free
    from .metrics import evaluate_files, format_table, summarize, write_report

    if a.out:  # refuse before any work
        for name in ("metrics.csv", "metrics.json"):
            check_free(Path(a.out) / name, a.overwrite)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = evaluate_files(a.pred, a.ref, a.segment, reference_images=a.images, hd95_definition=a.hd95)
    for w in caught:
        sys.stderr.write(f"warning: {w.message}\n")
    summary = summarize(rows)
    print(format_table(rows, summary))
    if a.out:
        meta = {"pred": a.pred, "ref": a.ref, "segment": a.segment, "images": a.images}
        csv_path, json_path = write_report(a.out, rows, summary, meta=meta, hd95_definition=a.hd95,
                                           overwrite=a.overwrite)
        print(f"wrote {csv_path} and {json_path}")
    return 0


# ---- segment / demo ------------------------------------------------------------------------
def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="two-stage prostate segmentation of an image (or a folder of images)",
                       description="Two-stage prostate segmentation. Every run ends with a quality-control verdict "
                                   "line, 'result: OK — …' or 'result: CHECK — reasons' (empty mask, implausible "
                                   "volume, several pieces, cut off by the ROI or the scan, high uncertainty), also "
                                   "in the timings JSON ('qc') and the done event. A run that completed exits 0 "
                                   "even with a CHECK verdict; errors exit 2.")
    p.add_argument("input", help="image file (.nrrd, .nii.gz, .mha, DICOM folder) or a folder of images")
    p.add_argument("-o", "--output", required=True, help="output .seg.nrrd (a folder when INPUT is a folder)")
    p.add_argument("--model", help="pipeline or refiner model name (default: the first for the modality)")
    p.add_argument("--roi-file", help="ROI .mrk.json to refine in (skips localisation)")
    p.add_argument("--roi-out", help="where to write the ROI .mrk.json (default: beside the output)")
    p.add_argument("--stage", choices=["all", "localize", "refine"], default="all")
    p.add_argument("--roi-rule", choices=["extent", "fixed"], default="extent",
                   help="extent: coarse mask extent + 15 mm (60–128 mm); fixed: 128 mm cube on the centroid")
    p.add_argument("--candidates", type=int, default=3, metavar="N",
                   help="stage-1 regions stage 2 may try, most confident first: when the prostate refined in one is "
                        "empty or of implausible volume, the next is refined (default 3; 1: the most confident only)")
    p.add_argument("--modality", choices=["auto", "ct", "mr"], default="auto")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto: a model's verified ONNX graph on ONNX Runtime on the CPU when its package has one "
                        "(no torch import), else torch; onnx: require the graph; torch: always torch")
    p.add_argument("--no-postprocess", action="store_true", help="keep every component, do not fill holes")
    p.add_argument("--events-jsonl", action="store_true", help="print JSON-line events instead of a progress bar")
    p.add_argument("--uncertainty-out", metavar="FILE",
                   help="also write the refiner's uncertainty map (float32 in [0, 1] on the input's grid, 0 outside "
                        "the ROI; e.g. X_uncertainty.nrrd): the method's own (CRII: |P_c - P_r|) or the normalised "
                        "entropy of the class probabilities. Not for a folder INPUT.")
    d = p.add_argument_group("DICOM (INPUT a DICOM folder; see `voxmetric series DIR`)")
    d.add_argument("--series", metavar="UID|INDEX", help="which series of the folder (default: chosen by the rules)")
    d.add_argument("--dicom-seg", metavar="OUT.dcm", help="also write the segmentation as DICOM SEG")
    d.add_argument("--rtstruct", metavar="OUT.dcm", help="also write it as an RT Structure Set")
    d.add_argument("--allow-empty", action="store_true", help="write empty segments / ROIs instead of failing")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (segmentation, ROI, timings, --dicom-seg, --rtstruct); without it "
                        "an existing output stops the run before any work")
    p.set_defaults(func=_run_segment)


def _segment_pipelines(a: argparse.Namespace) -> Callable[[str], Pipeline]:
    """modality -> Pipeline, loaded once per modality."""
    from .models import load_pipeline
    from .pipeline import PipelineConfig

    device = _inference_device(a.device, getattr(a, "runtime", "auto"))
    config = PipelineConfig(roi_rule=a.roi_rule, largest_component=not a.no_postprocess,
                            fill_holes=not a.no_postprocess, candidates=a.candidates)
    cache: dict[str, Pipeline] = {}
    # a given ROI needs no localizer; localizing alone needs no refiner
    stages = {"all": ("localizer", "refiner"), "localize": ("localizer",), "refine": ("refiner",)}[a.stage]
    if a.roi_file and a.stage == "all":
        stages = ("refiner",)

    def get(modality: str) -> Pipeline:
        if modality not in cache:
            cache[modality] = load_pipeline(a.model, modality, device, config, stages=stages,
                                            runtime=getattr(a, "runtime", "auto"))
        return cache[modality]

    return get


def _inference_device(name: str, runtime: str = "auto") -> Any:
    """``"cpu"`` (a name: torch stays unloaded) when ``name`` is cpu, or auto on a machine where
    no GPU can be used (:func:`voxmetric.runtime.cuda_possible`) and the runtime is not torch;
    otherwise :func:`voxmetric.training.resolve_device`."""
    from .runtime import cuda_possible

    text = str(name).strip().lower()
    if runtime != "torch" and (text == "cpu" or (text == "auto" and not cuda_possible())):
        return "cpu"
    from .training import resolve_device

    return resolve_device(name)


def _run_segment(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .errors import InputError
    from .files import make_folder
    from .pipeline import image_files, segment_file, segment_outputs

    src = Path(a.input)
    if not src.exists():
        raise InputError(f"{src} does not exist. Give an image file or a folder of images.")
    if a.stage == "refine" and not a.roi_file:
        raise InputError("--stage refine needs --roi-file ROI.mrk.json (run --stage localize first, or draw an ROI).")

    def event(e: dict) -> None:
        print(json.dumps(e), flush=True)

    bar = _progress_printer()
    pipelines = _segment_pipelines(a)
    single = src.is_file() or not any(src.iterdir()) or not any(
        f.name.lower().endswith((".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".nhdr")) for f in src.iterdir())
    choice = cli_dicom.segment_series(a, src, single)
    files = [] if single else image_files(src)
    outputs = _folder_outputs(files, Path(a.output))
    if a.uncertainty_out and not single:
        raise InputError("--uncertainty-out takes one file; for a folder INPUT segment the images one at a time.")
    if single:  # every output is checked before any work
        segment_outputs(a.output, a.stage, a.roi_file, a.roi_out, overwrite=a.overwrite,
                        uncertainty_out=a.uncertainty_out)
    for f in files:
        segment_outputs(outputs[f], a.stage, a.roi_file, overwrite=a.overwrite)
    if single:  # a file or a DICOM series folder
        progress = (lambda d, t, m: event({"event": "progress", "done": d, "total": t, "message": m})) \
            if a.events_jsonl else bar
        s = segment_file(pipelines, src, a.output, stage=a.stage, modality=a.modality, roi_file=a.roi_file,
                         roi_out=a.roi_out, progress=progress, series=None if choice is None else choice.series.uid,
                         overwrite=a.overwrite, uncertainty_out=a.uncertainty_out)
        if choice is not None and (a.dicom_seg or a.rtstruct) and "segmentation" in s:
            written = cli_dicom.export_segmentation(a, Path(s["segmentation"]), choice)
            s.update({k: str(v) for k, v in written.items()})
        if a.events_jsonl:
            event({"event": "done", "found": s["found"], "localized": s["localized"], "confidence": s["confidence"],
                   "timings": s["timings"], "message": s["message"], "roi": s["roi"],
                   "segmentation": s.get("segmentation"), "verdict": s["verdict"], "qc": s["qc"],
                   "uncertainty": s["uncertainty"],
                   **{k: s[k] for k in ("dicom_seg", "rtstruct", "uncertainty_file") if k in s}})
        else:
            if s["message"]:
                print(s["message"])
            wrote = [s[k] for k in ("segmentation", "uncertainty_file") if k in s] + [s["roi"]]
            confidence = f"stage-1 confidence {s['confidence']:.2f}; " if s["localizer_ran"] else ""
            print(f"wrote {', '.join(wrote)} ({confidence}"
                  + ", ".join(f"{k} {v:.1f} s" for k, v in s["timings"].items()) + ")")
            for key, what in (("dicom_seg", "DICOM SEG"), ("rtstruct", "RT Structure Set")):
                if key in s:
                    print(f"wrote {s[key]} ({what} on series {choice.series.uid})")  # type: ignore[union-attr]
            print(s["verdict"])
        return 0
    make_folder(a.output)
    results = []
    for i, f in enumerate(files):
        if a.events_jsonl:
            event({"event": "progress", "done": i, "total": len(files), "message": f.name})
        else:
            bar(i, len(files), f.name)
        results.append(segment_file(pipelines, f, outputs[f], stage=a.stage, modality=a.modality,
                                    roi_file=a.roi_file, overwrite=a.overwrite))
    if a.events_jsonl:
        event({"event": "done", "found": all(r["found"] for r in results), "cases": len(results),
               "not_found": [r["image"] for r in results if not r["found"]],
               "check": [r["image"] for r in results if not r["qc"]["ok"]],
               "timings": {"total": round(sum(r["timings"]["total"] for r in results), 3)}})
    else:
        bar(len(files), len(files), "done")
        for r in results:
            print(f"{Path(r['image']).name}: {r['verdict']} ({r['timings']['total']:.1f} s)")
        n_check = sum(not r["qc"]["ok"] for r in results)
        print(f"{len(results) - n_check} of {len(results)} results OK" + (f", {n_check} to CHECK" if n_check else ""))
    return 0


def _folder_outputs(files: Sequence[Path], out: Path) -> dict[Path, Path]:
    """Image file -> ``OUT/<stem>.seg.nrrd``; InputError when two images would share an output."""
    from .errors import InputError

    outputs: dict[Path, Path] = {}
    by_output: dict[Path, list[Path]] = {}
    for f in files:
        stem = f.name[: -len(".nii.gz")] if f.name.lower().endswith(".nii.gz") else f.stem
        outputs[f] = out / f"{stem}.seg.nrrd"
        by_output.setdefault(outputs[f], []).append(f)
    clash = next(((o, fs) for o, fs in by_output.items() if len(fs) > 1), None)
    if clash is not None:
        raise InputError(f"{' and '.join(f.name for f in clash[1])} would both be written to {clash[0]}; rename one "
                         "of them, or segment them into separate output folders.")
    return outputs


DEMO_MODALITIES = {"both": ("ct", "mr"), "ct": ("ct",), "mr": ("mr",)}


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment a synthetic CT and a synthetic MR phantom with the bundled models and "
                                    "score them")
    p.add_argument("--out", default="voxmetric-demo", help="output folder (default ./voxmetric-demo)")
    p.add_argument("--seed", type=int, default=12345,
                   help="phantom seed (default 12345, not a training, validation or evaluation seed)")
    p.add_argument("--modality", choices=sorted(DEMO_MODALITIES), default="both",
                   help="both (default): a CT and an MR phantom; ct or mr: only that one")
    p.add_argument("--device", default="auto")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help="as for segment: auto runs the packages' ONNX graphs on the CPU without torch")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier demo in --out")
    p.set_defaults(func=_run_demo)


def _demo_files(modality: str) -> dict[str, str]:
    """The files the demo writes for one phantom, by role."""
    return {k: f"{modality}_{v}" for k, v in (("image", "phantom.nrrd"), ("truth", "truth.seg.nrrd"),
                                               ("prediction", "prediction.seg.nrrd"),
                                               ("roi", "prediction_roi.mrk.json"))}


def _run_demo(a: argparse.Namespace) -> int:
    from pathlib import Path

    from . import io, metrics, models, phantom
    from .errors import ConfigError, ModelError
    from .files import check_free
    from .markups import write_roi
    from .overview import overview_grid_png
    from .pipeline import _write_json

    out = Path(a.out)
    modalities = DEMO_MODALITIES[a.modality]
    names = [f for m in modalities for f in _demo_files(m).values()] + ["metrics.json", "overview.png"]
    for name in names:
        check_free(out / name, a.overwrite)
    device = _inference_device(a.device, a.runtime)
    ow, bar = a.overwrite, _progress_printer()
    reports, rows = [], []
    for modality in modalities:
        try:
            pipe = models.load_pipeline(None, modality, device, runtime=a.runtime)
        except ModelError as e:
            raise ModelError(f"The demo needs the bundled models in {models.bundled_models_dir()} ({e}). "
                             f"{models.BUNDLED_HINT}") from e
        print(f"phantom seed {a.seed}: generating a synthetic pelvic {modality.upper()}")
        case = phantom.make_case(a.seed, modality)
        truth = case.labels.array == phantom.LABELS["Prostate"]
        res = pipe.segment(case.image, progress=bar)
        pred = res.mask.array == 1 + res.classes.index("Prostate")
        m = metrics.evaluate_masks(pred, truth, case.image.spacing_zyx)
        files = {k: out / v for k, v in _demo_files(modality).items()}
        io.write_volume(case.image, files["image"], overwrite=ow)
        io.write_segmentation(files["truth"], case.labels.with_array(truth.astype("uint8")), [io.PROSTATE],
                              overwrite=ow)
        io.write_segmentation(files["prediction"], res.mask,
                              [io.segment_info(n, k) for k, n in enumerate(res.classes, 1)], overwrite=ow)
        write_roi(res.box, files["roi"], overwrite=ow)
        loc = pipe.localizer.name if pipe.localizer is not None else None
        report = {"modality": modality, "seed": a.seed, "models": [loc, pipe.refiner.name], "found": res.found,
                  "confidence": round(res.confidence, 4), "metrics": {k: round(float(v), 4) for k, v in m.items()},
                  "timings": {k: round(v, 3) for k, v in res.timings.items()}}
        reports.append(report)
        rows.append((case.image, res.box, truth, pred,
                     f"{modality.upper()} phantom {a.seed}: DSC {m['dsc']:.3f}, HD95 {m['hd95']:.1f} mm"))
        print(f"{modality.upper()}: models {loc} -> {pipe.refiner.name}; found: {res.found} (confidence "
              f"{res.confidence:.2f}); DSC {m['dsc']:.3f}   HD95 {m['hd95']:.2f} mm   ASD {m['asd']:.2f} mm")
        print(f"{modality.upper()} timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in res.timings.items()))
    _write_json(out / "metrics.json", {"seed": a.seed, "cases": reports}, overwrite=ow)
    try:
        png: object = overview_grid_png(rows, out / "overview.png", overwrite=ow)
    except ConfigError as e:  # matplotlib is optional: the demo's numbers and files do not need it
        png = "no overview.png"
        sys.stderr.write(f"note: {e}\n")
    print("bundled models: research models trained on synthetic images, then self-trained on a few unlabeled "
          "real scans; not for clinical use")
    print(f"wrote {', '.join(str(out / f) for m in modalities for f in _demo_files(m).values())}, "
          f"{out / 'metrics.json'}, {png}")
    return 0


# ---- helpers -------------------------------------------------------------------------------
def _progress_printer() -> Callable[[int, int, str], None]:
    """A callback ``(done, total, message)`` that draws a one-line progress bar on stderr."""

    def show(done: int, total: int, message: str = "") -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {message[:50]:<50}{end}")
        sys.stderr.flush()
        _BAR_OPEN[0] = not end

    return show


_BAR_OPEN = [False]  # a progress bar line waits for its newline (an error message starts a new line)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_phantom, _add_models, _add_train, _add_evaluate, _add_segment, _add_demo, cli_dicom.add_series,
    cli_dicom.add_export_dicom]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that remembers its last error message (for the ``error`` event)."""

    last_error: str = ""

    def error(self, message: str):  # type: ignore[override]
        _Parser.last_error = f"{self.prog}: {message}"
        super().error(message)


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on ``parser`` and every sub-command's parser (before or after the command)."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an error, print the Python traceback too")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_debug(child)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="voxmetric", description=(__doc__ or "voxmetric").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"voxmetric {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    _add_debug(parser)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM as an exception, so that ``finally`` blocks remove half-written files."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _report(command: str, message: str, exc: BaseException, code: int, events: bool, debug: bool) -> int:
    """The one line on stderr (after the traceback with ``debug``) and the ``error`` event."""
    import traceback

    if _BAR_OPEN[0]:
        sys.stderr.write("\n")
        _BAR_OPEN[0] = False
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(f"voxmetric {command}: error: {message}\n")
    sys.stderr.flush()
    if events and not getattr(exc, "event_emitted", False):
        print(json.dumps({"event": "error", "message": message, "type": type(exc).__name__, "exit_code": code}),
              flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    import os
    import signal

    from .files import os_error_message

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code not in (0, None) and "--events-jsonl" in argv:
            print(json.dumps({"event": "error", "message": _Parser.last_error, "type": "UsageError",
                              "exit_code": e.code}), flush=True)
        raise
    command, events = args.command, bool(getattr(args, "events_jsonl", False))
    debug = bool(getattr(args, "debug", False)) or os.environ.get("VOXMETRIC_DEBUG", "") not in ("", "0")
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        previous = None
    try:
        return int(args.func(args) or 0)
    except VoxMetricError as e:
        return _report(command, str(e), e, 2, events, debug)
    except OSError as e:
        return _report(command, os_error_message(e, writing=False), e, 2, events, debug)
    except KeyboardInterrupt as e:
        what, code = ("terminated", 143) if isinstance(e, _Terminated) else ("interrupted", 130)
        return _report(command, f"{what}; the file being written was discarded, finished outputs are complete. "
                       "Run the command again to redo the rest.", e, code, events, debug)
    except Exception as e:  # a bug: say so in one line; the traceback with --debug
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return _report(command, f"internal error ({type(e).__name__}: {first}). This is a bug in VoxMetric: run "
                       "again with --debug for the traceback and report it.", e, 1, events, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
