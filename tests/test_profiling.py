"""The timing split of the probes and the throughput meter, on loaders of known speed."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from dpstudy.measure.profiling import endless, measure_throughput, run_probe

CPU = torch.device("cpu")


class PacedLoader:
    """Yields `steps` batches per epoch, each after sleeping `delay_s`: a loader of known speed."""

    def __init__(self, batch: int, steps: int, delay_s: float):
        self.batch, self.steps, self.delay_s = batch, steps, delay_s
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            time.sleep(self.delay_s)
            yield torch.zeros(self.batch, 4), torch.zeros(self.batch, dtype=torch.long)


class SlowModel(nn.Module):
    """A linear layer whose forward takes at least `delay_s`: compute of known length."""

    def __init__(self, delay_s: float):
        super().__init__()
        self.fc, self.delay_s = nn.Linear(4, 2), delay_s

    def forward(self, x):
        time.sleep(self.delay_s)
        return self.fc(x)


def test_endless_crosses_epochs_and_sets_each():
    loader = PacedLoader(batch=2, steps=3, delay_s=0)
    batches = endless(loader)
    for _ in range(7):
        next(batches)
    assert loader.epochs == [0, 1, 2]


def test_throughput_counts_images_after_warmup():
    loader = PacedLoader(batch=8, steps=5, delay_s=0.01)
    result = measure_throughput(loader, CPU, warmup_batches=2, measure_batches=6)
    assert result.images == 48
    # Sleep-bound at 8 images per 10 ms: never faster than 800/s (a meter that timed the warm-up
    # or miscounted would break that); slower only by scheduling delays on a busy machine.
    assert 0.3 * 800 < result.images_per_s <= 800 * 1.02


@pytest.mark.parametrize(
    "data_delay, compute_delay, low, high",
    [
        (0.2, 0.0, 0.8, 1.0),  # data-bound: the step waits for the loader (a loaded CPU's step: ~20 ms)
        (0.0, 0.08, 0.0, 0.2),  # compute-bound
        (0.05, 0.05, 0.35, 0.65),  # delays well above a loaded CPU's own step time (~10 ms)
    ],
)
def test_probe_splits_each_step_into_data_wait_and_compute(data_delay, compute_delay, low, high):
    loader = PacedLoader(batch=4, steps=3, delay_s=data_delay)
    result = run_probe(
        SlowModel(compute_delay),
        loader,
        CPU,
        batch_size=4,
        steps=6,
        warmup_steps=2,
        lr=0.1,
        momentum=0.0,
        sample_interval_s=0.05,
    )
    assert len(result.data_wait_s) == len(result.compute_s) == len(result.loss) == 6  # warm-up excluded
    assert result.images == 24
    assert low <= result.data_wait_fraction <= high
    assert all(w >= data_delay * 0.9 for w in result.data_wait_s)
    assert result.samples, "the sampler ran over the timed steps"
