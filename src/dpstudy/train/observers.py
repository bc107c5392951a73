"""Observers of the training loop, in the shape of Lightning's callbacks: timing, telemetry,
device memory, checkpoints and the caller's per-epoch callback hang on named hooks, so the loop
(`epoch.run_epoch`) only trains and counts.

Hooks, in the order one epoch calls them (each on every rank, observer by observer in list order):
``on_train_start(run)``; per epoch ``on_epoch_start(run, epoch)`` (the epoch's inputs are ready,
its first step is next), per step ``on_step_start(i)``, ``on_batch_ready(i)`` and
``on_step_end(i)``, once ``on_tail_start(run, epoch)`` when the steps the profiler watches begin,
``on_steps_end``, ``on_validation_start``, ``on_validation_end`` (the epoch's sums are all-reduced)
and ``on_epoch_end(run, epoch)`` (its row is recorded); ``on_train_end(run)``. An observer adds
figures to the epoch's row through ``Epoch.measured``, and per-rank sums to be all-reduced with
the epoch's figures through ``Epoch.local`` (at ``on_steps_end`` at the latest).

Order matters where one observer's figure uses another's: `Telemetry` comes before `Timing` (the
profiler's own start and stop are taken out of the epoch's time), and `Checkpoints` before
`EpochCallback` (the caller sees an epoch whose checkpoint is written).

Timing without a host sync per step: on CUDA each step records three CUDA events (before the
batch is fetched, when it is on the device, after the optimizer step) that are read once at the
end of the epoch; the gap between the first two is time the device spent on or waiting for data,
the rest is compute. On the CPU, or with ``sync_timing``, host clocks are read after a
synchronize.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..measure.devicebusy import BusyWindow
from ..measure.profiling import synchronize
from ..measure.telemetry import ResourceSampler, rss_mib
from . import checkpoints, snapshot

if TYPE_CHECKING:
    from .epoch import Epoch, Run


class Observer:
    """Base class: every hook does nothing; override the ones an observer needs."""

    def on_train_start(self, run: Run) -> None: ...
    def on_epoch_start(self, run: Run, epoch: Epoch) -> None: ...
    def on_step_start(self, i: int) -> None: ...
    def on_batch_ready(self, i: int) -> None: ...
    def on_step_end(self, i: int) -> None: ...
    def on_tail_start(self, run: Run, epoch: Epoch) -> None: ...
    def on_steps_end(self, run: Run, epoch: Epoch) -> None: ...
    def on_validation_start(self, run: Run, epoch: Epoch) -> None: ...
    def on_validation_end(self, run: Run, epoch: Epoch) -> None: ...
    def on_epoch_end(self, run: Run, epoch: Epoch) -> None: ...
    def on_train_end(self, run: Run) -> None: ...


class Observers:
    """The observers of one training, called hook by hook in list order."""

    def __init__(self, observers: Iterable[Observer]):
        self.observers = list(observers)

    def hooks(self, name: str) -> list[Callable]:
        """The bound ``name`` hooks of the observers that override it (per-step hooks: the loop
        calls only these)."""
        base = getattr(Observer, name)
        return [getattr(o, name) for o in self.observers if getattr(type(o), name) is not base]

    def notify(self, name: str, *args) -> None:
        for hook in self.hooks(name):
            hook(*args)


# --------------------------------------------------------------------------------------------
# Step timing


class _HostTimer:
    def __init__(self, device: torch.device):
        self.device, self.data, self.compute = device, [], []

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def start(self):
        self._t0 = self._now()

    def batch_ready(self):
        self._t1 = self._now()

    def step_done(self):
        t2 = self._now()
        self.data.append(self._t1 - self._t0)
        self.compute.append(t2 - self._t1)

    def collect(self) -> tuple[list[float], list[float]]:
        return self.data, self.compute


class _EventTimer:
    def __init__(self, device: torch.device):
        self.device, self.events = device, []

    def _event(self):
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def start(self):
        self._e0 = self._event()

    def batch_ready(self):
        self._e1 = self._event()

    def step_done(self):
        self.events.append((self._e0, self._e1, self._event()))

    def collect(self) -> tuple[list[float], list[float]]:
        torch.cuda.synchronize(self.device)
        data = [a.elapsed_time(b) / 1000 for a, b, _ in self.events]
        compute = [b.elapsed_time(c) / 1000 for _, b, c in self.events]
        return data, compute


def step_timer(device: torch.device, sync_timing: bool):
    return _EventTimer(device) if device.type == "cuda" and not sync_timing else _HostTimer(device)


# --------------------------------------------------------------------------------------------
# The observers a training always has


class Telemetry(Observer):
    """Utilization inside the training window only: the `ResourceSampler` (NVML, or the CPU) on
    rank 0 from the epoch's first step until the profiler's tail, whose steps a `BusyWindow`
    watches for the device's busy share. The sampler's window ends once the work queued so far has
    run; a window shorter than NVML's averaging gives no number (`telemetry`)."""

    def on_epoch_start(self, run: Run, epoch: Epoch) -> None:
        self.sampler = ResourceSampler(run.ctx.sample_interval_s) if run.ctx.rank == 0 else None
        self.busy = BusyWindow(run.ctx.device)
        if self.sampler:
            self.sampler.start()

    def on_tail_start(self, run: Run, epoch: Epoch) -> None:
        self._stop_sampler(run)
        self.busy.start()

    def on_steps_end(self, run: Run, epoch: Epoch) -> None:
        if epoch.tail == epoch.steps:
            self._stop_sampler(run)
        epoch.measured["device_busy_pct"] = self.busy.stop()
        epoch.excluded_s += self.busy.overhead_s

    def on_epoch_end(self, run: Run, epoch: Epoch) -> None:
        if self.sampler:
            epoch.row.update({k: v for k, v in self.sampler.summary().items() if k.endswith("_mean")})

    def _stop_sampler(self, run: Run) -> None:
        if self.sampler:
            synchronize(run.ctx.device)
            run.result.samples += self.sampler.stop()


class Timing(Observer):
    """The epoch's wall time (less what `Telemetry` spent measuring), each step's data wait and
    compute (`step_timer`), DDP's all-reduce time and count (`parallel.GradSync`) and the time the
    evaluation and the epoch's reduction took."""

    def __init__(self, sync_timing: bool = False):
        self.sync_timing = sync_timing

    def on_epoch_start(self, run: Run, epoch: Epoch) -> None:
        self.timer = step_timer(run.ctx.device, self.sync_timing)
        self.calls = run.sync.calls if run.sync else 0
        self.t_epoch = time.perf_counter()

    def on_step_start(self, i: int) -> None:
        self.timer.start()

    def on_batch_ready(self, i: int) -> None:
        self.timer.batch_ready()

    def on_step_end(self, i: int) -> None:
        self.timer.step_done()

    def on_steps_end(self, run: Run, epoch: Epoch) -> None:
        data_s, compute_s = self.timer.collect()
        epoch.measured["epoch_time_s"] = time.perf_counter() - self.t_epoch - epoch.excluded_s
        sync = run.sync
        comm_s = sync.take() if sync and sync.measurable else float("nan")
        epoch.measured["allreduces"] = sync.calls - self.calls if sync else 0
        epoch.local.update({"data_wait_s": sum(data_s), "compute_s": sum(compute_s), "allreduce_s": comm_s})

    def on_validation_start(self, run: Run, epoch: Epoch) -> None:
        self.t_eval = time.perf_counter()

    def on_validation_end(self, run: Run, epoch: Epoch) -> None:
        epoch.measured["eval_time_s"] = time.perf_counter() - self.t_eval


class Memory(Observer):
    """Peak memory allocated by PyTorch per CUDA device each epoch (process RSS on the CPU), every
    rank's, in rank order."""

    def on_epoch_start(self, run: Run, epoch: Epoch) -> None:
        for d in run.devices:
            if d.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(torch.device(d))

    def on_validation_end(self, run: Run, epoch: Epoch) -> None:
        mine = device_memory_mib(run.devices)
        epoch.measured["device_mem_mib"] = all_gather_floats(mine, run.ctx.device, run.ctx.group)


class Checkpoints(Observer):
    """A checkpoint written atomically by rank 0 after every epoch (`snapshot`), holding every
    rank's RNG states; ``code()`` is the fingerprint of the training code it belongs to (asked on
    rank 0 only, as only rank 0 writes)."""

    def __init__(self, path: Path, code: Callable[[], str]):
        self.path, self.code = path, code

    def on_epoch_end(self, run: Run, epoch: Epoch) -> None:
        rngs = snapshot.gather_rng(run.devices, run.ctx.group)  # a collective: every rank takes part
        if run.ctx.rank == 0:
            checkpoints.save(self.path, snapshot.payload(run, epoch, rngs, self.code()))


class EpochCallback(Observer):
    """The caller's ``on_epoch(row)`` after each epoch, on every rank, with the all-reduced figures."""

    def __init__(self, on_epoch: Callable[[dict], object]):
        self.on_epoch = on_epoch

    def on_epoch_end(self, run: Run, epoch: Epoch) -> None:
        self.on_epoch(epoch.row)


def device_memory_mib(devices: list[str]) -> list[float]:
    """Peak memory allocated by PyTorch per CUDA device this epoch; process RSS on the CPU."""
    if devices and devices[0].startswith("cuda"):
        return [torch.cuda.max_memory_allocated(torch.device(d)) / 2**20 for d in devices]
    rss = rss_mib()
    return [float("nan") if rss is None else rss]


def all_gather_floats(values: list[float], device: torch.device, group) -> list[float]:
    """Every rank's ``values`` (same length on all ranks), rank order."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return t.tolist()
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return torch.cat(out).tolist()
