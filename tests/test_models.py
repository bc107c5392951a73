"""Networks against their published sizes, on the inputs the loaders give them."""

import torch

from dpstudy.models import build_model, count_parameters, input_spec


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
