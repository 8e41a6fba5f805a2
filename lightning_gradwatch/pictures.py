"""Gradient-flow pictures (the stable import path; see :mod:`lightning_gradwatch.write.pictures`)."""

from __future__ import annotations

from lightning_gradwatch.write.pictures import (
    HEALTH_COLOURS,
    PNG_SIGNATURE,
    BackgroundDrawing,
    gradient_flow_png,
    gradient_heatmap_png,
    matplotlib_available,
)

__all__ = [
    "HEALTH_COLOURS",
    "PNG_SIGNATURE",
    "BackgroundDrawing",
    "gradient_flow_png",
    "gradient_heatmap_png",
    "matplotlib_available",
]
