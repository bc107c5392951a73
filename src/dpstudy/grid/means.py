"""The two means a grid's figures are taken with, so a figure is never averaged over a gap unawares."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def finite_mean(values: Iterable[float]) -> float:
    """The mean; nan if there is none or any value is not finite (e.g. a seed that never reached
    the target, or a run that diverged): a mean over part of the seeds would pass for all."""
    values = list(values)
    return statistics.fmean(values) if values and all(math.isfinite(v) for v in values) else math.nan


def measured_mean(values: Iterable[float]) -> float:
    """The mean of the values that were measured (nan: not measured, e.g. an epoch's NVML window
    too short for its averaging period, or no GPU for the profiler's busy share); nan if none was."""
    measured = [v for v in values if not math.isnan(v)]
    return statistics.fmean(measured) if measured else math.nan
