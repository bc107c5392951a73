"""A `dvc repro` killed mid-stage keeps the stage's complete previous tables (DVC must not delete
them first, and the stage replaces them only together, at its end); the rerun writes complete new
ones and keeps the old grid's checkpoints."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import set_key

TABLES = ("runs.csv", "epochs.csv", "metrics.json")


def _dvc_popen(repo: Path, *args: str) -> subprocess.Popen:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [os.path.join(bin_dir, "dvc"), *args],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_killed_dvc_repro_keeps_the_complete_old_tables_and_the_rerun_writes_new_ones(quick_run, tmp_path):
    import yaml

    repo = tmp_path / "repo"
    shutil.copytree(quick_run, repo, symlinks=True)
    out = repo / "results" / "train_dp"
    old = {name: (out / name).read_bytes() for name in TABLES}
    old_checkpoints = {p.name for p in (out / "checkpoints").glob("*.pt")}

    params = yaml.safe_load((repo / "params.yaml").read_text())
    set_key(params, "train_dp.lenet_lr_scaling.batch_sizes", {"quick": [16, 32], "gpu": [64], "paper": [64]})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    killed = _dvc_popen(repo, "repro", "train_dp")
    new = out / "checkpoints" / "lenet_lr_scaling-single-resident-b32-none-s0.pt"
    deadline = time.monotonic() + 300
    while not new.exists() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    assert killed.poll() is None, killed.stdout.read()  # killed while the stage was training
    os.killpg(killed.pid, signal.SIGKILL)  # dvc and the stage with it
    killed.wait(timeout=30)
    assert {name: (out / name).read_bytes() for name in TABLES} == old  # the complete old set
    assert not list(out.glob(".*.tmp"))

    rerun = _dvc_popen(repo, "repro", "train_dp")
    log, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, log[-4000:]
    with open(out / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    batches = {int(r["batch"]) for r in rows if r["sweep"] == "lenet_lr_scaling"}
    assert batches == {16, 32}  # the complete new set: both grids of study A, and B's VGG rows
    assert {r["sweep"] for r in rows} == {"lenet_utilization", "lenet_lr_scaling", "vgg"}
    gone = {n for n in old_checkpoints if "-b64-" in n and n.startswith("lenet_lr_scaling")}
    kept = {p.name.split(".")[0] for p in (out / "checkpoints" / "kept").glob("*.pt")}
    assert gone and {n.removesuffix(".pt") for n in gone} <= kept  # the old grid's models were kept
