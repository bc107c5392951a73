"""DistributedDataParallel for real: gloo process groups on the CPU, started by torchrun as
dvc.yaml starts train_ddp, on prepared digits; nothing is mocked."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import REPO, run_cli, write_params
from mlflow.tracking import MlflowClient

from dpstudy.data.loaders import epoch_permutation, rank_batches
from dpstudy.data.prepared import load_prepared
from dpstudy.track.tracking import STUDIES

TORCHRUN = Path(sys.executable).with_name("torchrun")
# torchrun gives each worker OMP_NUM_THREADS=1 unless set; plain processes here get the same, as
# two intra-op threads on a busy 2-core machine made LeNet steps ~8x slower, not faster.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
ONE_STEP = REPO / "tests" / "ddp_one_step.py"

# A small train_ddp grid: LeNet on digits, one per-rank batch, one lr rule, one seed, resident
# loader. Each test adds the world sizes (and epochs) it needs.
SMALL_DDP = {
    "train_ddp.vgg.model": "lenet",
    "train_ddp.vgg.width": 1.0,
    "train_ddp.vgg.dataset": "digits",
    "train_ddp.vgg.loaders": ["resident"],
    "train_ddp.vgg.batch_sizes": [32],
    "train_ddp.vgg.lr_rules": ["linear"],
    "train_ddp.seeds": [0],
    "train_ddp.device": "cpu",
    "train_ddp.vgg.recipe.epochs": 2,
    "telemetry.interval_s": 0.2,
}


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    """The launch line of dvc.yaml's train_ddp stage, with ``args`` after ``--nproc-per-node``."""
    return [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", *args]


def mlflow_env(tmp_path: Path) -> tuple[str, dict]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, {**os.environ, "MLFLOW_TRACKING_URI": uri}


def stage_args(params: Path, digits_dir: Path, out: Path) -> list[str]:
    return ["-m", "dpstudy", "train_ddp", "--params", str(params), "--data", str(digits_dir), "--out", str(out)]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def study_b_runs(uri: str) -> tuple[list, list]:
    """(parent runs, child runs) of study B in the store at ``uri``."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDIES["B"])
    assert exp is not None, "no study B experiment in MLflow"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def kill_rank1_after_checkpoint(
    proc: subprocess.Popen, checkpoints: Path, log: Path, pattern: str = "*.pt"
) -> tuple[int, list[int], float]:
    """SIGKILL the rank-1 worker (a child of the torchrun agent) once a checkpoint matching ``pattern``
    exists in ``checkpoints`` (an epoch has ended); returns its pid, every worker's pid and the time."""
    deadline = time.monotonic() + 90
    while not list(checkpoints.glob(pattern)):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no epoch finished within 90 s"
        time.sleep(0.01)
    workers = [p for p in descendants(proc.pid) if "RANK" in environ(p)]
    rank1 = [p for p in workers if environ(p)["RANK"] == "1"]
    assert len(workers) == 2 and len(rank1) == 1, f"workers {workers}, rank 1 {rank1}"
    os.kill(rank1[0], signal.SIGKILL)
    return rank1[0], workers, time.monotonic()


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), read from /proc."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: ppid
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent_of.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# DDP is large-batch SGD


def test_ddp_two_ranks_match_one_process_at_twice_the_batch(tmp_path, digits_dir):
    """2 gloo ranks at per-rank batch 16 end one SGD step with the parameters one process reaches
    at batch 32 on the same 32 samples: DDP's gradient average is the large-batch gradient."""
    data = digits_dir / "digits.pt"
    two = subprocess.run(
        torchrun_cmd(2, str(ONE_STEP), str(data), "16", str(tmp_path / "two.pt")),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert two.returncode == 0, two.stderr
    one = subprocess.run(
        [sys.executable, str(ONE_STEP), str(data), "32", str(tmp_path / "one.pt")],
        cwd=tmp_path,
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr
    two, one = (torch.load(tmp_path / f"{n}.pt", weights_only=False) for n in ("two", "one"))
    assert (two["world"], one["world"]) == (2, 1)

    # The sharding rule: the ranks' first batches are every other index of the single process's.
    labels = load_prepared(data).train_labels
    perm = epoch_permutation(len(labels), seed=0, epoch=0)
    single = rank_batches(perm, 32, world=1, rank=0)[0]
    shards = [rank_batches(perm, 16, world=2, rank=r)[0] for r in range(2)]
    assert [len(s) for s in shards] == [16, 16] and len(single) == 32
    assert sorted(torch.cat(shards).tolist()) == sorted(single.tolist())
    # ... and those are the very samples each process trained on (images bit for bit).
    ((x1, y1),) = one["batches"]
    for r, (x, y) in enumerate(two["batches"]):
        assert torch.equal(y, labels[shards[r]])
        assert torch.equal(x, x1[r::2]) and torch.equal(y, y1[r::2])
    assert torch.equal(y1, labels[single])

    # float32 sums of 16 + 16 per-sample gradients averaged over ranks vs one sum of 32 differ in
    # summation order only: ~1e-8 after an lr-0.1 step. The step itself moves every tensor by
    # >= 1e-4 (asserted below), so 1e-6 is far above rounding and far below a wrong gradient.
    atol = 1e-6
    assert one["initial"].keys() == two["final"].keys() == one["final"].keys()
    for name, before in one["initial"].items():
        assert torch.equal(before, two["initial"][name]), f"{name}: different initial weights"
        moved = (one["final"][name] - before).abs().max().item()
        assert moved > 100 * atol, f"{name} barely changed ({moved:.2e}): the test could not fail"
        diff = (two["final"][name] - one["final"][name]).abs().max().item()
        assert diff <= atol, f"{name}: DDP(2×16) and one process (32) differ by {diff:.2e} > {atol}"


# ---------------------------------------------------------------------------------------------
# The train_ddp stage


def test_train_ddp_runs_as_a_plain_process(tmp_path, digits_dir):
    """Without torchrun the stage is a world of one: world size 2 is skipped and said so, the
    world-1 configuration trains, writes every result file and logs FINISHED runs."""
    params = write_params(tmp_path / "params.yaml", {**SMALL_DDP, "train_ddp.vgg.world_sizes": [1, 2]})
    uri, _ = mlflow_env(tmp_path)
    res = run_cli(
        "train_ddp",
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--out",
        "out",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri, **ONE_THREAD},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "world sizes [2] skipped: only 1 launched" in res.stdout + res.stderr

    out = tmp_path / "out"
    rows = read_csv(out / "runs.csv")
    assert [(r["name"], r["world"], r["global_batch"], r["outcome"]) for r in rows] == [
        ("vgg-ddp1-resident-b32-linear-s0", "1", "32", "finished")
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["vgg-ddp1-resident-b32-linear-s0.pt"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["B5_acc_gap"] and math.isnan(metrics["B5_acc_gap"])  # one world size: no B5

    parents, children = study_b_runs(uri)
    assert len(parents) == 1 and len(children) == 1
    assert [r.info.status for r in parents + children] == ["FINISHED", "FINISHED"]
    assert children[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert parents[0].data.tags["skipped_world_sizes"] == "2"


def test_ddp_stage_under_torchrun_writes_results_once_with_all_reduced_figures(tmp_path, digits_dir):
    """2 processes, world sizes 1 and 2: one row per configuration, written once by rank 0, with
    the figures of world 2 all-reduced over both ranks (steps halve, memory per rank, all-reduce
    share measured) and a single MLflow parent run."""
    params = write_params(tmp_path / "params.yaml", {**SMALL_DDP, "train_ddp.vgg.world_sizes": [1, 2]})
    uri, env = mlflow_env(tmp_path)
    res = subprocess.run(
        torchrun_cmd(2, *stage_args(params, digits_dir, tmp_path / "out")),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    # Only rank 0 reports: each configuration's line and the closing table appear once.
    assert res.stdout.count("[vgg] vgg-ddp1-resident-b32-linear-s0: finished") == 1
    assert res.stdout.count("[vgg] vgg-ddp2-resident-b64-linear-s0: finished") == 1
    assert res.stdout.count("train_ddp (quick preset, 2 × cpu, gloo)") == 1

    out = tmp_path / "out"
    rows = {int(r["world"]): r for r in read_csv(out / "runs.csv")}
    assert sorted(rows) == [1, 2] and len(read_csv(out / "runs.csv")) == 2
    for world, row in rows.items():
        assert row["outcome"] == "finished" and row["epochs"] == "2"
        assert int(row["batch"]) == 32 and int(row["global_batch"]) == 32 * world
        assert len(row["device_mem_mib"].split(";")) == world  # one figure per rank
        assert all(float(m) > 0 for m in row["device_mem_mib"].split(";"))
    assert 0.0 < float(rows[2]["allreduce_fraction"]) <= 1.0

    epochs = read_csv(out / "epochs.csv")
    steps = {w: {int(e["steps"]) for e in epochs if e["series"] == rows[w]["name"]} for w in rows}
    assert all(len(s) == 1 for s in steps.values()), steps  # same step count every epoch
    (steps1,), (steps2,) = steps[1], steps[2]
    assert abs(steps2 - steps1 / 2) <= 1, (steps1, steps2)
    # Every training image once per epoch: full batches, plus a tail of >= 2 images as a step.
    n_train = len(load_prepared(digits_dir / "digits.pt").train_labels)
    assert steps1 == n_train // 32 + (n_train % 32 >= 2)
    assert len(epochs) == 4 and {e["epoch"] for e in epochs} == {"0", "1"}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "vgg-ddp1-resident-b32-linear-s0.pt",
        "vgg-ddp2-resident-b64-linear-s0.pt",
    ]
    json.loads((out / "metrics.json").read_text())

    parents, children = study_b_runs(uri)
    assert len(parents) == 1, "every rank but 0 must stay out of MLflow"
    assert parents[0].data.tags["world_size"] == "2"
    assert sorted(r.data.tags["world_size"] for r in children) == ["1", "2"]
    assert {r.info.status for r in parents + children} == {"FINISHED"}


def test_one_process_configurations_train_side_by_side_on_both_ranks_and_as_alone(tmp_path, digits_dir):
    """On the CPU, world-1 configurations are dealt out to ranks 0 and 1, which train them at the
    same time (no core idles at a barrier); each trains exactly what it trains in a plain process,
    and rank 0 logs both runs, tagged with the rank that trained them."""
    params = write_params(
        tmp_path / "params.yaml", {**SMALL_DDP, "train_ddp.vgg.world_sizes": [1], "train_ddp.seeds": [0, 1]}
    )
    uri, env = mlflow_env(tmp_path)
    res = subprocess.run(
        torchrun_cmd(2, *stage_args(params, digits_dir, tmp_path / "two")),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    names = [f"vgg-ddp1-resident-b32-linear-s{seed}" for seed in (0, 1)]
    assert [res.stdout.count(f"[vgg] {name}: finished") for name in names] == [1, 1]
    _, children = study_b_runs(uri)
    assert {r.data.tags["configuration"]: r.data.tags["trained_by_rank"] for r in children} == {
        names[0]: "0",
        names[1]: "1",
    }
    assert {r.info.status for r in children} == {"FINISHED"}
    alone = subprocess.run(
        [sys.executable, *stage_args(params, digits_dir, tmp_path / "one")],
        cwd=tmp_path,
        env={**env, **ONE_THREAD, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'alone.db'}"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert alone.returncode == 0, alone.stderr
    for name in names:
        a, b = (torch.load(tmp_path / d / "checkpoints" / f"{name}.pt", weights_only=False) for d in ("two", "one"))
        assert a["step_loss"] == b["step_loss"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    rows = {r["name"]: r for r in read_csv(tmp_path / "two" / "runs.csv")}
    assert sorted(rows) == names and {r["outcome"] for r in rows.values()} == {"finished"}


def test_batchnorm_statistics_stay_per_rank_while_training_and_are_rank_0s_once_synced(tmp_path):
    """DDP no longer broadcasts buffers before every forward (a collective per step): after two
    steps on different batches the ranks' BatchNorm running statistics differ while their weights
    agree, and `sync_buffers` (the engine calls it before each evaluation) makes them rank 0's."""
    res = subprocess.run(
        torchrun_cmd(2, str(REPO / "tests" / "ddp_buffers.py"), str(tmp_path / "b.pt")),
        cwd=tmp_path,
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    saved = torch.load(tmp_path / "b.pt", weights_only=False)
    assert saved["syncs_each_forward"] is False
    (w0, w1), (b0, b1), (a0, a1) = saved["weights"], saved["before"], saved["after"]
    assert all(torch.equal(p, q) for p, q in zip(w0, w1))  # gradients are still averaged
    floats = [i for i, b in enumerate(b0) if b.is_floating_point()]
    assert any(not torch.equal(b0[i], b1[i]) for i in floats)  # each rank's own batches
    assert all(torch.equal(x, y) for x, y in zip(a0, b0)) and all(torch.equal(x, y) for x, y in zip(a1, b0))


def test_crashed_rank_fails_the_launch_quickly_and_marks_runs_failed(tmp_path, digits_dir):
    """SIGKILL of rank 1 mid-training: torchrun stops rank 0 and exits non-zero within 25 s, and
    neither the parent nor the configuration's MLflow run is left RUNNING."""
    params = write_params(
        tmp_path / "params.yaml", {**SMALL_DDP, "train_ddp.vgg.world_sizes": [2], "train_ddp.vgg.recipe.epochs": 100}
    )
    uri, env = mlflow_env(tmp_path)
    out = tmp_path / "out"
    log = open(tmp_path / "torchrun.log", "w")  # noqa: SIM115 - the child process writes it; closed below
    proc = subprocess.Popen(
        torchrun_cmd(2, *stage_args(params, digits_dir, out)),
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Training is under way once the first epoch's checkpoint is written (of 100 epochs).
        rank1, workers, killed = kill_rank1_after_checkpoint(proc, out / "checkpoints", tmp_path / "torchrun.log")
        code = proc.wait(timeout=60)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:  # the test failed early: leave no worker behind
            for pid in descendants(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "torchrun.log").read_text()
    assert code != 0, text
    # torchrun polls its workers every 0.1 s and gives the survivors 30 s after SIGTERM before it
    # SIGKILLs them; under 25 s means rank 0 stopped on its own (observed: 0.6-3.3 s).
    assert took < 25, f"torchrun took {took:.1f} s to give up after rank 1 died"
    assert f"Signal 9 (SIGKILL) received by PID {rank1}" in text  # the root cause torchrun reports
    assert not [p for p in workers if alive(p)], "a worker outlived torchrun"
    assert not (out / "runs.csv").exists()  # a failed launch writes no results
    (checkpoint,) = (out / "checkpoints").glob("*.pt")
    assert not torch.load(checkpoint, weights_only=False)["complete"]  # it died mid-training

    parents, children = study_b_runs(uri)
    assert len(parents) == 1 and len(children) == 1
    statuses = (parents[0].info.status, children[0].info.status)
    assert statuses == ("FAILED", "FAILED"), f"(parent, child) ended {statuses}\n{text}"
