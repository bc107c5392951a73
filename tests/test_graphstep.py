"""The CUDA-graph step on the CPU: its refusals, and everything around the capture.

A CUDA graph cannot be captured without a GPU, so the capture is emulated here (`CpuReplay`:
"replaying" runs the step on the graph's static inputs and writes its results into the same static
output tensors, as a replay rewrites the graph's memory). That checks what dpstudy builds around
the capture: one graph per input shape after eager warm-up steps, batch plans gathered inside the
step, the lr written into a tensor, and the engine reading each step's outputs before the next
replay. Capture itself, and eager-vs-graph equality on a GPU, are checked by benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import recipe

from dpstudy.config import AugmentConfig, StepGrowthConfig
from dpstudy.data.prepared import file_sha256, load_prepared
from dpstudy.measure.devicebusy import BusyWindow, busy_share
from dpstudy.train import engine, graphstep
from dpstudy.train.engine import Context, RunSpec, TrainData, busy_steps, train

CPU = torch.device("cpu")
RECIPE = recipe(
    epochs=3, weight_decay=5e-4, warmup_epochs=1, decay="cosine", augment=AugmentConfig(crop_padding=2, hflip=True)
)


def spec(**changes) -> RunSpec:
    base = RunSpec("test", "lenet", 1.0, 32, "digits", "single", 1, "resident", 0, 64, "linear", 0, RECIPE)
    return dataclasses.replace(base, **changes)


def graph(s: RunSpec) -> RunSpec:
    return dataclasses.replace(s, recipe=dataclasses.replace(s.recipe, step="graph"))


@pytest.fixture(scope="module")
def digits(digits_dir) -> TrainData:
    path = digits_dir / "digits.pt"
    return TrainData(load_prepared(path), file_sha256(path))


class CpuReplay(graphstep.CapturedStep):
    """`CapturedStep` with the capture emulated (module doc); records every instance."""

    made: ClassVar[list[CpuReplay]] = []
    never = False  # True: every step eager (the graph path's optimizer and inputs, no capture)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if CpuReplay.never:
            self.warmup_steps = 10**9
        CpuReplay.made.append(self)

    def _side_stream(self, inputs):
        return self.body(*inputs)

    def capture(self, inputs):
        static_in = [t.clone() for t in inputs]
        static_out: list = []  # filled by the first replay: a capture computes nothing

        def replay():
            out = self.body(*static_in)
            if not static_out:
                static_out.extend(o.clone() if torch.is_tensor(o) else o for o in out)
            else:
                for slot, value in zip(static_out, out):
                    if torch.is_tensor(slot):
                        slot.copy_(value)

        return replay, static_in, static_out


@pytest.fixture
def emulated_graphs(monkeypatch):
    """The engine's graph path on the CPU: refusal lifted, capture emulated."""
    CpuReplay.made, CpuReplay.never = [], False
    monkeypatch.setattr(engine, "spec_refusal", lambda *a, **k: None)
    monkeypatch.setattr(graphstep, "CapturedStep", CpuReplay)
    return CpuReplay.made


# --------------------------------------------------------------------------------------------
# Refusals


def test_graph_is_refused_on_the_cpu_across_processes_and_across_gpus_with_the_fix():
    cuda = torch.device("cuda", 0)
    assert graphstep.refusal("eager", "k", CPU, processes=8, gpus=8) is None
    assert graphstep.refusal("graph", "k", cuda) is None
    cpu = graphstep.refusal("graph", "train_dp.vgg.recipe.step", CPU)
    assert (
        cpu.startswith("train_dp.vgg.recipe.step: graph needs a CUDA GPU")
        and "set train_dp.vgg.recipe.step: eager" in cpu
    )
    ddp = graphstep.refusal("graph", "k", cuda, processes=2)
    assert "2 DDP processes" in ddp and "set k: eager" in ddp
    dp = graphstep.refusal("graph", "k", cuda, gpus=4)
    assert "nn.DataParallel over 4 GPUs" in dp and "CUDA_VISIBLE_DEVICES" in dp
    assert all("\n" not in line for line in (cpu, ddp, dp))


def test_the_engine_refuses_graph_on_the_cpu_before_training(digits, tmp_path):
    with pytest.raises(ValueError, match=r"recipe\.step: graph needs a CUDA GPU"):
        train(graph(spec()), digits, Context(CPU), tmp_path / "g.pt")
    assert not (tmp_path / "g.pt").exists()


# --------------------------------------------------------------------------------------------
# The step around the capture


def test_captured_step_warms_up_eagerly_then_captures_once_per_shape_and_replays():
    calls = []

    def body(x):
        calls.append(x.shape[0])
        return (x.sum(), len(x))

    step = CpuReplay(body, CPU, warmup_steps=2)
    outs, values = [], []
    for n, v in [(4, 1), (4, 2), (4, 3), (4, 4), (2, 5), (2, 6), (2, 7)]:
        outs.append(step(torch.full((n,), float(v))))
        values.append(float(outs[-1][0]))  # read before the next call: a replay rewrites it
    assert step.captures == 2 and step.replays == 3  # shape 4: 2 eager, capture + 2 replays; shape 2: 2 eager, 1
    assert values == [4, 8, 12, 16, 10, 12, 14]  # every step's own inputs, none stale
    assert outs[2][0] is outs[3][0] and float(outs[2][0]) == 16  # one graph's replays share its static output
    assert calls == [4, 4, 4, 4, 2, 2, 2]


def test_resident_plans_gather_exactly_the_batches_iteration_yields(digits):
    from dpstudy.data.loaders import Augment, ResidentLoader
    from dpstudy.train.models import input_spec

    d = digits.data
    shape, mean, std = digits.stats("lenet")
    for rank in (0, 1):
        loader = ResidentLoader(
            d.train_images,
            d.train_labels,
            spec=shape,
            batch_size=100,
            mean=mean,
            std=std,
            augment=Augment(2, True),
            seed=3,
            rank=rank,
            world=2,
        )
        loader.set_epoch(5)
        plans = list(loader.plans())
        eager = list(loader)
        assert len(plans) == len(eager) == len(loader) and plans[0].shape == (4, 100)
        for plan, (x, y) in zip(plans, eager):
            gx, gy = loader.gather(plan)
            assert torch.equal(gx, x) and torch.equal(gy, y)
    assert input_spec("lenet", 1).size == shape.size


def test_graph_training_matches_eager_training_with_the_capture_emulated(digits, tmp_path, emulated_graphs):
    eager = train(spec(), digits, Context(CPU), tmp_path / "eager.pt")
    captured = train(graph(spec()), digits, Context(CPU), tmp_path / "graph.pt")
    (step,) = emulated_graphs
    steps = sum(h["steps"] for h in eager.history)
    # 1,437 images: 22 steps of 64 and a last one of 29 per epoch. The 29-image step comes 3 times,
    # all eager warm-up; the 64-image one is captured after its warm-up and replayed from then on.
    assert [h["steps"] for h in eager.history] == [23] * 3
    assert step.captures == 1 and step.replays == steps - 2 * graphstep.WARMUP_STEPS
    assert len(captured.step_loss) == steps
    assert captured.step_loss == pytest.approx(eager.step_loss, rel=1e-5, abs=1e-6)
    for a, b in zip(eager.history, captured.history):
        assert b["lr"] == pytest.approx(a["lr"]) and b["steps"] == a["steps"]
        assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=2 / 360)
    assert captured.history[-1]["test_accuracy"] > 0.5


def test_a_growing_batch_captures_a_graph_per_batch_and_measures_the_noise_scale(digits, tmp_path, emulated_graphs):
    growth = StepGrowthConfig(batch=32, lr_rule="linear", factor=2, at_epochs=[1, 2], max_batch=128)
    base = spec(batch=32, schedule="step_growth", growth=growth, noise_ema=0.9)
    eager = train(base, digits, Context(CPU), tmp_path / "eager.pt")
    captured = train(graph(base), digits, Context(CPU), tmp_path / "graph.pt")
    assert [h["global_batch"] for h in captured.history] == [32, 64, 128]
    (step,) = emulated_graphs
    assert step.captures == 3  # one per batch size (each epoch's shorter last step is warm-up only)
    CpuReplay.never = True
    uncaptured = train(graph(base), digits, Context(CPU), tmp_path / "uncaptured.pt")
    # replaying is the step itself: bitwise what the same steps give uncaptured
    assert captured.step_loss == uncaptured.step_loss
    for key, values in uncaptured.step_series.items():  # nan (no estimate yet) in the same places
        np.testing.assert_array_equal(captured.step_series[key], values)
    # and eager's within float tolerance: the fused update rounds differently from the eager
    # optimizer's, a difference that grows over steps (4e-4 of the loss at most here)
    assert captured.step_loss[:16] == pytest.approx(eager.step_loss[:16], rel=1e-6)
    assert captured.step_loss == pytest.approx(eager.step_loss, rel=2e-2)
    assert captured.step_series["noise_scale"] == pytest.approx(eager.step_series["noise_scale"], rel=0.1, nan_ok=True)


# --------------------------------------------------------------------------------------------
# The device's busy share


@pytest.mark.parametrize(
    "intervals, share",
    [
        ([(0, 10)], 1.0),
        ([(0, 10), (20, 30)], 20 / 30),
        ([(0, 10), (5, 15), (30, 40)], 25 / 40),  # overlapping kernels (two streams) count once
        ([(10, 20), (0, 5)], 15 / 20),  # order does not matter
        ([(3, 3)], math.nan),
        ([], math.nan),
    ],
)
def test_busy_share_is_the_union_of_device_activity_over_its_span(intervals, share):
    got = busy_share(intervals)
    assert (math.isnan(got) and math.isnan(share)) or got == pytest.approx(share)


def test_busy_window_on_the_cpu_gives_no_number_and_says_why():
    window = BusyWindow(CPU).start()
    assert math.isnan(window.stop()) and "no CUDA device" in window.reason


@pytest.mark.parametrize(
    "wanted, steps, device, watched",
    [
        (8, 100, "cuda", 8),
        (8, 20, "cuda", 5),
        (8, 7, "cuda", 0),
        (8, 100, "cpu", 0),
        (0, 100, "cuda", 0),
    ],
)
def test_busy_steps_leave_three_quarters_of_an_epoch_to_nvml(wanted, steps, device, watched):
    assert busy_steps(wanted, steps, torch.device(device)) == watched
