"""Atomic file writes: a reader sees either the old file or the complete new one, never half.

`write_files_atomic` does the same for a set of files that belong together (a stage's result
tables): every file is written and flushed first, and only then are all of them renamed into
place, with SIGTERM/SIGINT held meanwhile, so an interruption leaves the complete old set or the
complete new one.

A full disk is a `UserError` (`DiskFull`: the path, the bytes needed where known, the bytes free),
raised once the temporary files are gone and the old files are known to be untouched.
`unwritable` says before a stage starts whether a folder it will write into can be written at all
(a read-only mount, a file in the way, no permission): by the mount's read-only flag, then by
really creating (and removing) a file there, since root passes every permission-bit check.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On any exception the temporary file is removed and ``path`` (if it existed) is untouched.
    """
    path = Path(path)
    tmp_path = _temp_beside(path)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # flush to disk before the rename makes it visible
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException as exc:
        full = _disk_full(exc, path)  # judged before the partial file is removed
        tmp_path.unlink(missing_ok=True)
        if full:
            raise DiskFull(path) from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_text(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def csv_text(rows: list[dict]) -> str:
    """Rows of equal keys as CSV with a header (the format `dvc plots` reads)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    write_text_atomic(path, csv_text(rows))


def write_files_atomic(files: dict[Path, str]) -> None:
    """Write every ``path: text`` of ``files`` so that together they change at once: all are
    staged and flushed beside their targets, then renamed in one burst during which SIGTERM and
    SIGINT wait (delivered right after). A failure before the renames changes nothing; a full disk
    is `DiskFull`, naming the file and the bytes all of them need."""
    staged: list[tuple[Path, Path]] = []
    encoded = {Path(path): text.encode() for path, text in files.items()}
    where = next(iter(encoded), Path("."))  # the file being written
    try:
        for where, data in encoded.items():
            tmp = _temp_beside(where)
            staged.append((tmp, where))
            tmp.write_bytes(data)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        with signals_held():
            for tmp, path in staged:
                os.replace(tmp, path)
    except OSError as exc:
        if not _disk_full(exc, where):
            raise
        _remove(staged)
        raise DiskFull(where, needed=sum(map(len, encoded.values()))) from exc
    finally:
        _remove(staged)


def _remove(staged: list[tuple[Path, Path]]) -> None:
    for tmp, _ in staged:
        tmp.unlink(missing_ok=True)  # only what was not renamed is still there


def _temp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


# --------------------------------------------------------------------------------------------
# A full disk, a folder that cannot be written


_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFull(UserError):
    """No space left where ``path`` was being written: one line with the path, what it needed (when
    known) and what is free; the earlier file(s) are untouched."""

    def __init__(self, path: str | os.PathLike, needed: int | None = None):
        path = Path(path)
        folder = path.parent
        need = f"{needed:,} bytes needed, " if needed is not None else ""
        super().__init__(
            f"no space left on device writing {path}: {need}{free_bytes(folder):,} bytes free in "
            f"{folder}: free some space there, or write elsewhere; the earlier files there are "
            "unchanged"
        )
        self.path, self.needed = path, needed


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes this process may still write on the file system of ``folder`` (root: its reserve too)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _disk_full(exc: BaseException, path: Path) -> bool:
    """Whether writing ``path`` failed for want of space: ENOSPC/EDQUOT, or any error while the file
    system is then out of space (torch.save reports a full disk as a bare RuntimeError)."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    if not isinstance(exc, Exception) or isinstance(exc, UserError):
        return False
    return free_bytes(path.parent) == 0 if path.parent.is_dir() else False


def unwritable(folder: str | os.PathLike) -> tuple[Path, str, str] | None:
    """(the folder found, why, the fix) if files cannot be created in ``folder``; None if they can.

    A folder that does not exist yet is judged by its nearest existing parent (where it would be
    created); nothing is left behind. A read-only mount is told by its flag; anything else (root
    passes every permission-bit check, so os.access says little) by really creating a file there."""
    at = Path(folder)
    while not at.exists() and not at.is_symlink() and at != at.parent:
        at = at.parent
    read_only = (at, "is on a read-only file system", "remount it read-write")
    if not at.is_dir():
        return at, "is not a folder", "move it away"
    try:
        if os.statvfs(at).f_flag & os.ST_RDONLY:
            return read_only
        fd, probe = tempfile.mkstemp(prefix=".dpstudy-write-check.", dir=at)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return read_only
        return at, f"cannot be written ({_strerror(exc)})", "fix its permissions"
    os.close(fd)
    os.unlink(probe)
    return None


def _strerror(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT for the block and deliver the first one after it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in held[:1]:
            signal.raise_signal(s)  # now the usual handler (or the default action) applies
