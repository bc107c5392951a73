"""Configurations whose training is, step for step, another's: trained once, recorded under each name.

Two kinds, both decided from the `RunSpec`s alone before any training:

- twins (`split_twins`): the whole training is an earlier configuration's; its checkpoint is
  copied and its result recorded under the twin's name (`twin_checkpoint`);
- shared first epochs (`shared_first_epochs`): only the first epoch is an earlier one's; the
  later configuration continues from a copy of that epoch's checkpoint (`start_from_first_epoch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..console import say
from ..train import checkpoints
from ..train.engine import (
    CHECKPOINT_FORMAT,
    RunSpec,
    TrainData,
    code_fingerprint,
    continue_from_first_epoch,
    copy_checkpoint,
)

FIRST_EPOCHS = "first_epoch"  # checkpoints/<this>/<configuration>.pt: a checkpoint after epoch 1


def _at_ref_lr(spec: RunSpec) -> RunSpec:
    """``spec`` with lr rule none where its starting global batch is the recipe's ref_batch, at
    which every lr rule gives the recipe's lr."""
    return dataclasses.replace(spec, lr_rule="none") if spec.global_batch == spec.recipe.ref_batch else spec


def _first_alike(specs: list[RunSpec], key: Callable[[RunSpec], RunSpec]) -> list[tuple[RunSpec, RunSpec]]:
    """(spec, the first spec with the same key) for each spec, in order (a spec may be its own)."""
    first: dict[str, RunSpec] = {}
    return [(spec, first.setdefault(repr(key(spec)), spec)) for spec in specs]


def split_twins(specs: list[RunSpec], device=None) -> tuple[list[RunSpec], list[tuple[RunSpec, RunSpec]]]:
    """The configurations to train, and (twin, original) for each one whose training is exactly
    an earlier one's:
    - a fixed batch equal to the recipe's ref_batch scales the lr by 1 under every lr rule, so e.g.
      A4's smallest batch trains once, not once per rule (DDP's world 1 likewise);
    - on the CPU (``device``), mode dp calls the module itself (`parallel.wrap`), and a CUDA-graph
      step (one GPU: `graphstep.refusal`) captures the module itself, so dp trains what mode single
      trains, step for step."""

    def key(spec: RunSpec) -> RunSpec:
        if spec.growth is None:
            spec = _at_ref_lr(spec)
        if spec.mode == "dp" and ((device is not None and device.type == "cpu") or spec.recipe.step == "graph"):
            spec = dataclasses.replace(spec, mode="single")
        return spec

    pairs = _first_alike(specs, key)
    return [s for s, o in pairs if o is s], [(s, o) for s, o in pairs if o is not s]


def twin_reason(twin: RunSpec, original: RunSpec) -> str:
    """Why ``twin`` trains exactly what ``original`` does (`split_twins`), in words."""
    reasons = []
    if twin.mode != original.mode:
        reasons.append(
            "a CUDA-graph step captures the module itself on its one GPU"
            if twin.recipe.step == "graph"
            else "on the CPU nn.DataParallel calls the module itself"
        )
    if twin.lr_rule != original.lr_rule:
        reasons.append(f"global batch {twin.global_batch} = ref_batch: lr {twin.peak_lr:g} under every rule")
    return "; ".join(reasons)


def twin_checkpoint(twin: RunSpec, original: RunSpec, data: TrainData, folder: Path) -> None:
    """``original``'s checkpoint under ``twin``'s name (evaluate scores each), unless the twin
    already has a matching one."""
    path = folder / f"{twin.name}.pt"
    if checkpoints.open_for(path, twin.identity(), data.sha256, code_fingerprint(), CHECKPOINT_FORMAT) is None:
        copy_checkpoint(folder / f"{original.name}.pt", path, twin)


def shared_first_epochs(specs: list[RunSpec]) -> dict[str, RunSpec]:
    """configuration name -> the earlier configuration whose first epoch trains exactly what its
    own does: the same network, data, seed and starting batch, and the same lr (the same rule, or
    a starting batch of ref_batch, where every rule gives the recipe's lr); only the batch
    schedule differs, and it changes nothing before the first epoch ends (step growth grows at
    epoch 2 at the earliest; the noise-scale rule decides after each epoch). Study C's
    step_growth and noise_scale runs thus continue from fixed_small's first epoch."""

    def key(spec: RunSpec) -> RunSpec:
        return dataclasses.replace(_at_ref_lr(spec), schedule="", growth=None)

    return {
        spec.name: donor for spec, donor in _first_alike(specs, key) if donor is not spec and spec.recipe.epochs > 1
    }


def start_from_first_epoch(spec: RunSpec, donor: RunSpec, data: TrainData, folder: Path) -> bool:
    """Start ``spec`` from ``donor``'s first epoch when it has no checkpoint of its own and the
    donor's is at hand (rank 0, before training). Whether it did."""
    ours = (spec.identity(), data.sha256, code_fingerprint(), CHECKPOINT_FORMAT)
    if checkpoints.open_for(folder / f"{spec.name}.pt", *ours) is not None:
        return False  # its own checkpoint: it resumes or is reused as usual
    source = folder / FIRST_EPOCHS / f"{donor.name}.pt"
    if checkpoints.open_for(source, donor.identity(), *ours[1:]) is None:
        return False
    if not continue_from_first_epoch(source, folder / f"{spec.name}.pt", spec):
        return False
    say(
        f"[{spec.sweep}] {spec.name}: epoch 1 is {donor.name}'s (same network, data, seed, batch and lr); "
        "continuing from it"
    )
    return True
