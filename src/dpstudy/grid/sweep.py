"""A training stage's grid of configurations: build it from params, run it, write its results.

Shared by train_dp and train_ddp (and the adaptive stage): every configuration is one `RunSpec`
trained by `engine.train` inside a nested MLflow run, with its checkpoint at
``<out>/checkpoints/<name>.pt``. A rerun of the stage resumes an interrupted configuration and
reuses a finished one when its checkpoint matches (same settings, same data), so only what a
change touches is trained again. Rank 0 writes the result files:

- ``runs.csv``: one row per configuration (final figures, outcome, per-device memory);
- ``epochs.csv``: one row per configuration and epoch (the curves `dvc plots` draws);
- ``metrics.json``: the stage's few headline figures (`dvc metrics show`; the stage's ``headline``).

The tables are written together once the whole stage has run (`fsutil.write_files_atomic`): an
interrupted stage leaves its previous complete tables, and its rerun reuses every finished
configuration from its checkpoint to write complete new ones.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..config import DDPSweepConfig, DPSweepConfig, GridConfig
from ..console import format_table, progress, say
from ..data.datasets import file_sha256, load_prepared
from ..train.engine import (CHECKPOINT_FORMAT, Context, Result, RunSpec, TrainData, code_fingerprint,
                     continue_from_first_epoch, copy_checkpoint, train)
from ..errors import UserError
from ..train import checkpoints
from ..fsutil import csv_text, json_text
from ..train.graphstep import spec_refusal
from ..train.models import MODELS, build_model
from ..train.parallel import Dist
from ..train.tasks import TASKS
from ..measure.telemetry import utilization_keys
from ..track.tracking import Run, Tracker


def load_data(folder: Path, names: Iterable[str]) -> dict[str, TrainData]:
    """Each prepared dataset the grids use, with the checksum their checkpoints record."""
    return {name: TrainData(load_prepared(folder / f"{name}.pt"), file_sha256(folder / f"{name}.pt"))
            for name in dict.fromkeys(names)}


def check_model(where: str, cfg: GridConfig, size: int | None = None) -> None:
    """Refuse a model the grid cannot build (e.g. a width LeNet-5 does not have) before any work."""
    try:
        build_model(cfg.model, channels=3, num_classes=10, width=cfg.width, size=size)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


def dp_grid(name: str, cfg: DPSweepConfig, seeds: Iterable[int]) -> list[RunSpec]:
    """mode × loader × batch × lr rule × seed, one process each."""
    check_model(f"train_dp.{name}", cfg)
    return [RunSpec(name, cfg.model, cfg.width, MODELS[cfg.model].input_size, cfg.dataset, mode, 1, loader,
                    cfg.num_workers, batch, rule, seed, cfg.recipe)
            for mode, loader, batch, rule, seed in itertools.product(cfg.modes, cfg.loaders, cfg.batch_sizes,
                                                                     cfg.lr_rules, seeds)]


def ddp_grid(name: str, cfg: DDPSweepConfig, seeds: Iterable[int], launched: int) -> tuple[list[RunSpec], list[int]]:
    """world size × loader × per-rank batch × lr rule × seed, for world sizes up to ``launched``.

    Returns the grid and the world sizes left out because fewer processes were launched.
    """
    worlds = [w for w in cfg.world_sizes if w <= launched]
    skipped = [w for w in cfg.world_sizes if w > launched]
    grid = [RunSpec(name, cfg.model, cfg.width, MODELS[cfg.model].input_size, cfg.dataset, "ddp", world, loader,
                    cfg.num_workers, batch, rule, seed, cfg.recipe)
            for world, loader, batch, rule, seed in itertools.product(worlds, cfg.loaders, cfg.batch_sizes,
                                                                      cfg.lr_rules, seeds)]
    return grid, skipped


def run_grid(specs: list[RunSpec], data: dict[str, TrainData], tracker: Tracker, out: Path, *,
             dist: Dist | None = None, device=None, sync_timing: bool = False,
             sample_interval_s: float = 0.5, cpu_processes: int = 1, pool=None) -> list[Result]:
    """Train every configuration (rank 0 logs and reports); ranks a configuration does not use
    wait for it at a barrier. Returns the results rank 0 holds (empty on other ranks).

    Without DDP on the CPU, ``cpu_processes`` > 1 trains that many configurations at once, one
    single-thread process each (`cpupool`), on ``pool`` if given (a `cpupool.Pool`)."""
    rank = dist.rank if dist else 0
    device = dist.device if dist else device
    tracker.run_names.update(run_names(specs))
    trained, copies = split_twins(specs, device)
    by_name: dict[str, Result] = {}

    def record_twins(original: Result) -> None:  # rank 0, once the original's training is done
        by_name[original.spec.name] = original
        for twin, source in copies:
            if source.name == original.spec.name:
                by_name[twin.name] = _record_twin(twin, original, data[twin.dataset], tracker, out / "checkpoints")

    results = _train_grid(trained, data, tracker, out / "checkpoints", dist, device, sync_timing,
                          sample_interval_s, cpu_processes, record_twins, pool)
    if rank != 0:
        return results
    for result in results:
        if result.spec.name not in by_name:
            record_twins(result)
    results = [by_name[spec.name] for spec in specs]
    _log_headline(tracker, results)
    return results


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


FIRST_EPOCHS = "first_epoch"  # checkpoints/<this>/<configuration>.pt: a checkpoint after epoch 1


def shared_first_epochs(specs: list[RunSpec]) -> dict[str, RunSpec]:
    """configuration name -> the earlier configuration whose first epoch trains exactly what its
    own does: the same network, data, seed and starting batch, and the same lr (the same rule, or
    a starting batch of ref_batch, where every rule gives the recipe's lr); only the batch
    schedule differs, and it changes nothing before the first epoch ends (step growth grows at
    epoch 2 at the earliest; the noise-scale rule decides after each epoch). Study C's
    step_growth and noise_scale runs thus continue from fixed_small's first epoch."""
    def key(spec: RunSpec) -> RunSpec:
        return dataclasses.replace(_at_ref_lr(spec), schedule="", growth=None)

    return {spec.name: donor for spec, donor in _first_alike(specs, key)
            if donor is not spec and spec.recipe.epochs > 1}


def _first_epoch_from(spec: RunSpec, donor: RunSpec, data: TrainData, folder: Path) -> bool:
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
    say(f"[{spec.sweep}] {spec.name}: epoch 1 is {donor.name}'s (same network, data, seed, batch and lr); "
        "continuing from it")
    return True


def twin_reason(twin: RunSpec, original: RunSpec) -> str:
    """Why ``twin`` trains exactly what ``original`` does (`split_twins`), in words."""
    reasons = []
    if twin.mode != original.mode:
        reasons.append("a CUDA-graph step captures the module itself on its one GPU" if twin.recipe.step == "graph"
                       else "on the CPU nn.DataParallel calls the module itself")
    if twin.lr_rule != original.lr_rule:
        reasons.append(f"global batch {twin.global_batch} = ref_batch: lr {twin.peak_lr:g} under every rule")
    return "; ".join(reasons)


def _record_twin(twin: RunSpec, original: Result, data: TrainData, tracker: Tracker, folder: Path) -> Result:
    """``original``'s result and checkpoint under ``twin``'s name (evaluate scores each), and its
    MLflow run, tagged with the run it was trained as."""
    path = folder / f"{twin.name}.pt"
    if checkpoints.open_for(path, twin.identity(), data.sha256, code_fingerprint(), CHECKPOINT_FORMAT) is None:
        copy_checkpoint(folder / f"{original.spec.name}.pt", path, twin)
    result = dataclasses.replace(original, spec=twin, run_id=None)
    _log_finished(result, tracker, {"trained_as": original.spec.name})
    say(f"[{twin.sweep}] {twin.name}: the same training as {original.spec.name} "
        f"({twin_reason(twin, original.spec)}); recorded under both names")
    return result


def _train_grid(specs: list[RunSpec], data: dict[str, TrainData], tracker: Tracker, checkpoints: Path,
                dist: Dist | None, device, sync_timing: bool, sample_interval_s: float,
                cpu_processes: int, record_twins=None, pool=None) -> list[Result]:
    """Train ``specs``; with `cpupool`, ``record_twins(result)`` runs as each result arrives, so
    the twins' MLflow runs are written while the workers train the rest, not after them."""
    rank = dist.rank if dist else 0
    if dist is None and device.type == "cpu" and cpu_processes > 1 and len(specs) > 1:
        from .cpupool import train_all

        bar = progress(specs, desc=tracker.stage)

        def done(result: Result) -> None:
            _log_finished(result, tracker)
            say(_one_line(result))
            if record_twins:
                record_twins(result)
            bar.update()

        ctx = Context(device, None, 0, sync_timing, sample_interval_s)
        try:
            if pool is not None:
                return pool.train_all(specs, checkpoints, ctx, done)
            return train_all(specs, data, checkpoints, cpu_processes, ctx, done)
        finally:
            bar.close()
    results = []
    if dist and dist.solo_ranks:
        results += _train_side_by_side([s for s in specs if s.world == 1], data, tracker, checkpoints, dist,
                                       sync_timing, sample_interval_s)
        specs = [s for s in specs if s.world != 1]
    shared = shared_first_epochs(specs)
    donors = {donor.name for donor in shared.values()}
    for spec in progress(specs, desc=tracker.stage) if rank == 0 else specs:
        if rank < spec.world:
            group = dist.group(spec.world) if dist and spec.mode == "ddp" else None
            ctx = Context(device, group, rank, sync_timing, sample_interval_s)
            tags, keep = {}, None
            if rank == 0 and spec.name in shared and _first_epoch_from(spec, shared[spec.name],
                                                                       data[spec.dataset], checkpoints):
                tags["first_epoch_from"] = shared[spec.name].name
            if rank == 0 and spec.name in donors:
                keep = checkpoints / FIRST_EPOCHS / f"{spec.name}.pt"
            result = _run_one(spec, data[spec.dataset], ctx, tracker, checkpoints / f"{spec.name}.pt",
                              tags=tags, first_epoch_copy=keep)
            if rank == 0:
                results.append(result)
                say(_one_line(result))
        if dist and dist.world > 1:
            dist.barrier()
    return results


def _train_side_by_side(specs: list[RunSpec], data: dict[str, TrainData], tracker: Tracker, checkpoints: Path,
                        dist: Dist, sync_timing: bool, sample_interval_s: float) -> list[Result]:
    """One-process configurations dealt out over `Dist.solo_ranks` in turn, each rank training its
    own alone at the same time as the others; rank 0 logs the others' runs once all are done
    (tag ``trained_by_rank``). Returns every result on rank 0."""
    ranks = dist.solo_ranks
    mine = [spec for i, spec in enumerate(specs) if ranks[i % len(ranks)] == dist.rank]
    own = []
    for spec in mine:
        ctx = Context(dist.device, dist.solo_group(), 0, sync_timing, sample_interval_s)
        own.append(_run_one(spec, data[spec.dataset], ctx, tracker, checkpoints / f"{spec.name}.pt",
                            tags={"trained_by_rank": dist.rank}))
        if dist.rank == 0:
            say(_one_line(own[-1]))
    gathered = dist.all_gather_object([] if dist.rank == 0 else own)
    if dist.rank != 0:
        return []
    for other, results in enumerate(gathered):
        for result in results:
            _log_finished(result, tracker, {"trained_by_rank": other})
            say(_one_line(result))
            own.append(result)
    return own


def run_names(specs: Iterable[RunSpec]) -> dict[str, str]:
    """configuration name -> its MLflow run name: the parts of the name that differ between the
    configurations of its grid (its sweep), then the grid, e.g. ``b256 sqrt s0 · lenet_lr_scaling``
    for ``lenet_lr_scaling-single-resident-b256-sqrt-s0``, so runs tables and chart legends show
    what sets runs apart before they are cut. Distinct within a grid, as the names are."""
    grids: dict[str, dict[str, list[str]]] = {}
    for spec in specs:
        grids.setdefault(spec.sweep, {})[spec.name] = spec.name_parts()
    names = {}
    for sweep, grid in grids.items():
        columns = list(zip(*grid.values()))
        varying = [i for i, column in enumerate(columns) if len(set(column)) > 1]
        for name, values in grid.items():
            shown = [values[i] for i in varying] or [v for v in values if v != "fixed"]
            names[name] = f"{' '.join(shown)} · {sweep}"
    return names


def _run_one(spec: RunSpec, data: TrainData, ctx: Context, tracker: Tracker, checkpoint: Path,
             tags: dict | None = None, first_epoch_copy: Path | None = None) -> Result:
    """Train ``spec`` in its MLflow run; ``first_epoch_copy``: where to keep its checkpoint after
    epoch 1 for configurations that share that epoch (`shared_first_epochs`)."""
    ended: dict[int, float] = {}  # epoch -> when it was reported (its step metrics' timestamp)

    def on_epoch(row: dict) -> None:
        ended[row["epoch"]] = time.time()
        run.log_metrics(numeric(row), step=row["epoch"], timestamp=ended[row["epoch"]])
        if first_epoch_copy is not None and row["epoch"] == 0:
            first_epoch_copy.parent.mkdir(parents=True, exist_ok=True)
            checkpoints.save(first_epoch_copy, checkpoints.read(checkpoint))

    with tracker.child(spec.name, spec.params(), tags={**_tags(spec), **(tags or {})}) as run:
        resumed = time.time()
        result = train(spec, data, ctx, checkpoint, on_epoch=on_epoch)
        result.run_id = run.run_id
        _log_result(run, result, logged=len(result.history) - result.restored_epochs, ended=ended,
                    restored_at=resumed)
    return result


def _log_finished(result: Result, tracker: Tracker, tags: dict | None = None) -> None:
    """The MLflow run of a configuration trained elsewhere (a `cpupool` worker, or its twin): all
    at once."""
    with tracker.child(result.spec.name, result.spec.params(), tags={**_tags(result.spec), **(tags or {})}) as run:
        result.run_id = run.run_id
        _log_result(run, result, logged=0)


def _log_headline(tracker: Tracker, results: list[Result]) -> None:
    """The stage's headline figures on its parent run, per grid (``<sweep>/<figure>``), so the
    experiment's chart view has something to compare stage executions by: configurations, how many
    diverged, the best and mean final test figure, mean throughput and total training time."""
    grids: dict[str, list[dict]] = {}
    for result in results:
        grids.setdefault(result.spec.sweep, []).append(summary_row(result))
    figures = {}
    for sweep, rows in grids.items():
        metric = f"test_{TASKS[rows[0]['task']].metric}"
        tested = [r[metric] for r in rows if r[metric] == r[metric]]  # NaN: diverged, never tested
        speeds = [r["images_per_s"] for r in rows if r["images_per_s"] == r["images_per_s"]]
        figures.update({
            f"{sweep}/configurations": len(rows),
            f"{sweep}/diverged": sum(r["outcome"] == "diverged" for r in rows),
            f"{sweep}/train_time_s": sum(r["train_time_s"] for r in rows),
            **({f"{sweep}/best_{metric}": max(tested), f"{sweep}/mean_{metric}": statistics.fmean(tested)}
               if tested else {}),
            **({f"{sweep}/mean_images_per_s": statistics.fmean(speeds)} if speeds else {}),
        })
    tracker.parent.log_metrics(figures, step=0)


def _tags(spec: RunSpec) -> dict:
    tags = {"task": spec.task, "sweep": spec.sweep, "mode": spec.mode, "model": spec.model, "world_size": spec.world}
    if spec.schedule != "fixed":
        tags["schedule"] = spec.schedule
    return tags


def _log_result(run: Run, result: Result, logged: int, ended: dict[int, float] | None = None,
                restored_at: float | None = None) -> None:
    """Everything about a finished configuration; ``logged``: its last epochs already logged
    while it trained (the others come from a checkpoint, or from a worker process).

    Epoch metrics are at step = epoch, step metrics (``step_loss``, ``step_lr``, ...) at step =
    optimizer step 0..n-1, telemetry as ``system/...`` metrics at each sample's time. The engine
    does not time single steps: a step metric's timestamp is when its epoch was reported
    (``ended``: epoch -> time, for the epochs trained here); epochs taken from a checkpoint are
    stamped ``restored_at`` (when training resumed, before the epochs trained here, so time order
    is step order), and all epochs of a worker process's run now. Its curves also go in the run as
    ``curves.csv`` (one row per epoch) and ``steps.csv`` (one row per optimizer step)."""
    run.set_tags({
        "outcome": result.outcome,
        "devices": ", ".join(result.devices),
        "restored_epochs": result.restored_epochs,
        **({"diverged_step": result.diverged_step} if result.diverged_step is not None else {}),
        **({"dp_note": "fewer than 2 GPUs visible: DataParallel ran on one device"}
           if result.spec.mode == "dp" and len(result.devices) < 2 else {}),
    })
    now = time.time()
    before = now if restored_at is None else restored_at
    for row in result.history[:len(result.history) - logged]:
        run.log_metrics(numeric(row), step=row["epoch"], timestamp=before)
    stamps = [(ended or {}).get(h["epoch"], before) for h in result.history for _ in range(h["steps"])]
    series = {"step_loss": result.step_loss, **{f"step_{k}": v for k, v in result.step_series.items()}}
    for key, values in series.items():
        run.log_series(key, values, timestamps=(stamps + [now] * len(values))[:len(values)])
    run.log_samples(result.samples)
    if run.active:
        run.log_text(csv_text([rounded(r) for r in epoch_rows([result])]), "curves.csv")
        steps = [{"step": i, **{k: v[i] if i < len(v) else "" for k, v in series.items()}}
                 for i in range(max(map(len, series.values()), default=0))]
        run.log_text(csv_text([rounded(r) for r in steps]), "steps.csv")


def numeric(row: dict) -> dict[str, float]:
    """A history row as MLflow metrics: lists become one metric per device."""
    out = {}
    for key, value in row.items():
        if isinstance(value, list):
            out.update({f"{key}.dev{i}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, (int, float)) and value == value:  # skip NaN (not measured)
            out[key] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# Result files


def summary_row(result: Result) -> dict:
    spec, hist = result.spec, result.history
    timed = hist[1:] or hist  # the first epoch carries start-up costs (workers, caches, autotune)
    memory = [max(vals) for vals in zip(*(h["device_mem_mib"] for h in hist))] if hist else []
    final = result.final
    metric = TASKS[spec.task].metric

    def mean(key: str) -> float:
        return statistics.fmean(h[key] for h in timed) if timed else float("nan")

    return {
        "name": spec.name,
        # what a plot line joins: the same configuration across batch sizes and world sizes
        "series": f"{spec.sweep} {spec.mode} {spec.loader} {spec.lr_rule}",
        "sweep": spec.sweep, "task": spec.task, "schedule": spec.schedule, "model": spec.model,
        "dataset": spec.dataset, "mode": spec.mode, "world": spec.world, "devices": len(result.devices) * spec.world, "loader": spec.loader,
        "step": spec.recipe.step, "num_workers": spec.num_workers, "batch": spec.batch, "global_batch": spec.global_batch,
        "lr_rule": spec.lr_rule, "peak_lr": round(spec.peak_lr, 6), "seed": spec.seed,
        "outcome": result.outcome, "diverged_step": "" if result.diverged_step is None else result.diverged_step,
        "epochs": len(hist), "steps": sum(h["steps"] for h in hist),
        "allreduces": sum(h["allreduces"] for h in hist), "final_batch": final.get("global_batch", ""),
        "train_loss": final.get("train_loss", float("nan")),
        f"train_{metric}": final.get(f"train_{metric}", float("nan")),
        "test_loss": final.get("test_loss", float("nan")),
        f"test_{metric}": final.get(f"test_{metric}", float("nan")),
        "train_time_s": sum(h["epoch_time_s"] for h in hist),
        "epoch_time_s": mean("epoch_time_s"), "images_per_s": mean("images_per_s"),
        "data_wait_fraction": mean("data_wait_fraction"), "allreduce_fraction": mean("allreduce_fraction"),
        "device_mem_mib": ";".join(f"{m:.1f}" for m in memory),
        "utilization_pct": ";".join(f"{v:.1f}" for v in _utilization(timed)),
        "device_busy_pct": _measured_mean([h.get("device_busy_pct", math.nan) for h in timed]),
    }


def _measured_mean(values: list[float]) -> float:
    """Mean of the figures that were measured; nan (shown as such) if none was: an epoch's NVML
    window too short for its averaging period, or no GPU for the profiler's busy share."""
    measured = [v for v in values if not math.isnan(v)]
    return statistics.fmean(measured) if measured else math.nan


def _utilization(rows: list[dict]) -> list[float]:
    """Mean utilisation per GPU (NVML), else the system CPU, over the given epochs (those whose
    window NVML could measure)."""
    keys = utilization_keys(rows[0]) if rows else []
    return [_measured_mean([r[k] for r in rows if k in r]) for k in keys]


def epoch_rows(results: list[Result]) -> list[dict]:
    """One row per configuration and epoch, with optimizer steps and training time so far (the
    x axes of progress-per-step and progress-per-second curves)."""
    rows = []
    for r in results:
        steps = seconds = 0
        for h in r.history:
            steps, seconds = steps + h["steps"], seconds + h["epoch_time_s"]
            rows.append({"series": r.spec.name, "sweep": r.spec.sweep, "cum_steps": steps, "cum_time_s": seconds,
                         **{k: (";".join(f"{x:.1f}" for x in v) if isinstance(v, list) else v)
                            for k, v in h.items() if not k.endswith("_mean")}})
    return rows


def set_aside_checkpoints(out: Path, specs: Iterable[RunSpec]) -> None:
    """Move checkpoints of configurations no longer in the grid to ``checkpoints/kept/`` (never
    deleted: they come back if their settings do), so ``checkpoints/*.pt`` is the grid."""
    checkpoints.set_aside(out / "checkpoints", [spec.name for spec in specs], code_fingerprint(), CHECKPOINT_FORMAT)


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
            key = (f"{stage}.{spec.sweep}.batch_sizes" if spec.schedule == "fixed"
                   else f"{stage}.{spec.sweep}.schedules.{spec.schedule}.{name}")
            per = " global" if spec.world > 1 else ""
            if batch > n:
                raise UserError(f"{key}: a{per} batch of {batch:,} is larger than the training split of "
                                f"{spec.dataset} ({n:,} images); use at most {n}")
            if batch // spec.world < 2:
                raise UserError(f"{key}: a{per} batch of {batch} leaves fewer than 2 samples for each of "
                                f"{spec.world} processes; use at least {2 * spec.world}")


def results_files(results: list[Result], out: Path, headline: Callable[[list[dict]], dict]) -> dict[Path, str]:
    """runs.csv, epochs.csv and metrics.json for ``results``, as ``path: text`` to write together.

    metrics.json is the stage's few headline figures, ``headline(runs.csv's rows)``: flat, named
    for the claim they bear on, so `dvc metrics show` fits a terminal. runs.csv holds everything.
    """
    rows, files = tables(results, out)
    return {**files, out / "metrics.json": json_text(headline(rows))}


def mean_of(rows: list[dict], column: str, **where) -> float:
    """The mean of ``column`` over the rows whose fields equal ``where``'s; nan if none (or any nan)."""
    values = [float(r[column]) for r in rows if all(r.get(k) == v for k, v in where.items())]
    return statistics.fmean(values) if values and all(math.isfinite(v) for v in values) else math.nan


def figure(value: float, digits: int = 4) -> float:
    """A headline figure as metrics.json keeps it: rounded (nan stays nan)."""
    return round(value, digits) if math.isfinite(value) else math.nan


def tables(results: list[Result], out: Path, extra=None) -> tuple[list[dict], dict[Path, str]]:
    """runs.csv's rows for ``results`` (one task: the columns are its, plus those ``extra(result)``
    adds to each run), and runs.csv and epochs.csv as ``path: text``."""
    rows = [{**summary_row(r), **(extra(r) if extra else {})} for r in results]
    return rows, {out / "runs.csv": csv_text([rounded(r) for r in rows]),
                  out / "epochs.csv": csv_text([rounded(r) for r in epoch_rows(results)])}


def rounded(row: dict) -> dict:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}


def test_figure(result: Result) -> str:
    """The final test figure as a person reads it: ``accuracy 0.981`` or ``PSNR 24.31 dB``."""
    metric = TASKS[result.spec.task].metric
    value = result.final.get(f"test_{metric}", float("nan"))
    return f"accuracy {value:.3f}" if metric == "accuracy" else f"PSNR {value:.2f} dB"


def _one_line(result: Result) -> str:
    f = result.final
    state = result.outcome if result.outcome != "diverged" else f"diverged at step {result.diverged_step}"
    resumed = f", {result.restored_epochs} epochs from checkpoint" if result.restored_epochs else ""
    return (f"[{result.spec.sweep}] {result.spec.name}: {state}, test {test_figure(result)}, "
            f"{f.get('images_per_s', 0):,.0f} images/s{resumed}")


def print_table(title: str, results: list[Result], out: Path) -> None:
    print(f"\n{title}")
    print(format_table(
        ["configuration", "outcome", "test", "epoch s", "images/s", "data wait", "memory MiB"],
        [(r["name"], r["outcome"], test_figure(result), r["epoch_time_s"], r["images_per_s"],
          f"{r['data_wait_fraction']:.1%}", r["device_mem_mib"])
         for r, result in zip(map(summary_row, results), results)]))
    print(f"\nfiles: {out}/metrics.json, runs.csv, epochs.csv, checkpoints/; runs in MLflow")
