"""What the MLflow UI's views show for a real (tiny) training stage, read back from its sqlite store:
run names that lead with what differs in a grid, the configuration tag every lookup uses, telemetry
in the System metrics tab's ``system/...`` keys at real times, one meaning of ``step`` per metric
family, headline figures on the parent run, and each child's own curves as artifacts."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from conftest import run_cli, single_config_train_dp, write_params
from mlflow.tracking import MlflowClient
from mlflow_browser import browser, choose_model_training, expect, explained, page  # noqa: F401

from dpstudy.grid.configuration import run_names
from dpstudy.track.tracking import STUDIES

GRID = "lenet_lr_scaling"
BATCHES, RULES = [32, 64], ["linear", "sqrt"]


def _params(path: Path) -> Path:
    overrides = single_config_train_dp(**{"telemetry.interval_s": 0.05})
    overrides |= {
        "train_dp.vgg.width": 0.125,
        f"train_dp.{GRID}.batch_sizes": BATCHES,
        f"train_dp.{GRID}.lr_rules": RULES,
    }
    return write_params(path, overrides)


@pytest.fixture(scope="module")
def stage_dir(digits_dir, tmp_path_factory) -> Path:
    """A folder where one real train_dp ran, logging to its ``mlflow.db`` (its vgg grid to study B)."""
    tmp = tmp_path_factory.mktemp("views")
    done = run_cli(
        "train_dp",
        "--data",
        str(digits_dir),
        "--out",
        "out",
        "--params",
        str(_params(tmp / "p.yaml")),
        cwd=tmp,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"},
    )
    assert done.returncode == 0, done.stderr
    return tmp


@pytest.fixture(scope="module")
def stage(stage_dir):
    """(client, study A's experiment id, runs.csv rows by name) of that stage."""
    rows = {r["name"]: r for r in csv.DictReader((stage_dir / "out" / "runs.csv").open())}
    client = MlflowClient(f"sqlite:///{stage_dir / 'mlflow.db'}")
    return client, client.get_experiment_by_name(STUDIES["A"]).experiment_id, rows


def _children(client, exp: str) -> list:
    runs = client.search_runs([exp], "tags.dvc_stage = 'train_dp'", max_results=100)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_run_names_lead_with_what_differs_in_the_grid():
    from test_engine import spec

    grid = [spec(batch=b, lr_rule=r) for b in (32, 64) for r in ("linear", "sqrt")]
    sweep = grid[0].sweep
    names = run_names(grid)
    assert names[grid[0].name] == f"b32 linear · {sweep}"
    assert names[grid[3].name] == f"b64 sqrt · {sweep}"
    assert len(set(names.values())) == len(grid)
    alone = spec(batch=16, lr_rule="none")
    assert run_names([alone])[alone.name].endswith(f"b16 none s{alone.seed} · {sweep}")  # nothing varies: all of it


@pytest.mark.slow
def test_children_named_by_what_varies_and_tagged_with_their_configuration(stage):
    client, exp, rows = stage
    children = _children(client, exp)
    assert {c.data.tags["configuration"] for c in children} == {n for n, r in rows.items() if r["sweep"] != "vgg"}
    grid = [c for c in children if c.data.tags["sweep"] == GRID]
    assert len(grid) == len(BATCHES) * len(RULES)
    shown = {c.info.run_name for c in grid}
    assert shown == {f"b{b} {r} · {GRID}" for b in BATCHES for r in RULES}  # distinct, varying part first
    for child in children:
        assert child.data.tags["task"] == "classification"
        assert child.data.params["batch"] == rows[child.data.tags["configuration"]]["batch"]  # params unchanged


@pytest.mark.slow
def test_telemetry_in_system_metrics_at_real_times(stage):
    client, exp, _ = stage
    for child in _children(client, exp):
        keys = [k for k in child.data.metrics if k.startswith("system/")]
        assert "system/cpu_utilization_percentage" in keys and "system/process_rss_megabytes" in keys, keys
        assert not {"cpu_util_pct", "proc_rss_mib"} & set(child.data.metrics)
        if child.data.tags.get("trained_as"):
            continue  # a twin: its telemetry is its original's
        history = client.get_metric_history(child.info.run_id, "system/process_rss_megabytes")
        assert [m.step for m in history] == list(range(len(history))) and len(history) >= 2
        stamps = [m.timestamp for m in history]
        assert len(set(stamps)) == len(stamps) and stamps == sorted(stamps)


@pytest.mark.slow
def test_step_metrics_by_optimizer_step_and_epoch_metrics_by_epoch(stage):
    client, exp, rows = stage
    for child in _children(client, exp):
        steps = int(rows[child.data.tags["configuration"]]["steps"])
        for key in ("step_loss", "step_lr", "step_global_batch"):
            history = client.get_metric_history(child.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(steps)), key
        assert [m.step for m in client.get_metric_history(child.info.run_id, "test_loss")] == [0]


@pytest.mark.slow
def test_parent_carries_the_stage_headline(stage):
    client, exp, rows = stage
    [parent] = client.search_runs([exp], "attributes.run_name = 'train_dp' and tags.dvc_stage = 'train_dp'")
    metrics = parent.data.metrics
    grid = [r for r in rows.values() if r["sweep"] == GRID]
    assert metrics[f"{GRID}/configurations"] == len(grid)
    assert metrics[f"{GRID}/best_test_accuracy"] == pytest.approx(max(float(r["test_accuracy"]) for r in grid))
    assert metrics[f"{GRID}/diverged"] == 0 and metrics[f"{GRID}/train_time_s"] > 0
    assert metrics["lenet_utilization/configurations"] == 1


@pytest.mark.slow
def test_each_child_carries_its_own_curves(stage, tmp_path):
    client, exp, rows = stage
    for child in _children(client, exp):
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"curves.csv", "steps.csv"}
        name = child.data.tags["configuration"]
        curves = list(
            csv.DictReader(
                io.StringIO(
                    Path(
                        client.download_artifacts(child.info.run_id, "curves.csv", str(tmp_path / child.info.run_id))
                    ).read_text()
                )
            )
        )
        assert [r["series"] for r in curves] == [name] and curves[0]["test_accuracy"] == rows[name]["test_accuracy"]
        steps = list(
            csv.DictReader(
                io.StringIO(
                    Path(
                        client.download_artifacts(child.info.run_id, "steps.csv", str(tmp_path / child.info.run_id))
                    ).read_text()
                )
            )
        )
        assert [int(r["step"]) for r in steps] == list(range(int(rows[name]["steps"])))


# -- the same runs in the MLflow UI (README's server command, headless Chromium) ------------------
@pytest.fixture(scope="module")
def server(stage_dir, tmp_path_factory):
    """README's `mlflow server` command on the stage's store, ready once /health answers."""
    from mlflow_browser import serve

    with serve(stage_dir / "mlflow.db", tmp_path_factory.mktemp("mlflow-server") / "server.log") as srv:
        yield srv


@pytest.mark.slow
def test_system_metrics_tab_charts_the_telemetry(stage, server, page, tmp_path):
    """A child run's *System metrics* tab shows the sampled CPU and memory charts (it was always
    empty while they were ordinary metrics), and its *Model metrics* tab no longer lists them."""
    import re

    client, exp, _ = stage
    child = next(c for c in _children(client, exp) if c.data.tags["sweep"] == GRID)
    base = f"{server.url}/#/experiments/{exp}/runs/{child.info.run_id}"
    with explained(page, server, tmp_path):
        page.goto(f"{server.url}/#/experiments")
        choose_model_training(page)
        page.goto(f"{base}/system-metrics")
        expect(page.get_by_text(child.info.run_name).first).to_be_visible()
        for key in ("cpu_utilization_percentage", "process_rss_megabytes"):
            expect(page.get_by_role("heading", name=re.compile(key)).first).to_be_visible()
        page.goto(f"{base}/model-metrics")
        expect(page.get_by_role("heading", name="allreduces", exact=True)).to_be_visible()
        page.get_by_role("searchbox", name="Search metric charts").fill("cpu_util")
        expect(page.get_by_role("heading", name="cpu_util_pct_mean", exact=True)).to_be_visible()  # epoch means
        expect(page.get_by_role("heading", name=re.compile("cpu_utilization_percentage"))).to_have_count(0)


def test_restoration_runs_filter_by_task_and_the_parent_gets_time_to_target(digits_dir, tmp_path):
    """Study C's tasks share an experiment: ``tags.task = "restoration"`` (README) keeps one task's
    runs; the parent carries the grid's headline (PSNR here) and each schedule's time to target."""
    import dataclasses

    import torch
    from test_evaluation import ADAM

    from dpstudy.data.prepared import file_sha256, load_prepared
    from dpstudy.grid.adaptive import finish_task
    from dpstudy.grid.sweep import run_grid
    from dpstudy.track.tracking import Tracker
    from dpstudy.train.engine import RunSpec, TrainData

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    data = {"digits": TrainData(load_prepared(digits_dir / "digits.pt"), file_sha256(digits_dir / "digits.pt"))}
    small = RunSpec(
        "restoration",
        "srnet",
        0.25,
        8,
        "digits",
        "single",
        1,
        "resident",
        0,
        32,
        "none",
        0,
        ADAM,
        schedule="fixed_small",
    )
    grid = [small, dataclasses.replace(small, batch=64, schedule="fixed_large")]
    with Tracker("C", "train_adaptive", preset="quick", params={}, uri=uri, root=tmp_path) as tracker:
        results = run_grid(grid, data, tracker, tmp_path / "out", device=torch.device("cpu"), sample_interval_s=0.05)
        finish_task("restoration", results, 0.5, tmp_path / "out", tracker, {})
        with tracker.child("a classification run", {}, tags={"task": "classification"}):
            pass

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDIES["C"]).experiment_id
    runs = client.search_runs([exp], 'tags.task = "restoration"')
    assert sorted(r.info.run_name for r in runs) == ["fixed_large b64 · restoration", "fixed_small b32 · restoration"]
    assert {r.data.tags["configuration"] for r in runs} == {s.name for s in grid}
    parent = client.get_run(tracker.parent.run_id).data.metrics
    assert parent["restoration/configurations"] == 2
    assert parent["restoration/best_test_psnr"] == pytest.approx(max(r.final["test_psnr"] for r in results))
    assert parent["restoration/fixed_small_speedup"] == 1.0  # fixed_small reaches its own target
    assert parent["restoration/fixed_small_time_to_target_s"] > 0
