"""Study C's figures: adaptive batch-size schedules against fixed ones, for classification (C1–C3)
and 2× image restoration (C4): progress per step and per second, the schedules themselves, time
to the target and throughput."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, PercentFormatter

from ..stats import mean_std
from ..tables import ADAPTIVE, Tables, num, with_runs
from .common import (
    METRIC,
    Sizes,
    band,
    cycle,
    empty,
    epoch_axis,
    figure,
    footnote,
    log2_axis,
    seeds_note,
    stats_by,
    what,
)


def c1_c3(t: Tables, sizes: Sizes) -> Figure:
    return _adaptive(t, "classification", "C1–C3 — adaptive batch size, classification", "C3")


def c4(t: Tables, sizes: Sizes) -> Figure:
    return _adaptive(t, "restoration", "C4 — adaptive batch size, 2× image restoration", "C4")


def _adaptive(t: Tables, task: str, title: str, claim: str) -> Figure:
    runs, epochs = t[f"{ADAPTIVE}/{task}/runs.csv"], t[f"{ADAPTIVE}/{task}/epochs.csv"]
    summary = t[f"{ADAPTIVE}/summary.csv"]
    summary = summary[summary["task"] == task]
    metric = "psnr" if not epochs.empty and "test_psnr" in epochs else "accuracy"
    fig, axes = figure(2, 3, f"{title}{what(runs)}", (15.5, 9))
    by_steps, by_time, ttt, batch_ax, lr_ax, rate = axes
    schedules = list(dict.fromkeys([*runs["schedule"], *summary["schedule"]]))
    color = {s: cycle(i) for i, s in enumerate(schedules)}
    _curves(axes, with_runs(epochs, runs, on="series"), schedules, color, f"test_{metric}")
    goal = mean_std(runs["target"]).mean
    for ax in (by_steps, by_time):
        if math.isfinite(goal):
            ax.axhline(goal, color="0.3", linestyle=":", linewidth=1.2, label=f"target {goal:.3g}")
        if metric == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
        ax.set_ylabel(METRIC[metric])
    by_steps.set(title="progress per optimizer step", xlabel="optimizer steps (cumulative)")
    by_time.set(title="progress per training second", xlabel="training time (s, cumulative, evaluation excluded)")
    batch_ax.set(title="global batch size per epoch", ylabel="global batch (images)")
    log2_axis(batch_ax, epochs["global_batch"], axis="y")
    lr_ax.set(title="learning rate per epoch (at epoch end)", ylabel="learning rate (log)", yscale="log")
    for ax in (batch_ax, lr_ax):
        epoch_axis(ax)
    summary_bars(
        ttt,
        summary,
        "time_to_target_s",
        color,
        "training time to reach the target (s)",
        "time to target (× = speed-up)",
    )
    summary_bars(
        rate, summary, "run_images_per_s", color, "images/s over the run", f"throughput ({claim}: higher is better)"
    )
    handles, labels = by_steps.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=9.5)
    else:
        empty(by_steps, f"{task} runs")
    footnote(
        fig,
        f"{seeds_note(runs)} (band/bars); batch and lr: one line per seed (line style); target: "
        "fixed small's final figure (mean over seeds) minus the tolerance; a growing batch takes fewer, "
        "larger steps",
        "time to target: mean over seeds where every seed reached the target; otherwise no bar, and how many "
        "seeds reached it (a mean curve can end above the target while a seed's did not)",
    )
    return fig


def _curves(axes: list, pairs: pd.DataFrame, schedules: list[str], color: dict, value: str) -> None:
    """Per schedule: the metric per step and per second (mean ± std over seeds, per epoch), and each
    seed's batch and learning rate per epoch."""
    by_steps, by_time, _, batch_ax, lr_ax, _ = axes
    for schedule in schedules:
        rows = pairs[pairs["schedule"] == schedule]
        label = schedule.replace("_", " ")
        if not rows.empty:
            values = list(stats_by(rows, "epoch", value).values())
            band(
                by_steps,
                [s.mean for s in stats_by(rows, "epoch", "cum_steps").values()],
                values,
                label,
                color[schedule],
            )
            band(
                by_time,
                [s.mean for s in stats_by(rows, "epoch", "cum_time_s").values()],
                values,
                label,
                color[schedule],
            )
        # batch and lr change in discrete steps that differ between seeds: one line per seed
        for i, (_, seed_rows) in enumerate(rows.groupby("series", sort=False)):
            style = dict(
                color=color[schedule],
                drawstyle="steps-mid",
                linewidth=1.8,
                linestyle=("-", "--", ":", "-.")[i % 4],
                label=label if i == 0 else None,
            )
            batch_ax.plot(seed_rows["epoch"].tolist(), seed_rows["global_batch"].tolist(), **style)
            lr_ax.plot(seed_rows["epoch"].tolist(), seed_rows["lr"].tolist(), **style)


def summary_bars(ax, summary: pd.DataFrame, column: str, color: dict, ylabel: str, title: str) -> None:
    """One bar per schedule from summary.csv (mean ± std), noted with its speed-up, all-reduces or miss."""
    names = list(summary["schedule"])
    means = [float(v) for v in summary[column]]
    stds = [float(v) for v in summary[f"{column}_std"]]
    shown = [m if math.isfinite(m) else 0.0 for m in means]
    err = [s if math.isfinite(s) and s > 0 else math.nan for s in stds]
    ax.bar(
        range(len(names)),
        shown,
        yerr=err if any(math.isfinite(e) for e in err) else None,
        capsize=4,
        color=[color.get(n, "0.5") for n in names],
    )
    for i, ((_, row), mean) in enumerate(zip(summary.iterrows(), means)):
        if not math.isfinite(mean):
            note = reached(row) if column == "time_to_target_s" else "not measured"
        elif column == "time_to_target_s":
            note = f"{num(row['speedup']):.2f}×"
        else:
            note = f"{num(row['allreduces']):.0f}\nall-reduces"
        top = shown[i] + (err[i] if math.isfinite(err[i]) else 0)
        ax.annotate(note, (i, top), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=9)
    ax.xaxis.set_major_locator(FixedLocator(range(len(names))))
    ax.xaxis.set_major_formatter(lambda v, _: names[int(v)].replace("_", " ") if 0 <= v < len(names) else "")
    ax.set(title=title, ylabel=ylabel)
    ax.margins(y=0.15)
    if not names:
        empty(ax, "summary.csv rows")


def reached(row: Mapping) -> str:
    """The note of a schedule with no mean time to target: how many of its seeds reached it."""
    k, n = num(row.get("reached_target", "")), num(row.get("seeds", ""))
    if not (math.isfinite(k) and math.isfinite(n) and n > 0):
        return "not reached"
    if k == 0:
        return f"not reached\n(0 of {n:.0f} seed{'s' if n != 1 else ''})"
    return f"reached by\n{k:.0f} of {n:.0f} seeds"
