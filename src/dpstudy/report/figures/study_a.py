"""Study A's figures: utilization and data wait against batch size (A1/A2), the CUDA-graph probes
(X1), DataLoader workers (A3) and learning-rate scaling (A4)."""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, PercentFormatter

from ..stats import Stat
from ..tables import Tables, with_runs
from .common import (
    LOADER,
    LR_SCALING,
    MODE,
    UTILIZATION,
    Sizes,
    accuracy_axis,
    band,
    colors,
    cycle,
    device_mean,
    devices_label,
    empty,
    epoch_axis,
    errorbar,
    figure,
    footnote,
    legend,
    log2_axis,
    log10_labels,
    seeds_note,
    stats_by,
    sweep,
    test_images,
    test_set,
    what,
)

PROBES = "profile_dataloader/probes.csv"


def _util_source(tables: Tables) -> str:
    sources = set(tables[PROBES]["utilization_source"])
    return {"cpu_util_pct": "system CPU (no GPU visible)", "gpu_util_pct": "GPU (NVML)"}.get(
        "".join(sources) if len(sources) == 1 else "", "GPU (NVML) or system CPU"
    )


def a1_a2(t: Tables, sizes: Sizes) -> Figure:
    runs, probes = sweep(t, "train_dp/runs.csv", UTILIZATION), t[PROBES]
    runs = runs.assign(device_util=device_mean(runs, "utilization_pct"))
    fig, (util, wait) = figure(1, 2, f"A1/A2 — utilization and data wait vs batch size{what(runs)}", (12, 4.6))
    color = {name: cycle(i) for i, name in enumerate(dict.fromkeys([*runs["loader"], *probes["loader"]]))}
    for (mode, loader), rows in runs.groupby(["mode", "loader"], sort=False):
        devices = f" ×{devices_label(rows)}" if mode != "single" else ""
        label = f"{MODE.get(mode, mode)}{devices}, {LOADER.get(loader, loader)}"
        style = dict(
            color=color[loader], linestyle="-" if mode == "single" else "--", marker="o" if mode == "single" else "s"
        )
        errorbar(wait, stats_by(rows, "global_batch", "data_wait_fraction"), label, **dict(style))
        errorbar(util, stats_by(rows, "global_batch", "device_util"), label, **dict(style))
    for (loader, step), rows in probes.groupby(["loader", "step"], sort=False):
        graph = ", CUDA graph" if step == "graph" else ""
        label = f"probe (profile_dataloader), {LOADER.get(loader, loader)}{graph}"
        style = dict(
            color=color[loader],
            linestyle=":" if step == "eager" else "-.",
            marker="x" if step == "eager" else "*",
            alpha=0.8,
        )
        errorbar(wait, stats_by(rows, "batch_size", "data_wait_fraction"), label, **dict(style))
        errorbar(util, stats_by(rows, "batch_size", "utilization_pct"), label, **dict(style))
    wait.set(
        title="A2: share of each step spent waiting for the next batch",
        xlabel="global batch size (images)",
        ylabel="data-wait fraction of step time",
    )
    wait.yaxis.set_major_formatter(PercentFormatter(1.0))
    wait.set_ylim(bottom=0)
    util.set(
        title=f"A1: utilization, {_util_source(t)}",
        xlabel="global batch size (images)",
        ylabel="utilization (%, mean over devices)",
        ylim=(0, 105),
    )
    for ax in (wait, util):
        log2_axis(ax, [*runs["global_batch"], *probes["batch_size"]])
    if runs.empty and probes.empty:
        empty(wait, "train_dp lenet_utilization runs")
    legend(util, loc="best")
    footnote(
        fig,
        f"train_dp runs: {seeds_note(runs)}; ×N: devices DataParallel used; dotted (dash-dot: CUDA-graph "
        f"step): profile_dataloader's short training probes (mean over their repeats); a utilization "
        f"missing from a line: its window was too short for NVML's averaging period",
    )
    return fig


def x1(t: Tables, sizes: Sizes) -> Figure:
    probes = t[PROBES]
    gpu = any(source.startswith("gpu") for source in probes["utilization_source"])
    fig, (util, busy) = figure(
        1, 2, "X1 — utilization vs batch size: eager vs CUDA-graph steps (training probes)", (12, 4.6)
    )
    util.set(
        title="NVML utilization over the timed steps",
        xlabel="batch size (images)",
        ylabel="utilization (%)",
        ylim=(0, 105),
    )
    busy.set(
        title="device busy share (profiler: kernels over the window)",
        xlabel="batch size (images)",
        ylabel="busy (% of the window)",
        ylim=(0, 105),
    )
    if not gpu:  # the CPU's utilization says nothing about a GPU's: no lines at all
        for ax in (util, busy):
            ax.text(
                0.5,
                0.5,
                "not testable here: no GPU was visible to this run\n(X1 is about a GPU's utilization)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="0.4",
            )
        return fig
    for i, ((loader, step), rows) in enumerate(probes.groupby(["loader", "step"], sort=False)):
        label = f"{LOADER.get(loader, loader)}, {'CUDA graph' if step == 'graph' else 'eager'} step"
        style = dict(
            color=cycle(["standard", "resident"].index(loader) if loader in ("standard", "resident") else i),
            linestyle="-" if step == "graph" else ":",
            marker="*" if step == "graph" else "o",
        )
        errorbar(util, stats_by(rows, "batch_size", "utilization_pct"), label, **dict(style))
        errorbar(busy, stats_by(rows, "batch_size", "device_busy_pct"), label, **dict(style))
    for ax in (util, busy):
        log2_axis(ax, probes["batch_size"])
    legend(util, loc="best")
    footnote(
        fig,
        "profile_dataloader's probes, mean ± std over their repeats; a missing point: a window too short "
        "for NVML's averaging period (left) or no device activity recorded (right)",
    )
    return fig


def a3(t: Tables, sizes: Sizes) -> Figure:
    workers = t["profile_dataloader/workers.csv"]
    throughput = t["profile_dataloader/throughput.csv"]
    fig, (ax, rel) = figure(1, 2, "A3 — data-loading throughput vs DataLoader worker processes", (12, 4.8))
    batches = sorted({int(b) for b in workers["batch_size"]})
    names = {b: f"batch {b}" for b in batches}
    color = dict(zip(batches, colors(len(batches))))
    for b, name in names.items():
        stats = stats_by(workers[workers["batch_size"] == b], "num_workers", "images_per_s")
        errorbar(ax, stats, f"standard DataLoader, {name}", color=color[b])
        base = stats.get(0)
        if base and math.isfinite(base.mean) and base.mean > 0:
            errorbar(
                rel,
                {w: Stat(s.mean / base.mean, s.std / base.mean, s.n) for w, s in stats.items()},
                name,
                color=color[b],
            )
    for row in throughput[throughput["series"] == "resident"].itertuples():  # needs no workers: a reference
        b = row.batch_size
        ax.axhline(
            row.images_per_s,
            color=color.get(int(b), "0.4"),
            linestyle="--",
            linewidth=1.2,
            label=f"resident tensors, batch {b:g} (no workers)",
        )
    if workers.empty:
        empty(ax, "profile_dataloader workers.csv")
    ticks = sorted(set(workers["num_workers"])) or [0]
    for axis in (ax, rel):
        axis.xaxis.set_major_locator(FixedLocator(ticks))
        axis.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
        axis.set_xlabel("DataLoader num_workers (worker processes)")
    rel.axhline(1.0, color="0.5", linestyle=":", linewidth=1)
    ax.set(ylabel="images/s delivered to the device (log)", yscale="log", title="images/s per loader")
    log10_labels(ax)
    rel.set(ylabel="images/s relative to num_workers=0 (×)", title="standard loader: gain from workers")
    # under its panel, in two columns: beside the panel it would squeeze it
    legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    legend(rel)
    repeats = int(workers.groupby(["series", "num_workers"]).size().max()) if not workers.empty else 0
    footnote(
        fig,
        "standard DataLoader: per-image PIL transforms in worker processes; resident tensors: the "
        "dataset in device memory, augmented per batch on the device",
        "one measurement per point: no error bars"
        if repeats == 1
        else f"mean over {repeats} repeated measurements per point, ± one std"
        if repeats
        else "",
    )
    return fig


def a4(t: Tables, sizes: Sizes) -> Figure:
    runs = sweep(t, "train_dp/runs.csv", LR_SCALING)
    pairs = with_runs(t["train_dp/epochs.csv"][["series", "epoch", "train_loss"]], runs, on="series")
    rules = list(dict.fromkeys(runs["lr_rule"])) or ["none"]
    fig = Figure(figsize=(4.2 * (len(rules) + 1), 4.6), layout="constrained")
    fig.suptitle(
        f"A4 — large batches with and without learning-rate scaling{what(runs)}", fontsize=13, fontweight="bold"
    )
    axes = fig.subplots(1, len(rules) + 1, squeeze=False).ravel().tolist()
    for ax in axes[1:-1]:
        ax.sharey(axes[0])
    batches = sorted(set(runs["global_batch"]))
    color = dict(zip(batches, colors(len(batches))))
    for ax, rule in zip(axes, rules):
        for b in batches:
            stats = stats_by(pairs[(pairs["lr_rule"] == rule) & (pairs["global_batch"] == b)], "epoch", "train_loss")
            if stats:
                band(ax, list(stats), list(stats.values()), f"batch {b:g}", color[b])
        ax.set(title=f"lr rule: {rule}", yscale="log")
        epoch_axis(ax)
        ax.grid(True, alpha=0.3)
        legend(ax)
    axes[0].set_ylabel("training loss (cross-entropy, log)")
    acc = axes[-1]
    for i, (rule, rows) in enumerate(runs.groupby("lr_rule", sort=False)):
        errorbar(acc, stats_by(rows, "global_batch", "test_accuracy"), f"lr rule: {rule}", color=cycle(i))
    log2_axis(acc, batches)
    images = test_images(runs, sizes)
    accuracy_axis(acc, images=images)
    acc.set(title="final test accuracy", xlabel="global batch size (images)", ylabel="test accuracy")
    acc.grid(True, alpha=0.3)
    legend(acc)
    if runs.empty:
        empty(acc, "train_dp lenet_lr_scaling runs")
    steps = stats_by(runs, "global_batch", "steps")
    footnote(
        fig,
        "same epochs for every batch size; lr rules scale the base rate to the batch "
        f"(none | linear | sqrt, with warmup); {seeds_note(runs)} (band/bars)",
        "; ".join(
            filter(
                None,
                [
                    "optimizer steps per run: "
                    + ", ".join(f"{s.mean:,.0f} at batch {b:g}" for b, s in steps.items() if math.isfinite(s.mean))
                    if steps
                    else "",
                    test_set(images),
                ],
            )
        ),
    )
    return fig
