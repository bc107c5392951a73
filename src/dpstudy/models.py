"""Networks of the studies, each built for the channel count and input size the data gives."""

from __future__ import annotations

import torch
from torch import nn

from .loaders import InputSpec


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) as used by Cao & Shen: two 5×5 conv + 2×2 max-pool blocks,
    then 120-84-classes fully connected layers. ReLU instead of the original tanh/sub-sampling
    (ASSUMPTION: the paper's activation is not given; ReLU is PyTorch's tutorial default).
    With a 1×32×32 input it has 61,706 parameters, the published ~61.7k.
    """

    input_size = 32

    def __init__(self, in_channels: int = 1, num_classes: int = 10, size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = ((size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet-5 needs inputs of at least 12×12 pixels, got {size}")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# name -> network class (each class knows the input size it is built for)
MODELS = {"lenet": LeNet5}


def input_spec(model: str, channels: int) -> InputSpec:
    """The input a model takes for data with ``channels`` channels (images are resized to it)."""
    return InputSpec(channels=channels, size=MODELS[model].input_size)


def build_model(model: str, channels: int, num_classes: int) -> nn.Module:
    cls = MODELS[model]
    return cls(in_channels=channels, num_classes=num_classes, size=cls.input_size)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
