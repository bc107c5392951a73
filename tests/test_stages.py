"""The stages as a user runs them: real `python -m dpstudy` processes on real digits data."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from conftest import SHARED, run_cli, write_params
from mlflow.tracking import MlflowClient

from dpstudy.cli import main
from dpstudy.stages import STAGES
from dpstudy.track.tracking import STUDIES

TINY_PROFILE = {
    "profile_dataloader.batch_sizes": [16, 64],
    "profile_dataloader.num_workers": [0, 1],
    "profile_dataloader.warmup_batches": 1,
    "profile_dataloader.measure_batches": 3,
    "profile_dataloader.probe.steps": 3,
    "profile_dataloader.probe.warmup_steps": 1,
    "telemetry.interval_s": 0.05,
}
NO_MLFLOW_ENV = {"MLFLOW_TRACKING_URI": ""}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_has_help(tmp_path, stage):
    res = run_cli(stage, "--help", cwd=tmp_path)
    assert res.returncode == 0
    assert "--params" in res.stdout and "Reads params" in res.stdout


def test_top_level_help_lists_the_stages(tmp_path):
    res = run_cli("--help", cwd=tmp_path)
    assert res.returncode == 0
    for stage in STAGES:
        assert stage in res.stdout


def test_download_digits_then_mnist_through_a_mirror_folder(tmp_path):
    raw = SHARED / "datasets" / "mnist" / "raw"
    if not (raw / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST test split not found at {raw}")
    params = write_params(
        tmp_path / "params.yaml",
        {"download.datasets": ["digits", "mnist"], "download.mirror": str(raw), "download.upstream_split": "test_only"},
    )
    res = run_cli("download", "--params", str(params), "--out", "prepared", "--raw", "raw", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "mnist: 8000 train + 2000 test images 1×28×28" in res.stdout
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == ["digits.pt", "mnist.pt"]


def test_bad_mirror_stops_before_any_dataset_is_prepared(tmp_path):
    params = write_params(
        tmp_path / "params.yaml",
        {"download.datasets": ["digits", "mnist"], "download.mirror": str(tmp_path / "nowhere")},
    )
    res = run_cli("download", "--params", str(params), "--out", "prepared", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: download: download.mirror '{tmp_path / 'nowhere'}' is neither an http(s)/file URL "
        "nor an existing folder"
    ]
    assert not (tmp_path / "prepared").exists()  # digits, listed first, was not prepared either


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("profile_dataloader.batch_sizes", [0], "profile_dataloader.batch_sizes[0]: must be >= 1, got 0"),
        ("profile_dataloader.num_workers", [-2], "profile_dataloader.num_workers[0]: must be >= 0, got -2"),
        ("profile_dataloader.dataset", "svhn", "profile_dataloader.dataset: must be one of digits, mnist, cifar10"),
        (
            "profile_dataloader.model",
            "vgg99",
            "profile_dataloader.model: must be one of lenet, vgg16, resnet20, srnet, got 'vgg99'",
        ),
        ("profile_dataloader.colour", 1, "profile_dataloader.colour: unknown key"),
        ("profile_dataloader.seed", 1.5, "profile_dataloader.seed: expected an integer, got float"),
    ],
)
def test_bad_profile_params_fail_in_one_line_before_any_work(
    tmp_path, digits_dir, monkeypatch, capsys, key, value, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = write_params(tmp_path / "params.yaml", {key: value})
    code = main(["profile_dataloader", "--params", str(params), "--data", str(digits_dir), "--out", "out"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_bad_params_exit_non_zero_as_a_real_process(tmp_path, digits_dir):
    params = write_params(tmp_path / "params.yaml", {"profile_dataloader.batch_sizes": [64, 0]})
    res = run_cli(
        "profile_dataloader",
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--out",
        "out",
        cwd=tmp_path,
        env=NO_MLFLOW_ENV,
    )
    assert res.returncode == 2
    assert res.stderr == "error: params.yaml: profile_dataloader.batch_sizes[1]: must be >= 1, got 0\n"
    assert not (tmp_path / "out").exists()


def test_profile_without_prepared_data_says_which_stage_to_run(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    res = run_cli(
        "profile_dataloader",
        "--params",
        str(params),
        "--data",
        str(tmp_path / "empty"),
        cwd=tmp_path,
        env=NO_MLFLOW_ENV,
    )
    assert res.returncode == 2
    assert "digits.pt: no prepared dataset there (run the download stage first)" in res.stderr


@pytest.mark.slow
def test_profile_stage_writes_metrics_plots_and_mlflow_runs(tmp_path, digits_dir):
    params = write_params(tmp_path / "params.yaml", TINY_PROFILE)
    data = tmp_path / "prepared"
    shutil.copytree(digits_dir, data)
    res = run_cli(
        "profile_dataloader",
        "--params",
        str(params),
        "--data",
        str(data),
        "--out",
        "out",
        cwd=tmp_path,
        env=NO_MLFLOW_ENV,
    )
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"resident_speedup", "A3_workers_gain"}  # the headline; the CSVs hold the rest

    with open(out / "throughput.csv") as fh:
        rows = list(csv.DictReader(fh))
    best = {
        loader: max(float(r["images_per_s"]) for r in rows if r["series"].startswith(loader))
        for loader in ("standard", "resident")
    }
    assert metrics["resident_speedup"] == pytest.approx(best["resident"] / best["standard"], rel=0.01)
    at_64 = {r["series"]: float(r["images_per_s"]) for r in rows if r["batch_size"] == "64"}
    assert metrics["A3_workers_gain"] == pytest.approx(
        at_64["standard, 1 worker"] / at_64["standard, 0 workers"], rel=0.01
    )
    assert len(rows) == 2 * 2 + 2  # standard: batch × workers; resident: batch
    assert {r["series"] for r in rows} == {"standard, 0 workers", "standard, 1 worker", "resident"}
    with open(out / "probes.csv") as fh:
        probes = list(csv.DictReader(fh))
    assert [(p["loader"], p["batch_size"], p["steps"]) for p in probes] == [
        ("standard", "16", "3"),
        ("standard", "64", "3"),
        ("resident", "16", "3"),
        ("resident", "64", "3"),
    ]
    assert all(p["utilization_source"] == "cpu_util_pct" for p in probes)  # no GPU here
    assert "training probes: share of each step spent waiting for data" in res.stdout

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(STUDIES["A"])
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "profile_dataloader"
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["profile_dataloader.batch_sizes"] == "16,64"
    assert parent.data.tags["preset"] == "quick" and parent.data.tags["world_size"] == "1"
    assert parent.data.metrics["throughput.resident_speedup"] == pytest.approx(metrics["resident_speedup"], rel=0.01)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"metrics.json", "throughput.csv", "workers.csv", "probes.csv"}

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6 + 4
    probe = next(r for r in children if r.info.run_name == "probe resident bs=64")
    assert probe.data.params["batch_size"] == "64" and probe.data.params["loader"] == "resident"
    waits = client.get_metric_history(probe.info.run_id, "data_wait_s")
    assert [m.step for m in waits] == [0, 1, 2]
    assert len(client.get_metric_history(probe.info.run_id, "system/process_rss_megabytes")) >= 2  # sampler samples


@pytest.mark.parametrize(
    "stage, key, value, message",
    [
        ("train_dp", "train_dp.lenet_utilization.width", 0.5, "train_dp.lenet_utilization: LeNet-5 has a fixed width"),
        (
            "train_dp",
            "train_dp.lenet_lr_scaling.lr_rules",
            ["cubic"],
            "train_dp.lenet_lr_scaling.lr_rules[0]: must be one of none, linear, sqrt, got 'cubic'",
        ),
        ("train_dp", "train_dp.vgg.batch_sizes", [1], "train_dp.vgg.batch_sizes[0]: must be >= 2, got 1"),
        (
            "train_dp",
            "train_dp.vgg.recipe.decay",
            "exp",
            "train_dp.vgg.recipe.decay: must be one of none, step, cosine",
        ),
        ("train_ddp", "train_ddp.nproc_per_node", 0, "train_ddp.nproc_per_node: must be >= 1, got 0"),
        ("train_ddp", "train_ddp.vgg.world_sizes", [], "train_ddp.vgg.world_sizes: must not be empty"),
        ("train_ddp", "train_ddp.vgg.model", "lenet", None),  # valid: shows the checks pass real configs
        (
            "train_adaptive",
            "train_adaptive.classification.schedules.step_growth.at_epochs",
            "sometimes",
            "train_adaptive.classification.schedules.step_growth.at_epochs: expected a list of int or milestones, "
            "got str 'sometimes'",
        ),
        (
            "train_adaptive",
            "train_adaptive.classification.schedules.step_growth.at_epochs",
            [0],
            "train_adaptive.classification.schedules.step_growth.at_epochs[0]: must be >= 1, got 0",
        ),
        (
            "train_adaptive",
            "train_adaptive.restoration.schedules.noise_scale.ema",
            1.0,
            "train_adaptive.restoration.schedules.noise_scale.ema: must be >= 0 and < 1, got 1.0",
        ),
        (
            "train_adaptive",
            "train_adaptive.restoration.model",
            "resnet20",
            "train_adaptive.restoration.model: resnet20 is a classification network, not restoration",
        ),
    ],
)
def test_bad_training_params_fail_in_one_line_before_any_work(
    tmp_path, digits_dir, monkeypatch, capsys, stage, key, value, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = {key: value}
    if message is None:  # a valid value: make the run tiny, it must succeed
        overrides |= {
            "train_ddp.vgg.width": 1.0,
            "train_ddp.vgg.recipe.epochs": 1,
            "train_ddp.vgg.lr_rules": ["linear"],
            "train_ddp.vgg.loaders": ["resident"],
        }
    params = write_params(tmp_path / "params.yaml", overrides)
    code = main([stage, "--params", str(params), "--data", str(digits_dir), "--out", "out"])
    if message is None:
        assert code == 0 and (tmp_path / "out" / "runs.csv").is_file()
        return
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
