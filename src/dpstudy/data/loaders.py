"""Two data loaders with one contract: the standard `DataLoader` the papers measured, and a
device-resident loader that removes the data-loading bottleneck instead of adding workers.

Contract (both): iterating yields ``(images, labels)`` already on the target device, images
``float32 (b, C, S, S)`` normalised, labels ``int64 (b,)``; ``len()`` is the number of steps per
epoch; ``set_epoch(e)`` selects the epoch's permutation (call it every epoch, as with
``DistributedSampler``); ``set_batch(b)`` changes the per-rank batch from the next epoch on
(adaptive batch schedules; the epoch's permutation is simply cut into larger steps).

Sharding rule for DDP (both loaders, `step_bounds`): every epoch one permutation of the N training
indices is drawn from ``(seed, epoch)`` alone, so every rank draws the same one. Global step k
covers ``perm[k*B:(k+1)*B]`` with ``B = world * per_rank_batch``, and rank r takes every W-th
index of that slice starting at r. A final partial step is kept when it gives every rank at least
``MIN_PER_RANK`` samples (BatchNorm needs two); a shorter tail is folded into the step before it.
So each sample is seen exactly once per epoch across ranks, ranks are disjoint, every rank runs
the same number of steps (no DDP hang on uneven shards), and per-rank batches in a step differ by
at most one sample.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..names import LOADER_NAMES

# torchvision (as long to import as torch itself) is imported by the standard loader's functions
# only: the resident loader, evaluation and `dpstudy launch`'s checks never need it.

MIN_PER_RANK = 2
# ITU-R 601-2 luma weights, the ones PIL's convert("L") uses, so both loaders agree.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: channel count and square image size."""

    channels: int
    size: int


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random crop after zero padding, random horizontal flip."""

    crop_padding: int = 0
    hflip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip


# --------------------------------------------------------------------------------------------
# Sharding (shared by both loaders)


def step_bounds(n: int, per_rank_batch: int, world: int = 1) -> list[tuple[int, int]]:
    """``[start, end)`` of each global step over an epoch's permuted indices (see module doc)."""
    if per_rank_batch < 1 or world < 1:
        raise ValueError(f"per-rank batch and world size must be >= 1, got {per_rank_batch}, {world}")
    if n < MIN_PER_RANK * world:
        raise ValueError(f"{n} samples cannot give each of {world} ranks {MIN_PER_RANK} samples")
    step = per_rank_batch * world
    full, tail = divmod(n, step)
    bounds = [(i * step, (i + 1) * step) for i in range(full)]
    if tail:
        if tail >= MIN_PER_RANK * world or not bounds:
            bounds.append((full * step, n))
        else:
            bounds[-1] = (bounds[-1][0], n)
    return bounds


def epoch_seed(seed: int, epoch: int) -> int:
    # Same rule as DistributedSampler: every rank derives the epoch's permutation from seed+epoch.
    return seed + epoch


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The epoch's permutation of range(n), drawn on ``device`` from (seed, epoch) alone."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=gen, device=device)


def rank_batches(perm: torch.Tensor, per_rank_batch: int, world: int, rank: int) -> list[torch.Tensor]:
    """This rank's index batches for one epoch, given the epoch's permutation."""
    return [perm[a:b][rank::world] for a, b in step_bounds(len(perm), per_rank_batch, world)]


# --------------------------------------------------------------------------------------------
# Image preparation shared by both loaders


def convert_images(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, spec.channels, spec.size, spec.size), done once."""
    x = images
    c = x.shape[1]
    if c != spec.channels:
        if c == 1 and spec.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and spec.channels == 1:
            w = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        else:
            raise ValueError(f"cannot convert {c} channels to {spec.channels}")
    if x.shape[-1] != spec.size or x.shape[-2] != spec.size:
        x = F.interpolate(x.float(), size=(spec.size, spec.size), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.contiguous()


def channel_stats(images: torch.Tensor, spec: InputSpec, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of the training images as the model sees them."""
    total = torch.zeros(spec.channels, dtype=torch.float64)
    total_sq = torch.zeros(spec.channels, dtype=torch.float64)
    count = 0
    for start in range(0, len(images), chunk):
        x = convert_images(images[start : start + chunk], spec).to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.numel() // spec.channels
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


# --------------------------------------------------------------------------------------------
# Standard loader: map-style dataset + torchvision PIL transforms + DataLoader workers


class _PILImages(Dataset):
    """Each item decoded to a PIL image and transformed on its own, as the papers' code does.

    Items are asked for as ``(index, epoch)``. An item's random crop and flip come from a
    generator seeded by (seed, epoch, index) alone, so they do not depend on which worker process
    serves it or on how long the loader has lived: a run resumed at epoch e sees exactly the
    images an uninterrupted run sees (the workers' own RNG streams would not give that).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, prepare, augment: Augment | None, finish, seed: int):
        arr = images.cpu().numpy()
        # PIL wants HWC for RGB and HW for grayscale.
        self._arr = arr[:, 0] if arr.shape[1] == 1 else np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
        self._labels = labels.cpu()
        self._prepare, self._finish, self._seed = prepare, finish, seed
        self._augment = augment if augment and augment.active else None

    def __len__(self) -> int:
        return len(self._arr)

    def __getitem__(self, key: tuple[int, int]):
        i, epoch = key
        image = self._prepare(Image.fromarray(self._arr[i]))
        if self._augment:
            image = _crop_flip(image, self._augment, random.Random(epoch_seed(self._seed, epoch) * 1_000_003 + i))
        return self._finish(image), self._labels[i]


def _crop_flip(image: Image.Image, augment: Augment, rng: random.Random) -> Image.Image:
    """torchvision's RandomCrop(size, padding) + RandomHorizontalFlip, drawn from ``rng``."""
    from torchvision.transforms import functional as TF

    if augment.crop_padding:
        p = augment.crop_padding
        w, h = image.size
        image = TF.pad(image, [p])
        image = TF.crop(image, rng.randint(0, 2 * p), rng.randint(0, 2 * p), h, w)
    if augment.hflip and rng.random() < 0.5:
        image = TF.hflip(image)
    return image


class _ShardBatchSampler:
    """Yields this rank's index batches per `step_bounds`; the epoch is set from outside."""

    def __init__(self, n: int, per_rank_batch: int, world: int, rank: int, seed: int, shuffle: bool):
        self.n, self.batch, self.world, self.rank = n, per_rank_batch, world, rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self._steps = len(step_bounds(n, per_rank_batch, world))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_batch(self, per_rank_batch: int) -> None:
        self._steps = len(step_bounds(self.n, per_rank_batch, self.world))
        self.batch = per_rank_batch

    def __len__(self) -> int:
        return self._steps

    def __iter__(self):
        perm = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        for idx in rank_batches(perm, self.batch, self.world, self.rank):
            yield [(i, self.epoch) for i in idx.tolist()]


def pil_transforms(source_channels: int, source_size: int, spec: InputSpec, mean: list[float], std: list[float]):
    """(prepare, finish): resize and channel conversion before augmentation; tensor and
    normalisation after it."""
    from torchvision import transforms

    steps = []
    if source_size != spec.size:
        steps.append(transforms.Resize((spec.size, spec.size), antialias=True))
    if source_channels != spec.channels:
        steps.append(
            transforms.Grayscale(num_output_channels=spec.channels)
            if spec.channels == 1
            else transforms.Lambda(lambda im: im.convert("RGB"))
        )
    return transforms.Compose(steps), transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


class StandardLoader:
    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        spec: InputSpec,
        batch_size: int,
        mean: list[float],
        std: list[float],
        augment: Augment | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        prepare, finish = pil_transforms(images.shape[1], images.shape[-1], spec, mean, std)
        self.sampler = _ShardBatchSampler(len(images), batch_size, world, rank, seed, shuffle)
        self._loader = DataLoader(
            _PILImages(images, labels, prepare, augment, finish, seed),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory and self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_batch(self, per_rank_batch: int) -> None:
        # The DataLoader asks its batch sampler afresh at every iter(), persistent workers too.
        self.sampler.set_batch(per_rank_batch)

    def __iter__(self):
        non_blocking = self.device.type == "cuda"
        for x, y in self._loader:
            yield x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)


# --------------------------------------------------------------------------------------------
# Resident loader: the whole uint8 dataset on the device, batch-wise augmentation there


def crop_windows(images: torch.Tensor, pad: int, size: int, hflip: bool) -> torch.Tensor:
    """Every ``size``×``size`` crop of every zero-padded image (and of its mirror image when
    ``hflip``), as a view ``(F, N, C, 2p+1, 2p+1, size, size)`` with F = 2 or 1: no copy.

    The mirror is stored once (twice the uint8 memory) so that a flipped crop is just another
    window: flip(crop(P, left)) == crop(flip(P), 2p - left).
    """
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    stacked = torch.stack([padded, padded.flip(-1)]) if hflip else padded.unsqueeze(0)
    return stacked.unfold(3, size, 1).unfold(4, size, 1)


class ResidentLoader:
    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        spec: InputSpec,
        batch_size: int,
        mean: list[float],
        std: list[float],
        augment: Augment | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        self.spec, self.batch, self.world, self.rank = spec, batch_size, world, rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.augment = augment if augment and augment.active else None
        x = convert_images(images.to(self.device), spec)
        self.pad = self.augment.crop_padding if self.augment else 0
        # Padding (zeros, like RandomCrop's default fill) and mirroring are done once here; a
        # batch is then a single indexing op that picks each image's flip, offset and pixels.
        self.windows = crop_windows(x, self.pad, spec.size, bool(self.augment and self.augment.hflip))
        self.labels = labels.to(self.device)
        std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        # Normalisation fused with the uint8 -> float conversion: x*scale + shift in one op.
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t
        self._steps = len(step_bounds(len(self.labels), batch_size, world))

    def __len__(self) -> int:
        return self._steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_batch(self, per_rank_batch: int) -> None:
        self._steps = len(step_bounds(len(self.labels), per_rank_batch, self.world))
        self.batch = per_rank_batch

    def __iter__(self):
        for plan in self.plans():
            yield self.gather(plan)

    def plans(self):
        """This epoch's batches for this rank as plans: ``(4, b)`` int64 tensors on the device whose
        rows are each sample's index, mirror flag, crop top and crop left. `gather` turns a plan into
        the batch; iterating the loader does both. A CUDA-graph step (`graphstep`) copies the plan
        into its static input and gathers inside the graph, so the batch is part of the step.

        The epoch's augmentation is drawn in one go, per position of the permutation, from a
        generator of its own (the global RNG is not disturbed), with the rank mixed into its seed
        so ranks do not share crop offsets."""
        n = len(self.labels)
        if self.shuffle:
            perm = epoch_permutation(n, self.seed, self.epoch, self.device)
        else:
            perm = torch.arange(n, device=self.device)
        table = torch.zeros(4, n, dtype=torch.long, device=self.device)
        table[0] = perm
        if self.augment:
            gen = torch.Generator(device=self.device).manual_seed(
                (epoch_seed(self.seed, self.epoch) * 1_000_003 + self.rank) % (2**63)
            )
            span = 2 * self.pad + 1
            top = torch.randint(0, span, (n,), generator=gen, device=self.device)
            left = torch.randint(0, span, (n,), generator=gen, device=self.device)
            if self.augment.hflip:
                table[1] = torch.randint(0, 2, (n,), generator=gen, device=self.device)
                left = torch.where(table[1].bool(), span - 1 - left, left)  # the mirror's window
            table[2], table[3] = top, left
        for a, b in step_bounds(n, self.batch, self.world):
            yield table[:, a:b][:, self.rank :: self.world]

    def gather(self, plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch a plan describes: normalised float images and their labels."""
        idx, flip, top, left = plan
        x = self.windows[flip, idx, :, top, left]
        return torch.addcmul(self._shift, x.float(), self._scale), self.labels[idx]


LOADERS = LOADER_NAMES  # make_loader below builds each; names.py lets dpstudy.config check them torch-free


def make_loader(
    kind: str, images: torch.Tensor, labels: torch.Tensor, *, num_workers: int = 0, pin_memory: bool = False, **common
):
    """Build either loader with the shared arguments; worker settings apply to `standard` only."""
    if kind == "standard":
        return StandardLoader(images, labels, num_workers=num_workers, pin_memory=pin_memory, **common)
    if kind == "resident":
        return ResidentLoader(images, labels, **common)
    raise ValueError(f"unknown loader {kind!r} (allowed: {', '.join(LOADERS)})")
