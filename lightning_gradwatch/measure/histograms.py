"""Per-layer gradient histograms, estimated from a uniform random sample of each layer's values.

At most ``histogram_sample_size`` values are drawn per layer (all of them for a smaller layer), with a private random
generator so the training run's own random stream is untouched; each sampled value is weighted by how many values
of its tensor it stands for. Two histograms come from the same samples: one of the values (the shape and sign of
the update) and one of their magnitudes, ``log10 |g|``, whose axis says in decades how small a layer's gradients
are (exact zeros have no logarithm and are left out of it). With sharded gradients every process samples its own
shards; the bin edges of both are agreed first (one min/max reduction each, shared by both), then the weighted
counts are summed. Everything is binned on the gradients' device and travels with the step's other statistics in
its one transfer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import compress
from operator import add

import torch
from torch import Tensor

from lightning_gradwatch.measure.plan import Plan, Shard
from lightning_gradwatch.measure.records import LayerHistogram
from lightning_gradwatch.measure.sharding import all_reduce_

__all__ = ["LOG10_BINS", "SEED", "HistogramSampler", "log10_bins"]

#: the seed of the sampling generator (one per device): the same samples in every run, and none taken from the run's
SEED = 0x6772616477
#: buckets of a histogram of log10 |g| at most: over the 4 to 6 decades a layer's sampled values span, about 0.2
#: decades each (TensorBoard draws 30), in far fewer bytes than the values' 64 (event files are written at about
#: 10 MB/s, their checksums computed in Python)
LOG10_BINS = 24


def log10_bins(bins: int) -> int:
    """Buckets of the histograms of ``log10 |g|`` beside histograms of ``bins`` buckets.

    Example:
        >>> log10_bins(64), log10_bins(8)
        (24, 8)
    """
    return min(bins, LOG10_BINS)


class HistogramSampler:
    """Samples, bins and unpacks the histograms of one plan's layers.

    Args:
        bins: buckets per histogram.
        sample_size: values sampled per layer.
    """

    def __init__(self, bins: int, sample_size: int) -> None:
        self.bins = bins
        self.log_bins = log10_bins(bins)
        self.sample_size = sample_size
        self._generators: dict[torch.device, torch.Generator] = {}
        self._moment_weights: dict[torch.device, Tensor] = {}

    def parts(self, plan: Plan, grads: Sequence[Tensor | None]) -> list[Tensor]:
        """``[lows, hi, tail]``, combined over the histogram group.

        ``lows`` holds each layer's smallest value, then its smallest ``log10 |g|`` over the non-zero values: the
        magnitudes' range runs from there to ``log10 max(|lo|, |hi|)`` and needs no reduction of its own. The tail
        is ``[weighted sum, weighted counts (layers x bins), weighted counts of log10 |g| (layers x (1 + log_bins): the
        exact zeros, which have no logarithm, first), their count and first two moments in buckets, values
        represented]``.
        """
        n, bins, log_bins, dev = len(plan.layer_index), self.bins, self.log_bins, plan.device
        extremes: list[tuple[int, Tensor]] = []
        x, seg, weight = self._samples(plan, grads, extremes)
        decades = x.abs().log10_()  # log10 |g| in float32 (decades need no more); -inf at the exact zeros
        lows = torch.full((2 * n,), math.inf, device=dev)
        lows[:n].scatter_reduce_(0, seg, x, "amin")
        lows[n:].scatter_reduce_(0, seg, decades.nan_to_num(neginf=math.inf), "amin")
        hi = torch.full((n,), -math.inf, device=dev).scatter_reduce_(0, seg, x, "amax")
        ids = ends = None
        if extremes:  # a sampled tensor's own min and max: the histogram's range is exact, not the sample's
            ids = torch.tensor([lid for lid, _ in extremes], dtype=torch.long, device=dev)
            ends = torch.stack([e for _, e in extremes]).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            lows[:n].scatter_reduce_(0, ids, ends[:, 0].float(), "amin")
            hi.scatter_reduce_(0, ids, ends[:, 1].float(), "amax")
        lows, hi = lows.double(), hi.double()
        if plan.sharded:  # agree on the bin edges before counting
            all_reduce_(lows, "min", plan.hist_groups)
            all_reduce_(hi, "max", plan.hist_groups)
        lo, log_lo = lows[:n], lows[n:]
        one = torch.ones((), dtype=torch.float64, device=dev)
        width = torch.where(hi > lo, hi - lo, one)
        x = x.double()  # a new tensor: the in-place steps below touch no gradient
        total = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, seg, x * weight)
        if ids is not None and ends is not None:  # ... and its exact sum, for the estimate its samples gave
            total.index_add_(0, ids, ends[:, 2])
        position = x.sub_(lo.index_select(0, seg)).div_(width.index_select(0, seg)).mul_(bins)
        position = position.floor_().clamp_(0, bins - 1).long().add_(seg, alpha=bins)
        counts = torch.bincount(position, weights=weight, minlength=n * bins)
        # every non-zero value is at or above log_lo (the smallest of them, exactly): buckets 1 ... bins; the exact
        # zeros (-inf) alone fall below, into bucket 0
        log_hi = torch.maximum(lo.abs(), hi.abs()).log10()
        scale = (log_bins / torch.where(log_hi > log_lo, log_hi - log_lo, one)).float()
        decades.sub_(log_lo.float().index_select(0, seg)).mul_(scale.index_select(0, seg))
        bucket = decades.floor_().clamp_(-1, log_bins - 1).long().add_(seg, alpha=log_bins + 1).add_(1)
        log_counts = torch.bincount(bucket, weights=weight, minlength=n * (log_bins + 1))
        moments = log_counts.view(n, log_bins + 1)[:, 1:] @ self._moments(dev)  # per layer: count, sums of b + 1/2
        represented = sum(s.hist_numel for s in plan.shards)
        tail = torch.cat([total, counts, log_counts, moments.T.reshape(-1), represented])  # type: ignore[list-item]
        if plan.sharded:
            all_reduce_(tail, "sum", plan.hist_groups)
        return [lows, hi, tail]

    def _moments(self, device: torch.device) -> Tensor:
        """``(log_bins, 3)``: 1, the bucket's centre ``b + 1/2`` and its square, in bucket widths (built once)."""
        weights = self._moment_weights.get(device)
        if weights is None:
            centre = torch.arange(self.log_bins, dtype=torch.float64, device=device).add_(0.5)
            weights = self._moment_weights[device] = torch.stack([torch.ones_like(centre), centre, centre * centre], 1)
        return weights

    def _samples(
        self, plan: Plan, grads: Sequence[Tensor | None], extremes: list[tuple[int, Tensor]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Every sampled value (non-finite ones as 0), its local layer id and its weight.

        ``extremes`` receives ``(layer id, [min, max, sum - estimate])`` of every tensor whose values were sampled,
        not all taken: its exact range, and what makes its weighted samples' sum exact (in float64).
        """
        dev = plan.device
        samples = self._dense_samples(plan, grads, extremes)
        segments: list[Tensor] = [s.hist_layer_ids for s in plan.shards]  # type: ignore[misc]
        weights: list[Tensor] = [s.hist_weights for s in plan.shards]  # type: ignore[misc]
        for shard in plan.shards:
            for pos, lid in shard.sparse:
                self._sparse_samples(grads[pos], lid, shard.replicas, dev, (samples, segments, weights), extremes)
        seg = torch.cat(segments) if segments else torch.zeros(0, dtype=torch.long, device=dev)
        weight = torch.cat(weights) if weights else torch.zeros(0, dtype=torch.float64, device=dev)
        x = torch.cat(samples) if samples else torch.zeros(0, device=dev)
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), seg, weight

    def _dense_samples(
        self, plan: Plan, grads: Sequence[Tensor | None], extremes: list[tuple[int, Tensor]]
    ) -> list[Tensor]:
        """Each dense gradient's histogram samples (their layer ids and weights are built once per plan)."""
        dev = plan.device
        gen = self._generator(dev)
        samples: list[Tensor] = []
        for shard in plan.shards:
            for i, lid, k in shard.hist_positions:
                flat = grads[i].reshape(-1)  # type: ignore[union-attr]
                if k >= flat.numel():
                    samples.append(flat.to(dev, torch.float32))
                else:
                    idx = torch.randint(flat.numel(), (k,), generator=gen, device=flat.device)
                    drawn = flat[idx].to(dev, torch.float32)
                    samples.append(drawn)
                    extremes.append((lid, _exact(flat, drawn, flat.numel() / k, shard.replicas, dev)))
            if shard.hist_layer_ids is None:
                _sample_layout(shard, grads, dev)
        return samples

    def _sparse_samples(
        self,
        grad: Tensor | None,
        lid: int,
        replicas: int,
        dev: torch.device,
        out: tuple[list[Tensor], ...],
        extremes: list[tuple[int, Tensor]],
    ) -> None:
        """A sparse gradient's histogram samples: its stored values, and its implicit zeros as one weighted zero.

        The number of stored values changes from step to step, so nothing is cached.
        """
        if grad is None or grad.is_complex():
            return
        values = grad.coalesce().values().reshape(-1)
        stored, k = values.numel(), min(values.numel(), self.sample_size)
        if k < stored:
            every = values
            values = values[torch.randint(stored, (k,), generator=self._generator(values.device), device=values.device)]
            extremes.append((lid, _exact(every, values, stored / k, replicas, dev)))
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
    ) -> tuple[tuple[LayerHistogram | None, ...], tuple[LayerHistogram | None, ...]]:
        """Each layer's histogram of values and of ``log10 |g|`` from the transferred fields.

        A layer with no finite values has neither (``None``); a layer whose sampled values are all exact zeros has
        no histogram of magnitudes.
        """
        bins, log_bins = self.bins, self.log_bins
        lo, hi, log_lo = fields["hist_lo"], fields["hist_hi"], fields["hist_log_lo"]
        log_hi = [math.log10(m) if m > 0 else -math.inf for m in map(max, map(abs, lo), map(abs, hi))]
        drawn = _drawn_per_layer(plan)
        edges, log_edges = _right_edges(lo, hi, bins), _right_edges(log_lo, log_hi, log_bins)
        counts, log_counts = fields["hist_counts"], fields["hist_log_counts"]
        values: list[LayerHistogram | None] = []
        magnitudes: list[LayerHistogram | None] = []
        for k, size in enumerate(round(v) for v in fields["hist_numel"]):
            if not size or nonfinite[k] or not math.isfinite(grad_norm[k]) or not math.isfinite(lo[k]):
                values.append(None)
                magnitudes.append(None)
                continue
            sums = (fields["hist_sum"][k], grad_norm[k] ** 2)
            values.append(_histogram(lo[k], hi[k], size, edges[k], counts[k * bins : (k + 1) * bins], drawn[k], sums))
            nonzero = round(fields["hist_log_num"][k])
            if nonzero <= 0 or not math.isfinite(log_lo[k]):
                magnitudes.append(None)
                continue
            bucket = log_counts[k * (log_bins + 1) + 1 : (k + 1) * (log_bins + 1)]  # after the exact zeros' count
            moments = (fields["hist_log_num"][k], fields["hist_log_m1"][k], fields["hist_log_m2"][k])
            sums = _sums(log_lo[k], log_hi[k], log_bins, *moments)
            magnitudes.append(_histogram(log_lo[k], log_hi[k], nonzero, log_edges[k], bucket, drawn[k], sums))
        return tuple(values), tuple(magnitudes)


def _exact(values: Tensor, drawn: Tensor, weight: float, replicas: int, dev: torch.device) -> Tensor:
    """``[min, max, sum - estimate]`` of a sampled tensor's ``values`` (float64, on ``dev``).

    The estimate is what its ``drawn`` samples, each of ``weight``, add to the histogram's sum; both are divided
    by ``replicas``, as the samples' weights are (the processes' sums are added).
    """
    low, high = values.aminmax()
    exact = values.sum(dtype=torch.float64) - drawn.nan_to_num(0.0, 0.0, 0.0).sum(dtype=torch.float64) * weight
    return torch.stack([low.double(), high.double(), exact / replicas]).to(dev)


def _drawn_per_layer(plan: Plan) -> list[int]:
    """How many values each layer's histogram sample drew, over all its shards."""
    drawn = [0] * len(plan.layer_index)
    for shard in plan.shards:
        for _, lid, k in shard.hist_positions:
            drawn[lid] += k
    return drawn


def _histogram(
    lo: float,
    hi: float,
    size: int,
    edges: list[float],
    bucket: list[float],
    drawn: int,
    sums: tuple[float, float],
) -> LayerHistogram:
    """One histogram (one bucket when all its values are equal).

    Each run of empty buckets becomes one, ending where the run ends: the same distribution in fewer bytes (event
    files are written at about 10 MB/s, their checksums computed in Python).

    Example:
        >>> _histogram(0.0, 4.0, 3, [1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 0.0, 2.0], 3, (7.0, 19.0))
        LayerHistogram(min=0.0, max=4.0, num=3, sum=7.0, sum_squares=19.0, bucket_limits=(1.0, 3.0, 4.0), \
bucket_counts=(1.0, 0.0, 2.0), sample_size=3)
    """
    if not hi > lo:
        return LayerHistogram(lo, hi, size, sums[0], sums[1], (hi,), (float(size),), drawn)
    if 0.0 in bucket:  # keep a bucket that holds values or ends a run (counts are not negative: a sum tells)
        keep = list(map(add, bucket, [*bucket[1:], 1.0]))
        return LayerHistogram(
            lo, hi, size, sums[0], sums[1], tuple(compress(edges, keep)), tuple(compress(bucket, keep)), drawn
        )
    return LayerHistogram(lo, hi, size, sums[0], sums[1], tuple(edges), tuple(bucket), drawn)


def _sums(lo: float, hi: float, bins: int, count: float, m1: float, m2: float) -> tuple[float, float]:
    """The sum and the sum of squares of binned values, each taken at its bucket's centre.

    ``m1`` and ``m2`` are the sums of ``b + 1/2`` and of its square over the values' buckets ``b``.
    """
    if not hi > lo:
        return count * hi, count * hi * hi
    step = (hi - lo) / bins
    return count * lo + step * m1, count * lo * lo + 2 * lo * step * m1 + step * step * m2


def _right_edges(lo: list[float], hi: list[float], bins: int) -> list[list[float]]:
    """Every row's right bucket edges at once: ``lo + width * (b + 1) / bins``, as the buckets were counted."""
    lo_t, hi_t = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    width_t = torch.where(hi_t > lo_t, hi_t - lo_t, torch.zeros((), dtype=torch.float64))
    return (lo_t[:, None] + width_t[:, None] * torch.arange(1, bins + 1, dtype=torch.float64) / bins).tolist()


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
