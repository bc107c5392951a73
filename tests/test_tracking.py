"""MLflow logging read back from a real sqlite store with MlflowClient."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from dpstudy.measure.telemetry import Sample
from dpstudy.track.store import tracking_uri
from dpstudy.track.tracking import STUDIES, Tracker


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # A git repo with one commit, so the commit tag has something real to read.
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "f"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c"], cwd=tmp_path, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    return tmp_path, commit


def test_default_uri_is_sqlite_in_the_root_unless_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_parent_child_params_steps_and_tags_round_trip(store):
    root, commit = store
    params = {"preset": "quick", "profile_dataloader": {"batch_sizes": [16, 64], "probe": {"lr": 0.01}}}
    with Tracker(
        "A", "profile_dataloader", preset="quick", params=params, devices=["cpu (x86_64)"], world_size=2, root=root
    ) as tr:
        with tr.child("probe resident bs=16", {"loader": "resident", "batch_size": 16}) as run:
            run.log_series("loss", [2.3, 2.1, 1.9])
            run.log_metrics({"images_per_s": 1234.5}, step=0)
            run.log_samples(
                [Sample(t=1000.0, values={"cpu_util_pct": 50.0}), Sample(t=1000.5, values={"cpu_util_pct": 70.0})]
            )
        tr.parent.log_metrics({"resident_speedup": 30.0}, step=0)
        artifact = root / "metrics.json"
        artifact.write_text("{}")
        tr.parent.log_artifact(artifact)

    client = MlflowClient(tracking_uri(root))
    exp = client.get_experiment_by_name(STUDIES["A"])
    assert exp is not None and exp.artifact_location.startswith((root / "mlartifacts").as_uri())
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "profile_dataloader")
    child = next(r for r in runs if r.info.run_name == "probe resident bs=16")

    assert parent.data.params == {
        "preset": "quick",
        "profile_dataloader.batch_sizes": "16,64",
        "profile_dataloader.probe.lr": "0.01",
    }
    assert child.data.params == {"loader": "resident", "batch_size": "16"}
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    for run in (parent, child):
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["git_commit"] == commit == tags["mlflow.source.git.commit"]
        assert tags["preset"] == "quick" and tags["world_size"] == "2"
        assert tags["devices"] == "cpu (x86_64)" and tags["dvc_stage"] == "profile_dataloader"

    loss = client.get_metric_history(child.info.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(0, 2.3), (1, 2.1), (2, 1.9)]
    # telemetry as MLflow's own system metrics: the run page's System metrics tab charts them
    util = client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")
    assert [(m.step, m.value, m.timestamp) for m in util] == [(0, 50.0, 1_000_000), (1, 70.0, 1_000_500)]
    assert "cpu_util_pct" not in child.data.metrics
    assert child.data.tags["configuration"] == "probe resident bs=16"
    assert parent.data.metrics["resident_speedup"] == 30.0
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["metrics.json"]


def test_failures_mark_runs_failed(store):
    root, _ = store
    with (
        pytest.raises(RuntimeError),
        Tracker("B", "train_ddp", preset="quick", params={}, root=root) as tr,
        tr.child("bad config", {}),
    ):
        raise RuntimeError("diverged")
    client = MlflowClient(tracking_uri(root))
    runs = client.search_runs([client.get_experiment_by_name(STUDIES["B"]).experiment_id])
    assert {r.info.run_name: r.info.status for r in runs} == {"train_ddp": "FAILED", "bad config": "FAILED"}


@pytest.mark.parametrize("cut", ["parent", "child"])
def test_an_interruption_right_after_a_run_is_created_still_ends_it_killed(store, monkeypatch, cut):
    """A Ctrl-C landing while a new run's params are written (the run already exists, RUNNING)
    ends that run KILLED, and every run above it; none is left RUNNING (a race CI once hit)."""
    from dpstudy.track.run import Run

    real = Run.log_params

    def interrupted(self, params):
        if params.get("which") == cut:
            raise KeyboardInterrupt
        return real(self, params)

    monkeypatch.setattr(Run, "log_params", interrupted)
    root, _ = store
    parent_params = {"which": "parent"} if cut == "parent" else {}
    with (
        pytest.raises(KeyboardInterrupt),
        Tracker("A", "profile_dataloader", preset="quick", params=parent_params, root=root) as tr,
        tr.child("probe", {"which": "child"}),
    ):
        pass
    client = MlflowClient(tracking_uri(root))
    runs = client.search_runs([client.get_experiment_by_name(STUDIES["A"]).experiment_id])
    expected = {"profile_dataloader": "KILLED"} | ({"probe": "KILLED"} if cut == "child" else {})
    assert {r.info.run_name: r.info.status for r in runs} == expected


def test_only_rank_zero_logs(store):
    root, _ = store
    with (
        Tracker("C", "train_adaptive", preset="quick", params={"a": 1}, rank=1, root=root) as tr,
        tr.child("x", {"b": 2}) as run,
    ):
        run.log_metrics({"m": 1.0}, step=0)
        assert not run.active
    assert not (root / "mlflow.db").exists()  # rank 1 never even opened the store


def test_a_sigterm_during_the_failure_write_still_leaves_every_run_failed(tmp_path, monkeypatch):
    """When a DDP peer dies, rank 0 records FAILED after gloo's error and torchrun's SIGTERM lands
    in the middle of that write: the signal waits for the write, then ends the process."""
    from dpstudy.train.parallel import Terminated, distributed

    real = MlflowClient.set_terminated

    def signal_during_first_write(self, run_id, status=None, end_time=None):
        monkeypatch.setattr(MlflowClient, "set_terminated", real)
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, run_id, status, end_time)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")  # as in a torchrun worker
    with (
        pytest.raises(Terminated),
        distributed("cpu"),  # installs the SIGTERM -> Terminated handler torchrun workers use
        Tracker("B", "train_ddp", preset="quick", params={}, uri=uri, root=tmp_path) as tracker,
        tracker.child("config", {}),
    ):
        monkeypatch.setattr(MlflowClient, "set_terminated", signal_during_first_write)
        raise RuntimeError("Connection closed by peer")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(STUDIES["B"]).experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("config", "FAILED"), ("train_ddp", "FAILED")]


def test_child_shown_under_its_run_name_and_found_by_its_configuration_tag(store):
    root, _ = store
    name = "lenet_lr_scaling-single-resident-b256-sqrt-s0"
    with Tracker("A", "train_dp", preset="quick", params={}, root=root) as tr:
        tr.run_names[name] = "b256 sqrt s0 · lenet_lr_scaling"
        with tr.child(name, {"batch": 256}) as run:
            run.log_text("epoch,test_loss\n0,1.5\n", "curves.csv")
        with tr.child("other", {}):
            pass
    with Tracker("A", "evaluate", preset="quick", params={}, root=root) as ev:
        found = ev.find(name, "train_dp")
        assert found.run_id == run.run_id
        assert not ev.find(name, "train_ddp").active
        assert ev.find("other", "train_dp").active  # shown under its own name: found all the same

    client = MlflowClient(tracking_uri(root))
    child = client.get_run(run.run_id)
    assert child.info.run_name == "b256 sqrt s0 · lenet_lr_scaling"
    assert child.data.tags["configuration"] == name
    assert child.data.params == {"batch": "256"}
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["curves.csv"]


def test_find_falls_back_to_the_run_name_in_a_store_without_the_configuration_tag(store):
    root, _ = store
    with Tracker("A", "train_dp", preset="quick", params={}, root=root) as tr:
        client = MlflowClient(tracking_uri(root))
        old = client.create_run(tr.experiment_id, run_name="lenet-b16-s0", tags={"dvc_stage": "train_dp"})
        client.set_terminated(old.info.run_id)
        assert tr.find("lenet-b16-s0", "train_dp").run_id == old.info.run_id
