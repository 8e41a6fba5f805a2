"""The per-step measuring kernels: per-tensor norms and counts added into per-layer vectors, on the device.

Norms come from ``torch._foreach_norm`` per (device, dtype) group (float32 for half-precision gradients), combined
per layer in float64 with one ``index_add_``; sparse gradients are measured on their stored values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_gradwatch.measure.plan import Shard

__all__ = ["abs_max_each", "accumulate_counts", "accumulate_norms", "combine", "modulus"]


def combine(a: Tensor, b: Tensor, op: str) -> Tensor:
    """Two shards' partial results combined by ``op`` (``"sum"``, ``"max"`` or ``"min"``)."""
    if op == "sum":
        return a + b
    return torch.maximum(a, b) if op == "max" else torch.minimum(a, b)


def accumulate_norms(shard: Shard, tensors: Sequence[Tensor | None], out: Tensor, ord: int) -> None:
    """Add each tensor's ``|t|_1`` (``ord=1``) or ``|t|_2 ** 2`` (``ord=2``) into its layer's entry of ``out``."""
    for group in shard.dense:
        ts = [tensors[i] for i in group.positions]
        norms = torch._foreach_norm(ts, ord, dtype=torch.float32) if group.upcast else torch._foreach_norm(ts, ord)
        n = torch.stack(norms).to(device=out.device, dtype=torch.float64)
        out.index_add_(0, group.layer_ids, n * n if ord == 2 else n)
    for pos, lid in shard.sparse:
        t = tensors[pos]
        assert t is not None
        values = t.coalesce().values() if t.layout != torch.strided else t
        norm = torch.linalg.vector_norm(values, ord, dtype=torch.float64).to(out.device)
        out[lid] += norm * norm if ord == 2 else norm


def accumulate_counts(shard: Shard, grads: Sequence[Tensor | None], nonzero: Tensor, max_abs: Tensor) -> None:
    """Add each gradient's number of non-zero values, and take its max ``|g|``, into its layer's entries."""
    for group in shard.dense:
        ts = [grads[i] for i in group.positions]
        counts = torch._foreach_norm(ts, 0)  # number of non-zero values per tensor
        nonzero.index_add_(0, group.layer_ids, torch.stack(counts).to(nonzero.device, torch.float64))
        if shard.complex_positions:  # max |g| of a complex value is its modulus, not its largest part
            ts = [modulus(t) if i in shard.complex_positions else t for i, t in zip(group.positions, ts)]
        peaks = abs_max_each(ts).to(device=max_abs.device, dtype=torch.float64)  # type: ignore[arg-type]
        max_abs.scatter_reduce_(0, group.layer_ids, peaks, "amax")
    for pos, lid in shard.sparse:
        g = grads[pos]
        assert g is not None
        values = g.coalesce().values()
        nonzero[lid] += torch.count_nonzero(values).to(nonzero.device, torch.float64)
        if values.numel():
            peak = values.abs().max().to(max_abs.device, torch.float64)
            max_abs[lid] = torch.maximum(max_abs[lid], peak)


def modulus(pairs: Tensor) -> Tensor:
    """``|z|`` of complex values seen as ``(..., 2)`` real pairs."""
    return torch.linalg.vector_norm(pairs, dim=-1) if pairs.numel() else pairs.reshape(-1)


def abs_max_each(ts: list[Tensor]) -> Tensor:
    """``max |t|`` of each tensor (0 for an empty one), with one ``aminmax`` per tensor and vector ops after."""
    lows, highs = [], []
    zero = None
    for t in ts:
        if t.numel():
            lo, hi = torch.aminmax(t)
        else:
            zero = zero if zero is not None else torch.zeros((), dtype=t.dtype, device=t.device)
            lo = hi = zero
        lows.append(lo)
        highs.append(hi)
    return torch.maximum(torch.stack(highs).float(), -torch.stack(lows).float())
