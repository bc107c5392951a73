"""The queries the claims' evidence shares, over the long-form result tables (`report.tables`): one
sweep's runs, a stage's evaluations joined with their runs (so batch, lr rule, world size and
schedule are columns), per-device columns in long form, what the hardware offered, and the short
texts that quote numbers (mean ± std per batch, the seeds)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import pandas as pd

from ..report import tables as tb
from ..report.stats import Stat, mean_of_finite, mean_std, seed_order
from .claim import Unit

EVALUATIONS = "evaluate/evaluations.csv"


def as_tables(tables: Mapping, evaluations) -> tb.Tables:
    """The result tables and evaluations.csv as DataFrames (key `EVALUATIONS`); rows of strings (as
    csv reads them) are typed as `report.tables.load_tables` types them, missing cells empty."""
    out = {rel: _frame(table, rel) for rel, table in tables.items()}
    out[EVALUATIONS] = _frame(evaluations, EVALUATIONS)
    return out


def _frame(table, rel: str) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return table
    columns = list(dict.fromkeys(c for row in table for c in row))
    return tb.frame([{c: row.get(c, "") for c in columns} for row in table], rel)


def runs(t: tb.Tables, stage: str, sweep: str) -> pd.DataFrame:
    """One sweep's rows of a training stage's runs.csv."""
    df = t[f"{stage}/runs.csv"]
    return df[df["sweep"] == sweep] if "sweep" in df else df.iloc[0:0]


def evals(t: tb.Tables, stage: str, sweep: str) -> pd.DataFrame:
    """A stage's evaluations of one sweep (train_adaptive: one task), each with its run's columns."""
    df = t[EVALUATIONS]
    if df.empty:
        return df
    mine = df[(df["stage"] == stage) & (df["sweep"] == sweep)]
    rel = f"{stage}/{sweep}/runs.csv" if stage == tb.ADAPTIVE else f"{stage}/runs.csv"
    return tb.with_runs(mine, t[rel]) if "name" in t[rel] else mine.iloc[0:0]


def column(df: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, or nan throughout where the table does not have it."""
    return df[name].astype(float) if name in df else pd.Series(math.nan, index=df.index)


def device_mean(df: pd.DataFrame, name: str) -> pd.Series:
    """The mean over devices of a per-device column, per row (nan where none was measured)."""
    if df.empty:
        return pd.Series(dtype=float)
    long = tb.per_device(df.assign(_row=range(len(df))), name)
    means = long.groupby("_row")[name].agg(mean_of_finite)
    return pd.Series([means.get(i, math.nan) for i in range(len(df))], index=df.index, dtype=float)


def by(df: pd.DataFrame, *keys: str) -> dict[Hashable, pd.DataFrame]:
    """Rows by their values of ``keys``, groups in order of first appearance."""
    if df.empty:
        return {}
    key = list(keys) if len(keys) > 1 else keys[0]
    return {k: g for k, g in df.groupby(key, sort=False)}


def summarize(df: pd.DataFrame, key: str, value: pd.Series | str) -> dict[Hashable, Stat]:
    """`mean_std` of ``value`` over the rows of each ``key`` value (e.g. per batch over seeds), keys sorted."""
    values = column(df, value) if isinstance(value, str) else value
    return {k: mean_std(values.loc[g.index]) for k, g in sorted(by(df, key).items())}


def ms(stat: Stat, fmt: Unit) -> str:
    """``0.975 ± 0.004`` (the std only where there are two or more values)."""
    return fmt(stat.mean) + (f" ± {fmt(stat.std).lstrip('+')}" if math.isfinite(stat.std) else "")


def series_text(df: pd.DataFrame, value: pd.Series | str, fmt: Unit, key: str = "global_batch") -> str:
    """``80% ± 2% at batch 16, 60% at batch 256``: mean (± std over seeds) per batch."""
    return ", ".join(f"{ms(s, fmt)} at batch {int(b)}" for b, s in summarize(df, key, value).items())


def seeds_text(*frames: pd.DataFrame) -> str:
    """``3 seeds (0, 1, 2) per configuration``: the seeds behind a claim's verdict."""
    seeds = sorted(
        {str(s) for df in frames if "seed" in df for s in df["seed"] if str(s) not in ("", "nan")}, key=seed_order
    )
    if not seeds:
        return "none"
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(seeds)}) per configuration"


def test_images(df: pd.DataFrame) -> str:
    """`` (test set: 359 images)``: the size of the test split behind an accuracy or PSNR."""
    sizes = sorted({int(v) for v in column(df, "test_images") if math.isfinite(v)})
    return f" (test set: {'/'.join(map(str, sizes))} images)" if sizes else ""


def gpu_sampled(t: tb.Tables) -> bool:
    """Whether utilization was read from a GPU (NVML) rather than the system CPU."""
    probes = t["profile_dataloader/probes.csv"]
    return bool(len(probes)) and bool(probes["utilization_source"].astype(str).str.startswith("gpu").any())


@dataclass(frozen=True)
class Capacity:
    """What the run's hardware offered, as its tables show it."""

    gpu: bool  # utilization was read from a GPU (NVML), not the system CPU
    gpus: int  # devices DataParallel spanned in train_dp's VGG grid (1 on the CPU or one GPU)
    processes: int  # the largest world size of train_ddp's evaluated runs

    @classmethod
    def of(cls, t: tb.Tables) -> Capacity:
        vgg = runs(t, "train_dp", "vgg")
        dp = column(vgg[vgg["mode"] == "dp"], "devices") if "mode" in vgg else pd.Series(dtype=float)
        worlds = column(evals(t, "train_ddp", "vgg"), "world").dropna()
        return cls(gpu_sampled(t), int(dp.max()) if len(dp) else 0, int(worlds.max()) if len(worlds) else 0)

    def lacks(self, requires: str) -> str:
        """What the run lacks of ``requires`` (empty: nothing)."""
        if requires == "gpu" and not self.gpu:
            return "no GPU"
        if requires == "2 gpus" and self.gpus < 2:
            return f"needs at least 2 GPUs; DataParallel here spanned {self.gpus} device(s)"
        if requires == "2 processes" and self.processes < 2:
            return f"only world size {self.processes} ran: needs 2+ GPUs (or CPU processes)"
        return ""
