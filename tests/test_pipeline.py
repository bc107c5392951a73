"""The whole pipeline, end to end: a real `dvc repro` of all seven stages on the quick preset at smoke
sizes (the session fixture `quick_run`: conftest.SMOKE) in a temporary copy of the repository, then
reruns, a param change and `dvc exp run`."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import dvc

pytestmark = pytest.mark.slow


STAGES = ("download", "profile_dataloader", "train_dp", "train_ddp", "train_adaptive", "evaluate", "plot")


def test_quick_pipeline_end_to_end(quick_run):
    """All seven stages ran in order; every result file is there and consistent; the claims report
    has a verdict for every claim; MLflow holds each stage's runs."""
    repo = quick_run
    log = (repo / "repro.log").read_text()
    positions = [log.index(f"Running stage '{stage}'") for stage in STAGES]
    assert positions == sorted(positions)
    assert (repo / "data" / "prepared" / "digits.pt").is_file()
    metrics = json.loads((repo / "results" / "profile_dataloader" / "metrics.json").read_text())
    assert metrics["resident_speedup"] > 1
    check_training_results(repo)
    check_adaptive_results(repo)
    check_evaluation(repo)
    check_report(repo)

    # DVC's own ignore entries are already in the tree: a run leaves git clean but for results.
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert {line[3:].split("/")[0] for line in status.splitlines()} <= {"dvc.lock", "results", "repro.log"}

    shown = dvc("metrics", "show", cwd=repo)
    assert shown.returncode == 0
    assert "resident_speedup" in shown.stdout and "A2_wait_share" in shown.stdout
    assert "results/evaluate/metrics.json" in shown.stdout and "mismatched" in shown.stdout

    plots = dvc("plots", "show", "--json", cwd=repo)
    assert plots.returncode == 0, plots.stderr
    for name in ("throughput.csv", "probes.csv", "C1_C3_adaptive_classification.png", "C4: test PSNR vs training time"):
        assert name in plots.stdout


def test_rerun_param_change_and_experiment(quick_run, tmp_path):
    """A second `dvc repro` does nothing; a param change re-runs only the stages that read it;
    `dvc exp run -S` runs an override that `dvc exp show` lists."""
    repo = tmp_path / "repo"
    shutil.copytree(quick_run, repo, symlinks=True)
    again = dvc("repro", cwd=repo)
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout  # everything up to date

    # profile_dataloader alone reads this value: only it is out of date.
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("  seed: 0 ", "  seed: 1 ", 1))
    status = dvc("status", cwd=repo)
    assert "profile_dataloader:" in status.stdout
    assert not {f"{s}:" for s in STAGES if s != "profile_dataloader"} & set(status.stdout.split())
    (repo / "params.yaml").write_text(params)

    # plot alone reads its rules: an override re-runs plot and nothing else.
    exp = dvc("exp", "run", "-n", "strict-a3", "-S", "plot.rules.a3_min_gain=5", cwd=repo)
    assert exp.returncode == 0, exp.stdout[-3000:] + exp.stderr[-3000:]
    assert [line for line in exp.stdout.splitlines() if line.startswith("Running stage")] == ["Running stage 'plot':"]
    report = (repo / "results" / "REPORT.md").read_text()
    a3 = report.split("### A3: ", 1)[1].split("\n### ", 1)[0]  # the decision, and the threshold it used
    assert a3.startswith("not supported") and "6.00x" in a3
    listed = dvc("exp", "show", "--no-pager", "--md", cwd=repo)
    assert listed.returncode == 0, listed.stderr
    assert "strict-a3" in listed.stdout


def check_evaluation(repo: Path) -> None:
    """evaluate: every checkpoint scored on its test split, agreeing with training; the figure
    added to each configuration's MLflow run."""
    from mlflow.tracking import MlflowClient

    from dpstudy.track.tracking import STUDIES

    out = repo / "results" / "evaluate"
    with open(out / "evaluations.csv") as fh:
        rows = list(csv.DictReader(fh))
    checkpoints = sorted((repo / "results").glob("train_*/checkpoints/*.pt"))
    assert sorted(repo / r["checkpoint"] for r in rows) == checkpoints
    assert all(r["agrees"] == "True" for r in rows)
    assert {int(r["test_images"]) for r in rows} == {359}  # digits' held-out 20%
    assert json.loads((out / "metrics.json").read_text()) == {"mismatched": 0}
    psnr = [float(r["test_metric"]) for r in rows if r["sweep"] == "restoration"]
    assert psnr and min(psnr) > 15

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(STUDIES["C"])
    runs = client.search_runs([exp.experiment_id], "tags.dvc_stage = 'train_adaptive'", max_results=100)
    children = {r.data.tags["configuration"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    for row in (r for r in rows if r["stage"] == "train_adaptive"):
        logged = children[row["name"]].data.metrics[f"eval_test_{row['metric']}"]
        assert logged == pytest.approx(float(row["test_metric"]))
    parents = client.search_runs([exp.experiment_id], "attributes.run_name = 'evaluate'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every Markdown table row (padding and the separator lines dropped)."""
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]
    return [r for r in rows if not all(set(c) <= set("-: ") for c in r)]


def check_report(repo: Path) -> None:
    """REPORT.md: a complete verdict table (every declared claim, each a known verdict), a reason for every
    'not testable here', the figures it links exist, and the run logged in MLflow."""
    from mlflow.tracking import MlflowClient

    from dpstudy.claims import CLAIMS
    from dpstudy.report.figures import FIGURES
    from dpstudy.report.stats import INCONCLUSIVE, NOT_SUPPORTED, NOT_TESTABLE, SUPPORTED

    report = (repo / "results" / "REPORT.md").read_text()
    rows = table_rows(report)
    table = {cells[0]: cells[2].strip("*") for cells in rows if cells[0] in CLAIMS}
    assert set(table) == set(CLAIMS)
    assert set(table.values()) <= {SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_TESTABLE}
    assert report.count("- Seeds:") == len(CLAIMS)  # every claim states what it rests on
    # on a CPU-only machine: GPU utilization, DataParallel over several GPUs and CUDA graphs cannot be tested
    assert {c for c, v in table.items() if v == NOT_TESTABLE} == {"A1", "B1", "B2", "B3", "B4", "X1"}
    assert report.count("- Not testable because:") == 6
    for claim in CLAIMS:
        assert f"### {claim}: {table[claim]}" in report
    for name in FIGURES:
        png = repo / "results" / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"](./figures/{name})" in report
    assert "`plot.rules`" in report and ["digits", "seeded(seed=0,test_fraction=0.2)"] in [r[:2] for r in rows]
    assert "torch 2." in report and "(uncommitted changes)" not in report

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dpstudy-claims-report")
    [run] = client.search_runs([exp.experiment_id], "attributes.run_name = 'plot'")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"REPORT.md", "REPORT.html", "figures", "images"}
    html = (repo / "results" / "REPORT.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(FIGURES) and 'src="http' not in html
    assert {f"verdict.{c}" for c in CLAIMS} <= set(run.data.tags)
    assert run.data.tags["verdict.C1"] == table["C1"]


def check_training_results(repo: Path) -> None:
    """train_dp and train_ddp: a row per configuration, checkpoints, and the MLflow layout."""
    from mlflow.tracking import MlflowClient

    from dpstudy.config import load_section
    from dpstudy.track.tracking import STUDIES

    expected = {}
    for stage in ("train_dp", "train_ddp"):
        out = repo / "results" / stage
        with open(out / "runs.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert rows and all(r["outcome"] == "finished" for r in rows)
        assert {f"{r['name']}.pt" for r in rows} == {p.name for p in (out / "checkpoints").glob("*.pt")}
        _, cfg = load_section(stage, repo / "params.yaml")
        assert {int(r["seed"]) for r in rows} == set(cfg.seeds)  # every configuration on every seed
        expected[stage] = rows
    # the headline figures, means over seeds (every configuration's are in runs.csv)
    dp = json.loads((repo / "results" / "train_dp" / "metrics.json").read_text())
    assert set(dp) == {"A2_wait_share", "A4_acc_gap"} and 0 < dp["A2_wait_share"] < 1
    assert -1 < dp["A4_acc_gap"] < 1
    ddp_metrics = json.loads((repo / "results" / "train_ddp" / "metrics.json").read_text())
    assert set(ddp_metrics) == {"B5_acc_gap"} and -1 < ddp_metrics["B5_acc_gap"] < 1
    ddp = expected["train_ddp"]
    assert {int(r["world"]) for r in ddp} == {1, 2}  # torchrun started 2 gloo processes
    # LeNet learns digits in the quick preset (chance is 0.1).
    assert max(float(r["test_accuracy"]) for r in expected["train_dp"] if r["sweep"] == "lenet_lr_scaling") > 0.9

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    for study, stage, sweeps in (
        ("A", "train_dp", {"lenet_utilization", "lenet_lr_scaling"}),
        ("B", "train_dp", {"vgg"}),
        ("B", "train_ddp", {"vgg"}),
    ):
        exp = client.get_experiment_by_name(STUDIES[study])
        parents = client.search_runs(
            [exp.experiment_id], f"tags.dvc_stage = '{stage}' and attributes.run_name = '" + stage + "'"
        )
        parents = [p for p in parents if "mlflow.parentRunId" not in p.data.tags]
        assert len(parents) == 1, (study, stage)  # one parent run per stage execution
        parent = parents[0]
        assert parent.info.status == "FINISHED" and set(parent.data.tags["sweep"].split(",")) == sweeps
        children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert {c.data.tags["configuration"] for c in children} == {
            r["name"] for r in expected[stage] if r["sweep"] in sweeps
        }
        assert all(c.info.status == "FINISHED" for c in children)
        assert all("test_accuracy" in c.data.metrics for c in children)
        assert all(len(client.get_metric_history(c.info.run_id, "step_loss")) > 1 for c in children[:2])


def check_adaptive_results(repo: Path) -> None:
    """train_adaptive: every task × schedule × seed trained under 2 gloo processes, time-to-target
    computed, and the batch / lr / noise-scale curves per step in MLflow (study C)."""
    from mlflow.tracking import MlflowClient

    from dpstudy.config import load_section
    from dpstudy.grid.adaptive import SCHEDULES
    from dpstudy.track.tracking import STUDIES

    _, cfg = load_section("train_adaptive", repo / "params.yaml")
    out = repo / "results" / "train_adaptive"
    names, steps, reached = [], {}, {}
    for task, metric in (("classification", "test_accuracy"), ("restoration", "test_psnr")):
        with open(out / task / "runs.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == len(SCHEDULES) * len(cfg.seeds)
        assert all(r["outcome"] == "finished" and r["world"] == "2" and r["mode"] == "ddp" for r in rows)
        small = [float(r[metric]) for r in rows if r["schedule"] == "fixed_small"]
        target = sum(small) / len(small) - getattr(cfg, task).target_tolerance
        assert all(float(r["target"]) == pytest.approx(target, abs=1e-5) for r in rows)
        growth = getattr(cfg, task).schedules.step_growth
        stepped = [r for r in rows if r["schedule"] == "step_growth"]
        assert all(int(r["final_batch"]) == growth.max_batch for r in stepped)
        # fewer, larger steps: fewer optimizer steps and all-reduces than the small fixed batch
        fixed = next(r for r in rows if r["schedule"] == "fixed_small")
        assert all(
            int(r["steps"]) < int(fixed["steps"]) and int(r["allreduces"]) < int(fixed["allreduces"]) for r in stepped
        )
        names += [r["name"] for r in rows]
        steps.update({r["name"]: int(r["steps"]) for r in rows})
        reached.update({r["name"]: r["time_to_target_s"] != "nan" for r in rows})
    assert {p.stem for p in (out / "checkpoints").glob("*.pt")} == set(names)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"C1_acc_gap", "C2_acc_gap", "C3_ips_gain"} and metrics["C3_ips_gain"] > 0
    with open(out / "summary.csv") as fh:
        summary = {(r["task"], r["schedule"]): r for r in csv.DictReader(fh)}
    assert {s for t, s in summary if t == "classification"} == set(SCHEDULES)
    assert float(summary[("classification", "fixed_small")]["test_metric"]) > 0.9  # ResNet-20 learns digits
    # the network beats bicubic interpolation
    with open(out / "restoration" / "epochs.csv") as fh:
        last = list(csv.DictReader(fh))[-1]
    assert float(last["test_psnr"]) > float(last["test_psnr_bicubic"]) + 1

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(STUDIES["C"])
    runs = client.search_runs([exp.experiment_id], "tags.dvc_stage = 'train_adaptive'", max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {c.data.tags["configuration"] for c in children} == set(names)
    assert all(c.info.status == "FINISHED" and "target" in c.data.metrics for c in children)
    # time-to-target is logged where the run reached the target (a nan is not a metric)
    assert all(("time_to_target_s" in c.data.metrics) == reached[c.data.tags["configuration"]] for c in children)
    for task in ("classification", "restoration"):  # its best seed is at or above its mean, so above target
        assert any(hit for name, hit in reached.items() if name.startswith(f"{task}-fixed_small"))
    run = next(c for c in children if c.data.tags["configuration"].startswith("classification-step_growth"))
    batches = [m.value for m in client.get_metric_history(run.info.run_id, "step_global_batch")]
    lrs = client.get_metric_history(run.info.run_id, "step_lr")
    noise = client.get_metric_history(run.info.run_id, "step_noise_scale")
    assert batches[0] == 32 and batches[-1] == 256 and sorted(batches) == batches
    assert len(lrs) == len(batches) == len(noise) == steps[run.data.tags["configuration"]]
