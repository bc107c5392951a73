"""The three datasets, from upstream files to tensors: which files each needs, how they are
decoded, and how they are split into train and test.

`build` does the work that `dpstudy.data.prepared.prepare` writes to disk: digits comes from
scikit-learn (bundled); MNIST and CIFAR-10 come from files that `fetch_files` caches and checks
against torchvision's MD5s, from torchvision's upstream hosts (``MNIST.mirrors``, ``CIFAR10.url``)
unless a mirror replaces them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..names import DATASET_NAMES
from .fetch import fetch_files
from .rawformats import read_cifar_tar, read_idx

DATASETS = DATASET_NAMES  # `build` below handles each; names.py lets dpstudy.config check them torch-free
UPSTREAM_SPLITS = ("full", "test_only")

DIGITS_SOURCE = "sklearn.datasets.load_digits"
DIGIT_CLASSES = [str(d) for d in range(10)]


def build(
    name: str,
    *,
    raw_dir: Path,
    mirror: str,
    upstream_split: str,
    split_seed: int,
    test_fraction: float,
    timeout_s: float,
    upstream: list[str] | None,
) -> dict:
    """Fetch (if needed), verify and decode dataset ``name``; return its tensors, classes, split and
    ``source_md5`` (the fields of `Prepared` but ``name``).

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

    if name == "digits":
        return _prepare_digits(split_seed, test_fraction)
    files = _upstream_files(name, upstream_split)
    bases = list(upstream) if upstream is not None else _upstream_bases(name)
    paths = fetch_files(name, files, raw_dir=Path(raw_dir) / name, mirror=mirror, upstream=bases, timeout_s=timeout_s)
    if name == "mnist":
        data = _prepare_mnist(paths, upstream_split, split_seed, test_fraction)
    else:
        data = _prepare_cifar10(paths, upstream_split, split_seed, test_fraction)
    data["source_md5"] = {f: md5 for f, md5 in files}
    return data


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
