"""A stage's headline figures: metrics.json's (each stage's ``headline`` builds them from runs.csv's
rows with `mean_of` and `figure`), and those its MLflow parent run carries per grid
(`log_headline`), so stage executions can be compared in the experiment's chart view."""

from __future__ import annotations

import math

from ..track.tracking import Tracker
from ..train.engine import Result
from ..train.tasks import TASKS
from .means import finite_mean, measured_mean
from .tables import summary_row


def mean_of(rows: list[dict], column: str, **where) -> float:
    """The mean of ``column`` over the rows whose fields equal ``where``'s; nan if none (or any nan)."""
    return finite_mean(float(r[column]) for r in rows if all(r.get(k) == v for k, v in where.items()))


def figure(value: float, digits: int = 4) -> float:
    """A headline figure as metrics.json keeps it: rounded (nan stays nan)."""
    return round(value, digits) if math.isfinite(value) else math.nan


def log_headline(tracker: Tracker, results: list[Result]) -> None:
    """The stage's headline figures on its parent run, per grid (``<sweep>/<figure>``):
    configurations, how many diverged, the best and mean final test figure, mean throughput and
    total training time."""
    grids: dict[str, list[dict]] = {}
    for result in results:
        grids.setdefault(result.spec.sweep, []).append(summary_row(result))
    figures = {}
    for sweep, rows in grids.items():
        metric = f"test_{TASKS[rows[0]['task']].metric}"
        tested = [r[metric] for r in rows if r[metric] == r[metric]]  # NaN: diverged, never tested
        speeds = [r["images_per_s"] for r in rows if r["images_per_s"] == r["images_per_s"]]
        figures.update(
            {
                f"{sweep}/configurations": len(rows),
                f"{sweep}/diverged": sum(r["outcome"] == "diverged" for r in rows),
                f"{sweep}/train_time_s": sum(r["train_time_s"] for r in rows),
                **(
                    {f"{sweep}/best_{metric}": max(tested), f"{sweep}/mean_{metric}": measured_mean(tested)}
                    if tested
                    else {}
                ),
                **({f"{sweep}/mean_images_per_s": measured_mean(speeds)} if speeds else {}),
            }
        )
    tracker.parent.log_metrics(figures, step=0)
