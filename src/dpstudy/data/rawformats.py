"""Readers of the upstream file formats: MNIST's gzipped IDX files and CIFAR's tar of pickled
batches (read through an unpickler that admits numpy arrays and nothing else).

Both return uint8 images (N, C, H, W) and int64 labels (N,); anything malformed is a one-line
`UserError` that names the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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
