"""Norms from the transferred squared norms, and the rare paths that measure a layer again exactly.

A float32 squared norm overflows long before the values do: weights of 1e20 are finite, their squares are not. A
layer whose norm is not finite is measured again in float64 on this process, counting its NaN/Inf values exactly, so
a huge gradient is never reported as NaN. Sharded tensors are combined over their groups: every process reaches these
paths together (the norms they start from are already combined), so their collectives line up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_gradwatch.measure.plan import Plan, positions
from lightning_gradwatch.measure.sharding import local, reduce_parts

__all__ = ["exact_param_norms", "norms_from_squares"]


def norms_from_squares(
    plan: Plan, grads: Sequence[Tensor | None], sq: list[float], layer_of: Sequence[int]
) -> tuple[list[float], list[int], float]:
    """Per-layer norms, non-finite counts and the total norm, from the squared norms."""
    nonfinite = [0] * len(sq)
    total_sq = math.fsum(sq)
    if math.isfinite(total_sq) and total_sq >= 0:  # the common case: one check for all layers
        return [math.sqrt(v) for v in sq], nonfinite, math.sqrt(total_sq)
    grad_norm = [math.sqrt(v) if v >= 0 else math.nan for v in sq]
    grad_norm, nonfinite = _exact_nonfinite(plan, grads, grad_norm, layer_of)
    return grad_norm, nonfinite, _total(grad_norm)


def _total(grad_norm: list[float]) -> float:
    """The total norm of exact layer norms: ``inf`` when one is infinite and none is NaN, ``nan`` with a NaN."""
    total_sq = math.fsum(v * v for v in grad_norm) if all(map(math.isfinite, grad_norm)) else math.nan
    if any(math.isinf(v) for v in grad_norm) and not any(math.isnan(v) for v in grad_norm):
        total_sq = math.inf
    return math.sqrt(total_sq) if total_sq == total_sq else math.nan


def exact_param_norms(
    plan: Plan, norms: tuple[float, ...], params: Sequence[Tensor], layer_of: Sequence[int]
) -> tuple[float, ...]:
    """Rare path: a parameter norm overflowed float32 (weights of 1e20 and up are finite, their squares not).

    Such layers are measured again in float64 on this process; only layers with a non-finite value stay
    non-finite. Sharded parameters are combined over their groups, so every process joins in.
    """
    if all(map(math.isfinite, norms)):
        return norms
    n = len(plan.layer_index)
    local_id = {layer: k for k, layer in enumerate(plan.layer_index)}
    bad = {k for k, v in enumerate(norms) if not math.isfinite(v)}
    sq = torch.zeros(n, dtype=torch.float64, device=plan.device)
    for shard in plan.shards:
        s = torch.zeros(n, dtype=torch.float64, device=plan.device)
        for i in positions(shard):
            lid = local_id[layer_of[i]]
            if lid in bad:
                t = local(params[i].detach())
                s[lid] += torch.linalg.vector_norm(t, dtype=torch.float64).to(s.device) ** 2
        (s,) = reduce_parts([(s, "sum")], shard.groups)
        sq += s
    exact = sq.cpu().tolist()
    return tuple(math.sqrt(exact[k]) if k in bad else v for k, v in enumerate(norms))


def _exact_nonfinite(
    plan: Plan, grads: Sequence[Tensor | None], grad_norm: list[float], layer_of: Sequence[int]
) -> tuple[list[float], list[int]]:
    """Rare path: a layer norm is not finite. Count NaN/Inf exactly; recompute overflowed norms in float64."""
    n = len(plan.layer_index)
    local_id = {layer: k for k, layer in enumerate(plan.layer_index)}
    bad = {k for k, v in enumerate(grad_norm) if not math.isfinite(v)}
    counts = torch.zeros(n, dtype=torch.float64, device=plan.device)
    sq = torch.zeros(n, dtype=torch.float64, device=plan.device)
    for shard in plan.shards:
        c = torch.zeros(n, dtype=torch.float64, device=plan.device)
        s = torch.zeros(n, dtype=torch.float64, device=plan.device)
        for i in positions(shard):
            lid = local_id[layer_of[i]]
            if lid in bad:
                _recount(grads[i], lid, c, s)
        c, s = reduce_parts([(c, "sum"), (s, "sum")], shard.groups)
        counts += c
        sq += s
    return _exact_layers(grad_norm, bad, counts.cpu().tolist(), sq.cpu().tolist())


def _recount(t: Tensor | None, lid: int, counts: Tensor, sq: Tensor) -> None:
    """Add one gradient's non-finite values to ``counts[lid]`` and its float64 squared norm to ``sq[lid]``."""
    assert t is not None
    t = t.coalesce().values() if t.layout != torch.strided else t
    counts[lid] += (~torch.isfinite(t)).sum().to(counts.device, torch.float64)
    sq[lid] += torch.linalg.vector_norm(t, dtype=torch.float64).to(sq.device) ** 2


def _exact_layers(
    grad_norm: list[float], bad: set[int], counts: list[float], sq: list[float]
) -> tuple[list[float], list[int]]:
    """The bad layers' exact norms and non-finite counts (a layer with NaN/Inf values keeps a non-finite norm)."""
    out_norm = list(grad_norm)
    out_counts = [0] * len(grad_norm)
    for k in bad:
        out_counts[k] = int(counts[k])
        out_norm[k] = math.sqrt(sq[k]) if out_counts[k] == 0 else math.nan
        if out_counts[k] and math.isinf(grad_norm[k]) and not math.isnan(sq[k]):
            out_norm[k] = math.inf
    return out_norm, out_counts
