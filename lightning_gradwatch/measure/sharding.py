"""Sharded gradients: which processes hold the other parts of a tensor, and how partial results are combined.

Under FSDP2 (``fully_shard``) a gradient is a DTensor; its local shard covers part of the parameter, and the parts
held along each ``Shard`` mesh dimension add up (squared norms, counts) or combine (max, min) to the whole. A
``Replicate`` dimension holds copies and must not be summed: it would count every value once per replica. Under
FSDP1 with ``use_orig_params=True`` gradients are plain tensors holding this process's slice; the callback names
their process group. Unsharded tensors (single process, DDP, whose gradients are already all-reduced) need nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Groups", "all_reduce_", "group_size", "is_dtensor", "local", "reduce_parts", "shard_groups"]

Groups = tuple[Any, ...]  # process groups to combine over, one per sharded mesh dimension; () for none

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (duck-typed: it has a device mesh, placements and a local shard)."""
    return all(hasattr(t, attr) for attr in ("device_mesh", "placements", "to_local"))


def shard_groups(t: Tensor, plain_group: Any = None) -> Groups:
    """The process groups over which ``t``'s local values must be combined to describe the whole tensor.

    Args:
        t: a gradient or parameter (a DTensor, or a plain tensor).
        plain_group: the process group of plain-tensor shards (FSDP1), or ``None`` when plain tensors are whole.

    Example:
        >>> shard_groups(torch.zeros(3))
        ()
    """
    if is_dtensor(t):
        mesh = t.device_mesh
        return tuple(mesh.get_group(dim) for dim, placement in enumerate(t.placements) if not placement.is_replicate())
    return (plain_group,) if plain_group is not None else ()


def group_size(groups: Groups) -> int:
    """How many processes ``groups`` span together (1 for none)."""
    if not groups:
        return 1
    import torch.distributed as dist

    size = 1
    for group in groups:
        size *= dist.get_world_size(group)
    return size


def all_reduce_(t: Tensor, op: str, groups: Groups) -> Tensor:
    """Combine ``t`` in place over every group in ``groups`` (``op``: ``"sum"``, ``"max"`` or ``"min"``)."""
    if not groups:
        return t
    import torch.distributed as dist

    reduce_op = getattr(dist.ReduceOp, _OPS[op])
    for group in groups:
        dist.all_reduce(t, op=reduce_op, group=group)
    return t


def reduce_parts(parts: Sequence[tuple[Tensor, str]], groups: Groups) -> list[Tensor]:
    """Combine several vectors over ``groups`` with one collective per kind of combination.

    Example:
        >>> [t.tolist() for t in reduce_parts([(torch.ones(2), "sum"), (torch.zeros(1), "max")], ())]
        [[1.0, 1.0], [0.0]]
    """
    if not groups:
        return [t for t, _ in parts]
    out: list[Tensor | None] = [None] * len(parts)
    for op in ("sum", "max", "min"):
        indices = [i for i, (_, o) in enumerate(parts) if o == op]
        if not indices:
            continue
        flat = all_reduce_(torch.cat([parts[i][0] for i in indices]), op, groups)
        for i, chunk in zip(indices, flat.split([parts[i][0].numel() for i in indices])):
            out[i] = chunk
    return out  # type: ignore[return-value]


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor, complex values seen as pairs of reals; any other tensor unchanged."""
    if is_dtensor(t):
        t = t.to_local()
    return torch.view_as_real(t) if t.is_complex() and t.layout == torch.strided else t
