"""The claims report: each rule's verdict on tables with known numbers, the assumptions read from
params.yaml, and REPORT.md's shape."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import REPO
from dpstudy.config import ReportRules, load_section
from dpstudy.report import CLAIMS, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED, assumptions, judge, render

RULES = ReportRules(a1_min_drop_pts=5, a2_min_wait_fraction=0.2, a2_resident_factor=2, a3_min_gain=0.1,
                    a4_accuracy_tolerance=0.02, b1_max_speedup=1.2, b2_min_imbalance=1.1, b4_min_speedup=1.1,
                    b5_accuracy_drop=0.01, c3_min_throughput_gain=1.1)


def dp_row(sweep, mode, loader, batch, *, util="90", wait="0.5", devices=1, epoch="1.0", mem="900"):
    return {"sweep": sweep, "mode": mode, "loader": loader, "global_batch": str(batch), "utilization_pct": util,
            "data_wait_fraction": wait, "devices": str(devices), "epoch_time_s": epoch, "device_mem_mib": mem,
            "world": "1"}


def evaluation(stage, sweep, configuration, value, seed=0):
    return {"stage": stage, "sweep": sweep, "configuration": configuration, "test_metric": str(value),
            "seed": str(seed)}


def adaptive_rows(target, steps, allreduces, ips):
    return [{"schedule": s, "target": str(target), "steps": str(steps[s]), "allreduces": str(allreduces[s]),
             "run_images_per_s": str(ips[s])} for s in steps]


def base_tables(gpu: bool = False, dp_devices: int = 1) -> tuple[dict, list]:
    """A CPU-only quick run's shape, numbers chosen so every testable rule holds."""
    util = {16: "80", 64: "70", 256: "60"}
    wait = {16: "0.4", 64: "0.5", 256: "0.6"}
    runs = [dp_row("lenet_utilization", mode, loader, b, util=util[b] if loader == "standard" else "95",
                   wait=wait[b] if loader == "standard" else "0.05")
            for mode in ("single", "dp") for loader in ("standard", "resident") for b in (16, 64, 256)]
    per_dev = ";".join(["1500"] + ["1000"] * (dp_devices - 1))
    runs += [dp_row("vgg", "single", "standard", b, epoch="2.0") for b in (32, 128)]
    runs += [dp_row("vgg", "dp", "standard", b, epoch="1.9", devices=dp_devices, mem=per_dev) for b in (32, 128)]
    ddp = [dict(dp_row("vgg", "ddp", "standard", 32 * w, epoch=str(2.0 / w)), world=str(w)) for w in (1, 2)]
    source = "gpu0_util_pct_mean" if gpu else "cpu_util_pct_mean"
    tables = {
        "profile_dataloader/probes.csv": [{"utilization_source": source}],
        "profile_dataloader/workers.csv": [{"series": f"batch {b}", "num_workers": str(w), "images_per_s": str(v)}
                                           for b in (16, 256) for w, v in ((0, 1000), (1, 900), (2, 1500))],
        "train_dp/runs.csv": runs,
        "train_ddp/runs.csv": ddp,
        "train_adaptive/classification/runs.csv": adaptive_rows(
            0.98, {"fixed_small": 540, "fixed_large": 72, "step_growth": 134, "noise_scale": 157},
            {"fixed_small": 1079, "fixed_large": 143, "step_growth": 267, "noise_scale": 313},
            {"fixed_small": 1160, "fixed_large": 1980, "step_growth": 1810, "noise_scale": 1700}),
        "train_adaptive/restoration/runs.csv": adaptive_rows(
            18.4, {"fixed_small": 720, "fixed_large": 184, "step_growth": 273, "noise_scale": 540},
            {"fixed_small": 720, "fixed_large": 184, "step_growth": 273, "noise_scale": 540},
            {"fixed_small": 1130, "fixed_large": 2500, "step_growth": 1970, "noise_scale": 1300}),
    }
    evals = [evaluation("train_dp", "lenet_lr_scaling", f"single-resident-b{b}-{rule}", acc)
             for b, rule, acc in ((16, "none", 0.99), (16, "linear", 0.99), (64, "none", 0.96), (64, "linear", 0.985),
                                  (256, "none", 0.80), (256, "linear", 0.975))]
    evals += [evaluation("train_ddp", "vgg", f"ddp{w}-standard0w-b32-{rule}", acc)
              for w, rule, acc in ((1, "none", 0.98), (1, "linear", 0.98), (2, "none", 0.95), (2, "linear", 0.975))]
    for task, values in (("classification", {"fixed_small": 0.99, "fixed_large": 0.94, "step_growth": 0.985,
                                             "noise_scale": 0.988}),
                         ("restoration", {"fixed_small": 18.5, "fixed_large": 18.6, "step_growth": 18.45,
                                          "noise_scale": 18.46})):
        evals += [evaluation("train_adaptive", task, f"{s}-ddp2-resident-b32-none", v, seed)
                  for s, v in values.items() for seed in (0, 1)]
    return tables, evals


def verdicts(tables, evals, rules=RULES) -> dict[str, str]:
    return {v.claim: v.verdict for v in judge(tables, evals, rules)}


def test_cpu_run_every_claim_judged_and_gpu_claims_not_testable():
    result = judge(*base_tables(), RULES)
    assert [v.claim for v in result] == list(CLAIMS)
    got = {v.claim: v.verdict for v in result}
    assert {c for c, v in got.items() if v == NOT_TESTABLE} == {"A1", "B1", "B2", "B3", "B4"}
    assert all(got[c] == SUPPORTED for c in ("A2", "A3", "A4", "B5", "C1", "C2", "C3", "C4"))
    why = {v.claim: v.why for v in result}
    assert "no GPU" in why["A1"] and "spanned 1 device" in why["B1"]
    a3 = next(v for v in result if v.claim == "A3")
    assert "1,500 images/s with 2 worker(s)" in a3.evidence and "1.50x" in a3.evidence


def test_a1_needs_a_gpu_and_a_drop_of_the_stated_size():
    tables, evals = base_tables(gpu=True)
    assert verdicts(tables, evals)["A1"] == SUPPORTED  # 80 -> 60 points in both modes
    strict = dataclasses.replace(RULES, a1_min_drop_pts=25)
    assert verdicts(tables, evals, strict)["A1"] == NOT_SUPPORTED


def test_a2_fails_when_the_resident_loader_waits_as_long():
    tables, evals = base_tables()
    for r in tables["train_dp/runs.csv"]:
        if r["loader"] == "resident":
            r["data_wait_fraction"] = "0.5"
    assert verdicts(tables, evals)["A2"] == NOT_SUPPORTED


def test_a3_is_judged_at_the_largest_batch():
    tables, evals = base_tables()
    for r in tables["profile_dataloader/workers.csv"]:
        if r["series"] == "batch 256" and r["num_workers"] == "2":
            r["images_per_s"] = "1050"  # +5% only, under the 10% rule
    assert verdicts(tables, evals)["A3"] == NOT_SUPPORTED


def test_a4_fails_when_a_linear_scaled_large_batch_loses_accuracy():
    tables, evals = base_tables()
    for e in evals:
        if e["configuration"] == "single-resident-b256-linear":
            e["test_metric"] = "0.39"
    result = {v.claim: v for v in judge(tables, evals, RULES)}
    assert result["A4"].verdict == NOT_SUPPORTED
    assert "batch 256: linear 0.390, none 0.800" in result["A4"].evidence


def test_b_claims_with_two_gpus():
    tables, evals = base_tables(gpu=True, dp_devices=2)
    ddp = tables["train_ddp/runs.csv"]
    ddp.append(dict(dp_row("vgg", "ddp", "standard", 128, epoch="1.0"), world="2"))  # DP at 128: 1.9 s
    got = verdicts(tables, evals)
    assert got["B1"] == SUPPORTED      # DP 2.0 -> 1.9 s: 1.05x
    assert got["B2"] == SUPPORTED      # device 0 holds 1500 vs 1000 MiB
    assert got["B3"] == SUPPORTED      # poor at every batch size
    assert got["B4"] == SUPPORTED      # DDP 1.0 s vs DP 1.9 s at global batch 128 on 2 GPUs
    for r in tables["train_dp/runs.csv"]:
        if r["sweep"] == "vgg" and r["mode"] == "dp":
            r["epoch_time_s"], r["device_mem_mib"] = "1.0", "1000;1000"
    got = verdicts(tables, evals)
    assert (got["B1"], got["B2"], got["B3"], got["B4"]) == (NOT_SUPPORTED,) * 4


def test_b5_needs_two_world_sizes_and_a_drop():
    tables, evals = base_tables()
    flat = [e for e in evals if not (e["stage"] == "train_ddp" and e["configuration"].startswith("ddp2"))]
    result = {v.claim: v for v in judge(tables, flat, RULES)}
    assert result["B5"].verdict == NOT_TESTABLE and "only world size 1" in result["B5"].why
    for e in evals:
        if e["configuration"] == "ddp2-standard0w-b32-none":
            e["test_metric"] = "0.975"  # a drop of 0.005: within the rule's 0.01
    assert verdicts(tables, evals)["B5"] == NOT_SUPPORTED


def test_c_rules_on_each_task():
    tables, evals = base_tables()
    result = {v.claim: v for v in judge(tables, evals, RULES)}
    assert "(C1 on restoration: not supported" in result["C4"].evidence  # the large batch did better there
    for e in evals:
        if e["sweep"] == "classification" and e["configuration"].startswith("step_growth"):
            e["test_metric"] = "0.97"  # below the target 0.98
    tables["train_adaptive/restoration/runs.csv"][2]["run_images_per_s"] = "1150"  # step growth: 1.02x only
    got = verdicts(tables, evals)
    assert got["C2"] == NOT_SUPPORTED and got["C3"] == SUPPORTED and got["C4"] == NOT_SUPPORTED


def test_one_process_counts_no_all_reduces_and_c3_still_judged():
    tables, evals = base_tables()
    for r in tables["train_adaptive/classification/runs.csv"]:
        r["allreduces"] = "0"
    result = {v.claim: v for v in judge(tables, evals, RULES)}
    assert result["C3"].verdict == SUPPORTED and "one process: no all-reduces to count" in result["C3"].evidence


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
    assert assumptions(text) == [("a.b", "the first one goes on here."), ("a.c", "(quick) inline"),
                                 ("a.d.e", "deeper still deeper and on")]


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
    _, cfg = load_section("plot", REPO / "params.yaml")
    assert cfg.rules.b1_max_speedup > 1


def test_report_markdown_has_a_row_and_a_section_per_claim():
    tables, evals = base_tables()
    text = render(judge(tables, evals, RULES), preset="quick", commit="a" * 40, dirty=True, hardware=["Machine: x"],
                  datasets=[{"name": "digits", "split": "seeded", "train": 1438, "test": 359, "sha256": "f" * 64,
                             "source_md5": {"sklearn": "0" * 32}}],
                  evaluation_check={"checkpoints": 3, "agree_with_training": 3, "max_abs_difference": 0.0},
                  params_text="x: 1  # ASSUMPTION: made up\n")
    assert text.startswith("# dpstudy claims report\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| **" in line]
    assert [r.split(" | ")[0][2:] for r in rows] == list(CLAIMS)
    assert text.count("- Not testable because:") == 5 and "(uncommitted changes)" in text
    assert "- `x`: made up" in text and "| digits | seeded | 1438 / 359 |" in text
    assert "8 supported, 0 not supported, 5 not testable here" in text


@pytest.mark.parametrize("claim", sorted(CLAIMS))
def test_every_claim_has_a_figure(claim):
    tables, evals = base_tables()
    assert next(v for v in judge(tables, evals, RULES) if v.claim == claim).figure.endswith(".png")


def test_dvc_plot_stage_depends_on_every_table_it_reads():
    """dvc.yaml must list what figures/report read, or a changed table would not re-run plot."""
    from dpstudy.figures import INPUTS

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    deps = set(stages["plot"]["deps"])
    assert {f"results/{rel}" for rel in INPUTS} | {"results/evaluate/evaluations.csv",
                                                   "results/evaluate/metrics.json"} <= deps
    produced = {next(iter(o)) if isinstance(o, dict) else o
                for s in stages.values() for kind in ("outs", "metrics", "plots") for o in s.get(kind, [])}
    assert {d for d in deps if d.startswith("results/")} <= produced  # each one some stage's output
