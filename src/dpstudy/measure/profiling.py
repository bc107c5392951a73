"""Measurements behind claims A1–A3: loader throughput and short training probes that split each
step into time spent waiting for data and time spent computing.

Timing rules (STYLE.md lesson 6): warm-up excluded; on CUDA a ``synchronize()`` closes every timed
region, because kernels and host-to-device copies are asynchronous and the host clock would
otherwise measure only their launch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .telemetry import ResourceSampler, Sample


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless(loader, batches_of_epoch=None) -> Iterator:
    """Batches (or ``batches_of_epoch()``'s step inputs) across epoch boundaries, calling
    ``set_epoch`` at the start of each epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from (batches_of_epoch() if batches_of_epoch else loader)
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
    step: str = "eager"
    data_wait_s: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    images: int = 0
    samples: list[Sample] = field(default_factory=list)
    utilization: dict[str, float] = field(default_factory=dict)
    device_busy_pct: float = float("nan")  # the profiler's busy share after the timed steps (CUDA)

    @property
    def total_s(self) -> float:
        return sum(self.data_wait_s) + sum(self.compute_s)

    @property
    def data_wait_fraction(self) -> float:
        return sum(self.data_wait_s) / self.total_s if self.total_s > 0 else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.total_s if self.total_s > 0 else float("nan")


def _timed_steps(run, batches, device: torch.device, result: ProbeResult, steps: int, min_seconds: float) -> None:
    """At least ``steps`` steps, and on until ``min_seconds`` have passed, each one's data wait,
    compute time, loss and images added to ``result``."""
    start = time.perf_counter()
    while len(result.compute_s) < steps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        inputs = next(batches)
        synchronize(device)
        t1 = time.perf_counter()
        (loss,) = run(*inputs)
        synchronize(device)
        t2 = time.perf_counter()
        result.data_wait_s.append(t1 - t0)
        result.compute_s.append(t2 - t1)
        result.loss.append(loss.item())  # a sync point, but the step is already synced
        result.images += inputs[-1].shape[-1]  # labels (b,) or a batch plan (4, b)


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer):
    """One classification training step of ``model`` with ``opt``: its detached loss, as a 1-tuple."""
    loss_fn = nn.CrossEntropyLoss()

    def train_step(x, y):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return (loss.detach(),)

    return train_step


def run_probe(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    batch_size: int,
    steps: int,
    warmup_steps: int,
    lr: float,
    momentum: float,
    sample_interval_s: float,
    step: str = "eager",
    min_seconds: float = 0.0,
    busy_steps: int = 8,
) -> ProbeResult:
    """Train ``model`` with SGD: warm-up steps, then timed steps (at least ``steps``, and on until
    ``min_seconds`` have passed), then on CUDA ``busy_steps`` steps watched by the profiler.

    data wait = blocked until the step's input is on the device (for a graph step with the resident
    loader: the batch plan; the gather is part of the step);
    compute   = the step (forward, backward, update; or the graph's replay) until the device is idle.
    NVML (or the CPU) is sampled over the timed steps only. ``step``: eager or graph (`graphstep`;
    a graph's capture happens during warm-up, which is extended to cover it).
    """
    from ..train.graphstep import WARMUP_STEPS, graph_optimizer, stepper
    from .devicebusy import BusyWindow

    graph = step == "graph"
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    if graph:
        graph_optimizer(opt, device)
    batches_of_epoch, run = stepper(_sgd_step(model, opt), loader, lambda x, y: (x, y), device, graph)
    result = ProbeResult(batch_size=batch_size, step=step)
    batches = endless(loader, batches_of_epoch)
    sampler = ResourceSampler(interval_s=sample_interval_s)
    busy = BusyWindow(device)
    warmup = max(warmup_steps, WARMUP_STEPS + 1) if graph else warmup_steps
    try:
        for _ in range(warmup):
            run(*next(batches))
        synchronize(device)
        sampler.start()
        _timed_steps(run, batches, device, result, steps, min_seconds)
        result.samples = sampler.stop()
        if device.type == "cuda" and busy_steps:
            busy.start()
            for _ in range(busy_steps):
                run(*next(batches))
            result.device_busy_pct = busy.stop()
    finally:
        batches.close()
        result.samples = sampler.stop()
    result.utilization = sampler.summary()
    return result
