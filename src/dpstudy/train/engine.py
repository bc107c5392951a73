"""The training loop: one engine for a single device, nn.DataParallel and DDP.

`train()` runs one configuration (`RunSpec`) as setup, epochs and finish. The mode only changes how
the model is wrapped (`parallel.wrap`) and which ranks share the data (`loaders` shard by rank);
the step, the timing, the metrics and the checkpoints are the same code for all three, and for
both tasks (`tasks`: classification with accuracy, 2× restoration with PSNR). The global batch may
change between epochs (`batching`: fixed, step growth, gradient-noise-scale driven); the learning
rate follows it through the lr rule.

One epoch (`epoch.run_epoch`) trains its steps, evaluates and records its row; what is measured
around it hangs on observers (`observers`, in the shape of Lightning's callbacks): `Telemetry`,
`Timing`, `Memory`, `Checkpoints` and the caller's ``on_epoch``, plus any the caller adds. The
step is eager (`eagerstep`) or, with ``step: graph`` (CUDA, one process on one GPU:
`graphstep.refusal`), a CUDA graph captured per batch shape and replayed (`graphstep`); with the
resident loader the graph also gathers and augments the batch.

With ``noise_ema`` set, every step also measures the gradient noise scale (`batching`): under DDP
from each rank's local gradient norm (taken in the communication hook before averaging) and the
averaged one; in one process from two micro-batches of the step (whose BatchNorm statistics are
then per half, as they are per rank under DDP).

Utilization is measured inside the training window only: NVML is sampled from the epoch's first
step (`telemetry`: a window shorter than NVML's averaging period gives no number). On CUDA the
epoch's last few steps (``Context.busy_steps``) are watched by the profiler for the device's busy
share (`devicebusy`), and NVML's window ends before them. The epoch's time and images/s still cover
every step, less the profiler's own start and stop, so time-to-target and epoch-time ratios are
those of the whole epoch.

Every figure a rank holds is all-reduced before rank 0 records it. A non-finite loss ends the
configuration as ``diverged`` at the first bad step, and the caller's sweep moves on. A checkpoint
is written atomically after every epoch (`snapshot`: unwrapped weights, optimizer, schedule
position, RNG states, resolved config, data and code checksums); `train()` resumes from it when all
match. Rank 0 alone reads it and broadcasts it, so ranks on other machines resume without seeing
its files.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import codebase
from ..config import RecipeConfig, as_dict
from ..data.loaders import Augment, ResidentLoader, channel_stats, make_loader
from ..data.prepared import Prepared
from . import checkpoints
from .batching import BatchSchedule, NoiseScaleEstimator
from .eagerstep import step_function, train_step, train_step_micro_norms  # noqa: F401 (the engine's step)
from .epoch import Run, busy_steps, evaluate, run_epoch  # noqa: F401 (busy_steps, evaluate: public here)
from .graphstep import graph_optimizer, spec_refusal, stepper
from .models import build_model, input_spec, model_task
from .observers import Checkpoints, EpochCallback, Memory, Observer, Observers, Telemetry, Timing
from .parallel import GradSync, wrap
from .schedules import LRSchedule, scale_lr
from .snapshot import CHECKPOINT_FORMAT, from_rank0, restore
from .tasks import TASKS

EVAL_BATCH = 512
BUSY_STEPS = 8  # steps the profiler watches at the end of each CUDA epoch (`busy_steps`)


@functools.cache  # read once per process, not at every checkpoint
def code_fingerprint() -> str:
    """What training computes is decided by the engine's whole import closure in src/dpstudy
    (imports inside functions too, `codebase`): a checkpoint made by other code is not resumed or
    reused (DVC reruns a stage when that code changes, and it must then really retrain)."""
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
# Building blocks


def make_optimizer(model: nn.Module, recipe: RecipeConfig, lr: float) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def lr_schedule(spec: RunSpec, global_batch: int | None = None) -> LRSchedule:
    """The lr schedule while the global batch is ``global_batch`` (default: the starting one):
    the recipe's warmup and decay shape, its peak scaled to that batch by the run's lr rule."""
    r = spec.recipe
    peak = scale_lr(r.lr, spec.lr_rule, global_batch or spec.global_batch, r.ref_batch)
    return LRSchedule(
        base_lr=r.lr,
        peak_lr=peak,
        epochs=r.epochs,
        warmup_epochs=r.warmup_epochs,
        decay=r.decay,
        milestones=tuple(r.milestones),
        gamma=r.gamma,
    )


def batch_schedule(spec: RunSpec) -> BatchSchedule:
    g = spec.growth
    if g is None:
        return BatchSchedule("fixed", spec.global_batch)
    return BatchSchedule(
        g.kind, spec.global_batch, factor=g.factor, max_batch=g.max_batch, at_epochs=tuple(getattr(g, "at_epochs", ()))
    )


# --------------------------------------------------------------------------------------------
# The loop: setup, epochs, finish


def train(
    spec: RunSpec,
    data: TrainData,
    ctx: Context,
    checkpoint: Path,
    on_epoch: Callable | None = None,
    observers: Iterable[Observer] = (),
) -> Result:
    """Train one configuration to the end (or to divergence), resuming from ``checkpoint``.

    ``on_epoch(row)`` is called on every rank after each epoch with the all-reduced figures;
    ``observers`` hang on the loop's hooks after the engine's own (`observers`).
    """
    run = _setup(spec, data, ctx)
    if _resume(run, checkpoint):
        return run.result
    watching = Observers(
        [
            Telemetry(),
            Timing(ctx.sync_timing),
            Memory(),
            Checkpoints(checkpoint, code_fingerprint),
            *([EpochCallback(on_epoch)] if on_epoch else []),
            *observers,
        ]
    )
    _prepare_step(run)
    watching.notify("on_train_start", run)
    run.model.train()
    for index in range(run.start_epoch, spec.recipe.epochs):
        if run_epoch(run, index, watching).done:
            break
    watching.notify("on_train_end", run)
    return run.result


def _setup(spec: RunSpec, data: TrainData, ctx: Context) -> Run:
    """The configuration's loaders, model (initialised from its seed, wrapped for its mode),
    optimizer, batch schedule and noise estimator; refuses a step it cannot run here."""
    why = spec_refusal(spec, "recipe.step", ctx.device)
    if why:  # the stages refuse this before any work; a direct caller gets the same reason
        raise ValueError(why)
    device, group = ctx.device, ctx.group
    recipe, task = spec.recipe, TASKS[spec.task]
    shape, mean, std = data.stats(spec.model, spec.size)
    mean, std = task.normalisation(mean, std)
    d = data.data
    # both loaders: this rank's shard of its split, normalised for the model's input, on this device
    shared = dict(spec=shape, mean=mean, std=std, rank=ctx.rank, world=spec.world, device=device)
    augment = Augment(recipe.augment.crop_padding, recipe.augment.hflip)
    batches = dict(
        batch_size=spec.batch, augment=augment, seed=spec.seed, num_workers=spec.num_workers, pin_memory=True
    )
    train_loader = make_loader(spec.loader, d.train_images, d.train_labels, **batches, **shared)
    test_loader = ResidentLoader(d.test_images, d.test_labels, batch_size=EVAL_BATCH, shuffle=False, **shared)
    torch.manual_seed(spec.seed)  # identical initial weights on every rank and in every mode
    net = build_model(spec.model, d.channels, d.num_classes, width=spec.width, size=spec.size)
    # A captured step runs on the module itself: one process on one GPU (`refusal`), where DDP's
    # all-reduce over a group of one and DataParallel over one device change nothing.
    graph = recipe.step == "graph"
    model, devices = wrap(net, "single" if graph else spec.mode, device, group)
    optimizer = make_optimizer(net, recipe, spec.peak_lr)
    loss_fn = task.loss_fn()
    measure = spec.noise_ema is not None
    sync = (
        GradSync(model, group, local_norms=measure and not _micro(spec)) if spec.mode == "ddp" and not graph else None
    )
    noise = NoiseScaleEstimator(spec.noise_ema) if measure else None
    return Run(
        spec,
        data,
        ctx,
        task,
        shape,
        mean,
        std,
        train_loader,
        test_loader,
        net,
        model,
        devices,
        optimizer,
        loss_fn,
        sync,
        batch_schedule(spec),
        noise,
        Result(spec, "finished", [], [], devices),
        functools.partial(lr_schedule, spec),
    )


def _micro(spec: RunSpec) -> bool:
    """Whether the noise scale comes from two micro-batches of each step: one process (or a DDP
    group of one) has no second batch size."""
    return spec.noise_ema is not None and (spec.mode != "ddp" or spec.world == 1)


def _resume(run: Run, checkpoint: Path) -> bool:
    """Put ``run`` where its checkpoint left off when settings, data and code all match; True when
    that training was complete. Rank 0 decides and shares: ranks on other machines may not see
    its files (no shared disk)."""
    spec = run.spec
    mine = (
        checkpoints.open_for(checkpoint, spec.identity(), run.data.sha256, code_fingerprint(), CHECKPOINT_FORMAT)
        if run.ctx.rank == 0
        else None
    )
    ckpt = from_rank0(mine, spec.world, run.ctx.group)
    return ckpt is not None and restore(run, ckpt)


def _prepare_step(run: Run) -> None:
    """The step to train with (eager, or captured as a CUDA graph) and the epoch's inputs for it."""
    graph = run.spec.recipe.step == "graph"
    if graph:
        graph_optimizer(run.optimizer, run.ctx.device)
    step = step_function(
        run.model, run.optimizer, run.loss_fn, run.task, _micro(run.spec), run.sync, run.noise is not None
    )
    run.inputs, run.step = stepper(step, run.train_loader, run.task.pair, run.ctx.device, graph)


# --------------------------------------------------------------------------------------------
# Checkpoints of configurations that train the same


def continue_from_first_epoch(source: Path, target: Path, spec: RunSpec) -> bool:
    """Write ``spec``'s checkpoint after its first epoch from ``source``, the checkpoint another
    configuration wrote after its own first epoch, which trained exactly what ``spec``'s does
    (`twins.shared_first_epochs`): weights, optimizer, RNG states, noise estimate and the epoch's
    figures (its measured time included) carry over; the identity and the batch schedule's
    decision for the next epoch are ``spec``'s. False (nothing written) unless ``source`` is a
    finished first epoch of a longer run."""
    ckpt = checkpoints.read(source)
    if (
        ckpt is None
        or ckpt["epoch"] != 0
        or ckpt["complete"]
        or ckpt["outcome"] != "finished"
        or spec.recipe.epochs < 2
    ):
        return False
    batches = batch_schedule(spec)
    batches.end_epoch(0, ckpt["history"][0].get("noise_scale", float("nan")))
    ckpt["spec"] = spec.identity()
    ckpt["config"] = {**spec.params(), "recipe": as_dict(spec.recipe)}
    ckpt["schedule"]["batches"] = batches.state_dict()
    checkpoints.save(target, ckpt)
    return True


def copy_checkpoint(source: Path, target: Path, spec: RunSpec) -> None:
    """``source``'s checkpoint as ``spec``'s, whose training is the same (`twins.split_twins`)."""
    ckpt = checkpoints.read(source)
    if ckpt is None:
        raise RuntimeError(f"checkpoint {source} vanished before it could be copied to {target.name}")
    ckpt["spec"] = spec.identity()
    ckpt["config"] = {**spec.params(), "recipe": as_dict(spec.recipe)}
    checkpoints.save(target, ckpt)
