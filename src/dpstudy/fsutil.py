"""Atomic file writes: a reader sees either the old file or the complete new one, never half.

`write_files_atomic` does the same for a set of files that belong together (a stage's result
tables): every file is written and flushed first, and only then are all of them renamed into
place, with SIGTERM/SIGINT held meanwhile, so an interruption leaves the complete old set or the
complete new one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator


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
    except BaseException:
        tmp_path.unlink(missing_ok=True)
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
    SIGINT wait (delivered right after). A failure before the renames changes nothing."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            path = Path(path)
            tmp = _temp_beside(path)
            staged.append((tmp, path))
            tmp.write_text(text)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        with signals_held():
            for tmp, path in staged:
                os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)  # only what was not renamed is still there


def _temp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT for the block and deliver the first one after it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in held[:1]:
            signal.raise_signal(s)  # now the usual handler (or the default action) applies
