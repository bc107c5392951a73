"""The registry: every claim's declaration by id, in the report's order, the studies' titles, and
the plot section's model built from the declared thresholds.

Adding a claim is one declaration in its study's module (listed in its ``DECLARED``), its
threshold's value under params.yaml's ``plot.rules`` and its test; nothing else changes: the
threshold's key and range come from its `Rule` (`PLOT_SECTION` refuses a key no claim declares, a
missing one and one out of its range, before any work), and its figure lists it by the name its
declaration gives (`report.figures.FIGURES`)."""

from __future__ import annotations

import dataclasses

from ..config import plot_section
from . import study_a, study_b, study_c, study_x
from .claim import Claim

DECLARATIONS: tuple[Claim, ...] = (*study_a.DECLARED, *study_b.DECLARED, *study_c.DECLARED, *study_x.DECLARED)
CLAIMS: dict[str, Claim] = {c.id: c for c in DECLARATIONS}

STUDY_TITLES = {
    "A": "Cao & Shen 2023: LeNet, GPU utilization, data loading, large-batch lr",
    "B": "Xue 2023: VGG16, DataParallel vs DistributedDataParallel",
    "C": "Lee et al. 2019: adaptive mini-batch size at run time",
    "X": "dpstudy beyond the papers: feeding the GPU fully (a claim of this package, not of the seeds)",
}


def thresholds(declarations=DECLARATIONS) -> dict[str, dict[str, float]]:
    """Each `plot.rules` key the declarations read, in their order, with its allowed range; a key
    read by several rules must be declared with one range."""
    found: dict[str, dict[str, float]] = {}
    for claim in declarations:
        for rule in (r for r in claim.rules if r.key is not None):
            if found.setdefault(rule.key, dict(rule.bounds)) != dict(rule.bounds):
                raise ValueError(f"plot.rules.{rule.key}: declared with two ranges ({claim.id})")
    return found


PLOT_SECTION = plot_section(thresholds())
ReportRules = dataclasses.fields(PLOT_SECTION)[0].type  # confidence and one attribute per threshold
