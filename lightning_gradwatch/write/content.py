"""What a step writes: its scalars and histograms by tag, the custom-scalars layout, an alert's Text entry.

Plain values keyed by the tags of ``_names``; the sinks decide how each reaches its logger.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from lightning_gradwatch import _names as names
from lightning_gradwatch._names import (
    ALERT_DATA_FENCE,
    HISTOGRAM_PREFIX,
    LAYER_SCALARS,
    LOG10_HISTOGRAM_PREFIX,
    TOTAL_NORM,
)
from lightning_gradwatch.alerts import GradientAlert, alert_markdown
from lightning_gradwatch.measure.records import LayerHistogram, StepStats

__all__ = ["alert_text", "custom_scalars_layout", "histogram_tags", "png_size", "step_scalars"]


def step_scalars(stats: StepStats, suffix: str = "") -> dict[str, float]:
    """The scalars of one step as ``{tag: value}``: per-layer families plus run-level ``gradwatch/...`` values.

    ``grad_norm_log10/<layer>`` is ``log10`` of the layer's gradient norm, for the layers whose norm is positive and
    finite (TensorBoard's linear axes show a norm of 1e-8 beside one of 1 as a flat line at 0).

    ``suffix`` (such as ``"/optimizer_1"``) tells apart the run-level values of several optimizers.

    Example:
        >>> from lightning_gradwatch.measure.records import StepStats
        >>> s = StepStats(("fc",), (0.5,), 0.5, (10,), (0,), (2.0,), (0.1,), (0.0,))
        >>> out = step_scalars(s)
        >>> sorted(out)  # doctest: +NORMALIZE_WHITESPACE
        ['grad_max_abs/fc', 'grad_norm/fc', 'grad_norm_log10/fc', 'grad_to_weight/fc', 'grad_zero_fraction/fc',
         'gradwatch/nonfinite_values', 'gradwatch/total_norm', 'param_norm/fc']
        >>> round(out['grad_norm_log10/fc'], 4)
        -0.301
    """
    out: dict[str, float] = {}
    values_of: list[Sequence[float] | None] = [
        stats.grad_norm,
        stats.grad_to_weight,
        stats.param_norm,
        stats.max_abs,
        stats.zero_fraction,
    ]
    for family, values in zip(LAYER_SCALARS, values_of):
        for layer, value in zip(stats.layers, values or ()):
            out[names.layer_tag(family, layer)] = value
    for layer, norm in zip(stats.layers, stats.grad_norm):
        if 0 < norm < math.inf:
            out[names.layer_tag(names.GRAD_NORM_LOG10, layer)] = math.log10(norm)
    out[names.run_tag(TOTAL_NORM, suffix)] = stats.total_norm
    out[names.run_tag(names.NONFINITE_VALUES, suffix)] = float(sum(stats.nonfinite_count))
    for layer, count in zip(stats.layers, stats.nonfinite_count):
        if count:
            out[names.layer_tag(names.GRAD_NONFINITE, layer)] = float(count)
    return out


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: one multi-line chart per per-layer metric, one for the run's norms.

    Example:
        >>> layout = custom_scalars_layout()
        >>> layout["gradwatch: per layer"]["gradient L2 norm"]
        ['Multiline', ['grad_norm/.*']]
    """
    return {
        "gradwatch: per layer": {
            "gradient L2 norm": ["Multiline", ["grad_norm/.*"]],
            "log10 gradient L2 norm": ["Multiline", ["grad_norm_log10/.*"]],
            "gradient-to-weight ratio": ["Multiline", ["grad_to_weight/.*"]],
            "parameter L2 norm": ["Multiline", ["param_norm/.*"]],
            "max |gradient|": ["Multiline", ["grad_max_abs/.*"]],
            "fraction of zero gradients": ["Multiline", ["grad_zero_fraction/.*"]],
        },
        "gradwatch: run": {
            "total gradient norm": [
                "Multiline",
                ["gradwatch/total_norm.*", "gradwatch/clipped_norm.*", "gradwatch/clip_threshold.*"],
            ],
            "events": ["Multiline", ["gradwatch/.*_steps.*", "gradwatch/nonfinite_values.*"]],
        },
    }


def alert_text(alert: GradientAlert) -> str:
    """An alert's Text entry: its Markdown, then its values as JSON on one line in a fenced block.

    ``gradwatch check`` reads the block back; non-finite numbers are written as strings (``"inf"``, ``"nan"``).

    Example:
        >>> alert = GradientAlert("exploding", 7, ("fc1",), float("inf"), 9.0, "Exploding.", optimizer=1)
        >>> text = alert_text(alert)
        >>> text.startswith("**exploding** at step 7"), text.splitlines()[-3:-1]
        (True, ['```json', '{"kind": "exploding", "step": 7, "layers": ["fc1"], "value": "inf", "threshold": 9.0, \
"message": "Exploding.", "optimizer": 1, "extra": {}}'])
    """

    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return repr(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    data = json.dumps(plain(alert.to_dict()), allow_nan=False, default=str)  # one line: newlines are escaped
    return f"{alert_markdown(alert)}{ALERT_DATA_FENCE}{data}\n```"


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's header (the IHDR chunk that always comes first)."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def histogram_tags(stats: StepStats) -> dict[str, LayerHistogram]:
    """``{grad_hist/<layer>: histogram, grad_hist_log10/<layer>: histogram of log10 |g|}`` for the layers that have one.

    A layer's histogram of magnitudes counts its non-zero values only (exact zeros have no logarithm; their share is
    the ``grad_zero_fraction/<layer>`` scalar); a layer whose sampled values are all zeros has none.

    Example:
        >>> from lightning_gradwatch.measure.records import LayerHistogram
        >>> h = LayerHistogram(-1e-8, 1e-8, 10, 0.0, 1e-16, (0.0, 1e-8), (5.0, 5.0), 10)
        >>> log = LayerHistogram(-9.0, -8.0, 10, -85.0, 725.0, (-8.5, -8.0), (5.0, 5.0), 10)
        >>> s = StepStats(("fc",), (1e-8,), 1e-8, (10,), (0,), histograms=(h,), log_histograms=(log,))
        >>> list(histogram_tags(s))
        ['grad_hist/fc', 'grad_hist_log10/fc']
    """
    out: dict[str, LayerHistogram] = {}
    families = ((HISTOGRAM_PREFIX, stats.histograms), (LOG10_HISTOGRAM_PREFIX, stats.log_histograms))
    for family, histograms in families:
        for layer, h in zip(stats.layers, histograms or ()):
            if h is not None and math.isfinite(h.min) and math.isfinite(h.max):
                out[names.layer_tag(family, layer)] = h
    return out
