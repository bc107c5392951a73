"""The claims registry: one declaration per claim, each rule's threshold in params.yaml's
``plot.rules`` and each key there declared; the statistics the claims and figures share; and the
engine's decisions following the declared rule (never a sentence written beside it)."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import pandas as pd
import pytest
import yaml
from conftest import REPO

from dpstudy.claims import CLAIMS, DECLARATIONS, NOT_SUPPORTED, PLOT_SECTION, STUDY_TITLES, SUPPORTED, judge
from dpstudy.claims.query import Capacity, as_tables
from dpstudy.claims.registry import thresholds
from dpstudy.config import load_section
from dpstudy.errors import UserError
from dpstudy.report.figures import FIGURES
from dpstudy.report.stats import decide, mean_std, paired, per_seed, ratio, ratios, seed_order

RULE_KEYS = {k for k in yaml.safe_load((REPO / "params.yaml").read_text())["plot"]["rules"] if k != "confidence"}


def declared_keys(claim) -> set[str]:
    return {r.key for r in claim.rules if r.key}


def test_every_claim_in_params_rules_has_exactly_one_declaration_and_the_reverse():
    """A plot.rules key names its claim (``a2_resident_factor``: A2): that claim has exactly one
    declaration, and declares the key; every key a declaration reads is in plot.rules."""
    count = Counter(c.id for c in DECLARATIONS)
    assert all(n == 1 for n in count.values()) and list(CLAIMS) == list(count)
    for key in RULE_KEYS:
        owner = key.split("_")[0].upper()
        assert count[owner] == 1, key
        assert key in declared_keys(CLAIMS[owner]), key
    used = set().union(*(declared_keys(c) for c in DECLARATIONS))
    assert used == RULE_KEYS


@pytest.mark.parametrize(
    "key, value, named",
    [  # each threshold's range comes from its Rule's bounds; confidence is the config's own
        ("plot.rules.a1_min_relative_drop", 1.0, "params.yaml: plot.rules.a1_min_relative_drop: must be >= 0 and < 1"),
        ("plot.rules.b2_min_imbalance", 0.5, "params.yaml: plot.rules.b2_min_imbalance: must be >= 1, got 0.5"),
        ("plot.rules.confidence", 1.5, "params.yaml: plot.rules.confidence: must be > 0 and < 1"),
        ("plot.rules.z9_new_rule", 1.0, "params.yaml: plot.rules.z9_new_rule: unknown key (allowed: confidence, a1_"),
        (
            "plot.rules.c3_min_throughput_gain",
            "fast",
            "params.yaml: plot.rules.c3_min_throughput_gain: expected a number",
        ),
    ],
)
def test_plot_rules_are_checked_against_the_declared_thresholds(tmp_path, key, value, named):
    from conftest import write_params

    path = write_params(tmp_path / "params.yaml", {key: value})
    with pytest.raises(UserError) as err:
        load_section("plot", path, model=PLOT_SECTION)
    assert str(err.value).startswith(named) and "\n" not in str(err.value)


def test_the_plot_stage_refuses_an_undeclared_threshold_in_one_line_before_any_work(tmp_path):
    from conftest import run_cli, write_params

    path = write_params(tmp_path / "params.yaml", {"plot.rules.z9_new_rule": 1.0})
    done = run_cli("plot", "--params", str(path), "--results", str(tmp_path / "none"), cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {path.name}: plot.rules.z9_new_rule: unknown key (allowed: confidence, "
        + ", ".join(thresholds())
        + ")"
    ]
    assert not (tmp_path / "none").exists()


def test_a_missing_threshold_is_refused_by_name(tmp_path):
    from conftest import repo_params

    params = repo_params()
    del params["plot"]["rules"]["x1_max_relative_drop"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(UserError, match=r"plot\.rules\.x1_max_relative_drop: missing"):
        load_section("plot", path, model=PLOT_SECTION)


def test_a_threshold_read_by_two_rules_must_be_declared_with_one_range():
    one = dataclasses.replace(CLAIMS["B1"], rules=(dataclasses.replace(CLAIMS["B1"].rules[0], bounds={"ge": 2}),))
    with pytest.raises(ValueError, match=r"plot\.rules\.b1_max_speedup: declared with two ranges"):
        thresholds((*DECLARATIONS, one))
    assert list(thresholds()) == [k for k in yaml.safe_load((REPO / "params.yaml").read_text())["plot"]["rules"]][1:]


def test_every_declaration_is_complete():
    for c in DECLARATIONS:
        assert c.study == c.id[0] and c.study in STUDY_TITLES and c.paper and c.statement and c.rules
        assert c.id in FIGURES[c.figure]  # the figure that shows it lists it
        assert c.requires in ("", "gpu", "2 gpus", "2 processes")
        for r in c.rules:  # a threshold from params, fixed by the claim, or named where the data gives it
            assert (r.key is not None) + (r.fixed is not None) + bool(r.source) == 1, (c.id, r.effect)


def test_per_seed_means_within_a_seed_and_pairs_in_seed_order():
    df = pd.DataFrame({"seed": [10, 2, 2, 1], "v": [4.0, 1.0, 3.0, math.nan]})
    got = per_seed(df, "v")
    assert list(got.index) == [1, 2, 10] and math.isnan(got[1]) and got[2] == 2.0 and got[10] == 4.0
    assert paired({"2": 4.0, "10": 9.0, "x": 1.0}, {"10": 3.0, "2": 2.0}, ratio) == [2.0, 3.0]
    assert sorted(["10", "2", "a", "1"], key=seed_order) == ["1", "2", "10", "a"]
    assert ratio(1.0, 0.0) != ratio(1.0, 0.0)  # nan: no ratio over nothing


def test_ratios_pair_by_seed_and_fall_back_to_the_means():
    assert ratios({0: 2.0, 1: 4.0}, {0: 1.0, 1: 1.0}) == mean_std([2.0, 4.0])
    fallback = ratios({0: 2.0}, {1: 4.0})
    assert (fallback.mean, fallback.n) == (0.5, 1) and math.isnan(fallback.std)


def test_mean_std_ignores_nan_and_is_order_free():
    a, b = mean_std([0.1, 0.2, math.nan, 0.3]), mean_std([0.3, 0.1, 0.2])
    assert a == b and a.n == 3 and a.std == pytest.approx(0.1)


def test_a_rules_threshold_comes_from_its_key():
    """Moving a1_min_relative_drop across the measured fall (50% ± 0.6%) flips A1's decision."""
    from test_report import RULES, base_tables

    tables, evals = base_tables(gpu=True)
    low = {v.claim: v for v in judge(tables, evals, dataclasses.replace(RULES, a1_min_relative_drop=0.3))}["A1"]
    high = {v.claim: v for v in judge(tables, evals, dataclasses.replace(RULES, a1_min_relative_drop=0.7))}["A1"]
    assert (low.verdict, high.verdict) == (SUPPORTED, NOT_SUPPORTED)
    assert [p.decision.threshold for p in high.parts] == [0.7, 0.7]  # one part per mode
    assert low.parts[0].decision == decide(_a1_falls(), 0.3, above=True)  # the engine is `decide` on the falls


def _a1_falls() -> list[float]:
    """base_tables' single-mode standard-loader utilization, 80+s% at batch 16 and 40+s% at 256."""
    return [1 - (40 + s) / (80 + s) for s in (0, 1, 2)]


def test_capacity_is_read_from_the_tables():
    from test_report import base_tables

    cpu = Capacity.of(as_tables(*base_tables()))
    assert (cpu.gpu, cpu.gpus, cpu.processes) == (False, 1, 2)
    assert cpu.lacks("gpu") and cpu.lacks("2 gpus") and not cpu.lacks("2 processes") and not cpu.lacks("")
    two = Capacity.of(as_tables(*base_tables(gpu=True, dp_devices=2)))
    assert (two.gpu, two.gpus) == (True, 2) and not two.lacks("gpu") and not two.lacks("2 gpus")


def test_a_run_with_no_rows_leaves_every_claim_not_testable():
    from test_report import RULES

    from dpstudy.report.tables import INPUTS

    result = judge({rel: [] for rel in INPUTS}, [], RULES)
    assert [v.claim for v in result] == list(CLAIMS)
    assert {v.verdict for v in result} == {"not testable here"} and all(v.why for v in result)
