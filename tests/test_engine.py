"""The training engine on the CPU: determinism, divergence, checkpoints and exact resumption."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import recipe, write_params

from dpstudy.config import AugmentConfig, NoiseScaleConfig
from dpstudy.data.prepared import file_sha256, load_prepared
from dpstudy.grid.sweep import run_grid
from dpstudy.track.tracking import Tracker
from dpstudy.train import engine
from dpstudy.train.engine import Context, RunSpec, TrainData, train
from dpstudy.train.models import build_model

RECIPE = recipe(
    epochs=3, weight_decay=5e-4, warmup_epochs=1, decay="cosine", augment=AugmentConfig(crop_padding=2, hflip=True)
)
CPU = Context(torch.device("cpu"), sample_interval_s=0.05)


def spec(**changes) -> RunSpec:
    base = RunSpec("test", "lenet", 1.0, 32, "digits", "single", 1, "resident", 0, 64, "linear", 0, RECIPE)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def digits(digits_dir) -> TrainData:
    path = digits_dir / "digits.pt"
    return TrainData(load_prepared(path), file_sha256(path))


LEARNED = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "steps", "global_batch")


def learned(history: list[dict]) -> list[dict]:
    """What training computed, without the wall-clock figures."""
    return [{k: row[k] for k in LEARNED} for row in history]


def test_same_seed_same_params_same_metrics_and_weights(digits, tmp_path):
    a = train(spec(), digits, CPU, tmp_path / "a.pt")
    b = train(spec(), digits, CPU, tmp_path / "b.pt")
    assert a.outcome == b.outcome == "finished" and len(a.history) == RECIPE.epochs
    assert learned(a.history) == learned(b.history)
    assert a.step_loss == b.step_loss
    wa, wb = (torch.load(p, weights_only=False)["model"] for p in (tmp_path / "a.pt", tmp_path / "b.pt"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.final["test_accuracy"] > 0.5  # it learned something: 10 classes, chance is 0.1
    other = train(spec(seed=1), digits, CPU, tmp_path / "c.pt")
    assert learned(other.history) != learned(a.history)


def test_dataparallel_runs_on_the_cpu_and_matches_a_single_device(digits, tmp_path):
    single = train(spec(), digits, CPU, tmp_path / "single.pt")
    dp = train(spec(mode="dp"), digits, CPU, tmp_path / "dp.pt")
    assert dp.devices == ["cpu"]  # fewer than two GPUs: DataParallel runs on one device
    assert learned(dp.history) == learned(single.history)


def test_checkpoint_holds_what_evaluation_and_resumption_need(digits, tmp_path):
    train(spec(), digits, CPU, tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=False)
    assert ckpt["complete"] and ckpt["epoch"] == RECIPE.epochs - 1 and ckpt["outcome"] == "finished"
    assert ckpt["data_sha256"] == digits.sha256
    assert ckpt["config"]["global_batch"] == 64 and ckpt["config"]["recipe"]["lr"] == 0.05
    assert {"torch", "numpy", "python", "cuda"} <= set(ckpt["rng"][0])
    assert ckpt["optimizer"]["state"] and ckpt["schedule"]["global_step"] == RECIPE.epochs * ckpt["history"][0]["steps"]
    meta = ckpt["model_meta"]
    model = build_model(meta["model"], meta["channels"], meta["num_classes"], width=meta["width"])
    model.load_state_dict(ckpt["model"])  # unwrapped: loads into a plain model
    assert (meta["input_channels"], meta["input_size"]) == (1, 32)


def test_a_finished_checkpoint_is_reused_and_changed_config_or_code_retrains(digits, tmp_path, monkeypatch):
    first = train(spec(), digits, CPU, tmp_path / "c.pt")
    again = train(spec(), digits, CPU, tmp_path / "c.pt")
    assert again.restored_epochs == RECIPE.epochs and learned(again.history) == learned(first.history)
    changed = train(spec(lr_rule="sqrt"), digits, CPU, tmp_path / "c.pt")
    assert changed.restored_epochs == 0
    monkeypatch.setattr(engine, "code_fingerprint", lambda: "other training code")
    assert train(spec(lr_rule="sqrt"), digits, CPU, tmp_path / "c.pt").restored_epochs == 0


@pytest.mark.parametrize("loader, workers", [("resident", 0), ("standard", 1)])
def test_resuming_from_an_epoch_checkpoint_ends_exactly_like_an_uninterrupted_run(digits, tmp_path, loader, workers):
    s = spec(loader=loader, num_workers=workers)
    ckpt = tmp_path / "run.pt"
    saved = tmp_path / "after-epoch-0.pt"

    def keep_first(row):
        if row["epoch"] == 0:
            shutil.copy(ckpt, saved)

    full = train(s, digits, CPU, ckpt, on_epoch=keep_first)
    resumed = train(s, digits, CPU, saved)
    assert resumed.restored_epochs == 1
    assert learned(resumed.history) == learned(full.history)
    assert resumed.step_loss == full.step_loss
    a, b = (torch.load(p, weights_only=False)["model"] for p in (ckpt, saved))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_noise_scale_run_resumes_with_its_batch_schedule_and_estimator_state(digits, tmp_path):
    """One process: the noise scale from two micro-batches per step; the batch the estimate chose
    and the estimator's smoothed state come back from the checkpoint, so the resumed run ends the
    same as an uninterrupted one."""
    growth = NoiseScaleConfig(batch=32, lr_rule="linear", factor=2, max_batch=128, ema=0.9)
    s = spec(batch=32, schedule="noise_scale", growth=growth, noise_ema=0.9)
    ckpt, saved = tmp_path / "run.pt", tmp_path / "after-epoch-0.pt"
    full = train(s, digits, CPU, ckpt, on_epoch=lambda row: row["epoch"] == 0 and shutil.copy(ckpt, saved))
    batches = [row["global_batch"] for row in full.history]
    assert batches[0] == 32 and batches == sorted(batches) and batches[-1] > 32  # it grew
    assert all(row["noise_scale"] > 0 for row in full.history)
    assert len(full.step_series["noise_scale"]) == len(full.step_loss) == sum(r["steps"] for r in full.history)
    resumed = train(s, digits, CPU, saved)
    assert resumed.restored_epochs == 1
    assert learned(resumed.history) == learned(full.history)
    assert [r["noise_scale"] for r in resumed.history] == [r["noise_scale"] for r in full.history]
    assert repr(resumed.step_series) == repr(full.step_series)  # repr: nan (estimate undefined) == nan


def test_growth_schedules_continue_from_fixed_smalls_first_epoch_and_end_as_if_trained_alone(digits, tmp_path):
    """step_growth and noise_scale start like fixed_small (same batch = ref_batch, so the same lr
    under any rule, same seed): in a grid they continue from its checkpoint after epoch 1 instead
    of training that epoch again, and end exactly where training them alone ends."""
    from mlflow.tracking import MlflowClient

    from dpstudy.config import StepGrowthConfig
    from dpstudy.grid.twins import FIRST_EPOCHS, shared_first_epochs

    small = spec(schedule="fixed_small", lr_rule="none", noise_ema=0.9)
    growth = spec(
        schedule="step_growth",
        growth=StepGrowthConfig(batch=64, lr_rule="linear", factor=2, at_epochs=[1], max_batch=128),
        noise_ema=0.9,
    )
    noise = spec(
        schedule="noise_scale",
        growth=NoiseScaleConfig(batch=64, lr_rule="linear", factor=2, max_batch=128, ema=0.9),
        noise_ema=0.9,
    )
    other_seed = dataclasses.replace(growth, seed=1)  # its own first epoch: nothing to take
    assert shared_first_epochs([small, growth, noise, other_seed]) == {growth.name: small, noise.name: small}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker("C", "test", preset="quick", params={}, uri=uri, root=tmp_path) as tracker:
        grid = run_grid(
            [small, growth, noise, other_seed],
            {"digits": digits},
            tracker,
            tmp_path / "grid",
            device=torch.device("cpu"),
        )
    for shared, alone in zip(
        grid[1:3], (train(s, digits, CPU, tmp_path / f"{s.schedule}.pt") for s in (growth, noise))
    ):
        assert shared.restored_epochs == 1 and alone.restored_epochs == 0
        assert learned(shared.history) == learned(alone.history) and shared.step_loss == alone.step_loss
        assert shared.history[0]["epoch_time_s"] == grid[0].history[0]["epoch_time_s"]  # fixed_small's epoch
        assert [r["global_batch"] for r in shared.history] == [r["global_batch"] for r in alone.history]
    assert grid[3].restored_epochs == 0
    assert (tmp_path / "grid" / "checkpoints" / FIRST_EPOCHS / f"{small.name}.pt").is_file()
    client = MlflowClient(uri)
    runs = client.search_runs([tracker.experiment_id], "tags.first_epoch_from = '" + small.name + "'")
    assert sorted(r.data.tags["configuration"] for r in runs) == sorted([growth.name, noise.name])
    # the epoch taken over is stamped before the epochs trained here: MLflow's time order is step order
    run = next(r for r in runs if r.data.tags["configuration"] == growth.name)
    history = client.get_metric_history(run.info.run_id, "step_global_batch")
    assert [m.step for m in history] == sorted(m.step for m in history)
    assert history[0].value == 64 and history[-1].value == 128


class Recorder(engine.Observer):
    """An observer that writes down the hooks it sees and adds one per-rank sum to each epoch."""

    def __init__(self):
        self.calls: list = []

    def on_train_start(self, run):
        self.calls.append("train_start")

    def on_epoch_start(self, run, epoch):
        self.calls.append(("epoch_start", epoch.index))

    def on_step_end(self, i):
        self.calls.append(i)

    def on_steps_end(self, run, epoch):
        epoch.local["probe"] = 3.0

    def on_epoch_end(self, run, epoch):
        self.calls.append(("epoch_end", epoch.index, epoch.totals["probe"], epoch.row is run.result.history[-1]))

    def on_train_end(self, run):
        self.calls.append("train_end")


def test_observers_see_the_hooks_in_order_and_their_sums_join_the_epochs_reduction(digits, tmp_path):
    s = spec(batch=256, recipe=dataclasses.replace(RECIPE, epochs=2))
    seen = Recorder()
    result = train(s, digits, CPU, tmp_path / "o.pt", observers=[seen])
    expected = ["train_start"]
    for row in result.history:
        expected += [("epoch_start", row["epoch"]), *range(row["steps"]), ("epoch_end", row["epoch"], 3.0, True)]
    assert seen.calls == [*expected, "train_end"]
    assert "probe" not in result.history[0]  # a sum is the observer's, not a figure of the row
    again = Recorder()
    assert train(s, digits, CPU, tmp_path / "o.pt", observers=[again]).restored_epochs == 2
    assert again.calls == []  # a finished checkpoint trains nothing, so no hook runs


def test_divergence_ends_the_configuration_and_the_sweep_goes_on(digits, tmp_path):
    blowup = spec(recipe=dataclasses.replace(RECIPE, lr=1e4, warmup_epochs=0))
    healthy = spec(lr_rule="none")
    with Tracker(
        "A", "test", preset="quick", params={}, uri=f"sqlite:///{tmp_path / 'mlflow.db'}", root=tmp_path
    ) as tracker:
        results = run_grid([blowup, healthy], {"digits": digits}, tracker, tmp_path / "out", device=torch.device("cpu"))
    bad, good = results
    assert bad.outcome == "diverged" and bad.diverged_step is not None
    assert bad.diverged_step < len(bad.history) * bad.history[0]["steps"]
    assert len(bad.history) < RECIPE.epochs  # stopped at the epoch it diverged in
    assert good.outcome == "finished" and len(good.history) == RECIPE.epochs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    child = client.get_run(
        client.search_runs(
            [tracker.experiment_id],
            f"tags.`mlflow.parentRunId` = '{tracker.parent.run_id}' and tags.configuration = '{blowup.name}'",
        )[0].info.run_id
    )
    assert child.data.tags["outcome"] == "diverged"
    assert child.data.tags["diverged_step"] == str(bad.diverged_step)
    assert child.info.status == "FINISHED"


# --------------------------------------------------------------------------------------------
# A real stage process killed mid-run, then rerun


def _small_train_dp(path: Path) -> Path:
    tiny = {"epochs": 1}
    overrides = {"train_dp.seeds": [0], "train_dp.device": "cpu"}
    for grid in ("lenet_utilization", "lenet_lr_scaling"):
        overrides |= {
            f"train_dp.{grid}.modes": ["single"],
            f"train_dp.{grid}.loaders": ["resident"],
            f"train_dp.{grid}.batch_sizes": [64],
            f"train_dp.{grid}.lr_rules": ["linear"],
            **{f"train_dp.{grid}.recipe.{k}": v for k, v in tiny.items()},
        }
    overrides |= {
        "train_dp.vgg.modes": ["single"],
        "train_dp.vgg.batch_sizes": [64],
        "train_dp.vgg.num_workers": 1,
        "train_dp.vgg.recipe.epochs": 3,
    }
    return write_params(path, overrides)


def _stage(params: Path, data: Path, out: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.Popen(
        [sys.executable, "-m", "dpstudy", "train_dp", "--params", str(params), "--data", str(data), "--out", str(out)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_stage_resumes_and_ends_with_the_uninterrupted_metrics(digits_dir, tmp_path):
    params = _small_train_dp(tmp_path / "params.yaml")
    vgg = "vgg-single-standard1w-b64-linear-s0.pt"

    whole = _stage(params, digits_dir, tmp_path / "whole", tmp_path)
    assert whole.wait(timeout=300) == 0, whole.stdout.read()

    killed = _stage(params, digits_dir, tmp_path / "killed", tmp_path)
    ckpt = tmp_path / "killed" / "checkpoints" / vgg
    deadline = time.monotonic() + 240
    while not ckpt.exists() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    at_kill = torch.load(ckpt, weights_only=False)
    assert not at_kill["complete"], "the run finished before it could be killed"

    rerun = _stage(params, digits_dir, tmp_path / "killed", tmp_path)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert f"{at_kill['epoch'] + 1} epochs from checkpoint" in out

    a = torch.load(tmp_path / "whole" / "checkpoints" / vgg, weights_only=False)
    b = torch.load(ckpt, weights_only=False)
    assert a["complete"] and b["complete"]
    assert learned(a["history"]) == learned(b["history"])
    assert a["step_loss"] == b["step_loss"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (tmp_path / "whole" / "runs.csv").read_text().count("\n") == (
        tmp_path / "killed" / "runs.csv"
    ).read_text().count("\n")
