"""Per-layer gradient histograms, estimated from a uniform random sample of each layer's values.

At most ``histogram_sample_size`` values are drawn per layer (all of them for a smaller layer), with a private random
generator so the training run's own random stream is untouched; each sampled value is weighted by how many values
of its tensor it stands for. With sharded gradients every process samples its own shards; the bin edges are agreed
first (one min/max reduction), then the weighted counts are summed. Everything is binned on the gradients' device
and travels with the step's other statistics in its one transfer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_gradwatch.measure.plan import Plan, Shard
from lightning_gradwatch.measure.records import LayerHistogram
from lightning_gradwatch.measure.sharding import all_reduce_

__all__ = ["SEED", "HistogramSampler"]

#: the seed of the sampling generator (one per device): the same samples in every run, and none taken from the run's
SEED = 0x6772616477


class HistogramSampler:
    """Samples, bins and unpacks the histograms of one plan's layers.

    Args:
        bins: buckets per histogram.
        sample_size: values sampled per layer.
    """

    def __init__(self, bins: int, sample_size: int) -> None:
        self.bins = bins
        self.sample_size = sample_size
        self._generators: dict[torch.device, torch.Generator] = {}

    def parts(self, plan: Plan, grads: Sequence[Tensor | None]) -> list[Tensor]:
        """``[lo, hi, weighted sum, weighted counts (layers x bins), values represented]``, combined."""
        n, bins, dev = len(plan.layer_index), self.bins, plan.device
        x, seg, weight = self._samples(plan, grads)
        lo = torch.full((n,), math.inf, device=dev).scatter_reduce_(0, seg, x, "amin").double()
        hi = torch.full((n,), -math.inf, device=dev).scatter_reduce_(0, seg, x, "amax").double()
        if plan.sharded:  # agree on the bin edges before counting
            all_reduce_(lo, "min", plan.hist_groups)
            all_reduce_(hi, "max", plan.hist_groups)
        width = torch.where(hi > lo, hi - lo, torch.ones((), dtype=torch.float64, device=dev))
        x = x.double()  # a new tensor: the in-place steps below touch no gradient
        position = (x - lo[seg]).div_(width[seg]).mul_(bins).floor_().clamp_(0, bins - 1).long()
        counts = torch.bincount(position.add_(seg * bins), weights=weight, minlength=n * bins)
        total = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, seg, x.mul_(weight))
        represented = sum(s.hist_numel for s in plan.shards)
        tail = torch.cat([total, counts, represented])  # type: ignore[list-item]
        if plan.sharded:
            all_reduce_(tail, "sum", plan.hist_groups)
        return [lo, hi, tail]

    def _samples(self, plan: Plan, grads: Sequence[Tensor | None]) -> tuple[Tensor, Tensor, Tensor]:
        """Every sampled value (non-finite ones as 0), its local layer id and its weight."""
        dev = plan.device
        samples = self._dense_samples(plan, grads)
        segments: list[Tensor] = [s.hist_layer_ids for s in plan.shards]  # type: ignore[misc]
        weights: list[Tensor] = [s.hist_weights for s in plan.shards]  # type: ignore[misc]
        for shard in plan.shards:
            for pos, lid in shard.sparse:
                self._sparse_samples(grads[pos], lid, shard.replicas, dev, (samples, segments, weights))
        seg = torch.cat(segments) if segments else torch.zeros(0, dtype=torch.long, device=dev)
        weight = torch.cat(weights) if weights else torch.zeros(0, dtype=torch.float64, device=dev)
        x = torch.cat(samples) if samples else torch.zeros(0, device=dev)
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), seg, weight

    def _dense_samples(self, plan: Plan, grads: Sequence[Tensor | None]) -> list[Tensor]:
        """Each dense gradient's histogram samples (their layer ids and weights are built once per plan)."""
        dev = plan.device
        gen = self._generator(dev)
        samples: list[Tensor] = []
        for shard in plan.shards:
            for i, _, k in shard.hist_positions:
                flat = grads[i].reshape(-1)  # type: ignore[union-attr]
                if k >= flat.numel():
                    samples.append(flat.to(dev, torch.float32))
                else:
                    idx = torch.randint(flat.numel(), (k,), generator=gen, device=flat.device)
                    samples.append(flat[idx].to(dev, torch.float32))
            if shard.hist_layer_ids is None:
                _sample_layout(shard, grads, dev)
        return samples

    def _sparse_samples(
        self, grad: Tensor | None, lid: int, replicas: int, dev: torch.device, out: tuple[list[Tensor], ...]
    ) -> None:
        """A sparse gradient's histogram samples: its stored values, and its implicit zeros as one weighted zero.

        The number of stored values changes from step to step, so nothing is cached.
        """
        if grad is None or grad.is_complex():
            return
        values = grad.coalesce().values().reshape(-1)
        stored, k = values.numel(), min(values.numel(), self.sample_size)
        if k < stored:
            values = values[torch.randint(stored, (k,), generator=self._generator(values.device), device=values.device)]
        samples, segments, weights = out
        samples.append(torch.cat([values.to(dev, torch.float32), torch.zeros(1, device=dev)]))
        segments.append(torch.full((k + 1,), lid, dtype=torch.long, device=dev))
        weight = torch.full((k + 1,), stored / max(k, 1) / replicas, dtype=torch.float64, device=dev)
        weight[-1] = (grad.numel() - stored) / replicas
        weights.append(weight)

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(SEED)
            self._generators[device] = gen
        return gen

    # ------------------------------------------------------------------ unpacking
    def unpack(
        self, plan: Plan, fields: dict[str, list[float]], grad_norm: list[float], nonfinite: list[int]
    ) -> tuple[LayerHistogram | None, ...]:
        """Each layer's histogram from the transferred fields (``None`` for a layer with no finite values)."""
        bins = self.bins
        lo, hi = fields["hist_lo"], fields["hist_hi"]
        drawn = [0] * len(plan.layer_index)
        for shard in plan.shards:
            for _, lid, k in shard.hist_positions:
                drawn[lid] += k
        # every layer's right bucket edges at once: lo + width * (b + 1) / bins, as the buckets were counted
        lo_t, hi_t = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
        width_t = torch.where(hi_t > lo_t, hi_t - lo_t, torch.zeros((), dtype=torch.float64))
        edges = (lo_t[:, None] + width_t[:, None] * torch.arange(1, bins + 1, dtype=torch.float64) / bins).tolist()
        out: list[LayerHistogram | None] = []
        for k, size in enumerate(round(v) for v in fields["hist_numel"]):
            if not size or nonfinite[k] or not math.isfinite(grad_norm[k]) or not math.isfinite(lo[k]):
                out.append(None)
                continue
            out.append(self._layer(fields, k, size, edges[k], grad_norm[k], drawn[k]))
        return tuple(out)

    def _layer(
        self, fields: dict[str, list[float]], k: int, size: int, edges: list[float], norm: float, drawn: int
    ) -> LayerHistogram:
        """Layer ``k``'s histogram (one bucket when all its values are equal)."""
        bins, lo, hi = self.bins, fields["hist_lo"][k], fields["hist_hi"][k]
        width = (hi - lo) if hi > lo else 0.0
        limits = tuple(edges) if width else (hi,)
        bucket = tuple(fields["hist_counts"][k * bins : (k + 1) * bins]) if width else (float(size),)
        return LayerHistogram(lo, hi, size, fields["hist_sum"][k], norm**2, limits, bucket, drawn)


def _sample_layout(shard: Shard, grads: Sequence[Tensor | None], dev: torch.device) -> None:
    """Build once per plan the layer id and the weight of each dense sample of ``shard``."""
    counts = [k for _, _, k in shard.hist_positions]
    ids = torch.tensor([lid for _, lid, _ in shard.hist_positions], dtype=torch.long)
    weights = torch.tensor(
        [grads[i].numel() / k / shard.replicas for i, _, k in shard.hist_positions],  # type: ignore[union-attr]
        dtype=torch.float64,
    )
    repeats = torch.tensor(counts, dtype=torch.long)
    shard.hist_layer_ids = torch.repeat_interleave(ids, repeats).to(dev)
    shard.hist_weights = torch.repeat_interleave(weights, repeats).to(dev)
