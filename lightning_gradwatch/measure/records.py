"""What measuring hands on: one step's statistics as plain floats (no tensor), and a layer's histogram.

:class:`StepStats` is the contract between measuring and judging: the judge, the run summary and the writers read
nothing else of a step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LayerHistogram", "StepStats"]


@dataclass(frozen=True)
class LayerHistogram:
    """A histogram of one layer's gradient values, or of their ``log10 |g|``, for TensorBoard's ``HistogramProto``.

    ``bucket_limits`` are right edges; ``bucket_counts`` are estimated counts over the whole layer: each sampled
    value stands for ``size / samples`` values of the tensor it was drawn from. Runs of empty buckets are merged
    into one. ``sample_size`` is the number of
    values drawn. A histogram of magnitudes counts the non-zero values only (``num`` is their estimated number;
    exact zeros have no logarithm).
    """

    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    bucket_limits: tuple[float, ...]
    bucket_counts: tuple[float, ...]
    sample_size: int


@dataclass(frozen=True)
class StepStats:
    """Statistics of one optimizer step. Per-layer tuples are aligned with ``layers``.

    ``layers`` holds the layers that had a gradient this step, in forward (registration) order. Fields other than
    ``grad_norm``, ``total_norm`` and ``numel`` are filled only on steps measured with ``extended=True``
    (``histograms``, ``log_histograms`` (of ``log10 |g|``) and ``mean_abs``, the mean ``|g|``, with
    ``histograms=True``); ``nonfinite_count`` is exact
    on every step (it is computed only when a norm is not finite). ``numel`` counts the values measured on this
    process until an extended or histogram step combines it across shards. ``weight_norm``, the norm of the weights
    with a gradient at this step, is filled on extended steps and on steps measured with ``weights=True``.
    """

    layers: tuple[str, ...]
    grad_norm: tuple[float, ...]
    total_norm: float
    numel: tuple[int, ...]
    nonfinite_count: tuple[int, ...]
    param_norm: tuple[float, ...] | None = None
    max_abs: tuple[float, ...] | None = None
    zero_fraction: tuple[float, ...] | None = None
    histograms: tuple[LayerHistogram | None, ...] | None = None
    log_histograms: tuple[LayerHistogram | None, ...] | None = None
    mean_abs: tuple[float, ...] | None = None
    extra: tuple[float, ...] = ()
    weight_norm: float | None = None

    @property
    def finite(self) -> bool:
        """Whether every measured gradient value is finite."""
        return not any(self.nonfinite_count)

    @property
    def nonfinite_layers(self) -> tuple[str, ...]:
        """Layers holding NaN or Inf gradient values."""
        return tuple(n for n, c in zip(self.layers, self.nonfinite_count) if c)

    @property
    def grad_to_weight(self) -> tuple[float, ...] | None:
        """Per-layer ``|grad| / |weight|`` (``inf`` for an all-zero weight with a non-zero gradient)."""
        if self.param_norm is None:
            return None
        return tuple(_ratio(g, w) for g, w in zip(self.grad_norm, self.param_norm))


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf
