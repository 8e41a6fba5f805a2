"""The one place the generated bank touches lightning_gradwatch's internals: re-point this module when they move.

What the bank uses, and from where:

- measuring: :class:`~lightning_gradwatch.stats.GradientStats` over the optimizer's parameters, grouped by module, at
  the point GradWatch measures (after backward, accumulation and unscaling, before the optimizer step), with the
  observed loss read in the same transfer (``extra``);
- judging: :class:`~lightning_gradwatch.detectors.GradientDetector` and
  :class:`~lightning_gradwatch.detectors.DetectionConfig`, fed as the engine feeds them (the loss of the previous
  batch before each step's statistics; fp16 overflow steps kept out by the engine's own rule, copied here as
  :func:`overflow_steps`; normalisation layers exempt from the per-layer vanishing test);
- the real callback: :class:`~lightning_gradwatch.GradWatch` (public), and a recording detector patched into the
  engine, to show that replaying a plain loop's trace gives the callback's alerts.

Everything else in the bank works on plain tuples and floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

import lightning_gradwatch._engine as _engine_module
from lightning_gradwatch import GradWatch
from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.detectors import DetectionConfig, GradientDetector
from lightning_gradwatch.stats import GradientStats, StepStats

__all__ = [
    "AMP_OVERFLOW_PATIENCE",
    "DetectionConfig",
    "Detector",
    "GradWatch",
    "GradientAlert",
    "GradientDetector",
    "HookedDetector",
    "Recorder",
    "StepRecord",
    "StepStats",
    "Watcher",
    "baseline_factory",
    "config_and_rest",
    "exempt_module_params",
    "overflow_steps",
    "recording_detector",
    "to_stats",
    "vanishing_alert",
]

AMP_OVERFLOW_PATIENCE = 20  # GradWatch's default ``amp_overflow_patience``


class Detector(Protocol):
    """What the scorer needs of a detector: the engine's two calls."""

    def observe_loss(self, loss: float) -> None: ...

    def update(self, step: int, stats: StepStats) -> Any: ...


#: A detector factory: given the layers exempt from the per-layer vanishing test, a fresh detector for one run.
DetectorMaker = Callable[[frozenset[str]], Detector]


def baseline_factory(**constants: Any) -> DetectorMaker:
    """Today's detector with ``constants`` (DetectionConfig fields; none: GradWatch's defaults)."""
    config = DetectionConfig(**constants)
    return lambda exempt: GradientDetector(config, exempt_layers=exempt)


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step as the detector sees it, in plain values (no package class is pickled).

    ``observed``: the loss the engine hands the detector before this step (the previous batch's, as Lightning's
    ``on_train_batch_end`` gives it: divided by the accumulation factor), ``None`` at the first step.
    ``scale``: the fp16 loss scaler's scale when measured (``None`` without a scaler).
    """

    step: int
    observed: float | None
    layers: tuple[str, ...]
    grad_norm: tuple[float, ...]
    total_norm: float
    numel: tuple[int, ...]
    nonfinite_count: tuple[int, ...]
    scale: float | None = None

    @property
    def finite(self) -> bool:
        return not any(self.nonfinite_count) and math.isfinite(self.total_norm)


def to_stats(record: StepRecord) -> StepStats:
    """The package's statistics record of one step."""
    return StepStats(record.layers, record.grad_norm, record.total_norm, record.numel, record.nonfinite_count)


def _record(step: int, observed: float | None, stats: StepStats, scale: float | None) -> StepRecord:
    return StepRecord(
        step, observed, stats.layers, stats.grad_norm, stats.total_norm, stats.numel, stats.nonfinite_count, scale
    )


def exempt_module_params(module: nn.Module) -> set[int]:
    """Ids of normalisation layers' parameters, exempt from the per-layer vanishing test (as GradWatch does)."""
    return {id(p) for m in module.modules() if "Norm" in type(m).__name__ for p in m.parameters(recurse=False)}


class Watcher:
    """Measures one optimizer's gradients where GradWatch does, re-reading its parameters when their count changes.

    Args:
        module: the model (its parameter names name the layers).
        optimizer: the optimizer whose parameters are watched.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.module, self.optimizer = module, optimizer
        self.collector: GradientStats | None = None
        self.count = -1
        self.exempt: set[str] = set()
        self.layer_names: list[str] = []  # every layer watched at some point, in first-seen order

    def _rewatch(self) -> None:
        in_optimizer = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        named = [(n, p) for n, p in self.module.named_parameters() if id(p) in in_optimizer]
        self.collector = GradientStats(named, granularity="module", max_layers=256)
        self.count = sum(len(g["params"]) for g in self.optimizer.param_groups)
        self.exempt |= set(self.collector.layers_made_of(exempt_module_params(self.module)))
        self.layer_names += [n for n in self.collector.layer_names if n not in self.layer_names]

    def measure(self, step: int, observed: torch.Tensor | None, scale: float | None = None) -> StepRecord | None:
        """This step's record (``None`` when no watched parameter has a gradient)."""
        if self.collector is None or sum(len(g["params"]) for g in self.optimizer.param_groups) != self.count:
            self._rewatch()
        assert self.collector is not None
        stats = self.collector.collect(extended=False, histograms=False, extra=() if observed is None else (observed,))
        if stats is None:
            return None
        return _record(step, stats.extra[0] if stats.extra else None, stats, scale)


def overflow_steps(records: Iterable[StepRecord], patience: int = AMP_OVERFLOW_PATIENCE) -> Iterator[bool]:
    """For each record, whether the engine keeps it out as an fp16 overflow the loss scaler skips by itself.

    The engine's rule: before the run's first finite step, a non-finite step at a scale above 1 is the scaler
    searching down from its initial scale; afterwards, fewer than ``patience`` non-finite steps in a row are.
    """
    run, scaled_finite = 0, False
    for r in records:
        if r.scale is None or r.finite:
            run, scaled_finite = 0, scaled_finite or r.scale is not None
            yield False
        elif not scaled_finite and r.scale > 1.0:
            yield True
        else:
            run += 1
            yield run < patience


def replay(records: list[StepRecord], detector: Detector) -> list[GradientAlert]:
    """The alerts ``detector`` gives on a recorded run, fed as the engine feeds it."""
    alerts: list[GradientAlert] = []
    for record, overflow in zip(records, overflow_steps(records)):
        if overflow:
            continue
        if record.observed is not None:
            detector.observe_loss(record.observed)
        alerts += detector.update(record.step, to_stats(record)).alerts
    return alerts


# ---------------------------------------------------------------------------------------------------------- Trainer


class Recorder:
    """Collects what the callback's detector saw during one real fit (see :func:`recording_detector`)."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.exempt: frozenset[str] = frozenset()


_RECORDERS: list[Recorder] = []


class _RecordingDetector(GradientDetector):
    """The detector the engine builds, recording each step's input before judging it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorder = _RECORDERS[-1]
        self._observed: float | None = None

    def observe_loss(self, loss: float) -> None:
        self._observed = float(loss)
        super().observe_loss(loss)

    def update(self, step: int, stats: StepStats) -> Any:
        self._recorder.exempt = frozenset(self.exempt_layers)
        self._recorder.records.append(_record(step, self._observed, stats, None))
        self._observed = None
        return super().update(step, stats)


class recording_detector:  # noqa: N801 (a context manager used as a statement)
    """Within this context, every GradWatch engine built records its detector's input into the yielded Recorder."""

    def __enter__(self) -> Recorder:
        self.recorder = Recorder()
        _RECORDERS.append(self.recorder)
        _engine_module.GradientDetector = _RecordingDetector  # type: ignore[misc]
        return self.recorder

    def __exit__(self, *exc: object) -> None:
        _engine_module.GradientDetector = GradientDetector  # type: ignore[misc]
        _RECORDERS.remove(self.recorder)


def warn_only_gradwatch() -> GradWatch:
    """GradWatch with every response ``"warn"`` (training untouched), no histograms or pictures."""
    return GradWatch(
        on_vanishing="warn",
        on_exploding="warn",
        on_nonfinite="warn",
        log_every_n_steps=50,
        histogram_every_n_steps=0,
        images=False,
        progress_bar=False,
        overhead_budget=None,
    )


class HookedDetector(GradientDetector):
    """Today's detector with one point a prototype rule may change: which exploding rule, if any, fires at a step.

    :meth:`judge_exploding` gets the rule today's detector found (``"jump"``, ``"spikes"``, ``"growth"``,
    ``"trend"`` or ``None``) and this step's ``log10(total norm)``; it returns the rule that fires (``None``: none).
    The only use of the detector's private ``_exploding_rule``.
    """

    def _exploding_rule(self, x: float | None, norm: float, falling_back: bool) -> str | None:
        return self.judge_exploding(super()._exploding_rule(x, norm, falling_back), x)

    def judge_exploding(self, rule: str | None, x: float | None) -> str | None:
        return rule


def config_and_rest(constants: dict[str, Any]) -> tuple[DetectionConfig, dict[str, Any]]:
    """Split constants into a DetectionConfig and the rest (a prototype rule's own constants)."""
    known = set(DetectionConfig.__dataclass_fields__)
    return (
        DetectionConfig(**{k: v for k, v in constants.items() if k in known}),
        {k: v for k, v in constants.items() if k not in known},
    )


def vanishing_alert(step: int, layers: tuple[str, ...], value: float, threshold: float, message: str) -> GradientAlert:
    """A vanishing alert of a prototype rule."""
    return GradientAlert("vanishing", step, layers, value, threshold, message)
