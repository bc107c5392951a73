"""Typed, validated access to ``params.yaml``.

Each stage reads only its own section (plus ``preset`` and, where it measures devices,
``telemetry``) into a frozen dataclass. ``params.yaml`` is the single home of every value and its
comment: the dataclasses carry types and allowed ranges, not defaults, so a missing key is an
error rather than a silent second default.

A value written as ``{quick: A, gpu: G, paper: B}`` takes the entry of the chosen preset. Everything else
is checked strictly: an unknown key, a wrong type or an impossible value stops the stage before any
work with one line naming the key and what is allowed (`UserError`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from .errors import UserError
from .names import DATASET_NAMES, DECAYS, LOADER_NAMES, LR_RULES, MODEL_NAMES, STEP_NAMES

PRESETS = ("quick", "gpu", "paper")

# Allowed names come from `names` (the modules that implement them check against it), not from
# those modules: they import torch, and params must be checked before that 10-30 s import.
Dataset = Literal[DATASET_NAMES]
Model = Literal[MODEL_NAMES]
Device = Literal["auto", "cpu", "cuda"]
Loader = Literal[LOADER_NAMES]
LRRule = Literal[LR_RULES]
Step = Literal[STEP_NAMES]


def _range(**bounds) -> dict:
    """Field metadata: numeric bounds (ge, gt, le, lt) checked on the value or on each list item."""
    return {"bounds": bounds}


# --------------------------------------------------------------------------------------------
# Sections. Field order follows params.yaml; see the comments there for meaning and defaults.


@dataclass(frozen=True)
class TelemetryConfig:
    interval_s: float = field(metadata=_range(gt=0))


@dataclass(frozen=True)
class DownloadConfig:
    datasets: list[Dataset] = field(metadata={"nonempty": True, "unique": True})
    mirror: str
    upstream_split: Literal["full", "test_only"]
    split_seed: int = field(metadata=_range(ge=0))
    test_fraction: float = field(metadata=_range(gt=0, lt=1))
    timeout_s: float = field(metadata=_range(gt=0))


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = field(metadata=_range(ge=0))
    hflip: bool


@dataclass(frozen=True)
class ProbeConfig:
    steps: int = field(metadata=_range(ge=1))
    warmup_steps: int = field(metadata=_range(ge=0))
    num_workers: int = field(metadata=_range(ge=0))
    lr: float = field(metadata=_range(gt=0))
    momentum: float = field(metadata=_range(ge=0, lt=1))
    step: list[Step] = field(metadata={"nonempty": True, "unique": True})
    min_seconds: float = field(metadata=_range(ge=0))
    repeats: int = field(metadata=_range(ge=1))


@dataclass(frozen=True)
class ProfileConfig:
    dataset: Dataset
    model: Model
    device: Device
    seed: int = field(metadata=_range(ge=0))
    batch_sizes: list[int] = field(metadata={**_range(ge=1), "nonempty": True, "unique": True})
    num_workers: list[int] = field(metadata={**_range(ge=0), "nonempty": True, "unique": True})
    pin_memory: bool
    warmup_batches: int = field(metadata=_range(ge=0))
    measure_batches: int = field(metadata=_range(ge=1))
    repeats: int = field(metadata=_range(ge=1))
    augment: AugmentConfig
    probe: ProbeConfig


@dataclass(frozen=True)
class RecipeConfig:
    """How one configuration trains (shared by every training stage)."""

    epochs: int = field(metadata=_range(ge=1))
    optimizer: Literal["sgd", "adam"]
    lr: float = field(metadata=_range(gt=0))
    ref_batch: int = field(metadata=_range(ge=1))
    momentum: float = field(metadata=_range(ge=0, lt=1))
    weight_decay: float = field(metadata=_range(ge=0))
    warmup_epochs: float = field(metadata=_range(ge=0))
    decay: Literal[DECAYS]
    milestones: list[float] = field(metadata={**_range(ge=0), "unique": True})
    gamma: float = field(metadata=_range(gt=0, le=1))
    augment: AugmentConfig
    step: Step


@dataclass(frozen=True)
class GridConfig:
    """What every training grid has: one model and dataset, loaders × batches × lr rules."""

    model: Model
    width: float = field(metadata=_range(gt=0, le=1))
    dataset: Dataset
    loaders: list[Loader] = field(metadata={"nonempty": True, "unique": True})
    num_workers: int = field(metadata=_range(ge=0))
    batch_sizes: list[int] = field(metadata={**_range(ge=2), "nonempty": True, "unique": True})
    lr_rules: list[LRRule] = field(metadata={"nonempty": True, "unique": True})
    recipe: RecipeConfig


@dataclass(frozen=True)
class DPSweepConfig(GridConfig):
    """A grid of train_dp: every mode × loader × batch × lr rule × seed."""

    modes: list[Literal["single", "dp"]] = field(metadata={"nonempty": True, "unique": True})


@dataclass(frozen=True)
class DDPSweepConfig(GridConfig):
    """train_ddp's grid: every world size × loader × per-rank batch × lr rule × seed."""

    world_sizes: list[int] = field(metadata={**_range(ge=1), "nonempty": True, "unique": True})


@dataclass(frozen=True)
class TrainDPConfig:
    device: Device
    seeds: list[int] = field(metadata={**_range(ge=0), "nonempty": True, "unique": True})
    sync_timing: bool
    cpu_processes: int = field(metadata=_range(ge=1))
    lenet_utilization: DPSweepConfig
    lenet_lr_scaling: DPSweepConfig
    vgg: DPSweepConfig


@dataclass(frozen=True)
class LaunchConfig:
    """Where a torchrun stage runs (`launch`): nodes, rendezvous, restarts; not what it computes."""

    nnodes: int = field(metadata=_range(ge=1))
    rdzv_endpoint: str  # "" = standalone on this machine; else host:port of the c10d rendezvous
    rdzv_id: str
    max_restarts: int = field(metadata=_range(ge=0))


@dataclass(frozen=True)
class TorchrunStageConfig:
    """What a stage launched by torchrun has before its grids: processes and nodes, device, seeds,
    timing."""

    nproc_per_node: int | Literal["gpu"] = field(metadata=_range(ge=1))
    launch: LaunchConfig
    device: Device
    seeds: list[int] = field(metadata={**_range(ge=0), "nonempty": True, "unique": True})
    sync_timing: bool
    timeout_s: float = field(metadata=_range(gt=0))


@dataclass(frozen=True)
class TrainDDPConfig(TorchrunStageConfig):
    vgg: DDPSweepConfig


@dataclass(frozen=True)
class FixedBatchConfig:
    """A fixed global batch all along (study C's small and large baselines)."""

    kind: ClassVar[str] = "fixed"
    batch: int = field(metadata=_range(ge=2))
    lr_rule: LRRule


@dataclass(frozen=True)
class StepGrowthConfig:
    """Lee et al. 2019 reconstructed: batch × factor at given epochs, up to max_batch."""

    kind: ClassVar[str] = "step_growth"
    batch: int = field(metadata=_range(ge=2))
    lr_rule: LRRule
    factor: int = field(metadata=_range(ge=2))
    at_epochs: list[int] | Literal["milestones"] = field(metadata={**_range(ge=1), "unique": True})
    max_batch: int = field(metadata=_range(ge=2))


@dataclass(frozen=True)
class NoiseScaleConfig:
    """Grow by factor when the smoothed gradient noise scale exceeds the batch, up to max_batch."""

    kind: ClassVar[str] = "noise_scale"
    batch: int = field(metadata=_range(ge=2))
    lr_rule: LRRule
    factor: int = field(metadata=_range(ge=2))
    max_batch: int = field(metadata=_range(ge=2))
    ema: float = field(metadata=_range(ge=0, lt=1))


@dataclass(frozen=True)
class SchedulesConfig:
    fixed_small: FixedBatchConfig
    fixed_large: FixedBatchConfig
    step_growth: StepGrowthConfig
    noise_scale: NoiseScaleConfig


@dataclass(frozen=True)
class AdaptiveTaskConfig:
    """One task of train_adaptive: a model, its data, its recipe and the four batch schedules."""

    model: Model
    width: float = field(metadata=_range(gt=0, le=1))
    input_size: int = field(metadata=_range(ge=2))
    dataset: Dataset
    loader: Loader
    num_workers: int = field(metadata=_range(ge=0))
    target_tolerance: float = field(metadata=_range(ge=0))
    recipe: RecipeConfig
    schedules: SchedulesConfig


@dataclass(frozen=True)
class TrainAdaptiveConfig(TorchrunStageConfig):
    classification: AdaptiveTaskConfig
    restoration: AdaptiveTaskConfig


@dataclass(frozen=True)
class EvaluateConfig:
    device: Device


@dataclass(frozen=True)
class ReportRules:
    """Thresholds the claims report decides each verdict by, and the confidence of the interval over
    seeds each threshold is set against (see params.yaml's plot section)."""

    confidence: float = field(metadata=_range(gt=0, lt=1))
    a1_min_relative_drop: float = field(metadata=_range(ge=0, lt=1))
    a2_min_wait_fraction: float = field(metadata=_range(ge=0, le=1))
    a2_resident_factor: float = field(metadata=_range(ge=1))
    a3_min_gain: float = field(metadata=_range(ge=0))
    a4_accuracy_tolerance: float = field(metadata=_range(ge=0, le=1))
    b1_max_speedup: float = field(metadata=_range(gt=0))
    b2_min_imbalance: float = field(metadata=_range(ge=1))
    b4_min_speedup: float = field(metadata=_range(gt=0))
    b5_accuracy_drop: float = field(metadata=_range(ge=0, le=1))
    c3_min_throughput_gain: float = field(metadata=_range(gt=0))
    x1_max_relative_drop: float = field(metadata=_range(ge=0, lt=1))


@dataclass(frozen=True)
class PlotConfig:
    rules: ReportRules


# Every top-level key params.yaml may hold, and the dataclass that reads it.
SECTIONS: dict[str, type] = {
    "telemetry": TelemetryConfig,
    "download": DownloadConfig,
    "profile_dataloader": ProfileConfig,
    "train_dp": TrainDPConfig,
    "train_ddp": TrainDDPConfig,
    "train_adaptive": TrainAdaptiveConfig,
    "evaluate": EvaluateConfig,
    "plot": PlotConfig,
}


# --------------------------------------------------------------------------------------------
# Loading


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one mapping (PyYAML would silently keep the last)."""

    def __init__(self, key: Any, mark: yaml.Mark):
        self.key, self.line = key, mark.line + 1
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=mark)


# libyaml's parser where PyYAML has it (params.yaml parses ~8x faster; every stage and every refused
# params file parses it), with the same Python constructor and resolvers: the same values and checks.
class ParamsLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """yaml.SafeLoader, stricter and closer to YAML 1.2 (what DVC's own parser reads):

    - a key repeated in one mapping is an error (`DuplicateKeyError`), not "the last one wins";
    - ``1e-2``, ``1E5``, ``-3e+4``, ``-.5`` are floats (YAML 1.1 wants a dot and a signed exponent,
      so PyYAML reads ``1e-2`` as the string '1e-2'). Quoted scalars stay strings.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, key_node.start_mark)
                    seen.add(key)
                except TypeError:  # unhashable: the base constructor reports it
                    pass
        return super().construct_mapping(node, deep=deep)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+|[-+]\.[0-9]+)$"),
    list("-+.0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with `ParamsLoader` (the one parser of params files)."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass


def read_params(path: str | Path = "params.yaml") -> tuple[str, dict[str, Any]]:
    """Parse params.yaml; return (preset, raw mapping). Checks the top-level shape only."""
    path = Path(path)
    text = _params_text(path)
    try:
        raw = load_yaml(text)
    except DuplicateKeyError as exc:
        raise UserError(f"{path} line {exc.line}: duplicate key {exc.key!r} (each key may appear once in a mapping)")
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, other controls)
        # its first occurrence is where the reader stopped (libyaml's position counts bytes)
        line = text.count("\n", 0, max(text.find(chr(exc.character)), 0)) + 1
        binary = "; a binary file?" if exc.character in _CONTROL else ""
        raise UserError(f"{path}: line {line} is not valid YAML (character #x{exc.character:04x} is not allowed"
                        f"{binary})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    allowed = {"preset", *SECTIONS}
    for key in raw:
        if key not in allowed:
            raise UserError(f"{path}: unknown section '{key}' (allowed: {', '.join(sorted(allowed))})")
    preset = raw.get("preset")
    if preset not in PRESETS:
        raise UserError(f"{path}: preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return preset, raw


_CONTROL = {*range(0x20), 0x7F} - {0x09, 0x0A, 0x0D}  # characters no text file of ours holds
_BOMS = {b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}  # UTF-32 LE starts like UTF-16 LE


def _params_text(path: Path) -> str:
    """The file's text, which must be UTF-8 (what DVC reads it as, too)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (run from the repository root or pass --params)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a params file: pass --params a YAML file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc}): fix its permissions or pass --params "
                        "another file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bom = next((name for bom, name in _BOMS.items() if data.startswith(bom)), None)
        guess = (f"{bom}?" if bom else "a binary file?" if any(b in _CONTROL for b in data[:4096])
                 else "another encoding?")
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}; {guess}): "
                        "save it as UTF-8 YAML") from None


def load_section(name: str, path: str | Path = "params.yaml"):
    """Return (preset, typed config) for one section of params.yaml."""
    preset, raw = read_params(path)
    if name not in raw:
        raise UserError(f"{path}: missing section '{name}'")
    return preset, build(SECTIONS[name], raw[name], preset, where=f"{Path(path).name}: {name}")


def build(cls: type, data: Any, preset: str, where: str):
    """Build dataclass ``cls`` from a mapping, resolving per-preset values and checking types."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise UserError(f"{where}.{key}: unknown key (allowed: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in data:
            raise UserError(f"{key}: missing (every key is required; see the repository's params.yaml)")
        hint = hints[name]
        value = data[name]
        if dataclasses.is_dataclass(hint):
            # A whole subsection may differ per preset too: {quick: {...}, gpu: {...}, paper: {...}}.
            if isinstance(value, dict) and set(value) == set(PRESETS):
                value = value[preset]
            values[name] = build(hint, value, preset, key)
            continue
        value = _resolve_preset(value, preset, key)
        values[name] = _check(value, hint, f.metadata, key)
    return cls(**values)


def _resolve_preset(value: Any, preset: str, key: str) -> Any:
    if not isinstance(value, dict):
        return value
    if set(value) != set(PRESETS):
        raise UserError(f"{key}: a per-preset value needs exactly the keys {', '.join(PRESETS[:-1])} and {PRESETS[-1]}, "
                        f"got {', '.join(map(str, value)) or 'none'}")
    return value[preset]


def _check(value: Any, hint: Any, meta: typing.Mapping, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # e.g. int | Literal["gpu"], list[int] | Literal[...]
        return _check_union(value, hint, meta, key)
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list of {_type_name(item_hint)}, got {_describe(value)}")
        if meta.get("nonempty") and not value:
            raise UserError(f"{key}: must not be empty")
        items = [_check_scalar(v, item_hint, meta, f"{key}[{i}]") for i, v in enumerate(value)]
        if meta.get("unique") and len(set(items)) != len(items):
            raise UserError(f"{key}: must not repeat a value, got {items}")
        return items
    return _check_scalar(value, hint, meta, key)


def _check_union(value: Any, hint: Any, meta: typing.Mapping, key: str) -> Any:
    options = typing.get_args(hint)
    errors = []
    for option in options:
        try:
            return _check(value, option, meta, key)
        except UserError as exc:
            errors.append(exc)
    # A value of the right shape but wrong content (an integer out of range, a bad list item)
    # says what is wrong with it; anything else lists the alternatives.
    for option, exc in zip(options, errors):
        if (option is int and isinstance(value, int) and not isinstance(value, bool)) or \
                (typing.get_origin(option) is list and isinstance(value, list)):
            raise exc
    raise UserError(f"{key}: expected {' or '.join(map(_type_name, options))}, got {_describe(value)}")


def _check_scalar(value: Any, hint: Any, meta: typing.Mapping, key: str) -> Any:
    if typing.get_origin(hint) is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise UserError(f"{key}: must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        # bool is a subclass of int in Python; `true` for a batch size is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {_describe(value)}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {_describe(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range
            value = math.inf if value > 0 else -math.inf
        if not math.isfinite(value):  # .inf, -.inf, .nan, 1e999: no setting means that
            raise UserError(f"{key}: must be a finite number, got {value!r}")
    elif hint is str:
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {_describe(value)}")
        return value
    else:  # pragma: no cover - a programming error in a dataclass above
        raise TypeError(f"unsupported config type {hint!r} for {key}")
    _check_bounds(value, meta.get("bounds", {}), key)
    return value


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_TEST = {
    "ge": lambda v, b: v >= b,
    "gt": lambda v, b: v > b,
    "le": lambda v, b: v <= b,
    "lt": lambda v, b: v < b,
}


def _check_bounds(value, bounds: dict, key: str) -> None:
    for op, bound in bounds.items():
        if not _BOUND_TEST[op](value, bound):
            allowed = " and ".join(f"{_BOUND_TEXT[o]} {b}" for o, b in bounds.items())
            raise UserError(f"{key}: must be {allowed}, got {value!r}")


def _type_name(hint) -> str:
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) is Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"


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

