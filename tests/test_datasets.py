"""dpstudy.data's fetch, rawformats, datasets and prepared modules on real data: sklearn digits,
the real MNIST test files from the shared folder (through a mirror folder, a loopback HTTP mirror
and a corrupted copy), and CIFAR-10's tar reader on a tar built here in the real layout. No
network beyond 127.0.0.1."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, MNIST

from dpstudy.data import datasets, fetch, rawformats
from dpstudy.data.prepared import file_sha256, load_prepared, prepare
from dpstudy.errors import UserError

MNIST_RAW = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist" / "raw"
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Label counts of the official MNIST test set (10000 images).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def leftovers(*dirs: Path) -> list[Path]:
    """Temporary files (atomic_path's ``.<name>.*.tmp``) anywhere under ``dirs``."""
    return [p for d in dirs if d.exists() for p in d.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def mnist_raw() -> Path:
    if not all((MNIST_RAW / f).is_file() for f in TEST_FILES):
        pytest.skip(f"real MNIST test files not found in {MNIST_RAW} (the repository's sibling shared/ folder)")
    return MNIST_RAW


@pytest.fixture
def corrupt_mirror(tmp_path, mnist_raw) -> Path:
    """A mirror folder whose t10k-images file is truncated to its first half."""
    folder = tmp_path / "corrupt_mirror"
    folder.mkdir()
    images = (mnist_raw / TEST_FILES[0]).read_bytes()
    (folder / TEST_FILES[0]).write_bytes(images[: len(images) // 2])
    shutil.copy(mnist_raw / TEST_FILES[1], folder / TEST_FILES[1])
    return folder


@pytest.fixture
def http_mirror(mnist_raw):
    """Serve the real MNIST raw folder on a loopback port; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(mnist_raw)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mnist_test_only(tmp_path, mirror, **kw):
    return prepare(
        "mnist",
        raw_dir=tmp_path / "raw",
        out_dir=tmp_path / "out",
        mirror=str(mirror),
        upstream_split="test_only",
        timeout_s=10,
        **kw,
    )


# --------------------------------------------------------------------------------------------
# digits


def test_digits_prepare_real_data_and_stable_split(tmp_path):
    from sklearn.datasets import load_digits

    path = prepare("digits", raw_dir=tmp_path / "raw", out_dir=tmp_path / "a", split_seed=0, test_fraction=0.2)
    assert path == tmp_path / "a" / "digits.pt"
    d = load_prepared(path)
    assert (len(d.train_labels), len(d.test_labels)) == (1797 - 359, 359)  # round(1797 * 0.2) = 359
    assert d.train_images.dtype == d.test_images.dtype == torch.uint8
    assert d.train_labels.dtype == torch.int64
    assert d.train_images.shape[1:] == (1, 8, 8) and (d.channels, d.size, d.num_classes) == (1, 8, 10)
    assert d.classes == [str(i) for i in range(10)]
    assert d.split == "seeded(seed=0,test_fraction=0.2)"
    both = torch.cat([d.train_images, d.test_images])
    assert both.min() == 0 and both.max() == 255
    assert set(torch.cat([d.train_labels, d.test_labels]).tolist()) == set(range(10))
    assert list(d.source_md5) == ["sklearn.datasets.load_digits"]

    # The parts are exactly sklearn's images at the seeded indices, scaled 0..16 -> 0..255.
    bunch = load_digits()
    expected = torch.from_numpy(np.rint(bunch.images * 255 / 16).astype(np.uint8)).unsqueeze(1)
    train_idx, test_idx = datasets.seeded_split(1797, 0, 0.2)
    assert torch.equal(d.train_images, expected[train_idx]) and torch.equal(d.test_images, expected[test_idx])
    assert torch.equal(d.test_labels, torch.from_numpy(bunch.target[test_idx.numpy()]).long())

    again = prepare("digits", raw_dir=tmp_path / "raw", out_dir=tmp_path / "b", split_seed=0, test_fraction=0.2)
    assert again.read_bytes() == path.read_bytes()

    other = load_prepared(prepare("digits", raw_dir=tmp_path / "raw", out_dir=tmp_path / "c", split_seed=1))
    assert not torch.equal(other.test_labels, d.test_labels) or not torch.equal(other.test_images, d.test_images)
    quarter = load_prepared(prepare("digits", raw_dir=tmp_path / "raw", out_dir=tmp_path / "d", test_fraction=0.25))
    assert len(quarter.test_labels) == round(1797 * 0.25)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"name": "imagenet"}, ["imagenet", "digits, mnist, cifar10"]),
        ({"name": "mnist", "upstream_split": "half"}, ["half", "full, test_only"]),
        ({"name": "digits", "test_fraction": 0.0}, ["test_fraction", "between 0 and 1"]),
        ({"name": "digits", "test_fraction": 1.0}, ["test_fraction", "between 0 and 1"]),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs, words):
    with pytest.raises(UserError) as err:
        prepare(raw_dir=tmp_path / "raw", out_dir=tmp_path / "out", **kwargs)
    for word in words:
        assert word in str(err.value)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# MNIST through mirrors


def check_mnist_test_only(path: Path) -> None:
    d = load_prepared(path)
    assert (len(d.train_labels), len(d.test_labels)) == (8000, 2000)
    assert d.train_images.shape == (8000, 1, 28, 28) and d.test_images.dtype == torch.uint8
    assert d.test_labels.dtype == torch.int64
    assert torch.bincount(torch.cat([d.train_labels, d.test_labels])).tolist() == MNIST_TEST_COUNTS
    assert d.source_md5 == {f: md5 for f, md5 in MNIST.resources if f.startswith("t10k-")}
    assert d.split == "seeded(seed=0,test_fraction=0.2)" and d.num_classes == 10


def test_mnist_from_mirror_folder_then_from_cache(tmp_path, mnist_raw):
    path = mnist_test_only(tmp_path, mnist_raw)
    assert path == tmp_path / "out" / "mnist.pt"
    check_mnist_test_only(path)
    for f, md5 in MNIST.resources[2:]:
        assert fetch.file_md5(tmp_path / "raw" / "mnist" / f) == md5
    first = path.read_bytes()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert mnist_test_only(tmp_path, empty).read_bytes() == first  # served from the raw cache
    assert leftovers(tmp_path) == []


def test_mnist_cached_file_with_wrong_md5_is_fetched_again(tmp_path, mnist_raw):
    bad = tmp_path / "raw" / "mnist" / TEST_FILES[0]
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not mnist")
    check_mnist_test_only(mnist_test_only(tmp_path, mnist_raw))
    assert bad.read_bytes() == (mnist_raw / TEST_FILES[0]).read_bytes()


def test_mnist_from_http_mirror(tmp_path, http_mirror):
    check_mnist_test_only(mnist_test_only(tmp_path, http_mirror))
    assert leftovers(tmp_path) == []


def test_mnist_corrupt_download_is_refused_and_keeps_nothing(tmp_path, corrupt_mirror):
    with pytest.raises(UserError) as err:
        mnist_test_only(tmp_path, corrupt_mirror)
    msg = str(err.value)
    assert "md5" in msg and TEST_FILES[0] in msg and "nothing was written" in msg and "\n" not in msg
    assert not (tmp_path / "out" / "mnist.pt").exists()
    assert not (tmp_path / "raw" / "mnist" / TEST_FILES[0]).exists()
    assert leftovers(tmp_path) == []


def test_corrupt_http_download_is_refused(tmp_path, corrupt_mirror):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(corrupt_mirror)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz from http://127\.0\.0\.1:\d+/.* has md5"):
            mnist_test_only(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert not (tmp_path / "raw" / "mnist" / TEST_FILES[0]).exists()
    assert leftovers(tmp_path) == []


def test_failed_run_keeps_earlier_good_output(tmp_path, mnist_raw, corrupt_mirror):
    good = mnist_test_only(tmp_path, mnist_raw)
    before = good.read_bytes()
    shutil.rmtree(tmp_path / "raw")
    with pytest.raises(UserError, match="md5"):
        mnist_test_only(tmp_path, corrupt_mirror)
    assert good.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_no_network_and_no_mirror_names_files_and_setting(tmp_path):
    upstream = f"http://127.0.0.1:{closed_port()}/"
    with pytest.raises(UserError) as err:
        prepare(
            "mnist",
            raw_dir=tmp_path / "raw",
            out_dir=tmp_path / "out",
            upstream_split="test_only",
            upstream=[upstream],
            timeout_s=5,
        )
    msg = str(err.value)
    assert msg.startswith("mnist: could not download ")
    assert all(f in msg for f in TEST_FILES) and upstream in msg and "download.mirror" in msg
    assert "\n" not in msg
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert leftovers(tmp_path) == []


def test_full_split_needs_train_files_in_mirror(tmp_path, mnist_raw):
    with pytest.raises(UserError) as err:
        prepare("mnist", raw_dir=tmp_path / "raw", out_dir=tmp_path / "out", mirror=str(mnist_raw))
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(mnist_raw) in msg and "download.mirror" in msg


def test_mirror_that_is_neither_url_nor_folder(tmp_path):
    with pytest.raises(UserError, match="neither an http"):
        mnist_test_only(tmp_path, tmp_path / "no-such-folder")


def test_read_idx_rejects_wrong_magic(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress((1234).to_bytes(4, "big") + bytes(12)))
    with pytest.raises(UserError, match="magic 1234"):
        rawformats.read_idx(bad)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress((2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes(3)))
    with pytest.raises(UserError, match="header promises 13"):
        rawformats.read_idx(short)


# --------------------------------------------------------------------------------------------
# CIFAR-10


def test_cifar10_fake_tarball_is_refused_by_md5(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / CIFAR10.filename).write_bytes(b"\x1f\x8b not really cifar")
    with pytest.raises(UserError) as err:
        prepare("cifar10", raw_dir=tmp_path / "raw", out_dir=tmp_path / "out", mirror=str(mirror))
    assert "md5" in str(err.value) and CIFAR10.filename in str(err.value) and CIFAR10.tgz_md5 in str(err.value)
    assert not (tmp_path / "out" / "cifar10.pt").exists()
    assert not (tmp_path / "raw" / "cifar10" / CIFAR10.filename).exists()
    assert leftovers(tmp_path) == []


def cifar_batch(n: int, start: int) -> bytes:
    """A batch in the CIFAR pickle layout: rows of 1024 R, 1024 G, 1024 B bytes, row-major planes."""
    rows = np.zeros((n, 3072), dtype=np.uint8)
    for i in range(n):
        rows[i, :1024] = 10 + start + i  # red plane
        rows[i, 1024:2048] = 100 + start + i  # green plane
        rows[i, 2048:] = 200 + start + i  # blue plane
        rows[i, 1 * 32 + 2] = 7  # red pixel at row 1, column 2
    return pickle.dumps(
        {
            "batch_label": "test",
            "labels": list(range(start, start + n)),
            "data": rows,
            "filenames": [f"{k}.png" for k in range(n)],
        },
        protocol=2,
    )


def build_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_read_cifar_tar_shapes_and_chw_order(tmp_path):
    b1, b2 = cifar_batch(3, 0), cifar_batch(2, 3)
    meta = pickle.dumps({"label_names": [f"c{k}" for k in range(10)], "num_cases_per_batch": 3}, protocol=2)
    tar = tmp_path / "tiny.tar.gz"
    build_tar(tar, {"batches.meta": meta, "data_batch_1": b1, "test_batch": b2})
    md5 = lambda b: hashlib.md5(b).hexdigest()  # noqa: E731

    batches, classes = rawformats.read_cifar_tar(
        tar, [("data_batch_1", md5(b1)), ("test_batch", md5(b2))], meta_md5=md5(meta)
    )
    assert classes == [f"c{k}" for k in range(10)]
    (x1, y1), (x2, y2) = batches
    assert x1.shape == (3, 3, 32, 32) and x2.shape == (2, 3, 32, 32) and x1.dtype == torch.uint8
    assert y1.tolist() == [0, 1, 2] and y2.tolist() == [3, 4] and y1.dtype == torch.int64
    assert x2[1, 0, 0, 0] == 14 and x2[1, 1, 31, 31] == 104 and x2[1, 2, 5, 9] == 204  # R, G, B planes
    assert x1[0, 0, 1, 2] == 7 and x1[0, 0, 2, 1] == 10  # (row 1, col 2), not transposed

    # Without batches.meta the standard class names apply.
    plain = tmp_path / "plain.tar.gz"
    build_tar(plain, {"test_batch": b2})
    _, classes = rawformats.read_cifar_tar(plain, [("test_batch", md5(b2))])
    assert classes == rawformats.CIFAR10_CLASSES

    with pytest.raises(UserError, match=r"test_batch.*has md5"):
        rawformats.read_cifar_tar(tar, [("test_batch", md5(b1))])
    with pytest.raises(UserError, match="no member cifar-10-batches-py/data_batch_2"):
        rawformats.read_cifar_tar(tar, [("data_batch_2", md5(b1))])


def test_read_cifar_tar_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = pickle.dumps(Evil(), protocol=2)
    tar = tmp_path / "evil.tar.gz"
    build_tar(tar, {"test_batch": evil})
    with pytest.raises(UserError, match=r"refusing to load (__builtin__|builtins)\.print"):
        rawformats.read_cifar_tar(tar, [("test_batch", hashlib.md5(evil).hexdigest())])


# --------------------------------------------------------------------------------------------
# load_prepared and file_sha256


def test_load_prepared_errors(tmp_path):
    with pytest.raises(UserError, match="no prepared dataset"):
        load_prepared(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(UserError, match="not a prepared dataset file"):
        load_prepared(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="not a prepared dataset file of format"):
        load_prepared(other)


def test_file_sha256(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 3_000_000)
    assert file_sha256(f) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


# --------------------------------------------------------------------------------------------
# Corrupt prepared files: one line that says to prepare the data again (issue 12)


def truncated_prepared(digits_dir: Path, folder: Path) -> Path:
    """A real digits.pt written by `prepare`, cut to its first half."""
    data = (digits_dir / "digits.pt").read_bytes()
    folder.mkdir()
    path = folder / "digits.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def random_prepared(folder: Path) -> Path:
    folder.mkdir()
    path = folder / "digits.pt"
    path.write_bytes(np.random.default_rng(12).integers(0, 256, 64_000, dtype=np.uint8).tobytes())
    return path


CORRUPT = {"truncated": truncated_prepared, "random": lambda digits_dir, folder: random_prepared(folder)}


def check_corrupt_message(msg: str, path: Path) -> None:
    assert msg.startswith(f"{path}: not a prepared dataset file; re-run the download stage"), msg
    assert "\n" not in msg
    assert "weights_only" not in msg and "Invalid argument" not in msg and "Errno" not in msg, msg


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_prepared_file_says_to_prepare_again(tmp_path, digits_dir, kind):
    path = CORRUPT[kind](digits_dir, tmp_path / "prepared")
    with pytest.raises(UserError) as err:
        load_prepared(path)
    check_corrupt_message(str(err.value), path)


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_corrupt_prepared_file_through_the_cli_is_one_error_line(tmp_path, digits_dir, kind):
    from conftest import run_cli, write_params

    path = CORRUPT[kind](digits_dir, tmp_path / "prepared")
    params = write_params(tmp_path / "params.yaml", {"preset": "quick", "profile_dataloader.dataset": "digits"})
    done = run_cli(
        "profile_dataloader",
        "--params",
        str(params),
        "--data",
        str(path.parent),
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    check_corrupt_message(lines[0].removeprefix("error: "), path)
    assert not (tmp_path / "out").exists()
