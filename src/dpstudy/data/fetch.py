"""Fetch upstream files into a raw cache, each verified against its MD5 before it is kept.

Where a file comes from, for each one not already cached with the right MD5:

* ``mirror`` set: an http(s)/file URL (a base URL the file names are joined to) or a local folder
  holding the upstream file names. A mirror replaces the upstream hosts entirely.
* otherwise the given upstream base URLs, in order.

A file is streamed to a temp name and renamed into the cache (`atomic_path`) only once its MD5
matches, so a failed fetch leaves neither a bad file nor a temp file behind.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError
from ..fsutil import atomic_path

_CHUNK = 1 << 20
_URL_SCHEMES = ("http://", "https://", "file://")


def file_digest(path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in chunks (CIFAR-10's tarball is 170 MB)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path) -> str:
    """MD5, the checksum torchvision publishes for the upstream files."""
    return file_digest(path, "md5")


def check_mirror(mirror: str, dataset: str = "download") -> None:
    """A mirror is "" (upstream), an http(s)/file URL, or an existing folder; fail fast otherwise."""
    mirror = mirror.strip()
    if mirror and not mirror.lower().startswith(_URL_SCHEMES) and not Path(mirror).expanduser().is_dir():
        raise UserError(f"{dataset}: download.mirror {mirror!r} is neither an http(s)/file URL nor an existing folder")


def fetch_files(
    dataset: str,
    files: Sequence[tuple[str, str]],
    *,
    raw_dir: Path,
    mirror: str = "",
    upstream: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> dict[str, Path]:
    """Make sure every ``(file, md5)`` lies verified in ``raw_dir``; return file -> cached path.

    A cached file with the right MD5 is reused; one with a wrong MD5 is deleted and fetched again.
    """
    raw_dir = Path(raw_dir)
    paths = {f: raw_dir / f for f, _ in files}
    missing = []
    for f, md5 in files:
        cached = paths[f]
        if cached.is_file():
            if file_md5(cached) == md5:
                continue
            cached.unlink()  # stale or damaged: useless, and never to be mistaken for good
        missing.append((f, md5))
    if not missing:
        return paths

    mirror = mirror.strip()
    if mirror and not mirror.lower().startswith(_URL_SCHEMES):
        _copy_from_folder(dataset, missing, Path(mirror).expanduser(), raw_dir)
        return paths

    bases = [mirror] if mirror else list(upstream)
    failed: list[str] = []
    reasons: list[str] = []
    dead: dict[str, str] = {}  # base URL -> why it could not be reached (skip it for later files)
    for f, md5 in missing:
        if not _download_one(dataset, f, md5, bases, raw_dir, timeout_s, dead, reasons):
            failed.append(f)
    if failed:
        where = " or ".join(bases) if bases else "no upstream hosts"
        why = "; ".join(dict.fromkeys(reasons)) or "no source"
        if mirror:
            hint = "check download.mirror, or set it to a folder that holds these files"
        else:
            hint = "set download.mirror to a URL or a folder that holds these files"
        raise UserError(f"{dataset}: could not download {', '.join(failed)} from {where} ({why}); {hint}")
    return paths


def _copy_from_folder(dataset: str, files: Sequence[tuple[str, str]], folder: Path, raw_dir: Path) -> None:
    check_mirror(str(folder), dataset)
    absent = [f for f, _ in files if not (folder / f).is_file()]
    if absent:
        raise UserError(
            f"{dataset}: mirror folder {folder} has no {', '.join(absent)}; "
            "put the upstream files there or point download.mirror elsewhere"
        )
    for f, md5 in files:
        src = folder / f
        with open(src, "rb") as fh:
            _store_verified(dataset, f, md5, fh, src.stat().st_size, str(src), raw_dir)


def _download_one(dataset, f, md5, bases, raw_dir, timeout_s, dead, reasons) -> bool:
    """Try each base URL in turn; True once ``f`` is cached. An MD5 mismatch raises at once."""
    md5_error: UserError | None = None
    for base in bases:
        if base in dead:
            reasons.append(dead[base])
            continue
        url = _join_url(base, f)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                _store_verified(dataset, f, md5, resp, total, url, raw_dir)
            return True
        except UserError as exc:  # wrong MD5: another host may still serve the good file
            md5_error = exc
        except urllib.error.HTTPError as exc:  # the host answered; only this file is missing
            reasons.append(f"{urllib.parse.urlsplit(url).netloc or url}: HTTP {exc.code} {exc.reason}")
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            reason = _short_reason(exc, timeout_s)
            reasons.append(reason)
            if not url.lower().startswith("file:"):  # an unreachable host stays unreachable
                dead[base] = reason
    if md5_error is not None:
        raise md5_error
    return False


def _store_verified(
    dataset: str, f: str, md5: str, src: BinaryIO, total: int | None, source: str, raw_dir: Path
) -> None:
    """Stream ``src`` into ``raw_dir/f`` through a temp file; keep it only if the MD5 matches."""
    from tqdm import tqdm

    h = hashlib.md5()
    with (
        atomic_path(raw_dir / f) as tmp,
        open(tmp, "wb") as out,
        tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{dataset}: {f}", disable=None, leave=False
        ) as bar,
    ):
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            out.write(chunk)
            h.update(chunk)
            bar.update(len(chunk))
        out.close()
        got = h.hexdigest()
        if got != md5:  # raising inside atomic_path deletes the temp file
            raise UserError(
                f"{dataset}: {f} from {source} has md5 {got}, expected {md5} "
                "(corrupt or truncated download); nothing was written"
            )


def _join_url(base: str, f: str) -> str:
    return (base if base.endswith("/") else base + "/") + urllib.parse.quote(f)


def _short_reason(exc: BaseException, timeout_s: float) -> str:
    """A few words on why a fetch failed, e.g. 'Connection refused' or 'timed out after 60 s'."""
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
        return f"timed out after {timeout_s:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"
