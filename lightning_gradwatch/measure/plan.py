"""How one pattern of present gradients is measured: which tensors go together, built once and reused.

Gradients are grouped by the process groups their local values combine over (a :class:`Shard`; whole tensors need
none), then by (device, dtype) within a shard (a :class:`DenseGroup`, measured with one ``_foreach_norm``).
Histogram samples are planned per tensor, so a layer's sample stays within ``histogram_sample_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_gradwatch.measure.sharding import Groups, group_size, local, shard_groups

__all__ = [
    "HALF_DTYPES",
    "DenseGroup",
    "Plan",
    "Shard",
    "ShardSpec",
    "build_plan",
    "positions",
    "replicas_of",
    "shard_specs",
]


@dataclass
class DenseGroup:
    """Dense tensors of one (device, dtype) in one shard: positions into the parameter list, their local layers."""

    positions: list[int]
    layer_ids: Tensor  # long, on the plan's device
    upcast: bool


@dataclass
class Shard:
    """Tensors whose local values combine over the same process groups (``()``: whole tensors, nothing to do)."""

    groups: Groups
    dense: list[DenseGroup]
    sparse: list[tuple[int, int]]  # (position, local layer id)
    numel: Tensor  # float64 per local layer: values held here
    hist_positions: list[tuple[int, int, int]]  # (position, local layer id, samples to draw)
    hist_numel: Tensor  # float64 per local layer: dense values the histogram stands for (divided by replicas)
    replicas: int = 1  # copies of these values across the histogram group (unsharded tensors in a sharded plan)
    hist_layer_ids: Tensor | None = None  # per sample, built on first use
    hist_weights: Tensor | None = None
    complex_positions: frozenset[int] = frozenset()


class ShardSpec:
    """A shard's tensors while a plan is being built."""

    def __init__(self, groups: Groups, layers: int) -> None:
        self.groups = groups
        self.dense: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        self.sparse: list[tuple[int, int]] = []
        self.numel = [0] * layers
        self.hist: list[tuple[int, int, int]] = []
        self.hist_numel = [0] * layers
        self.complex: set[int] = set()  # positions of complex tensors (seen as pairs of reals)

    def add(self, position: int, lid: int, local_g: Tensor, is_complex: bool = False) -> None:
        """Add the tensor at ``position`` (its local values ``local_g``) to local layer ``lid``."""
        if is_complex:
            self.complex.add(position)
        self.numel[lid] += local_g.numel()
        if local_g.layout != torch.strided:
            self.sparse.append((position, lid))
            if not is_complex:
                self.hist_numel[lid] += local_g.numel()  # stored values and implicit zeros
            return
        self.dense.setdefault((local_g.device, local_g.dtype), []).append(position)
        if local_g.numel():
            self.hist.append((position, lid, local_g.numel()))
            self.hist_numel[lid] += local_g.numel()

    def build(self, layer_ids: list[int], device: torch.device, sample_size: int, replicas: int) -> Shard:
        """The shard, its histogram samples shared out within ``sample_size`` per layer."""
        layer_totals = [0] * len(self.numel)
        for _, lid, size in self.hist:
            layer_totals[lid] += size
        hist = []
        for i, lid, size in self.hist:
            samples = size if layer_totals[lid] <= sample_size else sample_size * size / layer_totals[lid]
            hist.append((i, lid, min(size, max(1, round(samples)))))
        dense = [
            DenseGroup(pos, torch.tensor([layer_ids[i] for i in pos], device=device), dtype in HALF_DTYPES)
            for (_, dtype), pos in self.dense.items()
        ]
        return Shard(
            groups=self.groups,
            dense=dense,
            sparse=self.sparse,
            numel=torch.tensor(self.numel, dtype=torch.float64, device=device),
            hist_positions=hist,
            hist_numel=torch.tensor(self.hist_numel, dtype=torch.float64, device=device) / replicas,
            replicas=replicas,
            complex_positions=frozenset(self.complex),
        )


HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class Plan:
    """How to measure one pattern of present gradients; built once and reused while the pattern holds."""

    layer_index: list[int]  # global layer index of each local (present) layer
    shards: list[Shard]
    device: torch.device
    plain: bool  # no DTensor and no complex tensor: nothing to unwrap
    sharded: bool
    hist_groups: Groups
    local_numel: list[int]


def build_plan(grads: Sequence[Tensor | None], layer_of: Sequence[int], plain_group: Any, sample_size: int) -> Plan:
    """The plan for one pattern of present gradients (``layer_of``: each parameter's layer)."""
    present, layer_ids = _local_layers(grads, layer_of)
    device = next(local(g).device for g in grads if g is not None)
    specs, local_numel, plain = shard_specs(grads, layer_ids, len(present), plain_group)
    hist_groups = next((spec.groups for spec in specs if spec.groups), ())
    sharded = bool(hist_groups)
    replicas_of_whole = group_size(hist_groups) if sharded else 1
    shards = [spec.build(layer_ids, device, sample_size, replicas_of(spec, replicas_of_whole)) for spec in specs]
    return Plan(present, shards, device, plain, sharded, hist_groups, local_numel)


def _local_layers(grads: Sequence[Tensor | None], layer_of: Sequence[int]) -> tuple[list[int], list[int]]:
    """The layers with a gradient (their global indices, in order), and each parameter's local layer id (-1: none)."""
    present = sorted({layer_of[i] for i, g in enumerate(grads) if g is not None})
    local_id = {layer: k for k, layer in enumerate(present)}
    return present, [local_id.get(layer, -1) for layer in layer_of]


def replicas_of(spec: ShardSpec, replicas_of_whole: int) -> int:
    """Copies of a shard's values across the histogram group: 1 for sharded tensors, all of it for whole ones."""
    return 1 if spec.groups else replicas_of_whole


def shard_specs(
    grads: Sequence[Tensor | None], layer_ids: list[int], layers: int, plain_group: Any
) -> tuple[list[ShardSpec], list[int], bool]:
    """Present gradients sorted by the process groups they combine over; local sizes; whether all are plain."""
    specs: dict[tuple[int, ...], ShardSpec] = {}
    local_numel = [0] * layers
    plain = True
    for i, g in enumerate(grads):
        if g is None:
            continue
        local_g = local(g)
        plain = plain and local_g is g
        groups = shard_groups(g, plain_group)
        spec = specs.setdefault(tuple(id(x) for x in groups), ShardSpec(groups, layers))
        spec.add(i, layer_ids[i], local_g, g.is_complex())
        local_numel[layer_ids[i]] += local_g.numel()
    return list(specs.values()), local_numel, plain


def positions(shard: Shard) -> list[int]:
    """The positions (into the parameter list) of a shard's tensors, dense then sparse."""
    return [i for g in shard.dense for i in g.positions] + [i for i, _ in shard.sparse]
