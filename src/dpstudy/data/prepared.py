"""The prepared datasets: one ``<name>.pt`` per dataset, a plain dict of uint8 images and int64
labels that `prepare` writes once (one DVC stage's work) and `load_prepared` reads back with
``torch.load(weights_only=True)``. Nothing is decoded again per run (STYLE.md lesson 7).

The output is written only after every upstream file verified, through `atomic_path`, so a failed
run leaves no temporary file and never replaces an earlier good ``<name>.pt``.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..fsutil import atomic_path
from .datasets import build
from .fetch import file_digest

# Version of the prepared-file layout; bump when the dict written by `prepare` changes.
FORMAT = 1


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
    data = build(
        name,
        raw_dir=raw_dir,
        mirror=mirror,
        upstream_split=upstream_split,
        split_seed=split_seed,
        test_fraction=test_fraction,
        timeout_s=timeout_s,
        upstream=upstream,
    )
    out_path = Path(out_dir) / f"{name}.pt"
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


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes (the data checksum stored in checkpoints)."""
    return file_digest(path, "sha256")
