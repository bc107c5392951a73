"""One epoch of training: the state a run carries between epochs (`Run`), one epoch's plan and
measurements (`Epoch`), and `run_epoch`, which trains the epoch's steps, evaluates, reduces every
figure over the ranks and records the epoch's row.

Observers (`observers`) hang on the epoch's hooks; the loop here only trains and counts. The step's
outputs stay on the device during the epoch (loss, score and the noise scale's norms fill a
preallocated tensor), so no step waits for the host, and all of the epoch's sums, the observers'
(`Epoch.local`) included, are all-reduced once, before rank 0 records them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from .batching import BatchSchedule, NoiseScaleEstimator
from .observers import Observers
from .parallel import GradSync, sync_buffers
from .schedules import LRSchedule, set_lr
from .tasks import TASKS

if TYPE_CHECKING:
    from .engine import Context, Result, RunSpec, TrainData


@dataclass
class Run:
    """One configuration's training, as the loop and its observers see it."""

    spec: RunSpec
    data: TrainData
    ctx: Context
    task: Any  # tasks.Task
    shape: Any  # models.InputSpec: the input the model takes
    mean: Any
    std: Any
    train_loader: Any
    test_loader: Any
    net: nn.Module  # the unwrapped model (what a checkpoint holds)
    model: nn.Module  # as wrapped for the mode (`parallel.wrap`)
    devices: list[str]
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    sync: GradSync | None  # DDP's gradient all-reduce hook
    batches: BatchSchedule
    noise: NoiseScaleEstimator | None  # set when the gradient noise scale is measured
    result: Result
    lr_schedule: Callable[[int], LRSchedule]  # the lr schedule while the global batch is the argument
    start_epoch: int = 0
    inputs: Callable = None  # () -> an epoch's step inputs (`graphstep.stepper`)
    step: Callable = None  # (*inputs) -> the step's outputs


@dataclass
class Epoch:
    """One epoch's plan, and what its steps, evaluation and observers measured."""

    index: int
    global_batch: int
    steps: int
    schedule: LRSchedule
    lrs: list[float]  # per step
    tail: int  # the first step the profiler watches (``steps``: none)
    local: dict[str, float] = field(default_factory=dict)  # this rank's sums, all-reduced with the figures
    totals: dict[str, float] = field(default_factory=dict)  # ``local`` summed over the ranks
    measured: dict[str, Any] = field(default_factory=dict)  # observers' figures for the row, by name
    excluded_s: float = 0.0  # host seconds within the epoch that are measurement, not training
    row: dict | None = None  # the figures recorded for the epoch
    done: bool = False  # the configuration ends with this epoch (last epoch, or diverged)


def busy_steps(wanted: int, steps: int, device: torch.device) -> int:
    """How many of an epoch's last steps the profiler watches: up to ``wanted`` and a quarter of the
    epoch, none on the CPU or when that leaves fewer than two."""
    n = min(wanted, steps // 4) if device.type == "cuda" else 0
    return n if n >= 2 else 0


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn, task=TASKS["classification"]) -> torch.Tensor:
    """[sum of losses, sum of the task's figure, samples, sum of its baseline figure] over this
    rank's share of ``loader``."""
    model.eval()
    totals = None
    for x, y in loader:
        inp, target = task.pair(x, y)
        out = model(inp)
        base = task.baseline(inp, target)
        row = torch.stack(
            [
                loss_fn(out, target) * len(target),
                task.score(out, target),
                torch.tensor(float(len(target)), device=x.device),
                base if base is not None else torch.zeros((), device=x.device),
            ]
        )
        totals = row if totals is None else totals + row
    model.train()
    return totals


def all_sum(t: torch.Tensor, group) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, group=group)
    return t


def run_epoch(run: Run, index: int, observers: Observers) -> Epoch:
    """Train, evaluate and record epoch ``index``; the observers' hooks run in their list order."""
    epoch = _plan(run, index)
    inputs = run.inputs()
    observers.notify("on_epoch_start", run, epoch)
    per_step, score = _steps(run, epoch, inputs, observers)
    observers.notify("on_steps_end", run, epoch)
    observers.notify("on_validation_start", run, epoch)
    sync_buffers(run.model, run.ctx.group)  # every rank evaluates with rank 0's BatchNorm statistics
    test = evaluate(run.model, run.test_loader, run.loss_fn, run.task)
    local = torch.tensor(list(epoch.local.values()), device=run.ctx.device)
    totals = all_sum(torch.cat([per_step.flatten(), score.view(1), test, local]), run.ctx.group)
    observers.notify("on_validation_end", run, epoch)
    per_step_all = totals[: per_step.numel()].view_as(per_step)
    rest = totals[per_step.numel() :].tolist()
    epoch.totals = dict(zip(epoch.local, rest[5:]))
    noise_steps = _noise_scale(run.noise, per_step_all, run.spec.world) if run.noise else []
    epoch.row = _row(run, epoch, per_step_all, rest[0], rest[1:5])
    _record(run, epoch, per_step_all, noise_steps)
    run.batches.end_epoch(index, run.noise.value if run.noise else float("nan"))
    observers.notify("on_epoch_end", run, epoch)
    return epoch


def _plan(run: Run, index: int) -> Epoch:
    """The epoch's global batch (the batch schedule's), its steps and their learning rates."""
    global_batch = run.batches.batch_at(index)
    run.train_loader.set_batch(global_batch // run.spec.world)
    run.train_loader.set_epoch(index)
    steps = len(run.train_loader)
    schedule = run.lr_schedule(global_batch)
    lrs = [schedule.lr_at(index + i / steps) for i in range(steps)]
    tail = steps - busy_steps(run.ctx.busy_steps, steps, run.ctx.device)
    return Epoch(index, global_batch, steps, schedule, lrs, tail)


def _steps(run: Run, epoch: Epoch, inputs_of_epoch, observers: Observers) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's optimizer steps. Returns, on the device, per step (loss × n, n and, for the
    noise scale, |small-batch grad|², 1/small batch, |grad|²) and the summed score."""
    device, optimizer, run_step, lrs = run.ctx.device, run.optimizer, run.step, epoch.lrs
    measure = run.noise is not None
    per_step = torch.zeros(5 if measure else 2, epoch.steps, device=device)
    score = torch.zeros((), device=device)
    step_start, batch_ready, step_end = (
        observers.hooks(name) for name in ("on_step_start", "on_batch_ready", "on_step_end")
    )
    for i in range(epoch.steps):
        if i == epoch.tail:  # NVML's window ends; the profiler watches the rest
            observers.notify("on_tail_start", run, epoch)
        set_lr(optimizer, lrs[i])
        for hook in step_start:
            hook(i)
        inputs = next(inputs_of_epoch)
        for hook in batch_ready:
            hook(i)
        out = run_step(*inputs)
        for hook in step_end:
            hook(i)
        if measure:  # separate writes: a Python scalar is filled in place, no host-to-device copy
            per_step[2, i], per_step[3, i], per_step[4, i] = out[2:5]
        n = inputs[-1].shape[-1]  # labels (b,) or a batch plan (4, b)
        per_step[0, i] = out[0] * n
        per_step[1, i] = n
        score += out[1]
    return per_step, score


def _noise_scale(noise: NoiseScaleEstimator, per_step: torch.Tensor, world: int) -> list[float]:
    """Feed the epoch's all-reduced per-step norms to ``noise``; the smoothed B_simple per step."""
    n, small_sq, inv_small, big_sq = (per_step[k].tolist() for k in (1, 2, 3, 4))
    return [
        noise.update(s / world, b / world, world / inv, total)
        for total, s, inv, b in zip(n, small_sq, inv_small, big_sq)
    ]


def _row(run: Run, epoch: Epoch, per_step: torch.Tensor, score: float, test: list[float]) -> dict:
    """The epoch's figures, all ranks' together, in the order the result tables show them."""
    task, world, measured = run.task, run.spec.world, epoch.measured
    test_loss, test_score, test_n, test_base = test
    data_all, compute_all, comm_all = (epoch.totals[k] / world for k in ("data_wait_s", "compute_s", "allreduce_s"))
    step_sum, step_n = per_step[0], per_step[1]
    images = float(step_n.sum())
    epoch_s, metric = measured["epoch_time_s"], task.metric
    return {
        "epoch": epoch.index,
        "steps": epoch.steps,
        "global_batch": epoch.global_batch,
        "samples": images,
        "lr": epoch.lrs[-1],
        "train_loss": float(step_sum.sum() / step_n.sum()),
        f"train_{metric}": score / images,
        "test_loss": test_loss / test_n,
        f"test_{metric}": test_score / test_n,
        **({f"test_{metric}_bicubic": test_base / test_n} if task.name == "restoration" else {}),
        "epoch_time_s": epoch_s,
        "eval_time_s": measured["eval_time_s"],
        "images_per_s": images / epoch_s,
        "busy_steps": epoch.steps - epoch.tail,
        "device_busy_pct": measured["device_busy_pct"],
        "data_wait_s": data_all,
        "compute_s": compute_all,
        "data_wait_fraction": data_all / (data_all + compute_all),
        "allreduce_s": comm_all,
        "allreduce_fraction": comm_all / compute_all,
        "allreduces": measured["allreduces"],
        **({"noise_scale": run.noise.value} if run.noise else {}),
        "device_mem_mib": measured["device_mem_mib"],
    }


def _record(run: Run, epoch: Epoch, per_step: torch.Tensor, noise_steps: list[float]) -> None:
    """Add the epoch to the result: its row, per-step loss and series; a non-finite loss ends the
    configuration as diverged at its first bad step."""
    result = run.result
    step_loss = (per_step[0] / per_step[1]).tolist()
    steps_before = sum(h["steps"] for h in result.history)
    result.history.append(epoch.row)
    result.step_loss += step_loss
    series = {
        "lr": epoch.lrs,
        "global_batch": [float(epoch.global_batch)] * epoch.steps,
        **({"noise_scale": noise_steps} if run.noise else {}),
    }
    for key, values in series.items():
        result.step_series.setdefault(key, []).extend(values)
    bad = [i for i, v in enumerate(step_loss) if not math.isfinite(v)]
    if bad:
        result.outcome = "diverged"
        result.diverged_step = steps_before + bad[0]
    epoch.done = bool(bad) or epoch.index == run.spec.recipe.epochs - 1
