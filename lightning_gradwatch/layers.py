"""Grouping parameters into layers (the stable import path; see :mod:`lightning_gradwatch.measure.layers`)."""

from __future__ import annotations

from lightning_gradwatch.measure.layers import GRANULARITIES, Granularity, LayerMap, layer_name, merge_layers

__all__ = ["GRANULARITIES", "Granularity", "LayerMap", "layer_name", "merge_layers"]
