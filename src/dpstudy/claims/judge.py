"""Every declared claim through one engine: its evidence query, what the hardware lacks, `decide` on
each effect, `combine` over the parts, and the sentences that say so, all written from the rule and
the numbers (no claim words its own verdict)."""

from __future__ import annotations

from collections.abc import Mapping

from ..report.stats import INCONCLUSIVE, NOT_TESTABLE
from . import query
from .claim import Claim, Evidence, Rule, Verdict, combine
from .registry import CLAIMS, ReportRules
from .wording import part_text, reason


def judge(tables: Mapping, evaluations, rules: ReportRules) -> list[Verdict]:
    """A `Verdict` per declared claim, in `CLAIMS` order. ``tables``: `report.tables.load_tables`'
    frames (or rows of strings, as csv reads them); ``evaluations``: evaluate/evaluations.csv."""
    t = query.as_tables(tables, evaluations)
    capacity = query.Capacity.of(t)
    return [verdict(claim, t, rules, capacity) for claim in CLAIMS.values()]


def verdict(claim: Claim, t, rules: ReportRules, capacity: query.Capacity) -> Verdict:
    found = claim.evidence(t, rules)
    rule = rule_text(claim, rules, found)
    lacking = capacity.lacks(claim.requires)
    if lacking or not found.effects:
        why = f"{lacking}{': ' + claim.untestable if lacking and claim.untestable else ''}" or found.missing
        return Verdict(claim.id, NOT_TESTABLE, found.quote, rule, why, seeds=found.seeds)
    parts = tuple(e.judge(rules) for e in found.effects)
    code = combine(parts, claim.every)
    why = (
        "; ".join(f"{p.label}: {reason(p)}" for p in parts if p.decision.verdict == INCONCLUSIVE)
        if code == INCONCLUSIVE
        else ""
    )
    return Verdict(claim.id, code, found.quote, rule, why, "; ".join(map(part_text, parts)), found.seeds, parts)


def rule_text(claim: Claim, rules: ReportRules, found: Evidence) -> str:
    """The claim's rule in words, from its declaration: each effect, its side and threshold, and how
    the parts combine."""
    given = {e.rule: e.threshold for e in found.effects if e.threshold is not None}
    lines = [_one_rule(r, rules, given.get(r)) for r in claim.rules]
    if len(found.effects) > 1 or len(claim.rules) > 1:
        lines[-1] += (
            ". Supported if every part holds, not supported if one lies entirely on the wrong side"
            if claim.every
            else ". Supported if one part holds, not supported if every part lies entirely on the wrong side"
        )
    return "; ".join(lines) + (f". {claim.remark}" if claim.remark else "")


def _one_rule(r: Rule, rules: ReportRules, given: float | None) -> str:
    side, other = ("above", "below") if r.above else ("below", "above")
    threshold = given if given is not None else r.threshold(rules)
    where = f" (plot.rules.{r.key})" if r.key else f" ({r.source})" if r.source else ""
    value = r.unit(threshold) if threshold is not None else "the threshold"
    return (
        f"{r.effect}, paired by {r.per}: supported if its {rules.confidence:.0%} interval over {r.per}s lies "
        f"entirely {side} {value}{where}, not supported if entirely {other}"
    )
