"""params.yaml loading: per-preset values, and the one-line refusals of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, load, write_params

from dpstudy.config import SECTIONS, read_params
from dpstudy.errors import UserError


def test_repository_params_load_for_every_preset_and_section(tmp_path):
    for preset in ("quick", "gpu", "paper"):
        path = write_params(tmp_path / f"{preset}.yaml", {"preset": preset})
        for section in SECTIONS:
            got_preset, cfg = load(section, path)
            assert got_preset == preset
            assert cfg is not None


def test_per_preset_values_take_the_chosen_column(tmp_path):
    _, quick = load("profile_dataloader", write_params(tmp_path / "q.yaml", {"preset": "quick"}))
    _, paper = load("profile_dataloader", write_params(tmp_path / "p.yaml", {"preset": "paper"}))
    assert quick.dataset == "digits" and paper.dataset == "mnist"
    assert quick.batch_sizes == [16, 64, 256]
    assert paper.batch_sizes[-1] == 2048
    assert quick.probe.lr == paper.probe.lr == 0.01  # a plain value applies to both presets
    _, dl = load("download", write_params(tmp_path / "d.yaml", {"preset": "paper"}))
    assert dl.datasets == ["mnist", "cifar10"]


def test_the_gpu_preset_is_real_data_every_grid_and_graph_steps_where_one_process_trains(tmp_path):
    path = write_params(tmp_path / "g.yaml", {"preset": "gpu"})
    cfg = {name: load(name, path)[1] for name in SECTIONS}
    assert cfg["download"].datasets == ["mnist", "cifar10"] and cfg["download"].upstream_split == "full"
    dp, ddp, adaptive = cfg["train_dp"], cfg["train_ddp"], cfg["train_adaptive"]
    assert [
        dp.lenet_utilization.dataset,
        dp.vgg.dataset,
        ddp.vgg.dataset,
        adaptive.classification.dataset,
        adaptive.restoration.dataset,
    ] == ["mnist", "cifar10", "cifar10", "cifar10", "cifar10"]
    assert dp.vgg.width == ddp.vgg.width == adaptive.classification.width == 1.0  # the papers' networks
    # graph steps only where one process trains on one GPU (refused elsewhere), eager where DP/DDP span GPUs
    assert dp.lenet_lr_scaling.modes == ["single"] and dp.lenet_lr_scaling.recipe.step == "graph"
    assert adaptive.nproc_per_node == 1 and {adaptive.classification.recipe.step, adaptive.restoration.recipe.step} == {
        "graph"
    }
    assert dp.lenet_utilization.recipe.step == dp.vgg.recipe.step == ddp.vgg.recipe.step == "eager"
    assert cfg["profile_dataloader"].probe.step == ["eager", "graph"] and cfg["profile_dataloader"].probe.repeats >= 2
    assert cfg["profile_dataloader"].probe.min_seconds > 1.0  # longer than NVML's averaging period
    assert len(dp.seeds) == len(ddp.seeds) == len(adaptive.seeds) == 3  # an interval behind every claim
    # accuracy claims need training that reaches something: ResNet-20 past both lr decays
    r = adaptive.classification.recipe
    assert r.epochs >= 10 and r.milestones == [r.epochs // 2, 3 * r.epochs // 4]


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("profile_dataloader.batch_sizes", [16, 0], "profile_dataloader.batch_sizes[1]: must be >= 1, got 0"),
        ("profile_dataloader.num_workers", [-1], "profile_dataloader.num_workers[0]: must be >= 0, got -1"),
        (
            "profile_dataloader.dataset",
            "imagenet",
            "profile_dataloader.dataset: must be one of digits, mnist, cifar10, got 'imagenet'",
        ),
        (
            "profile_dataloader.model",
            "resnet152",
            "profile_dataloader.model: must be one of lenet, vgg16, resnet20, srnet, got 'resnet152'",
        ),
        ("profile_dataloader.probe.steps", "ten", "profile_dataloader.probe.steps: expected an integer, got str"),
        ("profile_dataloader.pin_memory", 1, "profile_dataloader.pin_memory: expected true or false, got int"),
        ("profile_dataloader.warmup_batches", True, "profile_dataloader.warmup_batches: expected an integer"),
        (
            "profile_dataloader.batch_sizes",
            {"quick": [8]},
            "a per-preset value needs exactly the keys quick, gpu and paper",
        ),
        ("profile_dataloader.batch_sizes", [], "profile_dataloader.batch_sizes: must not be empty"),
        ("profile_dataloader.batch_sizes", [8, 8], "must not repeat a value"),
        ("download.datasets", ["digits", "svhn"], "download.datasets[1]: must be one of digits, mnist, cifar10"),
        ("download.test_fraction", 1.5, "download.test_fraction: must be > 0 and < 1, got 1.5"),
        ("telemetry.interval_s", 0, "telemetry.interval_s: must be > 0, got 0.0"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, key, value, expected):
    section = key.split(".")[0]
    path = write_params(tmp_path / "params.yaml", {key: value})
    with pytest.raises(UserError) as err:
        load(section, path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_and_section_are_refused(tmp_path):
    path = write_params(tmp_path / "a.yaml", {"profile_dataloader.batch_size": 64})
    with pytest.raises(UserError, match=r"profile_dataloader\.batch_size: unknown key \(allowed: dataset, "):
        load("profile_dataloader", path)
    path = write_params(tmp_path / "b.yaml", {"profile_dataloder": {}})
    with pytest.raises(UserError, match="unknown section 'profile_dataloder'"):
        read_params(path)
    path = write_params(tmp_path / "c.yaml", {"preset": "huge"})
    with pytest.raises(UserError, match="preset must be one of quick, gpu, paper, got 'huge'"):
        read_params(path)


def test_missing_key_is_an_error_not_a_silent_default(tmp_path):
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["profile_dataloader"]["probe"]["lr"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match=r"profile_dataloader\.probe\.lr: missing"):
        load("profile_dataloader", path)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("preset: quick\ndownload: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        read_params(bad)
    with pytest.raises(UserError, match="no such file"):
        read_params(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------------
# Non-finite floats, duplicate keys, YAML 1.2 exponents, and a torch-free import (issue 12)


def repo_text_with(tmp_path, old: str, new: str, after: str, name: str = "params.yaml") -> tuple[Path, int]:
    """The repository's params.yaml text with the first line ``old`` after the line starting with
    ``after`` replaced by ``new`` (one or more lines); returns the file and that line's number."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    at = next(i for i in range(start, len(lines)) if lines[i] == old)
    lines[at : at + 1] = new.split("\n")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path, at + 1


RECIPE_LR = "train_dp.lenet_lr_scaling.recipe.lr"


@pytest.mark.parametrize(
    "value, shown",
    [
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (float("nan"), "nan"),
        (10**400, "inf"),
    ],
)
def test_float_settings_must_be_finite(tmp_path, value, shown):
    path = write_params(tmp_path / "params.yaml", {RECIPE_LR: value})
    with pytest.raises(UserError) as err:
        load("train_dp", path)
    assert str(err.value) == f"params.yaml: {RECIPE_LR}: must be a finite number, got {shown}"
    # A per-preset column and a list item are checked the same way.
    path = write_params(
        tmp_path / "p.yaml", {"train_dp.vgg.recipe.lr": {"quick": 0.02, "gpu": 0.05, "paper": value}, "preset": "paper"}
    )
    with pytest.raises(UserError, match=f"p.yaml: train_dp.vgg.recipe.lr: must be a finite number, got {shown}"):
        load("train_dp", path)
    path = write_params(tmp_path / "m.yaml", {"train_dp.vgg.recipe.milestones": [1.0, value]})
    with pytest.raises(UserError, match=r"train_dp\.vgg\.recipe\.milestones\[1\]: must be a finite number"):
        load("train_dp", path)


def test_exponent_without_dot_overflowing_to_infinity_is_refused(tmp_path):
    path, _ = repo_text_with(tmp_path, "      lr: 0.01", "      lr: 1e999", after="  lenet_lr_scaling:")
    with pytest.raises(UserError, match=f"params.yaml: {RECIPE_LR}: must be a finite number, got inf"):
        load("train_dp", path)


def test_duplicate_key_names_file_line_and_key(tmp_path):
    path, line = repo_text_with(
        tmp_path, "      lr: 0.01", "      lr: 0.01\n      lr: 0.5", after="  lenet_lr_scaling:"
    )
    for section in ("train_dp", "telemetry"):  # any section: the whole file is refused
        with pytest.raises(UserError) as err:
            load(section, path)
        assert str(err.value) == f"{path} line {line + 1}: duplicate key 'lr' (each key may appear once in a mapping)"

    # A repeated section at the top level, too.
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "top.yaml"
    path.write_text(text + "preset: paper\n")
    with pytest.raises(UserError, match=rf"top\.yaml line {len(text.splitlines()) + 1}: duplicate key 'preset'"):
        read_params(path)


def test_merge_keys_may_be_overridden_without_being_duplicates():
    from dpstudy.config import load_yaml

    data = load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert data["other"] == {"x": 3, "y": 2}


def test_exponent_without_dot_is_a_number(tmp_path):
    path, _ = repo_text_with(tmp_path, "      lr: 0.01", "      lr: 1e-2", after="  lenet_lr_scaling:")
    _, cfg = load("train_dp", path)
    assert cfg.lenet_lr_scaling.recipe.lr == 0.01


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1e-2", 0.01),
        ("1E5", 100000.0),
        ("-3e+4", -30000.0),
        ("+2.5e-3", 0.0025),
        ("7.e1", 70.0),
        (".5e1", 5.0),
        ("-.5", -0.5),
        ("0.01", 0.01),
        ("1.0e+5", 100000.0),
        ("12", 12),
        ("0", 0),  # integers stay integers
        ("'1e-2'", "1e-2"),
        ('"1E5"', "1E5"),  # quoted: a string, as written
        ("1e", "1e"),
        ("e5", "e5"),
        ("1e-2x", "1e-2x"),
        ("1e2.5", "1e2.5"),
        ("1.2.3e4", "1.2.3e4"),
        ("-e3", "-e3"),
        ("1e-", "1e-"),
        ("host-1e3", "host-1e3"),
        ("1 e3", "1 e3"),
    ],
)
def test_yaml_numbers_follow_yaml_1_2_and_other_text_stays_a_string(text, expected):
    from dpstudy.config import load_yaml

    value = load_yaml(f"v: {text}\n")["v"]
    assert value == expected and type(value) is type(expected)


def test_importing_config_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import dpstudy.config, sys; "
        "print([m for m in ('torch', 'torchvision', 'mlflow', 'matplotlib', 'numpy') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_config_names_are_the_names_the_owning_modules_implement():
    from dpstudy import config, names
    from dpstudy.data import datasets, loaders
    from dpstudy.train import models

    assert tuple(models.MODELS) == names.MODEL_NAMES == typing_args(config.Model)
    assert datasets.DATASETS == names.DATASET_NAMES == typing_args(config.Dataset)
    assert loaders.LOADERS == names.LOADER_NAMES == typing_args(config.Loader)
    # ... and each name params.yaml may give is one make_loader builds.
    import torch

    images, labels = torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.arange(8)
    for kind in names.LOADER_NAMES:
        loader = loaders.make_loader(
            kind, images, labels, spec=loaders.InputSpec(1, 8), batch_size=4, mean=[0.0], std=[1.0], seed=0
        )
        assert len(list(loader)) == 2


def typing_args(hint) -> tuple:
    import typing

    return typing.get_args(hint)


# --------------------------------------------------------------------------------------------
# The pydantic models (issue 23): which error is named, the `kind or name` fields, and the models as
# the dataclasses the rest of the code builds, replaces and pickles


@pytest.mark.parametrize(
    "overrides, section, named",
    [
        # two bad values: the first in file order is named, as a person reads the file
        ({"download.datasets": ["svhn"], "download.timeout_s": -1}, "download", "download.datasets[0]:"),
        # an unknown key comes before the block's fields
        (
            {"train_dp.vgg.recipe.lr": -1, "train_dp.vgg.recipe.lrr": 0.1},
            "train_dp",
            "train_dp.vgg.recipe.lrr: unknown key",
        ),
        # an unknown key inside the chosen column of a per-preset block
        (
            {"train_dp.vgg.recipe.augment": {"quick": {"crop_padding": 2, "flip": True}, "gpu": {}, "paper": {}}},
            "train_dp",
            "train_dp.vgg.recipe.augment.flip: unknown key",
        ),
        (
            {"evaluate": {1: "cpu", "device": "cpu"}},
            "evaluate",
            "evaluate.1: unknown key",
        ),  # a key YAML reads as a number
        ({"train_dp.vgg.recipe": None}, "train_dp", "train_dp.vgg.recipe: expected a mapping"),
        ({"evaluate": ["cpu"]}, "evaluate", "params.yaml: evaluate: expected a mapping"),
    ],
)
def test_the_first_error_in_file_order_is_the_one_named(tmp_path, overrides, section, named):
    path = write_params(tmp_path / "params.yaml", overrides)
    with pytest.raises(UserError) as err:
        load(section, path)
    assert named in str(err.value)


@pytest.mark.parametrize(
    "key, value, named, allowed",
    [
        ("train_ddp.nproc_per_node", "gpus", "train_ddp.nproc_per_node:", "gpu"),
        ("train_ddp.nproc_per_node", 0, "train_ddp.nproc_per_node:", ">= 1"),  # a number says its range
        ("train_ddp.nproc_per_node", True, "train_ddp.nproc_per_node:", "gpu"),
        (
            "train_adaptive.restoration.schedules.step_growth.at_epochs",
            [2, 0],
            "train_adaptive.restoration.schedules.step_growth.at_epochs[1]:",
            ">= 1",
        ),
        (
            "train_adaptive.restoration.schedules.step_growth.at_epochs",
            [2, 2],
            "train_adaptive.restoration.schedules.step_growth.at_epochs:",
            "[2, 2]",
        ),
        (
            "train_adaptive.restoration.schedules.step_growth.at_epochs",
            "milestone",
            "train_adaptive.restoration.schedules.step_growth.at_epochs:",
            "milestones",
        ),
    ],
)
def test_a_number_or_a_name_field_refuses_naming_the_key_and_the_choices(tmp_path, key, value, named, allowed):
    path = write_params(tmp_path / "params.yaml", {key: value})
    with pytest.raises(UserError) as err:
        load(key.split(".")[0], path)
    assert str(err.value).startswith(f"params.yaml: {named}") and allowed in str(err.value)


def test_the_name_alternatives_are_accepted(tmp_path):
    path = write_params(
        tmp_path / "params.yaml",
        {
            "train_ddp.nproc_per_node": "gpu",
            "train_adaptive.classification.schedules.step_growth.at_epochs": "milestones",
        },
    )
    assert load("train_ddp", path)[1].nproc_per_node == "gpu"
    assert load("train_adaptive", path)[1].classification.schedules.step_growth.at_epochs == "milestones"


def test_models_are_dataclasses_that_replace_pickle_and_check_what_they_are_built_from():
    import dataclasses
    import pickle

    from pydantic import ValidationError

    from dpstudy.config import as_dict

    _, cfg = load("train_adaptive", REPO / "params.yaml")
    recipe = cfg.classification.recipe
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # configurations travel to worker processes
    assert dataclasses.replace(recipe, epochs=3).epochs == 3
    assert as_dict(cfg)["classification"]["recipe"]["epochs"] == recipe.epochs
    assert isinstance(recipe.warmup_epochs, float)  # a whole number in a float setting is a float
    with pytest.raises(ValidationError):
        dataclasses.replace(recipe, epochs=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.epochs = 3
