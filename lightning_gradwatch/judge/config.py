"""The detection thresholds: every default once, each owned by the part of the detector that reads it.

A rule lists the fields it owns in its ``settings``; ``tests/test_detection_rules.py`` checks that every field has one
owner and that the ones ``GradWatch`` takes as arguments are among its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_gradwatch._validation import above_one, at_least_one, fraction, integer, number
from lightning_gradwatch.config import ConfigGroup, setting

__all__ = ["DetectionConfig"]


@dataclass(frozen=True)
class DetectionConfig(ConfigGroup):
    """Thresholds of the detectors. Every field has a default calibrated to stay silent on healthy training.

    Args:
        warmup_steps: steps whose statistics only build the history (no exploding or collapse verdict).
        exploding_zscore: how many standard deviations of ``log10(total norm)`` above the mean make a spike.
        exploding_min_factor: a spike is at least this many times the running (geometric) mean norm.
        exploding_patience: consecutive spikes that make an explosion (a lone spike is only counted).
        exploding_growth_steps: consecutive steps of a steady rise (each norm above the one before and above
            mean + 2 std, while the loss rises too) that make an explosion before any single step is a spike.
        exploding_threshold: optional absolute total-norm threshold; above it a step is always a spike (and
            consecutive such spikes are an explosion whatever the ceiling).
        exploding_ceiling_factor: consecutive spikes are an explosion only once the latest exceeds this many times
            the run's ceiling (the largest norm of an ordinary step so far).
        exploding_ceiling_memory: steps over which the ceiling forgets by a factor of 10 when no ordinary step
            renews it (so early-training norms do not mask explosions for ever in a long run).
        exploding_jump_factor: during the warm-up (before the history can tell a spike), a step whose norm is this
            many times the largest norm so far is an explosion: a learning rate far too high blows up from step 0.
        exploding_trend_loss_factor: an explosion by trend: the loss (median of the last 5 steps) has climbed to this
            many times its best median, and above its first value, ...
        exploding_trend_norm_factor: ... while the gradient norm (median of the last 5 steps) has grown this many
            times since the loss was at its best. The slow divergence of Adam/AdamW at a too-high learning rate,
            which may never produce a NaN.
        ema_decay: weight of the newest step in the running mean and variance (about ``1 / decay`` steps of memory).
        vanishing_ratio: a layer whose norm is below this fraction of the largest layer norm is vanishing.
        vanishing_floor: optional absolute per-layer norm below which a layer is vanishing.
        vanishing_patience: consecutive vanishing steps before an alert.
        collapse_ratio: the whole network is vanishing when the total norm falls below this fraction of its level
            just after warm-up while the loss stays above ``collapse_loss_fraction`` of its level then.
        collapse_loss_fraction: see ``collapse_ratio``.

    Example:
        >>> DetectionConfig(vanishing_patience=10).vanishing_patience
        10
        >>> DetectionConfig(exploding_zscore=-1)
        Traceback (most recent call last):
        ...
        ValueError: `exploding_zscore` must be a positive, finite number, got -1
        >>> DetectionConfig(vanishing_patience=2.5)
        Traceback (most recent call last):
        ...
        TypeError: `vanishing_patience` must be an int, got float 2.5
    """

    warmup_steps: int = setting(10, integer(minimum=0))
    exploding_zscore: float = setting(4.0, number())
    exploding_min_factor: float = setting(3.0, at_least_one)
    exploding_patience: int = setting(2, integer(minimum=1))
    exploding_growth_steps: int = setting(4, integer(minimum=2))
    exploding_threshold: float | None = setting(None, number(optional=True))
    exploding_ceiling_factor: float = setting(2.0, at_least_one, argument=False)
    exploding_ceiling_memory: int = setting(10_000, integer(minimum=1), argument=False)
    exploding_jump_factor: float = setting(10.0, above_one)
    exploding_trend_loss_factor: float = setting(3.0, above_one)
    exploding_trend_norm_factor: float = setting(3.0, above_one)
    ema_decay: float = setting(0.05, fraction, argument=False)
    vanishing_ratio: float = setting(1e-5, fraction)
    vanishing_floor: float | None = setting(None, number(optional=True))
    vanishing_patience: int = setting(50, integer(minimum=1))
    collapse_ratio: float = setting(1e-4, number(), argument=False)
    collapse_loss_fraction: float = setting(0.5, number(), argument=False)
