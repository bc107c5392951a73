"""The study figures: the training stages' result tables drawn as PNGs (the `plot` stage's library).

`make_figures(results, out_dir)` reads the CSV files under ``results/`` (every input is checked
before anything is drawn: a missing file or column is a one-line `UserError` naming the stage
that writes it), then writes one PNG per entry of `FIGURES`, each atomically. Lines are means
over seeds; error bars and shaded bands are ± one sample standard deviation over seeds and appear
only where there are at least two finite values (one seed, or a nan on a CPU-only run, draws
none). Where a seed has several rows (DDP's lr rules), they are averaged within the seed first,
so a bar is never a spread over lr rules. Each footnote says how many seeds the lines average
(`over_seeds`). Epochs are numbered as epochs.csv numbers them (from 0: the first epoch is 0).

Matplotlib is used through `Figure` objects (the Agg canvas, no pyplot state), so drawing is
headless, thread-safe and byte-for-byte reproducible.
"""

from __future__ import annotations

import csv
import math
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, Mapping

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FixedLocator, LogLocator, MaxNLocator, NullLocator, PercentFormatter

from ..errors import UserError
from ..fsutil import atomic_path

DPI = 110
UTILIZATION, LR_SCALING, VGG = "lenet_utilization", "lenet_lr_scaling", "vgg"  # train_dp's grids
ADAPTIVE = "train_adaptive"
ADAPTIVE_TASKS = ("classification", "restoration")  # its result folders

_RUN = ("name", "sweep", "model", "dataset", "mode", "world", "devices", "loader", "batch", "global_batch",
        "lr_rule", "seed", "epochs", "steps", "train_loss", "epoch_time_s", "data_wait_fraction", "device_mem_mib",
        "utilization_pct")
_EPOCH = ("series", "epoch", "cum_steps", "cum_time_s", "global_batch", "lr", "train_loss")
# Every input: relative path -> (the stage that writes it, the columns the figures read).
INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "profile_dataloader/probes.csv": ("profile_dataloader", ("series", "loader", "step", "batch_size", "repeat",
                                                             "data_wait_fraction", "utilization_pct",
                                                             "utilization_source", "device_busy_pct")),
    "profile_dataloader/throughput.csv": ("profile_dataloader", ("series", "batch_size", "images_per_s")),
    "profile_dataloader/workers.csv": ("profile_dataloader", ("series", "num_workers", "images_per_s")),
    "train_dp/runs.csv": ("train_dp", _RUN + ("test_accuracy",)),
    "train_dp/epochs.csv": ("train_dp", _EPOCH),
    "train_ddp/runs.csv": ("train_ddp", _RUN + ("test_accuracy",)),
    "train_ddp/epochs.csv": ("train_ddp", _EPOCH + ("test_accuracy",)),
    **{f"{ADAPTIVE}/{task}/{kind}.csv": (ADAPTIVE, columns) for task in ADAPTIVE_TASKS
       for kind, columns in (("runs", ("name", "schedule", "seed", "target", "steps", "allreduces",
                                       "run_images_per_s")), ("epochs", _EPOCH))},
    f"{ADAPTIVE}/summary.csv": (ADAPTIVE, ("task", "schedule", "metric", "time_to_target_s", "time_to_target_s_std",
                                           "speedup", "run_images_per_s", "run_images_per_s_std", "allreduces")),
}
METRIC = {"accuracy": "test accuracy", "psnr": "test PSNR (dB)"}
MODEL = {"lenet": "LeNet-5", "vgg16": "VGG16", "resnet20": "ResNet-20", "srnet": "SRNet"}
MODE = {"single": "single device", "dp": "DataParallel", "ddp": "DDP"}
LOADER = {"standard": "standard DataLoader", "resident": "resident tensors"}
MEMORY_NOTE = ("memory: CUDA peak allocated per device (process RSS per rank on CPU-only runs); "
               "utilization: NVML per GPU (system CPU, one value, without a GPU)")

Rows = list[dict[str, str]]
Tables = dict[str, Rows]
Sizes = Mapping[str, int]  # test images per dataset (the prepared files'), where known


# --------------------------------------------------------------------------------------------
# Reading and aggregating


def load_inputs(results: Path) -> Tables:
    """Every input table as rows of strings; all files and columns checked before any drawing."""
    if not results.is_dir():
        raise UserError(f"{results} does not exist: run the training stages first (dvc repro)")
    missing: dict[str, list[str]] = {}
    for rel, (stage, _) in INPUTS.items():
        if not (results / rel).is_file():
            missing.setdefault(stage, []).append(str(results / rel))
    if missing:
        what = "; ".join(f"{', '.join(files)} (written by the {stage} stage)" for stage, files in missing.items())
        raise UserError(f"missing {what}: run `dvc repro {' '.join(missing)}` first")
    tables = {}
    for rel, (stage, columns) in INPUTS.items():
        with open(results / rel, newline="") as fh:
            reader = csv.DictReader(fh)
            absent = [c for c in columns if c not in (reader.fieldnames or [])]
            if absent and reader.fieldnames:  # no header at all: a grid with no runs (drawn as "no data")
                raise UserError(f"{results / rel} has no column {', '.join(absent)}: it is from another version "
                                f"of the {stage} stage; rerun it (dvc repro -f {stage})")
            tables[rel] = list(reader)
    return tables


def num(text: str) -> float:
    """A CSV cell as a float: empty or unparsable cells are nan (not measured)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def per_device(text: str) -> list[float]:
    """A per-device cell such as ``"913.3;736.0"`` as one float per device index."""
    return [num(v) for v in (text or "").split(";") if v.strip()]


def device_mean(text: str) -> float:
    """The mean over devices of a per-device cell (nan where none was measured)."""
    return mean_std(per_device(text)).mean


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std; nan with fewer than two finite values (no error bar)
    n: int      # finite values behind the figures


def mean_std(values: Iterable[float]) -> Stat:
    """Mean and sample standard deviation of the finite values (nan ones are not measurements)."""
    finite = [v for v in values if math.isfinite(v)]
    return Stat(statistics.fmean(finite) if finite else math.nan,
                statistics.stdev(finite) if len(finite) > 1 else math.nan, len(finite))


def groups(rows: Rows, key: Callable[[dict], Hashable]) -> dict[Hashable, Rows]:
    """Rows by ``key(row)``, groups in order of first appearance."""
    out: dict[Hashable, Rows] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def summarize(rows: Rows, key: Callable[[dict], Hashable], value: Callable[[dict], float]) -> dict[Hashable, Stat]:
    """`mean_std` of ``value(row)`` per ``key(row)`` (e.g. per batch size over seeds), keys sorted."""
    grouped = groups(rows, key)
    return {k: mean_std(value(r) for r in grouped[k]) for k in sorted(grouped)}


def col(name: str) -> Callable[[dict], float]:
    return lambda row: num(row[name])


def over_seeds(rows: Rows) -> str:
    """What a figure's lines are, for its footnote: ``mean over 3 seeds, ± one std`` (or, with one
    seed, ``one seed (0): no error bars``), counting the seeds the rows hold."""
    seeds = sorted({str(r["seed"]) for r in rows if str(r.get("seed", "")) != ""}, key=lambda s: (num(s), s))
    if not seeds:
        return "no runs"
    if len(seeds) == 1:
        return f"one seed ({seeds[0]}): no error bars"
    return f"mean over {len(seeds)} seeds ({', '.join(seeds)}), ± one std"


def per_seed(rows: Rows, value: Callable[[dict], float]) -> dict[str, float]:
    """``value(row)`` per seed: the mean where a seed has several rows (e.g. one per lr rule), so
    that a later mean ± std is a spread over seeds only."""
    return {seed: mean_std(value(r) for r in group).mean
            for seed, group in groups(rows, lambda r: str(r.get("seed", ""))).items()}


def ratios(a: dict[str, float], b: dict[str, float]) -> Stat:
    """``a / b`` seed by seed (the seeds both have), as mean ± std over those seeds; without a shared
    seed, the ratio of the two means (no spread)."""
    common = sorted(a.keys() & b.keys())
    if common:
        return mean_std(a[s] / b[s] if b[s] > 0 else math.nan for s in common)
    mean_a, mean_b = mean_std(a.values()).mean, mean_std(b.values()).mean
    return Stat(mean_a / mean_b if mean_b > 0 else math.nan, math.nan, 1)


def with_runs(epochs: Rows, runs: Rows) -> list[tuple[dict, dict]]:
    """Each epoch row paired with its configuration's runs.csv row (epochs.csv names it `series`)."""
    by_name = {r["name"]: r for r in runs}
    return [(e, by_name[e["series"]]) for e in epochs if e["series"] in by_name]


# --------------------------------------------------------------------------------------------
# Drawing helpers


def _figure(rows: int, cols: int, title: str, size: tuple[float, float]) -> tuple[Figure, list]:
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    fig.suptitle(title, fontsize=13, fontweight="bold")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _footnote(fig: Figure, *lines: str) -> None:
    """Grey lines under the panels, each wrapped to the figure's width (8.5 pt: about 4.7 pt a character)."""
    width = int(fig.get_figwidth() * 72 / 4.7)
    text = "\n".join(textwrap.fill(line, width) for line in lines if line)
    if text:
        fig.supxlabel(text, fontsize=8.5, color="0.35")


def _errorbar(ax, stats: dict, label: str, **style) -> None:
    """Means at the sorted keys, ± std bars where they exist."""
    if not stats:
        return
    xs = list(stats)
    ys, err = [stats[x].mean for x in xs], [stats[x].std for x in xs]
    finite = any(math.isfinite(e) for e in err)
    ax.errorbar(xs, ys, yerr=err if finite else None, label=label, capsize=3 if finite else 0,
                marker=style.pop("marker", "o"), markersize=5, linewidth=1.8, **style)


def _band(ax, xs: list[float], stats: list[Stat], label: str, color, **style) -> None:
    """A mean line with a shaded ± std band where the std exists."""
    means = [s.mean for s in stats]
    ax.plot(xs, means, label=label, color=color, marker="o", markersize=3, linewidth=1.8, **style)
    lo = [s.mean - s.std if math.isfinite(s.std) else math.nan for s in stats]
    hi = [s.mean + s.std if math.isfinite(s.std) else math.nan for s in stats]
    if any(math.isfinite(v) for v in lo):
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


EPOCH_LABEL = "epoch (from 0, as epochs.csv numbers them)"


def _epoch_axis(ax) -> None:
    """Epochs as epochs.csv (and `dvc plots`, and MLflow's steps) number them: the first is 0."""
    ax.set_xlabel(EPOCH_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _accuracy_axis(ax, min_span: float = 0.10, test_images: int | None = None) -> None:
    """Accuracy as percent, never zoomed closer than ``min_span`` nor than 20 test images (a gap of
    one or two images must not look like an effect), and never above 100%."""
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    if test_images:
        min_span = max(min_span, 20 / test_images)
    lo, hi = ax.get_ylim()
    pad = 0.01 * min_span  # room for a marker at 100%
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
        if hi > 1.0 + pad:
            lo, hi = 1.0 + pad - min_span, 1.0 + pad
    ax.set_ylim(lo, min(hi, 1.0 + max(pad, 0.01)))
    ticks = ax.get_yticks()
    ax.yaxis.set_major_locator(FixedLocator([t for t in ticks if t <= 1.0 + 1e-9]))


def _test_set(test_images: int | None) -> str:
    """``test set: 359 images (one image = 0.28 percentage points)`` for a footnote."""
    if not test_images:
        return ""
    return f"test set: {test_images} images (one image = {100 / test_images:.2g} percentage points of accuracy)"


def _log2_axis(ax, values: Iterable[float], axis: str = "x") -> None:
    """A base-2 log axis ticked at exactly the values measured (batch sizes, device counts)."""
    ticks = sorted({v for v in values if math.isfinite(v) and v > 0})
    if not ticks:
        return
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=2)
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(lambda v, _: f"{v:g}")
    target.set_minor_locator(NullLocator())
    if len(ticks) == 1:  # a single tick: give the axis some room around it
        (ax.set_xlim if axis == "x" else ax.set_ylim)(ticks[0] / 1.5, ticks[0] * 1.5)


def _log10_labels(ax) -> None:
    """A log y axis labelled at 1, 2 and 5 of every decade (two labels alone say little)."""
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    ax.yaxis.set_minor_formatter(lambda v, _: "")


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes, color="0.4")


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8.5, **{"handlelength": 3.2, **kw})  # long enough to show a line's dashes


def _colors(n: int, cmap: str = "viridis", lo: float = 0.0, hi: float = 0.85) -> list:
    """``n`` colours ordered along a sequential map (small → large)."""
    return [colormaps[cmap](lo + (hi - lo) * i / max(n - 1, 1)) for i in range(n)]


def _cycle(i: int):
    return colormaps["tab10"](i % 10)


def _what(rows: Rows) -> str:
    """`` (model on dataset)`` of a grid's runs, for titles; empty without runs."""
    return f" ({MODEL.get(rows[0]['model'], rows[0]['model'])} on {rows[0]['dataset']})" if rows else ""


def _test_images(runs: Rows, sizes: Sizes) -> int | None:
    """The test split's size behind the runs' accuracies (one dataset), where known."""
    names = {r["dataset"] for r in runs}
    return sizes.get(names.pop()) if len(names) == 1 else None


def _sweep(tables: Tables, rel: str, sweep: str) -> Rows:
    return [r for r in tables[rel] if r["sweep"] == sweep]


def _devices_label(rows: Rows) -> str:
    counts = sorted({int(num(r["devices"])) for r in rows if math.isfinite(num(r["devices"]))})
    return "/".join(map(str, counts)) or "?"


def _util_source(tables: Tables) -> str:
    sources = {r["utilization_source"] for r in tables["profile_dataloader/probes.csv"]}
    return {"cpu_util_pct": "system CPU (no GPU visible)", "gpu_util_pct": "GPU (NVML)"}.get(
        "".join(sources) if len(sources) == 1 else "", "GPU (NVML) or system CPU")


# --------------------------------------------------------------------------------------------
# Study A


def _a1_a2(t: Tables, sizes: Sizes) -> Figure:
    runs, probes = _sweep(t, "train_dp/runs.csv", UTILIZATION), t["profile_dataloader/probes.csv"]
    source = _util_source(t)
    fig, (util, wait) = _figure(1, 2, f"A1/A2 — utilization and data wait vs batch size{_what(runs)}", (12, 4.6))
    loaders = list(dict.fromkeys([r["loader"] for r in runs] + [r["loader"] for r in probes]))
    color = {name: _cycle(i) for i, name in enumerate(loaders)}
    batches = []
    for (mode, loader), rows in groups(runs, lambda r: (r["mode"], r["loader"])).items():
        devices = f" ×{_devices_label(rows)}" if mode != "single" else ""
        label = f"{MODE.get(mode, mode)}{devices}, {LOADER.get(loader, loader)}"
        style = dict(color=color[loader], linestyle="-" if mode == "single" else "--",
                     marker="o" if mode == "single" else "s")
        batch = col("global_batch")
        _errorbar(wait, summarize(rows, batch, col("data_wait_fraction")), label, **dict(style))
        _errorbar(util, summarize(rows, batch, lambda r: device_mean(r["utilization_pct"])), label, **dict(style))
        batches += [batch(r) for r in rows]
    for (loader, step), rows in groups(probes, lambda r: (r["loader"], r["step"])).items():
        label = f"probe (profile_dataloader), {LOADER.get(loader, loader)}" + (", CUDA graph" if step == "graph" else "")
        style = dict(color=color[loader], linestyle=":" if step == "eager" else "-.",
                     marker="x" if step == "eager" else "*", alpha=0.8)
        _errorbar(wait, summarize(rows, col("batch_size"), col("data_wait_fraction")), label, **dict(style))
        _errorbar(util, summarize(rows, col("batch_size"), col("utilization_pct")), label, **dict(style))
        batches += [num(r["batch_size"]) for r in rows]
    wait.set(title="A2: share of each step spent waiting for the next batch", xlabel="global batch size (images)",
             ylabel="data-wait fraction of step time")
    wait.yaxis.set_major_formatter(PercentFormatter(1.0))
    wait.set_ylim(bottom=0)
    util.set(title=f"A1: utilization, {source}", xlabel="global batch size (images)",
             ylabel="utilization (%, mean over devices)", ylim=(0, 105))
    for ax in (wait, util):
        _log2_axis(ax, batches)
    if not runs and not probes:
        _empty(wait, "train_dp lenet_utilization runs")
    _legend(util, loc="best")
    _footnote(fig, f"train_dp runs: {over_seeds(runs)}; ×N: devices DataParallel used; dotted (dash-dot: CUDA-graph "
                   f"step): profile_dataloader's short training probes (mean over their repeats); a utilization "
                   f"missing from a line: its window was too short for NVML's averaging period")
    return fig


def _x1(t: Tables, sizes: Sizes) -> Figure:
    probes = t["profile_dataloader/probes.csv"]
    gpu = any(r["utilization_source"].startswith("gpu") for r in probes)
    fig, (util, busy) = _figure(1, 2, "X1 — utilization vs batch size: eager vs CUDA-graph steps (training probes)",
                                (12, 4.6))
    util.set(title="NVML utilization over the timed steps", xlabel="batch size (images)", ylabel="utilization (%)",
             ylim=(0, 105))
    busy.set(title="device busy share (profiler: kernels over the window)", xlabel="batch size (images)",
             ylabel="busy (% of the window)", ylim=(0, 105))
    if not gpu:  # the CPU's utilization says nothing about a GPU's: no lines at all
        for ax in (util, busy):
            ax.text(0.5, 0.5, "not testable here: no GPU was visible to this run\n(X1 is about a GPU's utilization)",
                    ha="center", va="center", transform=ax.transAxes, color="0.4")
        return fig
    batches = []
    for i, ((loader, step), rows) in enumerate(groups(probes, lambda r: (r["loader"], r["step"])).items()):
        label = f"{LOADER.get(loader, loader)}, {'CUDA graph' if step == 'graph' else 'eager'} step"
        style = dict(color=_cycle(["standard", "resident"].index(loader) if loader in ("standard", "resident") else i),
                     linestyle="-" if step == "graph" else ":", marker="*" if step == "graph" else "o")
        _errorbar(util, summarize(rows, col("batch_size"), col("utilization_pct")), label, **dict(style))
        _errorbar(busy, summarize(rows, col("batch_size"), col("device_busy_pct")), label, **dict(style))
        batches += [num(r["batch_size"]) for r in rows]
    for ax in (util, busy):
        _log2_axis(ax, batches)
    _legend(util, loc="best")
    _footnote(fig, "profile_dataloader's probes, mean ± std over their repeats; a missing point: a window too short "
                   "for NVML's averaging period (left) or no device activity recorded (right)")
    return fig


def _a3(t: Tables, sizes: Sizes) -> Figure:
    workers = t["profile_dataloader/workers.csv"]
    resident = [r for r in t["profile_dataloader/throughput.csv"] if r["series"] == "resident"]
    fig, (ax, rel) = _figure(1, 2, "A3 — data-loading throughput vs DataLoader worker processes", (12, 4.8))
    by_batch = groups(workers, lambda r: r["series"])  # series: "batch <size>"
    batch_of = {name: num(name.removeprefix("batch ")) for name in by_batch}
    names = sorted(by_batch, key=lambda name: batch_of[name])
    colors = dict(zip(names, _colors(len(names))))
    for name in names:
        stats = summarize(by_batch[name], col("num_workers"), col("images_per_s"))
        _errorbar(ax, stats, f"standard DataLoader, {name}", color=colors[name])
        base = stats.get(0.0)
        if base and math.isfinite(base.mean) and base.mean > 0:
            _errorbar(rel, {w: Stat(s.mean / base.mean, s.std / base.mean, s.n) for w, s in stats.items()},
                      name, color=colors[name])
    for row in resident:  # the loader that needs no workers, as a reference at each batch size
        b = num(row["batch_size"])
        color = next((colors[n] for n in names if batch_of[n] == b), "0.4")
        ax.axhline(num(row["images_per_s"]), color=color, linestyle="--", linewidth=1.2,
                   label=f"resident tensors, batch {b:g} (no workers)")
    if not workers:
        _empty(ax, "profile_dataloader workers.csv")
    ticks = sorted({num(r["num_workers"]) for r in workers}) or [0]
    for axis in (ax, rel):
        axis.xaxis.set_major_locator(FixedLocator(ticks))
        axis.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
        axis.set_xlabel("DataLoader num_workers (worker processes)")
    rel.axhline(1.0, color="0.5", linestyle=":", linewidth=1)
    ax.set(ylabel="images/s delivered to the device (log)", yscale="log", title="images/s per loader")
    _log10_labels(ax)
    rel.set(ylabel="images/s relative to num_workers=0 (×)", title="standard loader: gain from workers")
    # under its panel, in two columns: beside the panel it would squeeze it
    _legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    _legend(rel)
    cells = groups(workers, lambda r: (r["series"], r["num_workers"]))
    repeats = max(map(len, cells.values()), default=0)
    _footnote(fig, "standard DataLoader: per-image PIL transforms in worker processes; resident tensors: the "
                   "dataset in device memory, augmented per batch on the device",
              "one measurement per point: no error bars" if repeats == 1 else
              f"mean over {repeats} repeated measurements per point, ± one std" if repeats else "")
    return fig


def _a4(t: Tables, sizes: Sizes) -> Figure:
    runs = _sweep(t, "train_dp/runs.csv", LR_SCALING)
    pairs = with_runs(t["train_dp/epochs.csv"], runs)
    rules = list(dict.fromkeys(r["lr_rule"] for r in runs)) or ["none"]
    fig = Figure(figsize=(4.2 * (len(rules) + 1), 4.6), layout="constrained")
    fig.suptitle(f"A4 — large batches with and without learning-rate scaling{_what(runs)}",
                 fontsize=13, fontweight="bold")
    axes = fig.subplots(1, len(rules) + 1, squeeze=False).ravel().tolist()
    for ax in axes[1:-1]:
        ax.sharey(axes[0])
    batches = sorted({num(r["global_batch"]) for r in runs})
    colors = dict(zip(batches, _colors(len(batches))))
    for ax, rule in zip(axes, rules):
        for b in batches:
            mine = [(e, r) for e, r in pairs if r["lr_rule"] == rule and num(r["global_batch"]) == b]
            stats = summarize([e for e, _ in mine], col("epoch"), col("train_loss"))
            if stats:
                _band(ax, list(stats), list(stats.values()), f"batch {b:g}", colors[b])
        ax.set(title=f"lr rule: {rule}", yscale="log")
        _epoch_axis(ax)
        ax.grid(True, alpha=0.3)
        _legend(ax)
    axes[0].set_ylabel("training loss (cross-entropy, log)")
    acc = axes[-1]
    for i, (rule, rows) in enumerate(groups(runs, lambda r: r["lr_rule"]).items()):
        _errorbar(acc, summarize(rows, col("global_batch"), col("test_accuracy")), f"lr rule: {rule}",
                  color=_cycle(i))
    _log2_axis(acc, batches)
    test_images = _test_images(runs, sizes)
    _accuracy_axis(acc, test_images=test_images)
    acc.set(title="final test accuracy", xlabel="global batch size (images)", ylabel="test accuracy")
    acc.grid(True, alpha=0.3)
    _legend(acc)
    if not runs:
        _empty(acc, "train_dp lenet_lr_scaling runs")
    steps = summarize(runs, col("global_batch"), col("steps"))
    _footnote(fig, "same epochs for every batch size; lr rules scale the base rate to the batch "
                   f"(none | linear | sqrt, with warmup); {over_seeds(runs)} (band/bars)",
              "; ".join(filter(None, [
                  "optimizer steps per run: " + ", ".join(f"{s.mean:,.0f} at batch {b:g}" for b, s in steps.items()
                                                          if math.isfinite(s.mean)) if steps else "",
                  _test_set(test_images)])))
    return fig


# --------------------------------------------------------------------------------------------
# Study B


def _b1_b4(t: Tables, sizes: Sizes) -> Figure:
    dp = _sweep(t, "train_dp/runs.csv", VGG)
    ddp = _sweep(t, "train_ddp/runs.csv", VGG)
    fig, (time_ax, speed_ax) = _figure(1, 2, f"B1/B3/B4 — epoch time vs devices: DataParallel vs DDP"
                                             f"{_what(dp or ddp)}", (13, 5.6))
    epoch_time = col("epoch_time_s")
    devices: list[float] = [1.0]
    one_device_dp = any(r["mode"] == "dp" for r in dp) and all(num(r["devices"]) <= 1 for r in dp if r["mode"] == "dp")
    # DataParallel on one device sits at x = 1 beside the single-device run: set the two a little apart
    # (and never join them: a vertical join would read as an error bar)
    left, right = (2 ** -0.07, 2 ** 0.07) if one_device_dp else (1.0, 1.0)
    single_by_batch: dict[float, dict[str, float]] = {}
    batches = sorted({num(r["global_batch"]) for r in dp})
    for b, color in zip(batches, _colors(len(batches), "Oranges", 0.55, 0.95)):
        mine = [r for r in dp if num(r["global_batch"]) == b]
        single = per_seed([r for r in mine if r["mode"] == "single"], epoch_time)
        multi_rows = [r for r in mine if r["mode"] == "dp"]
        multi = per_seed(multi_rows, epoch_time)
        n = max((num(r["devices"]) for r in multi_rows), default=math.nan)
        single_by_batch[b] = single
        if single:
            _errorbar(time_ax, {left: mean_std(single.values())}, f"single device, batch {b:g}", color=color,
                      linestyle="none")
        if multi:
            x = n * (right if n <= 1 else 1.0)
            _errorbar(time_ax, {x: mean_std(multi.values())}, f"DataParallel ×{n:g}, batch {b:g}", color=color,
                      marker="D", linestyle="none")
            devices.append(n)
            if single and n > 1:  # the scaling step from one device to n
                time_ax.plot([1, n], [mean_std(single.values()).mean, mean_std(multi.values()).mean], color=color,
                             linewidth=1.2, alpha=0.7)
            if single:
                speedup = ratios(single, multi)
                _errorbar(speed_ax, {x: speedup}, f"DataParallel ×{n:g} vs single device, batch {b:g}", color=color,
                          marker="D", linestyle="none")
                if n > 1:
                    speed_ax.plot([1, n], [1, speedup.mean], color=color, linewidth=1.2, alpha=0.7)
    notes = []
    per_rank = sorted({_per_rank_batch(r) for r in ddp})
    blues, purples = _colors(len(per_rank), "Blues", 0.6, 0.95), _colors(len(per_rank), "Purples", 0.6, 0.95)
    for b, blue, purple in zip(per_rank, blues, purples):
        mine = [r for r in ddp if _per_rank_batch(r) == b]
        # each seed's epoch time, averaged over its lr rules first: bars are a spread over seeds only
        by_world = {w: per_seed(rows, epoch_time) for w, rows in sorted(groups(mine, col("world")).items())}
        devices += list(by_world)
        _errorbar(time_ax, {w: mean_std(s.values()) for w, s in by_world.items()}, f"DDP, batch {b:g} per process",
                  color=blue, marker="s", linestyle="--")
        one = by_world.get(1.0)
        if one:
            _errorbar(speed_ax, {w: Stat(1.0, math.nan, len(one)) if w == 1.0 else ratios(one, s)
                                 for w, s in by_world.items()},
                      f"DDP vs DDP with 1 process, batch {b:g} per process", color=blue, marker="s", linestyle="--")
        single = single_by_batch.get(b)
        if single:
            _errorbar(speed_ax, {w: ratios(single, s) for w, s in by_world.items()},
                      f"DDP vs single device, batch {b:g} per process", color=purple, marker="^", linestyle="-")
        if one and single:
            t1, t0 = mean_std(one.values()).mean, mean_std(single.values()).mean
            notes.append(f"batch {b:g}: DDP with 1 process {t1:.2f} s/epoch vs the single-device run {t0:.2f} s "
                         f"({ratios(one, single).mean:.2f}× its time, seed by seed)")
    top = max(devices)
    speed_ax.axhline(1.0, color="0.5", linewidth=1, linestyle="-", alpha=0.6)
    speed_ax.plot([1, top], [1, top], color="0.5", linestyle=":", label="ideal (linear)")
    time_ax.set(title="B1/B4: seconds per epoch (lower is better)", xlabel="devices (GPUs or processes)",
                ylabel="epoch time (s)")
    time_ax.set_ylim(bottom=0)
    speed_ax.set(title="speed-up against two baselines (B3: at each batch size)", xlabel="devices (GPUs or processes)",
                 ylabel="speed-up (×): baseline's epoch time / on N")
    speed_ax.set_ylim(bottom=0)
    for ax in (time_ax, speed_ax):
        _log2_axis(ax, devices)
        if one_device_dp and top <= 1:  # room for the two points set apart at x = 1
            ax.set_xlim(2 ** -0.5, 2 ** 0.5)
        _legend(ax, loc="upper left" if ax is speed_ax else "best")  # above the ideal line: an unlikely place
    if not dp and not ddp:
        _empty(time_ax, "vgg runs of train_dp or train_ddp")
    _footnote(fig, "DataParallel splits one global batch over the GPUs (speed-up: the single-device run at the same "
                   "batch / DataParallel); DDP keeps the per-process batch, so the global batch grows with the "
                   "processes",
              "DDP's speed-up against two baselines: the single-device run (train_dp) at its per-process batch, and "
              "DDP with 1 process, which carries DDP's own overheads (process group, gradient all-reduce)"
              + (": " + "; ".join(notes) if notes else ""),
              f"{over_seeds(dp + ddp)}; speed-ups are taken seed by seed; DDP: each seed's epoch time averaged over "
              "its lr rules first (a rule does not change an epoch's work)",
              "DataParallel saw fewer than 2 GPUs here: it ran on 1 device, beside the single-device run"
              if one_device_dp else "")
    return fig


def _device(text: str, d: int) -> float:
    """Device ``d``'s value of a per-device cell (nan where it has none)."""
    values = per_device(text)
    return values[d] if len(values) > d else math.nan


def _per_rank_batch(row: dict) -> float:
    """A DDP run's batch per process (its global batch over the world size where not recorded)."""
    b = num(row.get("batch", ""))
    return b if math.isfinite(b) else num(row["global_batch"]) / num(row["world"])


def _b2(t: Tables, sizes: Sizes) -> Figure:
    dp = [r for r in _sweep(t, "train_dp/runs.csv", VGG) if r["mode"] == "dp"]
    ddp = _sweep(t, "train_ddp/runs.csv", VGG)
    top = max((num(r["world"]) for r in ddp), default=math.nan)
    ddp = [r for r in ddp if num(r["world"]) == top]
    configs = [(f"DataParallel ×{_devices_label(rows)}, batch {b}", rows)
               for b, rows in groups(dp, lambda r: r["global_batch"]).items()]
    configs += [(f"DDP ×{top:g}, batch {b} per process", rows)
                for b, rows in groups(ddp, lambda r: r["batch"]).items()]
    fig, axes = _figure(1, 2, f"B2 — per-device load: DataParallel vs DDP{_what(dp or ddp)}", (12.5, 5.2))
    width = 0.8 / max(len(configs), 1)
    for ax, column, title, ylabel in ((axes[0], "device_mem_mib", "memory per device", "peak memory (MiB)"),
                                      (axes[1], "utilization_pct", "utilization per device", "utilization (%)")):
        most = 1
        for i, (label, rows) in enumerate(configs):
            n = max((len(per_device(r[column])) for r in rows), default=0)
            # per device: each seed's value (averaged over its lr rules first), then mean ± std over seeds
            stats = [mean_std(per_seed(rows, lambda r, d=d: _device(r[column], d)).values()) for d in range(n)]
            most = max(most, n)
            if not stats:
                continue
            xs = [d + (i - (len(configs) - 1) / 2) * width for d in range(n)]
            err = [s.std for s in stats]
            ax.bar(xs, [s.mean for s in stats], width, yerr=err if any(math.isfinite(e) for e in err) else None,
                   capsize=3, color=_cycle(i), label=label if ax is axes[0] else None)
            others = mean_std(s.mean for s in stats[1:]).mean
            if n > 1 and others > 0:  # device 0 against the mean of the others, above device 0's bar
                top0 = stats[0].mean + (stats[0].std if math.isfinite(stats[0].std) else 0)
                ax.annotate(f"{stats[0].mean / others:.2f}×", (xs[0], top0), xytext=(0, 7),  # clear of the cap
                            textcoords="offset points", ha="center", va="bottom", fontsize=8.5)
        ax.xaxis.set_major_locator(FixedLocator(range(most)))
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
        ax.set(title=title, xlabel="device index (0: DataParallel's output device, DDP rank 0)", ylabel=ylabel)
        ax.margins(y=0.2)
        if not configs:
            _empty(ax, "DataParallel or DDP vgg runs")
    axes[1].set_ylim(0, 120)
    axes[1].yaxis.set_major_locator(FixedLocator(range(0, 101, 20)))
    if configs:
        fig.legend(loc="outside right center", fontsize=9)
    _footnote(fig, MEMORY_NOTE, "the r× over device 0: device 0 / mean of the other devices; DDP at its largest world "
                                f"size; bars: {over_seeds(dp + ddp)} (DDP: each seed averaged over its lr rules "
                                "first)")
    return fig


def _b5(t: Tables, sizes: Sizes) -> Figure:
    runs = _sweep(t, "train_ddp/runs.csv", VGG)
    pairs = with_runs(t["train_ddp/epochs.csv"], runs)
    fig, (final, curves) = _figure(1, 2, f"B5 — DDP accuracy as processes are added{_what(runs)}", (12.5, 5))
    for i, (rule, rows) in enumerate(groups(runs, lambda r: r["lr_rule"]).items()):
        _errorbar(final, summarize(rows, col("world"), col("test_accuracy")), f"lr rule: {rule}", color=_cycle(i))
    worlds = sorted({num(r["world"]) for r in runs})
    _log2_axis(final, worlds)
    globals_ = {w: num(next(r["global_batch"] for r in runs if num(r["world"]) == w)) for w in worlds}
    final.xaxis.set_major_formatter(lambda v, _: f"{v:g}\n(batch {globals_.get(v, math.nan):g})")
    final.set(title="final test accuracy", xlabel="processes (world size) and global batch",
              ylabel="test accuracy")
    colors = dict(zip(worlds, _colors(len(worlds))))
    for (world, rule), mine in groups(pairs, lambda p: (num(p[1]["world"]), p[1]["lr_rule"])).items():
        stats = summarize([e for e, _ in mine], col("epoch"), col("test_accuracy"))
        _band(curves, list(stats), list(stats.values()),
              f"{world:g} process{'es' if world != 1 else ''}, lr rule {rule}",
              colors[world], linestyle="-" if rule != "none" else "--")
    curves.set(title="test accuracy per epoch", ylabel="test accuracy")
    _epoch_axis(curves)
    test_images = _test_images(runs, sizes)
    for ax in (final, curves):
        _accuracy_axis(ax, test_images=test_images)
        _legend(ax, loc="lower right")
    if not runs:
        _empty(final, "train_ddp vgg runs")
    _footnote(fig, "per-process batch fixed, so the global batch grows with the world size; lr rule none keeps "
                   f"the base rate (dashed), linear scales it with the global batch (solid); {over_seeds(runs)}",
              _test_set(test_images))
    return fig


# --------------------------------------------------------------------------------------------
# Study C


def _adaptive(t: Tables, task: str, title: str, claim: str) -> Figure:
    runs, epochs = t[f"{ADAPTIVE}/{task}/runs.csv"], t[f"{ADAPTIVE}/{task}/epochs.csv"]
    summary = [r for r in t[f"{ADAPTIVE}/summary.csv"] if r["task"] == task]
    metric = "psnr" if epochs and "test_psnr" in epochs[0] else "accuracy"
    pairs = with_runs(epochs, runs)
    fig, axes = _figure(2, 3, f"{title}{_what(runs)}", (15.5, 9))
    by_steps, by_time, ttt, batch_ax, lr_ax, rate = axes
    schedules = list(dict.fromkeys([r["schedule"] for r in runs] + [r["schedule"] for r in summary]))
    color = {s: _cycle(i) for i, s in enumerate(schedules)}
    for schedule in schedules:
        rows = [e for e, r in pairs if r["schedule"] == schedule]
        label = schedule.replace("_", " ")
        per_epoch = groups(rows, col("epoch"))
        order = sorted(per_epoch)

        def stat(name: str) -> list[Stat]:  # per epoch, over seeds
            return [mean_std(num(r[name]) for r in per_epoch[e]) for e in order]

        if rows:
            values = stat(f"test_{metric}")
            _band(by_steps, [s.mean for s in stat("cum_steps")], values, label, color[schedule])
            _band(by_time, [s.mean for s in stat("cum_time_s")], values, label, color[schedule])
        # batch and lr change in discrete steps that differ between seeds: one line per seed
        for i, seed_rows in enumerate(groups(rows, lambda r: r["series"]).values()):
            xs = [num(r["epoch"]) for r in seed_rows]
            style = dict(color=color[schedule], drawstyle="steps-mid", linewidth=1.8,
                         linestyle=("-", "--", ":", "-.")[i % 4], label=label if i == 0 else None)
            batch_ax.plot(xs, [num(r["global_batch"]) for r in seed_rows], **style)
            lr_ax.plot(xs, [num(r["lr"]) for r in seed_rows], **style)
    goal = mean_std(num(r["target"]) for r in runs).mean
    for ax in (by_steps, by_time):
        if math.isfinite(goal):
            ax.axhline(goal, color="0.3", linestyle=":", linewidth=1.2, label=f"target {goal:.3g}")
        if metric == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
        ax.set_ylabel(METRIC[metric])
    by_steps.set(title="progress per optimizer step", xlabel="optimizer steps (cumulative)")
    by_time.set(title="progress per training second", xlabel="training time (s, cumulative, evaluation excluded)")
    batch_ax.set(title="global batch size per epoch", ylabel="global batch (images)")
    _log2_axis(batch_ax, [num(e["global_batch"]) for e in epochs], axis="y")
    lr_ax.set(title="learning rate per epoch (at epoch end)", ylabel="learning rate (log)", yscale="log")
    for ax in (batch_ax, lr_ax):
        _epoch_axis(ax)
    _summary_bars(ttt, summary, "time_to_target_s", color, "training time to reach the target (s)",
                  "time to target (× = speed-up)")
    _summary_bars(rate, summary, "run_images_per_s", color, "images/s over the run",
                  f"throughput ({claim}: higher is better)")
    handles, labels = by_steps.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=9.5)
    else:
        _empty(by_steps, f"{task} runs")
    _footnote(fig, f"{over_seeds(runs)} (band/bars); batch and lr: one line per seed (line style); target: "
                   "fixed small's final figure (mean over seeds) minus the tolerance; a growing batch takes fewer, "
                   "larger steps",
              "time to target: mean over seeds where every seed reached the target; otherwise no bar, and how many "
              "seeds reached it (a mean curve can end above the target while a seed's did not)")
    return fig


def _summary_bars(ax, summary: Rows, column: str, color: dict, ylabel: str, title: str) -> None:
    """One bar per schedule from summary.csv (mean ± std), noted with its speed-up, all-reduces or miss."""
    names = [r["schedule"] for r in summary]
    means = [num(r[column]) for r in summary]
    stds = [num(r[f"{column}_std"]) for r in summary]
    shown = [m if math.isfinite(m) else 0.0 for m in means]
    err = [s if math.isfinite(s) and s > 0 else math.nan for s in stds]
    ax.bar(range(len(names)), shown, yerr=err if any(math.isfinite(e) for e in err) else None, capsize=4,
           color=[color.get(n, "0.5") for n in names])
    for i, (row, mean) in enumerate(zip(summary, means)):
        if not math.isfinite(mean):
            note = reached(row) if column == "time_to_target_s" else "not measured"
        elif column == "time_to_target_s":
            note = f"{num(row['speedup']):.2f}×"
        else:
            note = f"{num(row['allreduces']):.0f}\nall-reduces"
        top = shown[i] + (err[i] if math.isfinite(err[i]) else 0)
        ax.annotate(note, (i, top), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=9)
    ax.xaxis.set_major_locator(FixedLocator(range(len(names))))
    ax.xaxis.set_major_formatter(lambda v, _: names[int(v)].replace("_", " ") if 0 <= v < len(names) else "")
    ax.set(title=title, ylabel=ylabel)
    ax.margins(y=0.15)
    if not names:
        _empty(ax, "summary.csv rows")


def reached(row: dict) -> str:
    """The note of a schedule with no mean time to target: how many of its seeds reached it."""
    k, n = num(row.get("reached_target", "")), num(row.get("seeds", ""))
    if not (math.isfinite(k) and math.isfinite(n) and n > 0):
        return "not reached"
    if k == 0:
        return f"not reached\n(0 of {n:.0f} seed{'s' if n != 1 else ''})"
    return f"reached by\n{k:.0f} of {n:.0f} seeds"


def _c1_c3(t: Tables, sizes: Sizes) -> Figure:
    return _adaptive(t, "classification", "C1–C3 — adaptive batch size, classification", "C3")


def _c4(t: Tables, sizes: Sizes) -> Figure:
    return _adaptive(t, "restoration", "C4 — adaptive batch size, 2× image restoration", "C4")


# --------------------------------------------------------------------------------------------
# The figure set


_DRAW: dict[str, tuple[tuple[str, ...], Callable[[Tables, Sizes], Figure]]] = {
    "A1_A2_data_wait_utilization.png": (("A1", "A2"), _a1_a2),
    "A3_workers.png": (("A3",), _a3),
    "A4_lr_scaling.png": (("A4",), _a4),
    "B1_B3_B4_epoch_time.png": (("B1", "B3", "B4"), _b1_b4),
    "B2_device_balance.png": (("B2",), _b2),
    "B5_ddp_accuracy.png": (("B5",), _b5),
    "C1_C3_adaptive_classification.png": (("C1", "C2", "C3"), _c1_c3),
    "C4_adaptive_restoration.png": (("C4",), _c4),
    "X1_graph_utilization.png": (("X1",), _x1),
}
FIGURES: dict[str, tuple[str, ...]] = {name: claims for name, (claims, _) in _DRAW.items()}


def draw(name: str, tables: Tables, test_images: Sizes | None = None) -> Figure:
    """The figure ``name`` (a `FIGURES` key) drawn from `load_inputs`' tables; ``test_images``: the
    test split's size per dataset, stated beside accuracies where known."""
    return _DRAW[name][1](tables, test_images or {})


def make_figures(results: Path, out_dir: Path, test_images: Sizes | None = None) -> list[Path]:
    """Write every figure into out_dir (created), return the paths written, in FIGURES order."""
    return write_figures(load_inputs(Path(results)), out_dir, test_images)


def write_figures(tables: Tables, out_dir: Path, test_images: Sizes | None = None) -> list[Path]:
    """`make_figures` for tables already read with `load_inputs`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FIGURES:
        path = out_dir / name
        with atomic_path(path) as tmp:
            draw(name, tables, test_images).savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
        written.append(path)
    return written
