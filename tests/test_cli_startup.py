"""The command line answers without the heavy libraries: help, an argument error and a refused
params.yaml never import torch, MLflow or matplotlib (their import is most of a stage's start-up,
seconds on a small machine). What this costs in time is measured, not asserted, by
benchmarks/cli_startup.py; which modules a command imports cannot be flaky."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import write_params

from dpstudy.stages import STAGES

HEAVY = ("torch", "torchvision", "mlflow", "matplotlib", "numpy", "pandas", "PIL", "sklearn", "tqdm")

# Runs each command in turn in one process, as the console script would (`main(argv)`), and prints
# per command its exit status and the heavy modules imported so far.
PROBE = """
import json, sys
from dpstudy.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    print(json.dumps([argv, rc, [m for m in json.loads(sys.argv[2]) if m in sys.modules]]), flush=True)
"""


def probe(commands: list[list[str]], cwd) -> list[tuple[list[str], int, list[str]]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands), json.dumps(HEAVY)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert [r[0] for r in rows] == commands, done.stdout[-3000:]
    return rows


def test_importing_the_cli_and_building_its_parser_imports_nothing_heavy():
    code = (
        "import sys; from dpstudy.cli import build_parser; build_parser(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_and_argument_errors_import_nothing_heavy(tmp_path):
    commands = [
        ["--help"],
        ["--version"],
        ["no_such_stage"],
        *([stage, "--help"] for stage in STAGES),
        *([stage, "--no-such-option"] for stage in STAGES),
        ["launch", "--help"],
        ["launch", "train_ddp", "--no-such-option"],
        ["launch", "--dry-run", "no_such_stage"],
    ]
    for argv, rc, heavy in probe(commands, tmp_path):
        assert rc == (0 if "--help" in argv or "--version" in argv else 2), argv
        assert heavy == [], f"dpstudy {' '.join(argv)} imported {heavy}"


def test_a_refused_params_file_imports_nothing_heavy(tmp_path):
    """Each stage (and `launch` of each torchrun stage) checks its params before any heavy import."""
    sections = ["download", "profile_dataloader", "train_dp", "train_ddp", "train_adaptive", "evaluate", "plot"]
    assert sorted(sections) == sorted(STAGES)
    write_params(tmp_path / "params.yaml", {f"{section}.no_such_key": 1 for section in sections})
    # one process runs them in turn (imports add up): plot, which may import pandas, comes last
    commands = [[stage] for stage in STAGES if stage != "plot"]
    commands += [["launch", "train_ddp"], ["launch", "--dry-run", "train_adaptive"], ["plot"]]
    for argv, rc, heavy in probe(commands, tmp_path):
        assert rc == 2, argv
        # plot's rules are the thresholds the claims declare: reading them imports the claims'
        # declarations, whose queries are pandas (0.3 s); never torch, MLflow or matplotlib
        allowed = {"numpy", "pandas"} if argv == ["plot"] else set()
        assert set(heavy) <= allowed, f"dpstudy {' '.join(argv)} (params refused) imported {heavy}"
