"""Output sinks and what a step writes (the stable import path; see :mod:`lightning_gradwatch.write`)."""

from __future__ import annotations

from lightning_gradwatch.write.writers import (
    ALERTS_TAG,
    HISTOGRAM_PREFIX,
    LAYER_SCALARS,
    TOTAL_NORM,
    Writers,
    custom_scalars_layout,
    histogram_tags,
    png_size,
    step_scalars,
)

__all__ = [
    "ALERTS_TAG",
    "HISTOGRAM_PREFIX",
    "LAYER_SCALARS",
    "TOTAL_NORM",
    "Writers",
    "custom_scalars_layout",
    "histogram_tags",
    "png_size",
    "step_scalars",
]
