"""Study C: the adaptive-batch grid, its reference target and time-to-target (claims C1–C4).

For each task (classification, restoration) four batch schedules are trained from the same
recipe, every one on all launched processes and for several seeds:

- ``fixed_small``: the task's small batch all along (the accuracy to keep);
- ``fixed_large``: the large batch all along (C1: what a large batch costs in accuracy);
- ``step_growth``: small → large in steps (C2, C3; Lee et al.'s rule as reconstructed, `batching`);
- ``noise_scale``: small → large as the measured gradient noise scale grows.

Fixed-small runs first, so its result is known when the others finish. Time-to-target is the
training time (evaluation excluded) until a run's test figure first reaches the *target*: the
mean over seeds of fixed-small's final figure minus ``target_tolerance`` (accuracy points or dB).
It is measured at epoch ends, where the test figure is computed; a run that never gets there has
none (nan). ``speedup`` is fixed-small's mean time-to-target over the schedule's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from ..config import AdaptiveTaskConfig
from ..console import format_table
from ..data.loaders import MIN_PER_RANK
from ..errors import UserError
from ..fsutil import csv_text, json_text
from ..train.engine import Result, RunSpec
from ..train.models import model_task
from ..train.tasks import TASKS
from .build import check_model
from .configuration import numeric
from .headline import figure
from .means import finite_mean
from .tables import rounded, tables

SCHEDULES = ("fixed_small", "fixed_large", "step_growth", "noise_scale")
STAGE = "train_adaptive"


def adaptive_grid(task: str, cfg: AdaptiveTaskConfig, seeds: Iterable[int], world: int) -> list[RunSpec]:
    """schedule × seed for one task on ``world`` processes, fixed_small first. Checks every batch
    setting against the world size and the recipe before any work."""
    where = f"{STAGE}.{task}"
    if model_task(cfg.model) != task:
        raise UserError(f"{where}.model: {cfg.model} is a {model_task(cfg.model)} network, not {task}")
    check_model(where, cfg, cfg.input_size)
    mode = "ddp" if world > 1 else "single"
    seeds = list(seeds)
    grid = []
    for name in SCHEDULES:
        sched = getattr(cfg.schedules, name)
        growth = None if sched.kind == "fixed" else _resolved(sched, cfg, f"{where}.schedules.{name}")
        for key in ("batch", "max_batch"):
            value = getattr(sched, key, None)
            if value is not None and (value % world or value < MIN_PER_RANK * world):
                raise UserError(
                    f"{where}.schedules.{name}.{key}: {value} must be a multiple of the "
                    f"{world} processes, at least {MIN_PER_RANK} per process"
                )
        grid += [
            RunSpec(
                task,
                cfg.model,
                cfg.width,
                cfg.input_size,
                cfg.dataset,
                mode,
                world,
                cfg.loader,
                cfg.num_workers,
                sched.batch // world,
                sched.lr_rule,
                seed,
                cfg.recipe,
                schedule=name,
                growth=growth,
                noise_ema=cfg.schedules.noise_scale.ema,
            )
            for seed in seeds
        ]
    return grid


def _resolved(sched, cfg: AdaptiveTaskConfig, where: str):
    """The growth config with ``at_epochs: milestones`` replaced by the recipe's milestone epochs."""
    if sched.max_batch < sched.batch:
        raise UserError(f"{where}.max_batch: {sched.max_batch} is below the starting batch {sched.batch}")
    if sched.kind != "step_growth":
        return sched
    epochs = sched.at_epochs
    if epochs == "milestones":
        if any(m != int(m) for m in cfg.recipe.milestones):
            raise UserError(
                f"{where}.at_epochs: milestones {cfg.recipe.milestones} are not whole epochs; "
                "batches change only between epochs"
            )
        epochs = [int(m) for m in cfg.recipe.milestones]
        if not epochs:
            raise UserError(f"{where}.at_epochs: 'milestones' but the recipe has no lr milestones")
    late = [e for e in epochs if e >= cfg.recipe.epochs]
    if late:
        raise UserError(f"{where}.at_epochs: {late} at or after the last epoch ({cfg.recipe.epochs} epochs)")
    return replace(sched, at_epochs=sorted(epochs))


# --------------------------------------------------------------------------------------------
# After training


def target(results: list[Result], tolerance: float) -> float:
    """Fixed-small's final test figure, mean over seeds, minus ``tolerance``."""
    metric = _metric(results)
    finals = [r.final.get(f"test_{metric}", math.nan) for r in results if r.spec.schedule == "fixed_small"]
    if not finals:
        raise ValueError("no fixed_small run to take the target from")
    return statistics.fmean(finals) - tolerance


def time_to_target(result: Result, goal: float) -> dict[str, float]:
    """Training time, optimizer steps and epochs until the test figure first reaches ``goal``."""
    metric = TASKS[result.spec.task].metric
    seconds = steps = 0.0
    for epoch, row in enumerate(result.history, start=1):
        seconds += row["epoch_time_s"]
        steps += row["steps"]
        if row[f"test_{metric}"] >= goal:
            return {"time_to_target_s": seconds, "steps_to_target": steps, "epochs_to_target": epoch}
    return {"time_to_target_s": math.nan, "steps_to_target": math.nan, "epochs_to_target": math.nan}


def run_figures(result: Result, goal: float) -> dict[str, float]:
    """What study C records per configuration besides runs.csv's usual columns."""
    hist = result.history
    train_s = sum(h["epoch_time_s"] for h in hist)
    return {
        "target": goal,
        **time_to_target(result, goal),
        "wall_time_s": train_s + sum(h["eval_time_s"] for h in hist),
        # over the whole run: the batch, and with it the per-epoch rate, changes
        "run_images_per_s": sum(h["samples"] for h in hist) / train_s if train_s else math.nan,
        "batches": "→".join(str(b) for b in dict.fromkeys(h["global_batch"] for h in hist)),
    }


def schedule_summary(rows: list[dict], metric: str) -> dict[str, dict[str, float]]:
    """Per schedule, mean and std over seeds of what C1–C4 are judged on; speedup vs fixed_small."""
    figures = [f"test_{metric}", "steps", "allreduces", "train_time_s", "run_images_per_s", "time_to_target_s"]
    out: dict[str, dict[str, float]] = {}
    for name in SCHEDULES:
        mine = [r for r in rows if r["schedule"] == name]
        if not mine:
            continue
        entry: dict[str, float] = {"seeds": len(mine)}
        for key in figures:
            values = [float(r[key]) for r in mine]
            entry[key] = finite_mean(values)
            finite = all(math.isfinite(v) for v in values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 and finite else 0.0
        entry["reached_target"] = sum(math.isfinite(float(r["time_to_target_s"])) for r in mine)
        out[name] = entry
    base = out.get("fixed_small", {}).get("time_to_target_s", math.nan)
    for entry in out.values():
        entry["speedup"] = base / entry["time_to_target_s"] if entry["time_to_target_s"] > 0 else math.nan
    return out


# --------------------------------------------------------------------------------------------
# The stage's result files


def finish_task(task: str, results: list[Result], tolerance: float, out: Path, tracker, files: dict) -> dict:
    """Time-to-target for every run of ``task``: into its MLflow run and its tables (added to
    ``files``, written with the rest at the end); returns the task's `schedule_summary`."""
    goal = target(results, tolerance)
    rows, task_files = tables(results, out / task, extra=lambda result: run_figures(result, goal))
    files.update(task_files)
    for row, result in zip(rows, results):
        figures = {k: row[k] for k in ("target", "time_to_target_s", "steps_to_target", "wall_time_s")}
        tracker.run(result.run_id).log_metrics(numeric(figures), step=len(result.history) - 1)
    summary = schedule_summary(rows, TASKS[task].metric)
    # the stage's headline on its parent run, beside the figures `headline.log_headline` logs per grid
    tracker.parent.log_metrics(
        numeric(
            {
                f"{task}/{schedule}_{key}": entry[key]
                for schedule, entry in summary.items()
                for key in ("time_to_target_s", "speedup")
            }
        ),
        step=0,
    )
    return summary


def summary_files(summaries: dict[str, dict], out: Path) -> dict[Path, str]:
    """metrics.json (`headline`) and summary.csv (every task and schedule, means and stds over seeds)."""
    metrics = headline(summaries)
    rows = []
    for task, per_schedule in summaries.items():
        metric = TASKS[task].metric
        for name, entry in per_schedule.items():  # one column name for either task's figure
            generic = {k.replace(f"test_{metric}", "test_metric"): v for k, v in entry.items()}
            rows.append({"task": task, "schedule": name, "metric": metric, **rounded(generic)})
    return {out / "metrics.json": json_text(metrics), out / "summary.csv": csv_text(rows)}


def headline(summaries: dict[str, dict]) -> dict:
    """metrics.json, what `dvc metrics show` prints: classification's figures for C1-C3, from the
    means over seeds (summary.csv has every schedule's, with stds; REPORT.md judges per seed):

    - C1_acc_gap: fixed_large's test accuracy minus fixed_small's (negative: the large batch lost);
    - C2_acc_gap: step_growth's test accuracy minus fixed_small's;
    - C3_ips_gain: step_growth's whole-run images/s over fixed_small's.
    nan where a schedule did not run; {} without the classification task."""
    per = summaries.get("classification")
    if not per:
        return {}
    nan = math.nan

    def mean(schedule: str, key: str) -> float:
        return float(per.get(schedule, {}).get(key, nan))

    small_ips = mean("fixed_small", "run_images_per_s")
    return {
        "C1_acc_gap": figure(mean("fixed_large", "test_accuracy") - mean("fixed_small", "test_accuracy")),
        "C2_acc_gap": figure(mean("step_growth", "test_accuracy") - mean("fixed_small", "test_accuracy")),
        "C3_ips_gain": figure(mean("step_growth", "run_images_per_s") / small_ips if small_ips > 0 else nan, 3),
    }


def print_summary(title: str, summaries: dict[str, dict], out: Path) -> None:
    print(f"\n{title}; mean ± std over seeds")
    for task, per_schedule in summaries.items():
        metric = TASKS[task].metric
        key = f"test_{metric}"
        print(
            format_table(
                ["schedule", metric, "steps", "all-reduces", "train s", "images/s", "to target s", "speedup"],
                [
                    (
                        name,
                        f"{e[key]:.3f} ± {e[key + '_std']:.3f}",
                        f"{e['steps']:.0f}",
                        f"{e['allreduces']:.0f}",
                        f"{e['train_time_s']:.1f}",
                        f"{e['run_images_per_s']:,.0f}",
                        f"{e['time_to_target_s']:.1f} ± {e['time_to_target_s_std']:.1f}",
                        f"{e['speedup']:.2f}x",
                    )
                    for name, e in per_schedule.items()
                ],
            )
        )
    print(
        f"\nfiles: {out}/metrics.json, summary.csv, <task>/runs.csv, <task>/epochs.csv, checkpoints/; "
        "runs in MLflow (study C)"
    )


def _metric(results: list[Result]) -> str:
    return TASKS[results[0].spec.task].metric
