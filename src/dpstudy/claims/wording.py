"""The sentences of a judged effect, written from its decision and unit (shared by `judge` and the
evidence that quotes a decision, e.g. C4 quoting restoration's C1)."""

from __future__ import annotations

from ..report.stats import Decision
from .claim import Part


def measured(d: Decision, fmt) -> str:
    """``+0.012 ± 0.004 over 3 seeds, 95% interval +0.002 to +0.022``."""
    if d.n == 0:
        return "no finite measurement"
    if d.n == 1:
        return f"{fmt(d.mean)} from one {d.per} (no interval)"
    return (
        f"{fmt(d.mean)} ± {fmt(d.std).lstrip('+')} over {d.n} {d.per}s, "
        f"{d.confidence:.0%} interval {fmt(d.low)} to {fmt(d.high)}"
    )


def part_text(p: Part) -> str:
    """``label: 1.53x ± 0.40 over 3 seeds, 95% interval 0.53x to 2.52x, threshold > 1.20x: inconclusive``
    (the threshold with the side of it the claim needs the interval on)."""
    d = p.decision
    side = ">" if d.above else "<"
    return (
        f"{p.label}: {measured(d, p.fmt)}, threshold {side} {p.fmt(d.threshold)}: "
        f"{p.note + ': ' if p.note else ''}{d.verdict}"
    )


def reason(p: Part) -> str:
    """Why a part is inconclusive."""
    d = p.decision
    if d.n == 0:
        return "no finite measurement"
    if d.n == 1:
        return f"one {d.per}: no interval"
    return (
        f"the {d.confidence:.0%} interval {p.fmt(d.low)} to {p.fmt(d.high)} reaches the threshold {p.fmt(d.threshold)}"
    )
