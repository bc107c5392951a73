"""Adaptive batches under real DDP: gloo process groups on the CPU started by torchrun, nothing
mocked. The per-rank batch changes between epochs (`set_batch`), and still every sample is seen
exactly once per epoch, the ranks never overlap and they always run the same number of steps (a
rank with a step more would hang the all-reduce); through `engine.train`, a step-growth schedule
changes the global batch, the step count and the learning rate epoch by epoch."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess

import pytest
import torch
from conftest import REPO
from test_ddp import ONE_THREAD, torchrun_cmd

from dpstudy.data.loaders import epoch_permutation, rank_batches, step_bounds
from dpstudy.data.prepared import load_prepared

SCRIPT = REPO / "tests" / "ddp_batch_change.py"
WORLD = 2
# standard with 0 and 1 workers, resident; "-next": consumed as engine.train does (len() next() calls)
LOADERS = ("standard0w", "standard1w", "standard1w-next", "resident", "resident-next")


def launch(tmp_path, *args: str) -> None:
    res = subprocess.run(
        torchrun_cmd(WORLD, str(SCRIPT), *args),
        cwd=tmp_path,
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]


@pytest.fixture(scope="module")
def loader_run(tmp_path_factory) -> dict:
    """Indices every rank saw, per loader and epoch, for global batches 8, 8, 32, 64 over N=299."""
    tmp = tmp_path_factory.mktemp("batch_change")
    launch(tmp, str(tmp / "loaders.json"))
    return json.loads((tmp / "loaders.json").read_text())


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory, digits_dir) -> dict:
    tmp = tmp_path_factory.mktemp("batch_change_engine")
    out = tmp / "engine.pt"
    launch(tmp, "engine", str(digits_dir / "digits.pt"), str(out))
    run = torch.load(out, weights_only=False)
    run["checkpoint"] = torch.load(out.with_suffix(".ckpt.pt"), weights_only=False)
    return run


# ---------------------------------------------------------------------------------------------
# Both loaders, batch changed between epochs


@pytest.mark.parametrize("loader", LOADERS)
def test_every_sample_once_per_epoch_disjoint_ranks_equal_steps(loader_run, loader):
    n = loader_run["n"]
    epochs = loader_run["loaders"][loader]
    assert loader_run["world"] == WORLD
    assert [e["global_batch"] for e in epochs] == [8, 8, 32, 64]
    for e in epochs:
        where = f"{loader} epoch {e['epoch']} (per-rank batch {e['per_rank_batch']})"
        ranks = e["ranks"]
        assert len(ranks) == WORLD, where
        # The raw bytes came back exactly (mean 0, std 1/255), so the decoded indices are exact.
        assert all(r["off"] < 1e-3 for r in ranks), (where, [r["off"] for r in ranks])
        seen = [r["indices"] for r in ranks]
        # every sample once: the union is range(n) with no repeats ...
        assert sorted(seen[0] + seen[1]) == list(range(n)), where
        # ... the ranks are disjoint (and no rank repeats a sample of its own) ...
        assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1]), where
        assert not set(seen[0]) & set(seen[1]), where
        # ... each image arrives with its own label ...
        for r in ranks:
            assert r["labels"] == [i % loader_run["label_mod"] for i in r["indices"]], where
        # ... and both ranks ran the same number of steps, the one the sharding rule gives.
        steps = [len(r["batch_sizes"]) for r in ranks]
        expected = len(step_bounds(n, e["per_rank_batch"], WORLD))
        assert steps == [expected] * WORLD, (where, steps, expected)
        assert [r["len"] for r in ranks] == steps, where  # len() told the truth before the epoch
        # Per-rank batches: the new batch (a folded or partial tail at the end), equal across ranks
        # within one sample at every step.
        for a, b in zip(*(r["batch_sizes"] for r in ranks)):
            assert abs(a - b) <= 1, (where, a, b)
        assert all(s == e["per_rank_batch"] for r in ranks for s in r["batch_sizes"][:-1]), where


@pytest.mark.parametrize("loader", LOADERS)
def test_a_bigger_batch_really_takes_fewer_steps(loader_run, loader):
    epochs = loader_run["loaders"][loader]
    steps = [len(e["ranks"][0]["batch_sizes"]) for e in epochs]
    # 299 samples: step 8 has a 3-sample tail (folded into the step before), step 32 an 11-sample
    # and step 64 a 43-sample tail (kept as steps of their own).
    assert steps == [37, 37, 10, 5]
    for prev, cur in itertools.pairwise(epochs):
        a, b = len(prev["ranks"][0]["batch_sizes"]), len(cur["ranks"][0]["batch_sizes"])
        if cur["global_batch"] > prev["global_batch"]:
            assert b < a, (prev["global_batch"], a, cur["global_batch"], b)
        else:
            assert b == a


@pytest.mark.parametrize("loader", LOADERS)
def test_shards_follow_the_epoch_permutation_at_the_new_batch(loader_run, loader):
    """Rank r's samples are exactly `rank_batches` of the (seed, epoch) permutation cut at the
    epoch's batch, in order: the batch change re-cuts the epoch, it does not reshuffle it."""
    n, seed = loader_run["n"], loader_run["seed"]
    epochs = loader_run["loaders"][loader]
    for e in epochs:
        perm = epoch_permutation(n, seed, e["epoch"])
        for rank, mine in enumerate(e["ranks"]):
            want = rank_batches(perm, e["per_rank_batch"], WORLD, rank)
            assert mine["batch_sizes"] == [len(b) for b in want], (loader, e["epoch"], rank)
            assert mine["indices"] == torch.cat(want).tolist(), (loader, e["epoch"], rank)
    # Epochs 0 and 1 share the batch but not the order: the epoch is really set.
    assert epochs[0]["ranks"][0]["indices"] != epochs[1]["ranks"][0]["indices"]


def test_both_loaders_and_worker_counts_deal_the_same_batches(loader_run):
    runs = loader_run["loaders"]
    assert sorted(runs) == sorted(LOADERS)
    for name in LOADERS[1:]:
        for a, b in zip(runs[LOADERS[0]], runs[name], strict=True):
            for ra, rb in zip(a["ranks"], b["ranks"], strict=True):
                # the indices alone would not tell batch 4 from 16: compare how they were cut too
                same = (ra["indices"], ra["batch_sizes"]) == (rb["indices"], rb["batch_sizes"])
                assert same, (name, a["epoch"])


# ---------------------------------------------------------------------------------------------
# engine.train with a step-growth schedule


def test_engine_step_growth_under_ddp(engine_run, digits_dir):
    """Global batch 16 -> 32 -> 48 (64 capped at max_batch 48) over 2 ranks: every training image
    once per epoch, the steps of each epoch's batch, the lr scaled linearly with it, and the noise
    scale measured every epoch."""
    n_train = len(load_prepared(digits_dir / "digits.pt").train_labels)
    hist = engine_run["history"]
    assert engine_run["world"] == WORLD and engine_run["outcome"] == "finished"
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    batches = [h["global_batch"] for h in hist]
    assert batches == [16, 32, 48]
    assert [h["samples"] for h in hist] == [n_train] * 3
    steps = [h["steps"] for h in hist]
    assert steps == [len(step_bounds(n_train, gb // WORLD, WORLD)) for gb in batches]
    assert steps[0] > steps[1] > steps[2], steps
    for h in hist:
        assert math.isfinite(h["noise_scale"]) and h["noise_scale"] > 0, h["noise_scale"]
        assert h["lr"] == pytest.approx(0.01 * h["global_batch"] / 16)
    assert hist[-1]["lr"] == pytest.approx(0.01 * 48 / 16)
    assert math.isfinite(hist[-1]["train_loss"]) and hist[-1]["train_loss"] < hist[0]["train_loss"]

    # The per-step series agree with the epochs: one entry per optimizer step at the epoch's batch.
    series = engine_run["step_series"]
    assert series["global_batch"] == [float(gb) for gb, s in zip(batches, steps) for _ in range(s)]
    assert len(series["lr"]) == len(series["noise_scale"]) == sum(steps)

    ckpt = engine_run["checkpoint"]
    assert ckpt["complete"] and ckpt["epoch"] == 2 and ckpt["schedule"]["global_step"] == sum(steps)
