"""`dpstudy launch`: torchrun settings from params.yaml and DPSTUDY_* variables; two torchrun agents
on this machine as two nodes (c10d rendezvous on loopback, gloo); a worker killed for real, with
and without restarts. Real processes, real torchrun, a real sqlite MLflow store; nothing mocked."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, write_params
from mlflow.tracking import MlflowClient
from test_ddp import SMALL_DDP, alive, descendants, kill_rank1_after_checkpoint, read_csv

from dpstudy.errors import UserError
from dpstudy.launch import ENV, Launch, settings, torchrun_command, torchrun_env
from dpstudy.track.tracking import STUDIES

# One world-2 configuration of LeNet on digits (resident loader: batches depend only on seed,
# epoch and rank, so a resumed epoch sees the very same samples). 8 epochs of ~0.15 s leave a
# window of about a second between the first checkpoint and the end for the fault tests.
EPOCHS = 8
GRID = {**SMALL_DDP, "train_ddp.vgg.world_sizes": [2], "train_ddp.vgg.recipe.epochs": EPOCHS}
NAME = "vgg-ddp2-resident-b64-linear-s0"
# What the model computed, per configuration and per epoch (timings and memory differ run to run).
RUN_FIGURES = (
    "name",
    "outcome",
    "epochs",
    "steps",
    "allreduces",
    "global_batch",
    "peak_lr",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
)
EPOCH_FIGURES = (
    "series",
    "epoch",
    "steps",
    "global_batch",
    "samples",
    "lr",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "allreduces",
)


def launch_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The environment of a launched job: its own MLflow store, no stray DPSTUDY_* settings, and one
    intra-op thread per process. torchrun sets OMP_NUM_THREADS=1 only when it starts more than one
    process per node; a different thread count changes the order of CPU float sums, and with it the
    last bits of every figure, so the layouts compared here all get one thread."""
    env = {k: v for k, v in os.environ.items() if k not in (*ENV.values(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE")}
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1", **overrides}


def start(params: Path, data: Path, out: Path, env: dict, log: Path) -> subprocess.Popen:
    """``dpstudy launch train_ddp`` as a real process (it becomes the torchrun agent: same pid)."""
    cmd = [
        sys.executable,
        "-m",
        "dpstudy",
        "launch",
        "train_ddp",
        "--params",
        str(params),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def finish(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Wait for every process; on a timeout kill each with its workers, then fail."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                for pid in descendants(p.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                p.kill()
                p.wait()
            p.stdout.close() if p.stdout else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def figures(out: Path) -> tuple[list[tuple], list[tuple]]:
    runs = [tuple(r[k] for k in RUN_FIGURES) for r in read_csv(out / "runs.csv")]
    epochs = [tuple(r[k] for k in EPOCH_FIGURES) for r in read_csv(out / "epochs.csv")]
    return runs, epochs


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(out / "checkpoints" / f"{NAME}.pt", weights_only=False)
    assert ckpt["complete"] and ckpt["epoch"] == EPOCHS - 1
    return ckpt["model"]


def assert_same_model(out: Path, reference: Path) -> None:
    """Bit-identical figures and final weights: the same ranks, data shards, RNG streams and gloo
    all-reduce order give the same floats, so no tolerance is needed."""
    assert figures(out) == figures(reference)
    ref = final_weights(reference)
    got = final_weights(out)
    assert got.keys() == ref.keys()
    for key in ref:
        assert torch.equal(got[key], ref[key]), f"{key} differs from the uninterrupted single-node run"


def study_b(tmp_path: Path) -> tuple[list, list]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(STUDIES["B"]).experiment_id], max_results=100)
    return (
        [r for r in runs if "mlflow.parentRunId" not in r.data.tags],
        [r for r in runs if "mlflow.parentRunId" in r.data.tags],
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_dir) -> Path:
    """The uninterrupted single-node run: 2 processes under ``torchrun --standalone``."""
    tmp = tmp_path_factory.mktemp("reference")
    params = write_params(tmp / "params.yaml", GRID)
    proc = start(params, digits_dir, tmp / "out", launch_env(tmp), tmp / "log")
    assert finish([proc], timeout=120) == [0], (tmp / "log").read_text()
    assert "--nproc-per-node 2 --standalone --max-restarts 0 -m dpstudy train_ddp" in (tmp / "log").read_text()
    assert figures(tmp / "out")[0][0][:2] == (NAME, "finished")
    return tmp / "out"


# ---------------------------------------------------------------------------------------------
# Settings: params.yaml, then the environment


def test_launch_settings_come_from_params_then_environment(tmp_path):
    params = str(write_params(tmp_path / "params.yaml", {"train_adaptive.launch.max_restarts": 3}))
    assert settings("train_ddp", params, {}) == Launch(2, 1, "", "dpstudy-train_ddp", 0)
    assert settings("train_adaptive", params, {}).max_restarts == 3
    env = {
        "DPSTUDY_NPROC_PER_NODE": "gpu",
        "DPSTUDY_NNODES": "4",
        "DPSTUDY_RDZV_ENDPOINT": "node01:29400",
        "DPSTUDY_RDZV_ID": "job-17",
        "DPSTUDY_MAX_RESTARTS": "2",
    }
    launch = settings("train_adaptive", params, env)
    assert launch == Launch("gpu", 4, "node01:29400", "job-17", 2)
    assert torchrun_command("train_adaptive", launch, ["--out", "o"])[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "gpu",
        "--nnodes",
        "4",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "node01:29400",
        "--rdzv-id",
        "job-17",
        "--max-restarts",
        "2",
        "-m",
        "dpstudy",
        "train_adaptive",
        "--out",
        "o",
    ]
    # Restarts need a fresh worker store per attempt (torch's shared one breaks them); kept if set.
    assert torchrun_env(launch, {}) == {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    assert torchrun_env(launch, {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0"}) == {}
    assert torchrun_env(settings("train_ddp", params, {}), {}) == {}
    # One node with an endpoint is a c10d rendezvous too (a one-node job with a fixed address).
    one = settings("train_ddp", params, {"DPSTUDY_RDZV_ENDPOINT": "[::1]:29400"})
    assert "--standalone" not in torchrun_command("train_ddp", one, []) and one.nnodes == 1


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DPSTUDY_NNODES": "0"}, "DPSTUDY_NNODES='0': expected an integer >= 1"),
        ({"DPSTUDY_NNODES": "two"}, "DPSTUDY_NNODES='two': expected an integer >= 1"),
        ({"DPSTUDY_NPROC_PER_NODE": "cpu"}, "DPSTUDY_NPROC_PER_NODE='cpu': expected an integer >= 1 or gpu"),
        ({"DPSTUDY_MAX_RESTARTS": "-1"}, "DPSTUDY_MAX_RESTARTS='-1': expected an integer >= 0"),
        ({"DPSTUDY_NNODES": "2"}, "DPSTUDY_NNODES is 2 but no rendezvous endpoint is set: set DPSTUDY_RDZV_ENDPOINT"),
        ({"DPSTUDY_RDZV_ENDPOINT": "node01"}, "DPSTUDY_RDZV_ENDPOINT: expected host:port of the rendezvous"),
        ({"DPSTUDY_RDZV_ENDPOINT": "node01:99999"}, "DPSTUDY_RDZV_ENDPOINT: expected host:port"),
        (
            {"DPSTUDY_RDZV_ENDPOINT": "n:1", "DPSTUDY_RDZV_ID": ""},
            "DPSTUDY_RDZV_ID: empty; a rendezvous needs a job id",
        ),
    ],
)
def test_bad_environment_values_are_refused(tmp_path, env, message):
    params = str(write_params(tmp_path / "params.yaml"))
    with pytest.raises(UserError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        settings("train_ddp", params, env)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train_ddp.launch.nnodes", 0, "params.yaml: train_ddp.launch.nnodes: must be >= 1, got 0"),
        ("train_ddp.launch.max_restarts", "1", "params.yaml: train_ddp.launch.max_restarts: expected an integer"),
        ("train_adaptive.launch", {"nnodes": 1}, "params.yaml: train_adaptive.launch.rdzv_endpoint: missing"),
        ("train_ddp.launch.nnodes", 2, "params.yaml: train_ddp.launch.nnodes is 2 but no rendezvous endpoint"),
        ("train_ddp.launch.rdzv_endpoint", "a:b", "params.yaml: train_ddp.launch.rdzv_endpoint: expected host:port"),
    ],
)
def test_bad_launch_params_are_refused(tmp_path, key, value, message):
    params = str(write_params(tmp_path / "params.yaml", {key: value}))
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(")):
        settings(key.split(".")[0], params, {})


def test_cli_refuses_bad_settings_in_one_line_before_torchrun(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"train_ddp.launch.nnodes": 0})
    res = run_cli("launch", "train_ddp", "--params", str(params), cwd=tmp_path, env=launch_env(tmp_path), timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: params.yaml: train_ddp.launch.nnodes: must be >= 1, got 0"
    assert "[launch]" not in res.stdout  # refused before torchrun started


def test_cli_prints_the_command_and_checks_stage_arguments_first(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    env = launch_env(tmp_path, DPSTUDY_NNODES="2", DPSTUDY_RDZV_ENDPOINT="10.0.0.1:29400", DPSTUDY_RDZV_ID="j1")
    res = run_cli(
        "launch", "--dry-run", "train_ddp", "--params", str(params), "--out", "o", cwd=tmp_path, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"[launch] {sys.executable} -m torch.distributed.run --nproc-per-node 2 --nnodes 2 --rdzv-backend c10d "
        f"--rdzv-endpoint 10.0.0.1:29400 --rdzv-id j1 --max-restarts 0 -m dpstudy train_ddp --params {params} "
        "--out o"
    ]
    bad = run_cli("launch", "train_ddp", "--params", str(params), "--epochs", "3", cwd=tmp_path, env=env, timeout=60)
    assert bad.returncode == 2 and "unrecognized arguments: --epochs 3" in bad.stderr
    assert "[launch]" not in bad.stdout  # refused before torchrun started


# ---------------------------------------------------------------------------------------------
# Two nodes on one machine


def test_two_single_process_nodes_equal_one_two_process_node(tmp_path, digits_dir, reference):
    """Two `dpstudy launch` agents (nnodes 2, 1 process each, c10d on loopback) train the very
    model one agent with 2 processes trains: same figures, same weights bit for bit."""
    params = write_params(tmp_path / "params.yaml", GRID)
    env = launch_env(
        tmp_path,
        DPSTUDY_NNODES="2",
        DPSTUDY_NPROC_PER_NODE="1",
        DPSTUDY_RDZV_ENDPOINT=f"127.0.0.1:{free_port()}",
        DPSTUDY_RDZV_ID="two-nodes",
    )
    out = tmp_path / "out"
    nodes = [start(params, digits_dir, out, env, tmp_path / f"node{i}.log") for i in range(2)]
    codes = finish(nodes, timeout=120)
    logs = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(logs)
    for log in logs:
        assert "--nproc-per-node 1 --nnodes 2 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:" in log
    # Rank 0 lives on one of the nodes; only it reports, and it saw the world of two.
    reports = [log for log in logs if "train_ddp (quick preset, 2 × cpu, gloo)" in log]
    assert len(reports) == 1 and f"[vgg] {NAME}: finished" in reports[0]
    assert_same_model(out, reference)
    parents, children = study_b(tmp_path)
    assert [p.data.tags["world_size"] for p in parents] == ["2"] and len(children) == 1


# ---------------------------------------------------------------------------------------------
# A worker killed mid-training


def kill_rank1_after_first_checkpoint(proc: subprocess.Popen, out: Path, log: Path) -> tuple[int, list[int], float]:
    """SIGKILL the rank-1 worker once epoch 0's checkpoint of this test's configuration exists."""
    return kill_rank1_after_checkpoint(proc, out / "checkpoints", log, pattern=f"{NAME}.pt")


def test_killed_worker_with_a_restart_resumes_to_the_uninterrupted_result(tmp_path, digits_dir, reference):
    params = write_params(tmp_path / "params.yaml", {**GRID, "train_ddp.launch.max_restarts": 1})
    out, log = tmp_path / "out", tmp_path / "launch.log"
    proc = start(params, digits_dir, out, launch_env(tmp_path), log)
    try:
        killed, _, _ = kill_rank1_after_first_checkpoint(proc, out, log)
    finally:
        code = finish([proc], timeout=120)[0]
    text = log.read_text()
    assert code == 0, text
    assert "[launch] TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 " in text and "--max-restarts 1" in text
    # torchrun saw the kill and started the workers again (each attempt's rank 0 says hello once).
    assert f"failed (exitcode: -9) local_rank: 1 (pid: {killed})" in text
    assert text.count("[train_ddp] 2 process(es), backend gloo, cpu") == 2, text
    # The second attempt resumed mid-training from a checkpoint (not from scratch, not at the end).
    line = next(ln for ln in text.splitlines() if ln.startswith(f"[vgg] {NAME}: finished"))
    restored = int(line.rsplit(", ", 1)[1].split()[0])
    assert 1 <= restored < EPOCHS, line
    assert_same_model(out, reference)
    # MLflow: the first attempt's runs ended FAILED, the second's FINISHED, telling what it restored.
    parents, children = study_b(tmp_path)
    assert sorted(p.info.status for p in parents) == ["FAILED", "FINISHED"]
    done = [c for c in children if c.info.status == "FINISHED"]
    assert len(children) == 2 and len(done) == 1 and done[0].data.tags["restored_epochs"] == str(restored)


def test_killed_worker_without_restarts_fails_the_launch_quickly(tmp_path, digits_dir):
    """params say max_restarts 1; DPSTUDY_MAX_RESTARTS=0 overrides it for this launch, so the
    kill ends the job: non-zero exit, well before torchrun's 30 s SIGTERM grace, no result files."""
    params = write_params(tmp_path / "params.yaml", {**GRID, "train_ddp.launch.max_restarts": 1})
    out, log = tmp_path / "out", tmp_path / "launch.log"
    proc = start(params, digits_dir, out, launch_env(tmp_path, DPSTUDY_MAX_RESTARTS="0"), log)
    try:
        killed, workers, at = kill_rank1_after_first_checkpoint(proc, out, log)
    finally:
        code = finish([proc], timeout=60)[0]
    took = time.monotonic() - at
    text = log.read_text()
    assert code != 0 and "--max-restarts 0" in text, text
    assert took < 25, f"the launch took {took:.1f} s to give up after rank 1 died"
    assert f"Signal 9 (SIGKILL) received by PID {killed}" in text
    assert not [p for p in workers if alive(p)], "a worker outlived the launch"
    assert not (out / "runs.csv").exists()
