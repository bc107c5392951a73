"""`dpstudy launch` and the CPU pool when things go wrong, with real faults: real signals sent to a
real launch (and to every process of it, as Slurm does), a real hostname that does not resolve
(a UTS namespace, as root), real rendezvous endpoints that cannot be reached, and a real Ctrl-C
while train_dp's worker pool starts. Real torchrun, real processes, a real sqlite MLflow store;
nothing is mocked."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import single_config_train_dp, write_params
from test_ddp import SMALL_DDP, alive, descendants

from dpstudy.launch import ENV

# One world-2 LeNet configuration on digits (resident loader). Epochs of ~0.15 s: after the first
# checkpoint there are seconds of training left for a signal to land in.
EPOCHS = 30
GRID = {**SMALL_DDP, "train_ddp.vgg.world_sizes": [2], "train_ddp.vgg.recipe.epochs": EPOCHS}
NAME = "vgg-ddp2-resident-b64-linear-s0"
CHILD = "ddp2 resident b64 linear s0 · vgg"  # its MLflow run's name
# What the workers of an interrupted launch must not print: torchrun's account of the shutdown and
# its traceback, a worker's own interruption line (the launch prints the one line).
NOISE = ("Traceback", "SignalException", "death signal", "closing signal", "ChildFailedError")


def clean_env(**overrides: str) -> dict[str, str]:
    """This environment without launch settings or a tracking URI (the store is mlflow.db in the
    working folder, as for a user), one intra-op thread per process."""
    drop = (
        *ENV.values(),
        "DPSTUDY_LAUNCHED",
        "DPSTUDY_RDZV_WAIT_S",
        "MLFLOW_TRACKING_URI",
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
    )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "OMP_NUM_THREADS": "1", **overrides}


def popen(cmd: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """A process group of its own, so that a failed test can stop everything it started."""
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def launch_cmd(params: Path, data: Path, *pre: str) -> list[str]:
    return [
        *pre,
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
        "out",
    ]


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """stdout and stderr once ``proc`` has ended; on a timeout everything it started is killed."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None or descendants(proc.pid):
            for pid in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def statuses(db: Path) -> list[tuple[str, str]]:
    """(run name, status) of every run in the store, sorted."""
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return sorted(con.execute("SELECT name, status FROM runs"))
    finally:
        con.close()


def wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, timeout: float = 90) -> None:
    folder, pattern = path_glob
    deadline = time.monotonic() + timeout
    while not list(folder.glob(pattern)):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"ended with {proc.returncode} before {pattern} appeared:\n{out[-3000:]}\n{err[-3000:]}")
        assert time.monotonic() < deadline, f"no {pattern} in {folder} within {timeout} s"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# 1. SIGTERM / SIGINT sent to a launch


@pytest.mark.parametrize(
    "signum, whole_job",
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-to-every-process"],
)
def test_an_interrupted_launch_ends_in_one_line_with_its_runs_killed_and_resumes(
    tmp_path, digits_dir, signum, whole_job
):
    """The launch exits with 128 + the signal and one line of its own; no traceback, no worker
    noise; the stage's MLflow runs end KILLED (the store: mlflow.db in the working folder); the
    configuration's epoch checkpoint stays, and the next launch resumes from it. whole_job: the
    signal reaches the workers too at the same moment, as Slurm signals every process of a job."""
    params = write_params(tmp_path / "params.yaml", GRID)
    proc = popen(launch_cmd(params, digits_dir), tmp_path, clean_env())
    try:
        wait_for((tmp_path / "out" / "checkpoints", f"{NAME}.pt"), proc)  # epoch 0 is done
        workers = descendants(proc.pid)
        sent = time.monotonic()
        for pid in workers if whole_job else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        proc.send_signal(signum)
    finally:
        out, err = finish(proc, timeout=60)
    took = time.monotonic() - sent
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, out[-2000:] + err[-4000:]
    assert err.splitlines().count(f"interrupted ({name})") == 1, err
    assert [line for line in err.splitlines() if line.startswith("interrupted")] == [f"interrupted ({name})"], err
    assert not [n for n in NOISE if n in err], err
    assert took < 20, f"the launch took {took:.1f} s to stop"
    assert not [p for p in workers if alive(p)], "a worker outlived the launch"
    assert statuses(tmp_path / "mlflow.db") == [(CHILD, "KILLED"), ("train_ddp", "KILLED")]
    checkpoint = torch.load(tmp_path / "out" / "checkpoints" / f"{NAME}.pt", weights_only=False)
    assert not checkpoint["complete"] and checkpoint["epoch"] < EPOCHS - 1  # stopped mid-training, kept
    assert not (tmp_path / "out" / "runs.csv").exists()
    if signum != signal.SIGTERM or whole_job:
        return  # the resume is the same for every interruption: checked once

    rerun = popen(launch_cmd(params, digits_dir), tmp_path, clean_env())
    out, err = finish(rerun, timeout=120)
    assert rerun.returncode == 0, out[-2000:] + err[-4000:]
    line = next(ln for ln in out.splitlines() if ln.startswith(f"[vgg] {NAME}: finished"))
    assert f", {checkpoint['epoch'] + 1} epochs from checkpoint" in line, line
    assert statuses(tmp_path / "mlflow.db") == [
        (CHILD, "FINISHED"),
        (CHILD, "KILLED"),
        ("train_ddp", "FINISHED"),
        ("train_ddp", "KILLED"),
    ]


# ---------------------------------------------------------------------------------------------
# 2. A one-node launch where this machine's hostname does not resolve


def test_a_one_node_launch_runs_where_the_hostname_does_not_resolve(tmp_path, digits_dir):
    """In a UTS namespace whose hostname is in no /etc/hosts or DNS (a container missing from its
    own /etc/hosts), a one-node launch meets on loopback and finishes, instead of c10d waiting
    minutes for that name."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a UTS namespace with its own hostname")
    hostname = f"dpstudy-nowhere-{os.getpid()}"
    with contextlib.suppress(OSError):
        socket.getaddrinfo(hostname, None)
        pytest.skip(f"{hostname} resolves here")
    params = write_params(tmp_path / "params.yaml", {**GRID, "train_ddp.vgg.recipe.epochs": 1})
    # `hostname` renames only the new namespace; the launch then runs under that name.
    unshared = ["unshare", "--uts", "--fork", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]
    start = time.monotonic()
    proc = popen(launch_cmd(params, digits_dir, *unshared), tmp_path, clean_env())
    out, err = finish(proc, timeout=90)
    took = time.monotonic() - start
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    assert "--local-addr 127.0.0.1 --nproc-per-node 2 --standalone" in out
    assert f"[vgg] {NAME}: finished" in out
    assert (tmp_path / "out" / "runs.csv").exists()
    assert took < 60, f"the launch took {took:.0f} s"


# ---------------------------------------------------------------------------------------------
# 3. A rendezvous on another node that cannot be reached


@pytest.mark.parametrize(
    "endpoint, problem",
    [
        ("no-such-host.invalid:29400", "does not resolve"),  # RFC 6761: never resolves
        ("192.0.2.77:29400", ""),  # RFC 5737 TEST-NET-1: no machine has it (unreachable or silent)
    ],
    ids=["unresolvable", "no-such-machine"],
)
def test_an_unreachable_rendezvous_is_one_line_within_seconds(tmp_path, digits_dir, endpoint, problem):
    params = write_params(tmp_path / "params.yaml", GRID)
    env = clean_env(
        DPSTUDY_NNODES="2",
        DPSTUDY_NPROC_PER_NODE="1",
        DPSTUDY_RDZV_ENDPOINT=endpoint,
        DPSTUDY_RDZV_ID="faults",
        DPSTUDY_RDZV_WAIT_S="2",
    )
    start = time.monotonic()
    proc = popen(launch_cmd(params, digits_dir), tmp_path, env)
    out, err = finish(proc, timeout=45)
    took = time.monotonic() - start
    assert proc.returncode == 2, out[-2000:] + err[-4000:]
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: rendezvous endpoint {endpoint} (DPSTUDY_RDZV_ENDPOINT) {problem}"), err
    assert "after 2 s: it must be host:port of the node that hosts the rendezvous" in err
    assert "torch.distributed.run" not in out  # torchrun never started
    assert took < 30, f"refused after {took:.0f} s"


def test_the_reachability_probe_reads_a_live_store_dead_port_and_leaves_the_store_working():
    """The probe a node that is not the host makes: a live c10d store answers (and still serves its
    clients after the probe's connection came and went); a port nothing listens on refuses."""
    from torch.distributed import TCPStore

    from dpstudy.rendezvous import rendezvous_problem

    server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    assert rendezvous_problem("127.0.0.1", server.port) is None
    client = TCPStore("127.0.0.1", server.port, is_master=False)
    client.set("key", "value")
    assert server.get("key") == b"value"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    assert rendezvous_problem("127.0.0.1", dead) == "refuses connections (nothing listens there)"
    assert rendezvous_problem("no-such-host.invalid", 29400) == "does not resolve"


# ---------------------------------------------------------------------------------------------
# 4. Ctrl-C while train_dp's CPU worker pool starts


def _pool_params(path: Path) -> Path:
    return write_params(path, single_config_train_dp(**{"train_dp.cpu_processes": 2}))


def _pool_worker(pid: int) -> bool:
    """Whether ``pid`` is a worker the pool spawned (not multiprocessing's resource tracker)."""
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _importing_torch(pid: int) -> bool:
    """Whether a pool worker is importing torch: its C extension is loaded, its Python modules are
    next (seconds, before the worker's start-up function runs)."""
    try:
        return _pool_worker(pid) and "torch/_C." in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_while_the_cpu_pool_starts_is_one_line_without_worker_tracebacks(tmp_path, digits_dir):
    """Ctrl-C sends SIGINT to the whole process group, the pool's workers included, here while they
    import torch. It reaches them a moment before the stage, as when the stage holds signals while
    it writes to MLflow: a worker that could print a traceback has the time to."""
    params = _pool_params(tmp_path / "params.yaml")
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    proc = popen(
        [
            sys.executable,
            "-m",
            "dpstudy",
            "train_dp",
            "--params",
            str(params),
            "--data",
            str(digits_dir),
            "--out",
            "out",
        ],
        tmp_path,
        env,
    )
    try:
        deadline = time.monotonic() + 120
        while not [p for p in descendants(proc.pid) if _importing_torch(p)]:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no pool worker within 120 s"
            time.sleep(0.005)
        workers = [p for p in descendants(proc.pid) if _pool_worker(p)]
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        time.sleep(0.3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # the group: the stage, and the workers again
    finally:
        out, err = finish(proc, timeout=60)
    assert proc.returncode == 130, out[-2000:] + err[-4000:]
    assert err.splitlines() == ["interrupted (SIGINT)"], err
    assert not [p for p in workers if alive(p)], "a pool worker outlived the stage"
    assert "RUNNING" not in {status for _, status in statuses(tmp_path / "mlflow.db")}


def test_an_interrupted_launch_ends_its_own_failed_and_running_runs_killed(tmp_path):
    """What a worker made of the stop does not decide: the launch ends KILLED the runs of its own
    launch id that are FAILED or RUNNING, and leaves finished runs and other launches' runs alone."""
    from mlflow.tracking import MlflowClient

    from dpstudy.track.endings import mark_launch_killed

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    made = {}
    for name, launch, status in [
        ("failed", "L", "FAILED"),
        ("running", "L", "RUNNING"),
        ("done", "L", "FINISHED"),
        ("other", "M", "FAILED"),
    ]:
        run_id = client.create_run(exp, run_name=name, tags={"launch": launch}).info.run_id
        if status != "RUNNING":
            client.set_terminated(run_id, status=status)
        made[name] = run_id
    assert mark_launch_killed("L", uri) == 2
    assert {n: client.get_run(r).info.status for n, r in made.items()} == {
        "failed": "KILLED",
        "running": "KILLED",
        "done": "FINISHED",
        "other": "FAILED",
    }
