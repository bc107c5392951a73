"""The claims of the three studies (and dpstudy's own), one declaration each (`Claim`, in
study_a/b/c/x.py), found through `CLAIMS`; `judge` runs every declaration over the result tables
and generates each verdict and the sentences that explain it from the declared rules."""

from ..report.stats import INCONCLUSIVE, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, VERDICTS
from .claim import Claim, Effect, Evidence, Part, Rule, Verdict, combine
from .judge import judge
from .registry import CLAIMS, DECLARATIONS, PLOT_SECTION, STUDY_TITLES, ReportRules

__all__ = [
    "CLAIMS",
    "DECLARATIONS",
    "INCONCLUSIVE",
    "NOT_SUPPORTED",
    "NOT_TESTABLE",
    "PLOT_SECTION",
    "STUDY_TITLES",
    "SUPPORTED",
    "VERDICTS",
    "Claim",
    "Effect",
    "Evidence",
    "Part",
    "ReportRules",
    "Rule",
    "Verdict",
    "combine",
    "judge",
]
