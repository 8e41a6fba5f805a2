"""Clipping policy: a step's clip threshold, fixed or learnt from the run's own gradient-norm history.

Plain Python over floats. Deciding and scaling are separate, as in ``torch.nn.utils.clip_grad``: this module turns a
step's total norm (already on the host, from the step's one statistics transfer) into a threshold and a coefficient;
the actor (:mod:`lightning_gradwatch.act`) multiplies the gradients in place on their device.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from lightning_gradwatch._validation import check_int, check_number
from lightning_gradwatch.config import ClipConfig
from lightning_gradwatch.history import SortedWindow, pow10_or_inf

__all__ = ["LOW_QUANTILE", "TYPICAL_QUANTILE", "AdaptiveClipThreshold", "clip_coefficient"]

_EPS = 1e-6  # torch's clip_grad_norm_ divides by total_norm + 1e-6
#: the quantile of the window's log norms taken as the typical level (outliers, always high, do not reach it until
#: they fill three quarters of the window)
TYPICAL_QUANTILE = 0.25
#: the spread is the distance from this quantile up to the typical level
LOW_QUANTILE = 0.05


def clip_coefficient(total_norm: float, max_norm: float) -> float:
    """The factor that brings ``total_norm`` down to ``max_norm`` (1.0 when it is already below).

    Matches ``torch.nn.utils.clip_grad_norm_``: ``max_norm / (total_norm + 1e-6)``, clamped to at most 1.

    Example:
        >>> clip_coefficient(10.0, 1.0)
        0.09999999000000101
        >>> clip_coefficient(0.5, 1.0)
        1.0
    """
    if not math.isfinite(total_norm) or total_norm <= max_norm:
        return 1.0
    return min(1.0, max_norm / (total_norm + _EPS))


class AdaptiveClipThreshold:
    """A clipping threshold learned from the run's own total-norm history, robust to frequent outliers.

    The rule works on ``log10(total norm)`` over a window of the last ``window`` steps, every finite step included.
    Its *typical* level is the window's 25th percentile and its *spread* the distance from the 5th to the 25th
    percentile: both come from the lower part of the distribution, which outliers (always high) do not reach until
    they fill three quarters of the window. A step is an outlier when its norm exceeds
    ``10 ** (typical + zscore * max(spread, min_spread))``; an outlier is scaled down to the typical norm (not merely
    to the threshold: an outlier's direction is mostly the outlier's, so the less of it the better), and an ordinary
    step is not touched. Clipping starts at the second step: during the first ``warmup_steps`` steps the margin
    above the typical level is at least ``warmup_margin`` decades (only gross outliers are clipped while the history
    is short). A lasting change of scale is followed once it fills three quarters of the window. ``max_norm``, when
    given, is a fixed cap that applies on every step.

    The price: a healthy run's own upper tail is clipped too, a few percent of its steps (up to 5% in the benchmark's
    healthy cells, at no measurable cost there), and many more where rare large gradients are the signal itself (a
    classifier near zero loss, whose few hard batches carry most of the gradient).

    Why not mean + z * std of the log norm (z-score clipping, as ZClip and this class's previous rule): when about
    one batch in eight carries an outlier, the outliers' own share inflates the mean and the spread, so the
    threshold climbs to let them through; and a warm-up that only watches lets the first ones reach the weights.
    ``benchmarks/clipping_grid.py`` measures both on a grid of outlier rates, magnitudes, optimizers and tasks.

    The threshold is a deterministic function of the total-norm history, which is identical on every rank, so all
    ranks clip alike without communicating. The state is the window (``state_dict``), so a resumed run continues.

    Args:
        zscore: how many spreads (5th to 25th percentile of the log norm, in decades) above the typical level a
            norm must be to be clipped.
        warmup_steps: during this many first steps, the margin is at least ``warmup_margin``.
        max_norm: optional fixed cap applied on every step.
        window: how many recent steps the statistics cover.
        min_spread: floor of the spread, in decades, so a very steady run is not clipped at its ordinary level.
        warmup_margin: the least margin, in decades, during warm-up (1.0: ten times the typical norm).

    Raises:
        TypeError: an argument of the wrong type (``window=2.5``).
        ValueError: a value out of range (a ``zscore`` or ``max_norm`` that is not positive, a negative
            ``min_spread``).

    Example:
        >>> clip = AdaptiveClipThreshold()
        >>> clip.threshold()  # nothing seen yet
        inf
        >>> for norm in [1.0, 1.1, 0.9, 1.0, 1.05, 0.95] * 5:
        ...     _ = clip.update(norm)
        >>> round(clip.threshold(), 2)  # typical norm 0.95 (25th percentile), times 10 ** (3 * 0.1)
        1.9
        >>> clip.update(1000.0)  # an outlier is scaled down to the typical norm
        0.95
        >>> round(clip.update(1.2), 2)  # an ordinary step is left alone: the threshold it was held to
        1.9
    """

    def __init__(
        self,
        zscore: float = ClipConfig.clip_zscore,
        warmup_steps: int = ClipConfig.clip_warmup_steps,
        max_norm: float | None = ClipConfig.clip_max_norm,
        window: int = 100,
        min_spread: float = 0.1,
        warmup_margin: float = 1.0,
    ) -> None:
        check_number("zscore", zscore)
        check_int("warmup_steps", warmup_steps, minimum=0)
        check_number("max_norm", max_norm, optional=True)
        check_int("window", window, minimum=1)
        check_number("min_spread", min_spread, zero=True)
        check_number("warmup_margin", warmup_margin, zero=True)
        self.zscore = zscore
        self.warmup_steps = warmup_steps
        self.max_norm = max_norm
        self.window = window
        self.min_spread = min_spread
        self.warmup_margin = warmup_margin
        self.steps = 0  # finite, non-zero norms learnt
        self._window = SortedWindow(window)  # their log10, the last `window` of them

    def _levels(self) -> tuple[float, float]:
        """(typical, threshold) as log10 norms; ``inf`` before any norm is known."""
        if not len(self._window):
            return math.inf, math.inf
        typical = self._window.quantile(TYPICAL_QUANTILE)
        margin = self.zscore * max(typical - self._window.quantile(LOW_QUANTILE), self.min_spread)
        if self.steps < self.warmup_steps:
            margin = max(margin, self.warmup_margin)
        return typical, typical + margin

    def _cap(self, log_norm: float) -> float:
        threshold = pow10_or_inf(log_norm)
        return threshold if self.max_norm is None else min(threshold, self.max_norm)

    def threshold(self) -> float:
        """The total norm above which the next step is clipped (``inf`` before the first step, without a cap)."""
        return self._cap(self._levels()[1])

    def update(self, total_norm: float) -> float:
        """Learn from one step's total norm; returns the threshold that applies to it (the norm to clip it to).

        For an outlier that is the typical norm, for any other step the outlier threshold (or ``max_norm``, if lower).
        Non-finite and zero norms are not learnt.
        """
        typical, limit = self._levels()
        if not math.isfinite(total_norm) or total_norm <= 0:
            return self._cap(limit)
        x = math.log10(total_norm)
        self.steps += 1
        self._window.append(x)
        return self._cap(typical if x > limit else limit)

    def state_dict(self) -> dict[str, Any]:
        """Plain values that let a resumed run continue with the same threshold."""
        return {"steps": self.steps, "log_norms": list(self._window)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; missing keys keep their defaults.

        A state saved by the previous rule (``mean`` and ``var`` of the log norm) becomes a window of evenly spaced
        quantiles of that normal distribution, so an older checkpoint resumes near the threshold it had.
        """
        self.steps = int(state.get("steps", 0))
        log_norms = state.get("log_norms")
        if log_norms is None and "mean" in state and self.steps > 0:
            mean, std = float(state["mean"]), math.sqrt(max(float(state.get("var", 0.0)), 0.0))
            count = min(self.steps, self.window)
            normal = statistics.NormalDist()
            log_norms = [mean + std * normal.inv_cdf((i + 0.5) / count) for i in range(count)]
        self._window = SortedWindow(self.window, (float(x) for x in log_norms or () if math.isfinite(float(x))))
