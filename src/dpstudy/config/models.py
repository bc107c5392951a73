"""The pydantic models of ``params.yaml``: one frozen dataclass per section and per nested block.

Field order follows params.yaml; see the comments there for meaning and defaults. The models carry
types and allowed ranges, not defaults, so a missing key is an error rather than a silent second
default. They are pydantic dataclasses, so the code that uses them keeps ``dataclasses.replace``,
``asdict`` and ``fields``; building one checks it, and ``refusal`` words the first error.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from ..names import DATASET_NAMES, DECAYS, LOADER_NAMES, LR_RULES, MODEL_NAMES, STEP_NAMES

PRESETS = ("quick", "gpu", "paper")

# Allowed names come from `names` (the modules that implement them check against it), not from
# those modules: they import torch, and params must be checked before that 10-30 s import.
Dataset = Literal[DATASET_NAMES]
Model = Literal[MODEL_NAMES]
Device = Literal["auto", "cpu", "cuda"]
Loader = Literal[LOADER_NAMES]
LRRule = Literal[LR_RULES]
Step = Literal[STEP_NAMES]


def as_float(value: Any) -> Any:
    """An integer as a float (one beyond float range as +-inf, which is then refused as not finite)."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value


def _unique(items: list) -> list:
    if len(set(items)) != len(items):
        raise PydanticCustomError("unique", "must not repeat a value, got {items}", {"items": items})
    return items


# Strict scalars: `true` for a batch size is a mistake, not 1, and "64" is not a number. An empty
# YAML value (`mirror:`) is the empty string.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), BeforeValidator(as_float)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict(), BeforeValidator(lambda v: "" if v is None else v)]


def _range(kind: Any, **bounds) -> Any:
    """``kind`` within numeric bounds (ge, gt, le, lt)."""
    return Annotated[kind, Field(**bounds)]


def _list(item: Any, nonempty: bool = True, unique: bool = True) -> Any:
    """A YAML list of ``item``s (not empty, no value twice unless said otherwise)."""
    return Annotated[
        list[item], Strict(), Field(min_length=1 if nonempty else None), *([AfterValidator(_unique)] if unique else [])
    ]


def _or_name(shape: type, kind: Any, name: str) -> Any:
    """``kind`` or the one word ``name``: a value of kind's shape is checked as kind (so an
    out-of-range number says so), ``name`` is itself, and anything else lists both."""

    def which(value: Any) -> str | None:
        if isinstance(value, shape) and not isinstance(value, bool):
            return "value"
        return "name" if value == name else None

    return Annotated[Annotated[kind, Tag("value")] | Annotated[Literal[name], Tag("name")], Discriminator(which)]


# Every model: frozen, unknown keys refused, no infinite or NaN number. Its validator is built when
# first used, so importing config stays short and a stage builds only its own section's.
block = dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False, defer_build=True))


@block
class Block:
    """Every block of params.yaml: unknown keys refused, and ``{quick: A, gpu: G, paper: B}`` (any
    value, or a whole nested block) read as the entry of the preset in the validation context."""

    @field_validator("*", mode="before")
    @classmethod
    def _preset_column(cls, value: Any, info: ValidationInfo) -> Any:
        preset = (info.context or {}).get("preset")
        if preset is None or not isinstance(value, dict):
            return value
        if set(value) == set(PRESETS):
            return value[preset]
        if dataclasses.is_dataclass(cls.__dataclass_fields__[info.field_name].type):
            return value  # a nested block, checked key by key
        raise PydanticCustomError(
            "per_preset",
            "a per-preset value needs exactly the keys {names}, got {got}",
            {"names": f"{', '.join(PRESETS[:-1])} and {PRESETS[-1]}", "got": ", ".join(map(str, value)) or "none"},
        )


@block
class TelemetryConfig(Block):
    interval_s: _range(Float, gt=0)


@block
class DownloadConfig(Block):
    datasets: _list(Dataset)
    mirror: Str
    upstream_split: Literal["full", "test_only"]
    split_seed: _range(Int, ge=0)
    test_fraction: _range(Float, gt=0, lt=1)
    timeout_s: _range(Float, gt=0)


@block
class AugmentConfig(Block):
    crop_padding: _range(Int, ge=0)
    hflip: Bool


@block
class ProbeConfig(Block):
    steps: _range(Int, ge=1)
    warmup_steps: _range(Int, ge=0)
    num_workers: _range(Int, ge=0)
    lr: _range(Float, gt=0)
    momentum: _range(Float, ge=0, lt=1)
    step: _list(Step)
    min_seconds: _range(Float, ge=0)
    repeats: _range(Int, ge=1)


@block
class ProfileConfig(Block):
    dataset: Dataset
    model: Model
    device: Device
    seed: _range(Int, ge=0)
    batch_sizes: _list(_range(Int, ge=1))
    num_workers: _list(_range(Int, ge=0))
    pin_memory: Bool
    warmup_batches: _range(Int, ge=0)
    measure_batches: _range(Int, ge=1)
    repeats: _range(Int, ge=1)
    augment: AugmentConfig
    probe: ProbeConfig


@block
class RecipeConfig(Block):
    """How one configuration trains (shared by every training stage)."""

    epochs: _range(Int, ge=1)
    optimizer: Literal["sgd", "adam"]
    lr: _range(Float, gt=0)
    ref_batch: _range(Int, ge=1)
    momentum: _range(Float, ge=0, lt=1)
    weight_decay: _range(Float, ge=0)
    warmup_epochs: _range(Float, ge=0)
    decay: Literal[DECAYS]
    milestones: _list(_range(Float, ge=0), nonempty=False)
    gamma: _range(Float, gt=0, le=1)
    augment: AugmentConfig
    step: Step


@block
class GridConfig(Block):
    """What every training grid has: one model and dataset, loaders × batches × lr rules."""

    model: Model
    width: _range(Float, gt=0, le=1)
    dataset: Dataset
    loaders: _list(Loader)
    num_workers: _range(Int, ge=0)
    batch_sizes: _list(_range(Int, ge=2))
    lr_rules: _list(LRRule)
    recipe: RecipeConfig


@block
class DPSweepConfig(GridConfig):
    """A grid of train_dp: every mode × loader × batch × lr rule × seed."""

    modes: _list(Literal["single", "dp"])


@block
class DDPSweepConfig(GridConfig):
    """train_ddp's grid: every world size × loader × per-rank batch × lr rule × seed."""

    world_sizes: _list(_range(Int, ge=1))


@block
class TrainDPConfig(Block):
    device: Device
    seeds: _list(_range(Int, ge=0))
    sync_timing: Bool
    cpu_processes: _range(Int, ge=1)
    lenet_utilization: DPSweepConfig
    lenet_lr_scaling: DPSweepConfig
    vgg: DPSweepConfig


@block
class LaunchConfig(Block):
    """Where a torchrun stage runs (`launch`): nodes, rendezvous, restarts; not what it computes."""

    nnodes: _range(Int, ge=1)
    rdzv_endpoint: Str  # "" = standalone on this machine; else host:port of the c10d rendezvous
    rdzv_id: Str
    max_restarts: _range(Int, ge=0)


@block
class TorchrunStageConfig(Block):
    """What a stage launched by torchrun has before its grids: processes and nodes, device, seeds,
    timing."""

    nproc_per_node: _or_name(int, _range(Int, ge=1), "gpu")
    launch: LaunchConfig
    device: Device
    seeds: _list(_range(Int, ge=0))
    sync_timing: Bool
    timeout_s: _range(Float, gt=0)


@block
class TrainDDPConfig(TorchrunStageConfig):
    vgg: DDPSweepConfig


@block
class FixedBatchConfig(Block):
    """A fixed global batch all along (study C's small and large baselines)."""

    kind: ClassVar[str] = "fixed"
    batch: _range(Int, ge=2)
    lr_rule: LRRule


@block
class StepGrowthConfig(Block):
    """Lee et al. 2019 reconstructed: batch × factor at given epochs, up to max_batch."""

    kind: ClassVar[str] = "step_growth"
    batch: _range(Int, ge=2)
    lr_rule: LRRule
    factor: _range(Int, ge=2)
    at_epochs: _or_name(list, _list(_range(Int, ge=1), nonempty=False), "milestones")
    max_batch: _range(Int, ge=2)


@block
class NoiseScaleConfig(Block):
    """Grow by factor when the smoothed gradient noise scale exceeds the batch, up to max_batch."""

    kind: ClassVar[str] = "noise_scale"
    batch: _range(Int, ge=2)
    lr_rule: LRRule
    factor: _range(Int, ge=2)
    max_batch: _range(Int, ge=2)
    ema: _range(Float, ge=0, lt=1)


@block
class SchedulesConfig(Block):
    fixed_small: FixedBatchConfig
    fixed_large: FixedBatchConfig
    step_growth: StepGrowthConfig
    noise_scale: NoiseScaleConfig


@block
class AdaptiveTaskConfig(Block):
    """One task of train_adaptive: a model, its data, its recipe and the four batch schedules."""

    model: Model
    width: _range(Float, gt=0, le=1)
    input_size: _range(Int, ge=2)
    dataset: Dataset
    loader: Loader
    num_workers: _range(Int, ge=0)
    target_tolerance: _range(Float, ge=0)
    recipe: RecipeConfig
    schedules: SchedulesConfig


@block
class TrainAdaptiveConfig(TorchrunStageConfig):
    classification: AdaptiveTaskConfig
    restoration: AdaptiveTaskConfig


@block
class EvaluateConfig(Block):
    device: Device


def plot_section(thresholds: Mapping[str, Mapping[str, float]]) -> type:
    """The plot section's model, built from the claims' declarations (`dpstudy.claims.PLOT_SECTION`):
    ``rules`` holds the ``confidence`` of the interval over seeds and one number per threshold key
    a claim declares, within the range it declares (``{"ge": 0, "lt": 1}``), and nothing else."""
    fields = {"confidence": _range(Float, gt=0, lt=1)}
    fields.update({key: _range(Float, **bounds) for key, bounds in thresholds.items()})
    doc = "Thresholds the claims report decides each verdict by (params.yaml's plot.rules)."
    rules = block(type("ReportRules", (Block,), {"__annotations__": fields, "__module__": __name__, "__doc__": doc}))
    return block(type("PlotConfig", (Block,), {"__annotations__": {"rules": rules}, "__module__": __name__}))


# Every top-level key params.yaml may hold, and the model that reads it.
SECTIONS: dict[str, type | None] = {
    "telemetry": TelemetryConfig,
    "download": DownloadConfig,
    "profile_dataloader": ProfileConfig,
    "train_dp": TrainDPConfig,
    "train_ddp": TrainDDPConfig,
    "train_adaptive": TrainAdaptiveConfig,
    "evaluate": EvaluateConfig,
    "plot": None,  # its thresholds are the claims': load it with model=dpstudy.claims.PLOT_SECTION
}
