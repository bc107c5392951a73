"""What `dvc metrics show` and `dvc exp show` print: a few named headline figures per stage that
fit a terminal (each line at most 200 characters), and experiments compared against a committed
baseline (dvc.lock and the metrics files in git, as docs/presets.md says).

The fast tests feed each stage's headline function made-up results and let the real `dvc` render
them in a throwaway repository laid out like this one (the real dvc.yaml's metrics paths and
params); the slow one renders the metrics files a real quick pipeline wrote."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, dvc

from dpstudy.fsutil import json_text
from dpstudy.grid import adaptive
from dpstudy.stages import profile_dataloader, train_ddp, train_dp

WIDTH = 200  # characters per line of `dvc metrics show --md`
GIT = ["git", "-c", "user.email=ci@dpstudy", "-c", "user.name=ci"]
# every stage's headline keys: the only columns `dvc metrics show` prints
HEADLINES = {
    "profile_dataloader": {"resident_speedup", "A3_workers_gain"},
    "train_dp": {"A2_wait_share", "A4_acc_gap"},
    "train_ddp": {"B5_acc_gap"},
    "train_adaptive": {"C1_acc_gap", "C2_acc_gap", "C3_ips_gain"},
    "evaluate": {"mismatched"},
}


def dp_rows() -> list[dict]:
    rows = [
        dict(
            sweep="lenet_utilization",
            mode=mode,
            loader=loader,
            global_batch=b,
            lr_rule="linear",
            seed=s,
            data_wait_fraction=(0.5 + b / 1000 + s / 100) if loader == "standard" else 0.03,
            test_accuracy=0.9,
        )
        for mode in ("single", "dp")
        for loader in ("standard", "resident")
        for b in (16, 64, 256)
        for s in (0, 1)
    ]
    accuracy = {"none": 0.3, "linear": 0.6, "sqrt": 0.8}
    rows += [
        dict(
            sweep="lenet_lr_scaling",
            mode="single",
            loader="resident",
            global_batch=b,
            lr_rule=rule,
            seed=s,
            data_wait_fraction=0.1,
            test_accuracy=0.99 if b == 16 else accuracy[rule] + s / 100,
        )
        for b in (16, 64, 256)
        for rule in accuracy
        for s in (0, 1)
    ]
    rows += [
        dict(
            sweep="vgg",
            mode=mode,
            loader="standard",
            global_batch=b,
            lr_rule="linear",
            seed=0,
            data_wait_fraction=0.2,
            test_accuracy=0.7,
        )
        for mode in ("single", "dp")
        for b in (32, 128)
    ]
    return rows


def ddp_rows() -> list[dict]:
    return [
        dict(world=w, lr_rule=rule, seed=s, test_accuracy=0.99 - (0.02 if w == 2 and rule == "none" else 0))
        for w in (1, 2)
        for rule in ("none", "linear")
        for s in (0, 1, 2)
    ]


def throughput() -> list[dict]:
    rows = [
        {"loader": "standard", "batch_size": b, "num_workers": w, "images_per_s": 1000.0 * (1 + w) + b}
        for b in (16, 256)
        for w in (0, 1, 2)
        for _ in range(2)
    ]
    return rows + [
        {"loader": "resident", "batch_size": b, "num_workers": 0, "images_per_s": 40000.0 + b} for b in (16, 256)
    ]


def summaries() -> dict:
    cls = {
        "fixed_small": (0.99, 600.0),
        "fixed_large": (0.95, 1100.0),
        "step_growth": (0.985, 900.0),
        "noise_scale": (0.99, 800.0),
    }
    return {
        "classification": {
            k: {"test_accuracy": a, "run_images_per_s": ips, "test_accuracy_std": 0.01} for k, (a, ips) in cls.items()
        },
        "restoration": {k: {"test_psnr": 18.5, "run_images_per_s": 700.0} for k in cls},
    }


def test_each_stage_headline_is_a_few_named_figures():
    assert train_dp.headline(dp_rows()) == {"A2_wait_share": 0.761, "A4_acc_gap": -0.385}
    assert train_ddp.headline(ddp_rows()) == {"B5_acc_gap": -0.02}
    assert profile_dataloader.headline(throughput()) == {
        "resident_speedup": pytest.approx(40256 / 3256, abs=1e-3),
        "A3_workers_gain": pytest.approx(3256 / 1256, abs=1e-3),
    }
    assert adaptive.headline(summaries()) == {"C1_acc_gap": -0.04, "C2_acc_gap": -0.005, "C3_ips_gain": 1.5}


def test_a_figure_the_grid_cannot_give_is_nan_not_an_error():
    one_world = [r for r in ddp_rows() if r["world"] == 1]
    assert math.isnan(train_ddp.headline(one_world)["B5_acc_gap"])
    no_scaling = [r for r in dp_rows() if r["sweep"] != "lenet_lr_scaling"]
    assert math.isnan(train_dp.headline(no_scaling)["A4_acc_gap"])
    no_workers = [r for r in throughput() if r["num_workers"] == 0]
    assert math.isnan(profile_dataloader.headline(no_workers)["A3_workers_gain"])
    assert math.isnan(
        adaptive.headline({"classification": {"fixed_small": {"test_accuracy": 0.9, "run_images_per_s": 5.0}}})[
            "C1_acc_gap"
        ]
    )
    # json_text writes NaN, which `dvc metrics show` reads
    assert "NaN" in json_text(train_ddp.headline(one_world))


def test_evaluate_headline_counts_mismatches():
    from dpstudy.evaluation import Evaluation, checks, headline

    def evaluation(score: float, trained: float) -> Evaluation:
        return Evaluation(
            stage="train_dp",
            study="A",
            sweep="vgg",
            name="vgg-x-s0",
            configuration="x",
            seed=0,
            task="classification",
            model="vgg16",
            dataset="digits",
            outcome="finished",
            epochs=1,
            metric="accuracy",
            test_metric=score,
            test_loss=0.1,
            test_baseline=math.nan,
            test_images=359,
            trained_metric=trained,
            checkpoint="c.pt",
        )

    found = [evaluation(0.9, 0.9), evaluation(0.8, 0.5), evaluation(math.nan, math.nan)]
    assert headline(found) == {"mismatched": 1}
    assert checks(found) == {"checkpoints": 3, "agree_with_training": 2, "max_abs_difference": 0.3}


def metrics_paths() -> dict[str, str]:
    """stage -> its metrics file, from the real dvc.yaml."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        for entry in stage.get("metrics", []):
            out[name] = next(iter(entry)) if isinstance(entry, dict) else entry
    return out


def git(*args: str, cwd: Path) -> None:
    subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True)


def mini_repo(root: Path, files: dict[str, dict]) -> Path:
    """A git + DVC repository with the real params.yaml and, per stage with metrics, a stage that
    writes ``files[stage]`` (scaled by its number of seeds when it has any) to the real path."""
    paths = metrics_paths()
    assert set(paths) == set(HEADLINES), "every stage but download and plot has one headline file"
    real = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "src").mkdir()
    (root / "src" / "write.py").write_text(
        "import json, math, sys, yaml\n"
        "stage, path, figures = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n"
        "seeds = (yaml.safe_load(open('params.yaml')).get(stage) or {}).get('seeds', {'quick': [0]})\n"
        "n = len(seeds['quick'] if isinstance(seeds, dict) else seeds)\n"
        "open(path, 'w').write(json.dumps({k: v * n for k, v in figures.items()}))\n"
    )
    stages = {}
    for stage, path in paths.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        stages[stage] = {
            "cmd": f"python src/write.py {stage} {path} {shlex.quote(json.dumps(files[stage]))}",
            "deps": ["src/write.py"],
            "params": real[stage].get("params", []),
            "metrics": [{path: {"cache": False, "persist": True}}],
        }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    git("init", "-q", cwd=root)
    assert dvc("init", "-q", cwd=root).returncode == 0
    return root


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def worst_case_files() -> dict[str, dict]:
    """Made-up headlines as wide as real ones get: negative, 4 decimals, large ratios."""
    return {
        "profile_dataloader": profile_dataloader.headline(throughput()) | {"resident_speedup": 71234.567},
        "train_dp": train_dp.headline(dp_rows()) | {"A4_acc_gap": -0.8888},
        "train_ddp": {"B5_acc_gap": -0.1234},
        "train_adaptive": adaptive.headline(summaries()) | {"C2_acc_gap": -0.0056},
        "evaluate": {"mismatched": 12},
    }


def test_metrics_show_fits_a_terminal(tmp_path):
    files = worst_case_files()
    assert {stage: set(f) for stage, f in files.items()} == HEADLINES
    repo = mini_repo(tmp_path / "repo", files)
    for stage, path in metrics_paths().items():
        (repo / path).write_text(json_text(files[stage]))
    shown = dvc("metrics", "show", "--md", cwd=repo)
    assert shown.returncode == 0, shown.stderr
    assert widest(shown.stdout) <= WIDTH, shown.stdout
    header = shown.stdout.splitlines()[0]
    assert {c.strip() for c in header.strip("|").split("|")} == {"Path", *set().union(*HEADLINES.values())}
    assert all(path in shown.stdout for path in metrics_paths().values())


def readme_exp_show() -> list[str]:
    """The `dvc exp show` command the documentation gives (docs/presets.md, section Experiments),
    as arguments."""
    lines = [line.split("#")[0].strip() for line in (REPO / "docs" / "presets.md").read_text().splitlines()]
    [command] = [line for line in lines if line.startswith("dvc exp show")]
    return shlex.split(command)[1:]


def test_readme_exp_show_compares_against_the_committed_baseline(tmp_path):
    """With dvc.lock and the metrics files committed (docs/presets.md), `dvc exp show` reads the
    baseline's figures (not `!`); the documented command shows what an experiment changed, in a terminal."""
    args = readme_exp_show()
    assert "--only-changed" in args and ("--drop" in args or "--keep" in args)
    repo = mini_repo(tmp_path / "repo", worst_case_files())
    assert dvc("repro", cwd=repo).returncode == 0
    git("add", "-A", cwd=repo)  # dvc.lock and results/*/metrics.json with everything else
    git("commit", "-qm", "baseline", cwd=repo)
    ran = dvc("exp", "run", "-S", "train_dp.seeds.quick=[0,1]", cwd=repo)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]

    shown = dvc(*args, cwd=repo)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert widest(out) <= WIDTH, out
    assert "train_dp.seeds.quick" in out and "A2_wait_share" in out and "A4_acc_gap" in out
    assert "src/write.py" not in out and "Created" not in out  # dropped: dependency hashes, dates
    rows = [line for line in out.splitlines() if line.startswith("|") and "---" not in line][1:]
    baseline = next(row for row in rows if not row.startswith("| workspace") and "──" not in row)
    assert "!" not in baseline, out
    # unchanged figures and params are left out
    assert "resident_speedup" not in out and "preset" not in out.split("\n")[0]


@pytest.mark.slow
def test_real_metrics_files_fit_a_terminal(quick_run, tmp_path):
    """The metrics files a real quick pipeline wrote, as `dvc metrics show --md` prints them."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(quick_run / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(quick_run / "params.yaml", repo / "params.yaml")
    for stage, path in metrics_paths().items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(quick_run / path, repo / path)
        assert set(json.loads((repo / path).read_text())) == HEADLINES[stage], path
    git("init", "-q", cwd=repo)
    assert dvc("init", "-q", cwd=repo).returncode == 0
    shown = dvc("metrics", "show", "--md", cwd=repo)
    assert shown.returncode == 0, shown.stderr
    assert widest(shown.stdout) <= WIDTH, shown.stdout
    assert not re.search(r"\|\s*!\s*\|", shown.stdout), shown.stdout  # every file read
