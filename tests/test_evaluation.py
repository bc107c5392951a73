"""The evaluate stage: real checkpoints scored again on the test split, its refusals, and the
`dpstudy evaluate` / `dpstudy plot` commands' one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import recipe, run_cli, write_params
from mlflow.tracking import MlflowClient

from dpstudy.data.loaders import ResidentLoader
from dpstudy.data.prepared import file_sha256, load_prepared, prepare
from dpstudy.errors import UserError
from dpstudy.evaluation import Evaluator, checks, find_checkpoints, headline
from dpstudy.grid.sweep import run_grid
from dpstudy.track.tracking import STUDIES, Tracker
from dpstudy.train.engine import RunSpec, TrainData
from dpstudy.train.models import build_model, input_spec

RECIPE = recipe(epochs=2)
ADAM = dataclasses.replace(RECIPE, epochs=1, optimizer="adam", lr=1e-3, ref_batch=32)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(digits_dir, tmp_path_factory) -> tuple[Path, str]:
    """results/ with real checkpoints from two stages (LeNet, two seeds; SRNet), and their MLflow store."""
    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    data = {"digits": TrainData(load_prepared(digits_dir / "digits.pt"), file_sha256(digits_dir / "digits.pt"))}
    lenet = [
        RunSpec(
            "lenet_lr_scaling", "lenet", 1.0, None, "digits", "single", 1, "resident", 0, 64, "linear", seed, RECIPE
        )
        for seed in (0, 1)
    ]
    srnet = RunSpec(
        "restoration",
        "srnet",
        0.25,
        8,
        "digits",
        "single",
        1,
        "resident",
        0,
        32,
        "none",
        0,
        ADAM,
        schedule="fixed_small",
    )
    for stage, study, specs in (("train_dp", "A", lenet), ("train_adaptive", "C", [srnet])):
        with Tracker(study, stage, preset="quick", params={}, uri=uri) as tracker:
            run_grid(specs, data, tracker, root / "results" / stage, device=CPU, sample_interval_s=0.05)
    return root, uri


def test_scores_each_checkpoint_on_the_test_split(trained, digits_dir):
    root, _ = trained
    found = find_checkpoints(root / "results", stages=("train_dp", "train_adaptive"))
    assert [(stage, p.name) for stage, p in found] == [
        ("train_dp", "lenet_lr_scaling-single-resident-b64-linear-s0.pt"),
        ("train_dp", "lenet_lr_scaling-single-resident-b64-linear-s1.pt"),
        ("train_adaptive", "restoration-fixed_small-single-resident-b32-none-s0.pt"),
    ]
    score = Evaluator(digits_dir, CPU)
    lenet0, lenet1, sr = (score(stage, path) for stage, path in found)
    assert (lenet0.study, lenet0.configuration, lenet0.seed, lenet1.seed) == ("A", "single-resident-b64-linear", 0, 1)
    assert lenet0.test_images == 359 and lenet0.agrees and sr.agrees

    # By hand: the same weights, the test split, argmax against the labels.
    ckpt = torch.load(found[0][1], weights_only=False)
    meta = ckpt["model_meta"]
    net = build_model(meta["model"], meta["channels"], meta["num_classes"], width=meta["width"]).eval()
    net.load_state_dict(ckpt["model"])
    test = load_prepared(digits_dir / "digits.pt")
    loader = ResidentLoader(
        test.test_images,
        test.test_labels,
        spec=input_spec("lenet", 1),
        batch_size=1000,
        mean=meta["mean"],
        std=meta["std"],
        shuffle=False,
    )
    with torch.no_grad():
        correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in loader)
    assert lenet0.test_metric == pytest.approx(correct / 359, abs=1e-9)

    assert sr.metric == "psnr" and 10 < sr.test_baseline < sr.test_metric + 1  # bicubic ~13.5 dB
    assert headline([lenet0, lenet1, sr]) == {"mismatched": 0}  # metrics.json: the test figures are training's
    found = checks([lenet0, lenet1, sr])
    assert found == {"checkpoints": 3, "agree_with_training": 3, "max_abs_difference": found["max_abs_difference"]}


def test_refuses_what_it_cannot_score_honestly(trained, digits_dir, tmp_path):
    root, _ = trained
    path = next((root / "results" / "train_dp" / "checkpoints").glob("*.pt"))
    with pytest.raises(UserError, match=r"no checkpoints in .*train_ddp/checkpoints: run the training stages first"):
        find_checkpoints(root / "results")
    # another split of the same images: a model must not be scored on data it may have trained on
    other = tmp_path / "other"
    prepare("digits", raw_dir=other / "raw", out_dir=other, split_seed=1, test_fraction=0.2)
    with pytest.raises(UserError, match=r"trained on another digits.pt than .*\(checksums differ\)"):
        Evaluator(other, CPU)("train_dp", path)
    with pytest.raises(UserError, match=r"digits.pt not found: run `dvc repro download`"):
        Evaluator(tmp_path, CPU)("train_dp", path)
    unfinished = tmp_path / "unfinished.pt"
    ckpt = torch.load(path, weights_only=False)
    torch.save({**ckpt, "complete": False, "epoch": 0}, unfinished)
    with pytest.raises(UserError, match="training stopped after epoch 1; finish it first"):
        Evaluator(digits_dir, CPU)("train_dp", unfinished)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        Evaluator(digits_dir, CPU)("train_dp", junk)


def test_evaluate_stage_writes_metrics_and_logs_to_each_training_run(trained, digits_dir, tmp_path):
    root, uri = trained
    work = tmp_path / "work"
    shutil.copytree(root / "results", work / "results")
    (work / "results" / "train_ddp" / "checkpoints").mkdir(parents=True)
    shutil.copy(
        next((work / "results" / "train_dp" / "checkpoints").glob("*s0.pt")),
        work / "results" / "train_ddp" / "checkpoints" / "lenet_lr_scaling-single-resident-b64-linear-s0.pt",
    )
    params = write_params(tmp_path / "params.yaml")
    res = run_cli(
        "evaluate",
        "--params",
        str(params),
        "--data",
        str(digits_dir),
        "--results",
        "results",
        "--out",
        "results/evaluate",
        cwd=work,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert res.returncode == 0, res.stderr
    assert "4 checkpoints on their test splits" in res.stdout
    assert json.loads((work / "results" / "evaluate" / "metrics.json").read_text()) == {"mismatched": 0}
    with open(work / "results" / "evaluate" / "evaluations.csv") as fh:
        rows = {(r["stage"], r["name"]): r for r in csv.DictReader(fh)}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDIES["A"])
    child = client.search_runs(
        [exp.experiment_id], "tags.configuration = 'lenet_lr_scaling-single-resident-b64-linear-s1'"
    )
    [child] = [c for c in child if c.data.tags.get("dvc_stage") == "train_dp"]
    row = rows[("train_dp", "lenet_lr_scaling-single-resident-b64-linear-s1")]
    assert child.data.metrics["eval_test_accuracy"] == pytest.approx(float(row["test_metric"]))


def test_evaluate_and_plot_say_which_stage_to_run_first(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    res = run_cli("evaluate", "--params", str(params), "--results", "results", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("error: no checkpoints in results/train_dp/checkpoints, ")
    res = run_cli("plot", "--params", str(params), "--results", "results", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("error: results does not exist: run the training stages first")
    assert not (tmp_path / "results").exists()  # nothing half written


def test_bad_rule_stops_plot_before_any_work(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"plot.rules.a2_resident_factor": 0.5})
    res = run_cli("plot", "--params", str(params), cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: params.yaml: plot.rules.a2_resident_factor: must be >= 1, got 0.5"
