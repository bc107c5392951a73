"""The claims report: the verdict logic on known distributions, each rule's decisions and numbers on
tables with known numbers (three seeds each), the assumptions read from params.yaml, and REPORT.md's
shape. Verdicts are checked as codes and numbers (`Verdict.parts`), not as sentences."""

from __future__ import annotations

import base64
import dataclasses
import math
import random
import re
from datetime import UTC, datetime

import pytest
import yaml
from conftest import AGREED, DIGITS_FACTS, REPO, make_png

from dpstudy.claims import CLAIMS, PLOT_SECTION, Part, combine, judge
from dpstudy.config import load_section
from dpstudy.report.facts import assumptions
from dpstudy.report.figures import FIGURES
from dpstudy.report.html import figure_anchor, render_html
from dpstudy.report.render import MLFLOW_NOTE, StageRun, render
from dpstudy.report.stats import INCONCLUSIVE, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, decide

# The repository's own thresholds (params.yaml's plot.rules), as the plot stage reads them; the
# tests below set the numbers they judge against these values.
RULES = load_section("plot", REPO / "params.yaml", model=PLOT_SECTION)[1].rules
SEEDS = (0, 1, 2)


# --------------------------------------------------------------------------------------------
# The verdict logic: per-seed effects, a threshold, the claim's side


def draws(mean: float, sd: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


@pytest.mark.parametrize("above", [True, False])
def test_known_distributions_give_supported_not_supported_inconclusive(above):
    """A clear effect, a null effect and one exactly at the threshold (0.25, seeds' sd 0.02)."""
    sign = 1 if above else -1
    threshold = 0.25 * sign
    clear = decide([sign * v for v in (0.50, 0.52, 0.48, 0.51, 0.49)], threshold, above=above)
    null = decide([sign * v for v in (0.01, -0.02, 0.0, 0.015, -0.005)], threshold, above=above)
    at = decide([sign * v for v in (0.23, 0.27, 0.25, 0.26, 0.24)], threshold, above=above)
    assert (clear.verdict, null.verdict, at.verdict) == (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
    assert clear.n == 5 and clear.mean == pytest.approx(sign * 0.50) and clear.std == pytest.approx(0.0158, abs=1e-4)
    assert at.low < threshold < at.high  # the interval straddles the threshold


def test_the_interval_is_a_t_interval_over_seeds():
    d = decide([1.0, 2.0, 3.0], -1.0, above=True)
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) × std / sqrt(n)
    assert (d.low, d.high) == pytest.approx((2 - half, 2 + half), abs=1e-5)
    assert d.verdict == SUPPORTED and decide([1.0, 2.0, 3.0], 5.0, above=True).verdict == NOT_SUPPORTED
    assert decide([1.0, 2.0, 3.0], 0.0, above=True).verdict == INCONCLUSIVE  # -0.48 to 4.48 straddles 0
    assert decide([1.0, 2.0, 3.0], d.low, above=True).verdict == INCONCLUSIVE  # touching is not clearing


def test_drawn_samples_at_the_threshold_are_inconclusive_about_95_percent_of_the_time():
    """Coverage: seeds drawn from N(threshold, 1) leave the threshold inside the interval ~95% of the time;
    drawn from far above it, they support the claim."""
    at = [decide(draws(1.0, 1.0, 3, i), 1.0, above=True).verdict for i in range(2000)]
    assert 0.93 < at.count(INCONCLUSIVE) / len(at) < 0.97
    assert at.count(SUPPORTED) > 0 and at.count(NOT_SUPPORTED) > 0
    far = [decide(draws(5.0, 0.5, 3, i), 1.0, above=True).verdict for i in range(200)]
    assert far.count(SUPPORTED) >= 190


def test_one_seed_gives_no_interval():
    one = decide([0.9], 0.25, above=True)
    assert one.verdict == INCONCLUSIVE and one.n == 1 and one.mean == 0.9
    assert math.isnan(one.low) and math.isnan(one.high) and math.isnan(one.std)
    two = decide([0.9, math.nan], 0.25, above=True)  # nan is not a measurement
    assert two.verdict == INCONCLUSIVE and two.n == 1
    none = decide([], 0.25, above=True)
    assert none.verdict == INCONCLUSIVE and none.n == 0 and math.isnan(none.mean)


def test_parts_combine_for_every_and_for_some():
    def part(verdict):
        return Part("p", dataclasses.replace(decide([1.0, 1.1], 0, above=True), verdict=verdict), str)

    s, n, i = part(SUPPORTED), part(NOT_SUPPORTED), part(INCONCLUSIVE)
    assert combine([s, s]) == SUPPORTED and combine([s, i]) == INCONCLUSIVE
    assert combine([i, n]) == NOT_SUPPORTED and combine([]) == INCONCLUSIVE
    assert combine([n, i], every=False) == INCONCLUSIVE and combine([n, s], every=False) == SUPPORTED
    assert combine([n, n], every=False) == NOT_SUPPORTED


# --------------------------------------------------------------------------------------------
# Fabricated tables: three seeds, each a little apart


def dp_row(
    sweep,
    mode,
    loader,
    batch,
    seed,
    *,
    util=90.0,
    wait=0.5,
    devices=1,
    epoch=1.0,
    mem="900",
    rule="linear",
    steps="",
    loss="",
    name=None,
):
    return {
        "name": name or f"{sweep}-{mode}-{loader}-b{batch}-{rule}-s{seed}",
        "sweep": sweep,
        "mode": mode,
        "loader": loader,
        "global_batch": str(batch),
        "seed": str(seed),
        "utilization_pct": f"{util:g}",
        "data_wait_fraction": f"{wait:g}",
        "devices": str(devices),
        "epoch_time_s": f"{epoch:g}",
        "device_mem_mib": mem,
        "world": "1",
        "lr_rule": rule,
        "steps": str(steps),
        "train_loss": str(loss),
        "epochs": "3",
    }


def evaluation(stage, sweep, configuration, value, seed, outcome="finished"):
    return {
        "stage": stage,
        "sweep": sweep,
        "configuration": configuration,
        "name": f"{sweep}-{configuration}-s{seed}",
        "test_metric": str(value),
        "seed": str(seed),
        "test_images": "359",
        "outcome": outcome,
    }


def ddp_row(world, seed, rule="linear", epoch=1.0, batch=32):
    """A train_ddp VGG run: ``batch`` per process, named as evaluate names its evaluation."""
    return dict(
        dp_row(
            "vgg",
            "ddp",
            "standard",
            batch * world,
            seed,
            epoch=epoch,
            rule=rule,
            name=f"vgg-ddp{world}-standard0w-b{batch}-{rule}-s{seed}",
        ),
        world=str(world),
    )


def adaptive_rows(task, target, steps, allreduces, ips):
    return [
        {
            "name": f"{task}-{s}-ddp2-resident-b32-none-s{seed}",
            "schedule": s,
            "seed": str(seed),
            "target": str(target),
            "steps": str(steps[s]),
            "allreduces": str(allreduces[s]),
            "run_images_per_s": str(ips[s] * (1 + 0.01 * seed)),
        }
        for s in steps
        for seed in SEEDS
    ]


def probe_rows(source: str, graph_util: dict, eager_util: dict, repeats: int = 3) -> list[dict]:
    """profile_dataloader/probes.csv: resident probes, eager and graph, ``repeats`` each (util +rep)."""
    return [
        {
            "series": "resident" if step == "eager" else "resident, graph",
            "loader": "resident",
            "step": step,
            "batch_size": str(b),
            "repeat": str(rep),
            "utilization_pct": str(util[b] + rep),
            "utilization_source": source,
            "device_busy_pct": str(min(100.0, util[b] + 5)),
            "data_wait_fraction": "0.1",
        }
        for step, util in (("eager", eager_util), ("graph", graph_util))
        for b in util
        for rep in range(repeats)
    ]


def base_tables(gpu: bool = False, dp_devices: int = 1) -> tuple[dict, list]:
    """A CPU-only run's shape with three seeds, numbers chosen so every testable rule clearly holds."""
    util = {16: 80.0, 64: 60.0, 256: 40.0}  # a 50% relative fall
    wait = {16: 0.4, 64: 0.5, 256: 0.6}
    runs = [
        dp_row(
            "lenet_utilization",
            mode,
            loader,
            b,
            seed,
            util=util[b] + seed if loader == "standard" else 95.0,
            wait=wait[b] + 0.01 * seed if loader == "standard" else 0.05 + 0.005 * seed,
        )
        for mode in ("single", "dp")
        for loader in ("standard", "resident")
        for b in (16, 64, 256)
        for seed in SEEDS
    ]
    runs += [
        dp_row(
            "lenet_lr_scaling",
            "single",
            "resident",
            b,
            seed,
            rule=rule,
            steps=900 // (b // 16),
            loss=0.05 * b / 16,
            name=f"lenet_lr_scaling-single-resident-b{b}-{rule}-s{seed}",
        )
        for b in (16, 64, 256)
        for rule in ("none", "linear")
        for seed in SEEDS
    ]
    per_dev = ";".join(["1500"] + ["1000"] * (dp_devices - 1))
    runs += [dp_row("vgg", "single", "standard", b, seed, epoch=2.0 + 0.01 * seed) for b in (32, 128) for seed in SEEDS]
    runs += [
        dp_row("vgg", "dp", "standard", b, seed, epoch=1.9 + 0.01 * seed, devices=dp_devices, mem=per_dev)
        for b in (32, 128)
        for seed in SEEDS
    ]
    ddp = [
        ddp_row(w, seed, rule, epoch=2.0 / w + 0.01 * seed)
        for w in (1, 2)
        for rule in ("none", "linear")
        for seed in SEEDS
    ]
    tables = {
        "profile_dataloader/probes.csv": probe_rows(
            "gpu_util_pct" if gpu else "cpu_util_pct", {32: 90.0, 2048: 93.0}, {32: 16.0, 2048: 2.0}
        ),
        "profile_dataloader/workers.csv": [
            {
                "series": f"batch {b}",
                "batch_size": str(b),
                "num_workers": str(w),
                "repeat": str(rep),
                "images_per_s": str(v + (10 * rep if w == 0 else -10 * rep)),
            }
            for b in (16, 256)
            for w, v in ((0, 1000), (1, 900), (2, 1500))
            for rep in range(3)
        ],
        "train_dp/runs.csv": runs,
        "train_ddp/runs.csv": ddp,
        "train_adaptive/classification/runs.csv": adaptive_rows(
            "classification",
            0.98,
            {"fixed_small": 540, "fixed_large": 72, "step_growth": 134, "noise_scale": 157},
            {"fixed_small": 1079, "fixed_large": 143, "step_growth": 267, "noise_scale": 313},
            {"fixed_small": 1160, "fixed_large": 1980, "step_growth": 1810, "noise_scale": 1700},
        ),
        "train_adaptive/restoration/runs.csv": adaptive_rows(
            "restoration",
            18.4,
            {"fixed_small": 720, "fixed_large": 184, "step_growth": 273, "noise_scale": 540},
            {"fixed_small": 720, "fixed_large": 184, "step_growth": 273, "noise_scale": 540},
            {"fixed_small": 1130, "fixed_large": 2500, "step_growth": 1970, "noise_scale": 1300},
        ),
    }
    jitter = {0: 0.0, 1: 0.002, 2: -0.002}
    evals = [
        evaluation("train_dp", "lenet_lr_scaling", f"single-resident-b{b}-{rule}", acc + jitter[seed], seed)
        for b, rule, acc in (
            (16, "none", 0.99),
            (16, "linear", 0.99),
            (64, "none", 0.96),
            (64, "linear", 0.985),
            (256, "none", 0.80),
            (256, "linear", 0.975),
        )
        for seed in SEEDS
    ]
    evals += [
        evaluation("train_ddp", "vgg", f"ddp{w}-standard0w-b32-{rule}", acc + jitter[seed], seed)
        for w, rule, acc in ((1, "none", 0.98), (1, "linear", 0.98), (2, "none", 0.95), (2, "linear", 0.975))
        for seed in SEEDS
    ]
    for task, values in (
        ("classification", {"fixed_small": 0.99, "fixed_large": 0.94, "step_growth": 0.985, "noise_scale": 0.988}),
        ("restoration", {"fixed_small": 18.5, "fixed_large": 18.6, "step_growth": 18.45, "noise_scale": 18.46}),
    ):
        evals += [
            evaluation("train_adaptive", task, f"{s}-ddp2-resident-b32-none", v + jitter[seed], seed)
            for s, v in values.items()
            for seed in SEEDS
        ]
    return tables, evals


def verdicts(tables, evals, rules=RULES) -> dict[str, str]:
    return {v.claim: v.verdict for v in judge(tables, evals, rules)}


def by_claim(tables, evals, rules=RULES) -> dict:
    return {v.claim: v for v in judge(tables, evals, rules)}


def set_metric(evals, configuration, values):
    """The test figure of one configuration, seed by seed."""
    for e in evals:
        if e["configuration"] == configuration:
            e["test_metric"] = str(values[int(e["seed"])])


# --------------------------------------------------------------------------------------------
# Each claim's rule


def test_cpu_run_every_claim_judged_and_gpu_claims_not_testable():
    result = judge(*base_tables(), RULES)
    assert [v.claim for v in result] == list(CLAIMS)
    got = {v.claim: v.verdict for v in result}
    assert {c for c, v in got.items() if v == NOT_TESTABLE} == {"A1", "B1", "B2", "B3", "B4", "X1"}
    assert all(got[c] == SUPPORTED for c in ("A2", "A3", "A4", "B5", "C1", "C2", "C3", "C4")), got
    v = {v.claim: v for v in result}
    assert all(not x.parts for x in v.values() if x.verdict == NOT_TESTABLE)
    assert all(
        p.decision.n == 3 and p.decision.per == ("measurement" if c == "A3" else "seed")
        for c, x in v.items()
        for p in x.parts
    )
    assert [len(v[c].parts) for c in ("A2", "A3", "A4", "B5", "C1", "C2", "C3", "C4")] == [4, 1, 2, 1, 1, 1, 3, 4]


@pytest.mark.parametrize(
    "graph_util, repeats, verdict",
    [
        ({32: 90.0, 2048: 93.0}, 3, SUPPORTED),  # flat (a rise): no fall with a CUDA graph
        ({32: 90.0, 512: 60.0, 2048: 40.0}, 3, NOT_SUPPORTED),  # falls by half
        ({32: 90.0, 2048: 93.0}, 1, INCONCLUSIVE),  # one repeat: no interval
        ({32: 90.0}, 3, NOT_TESTABLE),  # one batch size
    ],
)
def test_x1_judges_the_graph_probes_fall_in_utilization_over_repeats(graph_util, repeats, verdict):
    tables, evals = base_tables(gpu=True)
    tables["profile_dataloader/probes.csv"] = probe_rows("gpu_util_pct", graph_util, {32: 16.0, 2048: 2.0}, repeats)
    for r in tables["train_dp/runs.csv"]:
        if r["sweep"] == "lenet_lr_scaling":
            r.update(step="graph", device_busy_pct=str(90 + int(r["seed"])))
    v = by_claim(tables, evals)["X1"]
    assert v.verdict == verdict, (v.effect, v.why)
    assert "91.0% ± 0.9% at batch 16" in v.evidence  # train_dp's device busy share: 2 lr rules × 3 seeds per batch
    if verdict != NOT_TESTABLE:
        [part] = v.parts
        large = max(graph_util)
        falls = [1 - (graph_util[large] + r) / (graph_util[32] + r) for r in range(repeats)]
        assert (part.decision.n, part.decision.per, part.decision.threshold) == (repeats, "repeat", 0.1)
        assert part.decision.mean == pytest.approx(sum(falls) / repeats) and not part.decision.above


def test_x1_counts_a_window_too_short_for_nvml_as_no_measurement():
    tables, evals = base_tables(gpu=True)
    rows = probe_rows("gpu_util_pct", {32: 90.0, 2048: 93.0}, {32: 16.0, 2048: 2.0})
    for r in rows:
        if r["step"] == "graph" and r["batch_size"] == "2048":
            r["utilization_pct"] = "nan"
    tables["profile_dataloader/probes.csv"] = rows
    v = by_claim(tables, evals)["X1"]
    assert v.verdict == INCONCLUSIVE and v.parts[0].decision.n == 0


def test_a_cpu_run_tests_a2_but_not_a1():
    """A CPU run: A1 (device utilization) not testable, A2 (data-wait share) tested in both modes."""
    v = by_claim(*base_tables())
    assert v["A1"].verdict == NOT_TESTABLE and v["A2"].verdict == SUPPORTED
    wait = [p.decision for p in v["A2"].parts]
    assert [d.threshold for d in wait] == [0.2, 0.5, 0.2, 0.5] and [d.above for d in wait] == [True, False] * 2
    assert wait[0].mean == pytest.approx(0.61)  # the standard loader's share at batch 256, seeds 0.60-0.62


def test_a1_needs_a_gpu_and_a_relative_fall_of_the_stated_size():
    tables, evals = base_tables(gpu=True)
    result = by_claim(tables, evals)
    assert result["A1"].verdict == SUPPORTED  # 80% -> 40%: a 50% relative fall in both modes
    single = result["A1"].parts[0].decision  # the three seeds fall by 50.0%, 49.4% and 48.8%
    assert (single.mean, single.std, single.n) == pytest.approx((0.4939, 0.0061, 3), abs=1e-4)
    assert verdicts(tables, evals, dataclasses.replace(RULES, a1_min_relative_drop=0.75))["A1"] == NOT_SUPPORTED
    # the three seeds fall by 50.0%, 49.4% and 48.8%: a threshold inside their interval decides nothing
    assert verdicts(tables, evals, dataclasses.replace(RULES, a1_min_relative_drop=0.494))["A1"] == INCONCLUSIVE


def test_a1_is_relative_so_a_tiny_utilization_can_still_fall():
    """The lent H200's case: 2.5% -> 0.6% is a 76% fall, though only ~2 points."""
    tables, evals = base_tables(gpu=True)
    for r in tables["train_dp/runs.csv"]:
        if r["sweep"] == "lenet_utilization" and r["loader"] == "standard":
            base = {"16": 2.5, "64": 1.2, "256": 0.6}[r["global_batch"]]
            r["utilization_pct"] = f"{base + 0.05 * int(r['seed']):g}"
    assert verdicts(tables, evals)["A1"] == SUPPORTED


def test_a2_fails_when_the_resident_loader_waits_as_long():
    tables, evals = base_tables()
    for r in tables["train_dp/runs.csv"]:
        if r["loader"] == "resident":
            r["data_wait_fraction"] = str(0.6 + 0.01 * int(r["seed"]))
    assert verdicts(tables, evals)["A2"] == NOT_SUPPORTED


def test_a3_quotes_every_batch_and_is_judged_at_the_largest():
    tables, evals = base_tables()
    a3 = by_claim(tables, evals)["A3"]
    assert "1,010 images/s" in a3.evidence and "1,490 images/s (1.48x)" in a3.evidence  # batch 16 is quoted
    [gain] = a3.parts  # judged at batch 256: 2 workers over 0, measurement by measurement
    assert gain.decision.mean == pytest.approx((1500 / 1000 + 1490 / 1010 + 1480 / 1020) / 3)
    assert gain.decision.threshold == pytest.approx(1.1) and gain.decision.per == "measurement"
    for r in tables["profile_dataloader/workers.csv"]:
        if r["batch_size"] == "256" and r["num_workers"] == "2":
            r["images_per_s"] = str(1050 - 10 * int(r["repeat"]))  # about +3% only, under the 10% rule
    assert verdicts(tables, evals)["A3"] == NOT_SUPPORTED


def test_a3_with_one_measurement_per_cell_has_no_interval():
    tables, evals = base_tables()
    tables["profile_dataloader/workers.csv"] = [
        {k: v for k, v in r.items() if k != "repeat"}
        for r in tables["profile_dataloader/workers.csv"]
        if r["repeat"] == "0"
    ]
    a3 = by_claim(tables, evals)["A3"]
    assert a3.verdict == INCONCLUSIVE and a3.parts[0].decision.n == 1 and math.isnan(a3.parts[0].decision.low)


def test_a4_fails_when_a_linear_scaled_large_batch_loses_accuracy():
    tables, evals = base_tables()
    set_metric(evals, "single-resident-b256-linear", [0.39, 0.40, 0.38])
    a4 = by_claim(tables, evals)["A4"]
    assert a4.verdict == NOT_SUPPORTED
    b64, b256 = (p.decision for p in a4.parts)  # each larger batch (linear) minus batch 16, per seed
    assert b64.verdict == SUPPORTED and b256.verdict == NOT_SUPPORTED and b256.threshold == -0.02
    assert b256.mean == pytest.approx(-0.6) and b256.n == 3
    assert "0.390 ± 0.010" in a4.evidence and "359" in a4.evidence  # the accuracy quoted, on its test set


def test_a4_states_steps_and_loss_and_counts_a_diverged_seed_against():
    tables, evals = base_tables()
    a4 = by_claim(tables, evals)["A4"]
    assert "900 at batch 16, 225 at batch 64, 56 at batch 256" in a4.evidence  # optimizer steps, quoted
    assert not any(p.note for p in a4.parts)
    for e in evals:
        if e["configuration"] == "single-resident-b256-linear" and e["seed"] == "1":
            e["test_metric"], e["outcome"] = "nan", "diverged"
    a4 = by_claim(tables, evals)["A4"]
    diverged = a4.parts[1]  # batch 256: seed 1 has no finite accuracy, and its divergence decides
    assert a4.verdict == diverged.decision.verdict == NOT_SUPPORTED and diverged.decision.n == 2 and diverged.note


def test_a4_at_the_tolerance_is_inconclusive():
    tables, evals = base_tables()
    # batch 256 linear minus batch 16, seed by seed: -0.01, -0.03, -0.02 around the tolerance -0.02
    set_metric(evals, "single-resident-b256-linear", [0.98, 0.962, 0.968])
    assert verdicts(tables, evals)["A4"] == INCONCLUSIVE


def test_b_claims_with_two_gpus():
    tables, evals = base_tables(gpu=True, dp_devices=2)
    ddp = tables["train_ddp/runs.csv"]
    ddp += [ddp_row(2, seed, epoch=1.0 + 0.01 * seed, batch=64) for seed in SEEDS]
    result = by_claim(tables, evals)
    got = {c: v.verdict for c, v in result.items()}
    assert result["B1"].parts[0].decision.mean == pytest.approx(2.01 / 1.91, abs=1e-3)
    assert result["B2"].parts[0].decision.mean == pytest.approx(1.5)  # 1500 / 1000 MiB
    assert [p.label for p in result["B4"].parts] == ["global batch 128 on 2 GPUs, DP/DDP"]  # global batch 64: no DP
    assert got["B1"] == SUPPORTED  # DP 2.0 -> 1.9 s: 1.05x
    assert got["B2"] == SUPPORTED  # device 0 holds 1500 vs 1000 MiB
    assert got["B3"] == SUPPORTED  # poor at every batch size
    assert got["B4"] == SUPPORTED  # DDP 1.0 s vs DP 1.9 s at global batch 128 on 2 GPUs
    for r in tables["train_dp/runs.csv"]:
        if r["sweep"] == "vgg" and r["mode"] == "dp":
            r["epoch_time_s"], r["device_mem_mib"] = str(1.0 + 0.01 * int(r["seed"])), "1000;1000"
    got = verdicts(tables, evals)
    assert (got["B1"], got["B2"], got["B3"], got["B4"]) == (NOT_SUPPORTED,) * 4


def test_b4_states_ddp_against_both_baselines_with_spreads_over_seeds():
    """DDP with 1 process carries DDP's overheads: its speed-up is stated against it and against the
    single-device run, each seed's time averaged over its lr rules first (a ± over seeds only)."""
    tables, evals = base_tables()
    tables["train_ddp/runs.csv"] = [
        ddp_row(w, seed, rule, epoch=(3.0 if w == 1 else 1.5) * (1.2 if rule == "none" else 0.8) + 0.01 * seed)
        for w in (1, 2)
        for rule in ("none", "linear")
        for seed in SEEDS
    ]
    b4 = by_claim(tables, evals)["B4"]
    assert b4.verdict == NOT_TESTABLE and not b4.parts  # one device here: no DataParallel to set DDP against
    # quoted: epoch time per world size (± over seeds, not the rules' 20%), the speed-up against DDP with 1
    # process and against the single-device run, and DDP-with-1-process over the single-device run
    assert "3.01 s ± 0.01 s" in b4.evidence and "1.51 s ± 0.01 s" in b4.evidence
    assert "1.99x ± 0.01x" in b4.evidence and "1.33x ± 0.00x" in b4.evidence and "1.50x ± 0.00x" in b4.evidence


def test_b5_needs_two_world_sizes_and_states_the_change_with_its_sign():
    tables, evals = base_tables()
    flat = [e for e in evals if not (e["stage"] == "train_ddp" and e["configuration"].startswith("ddp2"))]
    result = by_claim(tables, flat)
    assert result["B5"].verdict == NOT_TESTABLE and not result["B5"].parts
    [change] = by_claim(tables, evals)["B5"].parts  # lr rule none, world 2 minus world 1, per seed
    assert change.decision.mean == pytest.approx(-0.03) and change.decision.n == 3  # accuracy fell: negative
    assert change.decision.threshold == -0.01 and not change.decision.above
    set_metric(evals, "ddp2-standard0w-b32-none", [0.975, 0.977, 0.973])  # a fall of 0.005: within the rule's 0.01
    assert verdicts(tables, evals)["B5"] == NOT_SUPPORTED


def test_c_rules_on_each_task():
    tables, evals = base_tables()
    result = by_claim(tables, evals)
    c4 = result["C4"]
    assert "+0.10 dB ± 0.00 dB" in c4.evidence  # restoration's own C1 effect, quoted beside the rule
    psnr = c4.parts[0].decision  # step growth minus fixed small, against the tolerance 18.5 - 18.4
    assert psnr.mean == pytest.approx(-0.05) and psnr.threshold == pytest.approx(-0.1) and psnr.above
    assert [p.decision.threshold for p in c4.parts[1:]] == [1.0, 1.0, pytest.approx(1.1)]
    c1 = result["C1"].parts[0].decision
    assert c1.mean == pytest.approx(-0.05) and c1.threshold == pytest.approx(-0.01) and not c1.above
    set_metric(evals, "step_growth-ddp2-resident-b32-none", [0.97, 0.972, 0.968])  # 0.02 below: outside 0.01
    for r in tables["train_adaptive/restoration/runs.csv"]:
        if r["schedule"] == "step_growth":
            r["run_images_per_s"] = str(1150 + int(r["seed"]))  # step growth: 1.02x only
    got = verdicts(tables, evals)
    assert got["C2"] == NOT_SUPPORTED and got["C3"] == SUPPORTED and got["C4"] == NOT_SUPPORTED


def test_one_process_counts_no_all_reduces_and_c3_still_judged():
    tables, evals = base_tables()
    for r in tables["train_adaptive/classification/runs.csv"]:
        r["allreduces"] = "0"
    result = by_claim(tables, evals)
    assert result["C3"].verdict == SUPPORTED
    assert [p.decision.threshold for p in result["C3"].parts] == [1.0, pytest.approx(1.1)]  # steps, images/s


def test_one_seed_makes_every_judged_claim_inconclusive():
    tables, evals = base_tables()
    for name in (
        "train_dp/runs.csv",
        "train_ddp/runs.csv",
        "train_adaptive/classification/runs.csv",
        "train_adaptive/restoration/runs.csv",
    ):
        tables[name] = [r for r in tables[name] if r["seed"] == "0"]
    evals = [e for e in evals if e["seed"] == "0"]
    result = by_claim(tables, evals)
    judged = {c: v for c, v in result.items() if v.verdict != NOT_TESTABLE and c != "A3"}
    assert judged and all(v.verdict == INCONCLUSIVE for v in judged.values())
    assert all(p.decision.n == 1 and math.isnan(p.decision.low) for v in judged.values() for p in v.parts)


def test_assumptions_name_their_keys():
    text = """
# header: Anything not fixed is marked ASSUMPTION and reported.
a:
  # ASSUMPTION: the first
  # one goes on here.
  # Not this sentence: the block ended.
  b: 1
  c: 2   # ASSUMPTION (quick): inline
  d:
    #   e: our reconstruction (not an assumption marker)
    # ASSUMPTION, deeper
    #   still deeper
    # and on
    e: 3
"""
    assert assumptions(text) == [
        ("a.b", "the first one goes on here."),
        ("a.c", "(quick) inline"),
        ("a.d.e", "deeper still deeper and on"),
    ]


def test_every_assumption_in_params_yaml_is_reported():
    text = (REPO / "params.yaml").read_text()
    found = assumptions(text)
    marked = sum(line.count("ASSUMPTION:") + line.count("ASSUMPTION (") for line in text.splitlines())
    assert len(found) == marked and len(found) >= 10
    params = yaml.safe_load(text)
    for path, _ in found:  # every reported key exists in params.yaml
        node = params
        for key in path.split("."):
            node = node[key]


def test_rules_in_params_yaml_load():
    _, cfg = load_section("plot", REPO / "params.yaml", model=PLOT_SECTION)
    assert cfg.rules.b1_max_speedup > 1 and cfg.rules.confidence == 0.95
    assert 0 < cfg.rules.a1_min_relative_drop < 1  # relative, not percentage points


def test_report_markdown_has_a_row_and_a_section_per_claim():
    tables, evals = base_tables()
    written = datetime(2026, 12, 1, 10, 40, tzinfo=UTC)
    start = written.timestamp() - 600
    stage_runs = [
        StageRun("download"),
        StageRun("train_dp", (("A", "a" * 32), ("B", "b" * 32)), start, start + 300),
        StageRun("plot", (("report", "c" * 32),), start + 540, None),
    ]
    text = render(
        judge(tables, evals, RULES),
        preset="quick",
        commit="a" * 40,
        dirty=True,
        hardware=["Machine: x"],
        datasets=[
            {
                "name": "digits",
                "split": "seeded",
                "train": 1438,
                "test": 359,
                "sha256": "f" * 64,
                "source_md5": {"sklearn": "0" * 32},
            }
        ],
        evaluation_check={"checkpoints": 3, "agree_with_training": 3, "max_abs_difference": 0.0},
        params_text="x: 1  # ASSUMPTION: made up\n",
        written=written,
        stage_runs=stage_runs,
    )
    assert text.startswith("# dpstudy claims report\n")
    cells = [
        [c.strip() for c in line.strip().strip("|").split("|")]  # every table row, padding aside
        for line in text.splitlines()
        if line.startswith("|")
    ]
    rows = {r[0]: r for r in cells if len(r) == 5 and r[2].startswith("**")}  # the verdict table
    assert list(rows) == list(CLAIMS)
    assert {c: r[3] for c, r in rows.items()} == {c: "3 repeats" if c in ("A3", "X1") else "3" for c in CLAIMS}
    assert text.count("- Not testable because:") == 6 and "(uncommitted changes)" in text
    judged = len(CLAIMS) - text.count("- Not testable because:")  # every testable claim states its effect
    assert text.count("- Seeds: ") == len(CLAIMS) and text.count("- Effect judged: ") == judged
    assert "- `x`: made up" in text
    assert ["digits", "seeded", "1438 / 359", f"`{'f' * 64}`", f"sklearn: `{'0' * 32}`"] in cells
    assert f"Verdicts: {judged} supported, 0 not supported, 0 inconclusive, 6 not testable here" in text
    assert "Report written 2026-12-01 10:40 UTC" in text and "pipeline duration 10 min 0 s" in text
    assert ["train_dp", f"`{'a' * 32}` (A), `{'b' * 32}` (B)", "2026-12-01 10:30:00 UTC", "5 min 0 s"] in cells
    assert ["download", "no run in the MLflow store", "", ""] in cells and "1 min 0 s (until this report)" in text
    assert "95% t-interval" in text and "`plot.rules`" in text


def test_report_says_unknown_without_the_mlflow_store():
    tables, evals = base_tables()
    text = render(
        judge(tables, evals, RULES),
        preset="quick",
        commit="unknown",
        dirty=False,
        hardware=[],
        datasets=[],
        evaluation_check={"checkpoints": 0, "agree_with_training": 0, "max_abs_difference": 0.0},
        params_text="",
        stage_runs=None,
    )
    assert "Report written unknown" in text and "pipeline duration unknown" in text
    assert "MLflow run of each stage: unknown" in text


def test_stage_runs_are_read_from_the_mlflow_store(tmp_path):
    """The header's runs: each stage's latest parent run per study (children skipped), or None (unknown)
    when the store cannot be read."""
    from dpstudy.stages.plot import _stage_runs
    from dpstudy.track.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = {}
    for study in ("A", "B"):  # train_dp logs to two studies from one process
        with Tracker(study, "train_dp", preset="quick", params={}, uri=uri, root=tmp_path) as tracker:
            with tracker.child("lenet-b16-s0", {}):
                pass
            ids[study] = tracker.parent.run_id
    found = {s.stage: s for s in _stage_runs(uri)}
    assert list(found) == ["download", "profile_dataloader", "train_dp", "train_ddp", "train_adaptive", "evaluate"]
    assert found["train_dp"].run_ids == (("A", ids["A"]), ("B", ids["B"]))
    assert found["train_dp"].start <= found["train_dp"].end and found["evaluate"].start is None
    assert _stage_runs(f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}") is None


@pytest.mark.parametrize("claim", sorted(CLAIMS))
def test_every_claim_has_a_figure(claim):
    tables, evals = base_tables()
    assert next(v for v in judge(tables, evals, RULES) if v.claim == claim).figure.endswith(".png")


def test_dvc_plot_stage_depends_on_every_table_it_reads():
    """dvc.yaml must list what figures/report read, or a changed table would not re-run plot."""
    from dpstudy.report.figures import INPUTS

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    deps = set(stages["plot"]["deps"])
    assert {f"results/{rel}" for rel in INPUTS} | {
        "results/evaluate/evaluations.csv",
        "results/evaluate/metrics.json",
    } <= deps
    produced = {
        next(iter(o)) if isinstance(o, dict) else o
        for s in stages.values()
        for kind in ("outs", "metrics", "plots")
        for o in s.get(kind, [])
    }
    assert {d for d in deps if d.startswith("results/")} <= produced  # each one some stage's output


# --------------------------------------------------------------------------------------------
# REPORT.html: the same report, figures inside it


def rendered() -> str:
    tables, evals = base_tables()
    return render(
        judge(tables, evals, RULES),
        preset="quick",
        commit="a" * 40,
        dirty=False,
        hardware=["Machine: x"],
        datasets=[DIGITS_FACTS],
        evaluation_check=AGREED,
        params_text="x: 1  # ASSUMPTION: made up, with <angle> & ampersand\n",
    )


def test_report_links_figures_relatively_and_sends_mlflow_readers_to_the_html():
    """MLflow's Markdown viewer sends a link to figures/... to the server's root (a 404) and shows a
    relative image as text: links start with ./ (MLflow shows those inactive) and a note says
    where the figures are."""
    text = rendered()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all(link.startswith("./figures/") and link.endswith(".png") for link in links)
    assert {link.removeprefix("./figures/") for link in links} == set(FIGURES)
    assert MLFLOW_NOTE in text and "REPORT.html" in MLFLOW_NOTE


def png(path, width: int, height: int) -> bytes:
    path.write_bytes(make_png(width, height))
    return path.read_bytes()


def test_report_html_is_the_markdown_with_its_figures_inside(tmp_path):
    text = rendered()
    figures = tmp_path / "figures"
    figures.mkdir()
    data = {name: png(figures / name, 40 + i, 30) for i, name in enumerate(FIGURES) if name != "B2_device_balance.png"}
    page = render_html(text, figures)

    # the same content: every heading, every verdict row, every evidence line
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            m = re.match(r"([ABCX]\d): (.+)", heading)
            assert (
                (f'id="claim-{m.group(1)}"' in page and f">{m.group(2)}</span>" in page)
                if m
                else heading.replace("&", "&amp;") in page
            ), heading
    assert page.count("<tr>") == len([line for line in text.splitlines() if re.match(r"\|\s*[^-\s]", line)])
    assert page.count("<li>Evidence: ") == text.count("- Evidence: ") == len(CLAIMS)
    assert MLFLOW_NOTE.strip("*") not in page  # the note is for the Markdown viewer only
    assert "made up, with &lt;angle&gt; &amp; ampersand" in page  # text is escaped ...
    assert "<code>" + "0" * 32 + "</code><br>other: <code>" in page  # ... but the report's own <br> is kept

    # every figure inside the page, at its size; one not drawn is said so, with no broken image
    for name, png_bytes in data.items():
        src = "data:image/png;base64," + base64.b64encode(png_bytes).decode()
        figure = re.search(rf'<figure id="{figure_anchor(name)}">\s*<img [^>]*>', page).group(0)
        assert f'src="{src}"' in figure and 'width="' in figure
    assert f'<p id="{figure_anchor("B2_device_balance.png")}"><em>Figure B2_device_balance.png was not drawn' in page
    assert page.count("<img ") == len(data)

    # no fetch of any kind, and every link lands on a place in the page
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page) and "<link" not in page and "url(" not in page
    targets = set(re.findall(r'href="#([^"]+)"', page))
    assert targets >= {figure_anchor(n) for n in FIGURES} | {f"claim-{c}" for c in CLAIMS}
    assert all(f'id="{t}"' in page for t in targets)
