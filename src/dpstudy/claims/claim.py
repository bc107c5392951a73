"""What a claim is: one declaration (`Claim`) with its rules (`Rule`), and what judging it gives
(`Part`, `Verdict`). The declarations live in study_a/b/c/x.py; `judge.judge` runs them all."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..report.stats import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Decision, decide

if TYPE_CHECKING:
    from ..report.tables import Tables
    from .registry import ReportRules


@dataclass(frozen=True)
class Unit:
    """How an effect's numbers are written: ``format(x, spec)`` + ``suffix``; nan and inf read "n/a"."""

    spec: str
    suffix: str = ""

    def __call__(self, x: float) -> str:
        return f"{x:{self.spec}}{self.suffix}" if math.isfinite(x) else "n/a"


PCT, PCT1, UTIL = Unit(".0%"), Unit(".1%"), Unit(".1f", "%")  # shares; a utilization already in percent
ACC, SIGNED = Unit(".3f"), Unit("+.3f")  # an accuracy; a difference of accuracies
DB, SIGNED_DB = Unit(".2f", " dB"), Unit("+.2f", " dB")  # a PSNR; a difference of PSNRs
X = Unit(".2f", "x")  # a ratio


@dataclass(frozen=True)
class Rule:
    """How one effect decides: what one value is (paired by seed), the claim's side of a threshold,
    and where the threshold comes from: a `plot.rules` key (``key``, through ``scale``; ``bounds``:
    the values params.yaml may give it, e.g. ``{"ge": 0, "lt": 1}``, which config checks before any
    work), a value the claim fixes (``fixed``), or the data (an `Effect`'s own threshold, named by
    ``source``)."""

    effect: str
    above: bool
    unit: Unit
    key: str | None = None
    bounds: Mapping[str, float] = field(default_factory=dict, hash=False)
    scale: Callable[[float], float] = float
    fixed: float | None = None
    source: str = ""
    per: str = "seed"

    def threshold(self, rules: ReportRules) -> float | None:
        if self.key is not None:
            return self.scale(getattr(rules, self.key))
        return self.fixed


@dataclass(frozen=True)
class Effect:
    """One measured effect of a claim: its values (one per seed, paired), and the rule that judges it."""

    rule: Rule
    label: str
    values: tuple[float, ...]
    threshold: float | None = None  # where the data gives it (train_adaptive's target tolerance)
    against: str = ""  # what decides against whatever the interval says (a diverged seed)

    def judge(self, rules: ReportRules) -> Part:
        """`decide` on the values; ``against`` (a diverged seed) overrides the interval."""
        r = self.rule
        threshold = self.threshold if self.threshold is not None else r.threshold(rules)
        d = decide(self.values, threshold, above=r.above, confidence=rules.confidence, per=r.per)
        if self.against:
            d = dataclasses.replace(d, verdict=NOT_SUPPORTED)
        return Part(self.label, d, r.unit, self.against)


@dataclass(frozen=True)
class Evidence:
    """What a claim's query found: the numbers measured (``quote``), the seeds they rest on, the
    effects to judge; with no effects, ``missing`` says what the run lacks."""

    quote: str
    seeds: str
    effects: tuple[Effect, ...] = ()
    missing: str = ""


@dataclass(frozen=True)
class Claim:
    """One claim: what the paper says, the evidence query, the rules, the figure that shows it.

    ``requires`` is what the hardware must offer ("gpu", "2 gpus", "2 processes"); ``every``: all
    parts must hold (else one part suffices); ``untestable`` adds to the generated reason when the
    hardware lacks it; ``remark`` ends the generated rule (e.g. why it means the same on any GPU)."""

    id: str
    study: str
    paper: str
    statement: str
    figure: str
    rules: tuple[Rule, ...]
    evidence: Callable[[Tables, ReportRules], Evidence]
    requires: str = ""
    every: bool = True
    untestable: str = ""
    remark: str = ""


@dataclass(frozen=True)
class Part:
    """One judged effect of a claim (a claim can need several: one per mode, per batch size)."""

    label: str
    decision: Decision
    fmt: Callable[[float], str]
    note: str = ""  # what overrode the interval (e.g. a diverged seed)


@dataclass
class Verdict:
    claim: str
    verdict: str
    evidence: str  # the numbers measured, per configuration
    rule: str  # how the verdict follows from them
    why: str = ""  # not testable: what the run lacks; inconclusive: which interval reaches its threshold
    effect: str = ""  # the effect(s) judged: mean ± std over seeds, the interval, each part's verdict
    seeds: str = ""  # how many seeds (or repeated measurements) the verdict rests on
    parts: tuple[Part, ...] = field(default=())  # the decisions behind the verdict, with their numbers

    @property
    def figure(self) -> str:
        """The figure that shows the claim, as its declaration names it."""
        from .registry import CLAIMS  # the registry imports the declarations, which import this module

        return CLAIMS[self.claim].figure if self.claim in CLAIMS else ""


def combine(parts: Sequence[Part], every: bool = True) -> str:
    """The verdict of a claim that needs ``every`` part to hold (else: some part).

    every: one part not supported decides against, all supported for; some: one supported decides
    for, all not supported against. Anything else is inconclusive."""
    verdicts = [p.decision.verdict for p in parts]
    if not parts:
        return INCONCLUSIVE
    decisive, other = (NOT_SUPPORTED, SUPPORTED) if every else (SUPPORTED, NOT_SUPPORTED)
    if decisive in verdicts:
        return decisive
    if all(v == other for v in verdicts):
        return other
    return INCONCLUSIVE
