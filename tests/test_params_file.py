"""params.yaml survives DVC's own rewriting: `dvc exp run -S` (DVC's apply_overrides, the code
behind it) changes exactly the lines of the values it sets, and nothing else: no comment lost, no
layout changed, and setting the value already there leaves the file byte-identical (the Docker
image's `dvc exp run -S preset=quick` on a mounted checkout must not touch the user's file)."""

from __future__ import annotations

import difflib
import shutil

import pytest
import yaml
from conftest import REPO
from dvc.utils.hydra import apply_overrides

from dpstudy.config import PRESETS


def _set(tmp_path, override: str) -> tuple[str, str]:
    copy = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", copy)
    apply_overrides(copy, [override])
    return (REPO / "params.yaml").read_text(), copy.read_text()


def test_setting_the_current_preset_leaves_params_yaml_byte_identical(tmp_path):
    current = yaml.safe_load((REPO / "params.yaml").read_text())["preset"]
    before, after = _set(tmp_path, f"preset={current}")
    assert after == before, "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True)))


@pytest.mark.parametrize("preset", PRESETS)
def test_switching_preset_changes_that_line_alone(tmp_path, preset):
    before, after = _set(tmp_path, f"preset={preset}")
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(before.splitlines()) == len(after.splitlines())
    current = yaml.safe_load(before)["preset"]
    assert changed == ([] if preset == current else [(f"preset: {current}", f"preset: {preset}")])
    assert after.count("#") == before.count("#")
