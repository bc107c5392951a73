"""params.yaml loading: per-preset values, and the one-line refusals of bad input."""

from __future__ import annotations

import pytest

from conftest import REPO, write_params
from dpstudy.config import SECTIONS, load_section, read_params
from dpstudy.errors import UserError


def test_repository_params_load_for_every_preset_and_section(tmp_path):
    for preset in ("quick", "paper"):
        path = write_params(tmp_path / f"{preset}.yaml", {"preset": preset})
        for section in SECTIONS:
            got_preset, cfg = load_section(section, path)
            assert got_preset == preset
            assert cfg is not None


def test_per_preset_values_take_the_chosen_column(tmp_path):
    _, quick = load_section("profile_dataloader", write_params(tmp_path / "q.yaml", {"preset": "quick"}))
    _, paper = load_section("profile_dataloader", write_params(tmp_path / "p.yaml", {"preset": "paper"}))
    assert quick.dataset == "digits" and paper.dataset == "mnist"
    assert quick.batch_sizes == [16, 64, 256]
    assert paper.batch_sizes[-1] == 2048
    assert quick.probe.lr == paper.probe.lr == 0.01  # a plain value applies to both presets
    _, dl = load_section("download", write_params(tmp_path / "d.yaml", {"preset": "paper"}))
    assert dl.datasets == ["mnist", "cifar10"]


@pytest.mark.parametrize("key, value, expected", [
    ("profile_dataloader.batch_sizes", [16, 0], "profile_dataloader.batch_sizes[1]: must be >= 1, got 0"),
    ("profile_dataloader.num_workers", [-1], "profile_dataloader.num_workers[0]: must be >= 0, got -1"),
    ("profile_dataloader.dataset", "imagenet",
     "profile_dataloader.dataset: must be one of digits, mnist, cifar10, got 'imagenet'"),
    ("profile_dataloader.model", "resnet152", "profile_dataloader.model: must be one of lenet, vgg16, resnet20, srnet, got 'resnet152'"),
    ("profile_dataloader.probe.steps", "ten", "profile_dataloader.probe.steps: expected an integer, got str"),
    ("profile_dataloader.pin_memory", 1, "profile_dataloader.pin_memory: expected true or false, got int"),
    ("profile_dataloader.warmup_batches", True, "profile_dataloader.warmup_batches: expected an integer"),
    ("profile_dataloader.batch_sizes", {"quick": [8]}, "a per-preset value needs exactly the keys quick and paper"),
    ("profile_dataloader.batch_sizes", [], "profile_dataloader.batch_sizes: must not be empty"),
    ("profile_dataloader.batch_sizes", [8, 8], "must not repeat a value"),
    ("download.datasets", ["digits", "svhn"], "download.datasets[1]: must be one of digits, mnist, cifar10"),
    ("download.test_fraction", 1.5, "download.test_fraction: must be > 0 and < 1, got 1.5"),
    ("telemetry.interval_s", 0, "telemetry.interval_s: must be > 0, got 0.0"),
])
def test_bad_values_name_the_key_and_what_is_allowed(tmp_path, key, value, expected):
    section = key.split(".")[0]
    path = write_params(tmp_path / "params.yaml", {key: value})
    with pytest.raises(UserError) as err:
        load_section(section, path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_and_section_are_refused(tmp_path):
    path = write_params(tmp_path / "a.yaml", {"profile_dataloader.batch_size": 64})
    with pytest.raises(UserError, match=r"profile_dataloader\.batch_size: unknown key \(allowed: dataset, "):
        load_section("profile_dataloader", path)
    path = write_params(tmp_path / "b.yaml", {"profile_dataloder": {}})
    with pytest.raises(UserError, match="unknown section 'profile_dataloder'"):
        read_params(path)
    path = write_params(tmp_path / "c.yaml", {"preset": "huge"})
    with pytest.raises(UserError, match="preset must be one of quick, paper, got 'huge'"):
        read_params(path)


def test_missing_key_is_an_error_not_a_silent_default(tmp_path):
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["profile_dataloader"]["probe"]["lr"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match=r"profile_dataloader\.probe\.lr: missing"):
        load_section("profile_dataloader", path)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("preset: quick\ndownload: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        read_params(bad)
    with pytest.raises(UserError, match="no such file"):
        read_params(tmp_path / "nope.yaml")
