"""Per-layer gradient statistics in one fused pass, with one device-to-host transfer per step.

Nothing here knows Lightning: a :class:`GradientStats` is built from ``(name, parameter)`` pairs and measures their
``.grad`` whenever :meth:`GradientStats.collect` is called. Sharded gradients (FSDP2 DTensors, FSDP1 slices) are
measured on their local shards and combined across processes: squared norms and counts are summed, maxima and minima
combined, with one collective per kind of combination and shard group, never gathering a full gradient.

The parts: ``plan.py`` (which tensors are measured together), ``kernels.py`` (the norms and counts),
``histograms.py`` (sampled histograms), ``packing.py`` (the one transfer), ``exact.py`` (exact recounts of
non-finite layers), ``records.py`` (:class:`StepStats`, what measuring hands on).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from lightning_gradwatch.act.scaling import GradientGroups, scale_gradients_
from lightning_gradwatch.config import MeasureConfig
from lightning_gradwatch.measure.exact import exact_param_norms, norms_from_squares
from lightning_gradwatch.measure.histograms import HistogramSampler
from lightning_gradwatch.measure.kernels import accumulate_counts, accumulate_norms, combine
from lightning_gradwatch.measure.layers import GRANULARITIES, Granularity, LayerMap, layer_name
from lightning_gradwatch.measure.packing import Packed, histogram_layout, step_layout, to_host, unpack
from lightning_gradwatch.measure.plan import Plan, Shard, build_plan
from lightning_gradwatch.measure.records import LayerHistogram, StepStats
from lightning_gradwatch.measure.sharding import local, reduce_parts, shard_groups

__all__ = [
    "GRANULARITIES",
    "MAX_PLANS",
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


#: plans kept for patterns of present gradients (branches used on some batches); past it they are all forgotten
MAX_PLANS = 64


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
    keeps the cost bounded on huge layers while showing the same shape. The same samples give a second histogram,
    of ``log10 |g|`` (exact zeros left out), which shows how many decades apart the layers' gradients are. With
    sharded gradients every process samples its own shards; the bin edges of both are agreed first (one min/max
    reduction), then the weighted counts are summed.

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
        self._plans: dict[tuple[bool, ...], Plan] = {}
        self._full_plan: Plan | None = None
        self._sampler = HistogramSampler(self.histogram_bins, self.histogram_sample_size)

    @property
    def layer_of(self) -> Sequence[int]:
        """Index into ``layer_names`` of each watched parameter's layer (aligned with ``params``)."""
        return self._layer_of

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

    def _plan_for(self, grads: Sequence[Tensor | None]) -> Plan | None:
        # the common case, every gradient present, is recognised without building a key (`None in grads` would
        # compare tensors with ==, which is slow)
        if self._full_plan is not None and not any(g is None for g in grads):
            return self._full_plan
        key = tuple(g is not None for g in grads)
        plan = self._plans.get(key)
        if plan is None:
            if not any(key):
                return None
            plan = build_plan(grads, self._layer_of, self.plain_group, self.histogram_sample_size)
            if len(self._plans) > MAX_PLANS:  # patterns of unused layers could grow without bound
                self._plans.clear()
            self._plans[key] = plan
            if all(key):
                self._full_plan = plan
        return plan

    # ------------------------------------------------------------------ measuring
    @torch.no_grad()
    def collect(
        self, extended: bool = False, histograms: bool = False, extra: Sequence[Tensor] = (), weights: bool = False
    ) -> StepStats | None:
        """Measure the current gradients; ``None`` when no watched parameter has a gradient.

        With sharded gradients every process must call this at the same steps with the same arguments: it runs
        collectives.

        Args:
            extended: also measure parameter norms, max ``|g|`` and the fraction of exact zeros.
            histograms: also build per layer a histogram of its values and one of their ``log10 |g|`` (and the
                mean ``|g|``).
            extra: one-element tensors (such as the last loss) to bring to the host in the same transfer; their
                values come back in ``StepStats.extra``. They are not combined across processes.
            weights: also measure the norm of the weights with a gradient (``StepStats.weight_norm``; an extended
                step measures it anyway), in the same transfer.
        """
        grads = self._grads()
        plan = self._plan_for(grads)
        if plan is None:
            return None
        if not plan.plain:
            grads = [None if g is None else local(g) for g in grads]
        layout = step_layout(extended, histograms, weights)
        parts = self._measure(plan, grads, layout, extended, histograms, weights)
        if histograms:
            parts += self._sampler.parts(plan, grads)
            layout += histogram_layout(self.histogram_bins)
        values = to_host(parts + [e.detach().reshape(1).to(plan.device, torch.float64) for e in extra])
        stats = self._unpack(plan, grads, unpack(layout, values, len(plan.layer_index)))
        return replace(stats, extra=tuple(values[len(values) - len(extra) :])) if extra else stats

    def _measure(
        self,
        plan: Plan,
        grads: Sequence[Tensor | None],
        layout: tuple[Packed, ...],
        extended: bool,
        histograms: bool,
        weights: bool = False,
    ) -> list[Tensor]:
        """The packed per-layer parts of every shard, combined over the shards' process groups."""
        params = self.params if plan.plain else [local(p.detach()) for p in self.params]
        parts: list[Tensor] | None = None
        for shard in plan.shards:
            measured = self._shard_parts(plan, shard, grads, params, extended, histograms, weights)
            reduced = reduce_parts([(measured[f.name], f.op) for f in layout], shard.groups)
            parts = reduced if parts is None else [combine(a, b, f.op) for a, b, f in zip(parts, reduced, layout)]
        assert parts is not None
        return parts

    def gradient_groups(self) -> GradientGroups | None:
        """The present gradients in the (device, dtype) groups :meth:`collect` measured them in, for in-place scaling.

        ``None`` unless every watched gradient is present, plain and unsharded (as at the last full measurement): then
        a generic path must look at each tensor.
        """
        grads = [p.grad for p in self.params]
        plan = self._scalable_plan(grads)
        if plan is None:
            return None
        dense = [[grads[i] for i in group.positions] for shard in plan.shards for group in shard.dense]
        sparse = [grads[pos] for shard in plan.shards for pos, _ in shard.sparse]
        return GradientGroups(dense, sparse)  # type: ignore[arg-type]

    def _scalable_plan(self, grads: Sequence[Tensor | None]) -> Plan | None:
        """The plan of the last full measurement, if it still holds for ``grads`` and they are plain and whole."""
        plan = self._full_plan
        if plan is None or not plan.plain or plan.sharded or _missing(grads):
            return None
        return plan

    def scale_(self, coefficient: float) -> None:
        """Multiply every gradient in place by ``coefficient``, in the groups :meth:`collect` uses.

        The measuring primitive used alone (as the clipping benchmarks do); the engine scales through
        :func:`~lightning_gradwatch.act.actor.act`, with the same
        :func:`~lightning_gradwatch.act.scaling.scale_gradients_`.

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
        plan: Plan,
        shard: Shard,
        grads: Sequence[Tensor | None],
        params: Sequence[Tensor],
        extended: bool,
        histograms: bool,
        weights: bool = False,
    ) -> dict[str, Tensor]:
        """This shard's per-layer partial results, by packed field name (see :func:`step_layout`)."""
        n, dev = len(plan.layer_index), plan.device

        def zeros() -> Tensor:
            return torch.zeros(n, dtype=torch.float64, device=dev)

        parts = {"grad_sq": zeros()}
        accumulate_norms(shard, grads, parts["grad_sq"], ord=2)
        if extended or weights:
            parts["param_sq"] = zeros()
            accumulate_norms(shard, params, parts["param_sq"], ord=2)
        if extended:
            parts.update(nonzero=zeros(), max_abs=zeros())
            accumulate_counts(shard, grads, parts["nonzero"], parts["max_abs"])
        if extended or histograms:
            parts["numel"] = shard.numel.clone()
        if histograms:
            parts["l1"] = zeros()
            accumulate_norms(shard, grads, parts["l1"], ord=1)
        return parts

    # ------------------------------------------------------------------ unpacking
    def _unpack(self, plan: Plan, grads: Sequence[Tensor | None], fields: dict[str, list[float]]) -> StepStats:
        names = tuple(self.layer_names[i] for i in plan.layer_index)
        grad_norm, nonfinite, total_norm = norms_from_squares(plan, grads, fields["grad_sq"], self._layer_of)
        numel = tuple(round(v) for v in fields["numel"]) if "numel" in fields else tuple(plan.local_numel)
        extended: dict[str, Any] = {}
        if "param_sq" in fields:
            param_norm = self._param_norms(plan, fields)
            extended["weight_norm"] = math.sqrt(math.fsum(v * v for v in param_norm))
            if "nonzero" in fields:
                extended.update(self._unpack_extended(param_norm, fields, numel))
        mean_abs = hists = log_hists = None
        if "l1" in fields:
            mean_abs = tuple(v / size if size else 0.0 for v, size in zip(fields["l1"], numel))
            hists, log_hists = self._sampler.unpack(plan, fields, grad_norm, nonfinite)
        return StepStats(
            layers=names,
            grad_norm=tuple(grad_norm),
            total_norm=total_norm,
            numel=numel,
            nonfinite_count=tuple(nonfinite),
            histograms=hists,
            log_histograms=log_hists,
            mean_abs=mean_abs,
            **extended,
        )

    def _param_norms(self, plan: Plan, fields: dict[str, list[float]]) -> tuple[float, ...]:
        """Per-layer parameter norms (exact where a square overflowed float32)."""
        param_norm = tuple(math.sqrt(max(v, 0.0)) for v in fields["param_sq"])
        return exact_param_norms(plan, param_norm, self.params, self._layer_of)

    @staticmethod
    def _unpack_extended(
        param_norm: tuple[float, ...], fields: dict[str, list[float]], numel: tuple[int, ...]
    ) -> dict[str, tuple[float, ...]]:
        """Parameter norms, max ``|g|`` and zero fractions of an extended step."""
        zero_fraction = tuple((1.0 - nz / size) if size else 0.0 for nz, size in zip(fields["nonzero"], numel))
        return {
            "param_norm": param_norm,
            "max_abs": tuple(fields["max_abs"]),
            "zero_fraction": zero_fraction,
        }


def _missing(grads: Sequence[Tensor | None]) -> bool:
    """Whether a gradient is missing (``None in grads`` would compare tensors with ``==``, which is slow)."""
    return any(g is None for g in grads)
