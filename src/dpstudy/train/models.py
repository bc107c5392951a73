"""Networks of the studies, each built for the channel count and input size the data gives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loaders import InputSpec
from ..names import MODEL_NAMES


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) as used by Cao & Shen: two 5×5 conv + 2×2 max-pool blocks,
    then 120-84-classes fully connected layers. ReLU instead of the original tanh/sub-sampling
    (ASSUMPTION: the paper's activation is not given; ReLU is PyTorch's tutorial default).
    With a 1×32×32 input it has 61,706 parameters, the published ~61.7k.
    """

    input_size = 32

    def __init__(self, in_channels: int = 1, num_classes: int = 10, size: int = 32, width: float = 1.0):
        super().__init__()
        if width != 1:
            raise ValueError(f"LeNet-5 has a fixed width (no width knob in the published net), got {width}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = ((size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"LeNet-5 needs inputs of at least 12×12 pixels, got {size}")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class VGG16(nn.Module):
    """VGG16 (Simonyan & Zisserman 2015, configuration D) for 32×32 inputs, built from torchvision's
    own ``cfgs["D"]`` and ``make_layers``: 13 3×3 convs in 5 max-pooled blocks. With batch norm
    (VGG16-BN), since it trains from scratch with SGD at the learning rates the studies use
    (ASSUMPTION: Xue 2023 does not say). Head: the 5 pools leave a 32×32 input at 1×1, so one
    Linear(512, classes) replaces the ImageNet avgpool + 4096-wide classifier (102M parameters).
    Initialised as torchvision's VGG. ``width`` multiplies every conv channel count (same depth).
    With a 3×32×32 input and 10 classes: convolutions 14,714,688 (the published ≈14.7M),
    batch norm 8,448, head 5,130; 14,728,266 parameters in all.
    """

    input_size = 32

    def __init__(self, in_channels: int = 3, num_classes: int = 10, size: int = 32, width: float = 1.0):
        super().__init__()
        if size < 32 or size % 32:
            raise ValueError(f"VGG16 halves its input 5 times and needs a multiple of 32 pixels, got {size}")
        from torchvision.models.vgg import cfgs, make_layers  # here: torchvision takes as long to import as torch

        cfg = [v if v == "M" else _scaled(v, width) for v in cfgs["D"]]
        self.features = make_layers(cfg, batch_norm=True)
        self.features[0] = nn.Conv2d(in_channels, cfg[0], kernel_size=3, padding=1)  # make_layers assumes 3
        side = size // 32
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cfg[-2] * side * side, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """Two 3×3 conv + BN layers around a shortcut; option A (He et al. 2016, sec. 4.2) where the shape
    changes: subsample by 2 and zero-pad the new channels, so the shortcut has no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return F.relu(out + shortcut)


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR (He et al. 2016, sec. 4.2): 3×3 conv 16 + BN + ReLU, three stages of 3 basic
    blocks with 16, 32, 64 channels (stride 2 entering stages 2 and 3, option-A shortcuts), global
    average pooling, Linear(64, classes): 19 convs + 1 Linear = 20 weighted layers. Kaiming-normal
    conv and Linear weights, as the common CIFAR implementations do. ``width`` multiplies the
    16/32/64 channels. With a 3×32×32 input and 10 classes: 269,722 parameters (the published ≈0.27M).
    """

    input_size = 32

    def __init__(self, in_channels: int = 3, num_classes: int = 10, size: int = 32, width: float = 1.0):
        super().__init__()
        if size < 8:
            raise ValueError(f"ResNet-20 halves its input twice and needs at least 8×8 pixels, got {size}")
        c1, c2, c3 = (_scaled(c, width) for c in (16, 32, 64))
        blocks, prev = [], c1
        for channels, stride in ((c1, 1), (c2, 2), (c3, 2)):
            for i in range(3):
                blocks.append(_BasicBlock(prev, channels, stride if i == 0 else 1))
                prev = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            *blocks,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(c3, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class _ResBlock(nn.Module):
    """EDSR's residual block: conv-ReLU-conv without batch norm, the branch scaled before the sum
    (Lim et al. 2017 drop BN for restoration and scale residuals to keep training stable)."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.body(x)


class SRNet(nn.Module):
    """A small image-restoration network: EDSR-style residual blocks (Lim et al. 2017) on a
    VDSR-style input (Kim et al. 2016). The degraded image arrives already at the output size
    (bicubic-upsampled, `tasks.Restoration`); head conv, ``blocks`` residual blocks and a conv with
    a skip around them (EDSR), a tail conv back to image channels, plus the input itself (VDSR's
    global residual), so the network only learns the detail the interpolation lost.
    ASSUMPTION: Lee et al. train EDSR (16 blocks, 64 features, pixel-shuffle upsampling); this is
    a smaller relative that works at any resolution. ``width`` multiplies the 64 features.
    With 3 channels, width 1: 631,299 parameters. Any input size; ``num_classes`` is unused.
    """

    input_size = None  # works at the data's own resolution
    task = "restoration"
    blocks = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 0, size: int = 32, width: float = 1.0):
        super().__init__()
        if size < 2 or size % 2:
            raise ValueError(f"2x restoration needs an even image size, got {size}")
        features = _scaled(64, width)
        self.head = nn.Conv2d(in_channels, features, 3, padding=1)
        self.body = nn.Sequential(
            *[_ResBlock(features, 0.1) for _ in range(self.blocks)], nn.Conv2d(features, features, 3, padding=1)
        )
        self.tail = nn.Conv2d(features, in_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the identity: the interpolated input
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return x + self.tail(h + self.body(h))


# name -> network class. Each class knows the task it serves and the input size it is built for
# (None: the data's own size).
MODELS = {"lenet": LeNet5, "vgg16": VGG16, "resnet20": ResNet20, "srnet": SRNet}
# dpstudy.config checks params.yaml against names.MODEL_NAMES without importing torch: keep them equal.
if tuple(MODELS) != MODEL_NAMES:  # pragma: no cover - a programming error, caught at import
    raise ImportError(f"models.MODELS {tuple(MODELS)} differs from names.MODEL_NAMES {MODEL_NAMES}")


def model_task(model: str) -> str:
    return getattr(MODELS[model], "task", "classification")


def input_spec(model: str, channels: int, size: int | None = None) -> InputSpec:
    """The input a model takes for data with ``channels`` channels (images are resized to it):
    ``size`` pixels when given, else the size the network is built for."""
    size = size or MODELS[model].input_size
    if size is None:
        raise ValueError(f"{model} works at any resolution: give the input size")
    return InputSpec(channels=channels, size=size)


def build_model(model: str, channels: int, num_classes: int, width: float = 1.0, size: int | None = None) -> nn.Module:
    cls = MODELS[model]
    return cls(in_channels=channels, num_classes=num_classes, size=input_spec(model, channels, size).size, width=width)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
