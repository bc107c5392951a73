"""Learning-rate rules: scaling with the batch size, warmup and decay.

Scaling (Goyal et al. 2017) relates the learning rate to a reference batch: with ``k = batch /
ref_batch`` the peak rate is ``lr`` (rule ``none``), ``k * lr`` (``linear``) or ``sqrt(k) * lr``
(``sqrt``).

The schedule is a pure function of training progress in epochs (fractional: epoch + step / steps
per epoch), so a resumed run only needs its position to continue exactly, and a batch size that
changes between epochs (adaptive schedules) does not disturb it:
- warmup: over the first ``warmup_epochs`` the rate rises linearly from the reference rate ``lr``
  to the scaled peak (Goyal's gradual warmup); when the peak is not above ``lr`` it starts at the
  peak, i.e. warmup only ever ramps up;
- decay after warmup: ``none``; ``step`` multiplies by ``gamma`` at each milestone epoch passed;
  ``cosine`` follows half a cosine from the peak to zero at the last epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..names import DECAYS, LR_RULES


def scale_lr(lr: float, rule: str, batch: int, ref_batch: int) -> float:
    """The peak learning rate for global ``batch`` given ``lr`` at ``ref_batch``."""
    k = batch / ref_batch
    if rule == "none":
        return lr
    if rule == "linear":
        return lr * k
    if rule == "sqrt":
        return lr * math.sqrt(k)
    raise ValueError(f"unknown lr rule {rule!r} (allowed: {', '.join(LR_RULES)})")


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float  # the reference rate (at ref_batch), where warmup starts
    peak_lr: float  # the scaled rate warmup reaches
    epochs: int
    warmup_epochs: float = 0.0
    decay: str = "none"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise ValueError(f"unknown decay {self.decay!r} (allowed: {', '.join(DECAYS)})")

    def lr_at(self, progress: float) -> float:
        """The rate at ``progress`` epochs into training (0 <= progress <= epochs)."""
        if progress < self.warmup_epochs:
            start = min(self.base_lr, self.peak_lr)
            return start + (self.peak_lr - start) * progress / self.warmup_epochs
        if self.decay == "step":
            passed = sum(1 for m in self.milestones if progress >= m)
            return self.peak_lr * self.gamma**passed
        if self.decay == "cosine":
            span = self.epochs - self.warmup_epochs
            t = min(1.0, (progress - self.warmup_epochs) / span) if span > 0 else 1.0
            return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.peak_lr


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if hasattr(group["lr"], "fill_"):  # a device tensor a CUDA graph reads (`graphstep`)
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
