"""What a person reads of a grid as it runs: one line per finished configuration, and the
stage's closing table of what it measured and where the files went."""

from __future__ import annotations

from pathlib import Path

from ..console import format_table
from ..train.engine import Result
from ..train.tasks import TASKS
from .tables import summary_row


def test_figure(result: Result) -> str:
    """The final test figure as a person reads it: ``accuracy 0.981`` or ``PSNR 24.31 dB``."""
    metric = TASKS[result.spec.task].metric
    value = result.final.get(f"test_{metric}", float("nan"))
    return f"accuracy {value:.3f}" if metric == "accuracy" else f"PSNR {value:.2f} dB"


def one_line(result: Result) -> str:
    """A finished configuration in one line: outcome, test figure, throughput, epochs restored."""
    f = result.final
    state = result.outcome if result.outcome != "diverged" else f"diverged at step {result.diverged_step}"
    resumed = f", {result.restored_epochs} epochs from checkpoint" if result.restored_epochs else ""
    return (
        f"[{result.spec.sweep}] {result.spec.name}: {state}, test {test_figure(result)}, "
        f"{f.get('images_per_s', 0):,.0f} images/s{resumed}"
    )


def print_table(title: str, results: list[Result], out: Path) -> None:
    """The stage's closing table: one row per configuration, then where its files are."""
    print(f"\n{title}")
    print(
        format_table(
            ["configuration", "outcome", "test", "epoch s", "images/s", "data wait", "memory MiB"],
            [
                (
                    r["name"],
                    r["outcome"],
                    test_figure(result),
                    r["epoch_time_s"],
                    r["images_per_s"],
                    f"{r['data_wait_fraction']:.1%}",
                    r["device_mem_mib"],
                )
                for r, result in zip(map(summary_row, results), results)
            ],
        )
    )
    print(f"\nfiles: {out}/metrics.json, runs.csv, epochs.csv, checkpoints/; runs in MLflow")
