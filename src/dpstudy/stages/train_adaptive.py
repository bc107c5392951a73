"""Adaptive batch size under DDP (claims C1–C4): fixed small, fixed large, step growth and
noise-scale schedules, for classification (ResNet-20) and 2× image restoration (PSNR).

dvc.yaml starts it as ``dpstudy launch train_adaptive`` (torchrun with
<train_adaptive.nproc_per_node> processes per machine, see `dpstudy.launch`); every configuration
uses all launched processes (the per-process batch is the global batch / processes; a plain
process runs alone and measures the noise scale from micro-batches). Per task, schedule × seed,
fixed_small first; then each run's time-to-target against fixed_small's final figure (see
`dpstudy.grid.adaptive`).

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
from types import SimpleNamespace

from ..config import as_dict, load_section
from ..console import say
from ..devices import device_names
from ..fsutil import write_files_atomic
from ..track.tracking import Tracker
from .args import data_stage_arguments

STAGE = "train_adaptive"
TASKS = ("classification", "restoration")  # params sections, in the order they train


def add_arguments(p: argparse.ArgumentParser) -> None:
    data_stage_arguments(p, STAGE)


def plan(args: argparse.Namespace, world: int) -> SimpleNamespace:
    """Everything the stage will do on ``world`` processes, checked before any work: its params,
    grids and data (`dpstudy launch` calls this before torchrun starts, each worker again)."""
    preset, cfg = load_section(STAGE, args.params)
    _, telemetry = load_section("telemetry", args.params)
    from ..devices import resolve_device
    from ..grid.adaptive import adaptive_grid  # torch: only once the params are known to be good
    from ..grid.build import check_batches, check_steps, load_data

    grids = {task: adaptive_grid(task, getattr(cfg, task), cfg.seeds, world) for task in TASKS}
    check_steps(STAGE, [spec for grid in grids.values() for spec in grid], resolve_device(cfg.device))
    data = load_data(Path(args.data), [getattr(cfg, task).dataset for task in grids])
    check_batches(STAGE, [spec for grid in grids.values() for spec in grid], data)
    return SimpleNamespace(preset=preset, cfg=cfg, telemetry=telemetry, grids=grids, data=data)


def run(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))  # known before any process group: check first
    p = plan(args, world)
    preset, cfg, telemetry, grids, data = p.preset, p.cfg, p.telemetry, p.grids, p.data
    from ..grid.adaptive import finish_task, print_summary, summary_files
    from ..grid.build import set_aside_checkpoints
    from ..grid.sweep import run_grid
    from ..train.parallel import distributed

    out = Path(args.out)
    summaries: dict[str, dict] = {}
    files: dict[Path, str] = {}
    with distributed(cfg.device, cfg.timeout_s) as dist:
        if dist.is_main:
            set_aside_checkpoints(out, [spec for grid in grids.values() for spec in grid])
            say(f"[{STAGE}] {dist.world} process(es), backend {dist.backend}, {dist.device.type}")
        params = {"preset": preset, "telemetry": as_dict(telemetry), STAGE: as_dict(cfg)}
        with Tracker(
            "C",
            STAGE,
            preset=preset,
            params=params,
            rank=dist.rank,
            world_size=dist.world,
            devices=device_names(dist.device),
        ) as tracker:
            tracker.parent.set_tags({"tasks": ",".join(grids), "backend": dist.backend})
            for task, grid in grids.items():
                results = run_grid(
                    grid,
                    data,
                    tracker,
                    out,
                    dist=dist,
                    sync_timing=cfg.sync_timing,
                    sample_interval_s=telemetry.interval_s,
                )
                if dist.is_main:
                    summaries[task] = finish_task(
                        task, results, getattr(cfg, task).target_tolerance, out, tracker, files
                    )
            if dist.is_main:
                # Both tasks done: every table changes together, never to a partial set.
                write_files_atomic({**files, **summary_files(summaries, out)})
                tracker.parent.log_artifact(out / "summary.csv")
    if dist.is_main:
        print_summary(f"{STAGE} ({preset} preset, {dist.world} × {dist.device.type}, {dist.backend})", summaries, out)
    return 0
