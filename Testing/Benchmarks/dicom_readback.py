"""DICOM export read-back figures (issue 15): write DICOM SEG and RT Structure Sets with
``voxmetric.dicom`` and read them back with independent readers.

    python Testing/Benchmarks/dicom_readback.py [--shared-data ../shared/data] [--work DIR]

Sources: a phantom CT (``voxmetric.phantom.make_case(1, "ct")``, 36×112×112 at 2.5 mm, its
five organ labels) written as a CT DICOM series, and the real 19-slice MR series in
``shared/data/ncisbi_mr_unlabeled/dicom_Prostate3T-03-0001`` with three synthetic ellipsoids
(prostate-, bladder- and femoral-head-like) on its grid, since it has no label. DICOM SEG is read
back with dcmqi's ``segimage2itkimage`` and resampled (nearest neighbour) onto the source grid as
SimpleITK reads it; the RT Structure Set with dicompyler-core, its contours filled on the source
grid (pixel centres inside, even-odd rule). Prints one JSON object per segment and output:
differing voxels and DSC against the mask that was written, plus write time and file size.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Python"))

from dicom_helpers import dcmqi_read, dcmqi_tool, dsc, phantom_series, real_series, rt_read, source_image  # noqa: E402

from voxmetric import dicom, io, phantom  # noqa: E402


def _ellipsoids(grid):
    from test_dicom_export import _ellipsoids as make

    return make(grid)


def run(name: str, folder: Path, seg: io.Segmentation, work: Path) -> None:
    info = dicom.match_series(seg.labelmap, folder).series
    want = {s.name: seg.mask_of(s).array.astype(bool) for s in seg.segments}
    ref = source_image(folder)
    for kind, writer in (("dicom_seg", dicom.write_dicom_seg), ("rtstruct", dicom.write_rtstruct)):
        t0 = time.perf_counter()
        out = writer(seg, info, work / f"{name}_{kind}.dcm", overwrite=True)
        seconds = time.perf_counter() - t0
        if kind == "dicom_seg":
            if dcmqi_tool() is None:
                print(json.dumps({"case": name, "output": kind, "skipped": "dcmqi cannot run"}))
                continue
            back = dcmqi_read(out, ref, work / f"{name}_dcmqi")[0]
            reader = "dcmqi segimage2itkimage"
        else:
            back = {k: v["mask"] for k, v in rt_read(out, ref).items()}
            reader = "dicompyler-core + even-odd fill"
        for segment, mask in want.items():
            got = back[segment]
            print(json.dumps({"case": name, "output": kind, "reader": reader, "segment": segment,
                              "voxels": int(mask.sum()), "differing_voxels": int((got != mask).sum()),
                              "dsc": round(dsc(got, mask), 6), "write_s": round(seconds, 3),
                              "bytes": out.stat().st_size}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", help="output folder (default: a temporary one)")
    a = ap.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="dicom_readback_"))
    print(json.dumps({"event": "config", "machine": platform.machine(), "python": platform.python_version(),
                      "work": str(work)}))
    _, labels = phantom_series(work / "phantom_series", seed=1)
    run("phantom_ct", work / "phantom_series",
        io.Segmentation(labels, [io.segment_info(n, v) for n, v in phantom.LABELS.items()]), work)
    try:
        folder = real_series(Path(a.shared_data))
    except BaseException:  # pytest.skip outside pytest
        print(json.dumps({"case": "real_mr", "skipped": "real series absent"}))
        return
    run("real_mr", folder, _ellipsoids(dicom.select_series(folder).series.grid()), work)


if __name__ == "__main__":
    main()
