"""Both loaders: the sharding rule, the iteration contract, and the resident augmentation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dpstudy.data.loaders import (
    MIN_PER_RANK,
    Augment,
    InputSpec,
    ResidentLoader,
    StandardLoader,
    channel_stats,
    convert_images,
    crop_windows,
    epoch_permutation,
    make_loader,
    rank_batches,
    step_bounds,
)


def numbered_images(n: int, channels: int = 1, size: int = 8) -> torch.Tensor:
    """uint8 images whose every pixel holds the image index (mod 256): batches reveal indices."""
    return (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, channels, size, size).clone()


# ---------------------------------------------------------------------------------------------
# Sharding


@pytest.mark.parametrize(
    "n, batch, world",
    [
        (100, 8, 1),
        (100, 8, 2),
        (100, 8, 3),
        (101, 8, 4),
        (97, 10, 3),
        (10, 4, 4),
        (33, 5, 2),
        (8, 100, 2),
    ],
)
def test_every_sample_once_per_epoch_disjoint_and_equal_step_counts(n, batch, world):
    perm = epoch_permutation(n, seed=3, epoch=1)
    per_rank = [rank_batches(perm, batch, world, r) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1, "every rank must run the same number of steps"
    seen = torch.cat([torch.cat(b) for b in per_rank])
    assert sorted(seen.tolist()) == list(range(n))  # exactly once, so also disjoint
    for step in zip(*per_rank):
        sizes = [len(b) for b in step]
        assert max(sizes) - min(sizes) <= 1
        assert min(sizes) >= MIN_PER_RANK


def test_remainder_rule_keeps_or_folds_the_tail():
    assert step_bounds(20, 4, 2) == [(0, 8), (8, 16), (16, 20)]  # tail 4 = 2 per rank: kept
    assert step_bounds(19, 4, 2) == [(0, 8), (8, 19)]  # tail 3 < 2×2: folded into the last step
    assert step_bounds(5, 8, 2) == [(0, 5)]  # fewer samples than one global batch: one step
    with pytest.raises(ValueError):
        step_bounds(3, 8, 2)  # cannot give each of 2 ranks 2 samples


def test_permutation_depends_on_seed_and_epoch_only():
    a = epoch_permutation(1000, seed=7, epoch=2)
    assert torch.equal(a, epoch_permutation(1000, seed=7, epoch=2))  # what every rank draws
    assert not torch.equal(a, epoch_permutation(1000, seed=7, epoch=3))
    assert not torch.equal(a, epoch_permutation(1000, seed=8, epoch=2))
    assert sorted(a.tolist()) == list(range(1000))


@pytest.mark.parametrize("kind", ["standard", "resident"])
def test_loader_shards_cover_the_dataset_once_per_epoch(kind):
    n, world = 103, 3
    images, labels = numbered_images(n), torch.arange(n)
    epochs = {}
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            loader = make_loader(
                kind,
                images,
                labels,
                spec=InputSpec(1, 8),
                batch_size=8,
                mean=[0.0],
                std=[1.0],
                seed=5,
                rank=rank,
                world=world,
            )
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader)
            seen += [y for _, y in batches]
        labels_seen = torch.cat(seen)
        assert sorted(labels_seen.tolist()) == list(range(n))
        epochs[epoch] = labels_seen
    assert not torch.equal(epochs[0], epochs[1])  # set_epoch reshuffles


def test_both_loaders_visit_samples_in_the_same_order_on_cpu():
    n = 64
    images, labels = numbered_images(n), torch.arange(n)
    common = dict(spec=InputSpec(1, 8), batch_size=10, mean=[0.0], std=[1.0], seed=11, rank=1, world=2)
    std = StandardLoader(images, labels, **common)
    res = ResidentLoader(images, labels, **common)
    for epoch in (0, 4):
        std.set_epoch(epoch)
        res.set_epoch(epoch)
        for (xs, ys), (xr, yr) in itertools.zip_longest(std, res):
            assert torch.equal(ys, yr)
            torch.testing.assert_close(xs, xr)  # no augmentation: identical pixels too


# ---------------------------------------------------------------------------------------------
# Contract: shapes, dtypes, normalisation, conversion per model


@pytest.mark.parametrize("kind", ["standard", "resident"])
@pytest.mark.parametrize(
    "src_channels, spec", [(1, InputSpec(1, 32)), (1, InputSpec(3, 32)), (3, InputSpec(1, 16)), (3, InputSpec(3, 32))]
)
def test_batches_have_the_models_shape_and_are_normalised(kind, src_channels, spec):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, src_channels, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,))
    mean, std = channel_stats(images, spec)
    loader = make_loader(kind, images, labels, spec=spec, batch_size=40, mean=mean, std=std, shuffle=False)
    ((x, y),) = list(loader)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (40, spec.channels, spec.size, spec.size)
    assert torch.equal(y, labels)
    # Normalised with the training statistics: mean 0, std 1 per channel (PIL vs torch resize
    # differ slightly, hence the tolerance).
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_convert_images_channels_and_size():
    img = torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    rgb = convert_images(img, InputSpec(3, 16))
    assert rgb.shape == (2, 3, 16, 16) and rgb.dtype == torch.uint8 and (rgb == 200).all()
    colour = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    colour[:, 0] = 255  # pure red -> luma 0.299 * 255
    gray = convert_images(colour, InputSpec(1, 4))
    assert gray.shape == (1, 1, 4, 4) and int(gray[0, 0, 0, 0]) == round(0.299 * 255)


def test_channel_stats_match_a_direct_computation():
    torch.manual_seed(1)
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images, InputSpec(3, 8), chunk=7)
    x = images.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), x.std(dim=(0, 2, 3), unbiased=False))


# ---------------------------------------------------------------------------------------------
# Resident augmentation


def reference_crop_flip(img: torch.Tensor, pad: int, top: int, left: int, flip: bool) -> torch.Tensor:
    size = img.shape[-1]
    crop = F.pad(img, (pad, pad, pad, pad))[..., top : top + size, left : left + size]
    return crop.flip(-1) if flip else crop


def test_crop_windows_equal_explicit_crops_and_flips():
    torch.manual_seed(2)
    imgs = torch.randint(0, 256, (3, 2, 6, 6), dtype=torch.uint8)
    pad = 2
    win = crop_windows(imgs, pad, 6, hflip=True)
    assert win.shape == (2, 3, 2, 2 * pad + 1, 2 * pad + 1, 6, 6)
    for i, top, left in itertools.product(range(3), range(2 * pad + 1), range(2 * pad + 1)):
        assert torch.equal(win[0, i, :, top, left], reference_crop_flip(imgs[i], pad, top, left, False))
        # the mirror's window at 2p - left is the flipped crop at left
        assert torch.equal(win[1, i, :, top, 2 * pad - left], reference_crop_flip(imgs[i], pad, top, left, True))


def test_resident_augmentation_is_per_image_and_reproducible():
    n, size, pad = 256, 8, 2
    # A horizontal ramp: every crop offset and flip gives a distinct image.
    ramp = torch.arange(size, dtype=torch.uint8).mul(30).view(1, 1, 1, size).expand(n, 1, size, size).clone()
    labels = torch.arange(n)
    loader = ResidentLoader(
        ramp,
        labels,
        spec=InputSpec(1, size),
        batch_size=n,
        mean=[0.0],
        std=[1 / 255],
        augment=Augment(crop_padding=pad, hflip=True),
        seed=3,
    )
    ((x1, _),) = list(loader)
    variants = {tuple(row.tolist()) for row in x1[:, 0, size // 2]}
    # 5 column offsets × 2 flips = 10 distinct rows are possible; a batch-wide draw would give 1.
    assert len(variants) >= 8
    # Every output is one of the reference crops of the padded image.
    refs = {
        tuple(reference_crop_flip(ramp[0], pad, pad, left, flip)[0, size // 2].float().tolist())
        for left in range(2 * pad + 1)
        for flip in (False, True)
    }
    assert variants <= refs
    ((x2, _),) = list(loader)
    assert torch.equal(x1, x2)  # same seed and epoch -> same augmentation
    loader.set_epoch(1)
    ((x3, _),) = list(loader)
    assert not torch.equal(x1, x3)


def test_standard_loader_runs_with_worker_processes():
    n = 60
    images, labels = numbered_images(n, 3, 8), torch.arange(n)
    loader = StandardLoader(
        images,
        labels,
        spec=InputSpec(3, 8),
        batch_size=16,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        augment=Augment(crop_padding=2, hflip=True),
        num_workers=2,
    )
    for epoch in range(2):
        loader.set_epoch(epoch)
        got = torch.cat([y for _, y in loader])
        assert sorted(got.tolist()) == list(range(n))
