"""One way to write a file the user keeps (``voxmetric.files``): a temporary file in the target's
folder, fsync, rename; the temporary file removed on any failure; the target's permissions kept
when it is replaced; an existing target refused unless the caller asked to overwrite. Every writer
of the engine (and the Slicer modules' small JSON files) goes through it: each is checked here
under the same faults."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from voxmetric.volume import Box, Volume

ROOT = Path(__file__).resolve().parents[2]


def _kw(func: Callable, **kw: object) -> dict:
    """The keyword arguments ``func`` takes (writers that refuse to overwrite take ``overwrite``)."""
    import inspect

    return {k: v for k, v in kw.items() if k in inspect.signature(func).parameters}


def _volume() -> Volume:
    a = np.zeros((4, 6, 5), np.int16)
    a[1:3, 2:4, 1:4] = 1
    return Volume(a, (1.0, 1.0, 2.0))


def _rows() -> list[dict]:
    return [{"case": "c1", "segment": "Prostate", "dsc": 0.9, "ppv": 0.9, "sen": 0.9, "asd": 1.0, "hd": 2.0,
             "hd95": 1.5, "arvd": 3.0}]


def _train_lib_write_json(path: Path) -> None:
    sys.path.insert(0, str(ROOT / "VoxMetricTrain"))
    try:
        from VoxMetricTrainLib import logic
    finally:
        sys.path.remove(str(ROOT / "VoxMetricTrain"))
    logic._write_json(path, {"a": 1})


def _write_checkpoint(path: Path) -> None:
    import torch

    from voxmetric.training import _save_checkpoint

    _save_checkpoint(path, {"w": torch.ones(3)}, {"format": "x"})


def _write_package(path: Path) -> None:
    import torch

    from voxmetric import models

    card = {"name": "tiny", "method": "UNet", "role": "refiner", "modality": "ct", "config": {},
            "data": {"spacing_mm": 1.0}}
    models.save_package(path, card, {"w": torch.ones(2)}, overwrite=True, onnx=False)


def _write_phantom_manifest(path: Path) -> None:
    from voxmetric.phantom import write_cases

    write_cases(path.parent, 1, shape=(8, 24, 24), spacing=(4.0, 4.0, 4.0), **_kw(write_cases, overwrite=True))


def _write_synth_manifest(path: Path) -> None:
    from voxmetric.synth import write_synth_cases

    write_synth_cases(path.parent, 1, contrast="ct", fov="roi", shape=(8, 16, 16), spacing=(4.0, 4.0, 4.0),
                      **_kw(write_synth_cases, overwrite=True))


def _write_cache(path: Path) -> None:
    from voxmetric.data import PreparedCase, _save_prepared

    _save_prepared(path, PreparedCase("c", _volume(), _volume().with_array(np.ones((4, 6, 5), np.uint8)), "ct"))


def _writers() -> dict[str, tuple[str, Callable[[Path], object]]]:
    """name -> (file name written, function writing it into a folder)."""
    from voxmetric import cases, io, markups, metrics, pipeline

    return {
        "io.write_volume": ("img.nrrd", lambda p: io.write_volume(_volume(), p)),
        "io.write_segmentation": ("a.seg.nrrd", lambda p: io.write_segmentation(p, _volume(), [io.PROSTATE])),
        "markups.write_roi": ("roi.mrk.json", lambda p: markups.write_roi(Box((0, 0, 0), (10, 10, 10)), p)),
        "cases.write_manifest": ("manifest.json", lambda p: cases.write_manifest(
            [cases.CaseRecord("c", p.parent / "c.nrrd", p.parent / "c.seg.nrrd")], p)),
        "metrics.write_report": ("metrics.json", lambda p: metrics.write_report(
            p.parent, _rows(), **_kw(metrics.write_report, overwrite=True))),
        "data cache": ("c.npz", _write_cache),
        "pipeline._write_json": ("t.json", lambda p: pipeline._write_json(p, {"a": 1})),
        "training._save_checkpoint": ("last.safetensors", _write_checkpoint),
        "phantom.write_cases": ("manifest.json", _write_phantom_manifest),
        "synth.write_synth_cases": ("manifest.json", _write_synth_manifest),
        "VoxMetricTrainLib._write_json": ("run.json", _train_lib_write_json),
    }


WRITERS = sorted(_writers())


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---- the helper -------------------------------------------------------------------------------------
def _helper():
    """(voxmetric.files, OutputError): imported in each test so the writer tests below also run
    against an engine without the helper."""
    from voxmetric import files
    from voxmetric.errors import OutputError

    return files, OutputError


def test_new_file_is_written_whole_with_the_usual_permissions(tmp_path: Path) -> None:
    files, OutputError = _helper()
    target = tmp_path / "sub" / "out.txt"
    files.write_text(target, "hello\n")
    assert target.read_text() == "hello\n" and _listing(target.parent) == {"out.txt"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_replacing_keeps_the_targets_permissions(tmp_path: Path) -> None:
    files, OutputError = _helper()
    target = tmp_path / "out.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    files.write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"new": True} and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_existing_target_is_refused_without_overwrite(tmp_path: Path) -> None:
    files, OutputError = _helper()
    target = tmp_path / "out.txt"
    target.write_text("mine")
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        files.write_text(target, "theirs", overwrite=False)
    assert target.read_text() == "mine" and _listing(tmp_path) == {"out.txt"}
    files.write_text(target, "theirs", overwrite=True)
    assert target.read_text() == "theirs"


def test_a_target_appearing_while_writing_is_not_replaced(tmp_path: Path) -> None:
    files, OutputError = _helper()
    target = tmp_path / "out.txt"
    with pytest.raises(OutputError, match="already exists"):
        with files.atomic_open(target, "w", overwrite=False) as fh:
            fh.write("late")
            target.write_text("someone else's")  # between the check and the rename
    assert target.read_text() == "someone else's" and _listing(tmp_path) == {"out.txt"}


@pytest.mark.parametrize("fault", ["exception", "enospc", "interrupt"])
def test_temp_file_is_removed_on_any_failure(tmp_path: Path, fault: str) -> None:
    files, OutputError = _helper()
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    raised: type[BaseException] = {"exception": ValueError, "enospc": OutputError, "interrupt": KeyboardInterrupt}[fault]
    with pytest.raises(raised):
        with files.atomic_open(target, "wb") as fh:
            fh.write(b"half")
            if fault == "exception":
                raise ValueError("writer failed")
            if fault == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and _listing(tmp_path) == {"out.bin"}


def test_os_errors_become_messages_that_say_what_to_do(tmp_path: Path) -> None:
    files, OutputError = _helper()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not a folder") as info:
        files.write_text(blocker / "out.txt", "x")
    from voxmetric.errors import VoxMetricError

    assert isinstance(info.value, VoxMetricError) and isinstance(info.value, OSError)
    for code, words in ((errno.ENOSPC, "No space left"), (errno.EACCES, "Permission denied"),
                        (errno.EROFS, "read-only"), (errno.ENOENT, "does not exist")):
        msg = files.os_error_message(OSError(code, os.strerror(code), str(tmp_path / "x.seg.nrrd")))
        assert words in msg and str(tmp_path / "x.seg.nrrd") in msg and "\n" not in msg, msg


# ---- every writer of the engine, under the same faults ---------------------------------------------
@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_leaves_no_temp_file_when_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                writer: str) -> None:
    name, write = _writers()[writer]
    target = tmp_path / name
    write(target)  # a first, complete version
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    monkeypatch.setattr(os, "link", full)
    with pytest.raises(OSError, match="No space left"):
        write(target)
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before, f"{writer} left {sorted(str(p) for p in set(after) - set(before))} or changed a file"


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_keeps_the_targets_permissions(tmp_path: Path, writer: str) -> None:
    name, write = _writers()[writer]
    target = tmp_path / name
    write(target)
    os.chmod(target, 0o640)
    write(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640, writer


def test_model_package_leaves_nothing_behind_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "pkg"
    _write_package(target)
    card = (target / "model.json").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        _write_package(target)
    monkeypatch.undo()
    assert _listing(tmp_path) == {"pkg"} and (target / "model.json").read_bytes() == card


def test_no_writer_bypasses_the_helper() -> None:
    """The temp-and-rename dance lives in voxmetric/files.py only (the duplicates it replaced
    left temp files behind or made 0600 files)."""
    offenders = []
    for path in [*ROOT.joinpath("voxmetric").rglob("*.py"), *ROOT.glob("VoxMetric*/**/*.py"),
                 ROOT / "Resources" / "Models" / "train_bundled_models.py"]:
        if path.name == "files.py" and path.parent.name == "voxmetric":
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("os.replace(", "os.rename(", "shutil.move(", "mkstemp(", "NamedTemporaryFile(", ".tmp\"",
                       ".write_text(", ".write_bytes("):
            if needle in text:
                offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


def test_remove_stale_clears_only_this_modules_temp_files(tmp_path: Path) -> None:
    files, _ = _helper()
    keep = ["last.safetensors", ".hidden", "notes.tmp", "c.npz"]
    stale = [".last.safetensors.0a1b2c3d.tmp.safetensors", ".c.npz.12345678.tmp.npz"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in files.remove_stale(tmp_path, "last.safetensors")) == [stale[0]]
    assert sorted(p.name for p in files.remove_stale(tmp_path, "*")) == [stale[1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
