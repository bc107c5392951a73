"""What a training checkpoint holds, and how a run is put back to exactly where it stood.

`checkpoints` owns the files (where they live, what is kept, what is set aside); this module owns
their content: unwrapped weights, optimizer, the lr and batch schedules' positions, the noise
estimator, every rank's RNG states, the resolved config, the data and code checksums and the
figures so far. Rank 0 alone reads a checkpoint and broadcasts it, so ranks on other machines
resume without seeing its files; every rank's RNG states are gathered into it, so each rank
restarts exactly.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from ..config import as_dict

if TYPE_CHECKING:
    from .epoch import Epoch, Run

CHECKPOINT_FORMAT = 2


def rng_state(devices: list[str]) -> dict:
    """This process's RNG states; CUDA only for the devices it computes on (asking for every
    GPU's state would open a CUDA context on each of them from every DDP rank)."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": {d: torch.cuda.get_rng_state(torch.device(d)) for d in devices if d.startswith("cuda")},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    for d, cuda_state in state["cuda"].items():
        if torch.cuda.is_available() and torch.device(d).index < torch.cuda.device_count():
            torch.cuda.set_rng_state(cuda_state, torch.device(d))


def gather_rng(devices: list[str], group) -> list[dict]:
    """Every rank's RNG states (rank order), for an exact restart of each. A collective: every
    rank of the group takes part."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [rng_state(devices)]
    states = [None] * dist.get_world_size(group)
    dist.all_gather_object(states, rng_state(devices), group=group)
    return states


def from_rank0(obj, world: int, group):
    """Rank 0's ``obj`` on every rank of a configuration's group of ``world`` processes."""
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)  # src: global rank 0, first of every group
    return box[0]


def restore(run: Run, ckpt: dict) -> bool:
    """Put ``run`` back to the end of the checkpoint's epoch; True when that run was complete
    (nothing left to train)."""
    run.net.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"][min(run.ctx.rank, len(ckpt["rng"]) - 1)])
    run.batches.load_state_dict(ckpt["schedule"]["batches"])
    if run.noise:
        run.noise.load_state_dict(ckpt["schedule"]["noise"])
    result = run.result
    result.history, result.step_loss = ckpt["history"], ckpt["step_loss"]
    result.step_series = ckpt["step_series"]
    result.outcome, result.diverged_step = ckpt["outcome"], ckpt["diverged_step"]
    result.restored_epochs = run.start_epoch = ckpt["epoch"] + 1
    return bool(ckpt["complete"])


def payload(run: Run, epoch: Epoch, rngs: list[dict], code_sha256: str) -> dict:
    """The checkpoint after ``epoch``: everything `restore` and evaluation read."""
    spec, data, result = run.spec, run.data, run.result
    return {
        "format": CHECKPOINT_FORMAT,
        "spec": spec.identity(),
        "config": {**spec.params(), "recipe": as_dict(spec.recipe)},
        "data_sha256": data.sha256,
        "code_sha256": code_sha256,
        "model_meta": {
            "model": spec.model,
            "task": spec.task,
            "width": spec.width,
            "size": spec.size,
            "dataset": spec.dataset,
            "channels": data.data.channels,
            "num_classes": data.data.num_classes,
            "input_channels": run.shape.channels,
            "input_size": run.shape.size,
            "mean": run.mean,
            "std": run.std,
        },
        "epoch": epoch.index,
        "complete": epoch.done,
        "outcome": result.outcome,
        "diverged_step": result.diverged_step,
        "model": run.net.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": {
            "position_epochs": epoch.index + 1,
            "global_step": len(result.step_loss),
            "lr": dataclasses.asdict(epoch.schedule),
            "batches": run.batches.state_dict(),
            "noise": run.noise.state_dict() if run.noise else None,
        },
        "rng": rngs,
        "history": result.history,
        "step_loss": result.step_loss,
        "step_series": result.step_series,
    }
