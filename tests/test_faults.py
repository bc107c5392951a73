"""Faults a stage meets in the field, each made for real: an MLflow server that answers /health but
hangs on its API (a real HTTP server), a full disk (a real small tmpfs), a read-only output folder
or store (a real read-only bind mount), a binary or garbled params.yaml, and an MLflow store deleted
between stages (a real sqlite store, really deleted). Each is one line naming what and the fix,
exit 2, before any work where it can be known before; nothing half written, no run left RUNNING.

The mounts need root (``mount``); without it those tests are skipped."""

from __future__ import annotations

import csv
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import recipe, run_cli, write_params

from dpstudy.cli import main

TINY_PROFILE = {
    "profile_dataloader.batch_sizes": [16],
    "profile_dataloader.num_workers": [0],
    "profile_dataloader.warmup_batches": 1,
    "profile_dataloader.measure_batches": 2,
    "profile_dataloader.repeats": 1,
    "profile_dataloader.probe.steps": 2,
    "profile_dataloader.probe.warmup_steps": 0,
    "profile_dataloader.probe.repeats": 1,
    "telemetry.interval_s": 0.05,
}


def one_error_line(res_or_err: subprocess.CompletedProcess | str) -> str:
    err = res_or_err if isinstance(res_or_err, str) else res_or_err.stderr
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def runs_by_status(db: Path) -> dict[str, list[str]]:
    """status -> run names in the sqlite store (read-only; {} when there is no store)."""
    if not db.exists():
        return {}
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        found: dict[str, list[str]] = {}
        for name, status in con.execute("SELECT name, status FROM runs"):
            found.setdefault(status, []).append(name)
        return found
    except sqlite3.OperationalError:  # no tables: nothing was ever logged
        return {}
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# Real mounts (root only)


@pytest.fixture
def mount():
    """``mount(*args, target)``: a real mount, undone after the test; skips without root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs or a read-only bind mount")
    done: list[Path] = []

    def _mount(*args: str, target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"mount {' '.join(args)} failed: {res.stderr.strip()}")
        done.append(target)
        return target

    yield _mount
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def read_only(mount, tmp_path):
    """A real read-only folder (a read-only bind mount; root ignores permissions, not this)."""

    def _read_only(target: Path) -> Path:
        source = tmp_path / f".{target.name}-source"
        source.mkdir(exist_ok=True)
        mount("--bind", "-o", "ro", str(source), target=target)
        if not os.statvfs(target).f_flag & os.ST_RDONLY:  # an old mount(8): bind, then remount ro
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        with pytest.raises(OSError):
            (target / "probe").write_text("x")
        return target

    return _read_only


# --------------------------------------------------------------------------------------------
# 1. A server that answers /health but hangs on its API


class _HealthyButHanging(BaseHTTPRequestHandler):
    """GET /health: 200 OK, at once. Anything else: the request is read, then never answered."""

    def do_GET(self):
        if self.path.split("?")[0] == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
            return
        self._hang()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._hang()

    def _hang(self):
        self.server.api_requests += 1
        self.server.release.wait(300)

    def log_message(self, *args):
        pass


@pytest.fixture
def hanging_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthyButHanging)
    server.daemon_threads = True
    server.release, server.api_requests = threading.Event(), 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_a_server_that_hangs_on_its_api_is_one_line_within_seconds(tmp_path, digits_dir, hanging_server):
    uri = f"http://127.0.0.1:{hanging_server.server_address[1]}"
    params = write_params(tmp_path / "params.yaml", TINY_PROFILE)
    start = time.monotonic()
    res = run_cli(
        "profile_dataloader",
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--out",
        "out",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
        timeout=40,
    )
    took = time.monotonic() - start
    assert res.returncode == 2, res.stdout + res.stderr[-3000:]
    line = one_error_line(res)
    assert line.startswith(f"error: MLflow tracking server {uri} answers /health but not its API "), line
    assert "no answer within 5 s" in line and "unset MLFLOW_TRACKING_URI" in line, line
    assert took < 15, f"took {took:.1f} s"
    assert hanging_server.api_requests == 1  # one real API call, no retries
    assert not (tmp_path / "out").exists()  # before any work


# --------------------------------------------------------------------------------------------
# 2 and 5. Real checkpoints of the three training stages in a real sqlite store


@pytest.fixture(scope="module")
def trained(digits_dir, tmp_path_factory) -> Path:
    """A checkout-like folder: results/<training stage>/checkpoints/*.pt from real (tiny) training
    of each training stage's kind, logged by a Tracker of that stage into ./mlflow.db."""
    import torch

    from dpstudy.data.prepared import file_sha256, load_prepared
    from dpstudy.grid.sweep import run_grid
    from dpstudy.track.tracking import Tracker
    from dpstudy.train.engine import RunSpec, TrainData

    root = tmp_path_factory.mktemp("checkout")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    plain = recipe()
    data = {"digits": TrainData(load_prepared(digits_dir / "digits.pt"), file_sha256(digits_dir / "digits.pt"))}

    def spec(sweep: str, **kw) -> RunSpec:
        return RunSpec(sweep, "lenet", 1.0, None, "digits", "single", 1, "resident", 0, 128, "none", 0, plain, **kw)

    for stage, study, specs in (
        ("train_dp", "A", [spec("lenet_lr_scaling")]),
        ("train_ddp", "B", [spec("vgg")]),
        ("train_adaptive", "C", [spec("classification", schedule="fixed_small")]),
    ):
        with Tracker(study, stage, preset="quick", params={}, uri=uri, root=root) as tracker:
            run_grid(specs, data, tracker, root / "results" / stage, device=torch.device("cpu"), sample_interval_s=0.05)
    return root


def test_a_full_disk_is_one_line_naming_the_path_and_keeps_the_earlier_tables(
    trained, tmp_path, digits_dir, mount, monkeypatch, capsys
):
    work = tmp_path / "work"
    shutil.copytree(trained, work)  # results/ and the store of the training stages
    out = mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", target=work / "results" / "evaluate")
    params = write_params(tmp_path / "params.yaml", {"evaluate.device": "cpu"})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    args = [
        "evaluate",
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--results",
        "results",
        "--out",
        "results/evaluate",
    ]

    # An earlier, complete execution (in this process: only its files matter here).
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(args) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["evaluations.csv", "metrics.json"]

    _fill(out)  # then the disk fills up (something else wrote to it)

    res = run_cli(*args, cwd=work, env={"MLFLOW_TRACKING_URI": uri}, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr[-3000:]
    line = one_error_line(res)
    assert line.startswith("error: no space left on device writing results/evaluate/evaluations.csv: "), line
    needed = len((out / "evaluations.csv").read_bytes()) + len((out / "metrics.json").read_bytes())
    assert f"{needed:,} bytes needed, 0 bytes free in results/evaluate" in line, line
    assert "free some space" in line and "unchanged" in line, line
    # The earlier tables are intact, and no temporary file is left behind.
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "filler"} == before
    assert sorted(p.name for p in out.iterdir()) == ["evaluations.csv", "filler", "metrics.json"]
    assert "RUNNING" not in runs_by_status(work / "mlflow.db")


def _fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte (something else wrote to it)."""
    with open(folder / "filler", "wb", buffering=0) as fh, pytest.raises(OSError, match="No space left"):
        while True:
            fh.write(b"\0" * 4096)
    assert os.statvfs(folder).f_bavail == 0


def test_a_checkpoint_on_a_full_disk_is_a_full_disk_not_a_torch_error(tmp_path, mount):
    """torch.save reports a full disk as a bare RuntimeError ("unexpected pos ..."): the checkpoint
    write says what it is, and the previous checkpoint is kept whole."""
    import torch

    from dpstudy.errors import UserError
    from dpstudy.train import checkpoints

    folder = mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", target=tmp_path / "checkpoints")
    path = folder / "lenet-s0.pt"
    checkpoints.save(path, {"epoch": 0, "weights": torch.zeros(1000)})
    before = path.read_bytes()
    _fill(folder)
    with pytest.raises(UserError) as caught:
        checkpoints.save(path, {"epoch": 1, "weights": torch.ones(100_000)})
    assert str(caught.value) == (
        f"no space left on device writing {path}: 0 bytes free in {folder}: free some "
        "space there, or write elsewhere; the earlier files there are unchanged"
    )
    assert path.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["filler", "lenet-s0.pt"]


def test_a_full_artifact_store_is_one_line_and_the_runs_end_failed(
    trained, tmp_path, digits_dir, mount, monkeypatch, capsys
):
    """The disk of the MLflow artifacts fills up (outside the stage's own files): one line, exit 2,
    the stage's runs FAILED rather than left RUNNING."""
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    artifacts = mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", target=work / "mlartifacts")
    _fill(artifacts)
    params = write_params(tmp_path / "params.yaml", {"evaluate.device": "cpu"})
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    code = main(
        [
            "evaluate",
            "--params",
            str(params),
            "--data",
            str(digits_dir),
            "--results",
            "results",
            "--out",
            "results/evaluate",
        ]
    )
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: no space left on device"), line
    assert "free some space on the disk of results/evaluate or of the MLflow store" in line, line
    status = runs_by_status(work / "mlflow.db")
    assert "RUNNING" not in status and status["FAILED"] == ["evaluate"], status
    assert (work / "results" / "evaluate" / "evaluations.csv").is_file()  # the stage's own record is whole


TINY_TRAIN_DP = {
    "train_dp.seeds": [0],
    "train_dp.cpu_processes": 1,
    "train_dp.device": "cpu",
    "train_dp.lenet_utilization.modes": ["single"],
    "train_dp.lenet_utilization.loaders": ["resident"],
    "train_dp.lenet_utilization.batch_sizes": [128],
    "train_dp.lenet_utilization.recipe.epochs": 1,
    "train_dp.lenet_lr_scaling.batch_sizes": [128],
    "train_dp.lenet_lr_scaling.lr_rules": ["none"],
    "train_dp.lenet_lr_scaling.recipe.epochs": 1,
    "train_dp.vgg.modes": ["single"],
    "train_dp.vgg.width": 0.03125,
    "train_dp.vgg.loaders": ["resident"],
    "train_dp.vgg.batch_sizes": [128],
    "train_dp.vgg.recipe.epochs": 1,
    "telemetry.interval_s": 0.05,
}


def test_train_dp_on_a_full_disk_ends_every_study_failed_and_keeps_its_tables(
    trained, tmp_path, digits_dir, mount, monkeypatch, capsys
):
    """train_dp trains study A, then B, then writes the tables of both: a full disk at that point is
    one line, the earlier tables are kept, and both studies' stage runs end FAILED (study A's was
    FINISHED once B started, so the stage looked fine in MLflow)."""
    out = mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", target=tmp_path / "results" / "train_dp")
    params = write_params(tmp_path / "params.yaml", TINY_TRAIN_DP)
    shutil.copy(trained / "mlflow.db", tmp_path / "mlflow.db")  # a store in use (and no schema to create)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["train_dp", "--params", str(params), "--data", str(digits_dir), "--out", "results/train_dp"]
    assert main(args) == 0  # the earlier execution
    tables = {name: (out / name).read_bytes() for name in ("runs.csv", "epochs.csv", "metrics.json")}
    _fill(out)
    capsys.readouterr()

    assert main(args) == 2  # every configuration is reused from its checkpoint; the tables do not fit
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: no space left on device writing results/train_dp/runs.csv: "), line
    assert {name: (out / name).read_bytes() for name in tables} == tables
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    status = runs_by_status(tmp_path / "mlflow.db")
    assert sorted(status["FAILED"]) == ["train_dp", "train_dp"] and "RUNNING" not in status, status


def test_evaluate_after_the_store_was_deleted_says_so_and_logs_every_figure(trained, tmp_path, digits_dir):
    """mlflow.db deleted between the training stages and evaluate: the figures come from
    evaluations.csv (written first, complete); the runs they would have been added to are named as
    missing, in one line, and the figures are logged on evaluate's own runs instead."""
    from mlflow.tracking import MlflowClient

    from dpstudy.track.tracking import STUDIES

    work = tmp_path / "checkout"
    shutil.copytree(trained, work)
    (work / "mlflow.db").unlink()  # between the stages
    params = write_params(tmp_path / "params.yaml", {"evaluate.device": "cpu"})
    uri = f"sqlite:///{work / 'mlflow.db'}"
    res = run_cli(
        "evaluate",
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--results",
        "results",
        "--out",
        "results/evaluate",
        cwd=work,
        env={"MLFLOW_TRACKING_URI": uri},
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    with open(work / "results" / "evaluate" / "evaluations.csv") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 3

    said = [ln for ln in res.stdout.splitlines() if ln.startswith("[mlflow]")]
    assert len(said) == 1, res.stdout
    assert said[0].startswith(
        f"[mlflow] the training runs of 3 configurations of train_dp, train_ddp, train_adaptive are not in {uri} "
    ), said[0]
    assert "deleted or replaced since training?" in said[0] and "evaluations.csv" in said[0], said[0]

    client = MlflowClient(uri)
    for name, row in rows.items():
        study = STUDIES[row["study"]]
        [run] = client.search_runs(
            [client.get_experiment_by_name(study).experiment_id], f"tags.configuration = '{name}'"
        )
        assert run.data.tags["dvc_stage"] == "evaluate" and run.data.tags["training_run"] == "not in store"
        assert run.data.metrics["eval_test_accuracy"] == pytest.approx(float(row["test_metric"]))
        assert run.info.status == "FINISHED"
    assert "RUNNING" not in runs_by_status(work / "mlflow.db")


# --------------------------------------------------------------------------------------------
# 3. A read-only output folder or store: refused before any work


def test_a_read_only_output_folder_stops_train_dp_before_any_work(tmp_path, digits_dir, read_only):
    read_only(tmp_path / "results")
    params = write_params(tmp_path / "params.yaml", TINY_TRAIN_DP)  # tiny, should the check ever miss
    start = time.monotonic()
    res = run_cli(
        "train_dp",
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--out",
        "results/train_dp",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        timeout=300,
    )
    took = time.monotonic() - start
    assert res.returncode == 2, res.stdout + res.stderr[-3000:]
    assert one_error_line(res) == (
        "error: output folder results/train_dp (--out) cannot be written: results is on a read-only file system: "
        "remount it read-write, or pass --out a writable folder"
    )
    assert took < 10, f"took {took:.1f} s"
    assert res.stdout == "" and not (tmp_path / "mlflow.db").exists()  # no run, no store: no work


@pytest.mark.parametrize(
    "command, flag",
    [
        (["download", "--raw", "raw"], "--out"),
        (["download", "--out", "prepared"], "--raw"),
        (["profile_dataloader"], "--out"),
        (["train_dp"], "--out"),
        (["train_ddp"], "--out"),
        (["train_adaptive"], "--out"),
        (["evaluate"], "--out"),
        (["plot"], "--out"),
        (["launch", "train_ddp"], "--out"),
        (["launch", "train_adaptive"], "--out"),
    ],
)
def test_every_stage_checks_its_output_folders_up_front(tmp_path, read_only, monkeypatch, capsys, command, flag):
    """Every stage's folders it writes into (--out, download's --raw; `launch` the stage's own) are
    checked in one place before the stage starts, even before its params are read."""
    read_only(tmp_path / "ro")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main([*command, flag, "ro/deeper", "--params", "nowhere.yaml"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: output folder ro/deeper ({flag}) cannot be written: ro is on a read-only file system: "
        f"remount it read-write, or pass {flag} a writable folder"
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_a_read_only_sqlite_store_is_refused_before_any_work(tmp_path, read_only, monkeypatch, capsys):
    ro = read_only(tmp_path / "store")
    uri = f"sqlite:///{ro / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["profile_dataloader", "--params", "nowhere.yaml", "--out", "out"]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: MLflow store {uri} cannot be written ({ro} is on a read-only file system): remount it "
        "read-write, or unset MLFLOW_TRACKING_URI to log to the local sqlite store mlflow.db"
    )


# --------------------------------------------------------------------------------------------
# 4. A binary or garbled params.yaml


def _binary(path: Path) -> None:
    path.write_bytes(bytes([0x80, 0x93]) + random.Random(0).randbytes(300))


def _utf16(path: Path) -> None:
    path.write_text("preset: quick\n", encoding="utf-16")


def _nul(path: Path) -> None:
    path.write_bytes(b"preset: quick\n\0\0\0\n")


def _folder(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    "make, says",
    [
        (_binary, "params.yaml: not UTF-8 text (byte 0x80 at offset 0; a binary file?): save it as UTF-8 YAML"),
        (_utf16, "params.yaml: not UTF-8 text (byte 0xff at offset 0; UTF-16?): save it as UTF-8 YAML"),
        (_nul, "params.yaml: line 2 is not valid YAML (character #x0000 is not allowed; a binary file?)"),
        (_folder, "params.yaml: a folder, not a params file: pass --params a YAML file"),
    ],
    ids=["binary", "utf16", "nul", "folder"],
)
def test_a_garbled_params_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys, make, says):
    make(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["profile_dataloader", "--params", "params.yaml", "--out", "out"]) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: {says}"
    assert not (tmp_path / "out").exists()


def test_a_binary_params_file_as_a_real_process(tmp_path):
    _binary(tmp_path / "params.yaml")
    res = run_cli("train_dp", "--out", "out", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""}, timeout=60)
    assert res.returncode == 2
    assert one_error_line(res).startswith("error: params.yaml: not UTF-8 text ")
