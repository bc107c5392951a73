"""Measurements behind claims A1–A3: loader throughput and short training probes that split each
step into time spent waiting for data and time spent computing.

Timing rules (STYLE.md lesson 6): warm-up excluded; on CUDA a ``synchronize()`` closes every timed
region, because kernels and host-to-device copies are asynchronous and the host clock would
otherwise measure only their launch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .telemetry import ResourceSampler, Sample


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader) -> Iterator:
    """Batches across epoch boundaries, calling ``set_epoch`` at the start of each epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


@dataclass
class Throughput:
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def measure_throughput(loader, device: torch.device, warmup_batches: int, measure_batches: int) -> Throughput:
    """Images/s delivered by ``loader`` to ``device`` (batches ready there), warm-up excluded."""
    batches = endless(loader)
    try:
        for _ in range(warmup_batches):
            next(batches)
        synchronize(device)
        images = 0
        start = time.perf_counter()
        for _ in range(measure_batches):
            _, labels = next(batches)
            images += labels.shape[0]
        synchronize(device)
        return Throughput(images, time.perf_counter() - start)
    finally:
        batches.close()


@dataclass
class ProbeResult:
    """Per-step timings of one short training run, warm-up steps excluded."""

    batch_size: int
    data_wait_s: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    images: int = 0
    samples: list[Sample] = field(default_factory=list)
    utilization: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.data_wait_s) + sum(self.compute_s)

    @property
    def data_wait_fraction(self) -> float:
        return sum(self.data_wait_s) / self.total_s if self.total_s > 0 else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.total_s if self.total_s > 0 else float("nan")


def run_probe(model: nn.Module, loader, device: torch.device, *, batch_size: int, steps: int,
              warmup_steps: int, lr: float, momentum: float, sample_interval_s: float) -> ProbeResult:
    """Train ``model`` for ``warmup_steps + steps`` SGD steps and time each timed step.

    data wait = blocked in ``next(loader)`` until the batch is on the device;
    compute   = forward + backward + optimizer step until the device is idle.
    A resource sampler (NVML utilisation on a GPU, CPU otherwise) runs over the timed steps only.
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    result = ProbeResult(batch_size=batch_size)
    batches = endless(loader)
    sampler = ResourceSampler(interval_s=sample_interval_s)
    try:
        for i in range(warmup_steps + steps):
            timed = i >= warmup_steps
            if i == warmup_steps:
                synchronize(device)
                sampler.start()
            t0 = time.perf_counter()
            x, y = next(batches)
            synchronize(device)
            t1 = time.perf_counter()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            synchronize(device)
            t2 = time.perf_counter()
            if timed:
                result.data_wait_s.append(t1 - t0)
                result.compute_s.append(t2 - t1)
                result.loss.append(loss.item())  # a sync point, but the step is already synced
                result.images += y.shape[0]
    finally:
        batches.close()
        result.samples = sampler.stop()
    result.utilization = sampler.summary()
    return result
