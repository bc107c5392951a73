"""Shared fixtures: the repository's own params.yaml as the base of every test config, and small
real data (scikit-learn's digits) prepared once per session."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the workplace's shared folder, beside the checkout


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def set_key(params: dict, dotted: str, value) -> dict:
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return params


def write_params(path: Path, overrides: dict | None = None, base: dict | None = None) -> Path:
    """params.yaml from the repository's, with ``{"section.key": value}`` overrides applied."""
    params = copy.deepcopy(base if base is not None else repo_params())
    for dotted, value in (overrides or {}).items():
        set_key(params, dotted, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m dpstudy ...`` as a real process, as DVC would run it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dpstudy", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """A data/prepared folder holding digits.pt, prepared for real once per session."""
    from dpstudy.datasets import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare("digits", raw_dir=out / "raw", out_dir=out, split_seed=0, test_fraction=0.2)
    return out
