"""Per-layer gradient statistics in one fused pass, with one device-to-host transfer per step.

Nothing here knows Lightning: a :class:`GradientStats` is built from ``(name, parameter)`` pairs and measures their
``.grad`` whenever :meth:`GradientStats.collect` is called.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

Granularity = Literal["module", "parameter"]
GRANULARITIES: tuple[str, ...] = ("module", "parameter")

#: Combines a float64 vector across processes with ``op`` (``"sum"``, ``"max"`` or ``"min"``): sharded gradients.
Reducer = Callable[[Tensor, str], Tensor]


def layer_name(param_name: str, granularity: Granularity = "module") -> str:
    """The layer a parameter belongs to: its owning module, or the parameter itself.

    Example:
        >>> layer_name("encoder.layers.3.self_attn.in_proj_weight")
        'encoder.layers.3.self_attn'
        >>> layer_name("encoder.layers.3.self_attn.in_proj_weight", "parameter")
        'encoder.layers.3.self_attn.in_proj_weight'
        >>> layer_name("pos_embedding")  # a parameter of the root module is its own layer
        'pos_embedding'
    """
    if granularity == "parameter":
        return param_name
    owner, _, _ = param_name.rpartition(".")
    return owner or param_name


@dataclass(frozen=True)
class LayerHistogram:
    """A histogram of one layer's gradient values, ready for TensorBoard's ``HistogramProto``.

    ``bucket_limits`` are right edges; ``bucket_counts`` are estimated counts over the whole layer (a uniform random
    sample of at most ``sample_size`` values, scaled by ``num / sample_size``).
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
    (``histograms`` and ``mean_abs``, the mean ``|g|``, with ``histograms=True``);
    ``nonfinite_count`` is exact on every step (it is computed only when a norm is not finite).
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
    """Dense tensors of one (device, dtype): positions into the parameter list and their local layer ids."""

    positions: list[int]
    layer_ids: Tensor  # long, on the group's device
    upcast: bool


@dataclass
class _Plan:
    """How to measure one pattern of present gradients; built once and reused while the pattern holds."""

    layer_index: list[int]  # global layer index of each local (present) layer
    groups: list[_Group]
    sparse: list[tuple[int, int]]  # (position, local layer id)
    numel: list[int]  # per local layer
    device: torch.device
    hist_positions: list[list[int]]  # per local layer: dense positions sampled for histograms
    hist_counts: list[list[int]]  # per local layer: samples drawn from each of those tensors
    hist_numel: list[int]  # per local layer: values the histogram stands for
    plain: bool = True  # no DTensor and no complex tensor: nothing to unwrap
    hist_segments: Tensor | None = None  # local layer id of every sample, built on first use


class GradientStats:
    """Measures gradients of named parameters, grouped into layers.

    Norms are computed with ``torch._foreach_norm`` per (device, dtype) group, in float32 (float64 for float64
    gradients) and combined per layer in float64, so bf16/fp16 gradients neither overflow nor lose precision. All
    results of one step are concatenated into a single tensor and moved to the host once.

    Complex gradients are measured as pairs of real values (their norms are the complex norms; a complex value
    counts as two values in sizes and zero fractions).

    Histograms are estimated from a uniform random sample of at most ``histogram_sample_size`` values per layer
    (exact when the layer is smaller), drawn with a private random generator so the training run's own random
    stream is untouched; bucket counts are scaled to the layer's size. Sampling keeps the cost bounded on huge
    layers while showing the same shape.

    Args:
        named_parameters: ``(name, parameter)`` pairs to watch, in forward order.
        granularity: ``"module"`` groups parameters by owning module, ``"parameter"`` keeps each on its own.
        include: regular expression; only parameters whose full name matches (``re.search``) are watched.
        exclude: regular expression; parameters whose full name matches are not watched.
        histogram_bins: buckets per histogram.
        histogram_sample_size: values sampled per layer for its histogram.
        reducer: called with each float64 vector of per-layer partial results and how they combine (``"sum"``,
            ``"max"``, ``"min"``) before square roots are taken; sharded training passes an all-reduce here.
        max_layers: when there are more layers than this, layers are merged by name prefix (``encoder.layers.3``
            instead of its submodules), one level at a time, until at most this many remain; numbered siblings
            (``layers.0`` ... ``layers.499``) are merged into runs (``layers.0-1``) rather than into their parent
            when the parent alone would be far too coarse. ``aggregated`` then says how.

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
        histogram_bins: int = 64,
        histogram_sample_size: int = 4096,
        reducer: Reducer | None = None,
        max_layers: int | None = None,
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"`granularity` must be one of {GRANULARITIES}, got {granularity!r}")
        inc = re.compile(include) if include else None
        exc = re.compile(exclude) if exclude else None
        self.param_names: list[str] = []
        self.params: list[Tensor] = []
        seen: set[int] = set()
        for name, p in named_parameters:
            if id(p) in seen:  # a parameter shared between modules is counted once
                continue
            seen.add(id(p))
            if inc is not None and not inc.search(name):
                continue
            if exc is not None and exc.search(name):
                continue
            self.param_names.append(name)
            self.params.append(p)
        owners = [layer_name(name, granularity) for name in self.param_names]
        self.aggregated: str | None = None
        if max_layers is not None and len(set(owners)) > max_layers:
            owners, self.aggregated = _merge_layers(owners, max_layers)
        names: dict[str, int] = {}
        self._layer_of: list[int] = []
        for owner in owners:
            self._layer_of.append(names.setdefault(owner, len(names)))
        self.layer_names: tuple[str, ...] = tuple(names)
        self.histogram_bins = int(histogram_bins)
        self.histogram_sample_size = int(histogram_sample_size)
        self.reducer = reducer
        self._plans: dict[tuple[bool, ...], _Plan] = {}
        self._full_plan: _Plan | None = None
        self._generators: dict[torch.device, torch.Generator] = {}

    def __len__(self) -> int:
        return len(self.params)

    # ------------------------------------------------------------------ planning
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
        local = {layer: k for k, layer in enumerate(present)}
        by_key: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        sparse: list[tuple[int, int]] = []
        numel = [0] * len(present)
        hist_positions: list[list[int]] = [[] for _ in present]
        device: torch.device | None = None
        plain = True
        for i, g in enumerate(grads):
            if g is None:
                continue
            lid = local[self._layer_of[i]]
            local_g = _local(g)
            plain = plain and local_g is g
            numel[lid] += local_g.numel()
            device = device or local_g.device
            if local_g.layout != torch.strided:
                sparse.append((i, lid))
                continue
            by_key.setdefault((local_g.device, local_g.dtype), []).append(i)
            if local_g.numel():
                hist_positions[lid].append(i)
        assert device is not None
        groups = [
            _Group(
                positions=pos,
                layer_ids=torch.tensor([local[self._layer_of[i]] for i in pos], dtype=torch.long, device=dev),
                upcast=dtype in (torch.float16, torch.bfloat16),
            )
            for (dev, dtype), pos in by_key.items()
        ]
        hist_counts: list[list[int]] = []
        hist_numel: list[int] = []
        for pos in hist_positions:
            sizes = [_local(grads[i]).numel() for i in pos]  # type: ignore[union-attr]
            total = sum(sizes)
            hist_numel.append(total)
            if total <= self.histogram_sample_size:
                hist_counts.append(sizes)
            else:
                hist_counts.append([max(1, round(self.histogram_sample_size * s / total)) for s in sizes])
        return _Plan(present, groups, sparse, numel, device, hist_positions, hist_counts, hist_numel, plain)

    # ------------------------------------------------------------------ measuring
    @torch.no_grad()
    def collect(
        self, extended: bool = False, histograms: bool = False, extra: Sequence[Tensor] = ()
    ) -> StepStats | None:
        """Measure the current gradients; ``None`` when no watched parameter has a gradient.

        Args:
            extended: also measure parameter norms, max ``|g|`` and the fraction of exact zeros.
            histograms: also build one histogram per layer.
            extra: one-element tensors (such as the last loss) to bring to the host in the same transfer; their
                values come back in ``StepStats.extra``. They are not reduced across processes.
        """
        grads = [p.grad for p in self.params]
        plan = self._plan_for(grads)
        if plan is None:
            return None
        n_layers = len(plan.layer_index)
        dev = plan.device
        if not plan.plain:
            grads = [_local_or_none(g) for g in grads]
        sq = torch.zeros(n_layers, dtype=torch.float64, device=dev)
        self._accumulate_sq(plan, grads, sq)
        parts: list[tuple[Tensor, str]] = [(sq, "sum")]  # (values, how shards combine); order = unpack order
        if extended:
            psq = torch.zeros(n_layers, dtype=torch.float64, device=dev)
            params = self.params if plan.plain else [_local(p.detach()) for p in self.params]
            self._accumulate_sq(plan, params, psq)
            nonzero = torch.zeros(n_layers, dtype=torch.float64, device=dev)
            max_abs = torch.zeros(n_layers, dtype=torch.float64, device=dev)
            self._accumulate_extended(plan, grads, nonzero, max_abs)
            parts += [(psq, "sum"), (nonzero, "sum"), (max_abs, "max")]
        if histograms:
            l1 = torch.zeros(n_layers, dtype=torch.float64, device=dev)
            self._accumulate_l1(plan, grads, l1)
            parts.append((l1, "sum"))
            parts += self._histogram_parts(plan, grads)
        packed = torch.cat([t for t, _ in parts]) if len(parts) > 1 else sq
        if self.reducer is not None:
            packed = self._reduce(parts)
        if extra:
            packed = torch.cat([packed, *(e.detach().reshape(1).to(dev, torch.float64) for e in extra)])
        values = packed.cpu().tolist()
        if extra:
            values, extra_values = values[: -len(extra)], tuple(values[-len(extra) :])
            return replace(self._unpack(plan, grads, values, extended, histograms), extra=extra_values)
        return self._unpack(plan, grads, values, extended, histograms)

    def _reduce(self, parts: list[tuple[Tensor, str]]) -> Tensor:
        """Combine the parts across processes: one collective per kind of reduction."""
        assert self.reducer is not None
        by_op: dict[str, list[int]] = {}
        for i, (_, op) in enumerate(parts):
            by_op.setdefault(op, []).append(i)
        reduced: list[Tensor | None] = [None] * len(parts)
        for op, indices in by_op.items():
            flat = self.reducer(torch.cat([parts[i][0] for i in indices]), op)
            for i, chunk in zip(indices, flat.split([parts[i][0].numel() for i in indices])):
                reduced[i] = chunk
        return torch.cat(reduced)  # type: ignore[arg-type]

    def _accumulate_sq(self, plan: _Plan, tensors: Sequence[Tensor | None], out: Tensor) -> None:
        for group in plan.groups:
            ts = [tensors[i] for i in group.positions]
            norms = torch._foreach_norm(ts, 2, dtype=torch.float32) if group.upcast else torch._foreach_norm(ts, 2)
            n = torch.stack(norms).to(device=out.device, dtype=torch.float64)
            out.index_add_(0, group.layer_ids.to(out.device), n * n)
        for pos, lid in plan.sparse:
            t = tensors[pos]
            assert t is not None
            values = t.coalesce().values() if t.layout != torch.strided else t
            out[lid] += torch.linalg.vector_norm(values, dtype=torch.float64).to(out.device) ** 2

    def _accumulate_l1(self, plan: _Plan, grads: Sequence[Tensor | None], out: Tensor) -> None:
        for group in plan.groups:
            ts = [grads[i] for i in group.positions]
            norms = torch._foreach_norm(ts, 1, dtype=torch.float32) if group.upcast else torch._foreach_norm(ts, 1)
            out.index_add_(0, group.layer_ids.to(out.device), torch.stack(norms).to(out.device, torch.float64))
        for pos, lid in plan.sparse:
            g = grads[pos]
            assert g is not None
            out[lid] += g.coalesce().values().abs().sum().to(out.device, torch.float64)

    def _accumulate_extended(
        self, plan: _Plan, grads: Sequence[Tensor | None], nonzero: Tensor, max_abs: Tensor
    ) -> None:
        for group in plan.groups:
            ts = [grads[i] for i in group.positions]
            counts = torch._foreach_norm(ts, 0)  # number of non-zero values per tensor
            nz = torch.stack(counts).to(device=nonzero.device, dtype=torch.float64)
            nonzero.index_add_(0, group.layer_ids.to(nonzero.device), nz)
            peaks = _abs_max_each(ts).to(device=max_abs.device, dtype=torch.float64)
            max_abs.scatter_reduce_(0, group.layer_ids.to(max_abs.device), peaks, "amax")
        for pos, lid in plan.sparse:
            g = grads[pos]
            assert g is not None
            values = g.coalesce().values()
            nonzero[lid] += torch.count_nonzero(values).to(nonzero.device, torch.float64)
            if values.numel():
                max_abs[lid] = torch.maximum(max_abs[lid], _abs_max(values).to(max_abs.device, torch.float64))

    def _histogram_parts(self, plan: _Plan, grads: Sequence[Tensor | None]) -> list[tuple[Tensor, str]]:
        n_layers, bins, dev = len(plan.layer_index), self.histogram_bins, plan.device
        samples: list[Tensor] = []
        gen = self._generator(dev)
        for pos, counts in zip(plan.hist_positions, plan.hist_counts):
            for i, k in zip(pos, counts):
                flat = grads[i].reshape(-1)  # type: ignore[union-attr]
                if k >= flat.numel():
                    samples.append(flat.to(dev, torch.float32))
                else:
                    idx = torch.randint(flat.numel(), (k,), generator=gen, device=flat.device)
                    samples.append(flat[idx].to(dev, torch.float32))
        if plan.hist_segments is None:
            sizes = torch.tensor([sum(c) for c in plan.hist_counts], dtype=torch.long)
            plan.hist_segments = torch.repeat_interleave(torch.arange(n_layers), sizes).to(dev)
        seg = plan.hist_segments
        x = torch.cat(samples) if samples else torch.zeros(0, device=dev)
        finite = torch.isfinite(x)
        x = torch.where(finite, x, torch.zeros((), device=dev))
        lo = torch.full((n_layers,), math.inf, device=dev).scatter_reduce_(0, seg, x, "amin")
        hi = torch.full((n_layers,), -math.inf, device=dev).scatter_reduce_(0, seg, x, "amax")
        width = torch.where(hi > lo, hi - lo, torch.ones((), device=dev))
        idx = ((x - lo[seg]) / width[seg] * bins).floor().clamp_(0, bins - 1).long() + seg * bins
        counts = torch.bincount(idx, minlength=n_layers * bins).to(torch.float64)
        total = torch.zeros(n_layers, dtype=torch.float64, device=dev).index_add_(0, seg, x.double())
        return [(lo.double(), "min"), (hi.double(), "max"), (total, "sum"), (counts, "sum")]

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(0x6772616477)
            self._generators[device] = gen
        return gen

    # ------------------------------------------------------------------ unpacking
    def _unpack(
        self, plan: _Plan, grads: Sequence[Tensor | None], values: list[float], extended: bool, histograms: bool
    ) -> StepStats:
        n = len(plan.layer_index)
        names = tuple(self.layer_names[i] for i in plan.layer_index)
        sq = values[:n]
        offset = n
        grad_norm = [math.sqrt(v) if v >= 0 else math.nan for v in sq]
        nonfinite = [0] * n
        if not all(math.isfinite(v) for v in grad_norm):
            grad_norm, nonfinite = self._exact_nonfinite(plan, grads, grad_norm)
        total_sq = math.fsum(v * v for v in grad_norm) if all(map(math.isfinite, grad_norm)) else math.nan
        if any(math.isinf(v) for v in grad_norm) and not any(math.isnan(v) for v in grad_norm):
            total_sq = math.inf
        param_norm = max_abs = zero_fraction = None
        if extended:
            param_norm = tuple(math.sqrt(max(v, 0.0)) for v in values[offset : offset + n])
            nonzero = values[offset + n : offset + 2 * n]
            max_abs = tuple(values[offset + 2 * n : offset + 3 * n])
            offset += 3 * n
            zero_fraction = tuple((1.0 - nz / size) if size else 0.0 for nz, size in zip(nonzero, plan.numel))
        hists = mean_abs = None
        if histograms:
            mean_abs = tuple(v / size if size else 0.0 for v, size in zip(values[offset : offset + n], plan.numel))
            offset += n
            hists = self._unpack_histograms(plan, values[offset:], grad_norm, nonfinite)
        return StepStats(
            layers=names,
            grad_norm=tuple(grad_norm),
            total_norm=math.sqrt(total_sq) if total_sq == total_sq else math.nan,
            numel=tuple(plan.numel),
            nonfinite_count=tuple(nonfinite),
            param_norm=param_norm,
            max_abs=max_abs,
            zero_fraction=zero_fraction,
            histograms=hists,
            mean_abs=mean_abs,
        )

    def _exact_nonfinite(
        self, plan: _Plan, grads: Sequence[Tensor | None], grad_norm: list[float]
    ) -> tuple[list[float], list[int]]:
        """Rare path: a layer norm is not finite. Count NaN/Inf exactly; recompute overflowed norms in float64."""
        n = len(plan.layer_index)
        local = {layer: k for k, layer in enumerate(plan.layer_index)}
        bad = {k for k, v in enumerate(grad_norm) if not math.isfinite(v)}
        counts = torch.zeros(n, dtype=torch.float64)
        sq = torch.zeros(n, dtype=torch.float64)
        for i, g in enumerate(grads):
            if g is None:
                continue
            lid = local[self._layer_of[i]]
            if lid not in bad:
                continue
            t = _local(g)
            t = t.coalesce().values() if t.layout != torch.strided else t
            counts[lid] += (~torch.isfinite(t)).sum().cpu().double()
            sq[lid] += torch.linalg.vector_norm(t, dtype=torch.float64).cpu() ** 2
        if self.reducer is not None:
            counts = self.reducer(counts.to(plan.device), "sum").cpu()
            sq = self.reducer(sq.to(plan.device), "sum").cpu()
        out_norm = list(grad_norm)
        out_counts = [0] * n
        for k in bad:
            out_counts[k] = int(counts[k].item())
            out_norm[k] = math.sqrt(sq[k].item()) if out_counts[k] == 0 else math.nan
            if out_counts[k] and math.isinf(grad_norm[k]) and not math.isnan(sq[k].item()):
                out_norm[k] = math.inf
        return out_norm, out_counts

    def _unpack_histograms(
        self, plan: _Plan, values: list[float], grad_norm: list[float], nonfinite: list[int]
    ) -> tuple[LayerHistogram | None, ...]:
        n, bins = len(plan.layer_index), self.histogram_bins
        lo, hi, total = values[:n], values[n : 2 * n], values[2 * n : 3 * n]
        counts = values[3 * n :]
        out: list[LayerHistogram | None] = []
        for k in range(n):
            drawn = sum(plan.hist_counts[k])
            if not drawn or nonfinite[k] or not math.isfinite(grad_norm[k]):
                out.append(None)
                continue
            size = plan.hist_numel[k]
            scale = size / drawn
            width = (hi[k] - lo[k]) if hi[k] > lo[k] else 0.0
            if width == 0.0:
                limits: tuple[float, ...] = (hi[k],)
                bucket: tuple[float, ...] = (float(size),)
            else:
                limits = tuple(lo[k] + width * (b + 1) / bins for b in range(bins))
                bucket = tuple(c * scale for c in counts[k * bins : (k + 1) * bins])
            out.append(
                LayerHistogram(
                    min=lo[k],
                    max=hi[k],
                    num=size,
                    sum=total[k] * scale,
                    sum_squares=grad_norm[k] ** 2,
                    bucket_limits=limits,
                    bucket_counts=bucket,
                    sample_size=drawn,
                )
            )
        return tuple(out)


def _merge_layers(owners: list[str], cap: int) -> tuple[list[str], str]:
    """Merge layer names until at most ``cap`` remain; returns the new names and how they were merged.

    Names are shortened by one component at a time (``enc.3.attn`` -> ``enc.3``). When that would leave far fewer
    layers than allowed (fewer than ``cap // 4``), numbered siblings are merged into runs instead.

    Example:
        >>> _merge_layers(["enc.0.attn", "enc.0.ff", "enc.1.attn", "enc.1.ff", "head"], cap=3)
        (['enc.0', 'enc.0', 'enc.1', 'enc.1', 'head'], 'by their first 2 name components')
        >>> names, how = _merge_layers([f"layers.{i}" for i in range(10)], cap=4)
        >>> sorted(set(names)), how
        (['layers.0-2', 'layers.3-5', 'layers.6-8', 'layers.9'], 'into runs of 3 consecutive numbered modules')
    """
    depth = max(name.count(".") + 1 for name in owners)
    merged = owners
    while depth > 1 and len(set(merged)) > cap:
        shorter = [".".join(name.split(".")[: depth - 1]) for name in owners]
        if len(set(shorter)) < max(cap // 4, 1):
            runs = _numbered_runs(merged, cap)
            if runs is not None:
                return runs
        merged, depth = shorter, depth - 1
    return merged, f"by their first {depth} name component{'s' if depth > 1 else ''}"


def _numbered_runs(names: list[str], cap: int) -> tuple[list[str], str] | None:
    """Merge ``prefix.<n>`` names into runs of ``k`` consecutive numbers, ``k`` as small as keeps ``cap``."""
    numbered = {n: n.rpartition(".") for n in set(names)}
    numbered = {n: (prefix, int(last)) for n, (prefix, _, last) in numbered.items() if last.isdigit() and prefix}
    if not numbered:
        return None
    others = len(set(names) - set(numbered))
    groups: dict[str, list[int]] = {}
    for prefix, index in numbered.values():
        groups.setdefault(prefix, []).append(index)
    for k in range(2, max(len(v) for v in groups.values()) + 1):
        if others + sum(len({i // k for i in v}) for v in groups.values()) <= cap:
            break
    else:
        return None
    highest = {prefix: max(v) for prefix, v in groups.items()}

    def run(name: str) -> str:
        if name not in numbered:
            return name
        prefix, index = numbered[name]
        lo = index // k * k
        hi = min(lo + k - 1, highest[prefix])
        return f"{prefix}.{lo}" if lo == hi else f"{prefix}.{lo}-{hi}"

    return [run(n) for n in names], f"into runs of {k} consecutive numbered modules"


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


def _abs_max(t: Tensor) -> Tensor:
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=t.device)
    lo, hi = torch.aminmax(t)
    return torch.maximum(hi.float(), -lo.float())


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor, complex values seen as pairs of reals; any other tensor unchanged."""
    to_local = getattr(t, "to_local", None)
    if callable(to_local):
        t = to_local()
    return torch.view_as_real(t) if t.is_complex() and t.layout == torch.strided else t


def _local_or_none(t: Tensor | None) -> Tensor | None:
    return None if t is None else _local(t)
