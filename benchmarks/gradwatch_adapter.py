"""The one place the generated bank touches lightning_gradwatch's internals: re-point this module when they move.

What the bank uses, and from where:

- measuring: :class:`~lightning_gradwatch.measure.stats.GradientStats` over the optimizer's parameters, grouped by
  module, at the point GradWatch measures (after backward, accumulation and unscaling, before the optimizer step),
  with the losses read in the same transfer (``extra``);
- judging: the package's own pure judge, :class:`~lightning_gradwatch.judge.decision.StepJudge` (its fp16 overflow
  rule, its detector :class:`~lightning_gradwatch.judge.detector.GradientDetector` built from a
  :class:`~lightning_gradwatch.config.DetectionConfig`), fed as the engine feeds it: each step's statistics with the
  loss the engine hands it, the loss scaler's scale, normalisation layers exempt from the per-layer vanishing test;
- the real callback: :class:`~lightning_gradwatch.GradWatch` (public), and a recording judge patched into the
  engine's lane (``engine/lane.py``), to show that replaying a plain loop's trace gives the callback's alerts;
- an older copy of the package (``--old DIR``): imported under another name, its detector judged the same way.

Everything else in the bank works on plain tuples and floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import torch
from torch import nn

import lightning_gradwatch.engine.lane as _lane_module
from lightning_gradwatch import GradWatch
from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.config import DetectionConfig, WatchConfig
from lightning_gradwatch.judge.decision import StepJudge
from lightning_gradwatch.judge.detector import GradientDetector
from lightning_gradwatch.measure.records import StepStats
from lightning_gradwatch.measure.stats import GradientStats
from lightning_gradwatch.remedies import ModelTraits

__all__ = [
    "DetectionConfig",
    "Detector",
    "GradWatch",
    "GradientAlert",
    "GradientDetector",
    "Recorder",
    "StepRecord",
    "StepStats",
    "Watcher",
    "baseline_factory",
    "exempt_module_params",
    "overflow_steps",
    "package_factory",
    "recording_detector",
    "replay",
    "to_stats",
]


class Detector(Protocol):
    """What the judge needs of a detector: the engine's two calls."""

    def observe_loss(self, loss: float) -> None: ...

    def update(self, step: int, stats: StepStats) -> Any: ...


#: A detector factory's maker: a fresh detector for one run, given the layers exempt from the per-layer vanishing
#: test and the run's optimizer class name (``"Adam"``), as GradWatch tells them.
DetectorMaker = Callable[[frozenset[str], str], Detector]


def baseline_factory(**constants: Any) -> DetectorMaker:
    """The package's detector with ``constants`` (DetectionConfig fields; none: GradWatch's defaults)."""
    config = DetectionConfig(**constants)
    return lambda exempt, optimizer: GradientDetector(
        config, traits=ModelTraits(optimizer=optimizer), exempt_layers=exempt
    )


def package_factory(package: ModuleType) -> Callable[..., DetectorMaker]:
    """The same for another copy of the package (``replay_check.load_old``): its detector with ``constants``."""
    config_module = __import__(f"{package.__name__}.config", fromlist=["DetectionConfig"])
    detector_module = __import__(f"{package.__name__}.judge.detector", fromlist=["GradientDetector"])

    def factory(**constants: Any) -> DetectorMaker:
        config = config_module.DetectionConfig(**constants)
        # the optimizer is not told: a copy from before the rules that read it gives its hints without it
        return lambda exempt, optimizer: detector_module.GradientDetector(config, exempt_layers=exempt)

    return factory


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step as the judge sees it, in plain values (no package class is pickled).

    ``observed``: the previous batch's loss, as Lightning's ``on_train_batch_end`` gives it (divided by the
    accumulation factor), ``None`` at the first step. ``current``: this step's loss, as ``on_before_backward`` gives
    it: the sum of its micro-batches' losses, each divided by the accumulation factor (``None`` in traces recorded
    before it was kept). ``scale``: the fp16 loss scaler's scale when measured (``None`` without a scaler).
    """

    step: int
    observed: float | None
    layers: tuple[str, ...]
    grad_norm: tuple[float, ...]
    total_norm: float
    numel: tuple[int, ...]
    nonfinite_count: tuple[int, ...]
    scale: float | None = None
    current: float | None = None

    @property
    def finite(self) -> bool:
        return not any(self.nonfinite_count) and math.isfinite(self.total_norm)


def to_stats(record: StepRecord) -> StepStats:
    """The package's statistics record of one step."""
    return StepStats(record.layers, record.grad_norm, record.total_norm, record.numel, record.nonfinite_count)


def _record(
    step: int, observed: float | None, stats: StepStats, scale: float | None, current: float | None = None
) -> StepRecord:
    return StepRecord(
        step,
        observed,
        stats.layers,
        stats.grad_norm,
        stats.total_norm,
        stats.numel,
        stats.nonfinite_count,
        scale,
        current,
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

    def measure(
        self,
        step: int,
        observed: torch.Tensor | None,
        scale: float | None = None,
        current: torch.Tensor | None = None,
    ) -> StepRecord | None:
        """This step's record (``None`` when no watched parameter has a gradient)."""
        if self.collector is None or sum(len(g["params"]) for g in self.optimizer.param_groups) != self.count:
            self._rewatch()
        assert self.collector is not None
        nothing = torch.tensor(math.nan)
        losses = (nothing if observed is None else observed, nothing if current is None else current)
        stats = self.collector.collect(extended=False, histograms=False, extra=losses)
        if stats is None:
            return None
        seen, now = (None if math.isnan(v) else v for v in stats.extra[:2])
        return _record(step, seen, stats, scale, now)


def _judge(detector: Detector) -> StepJudge:
    """The package's step judge around ``detector`` (its fp16 overflow rule at GradWatch's defaults)."""
    judge = StepJudge(WatchConfig())
    judge.detector = detector  # type: ignore[assignment]
    return judge


def overflow_steps(records: Iterable[StepRecord]) -> Iterator[bool]:
    """For each record, whether the engine keeps it out as an fp16 overflow the loss scaler skips by itself.

    Asked of the package's judge itself (``StepJudge``: before the run's first finite step, a non-finite step at a
    scale above 1 is the scaler searching down from its initial scale; afterwards, fewer than
    ``amp_overflow_patience`` non-finite steps in a row are).
    """
    judge = StepJudge(WatchConfig())
    for r in records:
        yield judge._overflowed(to_stats(r), None if r.scale is None else (lambda s=r.scale: s))


def replay(records: list[StepRecord], detector: Detector, current: bool = False) -> list[GradientAlert]:
    """The alerts ``detector`` gives on a recorded run, judged by the package's step judge as the engine feeds it.

    Args:
        records: the run's steps.
        detector: a fresh detector.
        current: tell the detector each step's own loss (``StepRecord.current``), not the previous batch's.
    """
    judge = _judge(detector)
    alerts: list[GradientAlert] = []
    for record in records:
        loss = record.current if current else record.observed
        scale = None if record.scale is None else (lambda s=record.scale: s)
        decision = judge.judge(record.step, to_stats(record), loss, scale)
        if decision.verdict is not None:
            alerts += decision.verdict.alerts
    return alerts


# ---------------------------------------------------------------------------------------------------------- Trainer


class Recorder:
    """Collects what the callback's judge saw during one real fit (see :func:`recording_detector`)."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.exempt: frozenset[str] = frozenset()


_RECORDERS: list[Recorder] = []


class _RecordingJudge(StepJudge):
    """The judge the engine's lane builds, recording each step's input before judging it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recorder = _RECORDERS[-1]

    def judge(self, step: int, stats: StepStats, loss: float | None = None, scale: Any = None, *args: Any,
              **kwargs: Any) -> Any:  # fmt: skip
        self._recorder.exempt = frozenset(self.detector.exempt_layers)
        value = None if scale is None else float(scale())
        self._recorder.records.append(_record(step, loss, stats, value, loss))
        return super().judge(step, stats, loss, scale, *args, **kwargs)


class recording_detector:  # noqa: N801 (a context manager used as a statement)
    """Within this context, every GradWatch lane built records its judge's input into the yielded Recorder.

    The loss the callback handed the judge is recorded as both ``observed`` and ``current``: whichever the package
    feeds, a replay of the record with either reading gives the callback's alerts.
    """

    def __enter__(self) -> Recorder:
        self.recorder = Recorder()
        _RECORDERS.append(self.recorder)
        _lane_module.StepJudge = _RecordingJudge  # type: ignore[misc]
        return self.recorder

    def __exit__(self, *exc: object) -> None:
        _lane_module.StepJudge = StepJudge  # type: ignore[misc]
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
