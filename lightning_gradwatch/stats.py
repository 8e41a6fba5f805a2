"""Per-layer gradient statistics in one fused pass, with one device-to-host transfer per step.

Nothing here knows Lightning: a :class:`GradientStats` is built from ``(name, parameter)`` pairs and measures their
``.grad`` whenever :meth:`GradientStats.collect` is called. Sharded gradients (FSDP2 DTensors, FSDP1 slices) are
measured on their local shards and combined across processes: squared norms and counts are summed, maxima and minima
combined, with one collective per kind of combination and shard group, never gathering a full gradient.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from lightning_gradwatch.act.scaling import GradientGroups, scale_gradients_
from lightning_gradwatch.config import MeasureConfig
from lightning_gradwatch.layers import GRANULARITIES, Granularity, LayerMap, layer_name
from lightning_gradwatch.sharding import Groups, all_reduce_, group_size, local, reduce_parts, shard_groups

__all__ = [
    "GRANULARITIES",
    "GradientStats",
    "Granularity",
    "LayerHistogram",
    "Packed",
    "StepStats",
    "histogram_layout",
    "layer_name",
    "step_layout",
    "unpack",
]


@dataclass(frozen=True)
class LayerHistogram:
    """A histogram of one layer's gradient values, ready for TensorBoard's ``HistogramProto``.

    ``bucket_limits`` are right edges; ``bucket_counts`` are estimated counts over the whole layer: each sampled
    value stands for ``size / samples`` values of the tensor it was drawn from.
    """

    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    bucket_limits: tuple[float, ...]
    bucket_counts: tuple[float, ...]
    sample_size: int


@dataclass(frozen=True)
class StepStats:
    """Statistics of one optimizer step. Per-layer tuples are aligned with ``layers``.

    ``layers`` holds the layers that had a gradient this step, in forward (registration) order. Fields other than
    ``grad_norm``, ``total_norm`` and ``numel`` are filled only on steps measured with ``extended=True``
    (``histograms`` and ``mean_abs``, the mean ``|g|``, with ``histograms=True``); ``nonfinite_count`` is exact
    on every step (it is computed only when a norm is not finite). ``numel`` counts the values measured on this
    process until an extended or histogram step combines it across shards.
    """

    layers: tuple[str, ...]
    grad_norm: tuple[float, ...]
    total_norm: float
    numel: tuple[int, ...]
    nonfinite_count: tuple[int, ...]
    param_norm: tuple[float, ...] | None = None
    max_abs: tuple[float, ...] | None = None
    zero_fraction: tuple[float, ...] | None = None
    histograms: tuple[LayerHistogram | None, ...] | None = None
    mean_abs: tuple[float, ...] | None = None
    extra: tuple[float, ...] = ()

    @property
    def finite(self) -> bool:
        """Whether every measured gradient value is finite."""
        return not any(self.nonfinite_count)

    @property
    def nonfinite_layers(self) -> tuple[str, ...]:
        """Layers holding NaN or Inf gradient values."""
        return tuple(n for n, c in zip(self.layers, self.nonfinite_count) if c)

    @property
    def grad_to_weight(self) -> tuple[float, ...] | None:
        """Per-layer ``|grad| / |weight|`` (``inf`` for an all-zero weight with a non-zero gradient)."""
        if self.param_norm is None:
            return None
        return tuple(_ratio(g, w) for g, w in zip(self.grad_norm, self.param_norm))


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


@dataclass
class _Group:
    """Dense tensors of one (device, dtype) in one shard: positions into the parameter list, their local layers."""

    positions: list[int]
    layer_ids: Tensor  # long, on the plan's device
    upcast: bool


@dataclass
class _Shard:
    """Tensors whose local values combine over the same process groups (``()``: whole tensors, nothing to do)."""

    groups: Groups
    dense: list[_Group]
    sparse: list[tuple[int, int]]  # (position, local layer id)
    numel: Tensor  # float64 per local layer: values held here
    hist_positions: list[tuple[int, int, int]]  # (position, local layer id, samples to draw)
    hist_numel: Tensor  # float64 per local layer: dense values the histogram stands for (divided by replicas)
    replicas: int = 1  # copies of these values across the histogram group (unsharded tensors in a sharded plan)
    hist_layer_ids: Tensor | None = None  # per sample, built on first use
    hist_weights: Tensor | None = None
    complex_positions: frozenset[int] = frozenset()


class _ShardSpec:
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

    def build(self, layer_ids: list[int], device: torch.device, sample_size: int, replicas: int) -> _Shard:
        layer_totals = [0] * len(self.numel)
        for _, lid, size in self.hist:
            layer_totals[lid] += size
        hist = []
        for i, lid, size in self.hist:
            samples = size if layer_totals[lid] <= sample_size else sample_size * size / layer_totals[lid]
            hist.append((i, lid, min(size, max(1, round(samples)))))
        dense = [
            _Group(pos, torch.tensor([layer_ids[i] for i in pos], device=device), dtype in _HALF_DTYPES)
            for (_, dtype), pos in self.dense.items()
        ]
        return _Shard(
            groups=self.groups,
            dense=dense,
            sparse=self.sparse,
            numel=torch.tensor(self.numel, dtype=torch.float64, device=device),
            hist_positions=hist,
            hist_numel=torch.tensor(self.hist_numel, dtype=torch.float64, device=device) / replicas,
            replicas=replicas,
            complex_positions=frozenset(self.complex),
        )


_HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class _Plan:
    """How to measure one pattern of present gradients; built once and reused while the pattern holds."""

    layer_index: list[int]  # global layer index of each local (present) layer
    shards: list[_Shard]
    device: torch.device
    plain: bool  # no DTensor and no complex tensor: nothing to unwrap
    sharded: bool
    hist_groups: Groups
    local_numel: list[int]


class GradientStats:
    """Measures gradients of named parameters, grouped into layers.

    Norms are computed with ``torch._foreach_norm`` per (device, dtype) group, in float32 (float64 for float64
    gradients) and combined per layer in float64, so bf16/fp16 gradients neither overflow nor lose precision; a
    tensor of a million values still carries a float32 accumulation error of about 1e-5 (relative). All results of
    one step are concatenated into a single tensor and moved to the host once.

    Complex gradients are measured as pairs of real values (their norms are the complex norms, their max ``|g|`` the
    largest modulus; a complex value counts as two values in sizes and zero fractions).

    Histograms are estimated from a uniform random sample of at most ``histogram_sample_size`` values per layer
    (exact when the layer is smaller), drawn with a private random generator so the training run's own random
    stream is untouched; each sampled value is weighted by how many values of its tensor it stands for. Sampling
    keeps the cost bounded on huge layers while showing the same shape. With sharded gradients every process
    samples its own shards; the bin edges are agreed first (one min/max reduction), then the weighted counts are
    summed.

    Args:
        named_parameters: ``(name, parameter)`` pairs to watch, in forward order.
        granularity: ``"module"`` groups parameters by owning module, ``"parameter"`` keeps each on its own.
        include: regular expression; only parameters whose full name matches (``re.search``) are watched.
        exclude: regular expression; parameters whose full name matches are not watched.
        histogram_bins: buckets per histogram.
        histogram_sample_size: values sampled per layer for its histogram.
        max_layers: when there are more layers than this, layers are merged by name prefix (``encoder.layers.3``
            instead of its submodules), one level at a time, until at most this many remain; numbered siblings
            (``layers.0`` ... ``layers.499``) are merged into runs (``layers.0-1``) rather than into their parent
            when the parent alone would be far too coarse. ``aggregated`` then says how.
            ``None`` (the default here): every layer is kept; ``GradWatch`` passes its ``max_layers`` (256 unless
            given).
        plain_group: the process group over which plain (non-DTensor) gradients are sharded, as FSDP1 with
            ``use_orig_params=True`` shards them; ``None`` when plain gradients are whole (single process, DDP).
            Parameters that require a gradient then count as present on every process, so all processes take part
            in the same collectives.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> model(torch.randn(16, 4)).sum().backward()
        >>> stats = GradientStats(model.named_parameters())
        >>> stats.layer_names
        ('0', '2')
        >>> step = stats.collect()
        >>> step.layers, step.finite
        (('0', '2'), True)
        >>> ref = torch.cat([p.grad.flatten() for p in model.parameters()]).double().norm().item()
        >>> abs(step.total_norm - ref) / ref < 1e-6
        True
    """

    def __init__(
        self,
        named_parameters: Iterable[tuple[str, Tensor]],
        granularity: Granularity = "module",
        include: str | None = None,
        exclude: str | None = None,
        histogram_bins: int = MeasureConfig.histogram_bins,
        histogram_sample_size: int = MeasureConfig.histogram_sample_size,
        max_layers: int | None = None,
        plain_group: Any = None,
    ) -> None:
        layers = LayerMap.build(named_parameters, granularity, include, exclude, max_layers)
        self.param_names = layers.param_names
        self.params = layers.params
        self.layer_names = layers.layer_names
        self.aggregated = layers.aggregated
        self._layer_of = layers.layer_of
        self.histogram_bins = int(histogram_bins)
        self.histogram_sample_size = int(histogram_sample_size)
        self.plain_group = plain_group
        self.sharded = plain_group is not None or any(shard_groups(p) for p in self.params)
        self._plans: dict[tuple[bool, ...], _Plan] = {}
        self._full_plan: _Plan | None = None
        self._generators: dict[torch.device, torch.Generator] = {}

    def __len__(self) -> int:
        return len(self.params)

    def layers_made_of(self, param_ids: Collection[int]) -> frozenset[str]:
        """Layers whose every parameter is one of ``param_ids`` (by ``id``).

        Example:
            >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
            >>> GradientStats(model.named_parameters()).layers_made_of({id(p) for p in model[1].parameters()})
            frozenset({'1'})
        """
        mixed = {self._layer_of[i] for i, p in enumerate(self.params) if id(p) not in param_ids}
        return frozenset(name for k, name in enumerate(self.layer_names) if k not in mixed)

    # ------------------------------------------------------------------ planning
    def _grads(self) -> list[Tensor | None]:
        grads = [p.grad for p in self.params]
        if self.plain_group is not None:  # FSDP1: a process holding none of a parameter has no gradient for it
            grads = [p.new_zeros(0) if g is None and p.requires_grad else g for p, g in zip(self.params, grads)]
        return grads

    def _plan_for(self, grads: Sequence[Tensor | None]) -> _Plan | None:
        # the common case, every gradient present, is recognised without building a key (`None in grads` would
        # compare tensors with ==, which is slow)
        if self._full_plan is not None and not any(g is None for g in grads):
            return self._full_plan
        key = tuple(g is not None for g in grads)
        plan = self._plans.get(key)
        if plan is None:
            if not any(key):
                return None
            plan = self._build_plan(grads)
            if len(self._plans) > 64:  # patterns of unused layers could grow without bound
                self._plans.clear()
            self._plans[key] = plan
            if all(key):
                self._full_plan = plan
        return plan

    def _build_plan(self, grads: Sequence[Tensor | None]) -> _Plan:
        present = sorted({self._layer_of[i] for i, g in enumerate(grads) if g is not None})
        local_id = {layer: k for k, layer in enumerate(present)}
        layer_ids = [local_id.get(layer, -1) for layer in self._layer_of]
        device = next(local(g).device for g in grads if g is not None)
        specs, local_numel, plain = self._shard_specs(grads, layer_ids, len(present))
        sharded = any(spec.groups for spec in specs)
        hist_groups = next((spec.groups for spec in specs if spec.groups), ())
        replicas_of_whole = group_size(hist_groups) if sharded else 1
        shards = [
            spec.build(layer_ids, device, self.histogram_sample_size, 1 if spec.groups else replicas_of_whole)
            for spec in specs
        ]
        return _Plan(present, shards, device, plain, sharded, hist_groups, local_numel)

    def _shard_specs(
        self, grads: Sequence[Tensor | None], layer_ids: list[int], layers: int
    ) -> tuple[list[_ShardSpec], list[int], bool]:
        """Present gradients sorted by the process groups they combine over; local sizes; whether all are plain."""
        specs: dict[tuple[int, ...], _ShardSpec] = {}
        local_numel = [0] * layers
        plain = True
        for i, g in enumerate(grads):
            if g is None:
                continue
            local_g = local(g)
            plain = plain and local_g is g
            groups = shard_groups(g, self.plain_group)
            spec = specs.setdefault(tuple(id(x) for x in groups), _ShardSpec(groups, layers))
            spec.add(i, layer_ids[i], local_g, g.is_complex())
            local_numel[layer_ids[i]] += local_g.numel()
        return list(specs.values()), local_numel, plain

    # ------------------------------------------------------------------ measuring
    @torch.no_grad()
    def collect(
        self, extended: bool = False, histograms: bool = False, extra: Sequence[Tensor] = ()
    ) -> StepStats | None:
        """Measure the current gradients; ``None`` when no watched parameter has a gradient.

        With sharded gradients every process must call this at the same steps with the same arguments: it runs
        collectives.

        Args:
            extended: also measure parameter norms, max ``|g|`` and the fraction of exact zeros.
            histograms: also build one histogram per layer (and the mean ``|g|``).
            extra: one-element tensors (such as the last loss) to bring to the host in the same transfer; their
                values come back in ``StepStats.extra``. They are not combined across processes.
        """
        grads = self._grads()
        plan = self._plan_for(grads)
        if plan is None:
            return None
        if not plan.plain:
            grads = [None if g is None else local(g) for g in grads]
        params = self.params if plan.plain else [local(p.detach()) for p in self.params]
        layout = step_layout(extended, histograms)
        parts: list[Tensor] | None = None
        for shard in plan.shards:
            measured = self._shard_parts(plan, shard, grads, params, extended, histograms)
            reduced = reduce_parts([(measured[f.name], f.op) for f in layout], shard.groups)
            parts = reduced if parts is None else [_combine(a, b, f.op) for a, b, f in zip(parts, reduced, layout)]
        assert parts is not None
        if histograms:
            parts += self._histogram_parts(plan, grads)
            layout += histogram_layout(self.histogram_bins)
        values = _to_host(parts + [e.detach().reshape(1).to(plan.device, torch.float64) for e in extra])
        stats = self._unpack(plan, grads, unpack(layout, values, len(plan.layer_index)))
        return replace(stats, extra=tuple(values[len(values) - len(extra) :])) if extra else stats

    def gradient_groups(self) -> GradientGroups | None:
        """The present gradients in the (device, dtype) groups :meth:`collect` measured them in, for in-place scaling.

        ``None`` unless every watched gradient is present, plain and unsharded (as at the last full measurement): then
        a generic path must look at each tensor.
        """
        plan = self._full_plan
        grads = [p.grad for p in self.params]
        if plan is None or not plan.plain or plan.sharded or any(g is None for g in grads):
            return None
        dense = [[grads[i] for i in group.positions] for shard in plan.shards for group in shard.dense]
        sparse = [grads[pos] for shard in plan.shards for pos, _ in shard.sparse]
        return GradientGroups(dense, sparse)  # type: ignore[arg-type]

    def scale_(self, coefficient: float) -> None:
        """Multiply every gradient in place by ``coefficient``, in the groups :meth:`collect` uses.

        The measuring primitive used alone (as the clipping benchmarks do); the engine scales through
        :func:`~lightning_gradwatch.act.act`, with the same :func:`~lightning_gradwatch.act.scale_gradients_`.

        Example:
            >>> lin = torch.nn.Linear(2, 2)
            >>> lin(torch.ones(1, 2)).sum().backward()
            >>> stats = GradientStats(lin.named_parameters())
            >>> before = stats.collect().total_norm
            >>> stats.scale_(0.5)
            >>> round(stats.collect().total_norm / before, 6)
            0.5
        """
        scale_gradients_(self.params, coefficient, self.gradient_groups())

    def _shard_parts(
        self,
        plan: _Plan,
        shard: _Shard,
        grads: Sequence[Tensor | None],
        params: Sequence[Tensor],
        extended: bool,
        histograms: bool,
    ) -> dict[str, Tensor]:
        """This shard's per-layer partial results, by packed field name (see :func:`step_layout`)."""
        n, dev = len(plan.layer_index), plan.device

        def zeros() -> Tensor:
            return torch.zeros(n, dtype=torch.float64, device=dev)

        parts = {"grad_sq": zeros()}
        _accumulate_norms(shard, grads, parts["grad_sq"], ord=2)
        if extended:
            parts.update(param_sq=zeros(), nonzero=zeros(), max_abs=zeros())
            _accumulate_norms(shard, params, parts["param_sq"], ord=2)
            _accumulate_counts(shard, grads, parts["nonzero"], parts["max_abs"])
        if extended or histograms:
            parts["numel"] = shard.numel.clone()
        if histograms:
            parts["l1"] = zeros()
            _accumulate_norms(shard, grads, parts["l1"], ord=1)
        return parts

    def _histogram_parts(self, plan: _Plan, grads: Sequence[Tensor | None]) -> list[Tensor]:
        """``[lo, hi, weighted sum, weighted counts (layers x bins), values represented]``, combined."""
        n, bins, dev = len(plan.layer_index), self.histogram_bins, plan.device
        samples = self._dense_samples(plan, grads)
        segments: list[Tensor] = [s.hist_layer_ids for s in plan.shards]  # type: ignore[misc]
        weights: list[Tensor] = [s.hist_weights for s in plan.shards]  # type: ignore[misc]
        for shard in plan.shards:
            for pos, lid in shard.sparse:
                self._sparse_samples(grads[pos], lid, shard.replicas, dev, (samples, segments, weights))
        seg = torch.cat(segments) if segments else torch.zeros(0, dtype=torch.long, device=dev)
        weight = torch.cat(weights) if weights else torch.zeros(0, dtype=torch.float64, device=dev)
        x = torch.cat(samples) if samples else torch.zeros(0, device=dev)
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
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

    def _dense_samples(self, plan: _Plan, grads: Sequence[Tensor | None]) -> list[Tensor]:
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
                counts = [k for _, _, k in shard.hist_positions]
                ids = torch.tensor([lid for _, lid, _ in shard.hist_positions], dtype=torch.long)
                weights = torch.tensor(
                    [grads[i].numel() / k / shard.replicas for i, _, k in shard.hist_positions],  # type: ignore[union-attr]
                    dtype=torch.float64,
                )
                repeats = torch.tensor(counts, dtype=torch.long)
                shard.hist_layer_ids = torch.repeat_interleave(ids, repeats).to(dev)
                shard.hist_weights = torch.repeat_interleave(weights, repeats).to(dev)
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
        stored, k = values.numel(), min(values.numel(), self.histogram_sample_size)
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
            gen.manual_seed(0x6772616477)
            self._generators[device] = gen
        return gen

    # ------------------------------------------------------------------ unpacking
    def _unpack(self, plan: _Plan, grads: Sequence[Tensor | None], fields: dict[str, list[float]]) -> StepStats:
        names = tuple(self.layer_names[i] for i in plan.layer_index)
        grad_norm, nonfinite, total_norm = self._norms(plan, grads, fields["grad_sq"])
        numel = tuple(round(v) for v in fields["numel"]) if "numel" in fields else tuple(plan.local_numel)
        param_norm = max_abs = zero_fraction = mean_abs = hists = None
        if "param_sq" in fields:
            param_norm = tuple(math.sqrt(max(v, 0.0)) for v in fields["param_sq"])
            param_norm = self._exact_param_norms(plan, param_norm)
            max_abs = tuple(fields["max_abs"])
            zero_fraction = tuple((1.0 - nz / size) if size else 0.0 for nz, size in zip(fields["nonzero"], numel))
        if "l1" in fields:
            mean_abs = tuple(v / size if size else 0.0 for v, size in zip(fields["l1"], numel))
            hists = self._unpack_histograms(plan, fields, grad_norm, nonfinite)
        return StepStats(
            layers=names,
            grad_norm=tuple(grad_norm),
            total_norm=total_norm,
            numel=numel,
            nonfinite_count=tuple(nonfinite),
            param_norm=param_norm,
            max_abs=max_abs,
            zero_fraction=zero_fraction,
            histograms=hists,
            mean_abs=mean_abs,
        )

    def _norms(
        self, plan: _Plan, grads: Sequence[Tensor | None], sq: list[float]
    ) -> tuple[list[float], list[int], float]:
        """Per-layer norms, non-finite counts and the total norm, from the squared norms."""
        nonfinite = [0] * len(sq)
        total_sq = math.fsum(sq)
        if math.isfinite(total_sq) and total_sq >= 0:  # the common case: one check for all layers
            return [math.sqrt(v) for v in sq], nonfinite, math.sqrt(total_sq)
        grad_norm = [math.sqrt(v) if v >= 0 else math.nan for v in sq]
        grad_norm, nonfinite = self._exact_nonfinite(plan, grads, grad_norm)
        total_sq = math.fsum(v * v for v in grad_norm) if all(map(math.isfinite, grad_norm)) else math.nan
        if any(math.isinf(v) for v in grad_norm) and not any(math.isnan(v) for v in grad_norm):
            total_sq = math.inf
        return grad_norm, nonfinite, math.sqrt(total_sq) if total_sq == total_sq else math.nan

    def _exact_param_norms(self, plan: _Plan, norms: tuple[float, ...]) -> tuple[float, ...]:
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
            for i in _positions(shard):
                lid = local_id[self._layer_of[i]]
                if lid in bad:
                    t = local(self.params[i].detach())
                    s[lid] += torch.linalg.vector_norm(t, dtype=torch.float64).to(s.device) ** 2
            (s,) = reduce_parts([(s, "sum")], shard.groups)
            sq += s
        exact = sq.cpu().tolist()
        return tuple(math.sqrt(exact[k]) if k in bad else v for k, v in enumerate(norms))

    def _exact_nonfinite(
        self, plan: _Plan, grads: Sequence[Tensor | None], grad_norm: list[float]
    ) -> tuple[list[float], list[int]]:
        """Rare path: a layer norm is not finite. Count NaN/Inf exactly; recompute overflowed norms in float64.

        Every process reaches it together (the norms it starts from are already combined), so its collectives line
        up.
        """
        n = len(plan.layer_index)
        local_id = {layer: k for k, layer in enumerate(plan.layer_index)}
        bad = {k for k, v in enumerate(grad_norm) if not math.isfinite(v)}
        counts = torch.zeros(n, dtype=torch.float64, device=plan.device)
        sq = torch.zeros(n, dtype=torch.float64, device=plan.device)
        for shard in plan.shards:
            c = torch.zeros(n, dtype=torch.float64, device=plan.device)
            s = torch.zeros(n, dtype=torch.float64, device=plan.device)
            for i in _positions(shard):
                lid = local_id[self._layer_of[i]]
                if lid not in bad:
                    continue
                t = grads[i]
                assert t is not None
                t = t.coalesce().values() if t.layout != torch.strided else t
                c[lid] += (~torch.isfinite(t)).sum().to(c.device, torch.float64)
                s[lid] += torch.linalg.vector_norm(t, dtype=torch.float64).to(s.device) ** 2
            c, s = reduce_parts([(c, "sum"), (s, "sum")], shard.groups)
            counts += c
            sq += s
        counts_list, sq_list = counts.cpu().tolist(), sq.cpu().tolist()
        out_norm = list(grad_norm)
        out_counts = [0] * n
        for k in bad:
            out_counts[k] = int(counts_list[k])
            out_norm[k] = math.sqrt(sq_list[k]) if out_counts[k] == 0 else math.nan
            if out_counts[k] and math.isinf(grad_norm[k]) and not math.isnan(sq_list[k]):
                out_norm[k] = math.inf
        return out_norm, out_counts

    def _unpack_histograms(
        self, plan: _Plan, fields: dict[str, list[float]], grad_norm: list[float], nonfinite: list[int]
    ) -> tuple[LayerHistogram | None, ...]:
        bins = self.histogram_bins
        lo, hi, counts, represented = fields["hist_lo"], fields["hist_hi"], fields["hist_counts"], fields["hist_numel"]
        drawn = [0] * len(plan.layer_index)
        for shard in plan.shards:
            for _, lid, k in shard.hist_positions:
                drawn[lid] += k
        # every layer's right bucket edges at once: lo + width * (b + 1) / bins, as the buckets were counted
        lo_t, hi_t = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
        width_t = torch.where(hi_t > lo_t, hi_t - lo_t, torch.zeros((), dtype=torch.float64))
        edges = (lo_t[:, None] + width_t[:, None] * torch.arange(1, bins + 1, dtype=torch.float64) / bins).tolist()
        out: list[LayerHistogram | None] = []
        for k, size in enumerate(round(v) for v in represented):
            if not size or nonfinite[k] or not math.isfinite(grad_norm[k]) or not math.isfinite(lo[k]):
                out.append(None)
                continue
            width = (hi[k] - lo[k]) if hi[k] > lo[k] else 0.0
            limits = tuple(edges[k]) if width else (hi[k],)
            bucket = tuple(counts[k * bins : (k + 1) * bins]) if width else (float(size),)
            out.append(
                LayerHistogram(lo[k], hi[k], size, fields["hist_sum"][k], grad_norm[k] ** 2, limits, bucket, drawn[k])
            )
        return tuple(out)


@dataclass(frozen=True)
class Packed:
    """One field of a step's packed statistics: per-layer values that travel in the step's single transfer.

    Attributes:
        name: the field's name (the key :func:`unpack` returns it under).
        op: how partial values from several processes combine: ``"sum"``, ``"max"`` or ``"min"``.
        width: values per layer (``histogram_bins`` for the bucket counts, else 1).
    """

    name: str
    op: str = "sum"
    width: int = 1


def step_layout(extended: bool, histograms: bool) -> tuple[Packed, ...]:
    """The packed per-layer statistics of a step, in transfer order (the histogram tail comes after these)."""
    layout = [Packed("grad_sq")]
    if extended:
        layout += [Packed("param_sq"), Packed("nonzero"), Packed("max_abs", "max")]
    if extended or histograms:
        layout.append(Packed("numel"))
    if histograms:
        layout.append(Packed("l1"))
    return tuple(layout)


def histogram_layout(bins: int) -> tuple[Packed, ...]:
    """The histogram tail: agreed bin edges first, then sums and weighted counts (two phases when sharded)."""
    return (
        Packed("hist_lo", "min"),
        Packed("hist_hi", "max"),
        Packed("hist_sum"),
        Packed("hist_counts", width=bins),
        Packed("hist_numel"),
    )


def unpack(layout: Sequence[Packed], values: Sequence[float], layers: int) -> dict[str, list[float]]:
    """Split a step's transferred values into its fields (values past the layout are left out).

    Example:
        >>> unpack(step_layout(False, False) + histogram_layout(2), [4.0, 0.0, 1.0, 2.0, 5.0, 6.0, 4.0, 9.0], 1)
        {'grad_sq': [4.0], 'hist_lo': [0.0], 'hist_hi': [1.0], 'hist_sum': [2.0], 'hist_counts': [5.0, 6.0], \
'hist_numel': [4.0]}
    """
    out, offset = {}, 0
    for field in layout:
        width = field.width * layers
        out[field.name] = list(values[offset : offset + width])
        offset += width
    return out


def _to_host(parts: list[Tensor]) -> list[float]:
    """The step's one device-to-host transfer."""
    return torch.cat(parts).cpu().tolist() if len(parts) > 1 else parts[0].cpu().tolist()


def _positions(shard: _Shard) -> list[int]:
    return [i for g in shard.dense for i in g.positions] + [i for i, _ in shard.sparse]


def _combine(a: Tensor, b: Tensor, op: str) -> Tensor:
    if op == "sum":
        return a + b
    return torch.maximum(a, b) if op == "max" else torch.minimum(a, b)


def _accumulate_norms(shard: _Shard, tensors: Sequence[Tensor | None], out: Tensor, ord: int) -> None:
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


def _accumulate_counts(shard: _Shard, grads: Sequence[Tensor | None], nonzero: Tensor, max_abs: Tensor) -> None:
    """Add each gradient's number of non-zero values, and take its max ``|g|``, into its layer's entries."""
    for group in shard.dense:
        ts = [grads[i] for i in group.positions]
        counts = torch._foreach_norm(ts, 0)  # number of non-zero values per tensor
        nonzero.index_add_(0, group.layer_ids, torch.stack(counts).to(nonzero.device, torch.float64))
        if shard.complex_positions:  # max |g| of a complex value is its modulus, not its largest part
            ts = [_modulus(t) if i in shard.complex_positions else t for i, t in zip(group.positions, ts)]
        peaks = _abs_max_each(ts).to(device=max_abs.device, dtype=torch.float64)  # type: ignore[arg-type]
        max_abs.scatter_reduce_(0, group.layer_ids, peaks, "amax")
    for pos, lid in shard.sparse:
        g = grads[pos]
        assert g is not None
        values = g.coalesce().values()
        nonzero[lid] += torch.count_nonzero(values).to(nonzero.device, torch.float64)
        if values.numel():
            peak = values.abs().max().to(max_abs.device, torch.float64)
            max_abs[lid] = torch.maximum(max_abs[lid], peak)


def _modulus(pairs: Tensor) -> Tensor:
    """``|z|`` of complex values seen as ``(..., 2)`` real pairs."""
    return torch.linalg.vector_norm(pairs, dim=-1) if pairs.numel() else pairs.reshape(-1)


def _abs_max_each(ts: list[Tensor]) -> Tensor:
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
