"""Train on one device and under nn.DataParallel (claims A1, A4, B1–B3).

Three grids, each configuration trained by the shared engine and checkpointed every epoch:
LeNet-5 over mode (single | dp) × loader × batch size (A1: utilisation and data wait vs batch
size), LeNet-5 over batch size × lr rule (A4: loss curves and accuracy with and without lr
scaling), and VGG16 over mode × batch size (B1–B3: epoch time, per-device memory and
utilisation). DataParallel spans every visible GPU;
with fewer than two it still runs, on one device, and the run is tagged so. On the CPU it calls
the module itself, so each dp configuration is single's training recorded under its own name
(tag trained_as), not trained twice.

Reads params: preset, telemetry, train_dp. Reads <data>/<dataset>.pt. Writes into <out>:
metrics.json, runs.csv, epochs.csv and checkpoints/<configuration>.pt; MLflow: a parent run in
each study's experiment (A: both LeNet grids, B: VGG16) with a child per configuration. A rerun resumes an interrupted
configuration from its checkpoint and reuses finished ones.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..config import as_dict, load_section
from ..devices import device_names, resolve_device
from ..fsutil import write_files_atomic
from ..track.tracking import SWEEP_STUDY, Tracker
from .args import data_stage_arguments

STAGE = "train_dp"
STUDY = {grid: SWEEP_STUDY[grid] for grid in ("lenet_utilization", "lenet_lr_scaling", "vgg")}  # its grids


def headline(rows: list[dict]) -> dict:
    """metrics.json, what `dvc metrics show` prints (runs.csv's rows in; runs.csv has every figure):

    - A2_wait_share: the standard DataLoader's data-wait share of a step at the largest batch of
      lenet_utilization, mean over modes and seeds;
    - A4_acc_gap: test accuracy at lenet_lr_scaling's largest batch (linear rule) minus at its
      smallest, mean over seeds (negative: the large batch lost accuracy).
    nan where the grid lacks what a figure compares."""
    from ..grid.headline import figure, mean_of

    util = [r for r in rows if r["sweep"] == "lenet_utilization" and r["loader"] == "standard"]
    scaling = [r for r in rows if r["sweep"] == "lenet_lr_scaling"]
    batches = sorted({r["global_batch"] for r in scaling}, key=float)
    gap = float("nan")
    if len(batches) > 1:
        small, large = batches[0], batches[-1]
        gap = mean_of(scaling, "test_accuracy", global_batch=large, lr_rule="linear") - mean_of(
            scaling, "test_accuracy", global_batch=small
        )  # the rules coincide at the smallest
    return {
        "A2_wait_share": figure(
            mean_of(
                util, "data_wait_fraction", global_batch=max((r["global_batch"] for r in util), key=float, default=None)
            )
        ),
        "A4_acc_gap": figure(gap),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    data_stage_arguments(p, STAGE)


def run(args: argparse.Namespace) -> int:
    preset, cfg = load_section(STAGE, args.params)
    _, telemetry = load_section("telemetry", args.params)
    # torch and the engine: only once the params are known to be good
    from ..grid.build import check_batches, check_steps, dp_grid, load_data, set_aside_checkpoints
    from ..grid.cpupool import Pool
    from ..grid.printout import print_table
    from ..grid.sweep import run_grid
    from ..grid.tables import results_files

    device = resolve_device(cfg.device)
    grids = {name: dp_grid(name, getattr(cfg, name), cfg.seeds) for name in STUDY}
    check_steps(STAGE, [spec for grid in grids.values() for spec in grid], device)
    data = load_data(Path(args.data), [getattr(cfg, name).dataset for name in STUDY])
    check_batches(STAGE, [spec for grid in grids.values() for spec in grid], data)
    out = Path(args.out)
    params = {"preset": preset, "telemetry": as_dict(telemetry), STAGE: as_dict(cfg)}
    set_aside_checkpoints(out, [spec for grid in grids.values() for spec in grid])
    results, parents = [], []
    # One pool of CPU workers for every study (`cpupool`), or none on a GPU. Each study's parent run
    # stays open until the tables are written: a stage that fails writing them (a full disk) ends
    # every one of its runs FAILED, not the studies trained first FINISHED.
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(
            Pool(cfg.cpu_processes, data)
            if device.type == "cpu" and cfg.cpu_processes > 1
            else contextlib.nullcontext()
        )
        for study in dict.fromkeys(STUDY.values()):  # one parent run per study's experiment
            names = [name for name in grids if STUDY[name] == study]
            tracker = stack.enter_context(
                Tracker(study, STAGE, preset=preset, params=params, devices=device_names(device))
            )
            tracker.parent.set_tags({"sweep": ",".join(names), "device": str(device)})
            results += run_grid(
                [spec for name in names for spec in grids[name]],
                data,
                tracker,
                out,
                device=device,
                sync_timing=cfg.sync_timing,
                sample_interval_s=telemetry.interval_s,
                cpu_processes=cfg.cpu_processes,
                pool=pool,
            )
            parents.append(tracker.parent)
        # Only now, with every grid done: the tables change together, never to a partial set.
        write_files_atomic(results_files(results, out, headline))
        for parent in parents:
            parent.log_artifact(out / "runs.csv")
    print_table(f"{STAGE} ({preset} preset, {device})", results, out)
    return 0
