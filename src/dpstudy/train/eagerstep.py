"""The eager training step: forward, backward and update, optionally measuring the gradient
noise scale (`batching`) on the way.

The engine calls `step_function`'s step once per optimizer step, eagerly or inside a CUDA graph
(`graphstep`); the step's outputs stay on the device so no step waits for the host.
"""

from __future__ import annotations

import torch
from torch import nn

from .parallel import GradSync


def train_step(
    model: nn.Module, optimizer, loss_fn, x: torch.Tensor, target: torch.Tensor, score=None, grad_probe=None
):
    """Forward, backward, update. Returns (loss, score(output, target) or None, grad_probe() or None):
    ``grad_probe`` runs between backward and the update, while the gradients are this step's."""
    out = model(x)
    loss = loss_fn(out, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    probed = grad_probe() if grad_probe else None
    optimizer.step()
    return loss.detach(), score(out.detach(), target) if score else None, probed


def _norm_sq(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.get_total_norm(tensors, foreach=None).pow(2)


def _grad_sq(params: list[torch.Tensor]) -> torch.Tensor:
    return _norm_sq([p.grad for p in params if p.grad is not None])


def train_step_micro_norms(model: nn.Module, optimizer, loss_fn, x, target, score):
    """One optimizer step over the batch taken as two micro-batches, accumulating their gradients
    (weighted by size, so the update is the batch's mean gradient). Returns (loss, score,
    mean |micro-batch gradient|², the micro-batches' harmonic-mean size, |batch gradient|²)."""
    n = len(x)
    h = n // 2
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    out1 = model(x[:h])
    loss1 = loss_fn(out1, target[:h])
    (loss1 * (h / n)).backward()
    first = [p.grad.detach().clone() if p.grad is not None else None for p in params]
    out2 = model(x[h:])
    loss2 = loss_fn(out2, target[h:])
    (loss2 * ((n - h) / n)).backward()
    whole = [p.grad for p in params]
    g1 = [a * (n / h) for a in first if a is not None]
    g2 = [(w - a) * (n / (n - h)) for w, a in zip(whole, first) if a is not None]
    small_sq = (_norm_sq(g1) + _norm_sq(g2)) / 2
    big_sq = _grad_sq(params)
    optimizer.step()
    loss = (loss1.detach() * h + loss2.detach() * (n - h)) / n
    return (
        loss,
        score(out1.detach(), target[:h]) + score(out2.detach(), target[h:]),
        small_sq,
        2 / (1 / h + 1 / (n - h)),
        big_sq,
    )


def step_function(model: nn.Module, optimizer, loss_fn, task, micro: bool, sync: GradSync | None, measure: bool):
    """The configuration's step ``(input, target) -> (loss, score)``; when measuring the noise
    scale ``(loss, score, |small-batch gradient|², 1/small batch, |batch gradient|²)``: from two
    micro-batches (``micro``), else from this rank's gradient, read in DDP's comm hook, and the
    averaged one."""
    if micro:

        def step(inp, target):
            loss, hits, small_sq, b_small, big_sq = train_step_micro_norms(
                model, optimizer, loss_fn, inp, target, task.score
            )
            return loss, hits, small_sq, 1 / b_small, big_sq
    elif measure:

        def step(inp, target):
            loss, hits, (small_sq, big_sq) = train_step(
                model,
                optimizer,
                loss_fn,
                inp,
                target,
                task.score,
                grad_probe=lambda: (sync.take_local_sq(), _grad_sq(list(model.parameters()))),
            )
            return loss, hits, small_sq, 1 / len(target), big_sq
    else:

        def step(inp, target):
            return train_step(model, optimizer, loss_fn, inp, target, task.score)[:2]

    return step
