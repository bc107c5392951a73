"""The benchmarks still run and print their figure line (tiny settings: the figures themselves
are measured by `make bench` and recorded in benchmarks/RESULTS.md, never asserted here)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script, args, figure", [
    ("loader.py", ["--images", "2000", "--batches", "3", "--warmup", "1", "--workers", "0", "--repeats", "1"],
     r"loader_speedup: \d+\.\dx"),
    ("overhead.py", ["--epochs", "1", "--repeats", "1"], r"telemetry_overhead: -?\d+\.\d%"),
    ("ddp_cpu.py", ["--steps", "2", "--warmup", "1", "--repeats", "1", "--images", "512"],
     r"ddp_cpu_scaling: \d+\.\d\d"),
    ("adaptive.py", ["--epochs", "4"], r"adaptive_speedup: (\d+\.\d\d|nan)x \((step_growth|noise_scale).*\)"),
    ("cli_startup.py", ["--repeats", "1"], r"cli_startup: \d+\.\d\ds \(\d+\.\dx python's \d+\.\d\ds floor\)"),
])
def test_benchmark_runs_and_prints_its_figure(tmp_path, script, args, figure):
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.search(rf"^{figure}$", res.stdout, re.MULTILINE), res.stdout[-2000:]
