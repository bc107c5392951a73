"""Train VGG16 under DistributedDataParallel (claims B4, B5), launched by torchrun.

dvc.yaml starts it as ``dpstudy launch train_ddp``, which runs ``torchrun -m dpstudy train_ddp``
with train_ddp.nproc_per_node processes per node (one per GPU with nccl, or that many CPU
processes with gloo) on train_ddp.launch.nnodes machines that meet at a c10d rendezvous
(`dpstudy.launch`; DPSTUDY_* environment variables override these per launch).
Each configuration runs on the first `world` processes (world sizes × per-process batch × lr
rule × seed), so one launch measures epoch time against world size and accuracy with and without
lr scaling as the global batch grows; the others wait. Run as a plain process it is a world of one.

Rank 0 alone writes files and logs to MLflow, after all-reducing the figures. Reads params:
preset, telemetry, train_ddp. Writes into <out>: metrics.json, runs.csv, epochs.csv and
checkpoints/<configuration>.pt; MLflow: a parent run in study B with a child per configuration.
If any process dies, torchrun stops the others and exits non-zero; the runs end FAILED.
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

STAGE = "train_ddp"


def headline(rows: list[dict]) -> dict:
    """metrics.json, what `dvc metrics show` prints (runs.csv's rows in; runs.csv has every figure):
    B5_acc_gap, test accuracy at the largest world size minus at world size 1 without lr scaling
    (lr rule none; the per-process batch is fixed, so the global batch grows), mean over seeds;
    negative: accuracy fell as processes were added. nan with one world size or no lr rule none.
    B4 compares DDP with train_dp's DataParallel: REPORT.md has it."""
    from ..grid.headline import figure, mean_of

    worlds = sorted({r["world"] for r in rows}, key=float)
    gap = (
        (
            mean_of(rows, "test_accuracy", world=worlds[-1], lr_rule="none")
            - mean_of(rows, "test_accuracy", world=worlds[0], lr_rule="none")
        )
        if len(worlds) > 1
        else float("nan")
    )
    return {"B5_acc_gap": figure(gap)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    data_stage_arguments(p, STAGE)


def plan(args: argparse.Namespace, world: int) -> SimpleNamespace:
    """Everything the stage will do on ``world`` processes, checked before any work: its params,
    grid and data (`dpstudy launch` calls this before torchrun starts, each worker again)."""
    preset, cfg = load_section(STAGE, args.params)
    _, telemetry = load_section("telemetry", args.params)
    from ..devices import resolve_device
    from ..grid.build import (  # torch: once the params are good
        check_batches,
        check_model,
        check_steps,
        ddp_grid,
        load_data,
    )

    check_model(f"{STAGE}.vgg", cfg.vgg)
    grid, skipped = ddp_grid("vgg", cfg.vgg, cfg.seeds, launched=world)
    check_steps(STAGE, grid, resolve_device(cfg.device))
    data = load_data(Path(args.data), [cfg.vgg.dataset])
    check_batches(STAGE, grid, data)
    return SimpleNamespace(preset=preset, cfg=cfg, telemetry=telemetry, grid=grid, skipped=skipped, data=data)


def run(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))  # known before any process group: check first
    p = plan(args, world)
    preset, cfg, telemetry, grid, skipped, data = p.preset, p.cfg, p.telemetry, p.grid, p.skipped, p.data
    out = Path(args.out)
    from ..grid.build import set_aside_checkpoints
    from ..grid.printout import print_table
    from ..grid.sweep import run_grid
    from ..grid.tables import results_files
    from ..train.parallel import distributed

    with distributed(cfg.device, cfg.timeout_s) as dist:
        dist.make_groups([spec.world for spec in grid])
        if dist.is_main:
            set_aside_checkpoints(out, grid)
            say(
                f"[{STAGE}] {dist.world} process(es), backend {dist.backend}, {dist.device.type}"
                + (f"; world sizes {skipped} skipped: only {dist.world} launched" if skipped else "")
            )
        params = {"preset": preset, "telemetry": as_dict(telemetry), STAGE: as_dict(cfg)}
        with Tracker(
            "B",
            STAGE,
            preset=preset,
            params=params,
            rank=dist.rank,
            world_size=dist.world,
            devices=device_names(dist.device),
        ) as tracker:
            tracker.parent.set_tags(
                {"sweep": "vgg", "backend": dist.backend, "skipped_world_sizes": ",".join(map(str, skipped)) or "none"}
            )
            results = run_grid(
                grid, data, tracker, out, dist=dist, sync_timing=cfg.sync_timing, sample_interval_s=telemetry.interval_s
            )
            if dist.is_main:
                write_files_atomic(results_files(results, out, headline))
                tracker.parent.log_artifact(out / "runs.csv")
    if dist.is_main:
        print_table(f"{STAGE} ({preset} preset, {dist.world} × {dist.device.type}, {dist.backend})", results, out)
    return 0
