"""Scaling and dropping gradients in place: the actor's tools, torch only.

Measuring may use them (its own groups of gradients are what scaling needs) without importing the judge. Scaling
multiplies the gradients in place with ``torch._foreach_mul_`` per (device, dtype) group, on their device: nothing
here forces a host sync.

Example:
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> w.grad = torch.full((3,), 2.0)
    >>> scale_gradients_([w], 0.5)
    >>> w.grad.tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

__all__ = ["GradientGroups", "GradientSource", "drop_gradients_", "scale_gradients_"]


class GradientGroups(NamedTuple):
    """Gradients already grouped by (device, dtype) for in-place scaling, as measuring grouped them."""

    dense: Sequence[list[Tensor]]
    sparse: Sequence[Tensor]


class GradientSource(Protocol):
    """Parameters whose gradients may be scaled, and those gradients grouped as they were measured (if they can be)."""

    params: Sequence[Tensor]

    def gradient_groups(self) -> GradientGroups | None:
        """The gradients in (device, dtype) groups, or ``None`` when each tensor must be looked at."""
        ...


@torch.no_grad()
def scale_gradients_(parameters: Iterable[Tensor], coefficient: float, groups: GradientGroups | None = None) -> None:
    """Multiply every gradient in place by ``coefficient`` (sparse and sharded gradients included).

    ``groups``: the same gradients already grouped (dense tensors by device and dtype, and sparse ones), as the
    statistics collector grouped them for plain, unsharded gradients: the per-tensor checks are then skipped.
    """
    if groups is None:
        grads = [g for g in (p.grad for p in parameters) if g is not None]
        plain = all(type(g) is Tensor and g.layout == torch.strided for g in grads)
        groups = _grouped(grads) if plain else _grouped_locally(grads)  # plain: the common case, grouped in C++
    for tensors in groups.dense:
        torch._foreach_mul_(tensors, coefficient)
    for grad in groups.sparse:
        grad.mul_(coefficient)


def _grouped(grads: list[Tensor]) -> GradientGroups:
    """Plain strided gradients by (device, dtype), grouped by torch."""
    by_kind = _group_tensors_by_device_and_dtype([grads]).values()  # type: ignore[arg-type]
    return GradientGroups([tensors for (tensors,), _ in by_kind], [])


def _grouped_locally(grads: list[Tensor]) -> GradientGroups:
    """Any gradients: sharded ones by their local shard, sparse ones apart, the rest by (device, dtype)."""
    by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    sparse: list[Tensor] = []
    for g in grads:
        local = g.to_local() if callable(getattr(g, "to_local", None)) else g
        if local.layout != torch.strided:
            sparse.append(local)
            continue
        by_kind.setdefault((local.device, local.dtype), []).append(local)
    return GradientGroups(list(by_kind.values()), sparse)


def drop_gradients_(optimizer: Any) -> None:
    """Set every gradient of ``optimizer``'s parameters to ``None``: its step leaves them, and its state, alone."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None
