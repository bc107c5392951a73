"""Adaptive batch size under DDP (claims C1–C4): fixed small, fixed large, step growth and
noise-scale schedules, for classification (ResNet-20) and 2× image restoration (PSNR).

dvc.yaml starts it as ``dpstudy launch train_adaptive`` (torchrun with
<train_adaptive.nproc_per_node> processes per machine, see `dpstudy.launch`); every configuration uses all launched processes (the per-process
batch is the global batch / processes; a plain process runs alone and measures the noise scale
from micro-batches). Per task, schedule × seed, fixed_small first; then each run's time-to-target
against fixed_small's final figure (see `dpstudy.adaptive`).

Reads params: preset, telemetry, train_adaptive. Reads <data>/<dataset>.pt. Writes into <out>:
metrics.json (per task and schedule: mean over seeds of the final test figure, optimizer steps,
all-reduces, training time, images/s, time-to-target and speedup), summary.csv (the same with
std), <task>/runs.csv and <task>/epochs.csv, checkpoints/<configuration>.pt. MLflow: a parent
run in study C with a child per configuration: per-epoch figures, and per step the loss, lr,
global batch and gradient-noise-scale estimate.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..adaptive import adaptive_grid, run_figures, schedule_summary, target
from ..config import as_dict, load_section
from ..console import format_table, say
from ..devices import device_names
from ..fsutil import write_csv_atomic, write_json_atomic
from ..parallel import distributed
from ..sweep import load_data, numeric, prune_checkpoints, rounded, run_grid, write_tables
from ..tasks import TASKS
from ..tracking import Tracker
from .args import data_stage_arguments

STAGE = "train_adaptive"


def add_arguments(p: argparse.ArgumentParser) -> None:
    data_stage_arguments(p, STAGE)


def run(args: argparse.Namespace) -> int:
    preset, cfg = load_section(STAGE, args.params)
    _, telemetry = load_section("telemetry", args.params)
    out = Path(args.out)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # known before any process group: check first
    grids = {task: adaptive_grid(task, getattr(cfg, task), cfg.seeds, world) for task in TASKS}
    summaries: dict[str, dict] = {}
    with distributed(cfg.device, cfg.timeout_s) as dist:
        data = load_data(Path(args.data), [getattr(cfg, task).dataset for task in grids])
        if dist.is_main:
            prune_checkpoints(out, [spec for grid in grids.values() for spec in grid])
            say(f"[{STAGE}] {dist.world} process(es), backend {dist.backend}, {dist.device.type}")
        params = {"preset": preset, "telemetry": as_dict(telemetry), STAGE: as_dict(cfg)}
        with Tracker("C", STAGE, preset=preset, params=params, rank=dist.rank, world_size=dist.world,
                     devices=device_names(dist.device)) as tracker:
            tracker.parent.set_tags({"tasks": ",".join(grids), "backend": dist.backend})
            for task, grid in grids.items():
                results = run_grid(grid, data, tracker, out, dist=dist, sync_timing=cfg.sync_timing,
                                   sample_interval_s=telemetry.interval_s)
                if dist.is_main:
                    summaries[task] = _finish_task(task, results, getattr(cfg, task).target_tolerance, out,
                                                   tracker)
            if dist.is_main:
                _write_summary(summaries, out)
                tracker.parent.log_artifact(out / "summary.csv")
    if dist.is_main:
        _print_summary(summaries, preset, dist, out)
    return 0


def _finish_task(task: str, results, tolerance: float, out: Path, tracker: Tracker) -> dict:
    """Time-to-target for every run of ``task``: into its runs.csv and its MLflow run."""
    goal = target(results, tolerance)
    rows = write_tables(results, out / task, extra=lambda result: run_figures(result, goal))
    for row, result in zip(rows, results):
        figures = {k: row[k] for k in ("target", "time_to_target_s", "steps_to_target", "wall_time_s")}
        tracker.run(result.run_id).log_metrics(numeric(figures), step=len(result.history) - 1)
    return schedule_summary(rows, TASKS[task].metric)


def _write_summary(summaries: dict[str, dict], out: Path) -> None:
    metrics = {task: {name: {k: round(v, 4) for k, v in entry.items() if not k.endswith("_std")}
                      for name, entry in per_schedule.items()}
               for task, per_schedule in summaries.items()}
    write_json_atomic(out / "metrics.json", metrics)
    rows = []
    for task, per_schedule in summaries.items():
        metric = TASKS[task].metric
        for name, entry in per_schedule.items():  # one column name for either task's figure
            generic = {k.replace(f"test_{metric}", "test_metric"): v for k, v in entry.items()}
            rows.append({"task": task, "schedule": name, "metric": metric, **rounded(generic)})
    write_csv_atomic(out / "summary.csv", rows)


def _print_summary(summaries: dict[str, dict], preset: str, dist, out: Path) -> None:
    print(f"\n{STAGE} ({preset} preset, {dist.world} × {dist.device.type}, {dist.backend}); mean ± std over seeds")
    for task, per_schedule in summaries.items():
        metric = TASKS[task].metric
        key = f"test_{metric}"
        print(format_table(
            ["schedule", metric, "steps", "all-reduces", "train s", "images/s", "to target s", "speedup"],
            [(name, f"{e[key]:.3f} ± {e[key + '_std']:.3f}", f"{e['steps']:.0f}", f"{e['allreduces']:.0f}",
              f"{e['train_time_s']:.1f}", f"{e['run_images_per_s']:,.0f}",
              f"{e['time_to_target_s']:.1f} ± {e['time_to_target_s_std']:.1f}", f"{e['speedup']:.2f}x")
             for name, e in per_schedule.items()]))
    print(f"\nfiles: {out}/metrics.json, summary.csv, <task>/runs.csv, <task>/epochs.csv, checkpoints/; "
          "runs in MLflow (study C)")
