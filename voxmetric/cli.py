"""The ``voxmetric`` command. Each sub-command is a thin wrapper over an engine function;
errors of the :class:`VoxMetricError` family print their message and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .errors import VoxMetricError

Handler = Callable[[argparse.Namespace], int]


# ---- phantom -------------------------------------------------------------------------------
def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write synthetic pelvic CT/MR cases with labels")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cases", type=int, default=4, help="number of cases (default 4)")
    p.add_argument("--modality", choices=["ct", "mr"], default="ct")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed+i")
    p.set_defaults(func=_run_phantom)


def _run_phantom(a: argparse.Namespace) -> int:
    from .phantom import write_cases

    write_cases(a.out, a.cases, modality=a.modality, seed=a.seed, progress=_progress_printer())
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
        for key in ("config", "data", "training", "validation"):
            if key in card:
                print(f"  {key + ':':<16}{json.dumps(card[key], sort_keys=True)}")
    elif a.action == "install":
        info = models.install(a.path, name=a.name)
        print(f"installed {info.name} ({info.role}, {info.modality}, {info.method}) at {info.path}")
    else:
        path = models.remove(a.name)
        print(f"removed {a.name} ({path})")
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

    return show


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_phantom, _add_models]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="voxmetric", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"voxmetric {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VoxMetricError as e:
        sys.stderr.write(f"voxmetric {args.command}: error: {e}\n")
        if getattr(args, "events_jsonl", False):
            print(json.dumps({"event": "error", "message": str(e)}), flush=True)
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
