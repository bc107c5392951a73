"""Batch-size schedules, the lr that follows them, the gradient-noise-scale estimator (against a
problem whose answer is known in closed form) and the adaptive grid's checks of params."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import recipe
from torch import nn

from dpstudy.config import AugmentConfig, StepGrowthConfig, load_section
from dpstudy.errors import UserError
from dpstudy.grid.adaptive import adaptive_grid, time_to_target
from dpstudy.train import engine
from dpstudy.train.batching import BatchSchedule, NoiseScaleEstimator
from dpstudy.train.engine import Result, RunSpec

RECIPE = recipe(
    epochs=6, lr=0.1, ref_batch=32, decay="step", milestones=[4], augment=AugmentConfig(crop_padding=0, hflip=False)
)


def growth_spec(rule="linear", recipe=RECIPE, **growth) -> RunSpec:
    g = StepGrowthConfig(
        **{"batch": 32, "lr_rule": rule, "factor": 2, "at_epochs": [1, 2, 3], "max_batch": 128, **growth}
    )
    return RunSpec(
        "t",
        "resnet20",
        1.0,
        16,
        "digits",
        "single",
        1,
        "resident",
        0,
        g.batch,
        rule,
        0,
        recipe,
        schedule="step_growth",
        growth=g,
    )


def plan(spec: RunSpec) -> list[tuple[int, float]]:
    """(global batch, lr at the epoch's first step) per epoch, as the engine computes them."""
    batches = engine.batch_schedule(spec)
    return [(b, engine.lr_schedule(spec, b).lr_at(e)) for e in range(spec.recipe.epochs) for b in [batches.batch_at(e)]]


def test_step_growth_exact_batch_and_lr_sequence_with_cap():
    got = plan(growth_spec())
    # x2 at epochs 1, 2 and 3 but capped at 128; lr x2 with each doubling (linear), x0.1 at epoch 4
    assert [b for b, _ in got] == [32, 64, 128, 128, 128, 128]
    assert [round(lr, 10) for _, lr in got] == [0.1, 0.2, 0.4, 0.4, 0.04, 0.04]


def test_step_growth_sqrt_rule_and_a_factor_that_overshoots_the_cap():
    got = plan(growth_spec(rule="sqrt", factor=3, max_batch=200))
    assert [b for b, _ in got] == [32, 96, 200, 200, 200, 200]  # 288 would pass the cap: stop at 200
    assert got[1][1] == pytest.approx(0.1 * math.sqrt(3))
    assert got[2][1] == pytest.approx(0.1 * math.sqrt(200 / 32))
    assert got[5][1] == pytest.approx(0.1 * math.sqrt(200 / 32) * 0.1)


def test_growth_during_warmup_ramps_towards_the_current_batch_peak():
    recipe = dataclasses.replace(RECIPE, warmup_epochs=2, milestones=[])
    spec = growth_spec(recipe=recipe)
    batches = engine.batch_schedule(spec)

    def lr(progress: float) -> float:
        return engine.lr_schedule(spec, batches.batch_at(int(progress))).lr_at(progress)

    assert lr(0.5) == pytest.approx(0.1)  # batch 32 = ref_batch: the peak is the base rate
    # epoch 1: batch 64, peak 0.2; warmup is half done at progress 1: 0.1 + (0.2 - 0.1) * 1/2
    assert lr(1.0) == pytest.approx(0.15)
    assert lr(1.5) == pytest.approx(0.1 + 0.1 * 1.5 / 2)
    assert lr(2.0) == pytest.approx(0.4)  # warmup over: the peak of batch 128
    assert lr(5.9) == pytest.approx(0.4)


def test_at_epochs_milestones_means_the_recipe_lr_milestones():
    _, cfg = load_section("train_adaptive")
    task = cfg.classification
    sched = dataclasses.replace(task.schedules.step_growth, at_epochs="milestones")
    task = dataclasses.replace(task, schedules=dataclasses.replace(task.schedules, step_growth=sched))
    grid = adaptive_grid("classification", task, [0], world=2)
    growth = next(s.growth for s in grid if s.schedule == "step_growth")
    assert growth.at_epochs == [int(m) for m in task.recipe.milestones]


def test_noise_scale_schedule_grows_only_while_the_estimate_exceeds_the_batch_and_never_past_the_cap():
    s = BatchSchedule("noise_scale", 16, factor=2, max_batch=48)
    with pytest.raises(RuntimeError, match="before epoch 0 ended"):
        s.batch_at(1)
    s.end_epoch(0, 10.0)  # below 16: stay
    s.end_epoch(1, float("nan"))  # not measured: stay
    s.end_epoch(2, 17.0)  # above: x2
    s.end_epoch(3, 40.0)  # above 32: x2 -> 64, capped at 48
    s.end_epoch(4, 1e9)  # at the cap
    assert [s.batch_at(e) for e in range(6)] == [16, 16, 16, 32, 48, 48]
    restored = BatchSchedule("noise_scale", 16, factor=2, max_batch=48)
    restored.load_state_dict(s.state_dict())
    assert restored.batch_at(5) == 48


# --------------------------------------------------------------------------------------------
# The noise-scale estimator on linear regression, where B_simple is known exactly.
#
# x ~ N(0, I_d), y = w*·x + e with e ~ N(0, s2); at weights w with u = w - w*, the per-sample
# gradient of (w·x - y)^2 / 2 is g = (u·x - e) x. Then G = E[g] = u and, by the Gaussian fourth
# moment E[(u·x)^2 x x^T] = |u|^2 I + 2 u u^T, Cov[g] = (|u|^2 + s2) I + u u^T, so
# B_simple = tr(Cov)/|G|^2 = d (1 + s2/|u|^2) + 1. (MSELoss doubles every gradient: the ratio
# does not change.)

D, S2 = 5, 1.0


def regression_batch(gen: torch.Generator, n: int, w_star: torch.Tensor):
    x = torch.randn(n, D, generator=gen)
    return x, x @ w_star + math.sqrt(S2) * torch.randn(n, generator=gen)


def known_b_simple(u: torch.Tensor) -> float:
    return D * (1 + S2 / float(u @ u)) + 1


def test_estimator_recovers_b_simple_from_two_batch_sizes():
    gen = torch.Generator().manual_seed(0)
    w_star, u = torch.zeros(D), torch.full((D,), 0.5)  # |u|^2 = 1.25 -> B_simple = 10
    est = NoiseScaleEstimator(ema=0.999)
    for _ in range(3000):
        x, y = regression_batch(gen, 64, w_star)
        g = (x @ u - y)[:, None] * x  # per-sample gradients at w = w* + u
        parts = g.view(4, 16, D).mean(1)  # four "ranks" of 16: the small batches
        value = est.update(float((parts**2).sum(1).mean()), float((g.mean(0) ** 2).sum()), 16, 64)
    truth = known_b_simple(u)
    assert truth == pytest.approx(10.0)
    assert abs(value - truth) / truth < 0.2, (value, truth)


def test_engine_micro_batch_measurement_recovers_b_simple():
    """The one-process path of the engine (two micro-batches per step) on a real nn.Linear."""
    gen = torch.Generator().manual_seed(1)
    w_star = torch.randn(D, generator=gen)
    model = nn.Linear(D, 1, bias=False)
    u = torch.full((D,), 0.8)
    with torch.no_grad():
        model.weight.copy_((w_star + u).view(1, D))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: G and B_simple are fixed
    est = NoiseScaleEstimator(ema=0.999)
    for _ in range(3000):
        x, y = regression_batch(gen, 48, w_star)
        _, _, small_sq, b_small, big_sq = engine.train_step_micro_norms(
            model, optimizer, nn.MSELoss(), x, y.view(-1, 1), lambda out, t: torch.zeros(())
        )
        value = est.update(float(small_sq), float(big_sq), b_small, 48)
    truth = known_b_simple(u)  # 5 * (1 + 1 / 3.2) + 1 = 7.5625
    assert abs(value - truth) / truth < 0.2, (value, truth)


def test_estimator_ignores_non_finite_steps_and_rejects_equal_batch_sizes():
    est = NoiseScaleEstimator(ema=0.5)
    assert math.isnan(est.value)
    est.update(2.0, 1.0, 1, 2)  # |G|^2 = (2*1 - 1*2)/1 = 0, tr = (2-1)/(1-1/2) = 2: ratio undefined
    assert math.isnan(est.value)
    est.update(3.0, 2.0, 1, 2)  # |G|^2 = 1, tr = 2; EMAs: |G|^2 0 -> 0.5, tr 1 -> 1.5
    assert est.value == pytest.approx(3.0)
    est.update(float("nan"), 1.0, 1, 2)
    assert est.value == pytest.approx(3.0)
    with pytest.raises(ValueError, match="b_small < b_big"):
        est.update(1.0, 1.0, 4, 4)


# --------------------------------------------------------------------------------------------
# The adaptive grid refuses bad settings before any work, naming the key


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: {
                "schedules": dataclasses.replace(
                    t.schedules, fixed_small=dataclasses.replace(t.schedules.fixed_small, batch=33)
                )
            },
            "train_adaptive.classification.schedules.fixed_small.batch: 33 must be a multiple of the 2 processes",
        ),
        (
            lambda t: {
                "schedules": dataclasses.replace(
                    t.schedules, step_growth=dataclasses.replace(t.schedules.step_growth, at_epochs=[1, 99])
                )
            },
            r"train_adaptive.classification.schedules.step_growth.at_epochs: \[99\] at or after the last epoch",
        ),
        (
            lambda t: {
                "schedules": dataclasses.replace(
                    t.schedules, noise_scale=dataclasses.replace(t.schedules.noise_scale, max_batch=16)
                )
            },
            "noise_scale.max_batch: 16 is below the starting batch",
        ),
        (lambda t: {"model": "srnet"}, "train_adaptive.classification.model: srnet is a restoration network"),
        (lambda t: {"model": "vgg16", "input_size": 16}, "train_adaptive.classification: VGG16 halves its input"),
    ],
)
def test_adaptive_grid_rejects_bad_settings(change, message):
    _, cfg = load_section("train_adaptive")
    task = dataclasses.replace(cfg.classification, **change(cfg.classification))
    with pytest.raises(UserError, match=message):
        adaptive_grid("classification", task, [0], world=2)


def test_grid_runs_fixed_small_first_with_the_per_rank_share_of_each_batch():
    _, cfg = load_section("train_adaptive")
    grid = adaptive_grid("restoration", cfg.restoration, [0, 1], world=2)
    assert [s.schedule for s in grid[:2]] == ["fixed_small", "fixed_small"]
    assert {s.mode for s in grid} == {"ddp"} and {s.world for s in grid} == {2}
    assert all(s.global_batch == getattr(cfg.restoration.schedules, s.schedule).batch for s in grid)
    single = adaptive_grid("restoration", cfg.restoration, [0], world=1)
    assert {s.mode for s in single} == {"single"}


def test_time_to_target_is_training_time_until_the_first_epoch_at_the_target():
    spec = growth_spec()
    rows = [
        {"epoch_time_s": t, "steps": n, "test_accuracy": a}
        for t, n, a in [(2.0, 10, 0.5), (1.0, 5, 0.97), (1.0, 5, 0.96), (1.0, 5, 0.99)]
    ]
    result = Result(spec, "finished", rows, [], ["cpu"])
    assert time_to_target(result, 0.97) == {"time_to_target_s": 3.0, "steps_to_target": 15, "epochs_to_target": 2}
    assert math.isnan(time_to_target(result, 0.995)["time_to_target_s"])
