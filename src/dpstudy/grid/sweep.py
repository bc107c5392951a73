"""Run a training stage's grid: every configuration once, in order, on the processes it needs.

Shared by train_dp, train_ddp and train_adaptive: each configuration is one `RunSpec` (`build`)
trained by `engine.train` inside a nested MLflow run (`configuration`), with its checkpoint at
``<out>/checkpoints/<name>.pt``. A rerun of the stage resumes an interrupted configuration and
reuses a finished one when its checkpoint matches (same settings, same data), so only what a
change touches is trained again. A configuration whose training is an earlier one's is not
trained again (`twins`). On the CPU, several configurations train at once (`cpupool`); under
DDP, ranks a configuration does not use wait for it, and one-process configurations are dealt
out over the ranks. The stage writes the result files (`tables`) once the whole grid has run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from ..console import progress, say
from ..track.tracking import Tracker
from ..train.engine import Context, Result, RunSpec, TrainData
from ..train.parallel import Dist
from .configuration import log_finished, run_names, run_one
from .headline import log_headline
from .printout import one_line
from .twins import FIRST_EPOCHS, shared_first_epochs, split_twins, start_from_first_epoch, twin_checkpoint, twin_reason


@dataclasses.dataclass(frozen=True)
class _Grid:
    """Where and how the configurations of one grid train: data, MLflow, checkpoints, processes."""

    data: dict[str, TrainData]
    tracker: Tracker
    checkpoints: Path
    dist: Dist | None
    device: torch.device
    sync_timing: bool
    sample_interval_s: float

    @property
    def rank(self) -> int:
        return self.dist.rank if self.dist else 0

    def context(self, group=None, rank: int | None = None) -> Context:
        """How one configuration trains: ``group``, this process's ``rank`` in it (default: its rank)."""
        return Context(
            self.device, group, self.rank if rank is None else rank, self.sync_timing, self.sample_interval_s
        )


def run_grid(
    specs: list[RunSpec],
    data: dict[str, TrainData],
    tracker: Tracker,
    out: Path,
    *,
    dist: Dist | None = None,
    device=None,
    sync_timing: bool = False,
    sample_interval_s: float = 0.5,
    cpu_processes: int = 1,
    pool=None,
) -> list[Result]:
    """Train every configuration (rank 0 logs and reports); ranks a configuration does not use
    wait for it at a barrier. Returns the results rank 0 holds (empty on other ranks), in the
    order of ``specs``.

    Without DDP on the CPU, ``cpu_processes`` > 1 trains that many configurations at once, one
    single-thread process each (`cpupool`), on ``pool`` if given (a `cpupool.Pool`)."""
    grid = _Grid(
        data, tracker, out / "checkpoints", dist, dist.device if dist else device, sync_timing, sample_interval_s
    )
    tracker.run_names.update(run_names(specs))
    trained, copies = split_twins(specs, grid.device)
    by_name: dict[str, Result] = {}

    def record_twins(original: Result) -> None:  # rank 0, once the original's training is done
        by_name[original.spec.name] = original
        for twin, source in copies:
            if source.name == original.spec.name:
                by_name[twin.name] = _record_twin(twin, original, grid)

    if dist is None and grid.device.type == "cpu" and cpu_processes > 1 and len(trained) > 1:
        results = _train_on_pool(trained, grid, cpu_processes, record_twins, pool)
    else:
        results = _train_in_turn(trained, grid)
    if grid.rank != 0:
        return results
    for result in results:
        if result.spec.name not in by_name:
            record_twins(result)
    results = [by_name[spec.name] for spec in specs]
    log_headline(tracker, results)
    return results


def _record_twin(twin: RunSpec, original: Result, grid: _Grid) -> Result:
    """``original``'s result and checkpoint under ``twin``'s name, and its MLflow run, tagged
    with the run it was trained as."""
    twin_checkpoint(twin, original.spec, grid.data[twin.dataset], grid.checkpoints)
    result = dataclasses.replace(original, spec=twin, run_id=None)
    log_finished(result, grid.tracker, {"trained_as": original.spec.name})
    say(
        f"[{twin.sweep}] {twin.name}: the same training as {original.spec.name} "
        f"({twin_reason(twin, original.spec)}); recorded under both names"
    )
    return result


def _train_on_pool(
    specs: list[RunSpec], grid: _Grid, processes: int, record_twins: Callable[[Result], None], pool=None
) -> list[Result]:
    """Train ``specs`` on CPU workers (`cpupool`); as each result arrives its run is logged and
    ``record_twins(result)`` runs, so the twins' MLflow runs are written while the workers train
    the rest, not after them."""
    from .cpupool import train_all

    bar = progress(specs, desc=grid.tracker.stage)

    def done(result: Result) -> None:
        log_finished(result, grid.tracker)
        say(one_line(result))
        record_twins(result)
        bar.update()

    ctx = grid.context(rank=0)
    try:
        if pool is not None:
            return pool.train_all(specs, grid.checkpoints, ctx, done)
        return train_all(specs, grid.data, grid.checkpoints, processes, ctx, done)
    finally:
        bar.close()


def _train_in_turn(specs: list[RunSpec], grid: _Grid) -> list[Result]:
    """Train ``specs`` one after another in this process (each on the first ``world`` ranks under
    DDP, the others waiting at a barrier), a configuration that shares another's first epoch
    continuing from it (`twins.shared_first_epochs`). Returns rank 0's results."""
    dist, rank = grid.dist, grid.rank
    results = []
    if dist and dist.solo_ranks:
        results += _train_side_by_side([s for s in specs if s.world == 1], grid)
        specs = [s for s in specs if s.world != 1]
    shared = shared_first_epochs(specs)
    donors = {donor.name for donor in shared.values()}
    for spec in progress(specs, desc=grid.tracker.stage) if rank == 0 else specs:
        if rank < spec.world:
            group = dist.group(spec.world) if dist and spec.mode == "ddp" else None
            tags, keep = {}, None
            if (
                rank == 0
                and spec.name in shared
                and start_from_first_epoch(spec, shared[spec.name], grid.data[spec.dataset], grid.checkpoints)
            ):
                tags["first_epoch_from"] = shared[spec.name].name
            if rank == 0 and spec.name in donors:
                keep = grid.checkpoints / FIRST_EPOCHS / f"{spec.name}.pt"
            result = run_one(
                spec,
                grid.data[spec.dataset],
                grid.context(group),
                grid.tracker,
                grid.checkpoints / f"{spec.name}.pt",
                tags=tags,
                first_epoch_copy=keep,
            )
            if rank == 0:
                results.append(result)
                say(one_line(result))
        if dist and dist.world > 1:
            dist.barrier()
    return results


def _train_side_by_side(specs: list[RunSpec], grid: _Grid) -> list[Result]:
    """One-process configurations dealt out over `Dist.solo_ranks` in turn, each rank training its
    own alone at the same time as the others; rank 0 logs the others' runs once all are done
    (tag ``trained_by_rank``). Returns every result on rank 0."""
    dist = grid.dist
    ranks = dist.solo_ranks
    mine = [spec for i, spec in enumerate(specs) if ranks[i % len(ranks)] == dist.rank]
    own = []
    for spec in mine:
        own.append(
            run_one(
                spec,
                grid.data[spec.dataset],
                grid.context(dist.solo_group(), rank=0),
                grid.tracker,
                grid.checkpoints / f"{spec.name}.pt",
                tags={"trained_by_rank": dist.rank},
            )
        )
        if dist.rank == 0:
            say(one_line(own[-1]))
    gathered = dist.all_gather_object([] if dist.rank == 0 else own)
    if dist.rank != 0:
        return []
    for other, results in enumerate(gathered):
        for result in results:
            log_finished(result, grid.tracker, {"trained_by_rank": other})
            say(one_line(result))
            own.append(result)
    return own
