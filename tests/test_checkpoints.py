"""Checkpoints a params change or a bad file leaves: nothing finished is lost, nothing is silent."""

from __future__ import annotations

import csv
import dataclasses
import sqlite3

import pytest
import torch
from conftest import run_cli, write_params
from test_engine import RECIPE, learned, spec

from dpstudy.data.prepared import file_sha256, load_prepared
from dpstudy.train.engine import Context, TrainData, train

CPU = Context(torch.device("cpu"), sample_interval_s=0.05)
ONE_EPOCH = dataclasses.replace(RECIPE, epochs=1)


@pytest.fixture(scope="module")
def digits(digits_dir) -> TrainData:
    path = digits_dir / "digits.pt"
    return TrainData(load_prepared(path), file_sha256(path))


def test_a_corrupt_checkpoint_is_kept_as_corrupt_with_one_warning_and_retrained(digits, tmp_path, capsys):
    path = tmp_path / "run.pt"
    train(spec(recipe=ONE_EPOCH), digits, CPU, path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a torn write
    capsys.readouterr()
    again = train(spec(recipe=ONE_EPOCH), digits, CPU, path)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert f"checkpoint {path} not used" in warnings[0] and "run.pt.corrupt" in warnings[0]
    assert again.restored_epochs == 0 and again.outcome == "finished"  # trained afresh
    assert (tmp_path / "run.pt.corrupt").read_bytes() == good[: len(good) // 2]  # kept for inspection
    assert torch.load(path, weights_only=False)["complete"]  # the new one beside it


def test_a_checkpoint_of_other_settings_at_the_same_name_is_kept_and_comes_back(digits, tmp_path):
    path = tmp_path / "run.pt"
    base = spec(recipe=ONE_EPOCH)
    other_lr = spec(recipe=dataclasses.replace(ONE_EPOCH, lr=0.01))  # same file name, other settings
    first = train(base, digits, CPU, path)
    second = train(other_lr, digits, CPU, path)
    assert second.restored_epochs == 0
    kept = list((tmp_path / "kept").glob("run.*.pt"))
    assert len(kept) == 1 and torch.load(kept[0], weights_only=False)["spec"] == base.identity()
    back = train(base, digits, CPU, path)  # switching back costs nothing
    assert back.restored_epochs == 1 and learned(back.history) == learned(first.history)
    assert torch.load(path, weights_only=False)["spec"] == base.identity()
    assert len(list((tmp_path / "kept").glob("run.*.pt"))) == 1  # other_lr's now waits there


def test_a_diverged_run_never_overwrites_another_configurations_finished_checkpoint(digits, tmp_path):
    path = tmp_path / "run.pt"
    good = train(spec(recipe=ONE_EPOCH), digits, CPU, path)
    blowup = spec(recipe=dataclasses.replace(ONE_EPOCH, lr=1e4, warmup_epochs=0))
    assert train(blowup, digits, CPU, path).outcome == "diverged"
    (kept,) = (tmp_path / "kept").glob("run.*.pt")
    saved = torch.load(kept, weights_only=False)
    assert saved["complete"] and saved["outcome"] == "finished"
    assert learned(saved["history"]) == learned(good.history)


def _tiny_train_dp(path, batch_sizes, **extra):
    overrides = {"train_dp.seeds": [0], "train_dp.device": "cpu"}
    for grid in ("lenet_utilization", "lenet_lr_scaling", "vgg"):
        overrides |= {
            f"train_dp.{grid}.modes": ["single"],
            f"train_dp.{grid}.loaders": ["resident"],
            f"train_dp.{grid}.lr_rules": ["linear"],
            f"train_dp.{grid}.batch_sizes": batch_sizes,
            f"train_dp.{grid}.recipe.epochs": 1,
        }
    overrides |= {"train_dp.vgg.width": 0.125, **extra}
    return write_params(path, overrides)


@pytest.mark.slow
def test_changing_a_grid_keeps_the_finished_checkpoints_and_switching_back_reuses_them(digits_dir, tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = ("train_dp", "--data", str(digits_dir), "--out", "out")
    first = run_cli(*args, "--params", str(_tiny_train_dp(tmp_path / "a.yaml", [64])), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "out" / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.glob("*.pt")}
    assert len(before) == 3

    other = run_cli(*args, "--params", str(_tiny_train_dp(tmp_path / "b.yaml", [32])), cwd=tmp_path, env=env)
    assert other.returncode == 0, other.stderr
    assert "3 checkpoint(s) of configurations not in the grid now moved to" in other.stdout
    assert sorted(p.name for p in folder.glob("*.pt")) == sorted(n.replace("b64", "b32") for n in before)
    assert len(list((folder / "kept").glob("*.pt"))) == 3  # nothing finished was deleted

    back = run_cli(*args, "--params", str(tmp_path / "a.yaml"), cwd=tmp_path, env=env)
    assert back.returncode == 0, back.stderr
    assert back.stdout.count("1 epochs from checkpoint") == 3  # all reused, none retrained
    assert {p.name: p.read_bytes() for p in folder.glob("*.pt")} == before


def test_configurations_whose_lr_rule_changes_nothing_are_twins_and_train_identically(digits, tmp_path):
    from dpstudy.grid.twins import split_twins

    grid = [spec(batch=b, lr_rule=r, recipe=ONE_EPOCH) for b in (64, 128) for r in ("none", "linear", "sqrt")]
    trained, copies = split_twins(grid)
    assert [s.name for s in trained] == [grid[0].name] + [s.name for s in grid[3:]]
    assert [(t.name, o.name) for t, o in copies] == [(grid[1].name, grid[0].name), (grid[2].name, grid[0].name)]
    # the premise, checked: at batch = ref_batch every rule trains the very same network
    none, sqrt = (train(s, digits, CPU, tmp_path / f"{s.lr_rule}.pt") for s in (grid[0], grid[2]))
    assert learned(none.history) == learned(sqrt.history) and none.step_loss == sqrt.step_loss


def test_on_the_cpu_dataparallel_configurations_are_twins_of_single_and_train_identically(digits, tmp_path):
    from dpstudy.grid.twins import split_twins, twin_reason

    grid = [spec(mode=m, batch=b, recipe=ONE_EPOCH) for m in ("single", "dp") for b in (64, 128)]
    trained, copies = split_twins(grid, torch.device("cpu"))
    assert trained == grid[:2]
    assert [(t.name, o.name) for t, o in copies] == [(grid[2].name, grid[0].name), (grid[3].name, grid[1].name)]
    assert twin_reason(*copies[0]) == "on the CPU nn.DataParallel calls the module itself"
    # a GPU (or several) makes DataParallel a different computation: every mode trains
    assert split_twins(grid, torch.device("cuda", 0)) == (grid, [])
    # the premise, checked: on the CPU dp trains the very same network as single
    single, dp = (train(s, digits, CPU, tmp_path / f"{s.mode}.pt") for s in (grid[0], grid[2]))
    assert learned(single.history) == learned(dp.history) and single.step_loss == dp.step_loss


@pytest.mark.slow
def test_a_twin_is_recorded_with_its_own_checkpoint_row_and_run_not_trained_again(digits_dir, tmp_path):
    params = _tiny_train_dp(
        tmp_path / "p.yaml", [16], **{"train_dp.lenet_lr_scaling.lr_rules": ["none", "linear", "sqrt"]}
    )
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = run_cli(
        "train_dp", "--data", str(digits_dir), "--out", "out", "--params", str(params), cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    names = [f"lenet_lr_scaling-single-resident-b16-{rule}-s0" for rule in ("none", "linear", "sqrt")]
    assert done.stdout.count(f"the same training as {names[0]}") == 2
    folder = tmp_path / "out" / "checkpoints"
    saved = [torch.load(folder / f"{name}.pt", weights_only=False) for name in names]
    for name, ckpt in zip(names, saved):
        assert ckpt["spec"]["lr_rule"] == name.split("-")[-2] and ckpt["config"]["peak_lr"] == 0.01
        assert all(torch.equal(ckpt["model"][k], saved[0]["model"][k]) for k in saved[0]["model"])
    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "out" / "runs.csv").open())}
    assert [rows[n]["test_accuracy"] for n in names] == [rows[names[0]]["test_accuracy"]] * 3
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tags = dict(
            db.execute(
                "select c.value, t.value from tags c join tags t on t.run_uuid = c.run_uuid "
                "where c.key = 'configuration' and t.key = 'trained_as'"
            ).fetchall()
        )
    assert tags == {names[1]: names[0], names[2]: names[0]}
