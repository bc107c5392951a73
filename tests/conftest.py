"""Shared fixtures: the repository's own params.yaml as the base of every test config, small real
data (scikit-learn's digits) prepared once per session, and the session's pipeline run (`quick_run`,
started in the background when collection ends, its tests run last)."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
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


def load(section: str, path: Path):
    """`config.load_section` as each stage calls it: plot's model is the claims' (`PLOT_SECTION`)."""
    from dpstudy.claims import PLOT_SECTION
    from dpstudy.config import load_section

    return load_section(section, path, model=PLOT_SECTION if section == "plot" else None)


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


# The quick preset cut to a smoke test of the whole pipeline for `quick_run`: every stage, claim,
# table and figure, two seeds (the least an interval needs), the smallest and largest batch of each
# grid, and the fewest epochs that still time an epoch after the first and grow a batch three
# times. The full quick preset's runtime and learning are what `make repro` and CI's image test run.
SMOKE = {
    "profile_dataloader.batch_sizes": [16, 256],
    "profile_dataloader.num_workers": [0, 2],
    "profile_dataloader.measure_batches": 3,
    "profile_dataloader.probe.steps": 6,
    "train_dp.seeds": [0, 1],
    "train_dp.lenet_utilization.batch_sizes": [16, 256],
    "train_dp.lenet_lr_scaling.batch_sizes": [16, 64],
    "train_dp.lenet_lr_scaling.recipe.epochs": 4,
    "train_dp.vgg.batch_sizes": [128],
    "train_ddp.seeds": [0, 1],
    "train_ddp.vgg.recipe.epochs": 2,
    "train_adaptive.seeds": [0, 1],
    "train_adaptive.classification.recipe.epochs": 4,
    "train_adaptive.classification.recipe.milestones": [3],
    "train_adaptive.restoration.recipe.epochs": 3,
    "train_adaptive.restoration.recipe.milestones": [2],
}


def smoke_params(path: Path, overrides: dict = SMOKE) -> None:
    """Set each dotted key of ``overrides`` in the params file at ``path``: in the quick column of a
    per-preset value (so `dvc exp run -S key.quick=...` still applies), else the value itself.
    Round-trip YAML (ruamel, DVC's own), so the file keeps its comments and layout."""
    from ruamel.yaml import YAML

    rt = YAML()
    data = rt.load(path.read_text())
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        if isinstance(node[last], dict) and "quick" in node[last]:
            node, last = node[last], "quick"
        node[last] = value
    with open(path, "w") as fh:
        rt.dump(data, fh)


def _quick_folder(config) -> Path:
    """The session's pipeline run: one folder for the whole test run, shared by xdist's workers."""
    base = config._tmp_path_factory.getbasetemp()
    return (base.parent if hasattr(config, "workerinput") else base) / "quick_run"


def _start_quick_run(config) -> None:
    """Start the session's pipeline run in the background, once (the first worker to create its
    folder starts it): a real `dvc repro` of the whole pipeline on the quick preset cut to `SMOKE`
    sizes, in a fresh copy of the repository with those values committed. It runs detached while
    the other tests run; ``rc`` appears in the folder when it ends."""
    folder = _quick_folder(config)
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return
    repo = tracked_copy(folder / "repo")
    smoke_params(repo / "params.yaml")
    git = ["git", "-c", "user.email=ci@dpstudy", "-c", "user.name=ci"]
    subprocess.run([*git, "commit", "-qam", "smoke sizes"], cwd=repo, check=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    script = f'"{bin_dir}/dvc" repro > repro.log 2> ../repro.err; echo $? > ../rc.tmp && mv ../rc.tmp ../rc'
    proc = subprocess.Popen(["bash", "-c", script], cwd=repo, env=env, start_new_session=True)
    (folder / "pid").write_text(str(proc.pid))


def uses_quick_run(item) -> bool:
    return "quick_run" in getattr(item, "fixturenames", ()) or item.get_closest_marker("quick_run") is not None


def pytest_collection_modifyitems(config, items) -> None:
    """When any collected test needs the session's pipeline run, start it now, in the background,
    and run those tests last: the other tests run meanwhile (under pytest-xdist, on every core)."""
    if any(uses_quick_run(item) for item in items) and not config.option.collectonly:
        _start_quick_run(config)
    items.sort(key=uses_quick_run)  # stable: every other test keeps its order


def pytest_sessionfinish(session) -> None:
    """The run that started the pipeline (xdist's controller, or pytest itself) stops it if a test
    run ends before it does (a failure with -x, Ctrl-C)."""
    if hasattr(session.config, "workerinput"):
        return
    pid = _quick_folder(session.config) / "pid"
    if pid.exists():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid.read_text()), signal.SIGTERM)


@pytest.fixture(scope="session")
def quick_run(request) -> Path:
    """The session's pipeline run (`_start_quick_run`), once it has ended: the copy of the
    repository with results/, mlflow.db, mlartifacts/, dvc.lock and dvc's output in repro.log.
    Treat it as read-only: a test that changes it works on its own copy."""
    folder = _quick_folder(request.config)
    _start_quick_run(request.config)  # a no-op where it has started
    deadline = time.monotonic() + 1800
    while not (folder / "rc").exists():
        assert time.monotonic() < deadline, "the session's pipeline run did not end within 30 minutes"
        time.sleep(0.5)
    repo = folder / "repo"
    log = (repo / "repro.log").read_text()
    assert (folder / "rc").read_text().strip() == "0", log[-4000:] + (folder / "repro.err").read_text()[-4000:]
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
