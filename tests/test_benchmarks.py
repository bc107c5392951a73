"""The benchmarks still run and print their figure line (tiny settings: the figures themselves
are measured by `make bench` and recorded in benchmarks/RESULTS.md, never asserted here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, load, write_params

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "script, args, figure",
    [
        (
            "loader.py",
            ["--images", "2000", "--batches", "3", "--warmup", "1", "--workers", "0", "--repeats", "1"],
            r"loader_speedup: \d+\.\dx",
        ),
        ("overhead.py", ["--model", "lenet", "--epochs", "1", "--repeats", "1"], r"telemetry_overhead: -?\d+\.\d%"),
        (
            "ddp_cpu.py",
            ["--steps", "2", "--warmup", "1", "--repeats", "1", "--images", "512"],
            r"ddp_cpu_scaling: \d+\.\d\d",
        ),
        (
            "adaptive.py",
            ["--epochs", "2", "--params", "ONE_SEED"],
            r"adaptive_speedup: (\d+\.\d\d|nan)x \((step_growth|noise_scale).*\)",
        ),
        ("cli_startup.py", ["--repeats", "1"], r"cli_startup: \d+\.\d\ds \(\d+\.\dx python's \d+\.\d\ds floor\)"),
    ],
)
def test_benchmark_runs_and_prints_its_figure(tmp_path, script, args, figure):
    if "ONE_SEED" in args:  # one seed of the repository's params: the benchmark's code path, not its figure
        growth = "train_adaptive.classification.schedules.step_growth.at_epochs"
        one_seed = write_params(tmp_path / "params.yaml", {"train_adaptive.seeds": [0], growth: [1]})
        args = [str(one_seed) if a == "ONE_SEED" else a for a in args]
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.search(rf"^{figure}$", res.stdout, re.MULTILINE), res.stdout[-2000:]


def test_gpu_benchmarks_say_there_is_no_gpu_and_exit_0(tmp_path):
    """CI has no GPU: the GPU benchmarks must say so, not fail (their figures come from a lent GPU)."""
    for script, line in (
        ("gpu_util.py", "gpu_util: no CUDA GPU visible to PyTorch: nothing to measure"),
        ("graph_equality.py", "graph_equality: no CUDA GPU visible to PyTorch"),
    ):
        res = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.startswith(line), res.stdout


def test_gpu_check_params_are_the_gpu_preset_on_mirrored_mnist(tmp_path):
    """gpu_check.sh's params: valid for every stage, preset gpu, MNIST from the mirror only, graph steps kept."""
    from dpstudy.config import SECTIONS

    mirror = tmp_path / "mnist"
    mirror.mkdir()
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check_params.py"), str(REPO / "params.yaml"), str(mirror)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "t10k-images-idx3-ubyte.gz" in res.stderr  # an empty mirror is refused
    (mirror / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check_params.py"), str(REPO / "params.yaml"), str(mirror)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    path = tmp_path / "check.yaml"
    path.write_text(res.stdout)
    configs = {name: load(name, path) for name in SECTIONS}
    assert {preset for preset, _ in configs.values()} == {"gpu"}
    download = configs["download"][1]
    assert download.datasets == ["mnist"] and download.mirror == str(mirror) and download.upstream_split == "test_only"
    dp, adaptive = configs["train_dp"][1], configs["train_adaptive"][1]
    assert {
        dp.vgg.dataset,
        configs["train_ddp"][1].vgg.dataset,
        adaptive.classification.dataset,
        adaptive.restoration.dataset,
    } == {"mnist"}
    assert dp.lenet_lr_scaling.recipe.step == "graph" and adaptive.classification.recipe.step == "graph"
    assert configs["train_adaptive"][1].nproc_per_node == 1  # graph steps: one process, on any host
    assert configs["profile_dataloader"][1].probe.step == ["eager", "graph"]
    assert configs["profile_dataloader"][1].probe.min_seconds > 1.0  # NVML's averaging period
    assert adaptive.classification.recipe.epochs == 8 and adaptive.classification.recipe.milestones == [4, 6]


def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    res = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable},
    )
    assert res.returncode == 0, res.stderr
    assert "gpu_check: no CUDA GPU visible to PyTorch" in res.stdout
    assert (tmp_path / "out" / "log.txt").read_text().startswith("gpu_check: no CUDA GPU")
