"""A stage's result tables: runs.csv (one row per configuration) and epochs.csv (one row per
configuration and epoch, the curves `dvc plots` draws), with the stage's metrics.json beside them.

They are returned as ``path: text`` for `fsutil.write_files_atomic`, which the stage calls once
the whole stage has run: an interrupted stage leaves its previous complete tables, and its rerun
reuses every finished configuration from its checkpoint to write complete new ones.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path

from ..fsutil import csv_text, json_text
from ..measure.telemetry import utilization_keys
from ..train.engine import Result
from ..train.tasks import TASKS
from .means import measured_mean


def summary_row(result: Result) -> dict:
    """runs.csv's row for ``result``: its settings, outcome, final figures, and per-epoch means
    over the epochs after the first (which carries start-up costs: workers, caches, autotune)."""
    spec, hist = result.spec, result.history
    timed = hist[1:] or hist
    memory = [max(vals) for vals in zip(*(h["device_mem_mib"] for h in hist))] if hist else []
    final = result.final
    metric = TASKS[spec.task].metric

    def mean(key: str) -> float:
        return statistics.fmean(h[key] for h in timed) if timed else float("nan")

    return {
        "name": spec.name,
        # what a plot line joins: the same configuration across batch sizes and world sizes
        "series": f"{spec.sweep} {spec.mode} {spec.loader} {spec.lr_rule}",
        "sweep": spec.sweep,
        "task": spec.task,
        "schedule": spec.schedule,
        "model": spec.model,
        "dataset": spec.dataset,
        "mode": spec.mode,
        "world": spec.world,
        "devices": len(result.devices) * spec.world,
        "loader": spec.loader,
        "step": spec.recipe.step,
        "num_workers": spec.num_workers,
        "batch": spec.batch,
        "global_batch": spec.global_batch,
        "lr_rule": spec.lr_rule,
        "peak_lr": round(spec.peak_lr, 6),
        "seed": spec.seed,
        "outcome": result.outcome,
        "diverged_step": "" if result.diverged_step is None else result.diverged_step,
        "epochs": len(hist),
        "steps": sum(h["steps"] for h in hist),
        "allreduces": sum(h["allreduces"] for h in hist),
        "final_batch": final.get("global_batch", ""),
        "train_loss": final.get("train_loss", float("nan")),
        f"train_{metric}": final.get(f"train_{metric}", float("nan")),
        "test_loss": final.get("test_loss", float("nan")),
        f"test_{metric}": final.get(f"test_{metric}", float("nan")),
        "train_time_s": sum(h["epoch_time_s"] for h in hist),
        "epoch_time_s": mean("epoch_time_s"),
        "images_per_s": mean("images_per_s"),
        "data_wait_fraction": mean("data_wait_fraction"),
        "allreduce_fraction": mean("allreduce_fraction"),
        "device_mem_mib": ";".join(f"{m:.1f}" for m in memory),
        "utilization_pct": ";".join(f"{v:.1f}" for v in _utilization(timed)),
        "device_busy_pct": measured_mean(h.get("device_busy_pct", math.nan) for h in timed),
    }


def _utilization(rows: list[dict]) -> list[float]:
    """Mean utilisation per GPU (NVML), else the system CPU, over the given epochs (those whose
    window NVML could measure)."""
    keys = utilization_keys(rows[0]) if rows else []
    return [measured_mean(r[k] for r in rows if k in r) for k in keys]


def epoch_rows(results: list[Result]) -> list[dict]:
    """One row per configuration and epoch, with optimizer steps and training time so far (the
    x axes of progress-per-step and progress-per-second curves)."""
    rows = []
    for r in results:
        steps = seconds = 0
        for h in r.history:
            steps, seconds = steps + h["steps"], seconds + h["epoch_time_s"]
            rows.append(
                {
                    "series": r.spec.name,
                    "sweep": r.spec.sweep,
                    "cum_steps": steps,
                    "cum_time_s": seconds,
                    **{
                        k: (";".join(f"{x:.1f}" for x in v) if isinstance(v, list) else v)
                        for k, v in h.items()
                        if not k.endswith("_mean")
                    },
                }
            )
    return rows


def rounded(row: dict) -> dict:
    """A row as the tables keep it: floats to 6 decimals."""
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}


def tables(results: list[Result], out: Path, extra=None) -> tuple[list[dict], dict[Path, str]]:
    """runs.csv's rows for ``results`` (one task: the columns are its, plus those ``extra(result)``
    adds to each run), and runs.csv and epochs.csv as ``path: text``."""
    rows = [{**summary_row(r), **(extra(r) if extra else {})} for r in results]
    return rows, {
        out / "runs.csv": csv_text([rounded(r) for r in rows]),
        out / "epochs.csv": csv_text([rounded(r) for r in epoch_rows(results)]),
    }


def results_files(results: list[Result], out: Path, headline: Callable[[list[dict]], dict]) -> dict[Path, str]:
    """runs.csv, epochs.csv and metrics.json for ``results``, as ``path: text`` to write together.

    metrics.json is the stage's few headline figures, ``headline(runs.csv's rows)``: flat, named
    for the claim they bear on, so `dvc metrics show` fits a terminal. runs.csv holds everything.
    """
    rows, files = tables(results, out)
    return {**files, out / "metrics.json": json_text(headline(rows))}
