"""The two tasks: how a batch becomes (input, target) and what each reports."""

from __future__ import annotations

import math

import torch

from dpstudy.train.tasks import TASKS, degrade, psnr


def test_psnr_of_known_errors():
    target = torch.zeros(2, 1, 4, 4)
    noisy = target.clone()
    noisy[0] += 0.1  # MSE 0.01 -> 20 dB
    noisy[1, 0, 0, 0] = 1.0  # MSE 1/16 -> 10*log10(16) dB
    assert torch.allclose(psnr(noisy, target), torch.tensor([20.0, 10 * math.log10(16)]))
    assert psnr(target, target).tolist() == [100.0, 100.0]  # perfect: capped, not infinite


def test_degrade_keeps_flat_images_and_loses_the_finest_detail():
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(degrade(flat), flat)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]).remainder(2).float().view(1, 1, 8, 8)
    assert torch.allclose(degrade(checker), torch.full_like(checker, 0.5))  # every 2x2 block averages 0.5


def test_restoration_pairs_a_degraded_input_with_the_clean_image_and_scores_psnr():
    task = TASKS["restoration"]
    x = torch.rand(3, 1, 8, 8)
    inp, target = task.pair(x, torch.zeros(3, dtype=torch.long))
    assert target is x and inp.shape == x.shape and not torch.equal(inp, x)
    assert task.score(x, x).item() == 300.0  # three perfect images at the 100 dB cap
    assert task.baseline(inp, target).item() == psnr(inp, target).sum().item()
    assert task.normalisation([0.3], [0.2]) == ([0.0], [1.0])


def test_classification_scores_correct_predictions():
    task = TASKS["classification"]
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert task.score(logits, torch.tensor([0, 1, 1])).item() == 2.0
    assert task.baseline(logits, torch.tensor([0, 1, 1])) is None
