"""The ``voxmetric`` command. Each sub-command is a thin wrapper over an engine function;
errors of the :class:`VoxMetricError` family print their message and exit 2."""

from __future__ import annotations

import argparse
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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_phantom]


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
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
