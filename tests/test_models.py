"""Networks against their published sizes, on the inputs the loaders give them."""

import pytest
import torch
from torch import nn

from dpstudy.train.models import VGG16, build_model, count_parameters, input_spec


def test_lenet5_has_the_published_61_7k_parameters_on_1x32x32():
    model = build_model("lenet", channels=1, num_classes=10)
    assert count_parameters(model) == 61_706
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_lenet_takes_the_channel_count_the_data_gives():
    spec = input_spec("lenet", channels=3)
    assert (spec.channels, spec.size) == (3, 32)
    model = build_model("lenet", channels=3, num_classes=10)
    assert count_parameters(model) == 61_706 + 2 * 6 * 25  # two more input planes in conv1
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def params_of(model, kind):
    return sum(p.numel() for m in model.modules() if isinstance(m, kind) for p in m.parameters(recurse=False))


def test_vgg16_has_the_published_14_7m_conv_parameters_and_a_one_layer_head():
    model = build_model("vgg16", channels=3, num_classes=10)
    assert params_of(model, nn.Conv2d) == 14_714_688
    assert params_of(model, nn.BatchNorm2d) == 8_448
    assert params_of(model, nn.Linear) == 512 * 10 + 10
    assert count_parameters(model) == 14_728_266
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_vgg16_takes_one_channel_in_its_first_conv():
    model = build_model("vgg16", channels=1, num_classes=10)
    assert count_parameters(model) == 14_728_266 - (64 * 3 * 9 + 64) + (64 * 1 * 9 + 64)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_narrow_vgg16_keeps_the_layer_pattern():
    model = build_model("vgg16", channels=3, num_classes=10, width=0.125)
    assert count_parameters(model) < 14_728_266
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_has_the_published_0_27m_parameters_in_20_weighted_layers():
    model = build_model("resnet20", channels=3, num_classes=10)
    assert count_parameters(model) == 269_722
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 19
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_sizes_and_widths_the_networks_cannot_take_are_refused():
    with pytest.raises(ValueError, match="fixed width"):
        build_model("lenet", channels=1, num_classes=10, width=0.5)
    with pytest.raises(ValueError):
        VGG16(size=28)


def test_srnet_counts_starts_as_the_identity_and_keeps_any_even_size():
    from dpstudy.train.models import model_task

    model = build_model("srnet", channels=3, num_classes=0, size=32)
    assert count_parameters(model) == 631_299
    assert model_task("srnet") == "restoration" and model_task("resnet20") == "classification"
    x = torch.rand(2, 1, 8, 8)
    small = build_model("srnet", channels=1, num_classes=0, width=0.5, size=8)
    assert torch.equal(small(x), x)  # zero-initialised tail: the interpolated input passes through
    with pytest.raises(ValueError, match="even image size"):
        build_model("srnet", channels=1, num_classes=0, size=7)
    with pytest.raises(ValueError, match="give the input size"):
        input_spec("srnet", channels=1)
