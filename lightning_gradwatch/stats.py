"""Per-layer gradient statistics (the stable import path; measuring lives in :mod:`lightning_gradwatch.measure`)."""

from __future__ import annotations

from lightning_gradwatch.measure.stats import (
    GRANULARITIES,
    GradientStats,
    Granularity,
    LayerHistogram,
    Packed,
    StepStats,
    histogram_layout,
    layer_name,
    step_layout,
    unpack,
)

__all__ = [
    "GRANULARITIES",
    "GradientStats",
    "Granularity",
    "LayerHistogram",
    "Packed",
    "StepStats",
    "histogram_layout",
    "layer_name",
    "step_layout",
    "unpack",
]
