"""What a configuration learns: classification (accuracy) or 2× image restoration (PSNR).

The engine's loop is the same for both. A task says how a loader batch becomes the network's
(input, target), which loss trains it, which per-image figure is summed and reported, and how the
loaders normalise images:

- classification: input = the normalised image, target = its label; cross-entropy; figure: the
  share of correct predictions (``accuracy``).
- restoration (Lee et al.'s image-regression task, EDSR/VDSR-style 2× super-resolution): the
  target is the image itself in [0, 1] (no normalisation); the input is that image downsampled
  2× by averaging 2×2 blocks and upsampled back with bicubic interpolation (VDSR's input); mean
  squared error; figure: PSNR in dB per image, ``10·log10(1 / MSE)`` over its pixels and channels,
  averaged over images. The PSNR of the interpolated input itself (``psnr_bicubic``) is reported
  beside it, the bar any restoration network has to clear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_PSNR_DB = 100.0  # a perfect reconstruction (MSE 0) counts as 100 dB instead of infinity


class Classification:
    name = "classification"
    metric = "accuracy"

    def normalisation(self, mean: list[float], std: list[float]) -> tuple[list[float], list[float]]:
        return mean, std

    def loss_fn(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def score(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Correct predictions in the batch (a device tensor: no host sync)."""
        return (out.argmax(1) == target).sum().float()

    def baseline(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        return None


class Restoration:
    name = "restoration"
    metric = "psnr"
    factor = 2

    def normalisation(self, mean: list[float], std: list[float]) -> tuple[list[float], list[float]]:
        return [0.0] * len(mean), [1.0] * len(std)  # pixels in [0, 1]: PSNR's peak is 1

    def loss_fn(self) -> nn.Module:
        return nn.MSELoss()

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return degrade(x, self.factor), x

    def score(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum of the batch's per-image PSNR (dB)."""
        return psnr(out.clamp(0, 1), target).sum()

    def baseline(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum of per-image PSNR of the network's input (interpolation alone)."""
        return psnr(x, target).sum()


def degrade(images: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Downsample by ``factor`` (mean of each factor×factor block), upsample back (bicubic)."""
    low = F.avg_pool2d(images, factor)
    return F.interpolate(low, scale_factor=factor, mode="bicubic", align_corners=False).clamp_(0, 1)


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for pixel values in [0, 1]."""
    mse = (images - targets).pow(2).flatten(1).mean(1)
    return (-10 * torch.log10(mse)).clamp(max=MAX_PSNR_DB)


TASKS = {"classification": Classification(), "restoration": Restoration()}
