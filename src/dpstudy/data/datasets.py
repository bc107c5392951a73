"""Download, verify and prepare the three datasets as compact uint8 tensors (one DVC stage's work).

``prepare(name, ...)`` fetches the upstream files (or reuses the cached ones), checks every file
against torchvision's MD5, decodes them and writes ``out_dir/<name>.pt``: a plain dict of tensors
that `load_prepared` reads back with ``torch.load(weights_only=True)``. Nothing is decoded again per
run (STYLE.md lesson 7).

Where the files come from, in order, for each file not already cached with the right MD5:

* ``mirror`` set: an http(s)/file URL (a base URL the file names are joined to) or a local folder
  holding the upstream file names. A mirror replaces the upstream hosts entirely.
* otherwise torchvision's own upstream hosts (``MNIST.mirrors``, ``CIFAR10.url``).

Failure policy: a downloaded file is verified before it is renamed into the cache, the output is
written only after everything verified, and both go through `atomic_path`, so a failed run leaves
no temporary files and never replaces an earlier good ``<name>.pt``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import pickle
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

import numpy as np
import torch

from ..errors import UserError
from ..fsutil import atomic_path
from ..names import DATASET_NAMES

DATASETS = DATASET_NAMES  # `prepare` below handles each; names.py lets dpstudy.config check them torch-free
UPSTREAM_SPLITS = ("full", "test_only")

# Version of the prepared-file layout; bump when the dict written by `prepare` changes.
FORMAT = 1

DIGITS_SOURCE = "sklearn.datasets.load_digits"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGIT_CLASSES = [str(d) for d in range(10)]

_CHUNK = 1 << 20
_URL_SCHEMES = ("http://", "https://", "file://")


@dataclass
class Prepared:
    """One prepared dataset: uint8 images (N, C, H, W), int64 labels (N,), and where they came from."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    split: str  # "official" or "seeded(seed=S,test_fraction=F)"
    source_md5: dict[str, str]  # upstream file name -> md5

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def size(self) -> int:
        return int(self.train_images.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------------------------
# Public entry points


def prepare(
    name: str,
    *,
    raw_dir: Path,
    out_dir: Path,
    mirror: str = "",
    upstream_split: str = "full",
    split_seed: int = 0,
    test_fraction: float = 0.2,
    timeout_s: float = 60.0,
    upstream: list[str] | None = None,
) -> Path:
    """Fetch (if needed), verify and convert dataset ``name``; write ``out_dir/<name>.pt``; return it.

    ``upstream`` overrides the upstream base URLs (None = torchvision's); tests point it at a
    closed loopback port to simulate a machine without internet.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r} (allowed: {', '.join(DATASETS)})")
    if upstream_split not in UPSTREAM_SPLITS:
        raise UserError(f"{name}: upstream_split must be one of {', '.join(UPSTREAM_SPLITS)}, got {upstream_split!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise UserError(f"{name}: test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise UserError(f"{name}: split_seed must be an integer >= 0, got {split_seed!r}")

    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if name == "digits":
        data = _prepare_digits(split_seed, test_fraction)
    else:
        files = _upstream_files(name, upstream_split)
        bases = list(upstream) if upstream is not None else _upstream_bases(name)
        paths = fetch_files(name, files, raw_dir=raw_dir / name, mirror=mirror, upstream=bases, timeout_s=timeout_s)
        source_md5 = {f: md5 for f, md5 in files}
        if name == "mnist":
            data = _prepare_mnist(paths, upstream_split, split_seed, test_fraction)
        else:
            data = _prepare_cifar10(paths, upstream_split, split_seed, test_fraction)
        data["source_md5"] = source_md5

    out_path = out_dir / f"{name}.pt"
    record = {"format": FORMAT, "name": name, **data}
    # Serialise in memory first: torch.save names the zip's top folder after the file it writes,
    # and atomic_path's temp name is random, so saving straight to it would make the bytes vary.
    buf = io.BytesIO()
    torch.save(record, buf)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return out_path


def load_prepared(path: Path) -> Prepared:
    """Read a file written by `prepare`; a missing or foreign file is a one-line `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no prepared dataset there (run the download stage first)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle or allow-list errors all mean "not our file"
        # torch's own text (OSError "Invalid argument", advice on weights_only=False) would mislead:
        # the fix is never to load it unsafely but to prepare it again.
        raise UserError(
            f"{path}: not a prepared dataset file; re-run the download stage ({_unreadable_reason(path, exc)})"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise UserError(
            f"{path}: not a prepared dataset file of format {FORMAT} (found {found!r}); re-run the download stage"
        )
    try:
        prepared = Prepared(**{k: obj[k] for k in Prepared.__dataclass_fields__})
    except KeyError as exc:
        raise UserError(f"{path}: prepared dataset file lacks key {exc}; re-run the download stage") from exc
    for part in ("train", "test"):
        images, labels = getattr(prepared, f"{part}_images"), getattr(prepared, f"{part}_labels")
        if (
            images.dtype != torch.uint8
            or images.ndim != 4
            or labels.dtype != torch.int64
            or labels.shape != images.shape[:1]
        ):
            raise UserError(f"{path}: {part} tensors have unexpected dtype or shape; re-run the download stage")
    return prepared


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """A few words on why torch.load refused a file, in place of torch's message."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        return err.strerror or type(err).__name__
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        return "not the zip archive torch.save writes"
    if isinstance(exc, pickle.UnpicklingError) and zipfile.is_zipfile(path):
        return "holds objects other than tensors and plain data"
    return "damaged or truncated"


def file_digest(path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in chunks (CIFAR-10's tarball is 170 MB)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes (the data checksum stored in checkpoints)."""
    return file_digest(path, "sha256")


def file_md5(path) -> str:
    """MD5, the checksum torchvision publishes for the upstream files."""
    return file_digest(path, "md5")


# --------------------------------------------------------------------------------------------
# Upstream files (names and MD5s straight from torchvision, never copied here)


def _upstream_files(name: str, upstream_split: str) -> list[tuple[str, str]]:
    from torchvision.datasets import CIFAR10, MNIST

    if name == "mnist":
        files = [(f, md5) for f, md5 in MNIST.resources]
        if upstream_split == "test_only":
            files = [(f, md5) for f, md5 in files if f.startswith("t10k-")]
        return files
    # CIFAR-10 is one tarball; test_only still needs all of it and reads just the test batch.
    return [(CIFAR10.filename, CIFAR10.tgz_md5)]


def _upstream_bases(name: str) -> list[str]:
    from torchvision.datasets import CIFAR10, MNIST

    if name == "mnist":
        return list(MNIST.mirrors)
    return [CIFAR10.url.rsplit("/", 1)[0] + "/"]


# --------------------------------------------------------------------------------------------
# Fetching


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


# --------------------------------------------------------------------------------------------
# Splits


def seeded_split(n: int, seed: int, test_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed train/test index split: the first round(n * test_fraction) of a seeded permutation
    are test. Indices are sorted within each part so the prepared file is stable."""
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise UserError(f"test_fraction {test_fraction} leaves an empty train or test part of {n} images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _split_record(images: torch.Tensor, labels: torch.Tensor, seed: int, test_fraction: float) -> dict:
    train, test = seeded_split(len(labels), seed, test_fraction)
    return {
        "train_images": images[train].contiguous(),
        "train_labels": labels[train].contiguous(),
        "test_images": images[test].contiguous(),
        "test_labels": labels[test].contiguous(),
        "split": f"seeded(seed={seed},test_fraction={float(test_fraction)!r})",
    }


def _official_record(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]) -> dict:
    return {
        "train_images": train[0],
        "train_labels": train[1],
        "test_images": test[0],
        "test_labels": test[1],
        "split": "official",
    }


# --------------------------------------------------------------------------------------------
# digits (scikit-learn, bundled)


def _prepare_digits(seed: int, test_fraction: float) -> dict:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.ascontiguousarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    target = np.ascontiguousarray(bunch.target, dtype=np.int64)
    md5 = hashlib.md5(raw.tobytes() + target.tobytes()).hexdigest()
    images = torch.from_numpy(np.rint(raw * 255 / 16).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(target)
    return {
        **_split_record(images, labels, seed, test_fraction),
        "classes": list(DIGIT_CLASSES),
        "source_md5": {DIGITS_SOURCE: md5},
    }


# --------------------------------------------------------------------------------------------
# MNIST (gzipped IDX files)


def read_idx(path: Path, *, dataset: str = "mnist") -> torch.Tensor:
    """Decode a gzipped IDX file: images (magic 2051) -> uint8 (N, 1, H, W); labels (2049) -> int64 (N,)."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{dataset}: {path.name} is not a readable gzip file ({exc}); delete it and retry") from exc
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic == 2051 and len(data) >= 16:
        n, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
        expected, shape, offset = 16 + n * rows * cols, (n, 1, rows, cols), 16
    elif magic == 2049 and len(data) >= 8:
        n = int.from_bytes(data[4:8], "big")
        expected, shape, offset = 8 + n, (n,), 8
    else:
        raise UserError(f"{dataset}: {path.name} is not an IDX image (2051) or label (2049) file (magic {magic})")
    if len(data) != expected:
        raise UserError(f"{dataset}: {path.name} holds {len(data)} bytes, its header promises {expected}")
    array = np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)
    if magic == 2049:
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array.copy())


def _read_mnist_pair(paths: dict[str, Path], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(paths[f"{prefix}-images-idx3-ubyte.gz"])
    labels = read_idx(paths[f"{prefix}-labels-idx1-ubyte.gz"])
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(
            f"mnist: {prefix} images and labels do not match ({tuple(images.shape)} vs {tuple(labels.shape)})"
        )
    return images, labels


def _prepare_mnist(paths, upstream_split, seed, test_fraction) -> dict:
    test = _read_mnist_pair(paths, "t10k")
    if upstream_split == "test_only":
        record = _split_record(*test, seed, test_fraction)
    else:
        record = _official_record(_read_mnist_pair(paths, "train"), test)
    return {**record, "classes": list(DIGIT_CLASSES)}


# --------------------------------------------------------------------------------------------
# CIFAR-10 (pickled batches inside one tar.gz)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch dicts and numpy arrays, nothing else (no arbitrary callables)."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes):
    # The batches are Python 2 pickles; latin1 maps their byte strings 1:1 (as torchvision does).
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def _decode_cifar_batch(data: bytes, member: str, dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        batch = _unpickle(data)
        rows = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as exc:
        raise UserError(f"{dataset}: {member} is not a CIFAR batch ({type(exc).__name__}: {exc})") from exc
    if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32 or labels.shape != (rows.shape[0],):
        raise UserError(
            f"{dataset}: {member} has data {rows.shape} and labels {labels.shape}, expected (N, 3072) and (N,)"
        )
    # Each 3072-byte row is 1024 red, then 1024 green, then 1024 blue bytes, each plane row-major:
    # exactly C, H, W order.
    return torch.from_numpy(rows.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_cifar_tar(
    tar_path: Path,
    members: Sequence[tuple[str, str]],
    *,
    base_folder: str = "cifar-10-batches-py",
    meta_md5: str | None = None,
    dataset: str = "cifar10",
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """Read the pickled batches ``members`` (name, md5) from a CIFAR tar.gz in one pass.

    Returns one (images uint8 (N, 3, 32, 32), labels int64 (N,)) per member, in the order given,
    and the class names from ``batches.meta`` (the standard ten if the tar has none). Each member's
    MD5 is checked before it is unpickled.
    """
    tar_path = Path(tar_path)
    wanted = {f"{base_folder}/{m}": md5 for m, md5 in members}
    meta_name = f"{base_folder}/batches.meta"
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            for info in tar:  # sequential: one decompression pass over the archive
                if info.isfile() and (info.name in wanted or info.name == meta_name):
                    found[info.name] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{dataset}: {tar_path.name} is not a readable tar.gz ({exc}); delete it and retry") from exc

    batches = []
    for member, md5 in wanted.items():
        if member not in found:
            raise UserError(f"{dataset}: {tar_path.name} has no member {member}")
        got = hashlib.md5(found[member]).hexdigest()
        if got != md5:
            raise UserError(
                f"{dataset}: {member} in {tar_path.name} has md5 {got}, expected {md5}; nothing was written"
            )
        batches.append(_decode_cifar_batch(found[member], member, dataset))

    classes = list(CIFAR10_CLASSES)
    if meta_name in found:
        got = hashlib.md5(found[meta_name]).hexdigest()
        if meta_md5 is not None and got != meta_md5:
            raise UserError(f"{dataset}: {meta_name} in {tar_path.name} has md5 {got}, expected {meta_md5}")
        try:
            classes = [str(c) for c in _unpickle(found[meta_name])["label_names"]]
        except Exception as exc:
            raise UserError(f"{dataset}: {meta_name} has no label_names ({type(exc).__name__}: {exc})") from exc
    return batches, classes


def _prepare_cifar10(paths, upstream_split, seed, test_fraction) -> dict:
    from torchvision.datasets import CIFAR10

    tar_path = paths[CIFAR10.filename]
    train_list = [] if upstream_split == "test_only" else [tuple(m) for m in CIFAR10.train_list]
    test_list = [tuple(m) for m in CIFAR10.test_list]
    batches, classes = read_cifar_tar(
        tar_path, train_list + test_list, base_folder=CIFAR10.base_folder, meta_md5=CIFAR10.meta["md5"]
    )

    def cat(parts):
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    test = cat(batches[len(train_list) :])
    if upstream_split == "test_only":
        record = _split_record(*test, seed, test_fraction)
    else:
        record = _official_record(cat(batches[: len(train_list)]), test)
    return {**record, "classes": classes}
