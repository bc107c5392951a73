"""Typed, validated access to ``params.yaml``.

Each stage reads only its own section (plus ``preset`` and, where it measures devices,
``telemetry``) into a frozen pydantic dataclass (`models`). ``params.yaml`` is the single home of
every value and its comment: the models carry types and allowed ranges, not defaults, so a missing
key is an error rather than a silent second default.

A value written as ``{quick: A, gpu: G, paper: B}`` takes the entry of the chosen preset. Everything
else is checked strictly: an unknown key, a wrong type or an impossible value stops the stage before
any work with one line naming the key and what is allowed (`UserError`, worded by `refusal`).
Nothing here imports torch: params are checked before that 10-30 s import, so a typo answers at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..errors import UserError
from .models import (
    PRESETS,
    SECTIONS,
    AdaptiveTaskConfig,
    AugmentConfig,
    Dataset,
    DDPSweepConfig,
    Device,
    DownloadConfig,
    DPSweepConfig,
    EvaluateConfig,
    FixedBatchConfig,
    GridConfig,
    LaunchConfig,
    Loader,
    LRRule,
    Model,
    NoiseScaleConfig,
    ProbeConfig,
    ProfileConfig,
    RecipeConfig,
    SchedulesConfig,
    Step,
    StepGrowthConfig,
    TelemetryConfig,
    TorchrunStageConfig,
    TrainAdaptiveConfig,
    TrainDDPConfig,
    TrainDPConfig,
    plot_section,
)
from .params_file import DuplicateKeyError, ParamsLoader, load_yaml, read_params
from .refusal import refusal

__all__ = [
    "PRESETS",
    "SECTIONS",
    "AdaptiveTaskConfig",
    "AugmentConfig",
    "DDPSweepConfig",
    "DPSweepConfig",
    "Dataset",
    "Device",
    "DownloadConfig",
    "DuplicateKeyError",
    "EvaluateConfig",
    "FixedBatchConfig",
    "GridConfig",
    "LRRule",
    "LaunchConfig",
    "Loader",
    "Model",
    "NoiseScaleConfig",
    "ParamsLoader",
    "ProbeConfig",
    "ProfileConfig",
    "RecipeConfig",
    "SchedulesConfig",
    "Step",
    "StepGrowthConfig",
    "TelemetryConfig",
    "TorchrunStageConfig",
    "TrainAdaptiveConfig",
    "TrainDDPConfig",
    "TrainDPConfig",
    "as_dict",
    "flatten",
    "load_section",
    "load_yaml",
    "plot_section",
    "read_params",
]


def load_section(name: str, path: str | Path = "params.yaml", model: type | None = None):
    """Return (preset, typed config) for one section of params.yaml; ``model``: the section's model
    where `SECTIONS` has none (plot's, built from the claims: `dpstudy.claims.PLOT_SECTION`)."""
    model = model or SECTIONS[name]
    if model is None:
        raise TypeError(f"section {name!r} is read with its model (plot: dpstudy.claims.PLOT_SECTION)")
    preset, raw = read_params(path)
    if name not in raw:
        raise UserError(f"{path}: missing section '{name}'")
    try:
        return preset, TypeAdapter(model).validate_python(raw[name], context={"preset": preset})
    except ValidationError as exc:
        raise refusal(exc, model, where=f"{Path(path).name}: {name}") from None


def as_dict(cfg) -> dict[str, Any]:
    """Plain nested dict of a config (for MLflow params and checkpoints)."""
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become comma-joined strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif isinstance(v, (list, tuple)):
            out[name] = ",".join(map(str, v))
        else:
            out[name] = v
    return out
