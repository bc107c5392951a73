"""The training loop: one engine for a single device, nn.DataParallel and DDP.

`train()` runs one configuration (`RunSpec`) epoch by epoch. The mode only changes how the model
is wrapped (`parallel.wrap`) and which ranks share the data (`loaders` shard by rank); the step,
the timing, the metrics and the checkpoints are the same code for all three, and for both tasks
(`tasks`: classification with accuracy, 2× restoration with PSNR). The global batch may change
between epochs (`batching`: fixed, step growth, gradient-noise-scale driven); the learning rate
follows it through the lr rule.

Timing without a host sync per step: on CUDA each step records three CUDA events (before the
batch is fetched, when it is on the device, after the optimizer step) that are read once at the
end of the epoch; the gap between the first two is time the device spent on or waiting for data,
the rest is compute. On the CPU, or with ``sync_timing``, host clocks are read after a
synchronize. In DDP over ``gloo`` the share of the step with a gradient all-reduce in flight is
measured too (`parallel.GradSync`), and the bucket all-reduces are counted on every backend.

With ``noise_ema`` set, every step also measures the gradient noise scale (`batching`): under DDP
from each rank's local gradient norm (taken in the communication hook before averaging) and the
averaged one; in one process from two micro-batches of the step (whose BatchNorm statistics are
then per half, as they are per rank under DDP). The norms stay on the device and are reduced with
the epoch's other figures.

With ``step: graph`` (CUDA, one process on one GPU: `graphstep.refusal`) the step is a CUDA graph
captured per batch shape and replayed (`graphstep`); with the resident loader the graph also
gathers and augments the batch, so the loader hands over only the step's plan of indices.

Utilization is measured inside the training window only: NVML is sampled from the epoch's first
step (`telemetry`: a window shorter than NVML's averaging period gives no number). On CUDA the
epoch's last few steps (``Context.busy_steps``) are watched by the profiler for the device's busy
share (`devicebusy`), and NVML's window ends before them. The epoch's time and images/s still cover
every step, less the profiler's own start and stop, so time-to-target and epoch-time ratios are
those of the whole epoch.

Every figure a rank holds is all-reduced before rank 0 records it. A non-finite loss ends the
configuration as ``diverged`` at the first bad step, and the caller's sweep moves on. A checkpoint
is written atomically after every epoch (unwrapped weights, optimizer, schedule position, RNG
states, resolved config, data and code checksums); `train()` resumes from it when all match. Rank 0
alone reads it and broadcasts it, so ranks on other machines resume without seeing its files.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import checkpoints
from .. import codebase
from .batching import BatchSchedule, NoiseScaleEstimator
from ..config import RecipeConfig, as_dict
from ..data.datasets import Prepared
from ..measure.devicebusy import BusyWindow
from .graphstep import graph_optimizer, spec_refusal, stepper
from ..data.loaders import Augment, ResidentLoader, channel_stats, make_loader
from .models import build_model, input_spec, model_task
from .parallel import GradSync, sync_buffers, wrap
from ..measure.profiling import synchronize
from .schedules import LRSchedule, scale_lr, set_lr
from .tasks import TASKS
from ..measure.telemetry import ResourceSampler, rss_mib

CHECKPOINT_FORMAT = 2
EVAL_BATCH = 512
# What training computes is decided by the engine's whole import closure in src/dpstudy (imports
# inside functions too, `codebase`): a checkpoint made by other code is not resumed or reused (DVC
# reruns a stage when that code changes, and it must then really retrain).
BUSY_STEPS = 8  # steps the profiler watches at the end of each CUDA epoch (`busy_steps`)


@functools.cache  # read once per process, not at every checkpoint
def code_fingerprint() -> str:
    return codebase.fingerprint(__name__)


@dataclass(frozen=True)
class RunSpec:
    """One configuration: everything that decides its result (and its checkpoint's validity)."""

    sweep: str  # the grid it belongs to, e.g. "lenet" or "vgg"
    model: str
    width: float
    size: int  # input images are resized to size × size
    dataset: str
    mode: str  # single | dp | ddp
    world: int  # processes sharing each step (1 unless ddp)
    loader: str
    num_workers: int
    batch: int  # per process at the start; the global batch is batch * world
    lr_rule: str
    seed: int
    recipe: RecipeConfig
    schedule: str = "fixed"  # the batch schedule's name in its grid
    growth: Any = None  # config.StepGrowthConfig | config.NoiseScaleConfig; None = fixed batch
    noise_ema: float | None = None  # measure the gradient noise scale, smoothed so; None = don't

    @property
    def task(self) -> str:
        return model_task(self.model)

    @property
    def global_batch(self) -> int:
        return self.batch * self.world

    @property
    def peak_lr(self) -> float:
        return scale_lr(self.recipe.lr, self.lr_rule, self.global_batch, self.recipe.ref_batch)

    @property
    def name(self) -> str:
        return "-".join([self.sweep, *(part for part in self.name_parts() if part != "fixed")])

    def name_parts(self) -> list[str]:
        """What the name says after the grid: schedule, mode, loader, batch, lr rule, seed."""
        mode = f"ddp{self.world}" if self.mode == "ddp" else self.mode
        loader = self.loader + (f"{self.num_workers}w" if self.loader == "standard" else "")
        return [self.schedule, mode, loader, f"b{self.global_batch}", self.lr_rule, f"s{self.seed}"]

    def identity(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def params(self) -> dict[str, Any]:
        """What MLflow records for the configuration."""
        return {**self.identity(), "task": self.task, "global_batch": self.global_batch, "peak_lr": self.peak_lr}


@dataclass
class Context:
    """Where and how a configuration runs."""

    device: torch.device
    group: Any = None  # DDP process group (None: the whole world, or no DDP)
    rank: int = 0  # rank within the group
    sync_timing: bool = False  # synchronize the host every step (exact host timings on CUDA)
    sample_interval_s: float = 0.5
    busy_steps: int = BUSY_STEPS  # CUDA: the profiler watches up to this many of each epoch's last steps


@dataclass
class Result:
    spec: RunSpec
    outcome: str  # finished | diverged
    history: list[dict]  # one row per epoch
    step_loss: list[float]  # global mean loss per optimizer step
    devices: list[str]
    # per optimizer step: lr, global_batch and (when measured) the smoothed noise_scale
    step_series: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    diverged_step: int | None = None
    restored_epochs: int = 0  # epochs taken from a checkpoint instead of being trained here
    samples: list = dataclasses.field(default_factory=list)  # telemetry of the epochs run here
    run_id: str | None = None  # its MLflow run (rank 0)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


# --------------------------------------------------------------------------------------------
# Data for one model


class TrainData:
    """A prepared dataset plus the per-model normalisation, computed once per input shape."""

    def __init__(self, data: Prepared, sha256: str):
        self.data, self.sha256 = data, sha256
        self._stats: dict[tuple, tuple] = {}

    def stats(self, model: str, size: int | None = None):
        spec = input_spec(model, self.data.channels, size)
        key = (spec.channels, spec.size)
        if key not in self._stats:
            self._stats[key] = channel_stats(self.data.train_images, spec)
        return spec, *self._stats[key]


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
# Building blocks


def make_optimizer(model: nn.Module, recipe: RecipeConfig, lr: float) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def lr_schedule(spec: RunSpec, global_batch: int | None = None) -> LRSchedule:
    """The lr schedule while the global batch is ``global_batch`` (default: the starting one):
    the recipe's warmup and decay shape, its peak scaled to that batch by the run's lr rule."""
    r = spec.recipe
    peak = scale_lr(r.lr, spec.lr_rule, global_batch or spec.global_batch, r.ref_batch)
    return LRSchedule(base_lr=r.lr, peak_lr=peak, epochs=r.epochs, warmup_epochs=r.warmup_epochs,
                      decay=r.decay, milestones=tuple(r.milestones), gamma=r.gamma)


def batch_schedule(spec: RunSpec) -> BatchSchedule:
    g = spec.growth
    if g is None:
        return BatchSchedule("fixed", spec.global_batch)
    return BatchSchedule(g.kind, spec.global_batch, factor=g.factor, max_batch=g.max_batch,
                         at_epochs=tuple(getattr(g, "at_epochs", ())))


def train_step(model: nn.Module, optimizer, loss_fn, x: torch.Tensor, target: torch.Tensor, score=None,
               grad_probe=None):
    """Forward, backward, update. Returns (loss, score(output, target) or None, grad_probe() or None):
    ``grad_probe`` runs between backward and the update, while the gradients are this step's."""
    out = model(x)
    loss = loss_fn(out, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    probed = grad_probe() if grad_probe else None
    optimizer.step()
    return loss.detach(), score(out.detach(), target) if score else None, probed


def _norm_sq(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.get_total_norm(tensors, foreach=None).pow(2)


def _grad_sq(params: list[torch.Tensor]) -> torch.Tensor:
    return _norm_sq([p.grad for p in params if p.grad is not None])


def train_step_micro_norms(model: nn.Module, optimizer, loss_fn, x, target, score):
    """One optimizer step over the batch taken as two micro-batches, accumulating their gradients
    (weighted by size, so the update is the batch's mean gradient). Returns (loss, score,
    mean |micro-batch gradient|², the micro-batches' harmonic-mean size, |batch gradient|²)."""
    n = len(x)
    h = n // 2
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    out1 = model(x[:h])
    loss1 = loss_fn(out1, target[:h])
    (loss1 * (h / n)).backward()
    first = [p.grad.detach().clone() if p.grad is not None else None for p in params]
    out2 = model(x[h:])
    loss2 = loss_fn(out2, target[h:])
    (loss2 * ((n - h) / n)).backward()
    whole = [p.grad for p in params]
    g1 = [a * (n / h) for a in first if a is not None]
    g2 = [(w - a) * (n / (n - h)) for w, a in zip(whole, first) if a is not None]
    small_sq = (_norm_sq(g1) + _norm_sq(g2)) / 2
    big_sq = _grad_sq(params)
    optimizer.step()
    loss = (loss1.detach() * h + loss2.detach() * (n - h)) / n
    return loss, score(out1.detach(), target[:h]) + score(out2.detach(), target[h:]), small_sq, \
        2 / (1 / h + 1 / (n - h)), big_sq


def step_function(model: nn.Module, optimizer, loss_fn, task, micro: bool, sync: GradSync | None, measure: bool):
    """The configuration's step ``(input, target) -> (loss, score)``; when measuring the noise
    scale ``(loss, score, |small-batch gradient|², 1/small batch, |batch gradient|²)``: from two
    micro-batches (``micro``), else from this rank's gradient, read in DDP's comm hook, and the
    averaged one."""
    if micro:
        def step(inp, target):
            loss, hits, small_sq, b_small, big_sq = train_step_micro_norms(model, optimizer, loss_fn, inp, target,
                                                                           task.score)
            return loss, hits, small_sq, 1 / b_small, big_sq
    elif measure:
        def step(inp, target):
            loss, hits, (small_sq, big_sq) = train_step(
                model, optimizer, loss_fn, inp, target, task.score,
                grad_probe=lambda: (sync.take_local_sq(), _grad_sq(list(model.parameters()))))
            return loss, hits, small_sq, 1 / len(target), big_sq
    else:
        def step(inp, target):
            return train_step(model, optimizer, loss_fn, inp, target, task.score)[:2]
    return step


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
        row = torch.stack([loss_fn(out, target) * len(target), task.score(out, target),
                           torch.tensor(float(len(target)), device=x.device),
                           base if base is not None else torch.zeros((), device=x.device)])
        totals = row if totals is None else totals + row
    model.train()
    return totals


def _all_sum(t: torch.Tensor, group) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, group=group)
    return t


def _all_gather_floats(values: list[float], device: torch.device, group) -> list[float]:
    """Every rank's ``values`` (same length on all ranks), rank order."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return t.tolist()
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return torch.cat(out).tolist()


def device_memory_mib(devices: list[str]) -> list[float]:
    """Peak memory allocated by PyTorch per CUDA device this epoch; process RSS on the CPU."""
    if devices and devices[0].startswith("cuda"):
        return [torch.cuda.max_memory_allocated(torch.device(d)) / 2**20 for d in devices]
    rss = rss_mib()
    return [float("nan") if rss is None else rss]


def _reset_peaks(devices: list[str]) -> None:
    for d in devices:
        if d.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(d))


# --------------------------------------------------------------------------------------------
# Checkpoints


def rng_state(devices: list[str]) -> dict:
    """This process's RNG states; CUDA only for the devices it computes on (asking for every
    GPU's state would open a CUDA context on each of them from every DDP rank)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": {d: torch.cuda.get_rng_state(torch.device(d)) for d in devices if d.startswith("cuda")}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    for d, cuda_state in state["cuda"].items():
        if torch.cuda.is_available() and torch.device(d).index < torch.cuda.device_count():
            torch.cuda.set_rng_state(cuda_state, torch.device(d))


# --------------------------------------------------------------------------------------------
# The loop


def train(spec: RunSpec, data: TrainData, ctx: Context, checkpoint: Path, on_epoch=None) -> Result:
    """Train one configuration to the end (or to divergence), resuming from ``checkpoint``.

    ``on_epoch(row)`` is called on every rank after each epoch with the all-reduced figures.
    """
    device, group = ctx.device, ctx.group
    recipe, task = spec.recipe, TASKS[spec.task]
    shape, mean, std = data.stats(spec.model, spec.size)
    mean, std = task.normalisation(mean, std)
    d = data.data
    augment = Augment(recipe.augment.crop_padding, recipe.augment.hflip)
    train_loader = make_loader(spec.loader, d.train_images, d.train_labels, spec=shape, batch_size=spec.batch,
                               mean=mean, std=std, augment=augment, seed=spec.seed, rank=ctx.rank,
                               world=spec.world, num_workers=spec.num_workers, pin_memory=True, device=device)
    test_loader = ResidentLoader(d.test_images, d.test_labels, spec=shape, batch_size=EVAL_BATCH, mean=mean,
                                 std=std, shuffle=False, rank=ctx.rank, world=spec.world, device=device)

    graph = recipe.step == "graph"
    why = spec_refusal(spec, "recipe.step", device)
    if why:  # the stages refuse this before any work; a direct caller gets the same reason
        raise ValueError(why)
    torch.manual_seed(spec.seed)  # identical initial weights on every rank and in every mode
    net = build_model(spec.model, d.channels, d.num_classes, width=spec.width, size=spec.size)
    # A captured step runs on the module itself: one process on one GPU (`refusal`), where DDP's
    # all-reduce over a group of one and DataParallel over one device change nothing.
    model, devices = wrap(net, "single" if graph else spec.mode, device, group)
    optimizer = make_optimizer(net, recipe, spec.peak_lr)
    loss_fn = task.loss_fn()
    measure = spec.noise_ema is not None
    # One process (or a DDP group of one) has no second batch size: take two micro-batches.
    micro = measure and (spec.mode != "ddp" or spec.world == 1)
    sync = GradSync(model, group, local_norms=measure and not micro) if spec.mode == "ddp" and not graph else None
    batches = batch_schedule(spec)
    noise = NoiseScaleEstimator(spec.noise_ema) if measure else None

    result = Result(spec, "finished", [], [], devices)
    start_epoch = 0
    # Rank 0 decides and shares: ranks on other machines may not see its files (no shared disk).
    mine = (checkpoints.open_for(checkpoint, spec.identity(), data.sha256, code_fingerprint(), CHECKPOINT_FORMAT)
            if ctx.rank == 0 else None)
    ckpt = _from_rank0(mine, spec, group)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"][min(ctx.rank, len(ckpt["rng"]) - 1)])
        batches.load_state_dict(ckpt["schedule"]["batches"])
        if noise:
            noise.load_state_dict(ckpt["schedule"]["noise"])
        result.history, result.step_loss = ckpt["history"], ckpt["step_loss"]
        result.step_series = ckpt["step_series"]
        result.outcome, result.diverged_step = ckpt["outcome"], ckpt["diverged_step"]
        result.restored_epochs = start_epoch = ckpt["epoch"] + 1
        if ckpt["complete"]:
            return result
    if graph:
        graph_optimizer(optimizer, device)
    batches_of_epoch, run_step = stepper(step_function(model, optimizer, loss_fn, task, micro, sync, measure),
                                         train_loader, task.pair, device, graph)

    model.train()
    for epoch in range(start_epoch, recipe.epochs):
        global_batch = batches.batch_at(epoch)
        train_loader.set_batch(global_batch // spec.world)
        train_loader.set_epoch(epoch)
        steps = len(train_loader)
        schedule = lr_schedule(spec, global_batch)
        lrs = [schedule.lr_at(epoch + i / steps) for i in range(steps)]
        _reset_peaks(devices)
        timer = step_timer(device, ctx.sync_timing)
        # per step: loss * n, n, and for the noise scale |small-batch grad|², 1/small batch, |grad|²
        per_step = torch.zeros(5 if measure else 2, steps, device=device)
        score = torch.zeros((), device=device)
        calls = sync.calls if sync else 0
        sampler = ResourceSampler(ctx.sample_interval_s) if ctx.rank == 0 else None
        timed = steps - busy_steps(ctx.busy_steps, steps, device)  # NVML's window; the profiler's after
        busy = BusyWindow(device)
        inputs_of_epoch = batches_of_epoch()
        if sampler:
            sampler.start()
        t_epoch = time.perf_counter()
        for i in range(steps):
            if i == timed:  # NVML's window ends; the profiler watches the rest
                _stop_sampler(device, sampler, result)
                busy.start()
            set_lr(optimizer, lrs[i])
            timer.start()
            inputs = next(inputs_of_epoch)
            timer.batch_ready()
            out = run_step(*inputs)
            timer.step_done()
            if measure:  # separate writes: a Python scalar is filled in place, no host-to-device copy
                per_step[2, i], per_step[3, i], per_step[4, i] = out[2:5]
            n = inputs[-1].shape[-1]  # labels (b,) or a batch plan (4, b)
            per_step[0, i] = out[0] * n
            per_step[1, i] = n
            score += out[1]
        if timed == steps:
            _stop_sampler(device, sampler, result)
        busy_pct = busy.stop()
        data_s, compute_s = timer.collect()
        epoch_s = time.perf_counter() - t_epoch - busy.overhead_s
        comm_s = sync.take() if sync and sync.measurable else float("nan")
        calls = sync.calls - calls if sync else 0

        t_eval = time.perf_counter()
        sync_buffers(model, group)  # every rank evaluates with rank 0's BatchNorm statistics
        test = evaluate(model, test_loader, loss_fn, task)
        totals = torch.cat([per_step.flatten(), score.view(1), test,
                            torch.tensor([sum(data_s), sum(compute_s), comm_s], device=device)])
        totals = _all_sum(totals, group)
        eval_s = time.perf_counter() - t_eval
        per_step_all = totals[:per_step.numel()].view_as(per_step)
        rest = totals[per_step.numel():].tolist()
        score_all, (test_loss, test_score, test_n, test_base) = rest[0], rest[1:5]
        data_all, compute_all, comm_all = (x / spec.world for x in rest[5:8])
        step_sum, step_n = per_step_all[0], per_step_all[1]
        step_loss = (step_sum / step_n).tolist()
        images = float(step_n.sum())
        memory = _all_gather_floats(device_memory_mib(devices), device, group)
        noise_steps = _noise_scale(noise, per_step_all, spec.world) if noise else []

        metric = task.metric
        row = {
            "epoch": epoch, "steps": steps, "global_batch": global_batch, "samples": images,
            "lr": lrs[-1],
            "train_loss": float(step_sum.sum() / step_n.sum()), f"train_{metric}": score_all / images,
            "test_loss": test_loss / test_n, f"test_{metric}": test_score / test_n,
            **({f"test_{metric}_bicubic": test_base / test_n} if task.name == "restoration" else {}),
            "epoch_time_s": epoch_s, "eval_time_s": eval_s, "images_per_s": images / epoch_s,
            "busy_steps": steps - timed, "device_busy_pct": busy_pct,
            "data_wait_s": data_all, "compute_s": compute_all,
            "data_wait_fraction": data_all / (data_all + compute_all),
            "allreduce_s": comm_all, "allreduce_fraction": comm_all / compute_all,
            "allreduces": calls,
            **({"noise_scale": noise.value} if noise else {}),
            "device_mem_mib": memory,
        }
        if sampler:
            row.update({k: v for k, v in sampler.summary().items() if k.endswith("_mean")})
        steps_before = sum(h["steps"] for h in result.history)
        result.history.append(row)
        result.step_loss += step_loss
        series = {"lr": lrs, "global_batch": [float(global_batch)] * steps,
                  **({"noise_scale": noise_steps} if noise else {})}
        for key, values in series.items():
            result.step_series.setdefault(key, []).extend(values)
        bad = [i for i, v in enumerate(step_loss) if not math.isfinite(v)]
        if bad:
            result.outcome = "diverged"
            result.diverged_step = steps_before + bad[0]
        batches.end_epoch(epoch, noise.value if noise else float("nan"))
        done = bad or epoch == recipe.epochs - 1
        rngs = _gather_rng(devices, group)  # a collective: every rank takes part
        if ctx.rank == 0:
            checkpoints.save(checkpoint, _payload(spec, data, net, optimizer, schedule, batches, noise, epoch,
                                                  result, bool(done), shape, mean, std, rngs))
        if on_epoch:
            on_epoch(row)
        if done:
            break
    return result


def _stop_sampler(device: torch.device, sampler, result: Result) -> None:
    """End NVML's window once the work queued so far has run."""
    if sampler:
        synchronize(device)
        result.samples += sampler.stop()


def _noise_scale(noise: NoiseScaleEstimator, per_step: torch.Tensor, world: int) -> list[float]:
    """Feed the epoch's all-reduced per-step norms to ``noise``; the smoothed B_simple per step."""
    n, small_sq, inv_small, big_sq = (per_step[k].tolist() for k in (1, 2, 3, 4))
    return [noise.update(s / world, b / world, world / inv, total)
            for total, s, inv, b in zip(n, small_sq, inv_small, big_sq)]


def _from_rank0(obj, spec: RunSpec, group):
    """Rank 0's ``obj`` on every rank of the configuration's group."""
    if spec.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)  # src: global rank 0, first of every group
    return box[0]


def _gather_rng(devices: list[str], group) -> list[dict]:
    """Every rank's RNG states (rank order), for an exact restart of each."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [rng_state(devices)]
    states = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, rng_state(devices), group=group)
    return states


def _payload(spec, data, net, optimizer, schedule, batches, noise, epoch, result, complete, shape, mean, std,
             rngs):
    return {
        "format": CHECKPOINT_FORMAT,
        "spec": spec.identity(),
        "config": {**spec.params(), "recipe": as_dict(spec.recipe)},
        "data_sha256": data.sha256,
        "code_sha256": code_fingerprint(),
        "model_meta": {"model": spec.model, "task": spec.task, "width": spec.width, "size": spec.size,
                       "dataset": spec.dataset,
                       "channels": data.data.channels, "num_classes": data.data.num_classes,
                       "input_channels": shape.channels, "input_size": shape.size, "mean": mean, "std": std},
        "epoch": epoch,
        "complete": complete,
        "outcome": result.outcome,
        "diverged_step": result.diverged_step,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": {"position_epochs": epoch + 1, "global_step": len(result.step_loss),
                     "lr": dataclasses.asdict(schedule), "batches": batches.state_dict(),
                     "noise": noise.state_dict() if noise else None},
        "rng": rngs,
        "history": result.history,
        "step_loss": result.step_loss,
        "step_series": result.step_series,
    }


def continue_from_first_epoch(source: Path, target: Path, spec: RunSpec) -> bool:
    """Write ``spec``'s checkpoint after its first epoch from ``source``, the checkpoint another
    configuration wrote after its own first epoch, which trained exactly what ``spec``'s does
    (`sweep.shared_first_epochs`): weights, optimizer, RNG states, noise estimate and the epoch's
    figures (its measured time included) carry over; the identity and the batch schedule's
    decision for the next epoch are ``spec``'s. False (nothing written) unless ``source`` is a
    finished first epoch of a longer run."""
    ckpt = checkpoints.read(source)
    if ckpt is None or ckpt["epoch"] != 0 or ckpt["complete"] or ckpt["outcome"] != "finished" \
            or spec.recipe.epochs < 2:
        return False
    batches = batch_schedule(spec)
    batches.end_epoch(0, ckpt["history"][0].get("noise_scale", float("nan")))
    ckpt["spec"] = spec.identity()
    ckpt["config"] = {**spec.params(), "recipe": as_dict(spec.recipe)}
    ckpt["schedule"]["batches"] = batches.state_dict()
    checkpoints.save(target, ckpt)
    return True


def copy_checkpoint(source: Path, target: Path, spec: RunSpec) -> None:
    """``source``'s checkpoint as ``spec``'s, whose training is the same (`sweep.split_twins`)."""
    ckpt = checkpoints.read(source)
    if ckpt is None:
        raise RuntimeError(f"checkpoint {source} vanished before it could be copied to {target.name}")
    ckpt["spec"] = spec.identity()
    ckpt["config"] = {**spec.params(), "recipe": as_dict(spec.recipe)}
    checkpoints.save(target, ckpt)
