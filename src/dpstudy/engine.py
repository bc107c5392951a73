"""The training loop: one engine for a single device, nn.DataParallel and DDP.

`train()` runs one configuration (`RunSpec`) epoch by epoch. The mode only changes how the model
is wrapped (`parallel.wrap`) and which ranks share the data (`loaders` shard by rank); the step,
the timing, the metrics and the checkpoints are the same code for all three.

Timing without a host sync per step: on CUDA each step records three CUDA events (before the
batch is fetched, when it is on the device, after the optimizer step) that are read once at the
end of the epoch; the gap between the first two is time the device spent on or waiting for data,
the rest is compute. On the CPU, or with ``sync_timing``, host clocks are read after a
synchronize. In DDP over ``gloo`` the share of the step with a gradient all-reduce in flight is
measured too (`parallel.AllReduceTimer`).

Every figure a rank holds is all-reduced before rank 0 records it. A non-finite loss ends the
configuration as ``diverged`` at the first bad step, and the caller's sweep moves on. A checkpoint
is written atomically after every epoch (unwrapped weights, optimizer, schedule position, RNG
states, resolved config, data and code checksums); `train()` resumes from it when all match.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
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

from .config import RecipeConfig, as_dict
from .datasets import Prepared
from .fsutil import atomic_path
from .loaders import Augment, ResidentLoader, channel_stats, make_loader
from .models import build_model, input_spec
from .parallel import AllReduceTimer, wrap
from .profiling import synchronize
from .schedules import LRSchedule, scale_lr, set_lr
from .telemetry import ResourceSampler, rss_mib

CHECKPOINT_FORMAT = 1
EVAL_BATCH = 512
# The modules whose code decides what training computes: a checkpoint made by other code is not
# resumed or reused (DVC reruns a stage when they change, and it must then really retrain).
TRAINING_CODE = ("engine.py", "loaders.py", "models.py", "parallel.py", "schedules.py")


@functools.cache  # read once per process, not at every checkpoint
def code_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in TRAINING_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class RunSpec:
    """One configuration: everything that decides its result (and its checkpoint's validity)."""

    sweep: str  # the grid it belongs to, e.g. "lenet" or "vgg"
    model: str
    width: float
    dataset: str
    mode: str  # single | dp | ddp
    world: int  # processes sharing each step (1 unless ddp)
    loader: str
    num_workers: int
    batch: int  # per process; the global batch is batch * world
    lr_rule: str
    seed: int
    recipe: RecipeConfig

    @property
    def global_batch(self) -> int:
        return self.batch * self.world

    @property
    def peak_lr(self) -> float:
        return scale_lr(self.recipe.lr, self.lr_rule, self.global_batch, self.recipe.ref_batch)

    @property
    def name(self) -> str:
        mode = f"ddp{self.world}" if self.mode == "ddp" else self.mode
        loader = self.loader + (f"{self.num_workers}w" if self.loader == "standard" else "")
        return f"{self.sweep}-{mode}-{loader}-b{self.global_batch}-{self.lr_rule}-s{self.seed}"

    def identity(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def params(self) -> dict[str, Any]:
        """What MLflow records for the configuration."""
        return {**self.identity(), "global_batch": self.global_batch, "peak_lr": self.peak_lr}


@dataclass
class Context:
    """Where and how a configuration runs."""

    device: torch.device
    group: Any = None  # DDP process group (None: the whole world, or no DDP)
    rank: int = 0  # rank within the group
    sync_timing: bool = False  # synchronize the host every step (exact host timings on CUDA)
    sample_interval_s: float = 0.5


@dataclass
class Result:
    spec: RunSpec
    outcome: str  # finished | diverged
    history: list[dict]  # one row per epoch
    step_loss: list[float]  # global mean loss per optimizer step
    devices: list[str]
    diverged_step: int | None = None
    restored_epochs: int = 0  # epochs taken from a checkpoint instead of being trained here
    samples: list = dataclasses.field(default_factory=list)  # telemetry of the epochs run here

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

    def stats(self, model: str):
        spec = input_spec(model, self.data.channels)
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


def lr_schedule(spec: RunSpec) -> LRSchedule:
    r = spec.recipe
    return LRSchedule(base_lr=r.lr, peak_lr=spec.peak_lr, epochs=r.epochs, warmup_epochs=r.warmup_epochs,
                      decay=r.decay, milestones=tuple(r.milestones), gamma=r.gamma)


def train_step(model: nn.Module, optimizer, loss_fn, x: torch.Tensor, y: torch.Tensor):
    """Forward, backward, update. Returns (loss, correct predictions) as device tensors."""
    logits = model(x)
    loss = loss_fn(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn) -> torch.Tensor:
    """[sum of losses, correct, samples] over this rank's share of ``loader``."""
    model.eval()
    totals = None
    for x, y in loader:
        logits = model(x)
        row = torch.stack([loss_fn(logits, y) * len(y), (logits.argmax(1) == y).sum().float(),
                           torch.tensor(float(len(y)), device=y.device)])
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


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, spec: RunSpec, data_sha256: str) -> dict | None:
    """The checkpoint at ``path`` if this very configuration made it, on this data, with this code."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a torn or foreign file: start over rather than fail the sweep
        return None
    if (ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("spec") != spec.identity()
            or ckpt.get("data_sha256") != data_sha256 or ckpt.get("code_sha256") != code_fingerprint()):
        return None
    return ckpt


# --------------------------------------------------------------------------------------------
# The loop


def train(spec: RunSpec, data: TrainData, ctx: Context, checkpoint: Path, on_epoch=None) -> Result:
    """Train one configuration to the end (or to divergence), resuming from ``checkpoint``.

    ``on_epoch(row)`` is called on every rank after each epoch with the all-reduced figures.
    """
    device, group = ctx.device, ctx.group
    recipe = spec.recipe
    shape, mean, std = data.stats(spec.model)
    d = data.data
    augment = Augment(recipe.augment.crop_padding, recipe.augment.hflip)
    train_loader = make_loader(spec.loader, d.train_images, d.train_labels, spec=shape, batch_size=spec.batch,
                               mean=mean, std=std, augment=augment, seed=spec.seed, rank=ctx.rank,
                               world=spec.world, num_workers=spec.num_workers, pin_memory=True, device=device)
    test_loader = ResidentLoader(d.test_images, d.test_labels, spec=shape, batch_size=EVAL_BATCH, mean=mean,
                                 std=std, shuffle=False, rank=ctx.rank, world=spec.world, device=device)

    torch.manual_seed(spec.seed)  # identical initial weights on every rank and in every mode
    net = build_model(spec.model, d.channels, d.num_classes, width=spec.width)
    model, devices = wrap(net, spec.mode, device, group)
    optimizer = make_optimizer(net, recipe, spec.peak_lr)
    schedule = lr_schedule(spec)
    loss_fn = nn.CrossEntropyLoss()
    comm = AllReduceTimer(model, group) if spec.mode == "ddp" else None

    result = Result(spec, "finished", [], [], devices)
    start_epoch = 0
    ckpt = load_checkpoint(checkpoint, spec, data.sha256)
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"][min(ctx.rank, len(ckpt["rng"]) - 1)])
        result.history, result.step_loss = ckpt["history"], ckpt["step_loss"]
        result.outcome, result.diverged_step = ckpt["outcome"], ckpt["diverged_step"]
        result.restored_epochs = start_epoch = ckpt["epoch"] + 1
        if ckpt["complete"]:
            return result

    steps = len(train_loader)
    model.train()
    for epoch in range(start_epoch, recipe.epochs):
        train_loader.set_epoch(epoch)
        _reset_peaks(devices)
        timer = step_timer(device, ctx.sync_timing)
        per_step = torch.zeros(2, steps, device=device)  # loss * n and n, per step
        correct = torch.zeros((), device=device)
        sampler = ResourceSampler(ctx.sample_interval_s) if ctx.rank == 0 else None
        if sampler:
            sampler.start()
        batches = iter(train_loader)
        t_epoch = time.perf_counter()
        for i in range(steps):
            set_lr(optimizer, schedule.lr_at(epoch + i / steps))
            timer.start()
            x, y = next(batches)
            timer.batch_ready()
            loss, hits = train_step(model, optimizer, loss_fn, x, y)
            timer.step_done()
            per_step[0, i] = loss * len(y)
            per_step[1, i] = len(y)
            correct += hits
        data_s, compute_s = timer.collect()
        epoch_s = time.perf_counter() - t_epoch
        comm_s = comm.take() if comm and comm.measurable else float("nan")
        if sampler:
            result.samples += sampler.stop()

        t_eval = time.perf_counter()
        test = evaluate(model, test_loader, loss_fn)
        totals = torch.cat([per_step.flatten(), correct.view(1), test,
                            torch.tensor([sum(data_s), sum(compute_s), comm_s], device=device)])
        totals = _all_sum(totals, group)
        eval_s = time.perf_counter() - t_eval
        step_sum, step_n = totals[:steps], totals[steps:2 * steps]
        correct_all, test_loss, test_correct, test_n = totals[2 * steps:2 * steps + 4].tolist()
        data_all, compute_all, comm_all = (totals[-3:] / spec.world).tolist()
        step_loss = (step_sum / step_n).tolist()
        images = float(step_n.sum())
        memory = _all_gather_floats(device_memory_mib(devices), device, group)

        row = {
            "epoch": epoch, "steps": steps, "global_batch": spec.global_batch,
            "lr": schedule.lr_at(epoch + (steps - 1) / steps),
            "train_loss": float(step_sum.sum() / step_n.sum()), "train_accuracy": correct_all / images,
            "test_loss": test_loss / test_n, "test_accuracy": test_correct / test_n,
            "epoch_time_s": epoch_s, "eval_time_s": eval_s, "images_per_s": images / epoch_s,
            "data_wait_s": data_all, "compute_s": compute_all,
            "data_wait_fraction": data_all / (data_all + compute_all),
            "allreduce_s": comm_all, "allreduce_fraction": comm_all / compute_all,
            "device_mem_mib": memory,
        }
        if sampler:
            row.update({k: v for k, v in sampler.summary().items() if k.endswith("_mean")})
        result.history.append(row)
        result.step_loss += step_loss
        bad = [i for i, v in enumerate(step_loss) if not math.isfinite(v)]
        if bad:
            result.outcome = "diverged"
            result.diverged_step = epoch * steps + bad[0]
        done = bad or epoch == recipe.epochs - 1
        rngs = _gather_rng(devices, group)  # a collective: every rank takes part
        if ctx.rank == 0:
            save_checkpoint(checkpoint, _payload(spec, data, net, optimizer, schedule, epoch, steps, result,
                                                 bool(done), shape, mean, std, rngs))
        if on_epoch:
            on_epoch(row)
        if done:
            break
    return result


def _gather_rng(devices: list[str], group) -> list[dict]:
    """Every rank's RNG states (rank order), for an exact restart of each."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [rng_state(devices)]
    states = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, rng_state(devices), group=group)
    return states


def _payload(spec, data, net, optimizer, schedule, epoch, steps, result, complete, shape, mean, std, rngs):
    return {
        "format": CHECKPOINT_FORMAT,
        "spec": spec.identity(),
        "config": {**spec.params(), "recipe": as_dict(spec.recipe)},
        "data_sha256": data.sha256,
        "code_sha256": code_fingerprint(),
        "model_meta": {"model": spec.model, "width": spec.width, "dataset": spec.dataset,
                       "channels": data.data.channels, "num_classes": data.data.num_classes,
                       "input_channels": shape.channels, "input_size": shape.size, "mean": mean, "std": std},
        "epoch": epoch,
        "complete": complete,
        "outcome": result.outcome,
        "diverged_step": result.diverged_step,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": {"position_epochs": epoch + 1, "global_step": (epoch + 1) * steps,
                     **dataclasses.asdict(schedule)},
        "rng": rngs,
        "history": result.history,
        "step_loss": result.step_loss,
    }
