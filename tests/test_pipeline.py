"""A real `dvc repro` of the quick preset in a temporary copy of the repository."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def tracked_copy(dest: Path) -> Path:
    """The files git tracks (what a fresh clone has), as a new git repository."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                           text=True).stdout.split("\0")
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


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # where `dpstudy` and `dvc` are installed
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([os.path.join(bin_dir, "dvc"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_dvc_repro_quick_preset_then_nothing_to_do(tmp_path):
    repo = tracked_copy(tmp_path / "repo")
    first = dvc("repro", cwd=repo)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'download'" in first.stdout
    for stage in ("profile_dataloader", "train_dp", "train_ddp", "train_adaptive"):
        assert f"Running stage '{stage}'" in first.stdout
    assert (repo / "data" / "prepared" / "digits.pt").is_file()
    metrics = json.loads((repo / "results" / "profile_dataloader" / "metrics.json").read_text())
    assert metrics["throughput"]["resident_speedup"] > 1
    check_training_results(repo)
    check_adaptive_results(repo)

    again = dvc("repro", cwd=repo)
    assert again.returncode == 0
    assert "Running stage" not in again.stdout  # everything up to date
    # DVC's own ignore entries are already in the tree: a run leaves git clean but for results.
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert {line[3:].split("/")[0] for line in status.splitlines()} <= {"dvc.lock", "results"}

    shown = dvc("metrics", "show", cwd=repo)
    assert shown.returncode == 0
    assert "resident_speedup" in shown.stdout and "data_wait_fraction.standard.bs16" in shown.stdout

    plots = dvc("plots", "show", "--json", cwd=repo)
    assert plots.returncode == 0, plots.stderr
    assert "throughput.csv" in plots.stdout and "probes.csv" in plots.stdout

    # Changing a param only profile_dataloader reads re-runs it alone.
    params = (repo / "params.yaml").read_text().replace("  seed: 0 ", "  seed: 1 ", 1)
    (repo / "params.yaml").write_text(params)
    status = dvc("status", cwd=repo)
    assert "profile_dataloader" in status.stdout
    assert not {"download:", "train_dp:", "train_ddp:", "train_adaptive:"} & set(status.stdout.split())


def check_training_results(repo: Path) -> None:
    """train_dp and train_ddp: a row per configuration, checkpoints, and the MLflow layout."""
    from mlflow.tracking import MlflowClient

    from dpstudy.tracking import STUDIES

    expected = {}
    for stage in ("train_dp", "train_ddp"):
        out = repo / "results" / stage
        with open(out / "runs.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and all(r["outcome"] == "finished" for r in rows)
        assert {f"{r['name']}.pt" for r in rows} == {p.name for p in (out / "checkpoints").glob("*.pt")}
        metrics = json.loads((out / "metrics.json").read_text())
        assert sum(len(grid) for grid in metrics.values()) == len(rows)  # one seed: a key per row
        expected[stage] = rows
    assert set(json.loads((repo / "results" / "train_dp" / "metrics.json").read_text())["vgg"]
               ["single-standard0w-b32-linear"]) == {"epoch_time_s"}
    ddp = expected["train_ddp"]
    assert {int(r["world"]) for r in ddp} == {1, 2}  # torchrun started 2 gloo processes
    # LeNet learns digits in the quick preset (chance is 0.1).
    assert max(float(r["test_accuracy"]) for r in expected["train_dp"] if r["sweep"] == "lenet_lr_scaling") > 0.9

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    for study, stage, sweeps in (("A", "train_dp", {"lenet_utilization", "lenet_lr_scaling"}),
                                 ("B", "train_dp", {"vgg"}), ("B", "train_ddp", {"vgg"})):
        exp = client.get_experiment_by_name(STUDIES[study])
        parents = client.search_runs([exp.experiment_id], f"tags.dvc_stage = '{stage}' and "
                                     "attributes.run_name = '" + stage + "'")
        parents = [p for p in parents if "mlflow.parentRunId" not in p.data.tags]
        assert len(parents) == 1, (study, stage)  # one parent run per stage execution
        parent = parents[0]
        assert parent.info.status == "FINISHED" and set(parent.data.tags["sweep"].split(",")) == sweeps
        children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert {c.info.run_name for c in children} == {r["name"] for r in expected[stage] if r["sweep"] in sweeps}
        assert all(c.info.status == "FINISHED" for c in children)
        assert all("test_accuracy" in c.data.metrics for c in children)
        assert all(len(client.get_metric_history(c.info.run_id, "step_loss")) > 1 for c in children[:2])


def check_adaptive_results(repo: Path) -> None:
    """train_adaptive: every task × schedule × seed trained under 2 gloo processes, time-to-target
    computed, and the batch / lr / noise-scale curves per step in MLflow (study C)."""
    from mlflow.tracking import MlflowClient

    from dpstudy.adaptive import SCHEDULES
    from dpstudy.config import load_section
    from dpstudy.tracking import STUDIES

    _, cfg = load_section("train_adaptive", repo / "params.yaml")
    out = repo / "results" / "train_adaptive"
    names, steps, reached = [], {}, {}
    for task, metric in (("classification", "test_accuracy"), ("restoration", "test_psnr")):
        with open(out / task / "runs.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == len(SCHEDULES) * len(cfg.seeds)
        assert all(r["outcome"] == "finished" and r["world"] == "2" and r["mode"] == "ddp" for r in rows)
        small = [float(r[metric]) for r in rows if r["schedule"] == "fixed_small"]
        target = sum(small) / len(small) - getattr(cfg, task).target_tolerance
        assert all(float(r["target"]) == pytest.approx(target, abs=1e-5) for r in rows)
        growth = getattr(cfg, task).schedules.step_growth
        stepped = [r for r in rows if r["schedule"] == "step_growth"]
        assert all(int(r["final_batch"]) == growth.max_batch for r in stepped)
        # fewer, larger steps: fewer optimizer steps and all-reduces than the small fixed batch
        fixed = next(r for r in rows if r["schedule"] == "fixed_small")
        assert all(int(r["steps"]) < int(fixed["steps"]) and int(r["allreduces"]) < int(fixed["allreduces"])
                   for r in stepped)
        names += [r["name"] for r in rows]
        steps.update({r["name"]: int(r["steps"]) for r in rows})
        reached.update({r["name"]: r["time_to_target_s"] != "nan" for r in rows})
    assert {p.stem for p in (out / "checkpoints").glob("*.pt")} == set(names)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"classification", "restoration"}
    assert set(metrics["classification"]) == set(SCHEDULES)
    assert metrics["classification"]["fixed_small"]["test_accuracy"] > 0.9  # ResNet-20 learns digits
    # the network beats bicubic interpolation
    with open(out / "restoration" / "epochs.csv") as fh:
        last = list(csv.DictReader(fh))[-1]
    assert float(last["test_psnr"]) > float(last["test_psnr_bicubic"]) + 1

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(STUDIES["C"])
    runs = client.search_runs([exp.experiment_id], "tags.dvc_stage = 'train_adaptive'", max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {c.info.run_name for c in children} == set(names)
    assert all(c.info.status == "FINISHED" and "target" in c.data.metrics for c in children)
    # time-to-target is logged where the run reached the target (a nan is not a metric)
    assert all(("time_to_target_s" in c.data.metrics) == reached[c.info.run_name] for c in children)
    for task in ("classification", "restoration"):  # its best seed is at or above its mean, so above target
        assert any(hit for name, hit in reached.items() if name.startswith(f"{task}-fixed_small"))
    run = next(c for c in children if c.info.run_name.startswith("classification-step_growth"))
    batches = [m.value for m in client.get_metric_history(run.info.run_id, "step_global_batch")]
    lrs = client.get_metric_history(run.info.run_id, "step_lr")
    noise = client.get_metric_history(run.info.run_id, "step_noise_scale")
    assert batches[0] == 32 and batches[-1] == 256 and sorted(batches) == batches
    assert len(lrs) == len(batches) == len(noise) == steps[run.info.run_name]
