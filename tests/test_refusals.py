"""Settings no run can honour are refused before any work, in one line, exit 2: by the stage
itself and, for the torchrun stages, by `dpstudy launch` before torchrun starts."""

from __future__ import annotations

import re
import time

import pytest
from conftest import run_cli, write_params

ENV = {"DPSTUDY_NPROC_PER_NODE": "2", "DPSTUDY_NNODES": "1", "DPSTUDY_RDZV_ENDPOINT": "", "DPSTUDY_MAX_RESTARTS": "0"}


def _refused(res, started: float) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert "[launch]" not in res.stdout  # torchrun was never started
    assert time.monotonic() - started < 60
    return lines[0]


def test_a_batch_larger_than_the_training_split_is_refused_naming_its_size(tmp_path, digits_dir):
    params = write_params(tmp_path / "params.yaml", {"train_dp.lenet_lr_scaling.batch_sizes": [16, 100000]})
    started = time.monotonic()
    res = run_cli(
        "train_dp",
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--out",
        "out",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    line = _refused(res, started)
    assert re.fullmatch(
        r"error: train_dp\.lenet_lr_scaling\.batch_sizes: a batch of 100,000 is larger than the "
        r"training split of digits \(1,4\d\d images\); use at most 14\d\d",
        line,
    ), line
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "stage, overrides, message",
    [
        (
            "train_adaptive",
            {"train_adaptive.classification.schedules.fixed_small.batch": 33},
            "train_adaptive.classification.schedules.fixed_small.batch: 33 must be a multiple of the 2 processes",
        ),
        (
            "train_adaptive",
            {"train_adaptive.restoration.schedules.step_growth.max_batch": 8},
            "train_adaptive.restoration.schedules.step_growth.max_batch: 8 is below the starting batch",
        ),
        (
            "train_adaptive",
            {"train_adaptive.classification.schedules.noise_scale.max_batch": 4096},
            "train_adaptive.classification.schedules.noise_scale.max_batch: a global batch of 4,096 is larger than the "
            "training split of digits",
        ),
        (
            "train_ddp",
            {"train_ddp.vgg.batch_sizes": [1000]},
            "train_ddp.vgg.batch_sizes: a global batch of 2,000 is larger than the training split of digits",
        ),
    ],
)
def test_launch_checks_the_whole_stage_before_torchrun_starts(tmp_path, digits_dir, stage, overrides, message):
    params = write_params(tmp_path / "params.yaml", {f"{stage}.device": "cpu", **overrides})
    started = time.monotonic()
    res = run_cli(
        "launch",
        stage,
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--out",
        "out",
        cwd=tmp_path,
        env={**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert message in _refused(res, started)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "stage, overrides, message",
    [
        (
            "profile_dataloader",
            {"profile_dataloader.probe.step": ["eager", "graph"]},
            "profile_dataloader.probe.step: graph needs a CUDA GPU",
        ),
        (
            "train_dp",
            {"train_dp.lenet_lr_scaling.recipe.step": "graph"},
            "train_dp.lenet_lr_scaling.recipe.step: graph needs a CUDA GPU",
        ),
    ],
)
def test_a_cuda_graph_step_is_refused_on_the_cpu_before_any_work(tmp_path, digits_dir, stage, overrides, message):
    params = write_params(tmp_path / "params.yaml", {f"{stage}.device": "cpu", **overrides})
    started = time.monotonic()
    res = run_cli(
        stage,
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--out",
        "out",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    line = _refused(res, started)
    assert message in line and "set " in line and ": eager" in line, line  # says the fix
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "stage, key",
    [("train_adaptive", "train_adaptive.restoration.recipe.step"), ("train_ddp", "train_ddp.vgg.recipe.step")],
)
def test_launch_refuses_a_cuda_graph_step_before_torchrun_starts(tmp_path, digits_dir, stage, key):
    params = write_params(tmp_path / "params.yaml", {f"{stage}.device": "cpu", key: "graph"})
    started = time.monotonic()
    res = run_cli(
        "launch",
        stage,
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--out",
        "out",
        cwd=tmp_path,
        env={**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert f"{key}: graph needs a CUDA GPU" in _refused(res, started)
    assert not (tmp_path / "out").exists()
