"""Sharded gradients (the stable import path; see :mod:`lightning_gradwatch.measure.sharding`)."""

from __future__ import annotations

from lightning_gradwatch.measure.sharding import (
    Groups,
    all_reduce_,
    group_size,
    is_dtensor,
    local,
    reduce_parts,
    shard_groups,
)

__all__ = ["Groups", "all_reduce_", "group_size", "is_dtensor", "local", "reduce_parts", "shard_groups"]
