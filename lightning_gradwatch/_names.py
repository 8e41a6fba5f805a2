"""Internal. TensorBoard tag and run-event names, in one torch-free module shared by the writers, report and CLI.

Example:
    >>> layer_tag(GRAD_NORM, "encoder.0")
    'grad_norm/encoder.0'
    >>> run_tag(TOTAL_NORM, "/optimizer_1")
    'gradwatch/total_norm/optimizer_1'
"""

from __future__ import annotations

import re

__all__ = [
    "ALERTS_NOT_KEPT",
    "ALERTS_TAG",
    "ALERTS_TEXT_TAG",
    "ALERT_DATA_FENCE",
    "AMP_OVERFLOW_STEPS",
    "CLIPPED_NORM",
    "CLIPPED_STEPS",
    "CLIP_THRESHOLD",
    "EVENT_SCALARS",
    "GRADIENT_FLOW",
    "GRADIENT_HEATMAP",
    "GRAD_MAX_ABS",
    "GRAD_NONFINITE",
    "GRAD_NORM",
    "GRAD_NORM_LOG10",
    "GRAD_TO_WEIGHT",
    "GRAD_ZERO_FRACTION",
    "HISTOGRAM_PREFIX",
    "LAYER_SCALARS",
    "LOG10_HISTOGRAM_PREFIX",
    "NAMESPACE",
    "NONFINITE_STEPS",
    "NONFINITE_VALUES",
    "PARAM_NORM",
    "SKIPPED_STEPS",
    "SPIKE_STEPS",
    "SPIKE_THRESHOLD",
    "TOTAL_NORM",
    "TOTAL_NORM_MAX",
    "layer_tag",
    "numbered",
    "optimizer_key",
    "optimizer_suffix",
    "run_tag",
]

NAMESPACE = "gradwatch"
# left in another logger's directory (a CSV logger beside TensorBoard): the run's record is elsewhere, named inside
RECORD_ELSEWHERE = "gradwatch.elsewhere"

# per-layer scalar families, in the order they appear in TensorBoard
GRAD_NORM = "grad_norm"
GRAD_TO_WEIGHT = "grad_to_weight"
PARAM_NORM = "param_norm"
GRAD_MAX_ABS = "grad_max_abs"
GRAD_ZERO_FRACTION = "grad_zero_fraction"
GRAD_NONFINITE = "grad_nonfinite"
LAYER_SCALARS: tuple[str, ...] = (GRAD_NORM, GRAD_TO_WEIGHT, PARAM_NORM, GRAD_MAX_ABS, GRAD_ZERO_FRACTION)
#: log10 of ``grad_norm`` (layers whose norms span many decades are flat lines at 0 on a linear axis)
GRAD_NORM_LOG10 = "grad_norm_log10"
HISTOGRAM_PREFIX = "grad_hist"
#: histograms of ``log10 |g|``: how many decades a layer's gradients sit below the others' (exact zeros left out)
LOG10_HISTOGRAM_PREFIX = "grad_hist_log10"

# run-level scalars
TOTAL_NORM = f"{NAMESPACE}/total_norm"
TOTAL_NORM_MAX = f"{NAMESPACE}/total_norm_max"
CLIPPED_NORM = f"{NAMESPACE}/clipped_norm"
CLIP_THRESHOLD = f"{NAMESPACE}/clip_threshold"
SPIKE_THRESHOLD = f"{NAMESPACE}/spike_threshold"
NONFINITE_VALUES = f"{NAMESPACE}/nonfinite_values"

# text and images
ALERTS_TAG = f"{NAMESPACE}/alerts"
ALERTS_TEXT_TAG = f"{ALERTS_TAG}/text_summary"  # earlier versions' tag (what `SummaryWriter.add_text` makes)
#: An alert's Text entry ends with its plain values as one line of JSON in a fenced block.
ALERT_DATA_FENCE = "\n\n```json\n"
GRADIENT_FLOW = f"{NAMESPACE}/gradient_flow"
GRADIENT_HEATMAP = f"{NAMESPACE}/gradient_heatmap"

# run events: counted in gradwatch.json's "events", charted as gradwatch/<event>
AMP_OVERFLOW_STEPS = "amp_overflow_steps"
SKIPPED_STEPS = "skipped_steps"
SPIKE_STEPS = "spike_steps"
CLIPPED_STEPS = "clipped_steps"
NONFINITE_STEPS = "nonfinite_steps"
ALERTS_NOT_KEPT = "alerts_not_kept"
EVENT_SCALARS: tuple[str, ...] = (AMP_OVERFLOW_STEPS, SKIPPED_STEPS, SPIKE_STEPS, CLIPPED_STEPS)


def layer_tag(family: str, layer: str) -> str:
    """The tag of one layer's value in a per-layer family (``grad_norm/<layer>``)."""
    return f"{family}/{layer}"


def optimizer_suffix(index: int) -> str:
    """What tells apart the run-level tags of one of several optimizers (``"/optimizer_1"``)."""
    return f"/{optimizer_key(index)}"


def optimizer_key(index: int) -> str:
    """One of several optimizers' key in ``gradwatch.json``'s ``total_norm`` (``"optimizer_1"``).

    Example:
        >>> optimizer_key(1), optimizer_suffix(1)
        ('optimizer_1', '/optimizer_1')
    """
    return f"optimizer_{index}"


def run_tag(name: str, suffix: str = "") -> str:
    """A run-level tag, with ``suffix`` (``"/optimizer_1"``) telling apart several optimizers."""
    return f"{name}{suffix}"


def numbered(name: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders the numbers inside a name by value: ``layers.2`` before ``layers.10``.

    Example:
        >>> sorted(["layers.10.fc", "layers.2.fc", "head"], key=numbered)
        ['head', 'layers.2.fc', 'layers.10.fc']
        >>> sorted(["optimizer_10", "all", "optimizer_2"], key=numbered)
        ['all', 'optimizer_2', 'optimizer_10']
    """
    return tuple((0, int(part)) if part.isdecimal() else (1, part) for part in re.split(r"(\d+)", name) if part)
