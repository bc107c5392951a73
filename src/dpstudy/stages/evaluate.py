"""Score every trained model on its held-out test split (all studies).

Loads each checkpoint train_dp, train_ddp and train_adaptive wrote, rebuilds the model from what
the checkpoint records and computes test accuracy (classification) or PSNR (restoration, with the
bicubic baseline beside it) on the dataset's test split, never on training data. Each figure is
checked against the one the training stage reported after its last epoch.

Reads params: preset, evaluate. Reads <results>/<training stage>/checkpoints/*.pt and
<data>/<dataset>.pt. Writes into <out>: metrics.json (``mismatched``: checkpoints whose figure
differs from training's; what `dvc metrics show` prints) and evaluations.csv (one row per
checkpoint, with its test figure and the agreement check). MLflow: an `evaluate` parent run in each study, and
eval_test_<metric> / eval_test_loss added to every configuration's run of its training stage.

evaluations.csv is the record: it is written first, from the checkpoints alone. A configuration
whose training run is not in the store (mlflow.db deleted or replaced since training) gets its
figures on a child run of evaluate's own instead (tag training_run: not in store), and one line
says how many and where.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import as_dict, load_section
from ..console import format_table, progress, say
from ..devices import device_names, resolve_device
from ..fsutil import csv_text, json_text, write_files_atomic
from ..track.tracking import Tracker
from .args import data_stage_arguments

STAGE = "evaluate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    data_stage_arguments(p, STAGE)
    p.add_argument("--results", default="results", help="folder of the training stages' results (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    preset, cfg = load_section(STAGE, args.params)
    from ..evaluation import Evaluator, find_checkpoints, headline  # torch: once the params are good

    device = resolve_device(cfg.device)
    checkpoints = find_checkpoints(Path(args.results))  # all found before any work
    score = Evaluator(Path(args.data), device)
    evaluations = [score(stage, path) for stage, path in progress(checkpoints, desc=STAGE)]
    out = Path(args.out)
    write_files_atomic(
        {
            out / "evaluations.csv": csv_text([e.row() for e in evaluations]),
            out / "metrics.json": json_text(headline(evaluations)),
        }
    )
    _log_runs(evaluations, preset, {"preset": preset, STAGE: as_dict(cfg)}, device, out)
    _print_summary(evaluations, preset, device, out)
    return 0


def _log_runs(evaluations: list, preset: str, params: dict, device, out: Path) -> None:
    """Each figure on its configuration's training run, or on a child run of evaluate's own when the
    store does not hold that run (one line says how many); evaluations.csv on each study's parent."""
    orphans: list = []  # evaluations whose training run the store does not hold
    for study in dict.fromkeys(e.study for e in evaluations):
        with Tracker(study, STAGE, preset=preset, params=params, devices=device_names(device)) as tracker:
            for e in (e for e in evaluations if e.study == study):
                figures = {f"eval_test_{e.metric}": e.test_metric, "eval_test_loss": e.test_loss}
                run = tracker.find(e.name, e.stage)
                if run.active or not tracker.parent.active:
                    run.log_metrics(figures, step=e.epochs)
                    continue
                orphans.append(e)
                with tracker.child(
                    e.name,
                    {"training_stage": e.stage, "checkpoint": e.checkpoint},
                    tags={"training_stage": e.stage, "training_run": "not in store"},
                ) as own:
                    own.log_metrics(figures, step=e.epochs)
            tracker.parent.log_metrics({"checkpoints": sum(e.study == study for e in evaluations)}, step=0)
            tracker.parent.log_artifact(out / "evaluations.csv")
    if orphans:
        n, stages = len(orphans), ", ".join(dict.fromkeys(e.stage for e in orphans))
        say(
            f"[mlflow] the training runs of {n} configuration{'s' if n != 1 else ''} of {stages} are not in "
            f"{tracker.uri} (deleted or replaced since training?): their eval_test figures are logged on "
            f"evaluate's own runs instead; {out / 'evaluations.csv'} has every figure"
        )


def _print_summary(evaluations: list, preset: str, device, out: Path) -> None:
    from ..evaluation import checks

    check = checks(evaluations)
    print(f"\n{STAGE} ({preset} preset, {device}): {check['checkpoints']} checkpoints on their test splits")
    print(
        format_table(
            ["stage", "configuration", "seed", "test", "at training", "agrees"],
            [
                (
                    e.stage,
                    f"{e.sweep}-{e.configuration}",
                    e.seed,
                    _figure(e.metric, e.test_metric),
                    _figure(e.metric, e.trained_metric),
                    "yes" if e.agrees else "NO",
                )
                for e in evaluations
            ],
        )
    )
    if check["agree_with_training"] != check["checkpoints"]:
        say(
            f"warning: {check['checkpoints'] - check['agree_with_training']} checkpoint(s) score differently "
            f"from what training reported (max difference {check['max_abs_difference']})"
        )
    print(f"\nfiles: {out}/metrics.json, evaluations.csv; figures in each configuration's MLflow run")


def _figure(metric: str, value: float) -> str:
    return f"{value:.4f}" if metric == "accuracy" else f"{value:.2f} dB"
