"""MLflow tracking when things go wrong, with real processes, real signals and a real sqlite store
(or a real dead port): an unreachable server, a stage stopped by SIGTERM/SIGINT, a stage killed
with SIGKILL and then run again, and a checkout copied with its store. Nothing is mocked."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli, write_params
from mlflow.tracking import MlflowClient

from dpstudy.cli import main
from dpstudy.track.store import HTTP_LIMITS
from dpstudy.track.tracking import STUDIES, Tracker

STAGE = "profile_dataloader"
# The stage's first configuration (standard loader, one worker process) reads batches until it is
# stopped: it is certainly in progress when the signal lands.
ENDLESS_PROFILE = {
    "profile_dataloader.batch_sizes": [16],
    "profile_dataloader.num_workers": [1],
    "profile_dataloader.warmup_batches": 1,
    "profile_dataloader.measure_batches": 10**8,
}
FIRST_CHILD = "throughput standard bs=16 workers=1"


def dead_port() -> int:
    """A loopback port nothing listens on: bound once by the OS, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable(uri: str) -> str:
    return (
        f"error: MLflow tracking server {uri} is not reachable (connection refused): start it, or unset "
        "MLFLOW_TRACKING_URI to log to the local sqlite store mlflow.db"
    )


def study_a_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDIES["A"])
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def start_stage(tmp_path: Path, data: Path, uri: str) -> subprocess.Popen:
    """``dpstudy profile_dataloader`` on the endless grid, as DVC would start it."""
    params = write_params(tmp_path / "params.yaml", ENDLESS_PROFILE)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.Popen(
        [sys.executable, "-m", "dpstudy", STAGE, "--params", str(params), "--data", str(data), "--out", "out"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def running(db: Path) -> set[str]:
    """Names of the RUNNING runs in the store, read-only: an MlflowClient here would race the
    stage's own creation of the schema."""
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:  # not created yet
        return set()
    try:
        return {name for (name,) in con.execute("SELECT name FROM runs WHERE status = 'RUNNING'")}
    except sqlite3.OperationalError:  # tables not created yet, or busy
        return set()
    finally:
        con.close()


def wait_for_running_child(proc: subprocess.Popen, uri: str, timeout: float = 90) -> None:
    """Poll the store until the stage's first configuration is a RUNNING child run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if FIRST_CHILD in running(Path(uri[len("sqlite:///") :])):
            return
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"no RUNNING child run within {timeout} s: {proc.communicate()}")


def group_gone(pgid: int, timeout: float = 15) -> bool:
    """Whether every process of the stage's session (its DataLoader worker too) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def statuses(uri: str) -> dict[str, str]:
    return {r.info.run_name: r.info.status for r in study_a_runs(uri)}


# --------------------------------------------------------------------------------------------
# 1. An unreachable server: one line within seconds, before any work


@pytest.mark.parametrize(
    "command",
    [
        [STAGE, "--out", "out"],
        ["launch", "train_ddp", "--out", "out"],
    ],
    ids=["stage", "launch"],
)
def test_an_unreachable_server_stops_the_command_in_one_line_within_seconds(tmp_path, digits_dir, command):
    uri = f"http://127.0.0.1:{dead_port()}"
    params = write_params(tmp_path / "params.yaml")
    start = time.monotonic()
    res = run_cli(
        *command,
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
        timeout=60,
    )
    took = time.monotonic() - start
    assert res.returncode == 2, res.stdout + res.stderr
    assert took < 20, f"took {took:.1f} s to give up on {uri}"
    assert res.stderr.splitlines() == [unreachable(uri)]
    assert "[launch]" not in res.stdout  # torchrun was never started
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_missing_sqlite_folder_is_named_before_any_work(tmp_path, digits_dir):
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}"
    params = write_params(tmp_path / "params.yaml")
    res = run_cli(
        STAGE,
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--out",
        "out",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"error: MLflow store {uri} cannot be written (folder {tmp_path / 'no' / 'such'} does not exist): "
        "create it, or unset MLFLOW_TRACKING_URI to log to the local sqlite store mlflow.db"
    ]
    assert not (tmp_path / "out").exists()


def test_commands_that_do_not_log_skip_the_check(tmp_path, digits_dir, monkeypatch, capsys):
    """download never logs; a torchrun worker of rank > 0 never talks to MLflow; `launch --dry-run`
    only prints. None of them asks the (dead) server."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{dead_port()}")
    params = write_params(tmp_path / "params.yaml")
    assert main(["download", "--params", str(params), "--out", "prepared", "--raw", "raw"]) == 0
    assert (tmp_path / "prepared" / "digits.pt").is_file()
    assert main(["launch", "--dry-run", "train_ddp", "--params", str(params), "--data", "prepared"]) == 0
    capsys.readouterr()
    bad = write_params(tmp_path / "bad.yaml", {"profile_dataloader.batch_sizes": [0]})
    monkeypatch.setenv("RANK", "1")
    assert main([STAGE, "--params", str(bad), "--data", str(digits_dir), "--out", "out"]) == 2
    assert capsys.readouterr().err == "error: bad.yaml: profile_dataloader.batch_sizes[0]: must be >= 1, got 0\n"


def test_every_tracking_call_gives_up_on_a_dead_server_within_seconds(tmp_path):
    """Past the start-up check (the server died later), a tracking call retries a bounded number of
    times: MLflow's own defaults (7 retries, back-off factor 2) would keep a stage silent for
    minutes. A value already in the environment is kept."""
    uri = f"http://127.0.0.1:{dead_port()}"
    code = (
        "import os, time\n"
        "from dpstudy.track.tracking import Tracker\n"
        "from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES as R, "
        "MLFLOW_HTTP_REQUEST_TIMEOUT as T\n"
        "print(R.get(), T.get(), flush=True)\n"
        "start = time.monotonic()\n"
        "try:\n"
        f"    Tracker('A', 'profile_dataloader', preset='quick', params={{}}, uri={uri!r}).__enter__()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, round(time.monotonic() - start, 1))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in HTTP_LIMITS}
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "MLFLOW_HTTP_REQUEST_TIMEOUT": "25"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - start
    limits, failure = res.stdout.splitlines()
    assert limits == "2 25"  # the bounded default, and the caller's own timeout kept
    assert failure.startswith("MlflowException "), res.stdout + res.stderr
    assert took < 30, f"a call to a dead server took {took:.1f} s to fail"


def test_container_recipes_set_the_same_retry_bounds():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert {k: compose["services"]["trainer"]["environment"][k] for k in HTTP_LIMITS} == HTTP_LIMITS
    docs = list(yaml.safe_load_all((REPO / "docker" / "kubernetes.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert {k: env[k] for k in HTTP_LIMITS} == HTTP_LIMITS


# --------------------------------------------------------------------------------------------
# 2. A stage stopped by a signal ends its runs KILLED; one killed by SIGKILL is cleaned up later


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_stage_and_its_runs_killed(tmp_path, digits_dir, signum, code):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_stage(tmp_path, digits_dir, uri)
    try:
        wait_for_running_child(proc, uri)
        sent = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, out + err
    # One line of ours (a DataLoader worker cut off mid-handshake may add torch's own noise).
    assert err.splitlines().count(f"interrupted ({signal.Signals(signum).name})") == 1, err
    assert took < 20, f"the stage took {took:.1f} s to stop"
    assert statuses(uri) == {STAGE: "KILLED", FIRST_CHILD: "KILLED"}
    assert group_gone(proc.pid), "a process of the stage (its DataLoader worker?) outlived it"


def test_an_interruption_python_swallows_is_delivered_again(tmp_path):
    """A handler's exception raised inside ``__del__`` (or an at-fork hook, as when a signal lands
    while a DataLoader worker starts) is printed and dropped by Python: the command is interrupted
    again a second later instead of running on."""
    code = (
        "import os, signal, time\n"
        "from dpstudy.cli import Interrupted, _signals\n"
        "class Swallows:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.2)  # the handler runs here; its exception is 'ignored'\n"
        "signals = _signals()\n"
        "signals.install()\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    Swallows()\n"
        "    while time.monotonic() - start < 15:\n"
        "        time.sleep(0.05)\n"
        "    print('ran on')\n"
        "except Interrupted as exc:\n"
        "    print('interrupted', exc.signum, round(time.monotonic() - start))\n"
        "finally:\n"
        "    signals.uninstall()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["interrupted", str(int(signal.SIGTERM)), "1"], res.stdout + res.stderr
    assert "Exception ignored in" in res.stderr  # the first one really was swallowed


def test_runs_left_running_by_a_killed_stage_are_marked_killed_by_the_next_one(tmp_path, digits_dir, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = start_stage(tmp_path, digits_dir, uri)
    try:
        wait_for_running_child(proc, uri)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and its DataLoader worker, no cleanup
        proc.communicate()
    assert statuses(uri) == {STAGE: "RUNNING", FIRST_CHILD: "RUNNING"}
    killed = {r.info.run_name: r for r in study_a_runs(uri)}
    assert killed[STAGE].data.tags["pid"] == str(proc.pid)
    assert killed[STAGE].data.tags["host"] == platform.node()

    # Other RUNNING runs in the same store: a live execution of the stage (its process exists), one
    # on another machine, one of another stage, one from a version without the pid tag, and one
    # whose pid is now this very process's (a container's pids repeat on every start).
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDIES["A"]).experiment_id
    live = subprocess.Popen(["sleep", "120"])
    try:
        others = {
            "live here": {"dvc_stage": STAGE, "host": platform.node(), "pid": str(live.pid)},
            "other host": {"dvc_stage": STAGE, "host": "node-elsewhere", "pid": str(proc.pid)},
            "other stage": {"dvc_stage": "train_dp", "host": platform.node(), "pid": str(proc.pid)},
            "no pid tag": {"dvc_stage": STAGE, "host": platform.node()},
            "reused pid": {"dvc_stage": STAGE, "host": platform.node(), "pid": str(os.getpid())},
        }
        for name, tags in others.items():
            client.create_run(exp, run_name=name, tags=tags)
        capsys.readouterr()

        with Tracker("A", STAGE, preset="quick", params={}, uri=uri, root=tmp_path) as rerun:
            # A second Tracker of the stage in the same process leaves the first one's runs alone.
            with Tracker("A", STAGE, preset="quick", params={}, uri=uri, root=tmp_path):
                pass
            assert client.get_run(rerun.parent.run_id).info.status == "RUNNING"
        lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[mlflow]")]
        assert lines == [
            f"[mlflow] 4 runs of {STAGE} left RUNNING by an interrupted execution (kill -9?) marked KILLED"
        ]
        assert sorted((r.info.run_name, r.info.status) for r in study_a_runs(uri)) == sorted(
            [
                (STAGE, "KILLED"),
                (FIRST_CHILD, "KILLED"),
                ("no pid tag", "KILLED"),  # the stale ones
                ("reused pid", "KILLED"),
                ("live here", "RUNNING"),
                ("other host", "RUNNING"),
                ("other stage", "RUNNING"),  # left alone
                (STAGE, "FINISHED"),
                (STAGE, "FINISHED"),
            ]
        )  # this process's own parent runs

        # Said once: the next execution finds nothing left to clean up.
        with Tracker("A", STAGE, preset="quick", params={}, uri=uri, root=tmp_path):
            pass
        assert "[mlflow]" not in capsys.readouterr().out
        assert statuses(uri)["live here"] == "RUNNING"
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------------------------
# 10. A copied or moved checkout logs into its own mlartifacts


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _notices(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[mlflow]")]


def _log_new(root: Path) -> tuple[str, str]:
    """A stage in the checkout at ``root``: a child and the parent each log ``new.txt``."""
    (root / "new.txt").write_text(f"from {root.name}")
    with Tracker("A", STAGE, preset="quick", params={}, root=root, uri=f"sqlite:///{root / 'mlflow.db'}") as tr:
        with tr.child("config", {}) as run:
            run.log_artifact(root / "new.txt")
        tr.parent.log_artifact(root / "new.txt", "tables")
        return tr.parent.run_id, run.run_id


def test_a_copied_or_moved_checkout_logs_artifacts_into_its_own_folder(tmp_path, capsys):
    """MLflow records absolute artifact paths (the original's, in a copy) and has no call to change
    them: the copy's stages log beside its own store all the same, without touching the original,
    and say so once per copy."""
    a, b, c = tmp_path / "orig", tmp_path / "copy", tmp_path / "moved"
    a.mkdir()
    (a / "notes.txt").write_text("from the original")
    with (
        Tracker("A", STAGE, preset="quick", params={}, root=a, uri=f"sqlite:///{a / 'mlflow.db'}") as tr,
        tr.child("config", {}) as run,
    ):
        run.log_artifact(a / "notes.txt")
        old_run = run.run_id
    location = MlflowClient(f"sqlite:///{a / 'mlflow.db'}").get_experiment_by_name(STUDIES["A"]).artifact_location
    assert location == (a / "mlartifacts" / STUDIES["A"]).as_uri()
    shutil.copytree(a, b, symlinks=True)  # cp -a of the checkout
    before = _listing(a)
    capsys.readouterr()

    parent, child = _log_new(b)
    assert _notices(capsys) == [
        f"[mlflow] mlflow.db was copied from {a}: its artifacts are logged into {b / 'mlartifacts'}"
    ]
    assert _listing(a) == before, "the copy wrote into the original's folder"
    runs = b / "mlartifacts" / STUDIES["A"]
    assert (runs / child / "artifacts" / "new.txt").read_text() == "from copy"
    assert (runs / parent / "artifacts" / "tables" / "new.txt").read_text() == "from copy"
    assert (runs / old_run / "artifacts" / "notes.txt").read_text() == "from the original"  # carried along
    # A later stage's figures for a run found by its configuration land in the copy as well.
    with Tracker("A", "evaluate", preset="quick", params={}, root=b, uri=f"sqlite:///{b / 'mlflow.db'}") as ev:
        ev.find("config", STAGE).log_text("x\n", "eval.csv")
    assert (runs / child / "artifacts" / "eval.csv").is_file() and _listing(a) == before
    assert _notices(capsys) == []  # said once per copy

    shutil.move(b, c)  # a moved checkout: the recorded folder no longer exists at all
    parent, child = _log_new(c)
    assert _notices(capsys) == [
        f"[mlflow] mlflow.db was copied from {a}: its artifacts are logged into {c / 'mlartifacts'}"
    ]
    assert (c / "mlartifacts" / STUDIES["A"] / child / "artifacts" / "new.txt").read_text() == "from moved"
    assert not b.exists() and _listing(a) == before

    # The original keeps logging into its own folder, silently.
    _log_new(a)
    assert _notices(capsys) == [] and len(list((a / "mlartifacts").rglob("new.txt"))) == 2
