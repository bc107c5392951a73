"""Adaptive batch size: time-to-target of step_growth and noise_scale vs fixed_small, side by side.

The quick classification task of train_adaptive exactly as params.yaml sets it (ResNet-20 on the
real digits, DDP over ``--nproc`` gloo processes on the CPU, or one process per GPU with
``--device cuda``), three schedules × the preset's seeds, all in one launch and trained by the
stage's own code (`adaptive.adaptive_grid`, `sweep.run_grid`, a throwaway MLflow store):

- time-to-target: training time (evaluation excluded) until the test accuracy first reaches
  fixed_small's final accuracy (mean over seeds) minus ``target_tolerance`` (1 point);
- speedup: fixed_small's mean time-to-target ÷ the schedule's;
- final accuracy vs fixed_small's, in points.

    python benchmarks/adaptive.py [--params params.yaml] [--nproc 2] [--device cpu] [--epochs N]

Ends with ``adaptive_speedup: N.NNx (<schedule>)``: the larger speedup of the two schedules whose
mean final accuracy is within 1 point of fixed_small's (if neither is, the larger one, marked so).
Goal: ≥ 1.5x.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEDULES = ("fixed_small", "step_growth", "noise_scale")
ACCURACY_POINTS = 0.01  # the goal's "within 1 point"


def worker(args) -> None:
    import torch

    from dpstudy.config import load_section
    from dpstudy.data.prepared import prepare
    from dpstudy.devices import cpu_name
    from dpstudy.grid.adaptive import adaptive_grid, run_figures, schedule_summary, target
    from dpstudy.grid.build import load_data
    from dpstudy.grid.sweep import run_grid
    from dpstudy.grid.tables import summary_row
    from dpstudy.track.tracking import Tracker
    from dpstudy.train.parallel import distributed

    preset, cfg = load_section("train_adaptive", args.params)
    task = cfg.classification
    if args.epochs:
        task = dataclasses.replace(task, recipe=dataclasses.replace(task.recipe, epochs=args.epochs))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    grid = [s for s in adaptive_grid("classification", task, cfg.seeds, world) if s.schedule in SCHEDULES]
    tmp = Path(args.tmp)
    with distributed(args.device, cfg.timeout_s) as d:
        if d.is_main:
            prepare(task.dataset, raw_dir=tmp / "raw", out_dir=tmp / "data")
        d.barrier()
        data = load_data(tmp / "data", [task.dataset])
        with Tracker(
            "C",
            "benchmark_adaptive",
            preset=preset,
            params={},
            rank=d.rank,
            world_size=d.world,
            uri=f"sqlite:///{tmp / 'mlflow.db'}",
            root=REPO,
        ) as tracker:
            results = run_grid(grid, data, tracker, tmp / "out", dist=d)
        if not d.is_main:
            return
        goal = target(results, task.target_tolerance)
        rows = [{**summary_row(r), **run_figures(r, goal)} for r in results]
        summary = schedule_summary(rows, "accuracy")
        device = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else f"cpu ({cpu_name()})"
        print(
            f"\n{preset} preset: {task.model} on {task.dataset} ({task.input_size}x{task.input_size}), "
            f"{task.recipe.epochs} epochs, seeds {list(cfg.seeds)}, {d.world} process(es) on {device}, "
            f"{d.backend}; torch {torch.__version__}"
        )
        print(f"target: test accuracy {goal:.4f} (fixed_small's final mean - {task.target_tolerance})")
        print(
            f"{'schedule':<12} {'batches':<18} {'final acc':>16} {'steps':>6} {'train s':>8} "
            f"{'to target s':>14} {'speedup':>8}"
        )
        for name in SCHEDULES:
            e = summary[name]
            batches = next(r["batches"] for r in rows if r["schedule"] == name)
            print(
                f"{name:<12} {batches:<18} {e['test_accuracy']:>8.4f} ± {e['test_accuracy_std']:.4f} "
                f"{e['steps']:>6.0f} {e['train_time_s']:>8.1f} "
                f"{e['time_to_target_s']:>7.1f} ± {e['time_to_target_s_std']:<4.1f} {e['speedup']:>7.2f}x"
            )
        base = summary["fixed_small"]["test_accuracy"]
        close = {
            n: summary[n]["speedup"]
            for n in SCHEDULES[1:]
            if base - summary[n]["test_accuracy"] <= ACCURACY_POINTS + 1e-9
        }
        pool = close or {n: summary[n]["speedup"] for n in SCHEDULES[1:]}
        best = max(pool, key=lambda n: -math.inf if math.isnan(pool[n]) else pool[n])
        note = "" if close else ", final accuracy NOT within 1 point of fixed_small"
        print(f"adaptive_speedup: {pool[best]:.2f}x ({best}{note})")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", default=str(REPO / "params.yaml"), help="params file (its preset applies)")
    ap.add_argument("--nproc", type=int, default=2, help="DDP processes (default %(default)s)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cpu: gloo; cuda: one GPU each")
    ap.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (0: as params)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="dpstudy-adaptive-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={args.nproc}",
            "--max-restarts=0",
            __file__,
            "--worker",
            "--tmp",
            tmp,
            "--params",
            args.params,
            "--device",
            args.device,
            "--epochs",
            str(args.epochs),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        sys.exit(subprocess.run(cmd, env=env).returncode)


if __name__ == "__main__":
    main()
