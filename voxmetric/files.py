"""One way to write a file the user keeps (DESIGN.md rule 7).

Every writer of the engine goes through :func:`atomic_path` (or its wrappers :func:`atomic_open`,
:func:`write_bytes`, :func:`write_text`, :func:`write_json`; :func:`atomic_dir` for a folder such
as a model package):

- the data goes to a temporary file in the target's folder (``.NAME.XXXXXXXX.tmp[SUFFIX]``, so
  the rename never crosses a file system and a library that picks its format from the suffix
  still sees it), which is flushed to disk (``fsync``) and then renamed onto the target, and the
  folder is synced: a reader sees the old file or the whole new one, never half of one;
- the temporary file is removed on any failure, ``KeyboardInterrupt`` included (only a killed
  process can leave one behind: :func:`remove_stale` clears those of a folder the engine owns);
- a replaced target keeps its permission bits; a new file gets the usual ``0666 & ~umask``
  (not ``mkstemp``'s 0600);
- an existing target is refused (:class:`OutputError`, "pass --overwrite") unless
  ``overwrite=True``; without it the final step is a hard link, which fails if the target
  appeared meanwhile, so nothing is ever replaced by a race either;
- an ``OSError`` (disk full, permission, a file where a folder should be, …) becomes an
  :class:`OutputError` whose one-line message names the path and says what to do
  (:func:`os_error_message`).

Missing parent folders are created.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import OutputError

TEMP_MARK = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MESSAGES: dict[int, str] = {
    errno.ENOSPC: "No space left on the disk holding {where} (or the disk quota is used up); free some space or "
                  "write to another disk.",
    errno.EDQUOT: "No space left on the disk holding {where} (or the disk quota is used up); free some space or "
                  "write to another disk.",
    errno.EACCES: "Permission denied: {where}. Check its permissions, or choose another location.",
    errno.EPERM: "Permission denied: {where}. Check its permissions, or choose another location.",
    errno.EROFS: "{where} is on a read-only file system; write to another location.",
    errno.ENOTDIR: "{where}: a part of this path is a file, not a folder. Choose another path.",
    errno.EEXIST: "{where} already exists (as a file where a folder is needed, or the reverse). Choose another path.",
    errno.EISDIR: "{where} is a folder; give a file name.",
    errno.ENOENT: "{where} does not exist. Check the path and its spelling.",
    errno.ENAMETOOLONG: "The name {where} is too long for the file system; choose a shorter one.",
    errno.EMFILE: "Too many open files; close other programs or raise the limit (ulimit -n) and try again.",
    errno.ENFILE: "Too many open files; close other programs or raise the limit (ulimit -n) and try again.",
    errno.EIO: "Input/output error on {where} ({reason}): the disk or network share failed; check it and try again.",
}


def os_error_message(exc: OSError, path: str | Path | None = None, writing: bool = True) -> str:
    """One line for an ``OSError``: what went wrong, on which path, and what to do."""
    where = str(path if path is not None else (exc.filename if exc.filename is not None else "a file"))
    reason = exc.strerror or str(exc) or type(exc).__name__
    template = _MESSAGES.get(exc.errno or -1) or ("Cannot " + ("write" if writing else "read")
                                                  + " {where}: {reason}. Check the path, the disk and the permissions.")
    return template.format(where=where, reason=reason)


def output_error(exc: OSError, path: str | Path) -> OutputError:
    """An :class:`OutputError` (one-line message, same ``errno``) for ``exc`` raised writing ``path``."""
    if isinstance(exc, OutputError):
        return exc
    if exc.errno == errno.EEXIST and Path(path).parent.exists() and Path(path).parent.is_file():
        exc = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return OutputError(os_error_message(exc, path), exc.errno, str(path))


@contextmanager
def _as_output_error(path: Path) -> Iterator[None]:
    """OSErrors of the block as :class:`OutputError` s about ``path``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        raise output_error(e, path) from e


def check_free(path: str | Path, overwrite: bool, flag: str = "--overwrite") -> Path:
    """``path`` itself; :class:`OutputError` when it exists and ``overwrite`` is False, or when
    its nearest existing folder is a file or not writable (before any work is done, so a refused
    run costs nothing)."""
    p = Path(path).expanduser()
    if not overwrite and (p.exists() or p.is_symlink()):
        raise OutputError(f"{p} already exists; choose another output, or pass {flag} to replace it.",
                          errno.EEXIST, str(p))
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise output_error(OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent)), parent)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise output_error(OSError(errno.EACCES, os.strerror(errno.EACCES), str(parent)), parent)
            break
    return p


def make_folder(folder: str | Path) -> Path:
    """``folder`` and its missing parents; an :class:`OutputError` that says why when impossible."""
    p = Path(folder).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise output_error(OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(p)), p) from None
    except OSError as e:
        raise output_error(e, p) from None
    return p


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` onto ``target``: a rename, or (no overwrite) a hard link that
    fails when the target exists, then the temp name is dropped."""
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        check_free(target, False)
        raise
    except OSError as e:  # no hard links on this file system: check, then rename
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            raise
        check_free(target, False)
        os.replace(tmp, target)
        return
    tmp.unlink()


@contextmanager
def atomic_path(target: str | Path, *, overwrite: bool = True, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` to write (any way: a library's ``save(path)``);
    when the block ends without an exception it is synced and renamed onto ``target`` (see the
    module docstring). ``suffix``: the temporary name's ending (default: the target's full
    suffix, e.g. ``.seg.nrrd``). Raises :class:`OutputError` for an existing target without
    ``overwrite`` and for ``OSError`` s; the temporary file never outlives the block."""
    final = check_free(target, overwrite)
    if suffix is None:
        name = final.name
        suffix = name[name.index(".", 1):] if "." in name[1:] else ""
    make_folder(final.parent)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}{TEMP_MARK}{suffix}"
    try:
        with _as_output_error(final):
            old_mode = stat.S_IMODE(final.stat().st_mode) if final.exists() else None
            yield tmp
            if not tmp.exists():
                raise OSError(errno.ENOENT, "the writer made no file", str(final))
            _fsync_file(tmp)
            os.chmod(tmp, old_mode if old_mode is not None else 0o666 & ~_umask())
            _publish(tmp, final, overwrite)
        _sync_folder(final.parent)
    finally:
        remove(tmp)


@contextmanager
def atomic_open(target: str | Path, mode: str = "wb", *, overwrite: bool = True, encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO[Any]]:
    """:func:`atomic_path` with the temporary file open in ``mode`` ("w" or "wb")."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(target, overwrite=overwrite) as tmp:
        if mode == "wb":
            with open(tmp, "wb") as fh:
                yield fh
        else:
            with open(tmp, "w", encoding=encoding, newline=newline) as fh:
                yield fh


def write_bytes(target: str | Path, data: bytes | bytearray | memoryview, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``target`` atomically (see the module docstring); returns the path."""
    with atomic_open(target, "wb", overwrite=overwrite) as fh:
        fh.write(data)
    return Path(target)


def write_text(target: str | Path, text: str, *, overwrite: bool = True, newline: str | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically; returns the path."""
    with atomic_open(target, "w", overwrite=overwrite, newline=newline) as fh:
        fh.write(text)
    return Path(target)


def write_json(target: str | Path, data: Any, *, overwrite: bool = True, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (UTF-8, newline at the end) to ``target`` atomically; returns the path."""
    text = json.dumps(data, indent=indent) + "\n"  # serialise first: a TypeError leaves no file at all
    return write_text(target, text, overwrite=overwrite)


@contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` to fill; then its files are synced and it is
    moved onto ``target`` (an existing ``target``, allowed only with ``overwrite``, is kept aside
    until the move succeeded, then deleted). The temporary folder never outlives the block."""
    final = check_free(target, overwrite)
    make_folder(final.parent)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}{TEMP_MARK}"
    old: Path | None = None
    try:
        with _as_output_error(final):
            tmp.mkdir()
            yield tmp
            for f in tmp.rglob("*"):
                if f.is_file():
                    _fsync_file(f)
            os.chmod(tmp, 0o777 & ~_umask())
            check_free(final, overwrite)
            if final.exists() or final.is_symlink():
                old = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
                os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                if old is not None:
                    os.replace(old, final)
                    old = None
                raise
        _sync_folder(final.parent)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and (leftover.exists() or leftover.is_symlink()):
                remove(leftover)


def remove(path: str | Path) -> None:
    """Delete a file, link or folder tree, as far as possible and without an error (clean-up)."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except OSError:
            pass


def discard(path: str | Path) -> None:
    """Delete a file or folder so that it disappears at once (renamed aside, then deleted)."""
    p = Path(path)
    trash = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.removed")
    try:
        os.replace(p, trash)
    except OSError as e:
        raise output_error(e, p) from e
    remove(trash)


def remove_stale(folder: str | Path, name: str) -> list[Path]:
    """Delete the temporary files a killed writer of ``folder / name`` left behind (only ones
    this module names: ``.NAME.XXXXXXXX.tmp*``; ``name`` may be a glob such as ``*``); returns
    what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for p in folder.glob(f".{name}.*{TEMP_MARK}*"):
        remove(p)
        gone.append(p)
    return gone


__all__ = ["atomic_dir", "atomic_open", "atomic_path", "check_free", "discard", "make_folder", "os_error_message", "output_error",
           "remove", "remove_stale", "write_bytes", "write_json", "write_text"]
