"""Batch-size schedules: the global batch of each epoch, and the gradient noise scale that can drive it.

Three schedules (study C):
- ``fixed``: one global batch all along (the small and the large baselines).
- ``step_growth``: the reconstruction of Lee et al. 2019 ("gradually increases the mini-batch size
  and learning rate at run time"; the exact rule is not in any copy we have). The batch is
  multiplied by ``factor`` at each epoch listed in ``at_epochs`` (or at the epochs where the
  fixed schedule decays the lr, Smith et al. 2018's pairing), never above ``max_batch``.
- ``noise_scale``: after each epoch the batch is multiplied by ``factor`` (up to ``max_batch``)
  if the smoothed gradient noise scale exceeds it (McCandlish et al. 2018: below B_noise a larger
  batch makes almost proportionally more progress per step; far above it, it only wastes work).

Batches change only at epoch boundaries, so every sample is still seen once per epoch (the
loaders re-cut the epoch's permutation with the new batch). The learning rate follows the batch
through the run's lr rule: the peak rate is ``scale_lr(lr, rule, batch, ref_batch)`` for the
epoch's batch, under the recipe's unchanged warmup/decay shape (`schedules.LRSchedule`, a function
of progress in epochs), so growing by k with the ``linear`` rule keeps lr / batch, and with it the
SGD noise temperature, where the small batch had it.

Gradient noise scale (McCandlish et al. 2018, appendix A.1): for a mean gradient over B samples,
E|G_B|² = |G|² + tr(Σ)/B, with G the true gradient and Σ the per-sample gradient covariance.
Two batch sizes b < B measured at the same step give unbiased estimates

    |G|²  ≈ (B·|G_B|² − b·|G_b|²) / (B − b)        tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)

and B_simple = tr(Σ) / |G|². Single steps are very noisy (either estimate may be negative), so
both are smoothed with an exponential moving average over steps and their ratio is taken, as the
paper recommends. Under DDP the pair comes for free: each rank's local gradient (b = B / world) and
the all-reduced one (B); in one process two micro-batches give it.
"""

from __future__ import annotations

import math

KINDS = ("fixed", "step_growth", "noise_scale")


class NoiseScaleEstimator:
    """B_simple from (|G_b|², |G_B|²) pairs, each step's estimates smoothed with weight ``ema``."""

    def __init__(self, ema: float):
        if not 0 <= ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.ema = ema
        self.grad_sq = 0.0  # EMA of |G|² estimates
        self.trace = 0.0  # EMA of tr(Σ) estimates
        self.count = 0

    def update(self, small_sq: float, big_sq: float, b_small: float, b_big: float) -> float:
        """Add one step's measurements; returns the smoothed B_simple (nan until it is defined)."""
        if not b_big > b_small > 0:
            raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
        grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
        trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
        if not (math.isfinite(grad_sq) and math.isfinite(trace)):
            return self.value
        # The EMA's start-up bias (1 - ema^t) is the same factor in both and cancels in the ratio.
        self.grad_sq = self.ema * self.grad_sq + (1 - self.ema) * grad_sq
        self.trace = self.ema * self.trace + (1 - self.ema) * trace
        self.count += 1
        return self.value

    @property
    def value(self) -> float:
        return self.trace / self.grad_sq if self.count and self.grad_sq > 0 else float("nan")

    def state_dict(self) -> dict:
        return {"grad_sq": self.grad_sq, "trace": self.trace, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.grad_sq, self.trace, self.count = state["grad_sq"], state["trace"], state["count"]


class BatchSchedule:
    """The global batch of each epoch. ``end_epoch`` must be told each epoch's final noise-scale
    estimate (nan if not measured) before ``batch_at`` is asked for the next epoch."""

    def __init__(
        self, kind: str, batch: int, *, factor: int = 1, at_epochs: tuple[int, ...] = (), max_batch: int | None = None
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown batch schedule {kind!r} (allowed: {', '.join(KINDS)})")
        if kind != "fixed" and (factor < 2 or max_batch is None or max_batch < batch):
            raise ValueError(
                f"{kind} needs factor >= 2 and max_batch >= batch ({batch}), got factor {factor}, max_batch {max_batch}"
            )
        self.kind, self.batch, self.factor = kind, batch, factor
        self.at_epochs, self.max_batch = tuple(sorted(at_epochs)), max_batch
        self.batches = [batch]  # noise_scale: the batch each epoch so far was given

    def batch_at(self, epoch: int) -> int:
        if self.kind == "fixed":
            return self.batch
        if self.kind == "step_growth":
            grown = self.batch * self.factor ** sum(1 for e in self.at_epochs if e <= epoch)
            return min(grown, self.max_batch)
        if epoch >= len(self.batches):
            raise RuntimeError(f"batch of epoch {epoch} asked before epoch {epoch - 1} ended")
        return self.batches[epoch]

    def end_epoch(self, epoch: int, noise_scale: float) -> None:
        """Decide the next epoch's batch (noise_scale only; the others are fixed in advance)."""
        if self.kind != "noise_scale":
            return
        current = self.batches[epoch]
        grow = math.isfinite(noise_scale) and noise_scale > current and current < self.max_batch
        nxt = min(current * self.factor, self.max_batch) if grow else current
        del self.batches[epoch + 1 :]
        self.batches.append(nxt)

    def state_dict(self) -> dict:
        return {"batches": list(self.batches)}

    def load_state_dict(self, state: dict) -> None:
        self.batches = list(state["batches"])
