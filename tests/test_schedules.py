"""Learning-rate rules: batch scaling, warmup and decay, at exact points."""

import pytest

from dpstudy.train.schedules import LRSchedule, scale_lr


def test_scaling_rules_relative_to_the_reference_batch():
    assert scale_lr(0.1, "none", 512, 128) == 0.1
    assert scale_lr(0.1, "linear", 512, 128) == pytest.approx(0.4)
    assert scale_lr(0.1, "sqrt", 512, 128) == pytest.approx(0.2)
    assert scale_lr(0.1, "linear", 64, 128) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="unknown lr rule 'cubic'"):
        scale_lr(0.1, "cubic", 512, 128)


def test_warmup_ramps_from_the_reference_rate_to_the_scaled_peak():
    s = LRSchedule(base_lr=0.1, peak_lr=0.8, epochs=10, warmup_epochs=2)
    assert s.lr_at(0) == pytest.approx(0.1)
    assert s.lr_at(1) == pytest.approx(0.45)
    assert s.lr_at(2) == pytest.approx(0.8)
    assert s.lr_at(9.5) == pytest.approx(0.8)  # no decay


def test_warmup_never_ramps_down_to_a_smaller_peak():
    s = LRSchedule(base_lr=0.1, peak_lr=0.05, epochs=10, warmup_epochs=2)
    assert s.lr_at(0) == s.lr_at(1) == s.lr_at(5) == pytest.approx(0.05)


def test_step_decay_multiplies_by_gamma_at_each_milestone():
    s = LRSchedule(base_lr=0.1, peak_lr=0.1, epochs=160, decay="step", milestones=(80, 120), gamma=0.1)
    assert s.lr_at(79.99) == pytest.approx(0.1)
    assert s.lr_at(80) == pytest.approx(0.01)
    assert s.lr_at(120) == pytest.approx(0.001)


def test_cosine_decay_starts_after_warmup_and_ends_at_zero():
    s = LRSchedule(base_lr=0.1, peak_lr=0.4, epochs=10, warmup_epochs=2, decay="cosine")
    assert s.lr_at(2) == pytest.approx(0.4)
    assert s.lr_at(6) == pytest.approx(0.2)  # half way through the decay span
    assert s.lr_at(10) == pytest.approx(0.0, abs=1e-12)
    assert all(s.lr_at(t) >= s.lr_at(t + 0.5) for t in (2, 3, 4.5, 7, 9))


def test_unknown_decay_is_refused():
    with pytest.raises(ValueError, match="unknown decay 'exp'"):
        LRSchedule(base_lr=0.1, peak_lr=0.1, epochs=1, decay="exp")
