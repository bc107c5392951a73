"""A stage's grid of configurations built from its params, and the refusals before any work.

Each grid is a list of `RunSpec`, one per configuration; a stage builds all of its grids, loads
their data and runs every check here before it trains anything, so bad params stop it in one line
(`UserError`, exit 2) instead of partway through.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import torch

from ..config import DDPSweepConfig, DPSweepConfig, GridConfig
from ..data.prepared import file_sha256, load_prepared
from ..errors import UserError
from ..train import checkpoints
from ..train.engine import CHECKPOINT_FORMAT, RunSpec, TrainData, code_fingerprint
from ..train.graphstep import spec_refusal
from ..train.models import MODELS, build_model


def load_data(folder: Path, names: Iterable[str]) -> dict[str, TrainData]:
    """Each prepared dataset the grids use, with the checksum their checkpoints record."""
    return {
        name: TrainData(load_prepared(folder / f"{name}.pt"), file_sha256(folder / f"{name}.pt"))
        for name in dict.fromkeys(names)
    }


def check_model(where: str, cfg: GridConfig, size: int | None = None) -> None:
    """Refuse a model the grid cannot build (e.g. a width LeNet-5 does not have) before any work."""
    try:
        build_model(cfg.model, channels=3, num_classes=10, width=cfg.width, size=size)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


def dp_grid(name: str, cfg: DPSweepConfig, seeds: Iterable[int]) -> list[RunSpec]:
    """mode × loader × batch × lr rule × seed, one process each."""
    check_model(f"train_dp.{name}", cfg)
    return [
        RunSpec(
            name,
            cfg.model,
            cfg.width,
            MODELS[cfg.model].input_size,
            cfg.dataset,
            mode,
            1,
            loader,
            cfg.num_workers,
            batch,
            rule,
            seed,
            cfg.recipe,
        )
        for mode, loader, batch, rule, seed in itertools.product(
            cfg.modes, cfg.loaders, cfg.batch_sizes, cfg.lr_rules, seeds
        )
    ]


def ddp_grid(name: str, cfg: DDPSweepConfig, seeds: Iterable[int], launched: int) -> tuple[list[RunSpec], list[int]]:
    """world size × loader × per-rank batch × lr rule × seed, for world sizes up to ``launched``.

    Returns the grid and the world sizes left out because fewer processes were launched.
    """
    worlds = [w for w in cfg.world_sizes if w <= launched]
    skipped = [w for w in cfg.world_sizes if w > launched]
    grid = [
        RunSpec(
            name,
            cfg.model,
            cfg.width,
            MODELS[cfg.model].input_size,
            cfg.dataset,
            "ddp",
            world,
            loader,
            cfg.num_workers,
            batch,
            rule,
            seed,
            cfg.recipe,
        )
        for world, loader, batch, rule, seed in itertools.product(
            worlds, cfg.loaders, cfg.batch_sizes, cfg.lr_rules, seeds
        )
    ]
    return grid, skipped


def check_steps(stage: str, specs: Iterable[RunSpec], device: torch.device) -> None:
    """Refuse, before any work, a step kind that cannot run here (`graphstep.refusal`): a CUDA
    graph on the CPU, or shared by several processes or GPUs."""
    for spec in specs:
        why = spec_refusal(spec, f"{stage}.{spec.sweep}.recipe.step", device)
        if why:
            raise UserError(why)


def check_batches(stage: str, specs: Iterable[RunSpec], data: dict[str, TrainData]) -> None:
    """Refuse, before any work, a batch the training split cannot fill: every global batch (and
    the largest a schedule grows to) must fit in one epoch, with at least 2 samples per process."""
    for spec in specs:
        n = len(data[spec.dataset].data.train_labels)
        growth_cap = getattr(spec.growth, "max_batch", None)
        for name, batch in (("batch", spec.global_batch), ("max_batch", growth_cap)):
            if batch is None:
                continue
            key = (
                f"{stage}.{spec.sweep}.batch_sizes"
                if spec.schedule == "fixed"
                else f"{stage}.{spec.sweep}.schedules.{spec.schedule}.{name}"
            )
            per = " global" if spec.world > 1 else ""
            if batch > n:
                raise UserError(
                    f"{key}: a{per} batch of {batch:,} is larger than the training split of "
                    f"{spec.dataset} ({n:,} images); use at most {n}"
                )
            if batch // spec.world < 2:
                raise UserError(
                    f"{key}: a{per} batch of {batch} leaves fewer than 2 samples for each of "
                    f"{spec.world} processes; use at least {2 * spec.world}"
                )


def set_aside_checkpoints(out: Path, specs: Iterable[RunSpec]) -> None:
    """Move checkpoints of configurations no longer in the grid to ``checkpoints/kept/`` (never
    deleted: they come back if their settings do), so ``checkpoints/*.pt`` is the grid."""
    checkpoints.set_aside(out / "checkpoints", [spec.name for spec in specs], code_fingerprint(), CHECKPOINT_FORMAT)
