"""The bad-input table of the README (issue 13), written by code: runs ``voxmetric`` on each bad
input or fault and prints a markdown table of what the user sees (the message, shortened) and the
exit code. Run by hand, not in CI (about 30 runs of the command; the bundled models are used
where a model is needed):

    python Testing/Benchmarks/bad_inputs.py [--work DIR] [--json]

A full disk is a real one (a 64 KiB tmpfs) when this runs as root, else that row is skipped;
"permission denied" writes under /sys (refused even to root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing" / "Python")]

from voxmetric import io, models  # noqa: E402
from voxmetric.markups import write_roi  # noqa: E402
from voxmetric.phantom import make_case, write_cases  # noqa: E402
from voxmetric.volume import Box, resample  # noqa: E402

W = Path()  # the work folder (set in main)
ENV: dict[str, str] = {}
SMALL = dict(shape=(48, 144, 144), spacing=(3.0, 3.0, 3.0))


def fresh(*paths: Path) -> None:
    """Remove what an earlier run of this script wrote there (rows that must write anew)."""
    for p in paths:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def vm(*args: str, timeout: float = 900, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    p = subprocess.run([sys.executable, "-m", "voxmetric", *args], env={**ENV, **(env or {})}, cwd=W,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def said(rc: int, out: str, err: str) -> str:
    """What the user sees: the error line (without the ``voxmetric CMD: error:`` prefix), else the
    last line printed (on stdout for a run that succeeded)."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ": error: " in ln]
    if lines:
        return lines[-1].split(": error: ", 1)[1]
    text = [ln for ln in ((out if rc == 0 and out.strip() else out + "\n" + err).replace("\r", "\n").splitlines())
            if ln.strip() and not ln.startswith("[")]
    return text[-1] if text else ""


# ---- the inputs -----------------------------------------------------------------------------------
def scan() -> Path:
    p = W / "scan.nrrd"
    if not p.exists():
        io.write_volume(make_case(5001, "ct", **SMALL).image, p)  # type: ignore[arg-type]
    return p


def raw_nrrd(name: str, header: str, data: bytes = b"") -> Path:
    p = W / name
    p.write_bytes(header.encode("ascii") + b"\n" + data)
    return p


def image_file(name: str, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array, isVector=array.ndim == 4 and array.shape[-1] == 3)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
    p = W / name
    sitk.WriteImage(img, str(p))
    return p


def copy_model(name: str, change: Callable[[Path], None]) -> Path:
    src = models.bundled_models_dir() / "synth-metricunet-hcp"
    dst = W / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    change(dst)
    return dst


def tamper(d: Path) -> None:
    w = d / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF
    w.write_bytes(bytes(data))


def truncate(d: Path) -> None:
    w = d / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def pickle_weights(d: Path) -> None:
    import hashlib
    import pickle

    data = pickle.dumps({"w": [1.0, 2.0]})
    (d / "weights.safetensors").write_bytes(data)
    card = json.loads((d / "model.json").read_text())
    card.update(weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data))
    (d / "model.json").write_text(json.dumps(card))


def dicom_two_series() -> Path:
    from dicom_helpers import phantom_series  # Testing/Python
    from pydicom.uid import generate_uid

    study = W / "dicom_study"
    if not study.exists():
        same = {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid()}
        for sub, seed in (("a", 1), ("b", 2)):
            phantom_series(study / sub, seed=seed, shape=(16, 48, 48), spacing=(6.0, 6.0, 6.0), tags=same)
    return study


def phantom_folder() -> Path:
    f = W / "cases"
    if not (f / "manifest.json").exists():
        write_cases(f, 2, "ct", seed=7, **SMALL)  # type: ignore[arg-type]
    return f


def cancelled() -> tuple[int, str, str]:
    """SIGTERM a segment run once it reports progress (as Slicer's Cancel or `kill` does)."""
    out = W / "cancel" / "scan.seg.nrrd"
    p = subprocess.Popen([sys.executable, "-m", "voxmetric", "segment", str(scan()), "-o", str(out), "--events-jsonl"],
                         env=ENV, cwd=W, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    for line in p.stdout:
        if '"refine' in line:
            p.send_signal(signal.SIGTERM)
            break
    out_text, err = p.communicate(timeout=120)
    left = [f.name for f in out.parent.glob("*")] if out.parent.exists() else []
    return p.returncode, out_text, err + f"\n(files left in the output folder: {left or 'none'})"


def full_disk() -> tuple[int, str, str] | None:
    """A 64 KiB tmpfs filled to its last 4 KiB page."""
    if os.geteuid() != 0:
        return None
    mnt = W / "tiny_disk"
    mnt.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        return None
    try:
        (mnt / "filler").write_bytes(b"\0" * (shutil.disk_usage(mnt).free - 4096))
        rc, out, err = vm("segment", str(scan()), "-o", str(mnt / "scan.seg.nrrd"))
        left = sorted(f.name for f in mnt.iterdir() if f.name != "filler")
        return rc, out, err + f"\n(files left on the disk: {left or 'none'})"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def cases() -> list[tuple[str, str, Callable[[], tuple[int, str, str] | None]]]:
    """(bad input, command shown, run) for every row."""
    s = lambda: str(scan())  # noqa: E731
    o = lambda n="x": str(W / f"{n}.seg.nrrd")  # noqa: E731  (refused inputs: nothing is written)

    def chosen() -> tuple[int, str, str]:
        fresh(*(W / f"dicom2{s}" for s in (".seg.nrrd", "_roi.mrk.json", "_timings.json")))
        return vm("segment", str(dicom_two_series()), "-o", o("dicom2"), "--series", "2")

    def new_folder() -> tuple[int, str, str]:
        fresh(W / "new")
        return vm("segment", s(), "-o", str(W / "new" / "dir" / "x.seg.nrrd"))
    far = lambda: str(write_roi(Box((5000.0, 5000.0, 5000.0), (60.0, 60.0, 60.0)), W / "far_roi.mrk.json"))  # noqa: E731

    def existing() -> tuple[int, str, str]:
        (W / "mine.seg.nrrd").write_bytes(b"the user's segmentation")
        return vm("segment", s(), "-o", str(W / "mine.seg.nrrd"))

    def clash() -> tuple[int, str, str]:
        d = W / "clash"
        d.mkdir(exist_ok=True)
        shutil.copy(scan(), d / "a.nrrd")
        io.write_volume(io.read_volume(scan()), d / "a.nii.gz")
        return vm("segment", str(d), "-o", str(W / "clash_out"))

    def grids() -> tuple[int, str, str]:
        m = make_case(5002, "ct", **SMALL).labels  # type: ignore[arg-type]
        mask = m.with_array((m.array == 1).astype(np.uint8))
        io.write_segmentation(W / "ref" / "c.seg.nrrd", mask, [io.PROSTATE])
        io.write_segmentation(W / "pred" / "c.seg.nrrd", resample(mask, (2.0, 2.0, 2.5), is_label=True), [io.PROSTATE])
        return vm("evaluate", "--pred", str(W / "pred"), "--ref", str(W / "ref"))

    def resume_changed() -> tuple[int, str, str]:
        args = ["train", "--method", "UNet", "--cases", str(phantom_folder()), "--out", str(W / "m"), "--iterations", "2",
                "--val-cases", "0", "--device", "cpu", "--base", "4", "--per-case", "4", "--checkpoint-every", "1",
                "--spacing-mm", "4", "--patch", "32", "--batch-size", "2"]
        shutil.rmtree(W / "m", ignore_errors=True)
        shutil.rmtree(W / "m.work", ignore_errors=True)
        vm(*args)
        shutil.rmtree(W / "m")
        return vm(*args, "--resume", "--lr", "0.05", "--iterations", "4")

    def ct_models_only() -> dict[str, str]:
        """A bundled-models folder holding only a CT model (the bundled refiner saved as CT-only)."""
        folder = W / "ct_only_models"
        if not (folder / "ct-refiner").exists():
            pkg = models.load_package(models.bundled_models_dir() / "synth-metricunet-hcp")
            card = {k: v for k, v in pkg.card.items() if k in ("method", "role", "config", "data", "classes")}
            models.save_package(folder / "ct-refiner", dict(card, name="ct-refiner", modality="ct"), pkg.state_dict,
                                onnx=False)
        return {"VOXMETRIC_BUNDLED_MODELS": str(folder)}

    def mr_scan() -> str:
        p = W / "mr.nrrd"
        if not p.exists():
            io.write_volume(make_case(5003, "mr", **SMALL).image, p)  # type: ignore[arg-type]
        return str(p)

    rows: list[tuple[str, str, Callable[[], tuple[int, str, str] | None]]] = [
        ("2D image (one slice)", "segment slice.nrrd",
         lambda: vm("segment", str(image_file("slice.nrrd", np.zeros((64, 64), np.int16) + 7)), "-o", o())),
        ("4D image (a time series)", "segment series4d.nrrd",
         lambda: vm("segment", str(raw_nrrd("series4d.nrrd", "NRRD0004\ntype: short\ndimension: 4\nsizes: 8 8 8 3\n"
                                            "encoding: raw\nendian: little\n", bytes(8 * 8 * 8 * 3 * 2))), "-o", o())),
        ("RGB image", "segment rgb.nrrd",
         lambda: vm("segment", str(image_file("rgb.nrrd", np.zeros((8, 16, 16, 3), np.uint8) + 9)), "-o", o())),
        ("every voxel NaN", "segment nan.nrrd",
         lambda: vm("segment", str(image_file("nan.nrrd", np.full((8, 16, 16), np.nan, np.float32))), "-o", o())),
        ("blank image (one value)", "segment blank.nrrd",
         lambda: vm("segment", str(image_file("blank.nrrd", np.zeros((8, 16, 16), np.int16))), "-o", o())),
        ("garbage bytes named .nrrd", "segment garbage.nrrd",
         lambda: vm("segment", str(_write(W / "garbage.nrrd", os.urandom(4096))), "-o", o())),
        ("0-byte file", "segment empty.nii.gz", lambda: vm("segment", str(_write(W / "empty.nii.gz", b"")), "-o", o())),
        ("absurd header size (10⁶ × 10⁶ × 10⁶ voxels)", "segment huge.nrrd",
         lambda: vm("segment", str(raw_nrrd("huge.nrrd", "NRRD0004\ntype: short\ndimension: 3\nsizes: 1000000 1000000 "
                                            "1000000\nencoding: raw\nendian: little\n", bytes(64))), "-o", o())),
        ("tampered model weights (one byte)", "segment --model tampered/",
         lambda: vm("segment", s(), "-o", o(), "--model", str(copy_model("tampered", tamper)))),
        ("truncated model weights", "segment --model truncated/",
         lambda: vm("segment", s(), "-o", o(), "--model", str(copy_model("truncated", truncate)))),
        ("pickled weights (matching SHA-256)", "segment --model pickled/",
         lambda: vm("segment", s(), "-o", o(), "--model", str(copy_model("pickled", pickle_weights)))),
        ("GPU asked for, none present", "segment --device cuda",
         lambda: vm("segment", s(), "-o", o(), "--device", "cuda")),
        ("MR image, only CT models", "segment mr.nrrd --modality mr",
         lambda: vm("segment", mr_scan(), "-o", o(), "--modality", "mr", env=ct_models_only())),
        ("cancelled run (SIGTERM while refining)", "segment … then kill", cancelled),
        ("DICOM folder with two equally good series", "segment dicom_study/",
         lambda: vm("segment", str(dicom_two_series()), "-o", o())),
        ("… the same, one chosen", "segment dicom_study/ --series 2", chosen),
        ("output folder does not exist", "segment -o new/dir/x.seg.nrrd", new_folder),
        ("output folder is a file", "segment -o afile/x.seg.nrrd",
         lambda: vm("segment", s(), "-o", str(_write(W / "afile", b"x") / "x.seg.nrrd"))),
        ("output where writing is not permitted", "segment -o /sys/x.seg.nrrd",
         lambda: vm("segment", s(), "-o", "/sys/x.seg.nrrd")),
        ("full disk (a tmpfs with one free 4 KiB page)", "segment -o tiny_disk/scan.seg.nrrd", full_disk),
        ("output exists", "segment -o mine.seg.nrrd", existing),
        ("ROI that misses the image", "segment --stage refine --roi-file far_roi.mrk.json",
         lambda: vm("segment", s(), "--stage", "refine", "--roi-file", far(), "-o", o("far"))),
        ("a.nrrd and a.nii.gz in one folder", "segment clash/ -o clash_out", clash),
        ("prediction and reference on other grids", "evaluate --pred pred/ --ref ref/", grids),
        ("--segment not in the cases (manifest says Prostate)", "train --segment Kidney",
         lambda: vm("train", "--method", "UNet", "--cases", str(phantom_folder()), "--segment", "Kidney", "--out",
                    str(W / "kidney"), "--device", "cpu")),
        ("resume with another learning rate", "train --resume --lr 0.05", resume_changed),
        ("phantom --out onto existing cases", "phantom --out cases/",
         lambda: vm("phantom", "--out", str(phantom_folder()), "--cases", "1")),
    ]
    return rows


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def main() -> int:
    global W, ENV
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    ap.add_argument("--only", help="run only the rows whose bad input contains one of these texts (comma-separated)")
    ap.add_argument("--table-from", type=Path, nargs="+",
                    help="print the table of earlier --json runs (JSON lines; a later file's row wins)")
    a = ap.parse_args()
    if a.table_from:
        got = {}
        for f in a.table_from:
            got.update({r["input"]: r for r in map(json.loads, f.read_text().splitlines()) if r})
        print_table([{**got[what], "input": what, "command": command} for what, command, _ in cases() if what in got],
                    a.work or Path("/-"))
        return 0
    W = (a.work or Path(tempfile.mkdtemp(prefix="voxmetric-bad-"))).resolve()
    W.mkdir(parents=True, exist_ok=True)
    ENV = {**os.environ, "PYTHONPATH": str(ROOT), "VOXMETRIC_HOME": str(W / "home"), "OMP_NUM_THREADS": "2"}
    ENV.pop("VOXMETRIC_BUNDLED_MODELS", None)
    rows = []
    for what, command, run in cases():
        if a.only and not any(text in what for text in a.only.split(",")):
            continue
        t0 = time.monotonic()
        got = run()
        if got is None:
            rows.append({"input": what, "command": command, "sees": "(skipped: needs root for a tmpfs)", "exit": "-"})
            continue
        rc, out, err = got
        text = said(rc, out, err)
        extra = next((ln for ln in err.splitlines() if ln.startswith("(files left")), "")
        rows.append({"input": what, "command": command, "sees": text, "exit": rc, "extra": extra,
                     "traceback": "Traceback" in err, "seconds": round(time.monotonic() - t0, 1)})
        if a.json:
            print(json.dumps({**rows[-1], "work": str(W)}), flush=True)
    if not a.json:
        print_table(rows, W)
    return 0


def print_table(rows: list[dict], work: Path) -> None:
    """The markdown table (paths shown relative to the work folder; long messages shortened)."""
    print("| bad input or fault | command | what the user sees (shortened) | exit |")
    print("|---|---|---|---|")
    for r in rows:
        text = str(r["sees"]).replace(str(r.get("work", work)) + "/", "").replace("|", "\\|")
        text = text if len(text) <= 260 else text[:257] + "…"
        extra = f" {r['extra']}" if r.get("extra") else ""
        tb = " **(traceback)**" if r.get("traceback") else ""
        print(f"| {r['input']} | `{r['command']}` | {text}{extra}{tb} | {r['exit']} |")


if __name__ == "__main__":
    raise SystemExit(main())
