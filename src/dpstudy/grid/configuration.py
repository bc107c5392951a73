"""One configuration in its MLflow run: trained inside it, or logged to it when trained elsewhere.

`run_one` trains a `RunSpec` with `engine.train` (which resumes from, or reuses, a matching
checkpoint) while its nested run is open, its epochs arriving live; `log_finished` writes the run
of a configuration trained in a `cpupool` worker, on another rank, or as a twin, all at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from ..fsutil import csv_text
from ..track.tracking import Run, Tracker
from ..train import checkpoints
from ..train.engine import Context, Result, RunSpec, TrainData, train
from .tables import epoch_rows, rounded


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


def run_one(
    spec: RunSpec,
    data: TrainData,
    ctx: Context,
    tracker: Tracker,
    checkpoint: Path,
    tags: dict | None = None,
    first_epoch_copy: Path | None = None,
) -> Result:
    """Train ``spec`` in its MLflow run; ``first_epoch_copy``: where to keep its checkpoint after
    epoch 1 for configurations that share that epoch (`twins.shared_first_epochs`)."""
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
        _log_result(run, result, logged=len(result.history) - result.restored_epochs, ended=ended, restored_at=resumed)
    return result


def log_finished(result: Result, tracker: Tracker, tags: dict | None = None) -> None:
    """The MLflow run of a configuration trained elsewhere (a `cpupool` worker, another rank, or
    its twin): all at once."""
    with tracker.child(result.spec.name, result.spec.params(), tags={**_tags(result.spec), **(tags or {})}) as run:
        result.run_id = run.run_id
        _log_result(run, result, logged=0)


def numeric(row: dict) -> dict[str, float]:
    """A history row as MLflow metrics: lists become one metric per device."""
    out = {}
    for key, value in row.items():
        if isinstance(value, list):
            out.update({f"{key}.dev{i}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, (int, float)) and value == value:  # skip NaN (not measured)
            out[key] = float(value)
    return out


def _tags(spec: RunSpec) -> dict:
    tags = {"task": spec.task, "sweep": spec.sweep, "mode": spec.mode, "model": spec.model, "world_size": spec.world}
    if spec.schedule != "fixed":
        tags["schedule"] = spec.schedule
    return tags


def _log_result(
    run: Run, result: Result, logged: int, ended: dict[int, float] | None = None, restored_at: float | None = None
) -> None:
    """Everything about a finished configuration; ``logged``: its last epochs already logged
    while it trained (the others come from a checkpoint, or from a worker process).

    Epoch metrics are at step = epoch, step metrics (``step_loss``, ``step_lr``, ...) at step =
    optimizer step 0..n-1, telemetry as ``system/...`` metrics at each sample's time. The engine
    does not time single steps: a step metric's timestamp is when its epoch was reported
    (``ended``: epoch -> time, for the epochs trained here); epochs taken from a checkpoint are
    stamped ``restored_at`` (when training resumed, before the epochs trained here, so time order
    is step order), and all epochs of a worker process's run now."""
    run.set_tags(
        {
            "outcome": result.outcome,
            "devices": ", ".join(result.devices),
            "restored_epochs": result.restored_epochs,
            **({"diverged_step": result.diverged_step} if result.diverged_step is not None else {}),
            **(
                {"dp_note": "fewer than 2 GPUs visible: DataParallel ran on one device"}
                if result.spec.mode == "dp" and len(result.devices) < 2
                else {}
            ),
        }
    )
    now = time.time()
    before = now if restored_at is None else restored_at
    for row in result.history[: len(result.history) - logged]:
        run.log_metrics(numeric(row), step=row["epoch"], timestamp=before)
    stamps = [(ended or {}).get(h["epoch"], before) for h in result.history for _ in range(h["steps"])]
    series = {"step_loss": result.step_loss, **{f"step_{k}": v for k, v in result.step_series.items()}}
    for key, values in series.items():
        run.log_series(key, values, timestamps=(stamps + [now] * len(values))[: len(values)])
    run.log_samples(result.samples)
    if run.active:
        _log_curves(run, result, series)


def _log_curves(run: Run, result: Result, series: dict[str, list]) -> None:
    """The run's curves as files: ``curves.csv`` (one row per epoch) and ``steps.csv`` (one row
    per optimizer step)."""
    run.log_text(csv_text([rounded(r) for r in epoch_rows([result])]), "curves.csv")
    steps = [
        {"step": i, **{k: v[i] if i < len(v) else "" for k, v in series.items()}}
        for i in range(max(map(len, series.values()), default=0))
    ]
    run.log_text(csv_text([rounded(r) for r in steps]), "steps.csv")
