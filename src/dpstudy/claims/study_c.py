"""Study C (Lee et al. 2019: adaptive mini-batch size at run time): claims C1-C4. C1-C3 are judged on
the classification task; C4 applies C2's and C3's rules to the restoration task."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..report.stats import mean_std, paired, per_seed, ratio
from ..report.tables import ADAPTIVE
from .claim import ACC, DB, SIGNED, SIGNED_DB, Claim, Effect, Evidence, Rule, Unit, X
from .query import by, column, evals, ms, seeds_text, test_images
from .wording import measured

PAPER = "Lee et al. 2019"
SCHEDULES = ("fixed_small", "fixed_large", "step_growth")
MISSING = "train_adaptive needs fixed_small, fixed_large and step_growth"
TOLERANCE = "train_adaptive's target_tolerance, negated"
TASKS: dict[str, tuple[str, Unit, Unit]] = {
    "classification": ("accuracy", ACC, SIGNED),
    "restoration": ("PSNR", DB, SIGNED_DB),
}


def _score_rules(task: str) -> tuple[Rule, Rule]:
    what, _, diff = TASKS[task]
    return (
        Rule(
            f"the large fixed batch's test {what} minus the small fixed batch's",
            above=False,
            unit=diff,
            source=TOLERANCE,
        ),
        Rule(
            f"step growth's test {what} minus the small fixed batch's (within the tolerance, or better)",
            above=True,
            unit=diff,
            source=TOLERANCE,
        ),
    )


SCORE_RULES = {task: _score_rules(task) for task in TASKS}
STEPS = Rule("optimizer steps, step growth / fixed small", above=False, unit=X, fixed=1.0)
ALLREDUCES = Rule(
    "all-reduces, step growth / fixed small (counted with more than one process)", above=False, unit=X, fixed=1.0
)
THROUGHPUT = Rule(
    "whole-run images/s, step growth / fixed small", above=True, unit=X, key="c3_min_throughput_gain", bounds={"gt": 0}
)


@dataclass(frozen=True)
class Adaptive:
    """One task's evidence: the test scores quoted, the effects of C1, C2 and C3, the steps quoted."""

    scores: str
    c1: Effect
    c2: Effect
    c3: tuple[Effect, ...]
    counts: str
    seeds: str  # of the evaluations (C1, C2)
    run_seeds: str  # of the runs (C3)


def adaptive(t, task: str) -> Adaptive | None:
    """None without the three schedules the rules compare."""
    trained, scored = t[f"{ADAPTIVE}/{task}/runs.csv"], evals(t, ADAPTIVE, task)
    score = {s: per_seed(g, "test_metric") for s, g in by(scored, "schedule").items()}
    if not set(SCHEDULES) <= set(score):
        return None
    what, fmt, _ = TASKS[task]
    small, large, growth = (score[s] for s in SCHEDULES)
    tol = _tolerance(trained, small)
    c1_rule, c2_rule = SCORE_RULES[task]
    scores = f"{task}: test {what}{test_images(scored)}, mean ± std over seeds: " + ", ".join(
        f"{s.replace('_', ' ')} {ms(mean_std(v), fmt)}" for s, v in score.items()
    )
    c1 = Effect(
        c1_rule, f"{task}: fixed large minus fixed small", tuple(paired(small, large, lambda s, x: x - s)), -tol
    )
    c2 = Effect(
        c2_rule, f"{task}: step growth minus fixed small", tuple(paired(small, growth, lambda s, g: g - s)), -tol
    )
    c3, counts = _c3(trained, task)
    return Adaptive(scores, c1, c2, c3, counts, seeds_text(scored), seeds_text(trained))


def _c3(trained: pd.DataFrame, task: str) -> tuple[tuple[Effect, ...], str]:
    """Step growth against the small fixed batch: steps, all-reduces (none to count with one process),
    whole-run images/s, per seed; and the means quoted."""
    figures = {
        name: {s: per_seed(g.assign(v=column(g, name)), "v") for s, g in by(trained, "schedule").items()}
        for name in ("steps", "allreduces", "run_images_per_s")
    }
    steps, allreduces, ips = figures["steps"], figures["allreduces"], figures["run_images_per_s"]
    empty = pd.Series(dtype=float)

    def growth_over_small(f: dict) -> tuple[float, ...]:
        return tuple(paired(f.get("step_growth", empty), f.get("fixed_small", empty), ratio))

    one_process = bool((allreduces.get("fixed_small", empty) == 0).all())
    effects = [Effect(STEPS, f"{task}: steps, step growth / fixed small", growth_over_small(steps))]
    if not one_process:
        effects.append(
            Effect(ALLREDUCES, f"{task}: all-reduces, step growth / fixed small", growth_over_small(allreduces))
        )
    effects.append(Effect(THROUGHPUT, f"{task}: whole-run images/s, step growth / fixed small", growth_over_small(ips)))

    def mean(f: dict, schedule: str) -> float:
        return mean_std(f.get(schedule, empty)).mean

    counts = (
        f"{task}: step growth {mean(steps, 'step_growth'):,.0f} optimizer steps and "
        f"{mean(allreduces, 'step_growth'):,.0f} all-reduces vs {mean(steps, 'fixed_small'):,.0f} and "
        f"{mean(allreduces, 'fixed_small'):,.0f} for the small fixed batch; whole-run throughput "
        f"{mean(ips, 'step_growth'):,.0f} vs {mean(ips, 'fixed_small'):,.0f} images/s"
        + ("; one process: no all-reduces to count" if one_process else "")
    )
    return tuple(effects), counts


def _tolerance(trained: pd.DataFrame, small: pd.Series) -> float:
    """train_adaptive's target_tolerance: the small fixed batch's mean minus the target runs.csv records
    (the training figure train_adaptive took it from, else the re-evaluated one)."""
    name = next((c for c in ("test_accuracy", "test_psnr") if len(trained) and c in trained), None)
    mean = mean_std(trained.loc[trained["schedule"] == "fixed_small", name]).mean if name else mean_std(small).mean
    return round(mean - mean_std(column(trained, "target")).mean, 6)


def c1(t, rules) -> Evidence:
    a = adaptive(t, "classification")
    return Evidence(a.scores, a.seeds, (a.c1,)) if a else Evidence("no runs", "", missing=MISSING)


def c2(t, rules) -> Evidence:
    a = adaptive(t, "classification")
    return Evidence(a.scores, a.seeds, (a.c2,)) if a else Evidence("no runs", "", missing=MISSING)


def c3(t, rules) -> Evidence:
    a = adaptive(t, "classification")
    return Evidence(a.counts, a.run_seeds, a.c3) if a else Evidence("no runs", "", missing=MISSING)


_OUTCOME = {
    "supported": "the large fixed batch lowered PSNR by more than the tolerance",
    "not supported": "the large fixed batch did not lower PSNR by more than the tolerance",
    "inconclusive": "the seeds cannot tell whether the large fixed batch lowered PSNR",
}


def c4(t, rules) -> Evidence:
    a = adaptive(t, "restoration")
    if a is None:
        return Evidence("no restoration runs", "", missing=MISSING)
    own = a.c1.judge(rules)
    quote = (
        f"{a.scores}. {a.counts}. Restoration's own C1 result is {own.decision.verdict}: "
        f"{_OUTCOME[own.decision.verdict]}. Fixed large minus fixed small, per seed, is "
        f"{measured(own.decision, own.fmt)}, against C1's threshold {own.fmt(own.decision.threshold)}"
    )
    return Evidence(quote, a.seeds, (a.c2, *a.c3))


C1 = Claim(
    "C1",
    "C",
    PAPER,
    "A large fixed batch lowers accuracy relative to a small fixed batch.",
    "C1_C3_adaptive_classification.png",
    (SCORE_RULES["classification"][0],),
    c1,
    remark="A difference of test accuracy does not depend on the hardware",
)
C2 = Claim(
    "C2",
    "C",
    PAPER,
    "Gradually increasing the batch size and the learning rate keeps accuracy close to the small fixed batch ...",
    "C1_C3_adaptive_classification.png",
    (SCORE_RULES["classification"][1],),
    c2,
    remark="A difference of test accuracy does not depend on the hardware",
)
C3 = Claim(
    "C3",
    "C",
    PAPER,
    "... while improving parallel scalability (fewer, larger steps: fewer all-reduces, higher throughput).",
    "C1_C3_adaptive_classification.png",
    (STEPS, ALLREDUCES, THROUGHPUT),
    c3,
    remark="Ratios mean the same on any hardware",
)
C4 = Claim(
    "C4",
    "C",
    PAPER,
    "This holds for image restoration (PSNR) as well as classification.",
    "C4_adaptive_restoration.png",
    (SCORE_RULES["restoration"][1], STEPS, ALLREDUCES, THROUGHPUT),
    c4,
    remark="C2's and C3's rules on the restoration task; restoration's C1 is quoted beside them, not part of the rule",
)
DECLARED = (C1, C2, C3, C4)
