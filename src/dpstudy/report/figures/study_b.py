"""Study B's figures: epoch time and speed-up against devices, DataParallel vs DDP (B1/B3/B4), the
per-device load (B2) and DDP's accuracy as processes are added (B5)."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator

from ..stats import Stat, mean_std, ratios
from ..tables import Tables, per_device, with_runs
from .common import (
    MEMORY_NOTE,
    VGG,
    Sizes,
    accuracy_axis,
    band,
    colors,
    cycle,
    devices_label,
    empty,
    epoch_axis,
    errorbar,
    figure,
    footnote,
    legend,
    log2_axis,
    seed_means,
    seeds_note,
    stats_by,
    sweep,
    test_images,
    test_set,
    what,
)

EPOCH_TIME = "epoch_time_s"


def b1_b4(t: Tables, sizes: Sizes) -> Figure:
    dp, ddp = sweep(t, "train_dp/runs.csv", VGG), sweep(t, "train_ddp/runs.csv", VGG)
    fig, (time_ax, speed_ax) = figure(
        1, 2, f"B1/B3/B4 — epoch time vs devices: DataParallel vs DDP{what(dp if not dp.empty else ddp)}", (13, 5.6)
    )
    dp_mode = dp[dp["mode"] == "dp"]
    one_device_dp = not dp_mode.empty and bool((dp_mode["devices"] <= 1).all())
    single_by_batch, devices = _dataparallel(time_ax, speed_ax, dp, one_device_dp)
    notes = _ddp(time_ax, speed_ax, ddp, single_by_batch, devices)
    top = max(devices)
    speed_ax.axhline(1.0, color="0.5", linewidth=1, linestyle="-", alpha=0.6)
    speed_ax.plot([1, top], [1, top], color="0.5", linestyle=":", label="ideal (linear)")
    time_ax.set(
        title="B1/B4: seconds per epoch (lower is better)",
        xlabel="devices (GPUs or processes)",
        ylabel="epoch time (s)",
    )
    time_ax.set_ylim(bottom=0)
    speed_ax.set(
        title="speed-up against two baselines (B3: at each batch size)",
        xlabel="devices (GPUs or processes)",
        ylabel="speed-up (×): baseline's epoch time / on N",
    )
    speed_ax.set_ylim(bottom=0)
    for ax in (time_ax, speed_ax):
        log2_axis(ax, devices)
        if one_device_dp and top <= 1:  # room for the two points set apart at x = 1
            ax.set_xlim(2**-0.5, 2**0.5)
        legend(ax, loc="upper left" if ax is speed_ax else "best")  # above the ideal line: an unlikely place
    if dp.empty and ddp.empty:
        empty(time_ax, "vgg runs of train_dp or train_ddp")
    footnote(
        fig,
        "DataParallel splits one global batch over the GPUs (speed-up: the single-device run at the same "
        "batch / DataParallel); DDP keeps the per-process batch, so the global batch grows with the "
        "processes",
        "DDP's speed-up against two baselines: the single-device run (train_dp) at its per-process batch, and "
        "DDP with 1 process, which carries DDP's own overheads (process group, gradient all-reduce)"
        + (": " + "; ".join(notes) if notes else ""),
        f"{seeds_note(dp, ddp)}; speed-ups are taken seed by seed; DDP: each seed's epoch time "
        "averaged over its lr rules first (a rule does not change an epoch's work)",
        "DataParallel saw fewer than 2 GPUs here: it ran on 1 device, beside the single-device run"
        if one_device_dp
        else "",
    )
    return fig


def _dataparallel(time_ax, speed_ax, dp: pd.DataFrame, one_device_dp: bool) -> tuple[dict, list[float]]:
    """The single-device and DataParallel points per global batch; returns each batch's single-device
    epoch time per seed (DDP's second baseline) and the device counts drawn."""
    # DataParallel on one device sits at x = 1 beside the single-device run: set the two a little apart
    # (and never join them: a vertical join would read as an error bar)
    left, right = (2**-0.07, 2**0.07) if one_device_dp else (1.0, 1.0)
    single_by_batch, devices = {}, [1.0]
    batches = sorted(set(dp["global_batch"]))
    for b, color in zip(batches, colors(len(batches), "Oranges", 0.55, 0.95)):
        mine = dp[dp["global_batch"] == b]
        single = seed_means(mine[mine["mode"] == "single"], EPOCH_TIME)
        multi_rows = mine[mine["mode"] == "dp"]
        multi = seed_means(multi_rows, EPOCH_TIME)
        n = max(multi_rows["devices"], default=math.nan)
        single_by_batch[b] = single
        if single:
            errorbar(
                time_ax, {left: mean_std(single.values())}, f"single device, batch {b:g}", color=color, linestyle="none"
            )
        if not multi:
            continue
        x = n * (right if n <= 1 else 1.0)
        errorbar(
            time_ax,
            {x: mean_std(multi.values())},
            f"DataParallel ×{n:g}, batch {b:g}",
            color=color,
            marker="D",
            linestyle="none",
        )
        devices.append(n)
        if single and n > 1:  # the scaling step from one device to n
            time_ax.plot(
                [1, n],
                [mean_std(single.values()).mean, mean_std(multi.values()).mean],
                color=color,
                linewidth=1.2,
                alpha=0.7,
            )
        if single:
            speedup = ratios(single, multi)
            errorbar(
                speed_ax,
                {x: speedup},
                f"DataParallel ×{n:g} vs single device, batch {b:g}",
                color=color,
                marker="D",
                linestyle="none",
            )
            if n > 1:
                speed_ax.plot([1, n], [1, speedup.mean], color=color, linewidth=1.2, alpha=0.7)
    return single_by_batch, devices


def _per_rank_batch(runs: pd.DataFrame) -> list[float]:
    """Each DDP run's batch per process (its global batch over the world size where not recorded)."""
    return [b if math.isfinite(b) else g / w for b, g, w in zip(runs["batch"], runs["global_batch"], runs["world"])]


def _ddp(time_ax, speed_ax, ddp: pd.DataFrame, single_by_batch: dict, devices: list[float]) -> list[str]:
    """DDP's epoch times per world size and its speed-ups against both baselines, per per-process
    batch; adds the world sizes to ``devices``; returns the 1-process-vs-single notes."""
    notes = []
    ddp = ddp.assign(per_rank=_per_rank_batch(ddp))
    per_rank = sorted(set(ddp["per_rank"]))
    blues, purples = colors(len(per_rank), "Blues", 0.6, 0.95), colors(len(per_rank), "Purples", 0.6, 0.95)
    for b, blue, purple in zip(per_rank, blues, purples):
        mine = ddp[ddp["per_rank"] == b]
        # each seed's epoch time, averaged over its lr rules first: bars are a spread over seeds only
        by_world = {w: seed_means(rows, EPOCH_TIME) for w, rows in mine.groupby("world", sort=True)}
        devices += list(by_world)
        errorbar(
            time_ax,
            {w: mean_std(s.values()) for w, s in by_world.items()},
            f"DDP, batch {b:g} per process",
            color=blue,
            marker="s",
            linestyle="--",
        )
        one = by_world.get(1.0)
        if one:
            errorbar(
                speed_ax,
                {w: Stat(1.0, math.nan, len(one)) if w == 1.0 else ratios(one, s) for w, s in by_world.items()},
                f"DDP vs DDP with 1 process, batch {b:g} per process",
                color=blue,
                marker="s",
                linestyle="--",
            )
        single = single_by_batch.get(b)
        if single:
            errorbar(
                speed_ax,
                {w: ratios(single, s) for w, s in by_world.items()},
                f"DDP vs single device, batch {b:g} per process",
                color=purple,
                marker="^",
                linestyle="-",
            )
        if one and single:
            t1, t0 = mean_std(one.values()).mean, mean_std(single.values()).mean
            notes.append(
                f"batch {b:g}: DDP with 1 process {t1:.2f} s/epoch vs the single-device run {t0:.2f} s "
                f"({ratios(one, single).mean:.2f}× its time, seed by seed)"
            )
    return notes


def _device_stats(rows: pd.DataFrame, column: str) -> list[Stat]:
    """Per device index: each seed's value (averaged over its lr rules first), then mean ± std over seeds."""
    long = per_device(rows, column)
    n = int(long["device"].max()) + 1 if not long.empty else 0
    return [mean_std(seed_means(long[long["device"] == d], column).values()) for d in range(n)]


def b2(t: Tables, sizes: Sizes) -> Figure:
    dp = sweep(t, "train_dp/runs.csv", VGG)
    dp = dp[dp["mode"] == "dp"]
    ddp = sweep(t, "train_ddp/runs.csv", VGG)
    top = max(ddp["world"], default=math.nan)
    ddp = ddp[ddp["world"] == top]
    configs = [
        (f"DataParallel ×{devices_label(rows)}, batch {b}", rows) for b, rows in dp.groupby("global_batch", sort=False)
    ]
    configs += [(f"DDP ×{top:g}, batch {b} per process", rows) for b, rows in ddp.groupby("batch", sort=False)]
    fig, axes = figure(
        1, 2, f"B2 — per-device load: DataParallel vs DDP{what(dp if not dp.empty else ddp)}", (12.5, 5.2)
    )
    width = 0.8 / max(len(configs), 1)
    for ax, column, title, ylabel in (
        (axes[0], "device_mem_mib", "memory per device", "peak memory (MiB)"),
        (axes[1], "utilization_pct", "utilization per device", "utilization (%)"),
    ):
        most = 1
        for i, (label, rows) in enumerate(configs):
            stats = _device_stats(rows, column)
            most = max(most, len(stats))
            if stats:
                _device_bars(
                    ax,
                    stats,
                    [d + (i - (len(configs) - 1) / 2) * width for d in range(len(stats))],
                    width,
                    cycle(i),
                    label if ax is axes[0] else None,
                )
        ax.xaxis.set_major_locator(FixedLocator(range(most)))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.set(title=title, xlabel="device index (0: DataParallel's output device, DDP rank 0)", ylabel=ylabel)
        ax.margins(y=0.2)
        if not configs:
            empty(ax, "DataParallel or DDP vgg runs")
    axes[1].set_ylim(0, 120)
    axes[1].yaxis.set_major_locator(FixedLocator(range(0, 101, 20)))
    if configs:
        fig.legend(loc="outside right center", fontsize=9)
    footnote(
        fig,
        MEMORY_NOTE,
        "the r× over device 0: device 0 / mean of the other devices; DDP at its largest world "
        f"size; bars: {seeds_note(dp, ddp)} (DDP: each seed averaged over its lr "
        "rules first)",
    )
    return fig


def _device_bars(ax, stats: list[Stat], xs: list[float], width: float, color, label: str | None) -> None:
    """One configuration's bars, one per device, and device 0's ratio to the mean of the others above it."""
    err = [s.std for s in stats]
    ax.bar(
        xs,
        [s.mean for s in stats],
        width,
        yerr=err if any(math.isfinite(e) for e in err) else None,
        capsize=3,
        color=color,
        label=label,
    )
    others = mean_std(s.mean for s in stats[1:]).mean
    if len(stats) > 1 and others > 0:  # device 0 against the mean of the others, above device 0's bar
        top0 = stats[0].mean + (stats[0].std if math.isfinite(stats[0].std) else 0)
        ax.annotate(
            f"{stats[0].mean / others:.2f}×",
            (xs[0], top0),
            xytext=(0, 7),  # clear of the cap
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8.5,
        )


def b5(t: Tables, sizes: Sizes) -> Figure:
    runs = sweep(t, "train_ddp/runs.csv", VGG)
    pairs = with_runs(t["train_ddp/epochs.csv"][["series", "epoch", "test_accuracy"]], runs, on="series")
    fig, (final, curves) = figure(1, 2, f"B5 — DDP accuracy as processes are added{what(runs)}", (12.5, 5))
    for i, (rule, rows) in enumerate(runs.groupby("lr_rule", sort=False)):
        errorbar(final, stats_by(rows, "world", "test_accuracy"), f"lr rule: {rule}", color=cycle(i))
    worlds = sorted(set(runs["world"]))
    log2_axis(final, worlds)
    globals_ = {w: runs.loc[runs["world"] == w, "global_batch"].iloc[0] for w in worlds}
    final.xaxis.set_major_formatter(lambda v, _: f"{v:g}\n(batch {globals_.get(v, math.nan):g})")
    final.set(title="final test accuracy", xlabel="processes (world size) and global batch", ylabel="test accuracy")
    color = dict(zip(worlds, colors(len(worlds))))
    for (world, rule), mine in pairs.groupby(["world", "lr_rule"], sort=False):
        stats = stats_by(mine, "epoch", "test_accuracy")
        label = f"{world:g} process{'es' if world != 1 else ''}, lr rule {rule}"
        band(curves, list(stats), list(stats.values()), label, color[world], linestyle="-" if rule != "none" else "--")
    curves.set(title="test accuracy per epoch", ylabel="test accuracy")
    epoch_axis(curves)
    images = test_images(runs, sizes)
    for ax in (final, curves):
        accuracy_axis(ax, images=images)
        legend(ax, loc="lower right")
    if runs.empty:
        empty(final, "train_ddp vgg runs")
    footnote(
        fig,
        "per-process batch fixed, so the global batch grows with the world size; lr rule none keeps "
        f"the base rate (dashed), linear scales it with the global batch (solid); {seeds_note(runs)}",
        test_set(images),
    )
    return fig
