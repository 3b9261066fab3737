"""The DICOM side of the ``voxmetric`` command: ``series`` (list a folder's series and the one
``segment`` reads), ``export-dicom`` (a segmentation as DICOM SEG / RT Structure Set on its
series), and the series choice and export of ``segment`` on a DICOM folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .dicom import SeriesChoice


def segment_series(a: argparse.Namespace, src: Path, single: bool) -> SeriesChoice | None:
    """The DICOM series to segment (None for image files), said on stderr / as a log event;
    InputError for DICOM-only options without a DICOM folder, before any work is done."""
    from .errors import InputError

    wants = [f for f, v in (("--series", a.series), ("--dicom-seg", a.dicom_seg), ("--rtstruct", a.rtstruct)) if v]
    is_dicom = single and src.is_dir()
    if not is_dicom:
        if wants:
            raise InputError(f"{' and '.join(wants)} {'needs' if len(wants) == 1 else 'need'} a DICOM series "
                             f"folder as INPUT; {src} is "
                             f"{'a folder of image files' if src.is_dir() else 'an image file'}. Segment the DICOM "
                             "folder, or export an existing .seg.nrrd with `voxmetric export-dicom --seg X.seg.nrrd "
                             "--series DICOM_DIR --dicom-seg OUT.dcm`.")
        return None
    from . import dicom

    if (a.dicom_seg or a.rtstruct) and a.stage == "localize":
        raise InputError("--stage localize writes no segmentation; drop --dicom-seg / --rtstruct or run --stage all.")
    if a.dicom_seg or a.rtstruct:
        dicom.need_dicom_extra()
        dicom.check_targets([a.dicom_seg, a.rtstruct], a.overwrite)
    choice = dicom.select_series(src, a.series)
    message = f"DICOM series {choice.series.summary()} — {choice.reason}"
    if a.events_jsonl:
        print(json.dumps({"event": "log", "message": message, "series_uid": choice.series.uid}), flush=True)
    else:
        sys.stderr.write(message + "\n")
    return choice


def export_segmentation(a: argparse.Namespace, seg_path: Path, choice: SeriesChoice) -> dict[str, Path]:
    """Write ``a.dicom_seg`` / ``a.rtstruct`` from the segmentation ``segment`` just wrote."""
    from . import dicom, io

    return dicom.export(io.read_segmentation(seg_path), choice.series, dicom_seg=a.dicom_seg, rtstruct=a.rtstruct,
                        allow_empty=a.allow_empty, overwrite=a.overwrite)


def add_series(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("series", help="list the DICOM series of a folder and which one `segment` would read",
                       description="List the DICOM image series under a folder (recursive) with index, modality, "
                                   "description, slices, size, spacing, orientation and notes; * marks the series "
                                   "the rules choose (give another to `segment` with --series UID|INDEX).")
    p.add_argument("folder", help="DICOM folder (a study, a patient, or one series)")
    p.add_argument("--json", action="store_true", help="print one JSON object per series instead of a table")
    p.set_defaults(func=_run_series)


def _run_series(a: argparse.Namespace) -> int:
    from . import dicom

    series = dicom.list_series(a.folder)
    try:
        choice: object = dicom.select_series(series)
    except dicom.SeriesChoiceError as e:
        choice = e
    if a.json:
        for s in series:
            print(json.dumps({"index": s.index, "uid": s.uid, "modality": s.modality, "description": s.description,
                              "images": len(s.files), "size": list(s.size), "spacing": s.spacing,
                              "orientation": s.orientation, "localizer": s.localizer, "derived": s.derived,
                              "problem": s.problem, "chosen": isinstance(choice, dicom.SeriesChoice)
                              and choice.series.uid == s.uid}))
        return 0
    chosen = choice.series if isinstance(choice, dicom.SeriesChoice) else None
    print(dicom.format_series(series, chosen))
    if chosen is not None:
        print(f"segment reads #{chosen.index}: {choice.reason}. Choose another with --series UID|INDEX.")  # type: ignore[union-attr]
    else:
        print(f"no automatic choice: {str(choice).split(chr(10))[0]}")
    return 0


def add_export_dicom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-dicom",
                       help="write a .seg.nrrd as DICOM SEG and/or RT Structure Set on its DICOM series",
                       description="Export every segment of a segmentation (.seg.nrrd or labelmap) on the grid of a "
                                   "DICOM series as DICOM SEG (highdicom) and/or RT Structure Set, with SNOMED CT "
                                   "terminology, referencing the series.")
    p.add_argument("--seg", required=True, help="segmentation file (.seg.nrrd or a labelmap image)")
    p.add_argument("--series", required=True, metavar="DIR",
                   help="DICOM folder holding the series the segmentation is on")
    p.add_argument("--pick", metavar="UID|INDEX",
                   help="which series of DIR (default: the one on the segmentation's grid)")
    p.add_argument("--dicom-seg", metavar="OUT.dcm", help="DICOM SEG file to write")
    p.add_argument("--rtstruct", metavar="OUT.dcm", help="RT Structure Set file to write")
    p.add_argument("--algorithm-type", choices=["automatic", "semiautomatic", "manual"], default="automatic",
                   help="how the segments were made (default automatic: by VoxMetric)")
    p.add_argument("--allow-empty", action="store_true", help="write empty segments / ROIs instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_run_export_dicom)


def _run_export_dicom(a: argparse.Namespace) -> int:
    from . import dicom, io
    from .errors import InputError

    if not (a.dicom_seg or a.rtstruct):
        raise InputError("Give --dicom-seg OUT.dcm and/or --rtstruct OUT.dcm.")
    dicom.check_targets([a.dicom_seg, a.rtstruct], a.overwrite)
    if not Path(a.series).is_dir():
        raise InputError(f"--series must be the DICOM folder the segmentation was made from; {a.series} is not a "
                         "folder. DICOM output needs the DICOM source series (its UIDs and slice positions).")
    seg = io.read_segmentation(a.seg)
    choice = dicom.match_series(seg.labelmap, a.series, a.pick)
    sys.stderr.write(f"DICOM series {choice.series.summary()} — {choice.reason}\n")
    out = dicom.export(seg, choice.series, dicom_seg=a.dicom_seg, rtstruct=a.rtstruct, allow_empty=a.allow_empty,
                       overwrite=a.overwrite, algorithm_type=a.algorithm_type.upper())
    names = ", ".join(seg.names)
    for key, what in (("dicom_seg", "DICOM SEG"), ("rtstruct", "RT Structure Set")):
        if key in out:
            print(f"wrote {out[key]} ({what}, {len(seg.segments)} segment(s): {names})")
    return 0
