"""The registry: every claim's declaration by id, in the report's order, and the studies' titles.
Adding a claim is one declaration in its study's module (listed in its ``DECLARED``), its threshold
under params.yaml's ``plot.rules`` and its test; nothing else changes."""

from __future__ import annotations

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
