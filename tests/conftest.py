"""Shared fixtures: the repository's own params.yaml as the base of every test config, and small
real data (scikit-learn's digits) prepared once per session."""

from __future__ import annotations

import copy
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the workplace's shared folder, beside the checkout


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def set_key(params: dict, dotted: str, value) -> dict:
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return params


def write_params(path: Path, overrides: dict | None = None, base: dict | None = None) -> Path:
    """params.yaml from the repository's, with ``{"section.key": value}`` overrides applied."""
    params = copy.deepcopy(base if base is not None else repo_params())
    for dotted, value in (overrides or {}).items():
        set_key(params, dotted, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def single_config_train_dp(**extra) -> dict:
    """Overrides that cut every train_dp grid to one small configuration (one seed, one mode,
    loader, rule and batch, one epoch), plus ``extra``: for tests that need a real train_dp run."""
    overrides = {"train_dp.seeds": [0], "train_dp.device": "cpu"}
    for grid in ("lenet_utilization", "lenet_lr_scaling", "vgg"):
        overrides |= {
            f"train_dp.{grid}.modes": ["single"],
            f"train_dp.{grid}.loaders": ["resident"],
            f"train_dp.{grid}.lr_rules": ["linear"],
            f"train_dp.{grid}.batch_sizes": [64],
            f"train_dp.{grid}.recipe.epochs": 1,
        }
    return overrides | extra


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dpstudy ...`` as a real process, as DVC would run it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "dpstudy", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """A data/prepared folder holding digits.pt, prepared for real once per session."""
    from dpstudy.data.prepared import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare("digits", raw_dir=out / "raw", out_dir=out, split_seed=0, test_fraction=0.2)
    return out


def tracked_copy(dest: Path) -> Path:
    """The files git tracks (what a fresh clone has), as a new git repository."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.email=ci@dpstudy", "-c", "user.name=ci"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def dvc(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """The venv's `dvc` as a real process, with `dpstudy` and `torchrun` on its PATH and the
    repository's own MLflow store (no inherited MLFLOW_TRACKING_URI)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [os.path.join(bin_dir, "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """A real `dvc repro` of the whole quick pipeline in a fresh copy of the repository, once per
    session; returns the copy (results/, mlflow.db, mlartifacts/, dvc.lock). Treat it as read-only:
    a test that changes it works on its own copy."""
    repo = tracked_copy(tmp_path_factory.mktemp("quick") / "repo")
    first = dvc("repro", cwd=repo)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    (repo / "repro.log").write_text(first.stdout)
    return repo


def png_size(data: bytes, what: str = "data") -> tuple[int, int]:
    """(width, height) of a PNG, read from its IHDR chunk; fails unless ``data`` is a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{what} is not a PNG"
    return struct.unpack(">II", data[16:24])


def make_png(width: int, height: int) -> bytes:
    """A plain white RGB PNG of that size."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(out, format="PNG")
    return out.getvalue()


def recipe(**changes):
    """A small training recipe for tests (plain SGD, no warm-up, decay or augmentation, eager
    steps), with ``changes`` over those defaults."""
    from dpstudy.config import AugmentConfig, RecipeConfig

    base = dict(
        epochs=1,
        optimizer="sgd",
        lr=0.05,
        ref_batch=64,
        momentum=0.9,
        weight_decay=0.0,
        warmup_epochs=0,
        decay="none",
        milestones=[],
        gamma=0.1,
        augment=AugmentConfig(0, False),
        step="eager",
    )
    return RecipeConfig(**{**base, **changes})


# A prepared dataset's facts and a clean evaluation check, as the plot stage hands them to `render`.
DIGITS_FACTS = {
    "name": "digits",
    "split": "seeded",
    "train": 1438,
    "test": 359,
    "sha256": "f" * 64,
    "source_md5": {"sklearn": "0" * 32, "other": "1" * 32},
}
AGREED = {"checkpoints": 3, "agree_with_training": 3, "max_abs_difference": 0.0}
