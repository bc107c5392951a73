"""The statistics of the figures and the claims, in one place: mean ± sample std of finite values,
one value per seed, effects paired by seed, ratios, and the verdict of an effect (`decide`): a
two-sided t-interval (scipy) over the seeds set against a threshold.

A nan is "not measured" everywhere (a window too short for NVML, a diverged run): it never counts
as a value. Means use `statistics.fmean` (correctly rounded), so a number does not depend on the
order of the rows it came from.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_TESTABLE = "supported", "not supported", "inconclusive", "not testable here"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_TESTABLE)

PerSeed = Mapping[Hashable, float]  # one value per seed (a dict, or a pandas Series indexed by seed)


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std; nan with fewer than two finite values (no error bar, no interval)
    n: int  # finite values behind the figures


def mean_std(values: Iterable[float]) -> Stat:
    """Mean and sample standard deviation of the finite values (nan ones are not measurements)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    return Stat(
        statistics.fmean(finite) if finite else math.nan,
        statistics.stdev(finite) if len(finite) > 1 else math.nan,
        len(finite),
    )


def mean_of_finite(values: Iterable[float]) -> float:
    """The mean of the finite values (nan without any): a pandas aggregation as `mean_std` computes it."""
    return mean_std(values).mean


def seed_order(seed: Hashable) -> tuple:
    """Seeds in numeric order (0, 1, 2, 10), any that are not numbers after them."""
    try:
        return (0, float(seed), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(seed))


def per_seed(df: pd.DataFrame, column: str, by: str = "seed") -> pd.Series:
    """``column`` once per seed, in seed order: the mean where a seed has several rows (lr rules,
    modes), so that a later mean ± std is a spread over seeds only."""
    if df.empty:
        return pd.Series(dtype=float)
    means = df.groupby(by, sort=False)[column].agg(mean_of_finite)
    return means.loc[sorted(means.index, key=seed_order)]


def paired(a: PerSeed, b: PerSeed, f: Callable[[float, float], float]) -> list[float]:
    """``f(a[s], b[s])`` for every seed s both have, in seed order: a paired comparison's effect."""
    return [f(a[s], b[s]) for s in sorted(set(a.keys()) & set(b.keys()), key=seed_order)]


def ratio(a: float, b: float) -> float:
    """a / b; nan where b is not positive (no time, no throughput: no ratio)."""
    return a / b if b > 0 else math.nan


def relative_fall(small: float, large: float) -> float:
    """1 - large / small: how far a figure fell, as a share of where it started."""
    return 1 - large / small if small > 0 else math.nan


def ratios(a: PerSeed, b: PerSeed) -> Stat:
    """``a / b`` seed by seed (the seeds both have), as mean ± std over those seeds; without a shared
    seed, the ratio of the two means (no spread)."""
    if set(a.keys()) & set(b.keys()):
        return mean_std(paired(a, b, ratio))
    mean_a, mean_b = mean_std(a.values()).mean, mean_std(b.values()).mean
    return Stat(ratio(mean_a, mean_b), math.nan, 1)


def t_interval(stat: Stat, confidence: float) -> tuple[float, float]:
    """The two-sided t-interval of the mean at ``confidence`` (nan, nan with fewer than two values)."""
    if stat.n < 2:
        return math.nan, math.nan
    from scipy import stats  # imported where it is needed: scipy is slow to import

    half = float(stats.t.ppf((1 + confidence) / 2, stat.n - 1)) * stat.std / math.sqrt(stat.n)
    return stat.mean - half, stat.mean + half


@dataclass(frozen=True)
class Decision:
    """An effect measured once per seed, its t-interval, and what it says about a threshold."""

    verdict: str  # supported | not supported | inconclusive
    mean: float
    std: float  # sample standard deviation over seeds (nan with fewer than two)
    n: int  # finite per-seed values
    low: float  # the interval (nan with fewer than two values)
    high: float
    threshold: float
    above: bool  # the claim's side of the threshold: above it (True) or below it
    confidence: float = 0.95
    per: str = "seed"  # what one value is: a seed, or a repeated measurement


def decide(
    values: Iterable[float], threshold: float, *, above: bool, confidence: float = 0.95, per: str = "seed"
) -> Decision:
    """The verdict of one effect given once per seed (nan values are not measurements).

    The interval entirely on the claim's side of the threshold (above it when ``above``, else
    below) is supported, entirely on the other side not supported; touching or straddling it, or
    fewer than two values (no interval), inconclusive."""
    stat = mean_std(values)
    low, high = t_interval(stat, confidence)
    verdict = INCONCLUSIVE
    if stat.n >= 2:
        claim_side = low > threshold if above else high < threshold
        other_side = high < threshold if above else low > threshold
        verdict = SUPPORTED if claim_side else NOT_SUPPORTED if other_side else INCONCLUSIVE
    return Decision(verdict, stat.mean, stat.std, stat.n, low, high, threshold, above, confidence, per)
