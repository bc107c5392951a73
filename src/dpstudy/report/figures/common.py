"""What every figure shares: labels, the grouping of long-form tables into means ± std over seeds
(`stats_by`, `seed_means` on `report.stats`), and the matplotlib helpers (panels, error bars,
bands, log and accuracy axes, footnotes).

Matplotlib is used through `Figure` objects (the Agg canvas, no pyplot state), so drawing is
headless, thread-safe and byte-for-byte reproducible.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Hashable, Iterable, Mapping

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FixedLocator, LogLocator, MaxNLocator, NullLocator, PercentFormatter

from ..stats import Stat, mean_std, per_seed, seed_order
from ..tables import Tables, per_device

DPI = 110
UTILIZATION, LR_SCALING, VGG = "lenet_utilization", "lenet_lr_scaling", "vgg"  # train_dp's grids
METRIC = {"accuracy": "test accuracy", "psnr": "test PSNR (dB)"}
MODEL = {"lenet": "LeNet-5", "vgg16": "VGG16", "resnet20": "ResNet-20", "srnet": "SRNet"}
MODE = {"single": "single device", "dp": "DataParallel", "ddp": "DDP"}
LOADER = {"standard": "standard DataLoader", "resident": "resident tensors"}
MEMORY_NOTE = (
    "memory: CUDA peak allocated per device (process RSS per rank on CPU-only runs); "
    "utilization: NVML per GPU (system CPU, one value, without a GPU)"
)
EPOCH_LABEL = "epoch (from 0, as epochs.csv numbers them)"
Sizes = Mapping[str, int]  # test images per dataset (the prepared files'), where known
Stats = dict[Hashable, Stat]  # a line's points: x -> mean ± std


# --------------------------------------------------------------------------------------------
# Tables to points


def sweep(tables: Tables, rel: str, name: str) -> pd.DataFrame:
    df = tables[rel]
    return df[df["sweep"] == name]


def stats_by(df: pd.DataFrame, by: str | list[str], value: str) -> Stats:
    """`mean_std` of ``value`` per ``by`` (e.g. per batch size, over seeds), keys sorted."""
    return {key: mean_std(group) for key, group in df.groupby(by, sort=True)[value]}


def seed_means(df: pd.DataFrame, value: str) -> dict[Hashable, float]:
    """``value`` per seed, averaged within a seed first (e.g. over lr rules): a later mean ± std
    is a spread over seeds only."""
    return per_seed(df, value).to_dict()


def seeds_note(*frames: pd.DataFrame) -> str:
    """What a figure's lines are, for its footnote: ``mean over 3 seeds (0, 1, 2), ± one std`` (or,
    with one seed, ``one seed (0): no error bars``), counting the seeds the rows hold."""
    texts = {_seed_text(s) for df in frames if "seed" in df for s in df["seed"]}
    seeds = sorted(texts - {""}, key=seed_order)
    if not seeds:
        return "no runs"
    if len(seeds) == 1:
        return f"one seed ({seeds[0]}): no error bars"
    return f"mean over {len(seeds)} seeds ({', '.join(seeds)}), ± one std"


def _seed_text(seed) -> str:
    if isinstance(seed, (float, np.floating)):
        return "" if math.isnan(seed) else f"{seed:g}"
    return str(seed)


def device_mean(df: pd.DataFrame, column: str) -> pd.Series:
    """Each row's mean over its devices of a per-device column (nan where none was measured)."""
    long = per_device(df.assign(_row=np.arange(len(df))), column)
    means = long.groupby("_row")[column].agg(lambda v: mean_std(v).mean)
    return pd.Series(means.reindex(np.arange(len(df))).to_numpy(dtype=float), index=df.index)


def devices_label(df: pd.DataFrame) -> str:
    counts = sorted({int(v) for v in df["devices"] if math.isfinite(v)})
    return "/".join(map(str, counts)) or "?"


def what(runs: pd.DataFrame) -> str:
    """`` (model on dataset)`` of a grid's runs, for titles; empty without runs."""
    if runs.empty:
        return ""
    first = runs.iloc[0]
    return f" ({MODEL.get(first['model'], first['model'])} on {first['dataset']})"


def test_images(runs: pd.DataFrame, sizes: Sizes) -> int | None:
    """The test split's size behind the runs' accuracies (one dataset), where known."""
    names = set(runs["dataset"])
    return sizes.get(names.pop()) if len(names) == 1 else None


def test_set(images: int | None) -> str:
    """``test set: 359 images (one image = 0.28 percentage points)`` for a footnote."""
    if not images:
        return ""
    return f"test set: {images} images (one image = {100 / images:.2g} percentage points of accuracy)"


# --------------------------------------------------------------------------------------------
# Drawing


def figure(rows: int, cols: int, title: str, size: tuple[float, float]) -> tuple[Figure, list]:
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    fig.suptitle(title, fontsize=13, fontweight="bold")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def footnote(fig: Figure, *lines: str) -> None:
    """Grey lines under the panels, each wrapped to the figure's width (8.5 pt: about 4.7 pt a character)."""
    width = int(fig.get_figwidth() * 72 / 4.7)
    text = "\n".join(textwrap.fill(line, width) for line in lines if line)
    if text:
        fig.supxlabel(text, fontsize=8.5, color="0.35")


def errorbar(ax, stats: Stats, label: str, **style) -> None:
    """Means at the sorted keys, ± std bars where they exist."""
    if not stats:
        return
    xs = list(stats)
    ys, err = [stats[x].mean for x in xs], [stats[x].std for x in xs]
    finite = any(math.isfinite(e) for e in err)
    ax.errorbar(
        xs,
        ys,
        yerr=err if finite else None,
        label=label,
        capsize=3 if finite else 0,
        marker=style.pop("marker", "o"),
        markersize=5,
        linewidth=1.8,
        **style,
    )


def band(ax, xs: list[float], stats: list[Stat], label: str, color, **style) -> None:
    """A mean line with a shaded ± std band where the std exists."""
    means = [s.mean for s in stats]
    ax.plot(xs, means, label=label, color=color, marker="o", markersize=3, linewidth=1.8, **style)
    lo = [s.mean - s.std if math.isfinite(s.std) else math.nan for s in stats]
    hi = [s.mean + s.std if math.isfinite(s.std) else math.nan for s in stats]
    if any(math.isfinite(v) for v in lo):
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)


def epoch_axis(ax) -> None:
    """Epochs as epochs.csv (and `dvc plots`, and MLflow's steps) number them: the first is 0."""
    ax.set_xlabel(EPOCH_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def accuracy_axis(ax, min_span: float = 0.10, images: int | None = None) -> None:
    """Accuracy as percent, never zoomed closer than ``min_span`` nor than 20 test images (a gap of
    one or two images must not look like an effect), and never above 100%."""
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    if images:
        min_span = max(min_span, 20 / images)
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


def log2_axis(ax, values: Iterable[float], axis: str = "x") -> None:
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


def log10_labels(ax) -> None:
    """A log y axis labelled at 1, 2 and 5 of every decade (two labels alone say little)."""
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_major_formatter(EngFormatter(sep=""))
    ax.yaxis.set_minor_formatter(lambda v, _: "")


def empty(ax, what_is_missing: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what_is_missing}", ha="center", va="center", transform=ax.transAxes, color="0.4")


def legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8.5, **{"handlelength": 3.2, **kw})  # long enough to show a line's dashes


def colors(n: int, cmap: str = "viridis", lo: float = 0.0, hi: float = 0.85) -> list:
    """``n`` colours ordered along a sequential map (small → large)."""
    return [colormaps[cmap](lo + (hi - lo) * i / max(n - 1, 1)) for i in range(n)]


def cycle(i: int):
    return colormaps["tab10"](i % 10)
