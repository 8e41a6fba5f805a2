"""Internal. The step engine: measures one optimizer's gradients, judges them, and returns a frozen decision.

Nothing here knows Lightning. One :class:`StepEngine` per optimizer owns its collector, detector and clipper and
updates the run summary; :meth:`StepEngine.decide` turns a step into a :class:`Decision` (skip, stop, raise, the
clip threshold, the alerts to record, the health word), and :func:`act` is the one place that carries a decision
out: it drops or scales the gradients, asks the trainer to stop, or raises. Between the two, the caller reduces the
decision's flags across processes, so every rank acts alike.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 1)
    >>> engine = StepEngine(WatchConfig.from_arguments(on_nonfinite="skip"), index=0)
    >>> engine.watch(model.named_parameters(), exempt=set())
    >>> model.weight.grad = torch.full((1, 4), float("nan"))
    >>> model.bias.grad = torch.zeros(1)
    >>> decision = engine.decide(step=0)
    >>> decision.flags.skip, [a.kind for a, _ in decision.alerts]
    (True, ['nonfinite'])
    >>> _ = act(decision, decision.flags, torch.optim.SGD(model.parameters(), lr=0.1), engine)
    >>> model.weight.grad is None  # the step's update is dropped
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor

from lightning_gradwatch import _names as names
from lightning_gradwatch._environment import Environment
from lightning_gradwatch._progress import beside_progress_bars
from lightning_gradwatch.alerts import (
    REMEDIES_PLAIN,
    GradientAlert,
    GradientAlertError,
    GradientWarning,
    format_layers,
    remedies,
)
from lightning_gradwatch.clipping import AdaptiveClipThreshold, clip_coefficient
from lightning_gradwatch.config import (
    ClipConfig,
    ConfigGroup,
    MeasureConfig,
    OutputConfig,
    ResponseConfig,
    ScheduleConfig,
)
from lightning_gradwatch.detectors import DetectionConfig, GradientDetector, Verdict
from lightning_gradwatch.kinds import KINDS, AlertKind, Health, Response, by_severity
from lightning_gradwatch.report import RunSummary
from lightning_gradwatch.stats import GradientStats, StepStats, layer_name

__all__ = ["Decision", "Flags", "StepEngine", "WatchConfig", "act"]


@dataclass(frozen=True)
class WatchConfig:
    """All of GradWatch's configuration, one group per part (each group holds its defaults and checks).

    Example:
        >>> config = WatchConfig.from_arguments(on_exploding="skip", clip="adaptive", vanishing_patience=20)
        >>> config.responses.on_exploding, config.clipping.adaptive, config.detection.vanishing_patience
        ('skip', True, 20)
        >>> WatchConfig.from_arguments(clip_zscore=0)
        Traceback (most recent call last):
        ...
        ValueError: `clip_zscore` must be a positive, finite number, got 0
    """

    responses: ResponseConfig = field(default_factory=ResponseConfig)
    clipping: ClipConfig = field(default_factory=ClipConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    @classmethod
    def groups(cls) -> dict[str, type[ConfigGroup]]:
        """The groups by field name, in order."""
        return {f.name: f.default_factory for f in fields(cls)}  # type: ignore[misc]

    @classmethod
    def from_arguments(cls, **arguments: Any) -> WatchConfig:
        """``GradWatch``'s flat arguments, each taken by its group (missing ones keep their defaults).

        Raises:
            TypeError: for a name that is no argument, or a value of the wrong type.
            ValueError: for a value out of range.
        """
        parts = {}
        for name, group in cls.groups().items():
            parts[name] = group(**{k: arguments.pop(k) for k in group.argument_names() if k in arguments})
        if arguments:
            raise TypeError(f"unexpected arguments: {', '.join(sorted(arguments))}")
        return cls(**parts)

    def to_dict(self) -> dict[str, Any]:
        """Every setting's plain value, flat, group after group (``gradwatch.json``'s ``config``)."""
        return {k: v for name in self.groups() for k, v in getattr(self, name).to_dict().items()}

    def argument(self, name: str) -> Any:
        """The value of the ``GradWatch`` argument ``name``.

        Raises:
            AttributeError: for a name that is no argument.
        """
        for group in self.groups():
            part = getattr(self, group)
            if name in part.argument_names():
                return getattr(part, name)
        raise AttributeError(name)


@dataclass(frozen=True)
class Flags:
    """What to do with a step: drop its update, stop training after it, raise."""

    skip: bool = False
    stop: bool = False
    fail: bool = False

    def __or__(self, other: Flags) -> Flags:
        return Flags(self.skip or other.skip, self.stop or other.stop, self.fail or other.fail)


@dataclass(frozen=True)
class Decision:
    """What one optimizer step was found to be, and what should happen to it.

    Attributes:
        step: the trainer's global step.
        stats: the step's statistics (``None`` when nothing was measured).
        verdict: the detectors' verdict (``None`` for an unmeasured or fp16-overflow step).
        flags: this process's skip / stop / raise.
        clip_threshold: the total norm this step is clipped to (``None``: no clipping applies).
        alerts: the alerts to record, each with its response (``"ignore"``d ones are left out).
        health: ``"ok"``, ``"vanishing"``, ``"exploding"`` or ``"non-finite"``.
        log: scalars are due at this step; ``histograms``: histograms are.
        overflow: an fp16 overflow the loss scaler skips by itself (not judged).
    """

    step: int
    stats: StepStats | None = None
    verdict: Verdict | None = None
    flags: Flags = Flags()
    clip_threshold: float | None = None
    alerts: tuple[tuple[GradientAlert, Response], ...] = ()
    health: Health = Health.OK
    log: bool = False
    histograms: bool = False
    overflow: bool = False

    @property
    def failure(self) -> GradientAlert | None:
        """The alert whose response is ``"raise"``, if any."""
        return next((a for a, response in self.alerts if response == Response.RAISE), None)

    def clip(self, flags: Flags) -> tuple[float, float] | None:
        """``(threshold, norm after clipping)`` when the step is clipped under the (reduced) ``flags``."""
        if self.clip_threshold is None or self.stats is None or flags.skip or flags.stop or not self.stats.finite:
            return None
        return self.clip_threshold, self.stats.total_norm * clip_coefficient(self.stats.total_norm, self.clip_threshold)


class StepEngine:
    """Measures and judges the gradients of one optimizer, step after step.

    Args:
        settings: the configuration.
        index: the optimizer's index (recorded in alerts).
        environment: ranks, schedule, loss scaler and model traits of the fit.
        summary: the run summary to update (shared by the engines of one callback).
        suffix: tells apart the run-level tags of several optimizers (``"/optimizer_1"``), ``""`` for one.
    """

    def __init__(
        self,
        settings: WatchConfig,
        index: int = 0,
        environment: Environment | None = None,
        summary: RunSummary | None = None,
        suffix: str = "",
    ) -> None:
        self.settings = settings
        self.index = index
        self.env = environment or Environment(log_every=1, hist_every=0)
        self.summary = summary if summary is not None else RunSummary()
        self.suffix = suffix
        self.detector = GradientDetector(settings.detection, traits=self.env.traits, optimizer=index)
        clipping = settings.clipping
        self.clipper = AdaptiveClipThreshold(
            zscore=clipping.clip_zscore, warmup_steps=clipping.clip_warmup_steps, max_norm=clipping.clip_max_norm
        )
        self.collector: GradientStats | None = None
        self.ticks = 0  # steps this optimizer took: its own cadence under manual optimization
        self.hist_every = self.env.hist_every  # histogram interval in force (an overhead budget may widen it)
        self.log_every = self.env.log_every  # scalar interval in force (likewise)
        self.interval_max = 0.0
        self._watched = -1
        self._overflow_run = 0
        self._scaled_finite = False  # the run has had a finite step under the loss scaler
        self._weights_nonfinite = False

    # ------------------------------------------------------------------ parameters
    def needs_parameters(self, count: int) -> bool:
        """Whether the watched parameters must be (re)read: first step, or the optimizer's count changed."""
        return self.collector is None or count != self._watched

    def watch(self, named_parameters: Iterable[tuple[str, Tensor]], exempt: set[int], plain_group: Any = None) -> None:
        """Watch these parameters (names already cleaned); ``exempt``: ids of parameters exempt from vanishing."""
        s = self.settings.measure
        named = list(named_parameters)
        first = self.collector is None
        self.collector = GradientStats(
            named,
            granularity=s.granularity,  # type: ignore[arg-type]
            include=s.include,
            exclude=s.exclude,
            histogram_bins=s.histogram_bins,
            histogram_sample_size=s.histogram_sample_size,
            max_layers=s.max_layers,
            plain_group=plain_group,
        )
        self._watched = len(named)
        self.detector.exempt_layers = self.collector.layers_made_of(exempt)
        if self.collector.aggregated is not None and self.env.is_global_zero and first:
            modules = len({layer_name(n, s.granularity) for n in self.collector.param_names})  # type: ignore[arg-type]
            with beside_progress_bars():
                warnings.warn(
                    f"GradWatch merges the {modules} layers of optimizer {self.index} into"
                    f" {len(self.collector.layer_names)}, {self.collector.aggregated} (max_layers={s.max_layers}), so"
                    " TensorBoard stays readable. Pass a larger `max_layers`, or `include`/`exclude`, to see more.",
                    GradientWarning,
                    stacklevel=3,
                )

    # ------------------------------------------------------------------ the step
    def decide(
        self, step: int, loss: Tensor | None = None, own_cadence: bool = False, measure_all: bool = True
    ) -> Decision:
        """Measure this step's gradients and judge them.

        Args:
            step: the trainer's global step (recorded in alerts and charts).
            loss: the last training loss (a one-element tensor), read in the step's one transfer.
            own_cadence: count the schedule in this optimizer's own steps (several optimizers), not ``step``.
            measure_all: measure what the log and histogram steps write (False on processes that do not write,
                unless the statistics are collectives).
        """
        assert self.collector is not None, "call watch() first"
        cadence = self.ticks if own_cadence else step
        self.ticks += 1
        log = cadence % self.log_every == 0
        hist = self.hist_every > 0 and cadence % self.hist_every == 0
        measure_all = measure_all or self.collector.sharded  # sharded statistics are collectives
        stats = self.collector.collect(
            extended=(log or hist) and measure_all,
            histograms=hist and measure_all,
            extra=() if loss is None else (loss,),
        )
        if stats is None:
            return Decision(step)
        if self._overflowed(stats):
            return Decision(step, stats, overflow=True)
        return self._judge(step, stats, log, hist)

    def _overflowed(self, stats: StepStats) -> bool:
        """An fp16 overflow step the scaler skips by itself (lowering its scale): not a failure, not a statistic.

        Judged from the scaler's own state. Before the run's first finite step, a scale still above 1 is the scaler
        searching down from a high start (``init_scale=2**24`` and up take dozens of overflows): recovery, however
        long. Once the run has been finite, or at a scale of 1 or less (where fp16 cannot overflow from scaling),
        ``amp_overflow_patience`` overflows in a row mean the gradients themselves are non-finite.
        """
        if self.env.scaler is None or stats.finite:
            self._overflow_run = 0
            self._scaled_finite = self._scaled_finite or self.env.scaler is not None
            return False
        self.summary.count(names.AMP_OVERFLOW_STEPS)
        if not self._scaled_finite and _scale_of(self.env.scaler) > 1.0:
            return True  # still falling from its initial scale
        self._overflow_run += 1
        return self._overflow_run < self.settings.measure.amp_overflow_patience

    def _judge(self, step: int, stats: StepStats, log: bool, hist: bool) -> Decision:
        if stats.extra:
            self.detector.observe_loss(stats.extra[0])
        verdict = self.detector.update(step, stats)
        self._check_weights(step, stats, verdict)
        self.summary.add_step(step, stats, key=self.suffix.lstrip("/"), logged=log)
        if stats.finite:
            self.interval_max = max(self.interval_max, stats.total_norm)
        if verdict.spike:
            self.summary.count(names.SPIKE_STEPS)
        alerts = tuple((a, self.settings.responses.response(a.kind)) for a in verdict.alerts)
        alerts = tuple((a, r) for a, r in alerts if r != Response.IGNORE)
        flags = self._flags(verdict, alerts)
        threshold = None
        if not (flags.skip or flags.stop) and stats.finite:
            threshold = self._clip_threshold(stats.total_norm, verdict)
        return Decision(step, stats, verdict, flags, threshold, alerts, self._health(verdict), log, hist)

    def _flags(self, verdict: Verdict, alerts: tuple[tuple[GradientAlert, Response], ...]) -> Flags:
        # a kind's dropping responses drop every step it affects, not only the alerted one: every non-finite step;
        # with on_exploding="skip", every spike step and the step an explosion is found at (a jump in the first steps,
        # or a trend, has no spike step)
        response = self.settings.responses.response
        skip = any(verdict.affected(kind) and response(kind) in spec.drops for kind, spec in KINDS.items())
        responses = {r for _, r in alerts}
        return Flags(skip=skip, stop=Response.STOP in responses, fail=Response.RAISE in responses)

    def _clip_threshold(self, total_norm: float, verdict: Verdict) -> float | None:
        """The threshold this step is clipped to, when clipping is configured (the adaptive one learns the norm)."""
        s = self.settings
        threshold = math.inf
        if s.clipping.adaptive:
            threshold = self.clipper.update(total_norm)
        elif s.clipping.fixed is not None:
            threshold = s.clipping.fixed
        if verdict.spike and s.responses.response(AlertKind.EXPLODING) == Response.CLIP:
            threshold = min(threshold, verdict.spike_threshold)
        if s.clipping.clip is None and not math.isfinite(threshold):
            return None
        return threshold

    def _health(self, verdict: Verdict) -> Health:
        """The most severe kind whose episode holds at this step, else ``ok``."""
        return next((KINDS[k].health for k in by_severity() if verdict.in_episode(k)), Health.OK)

    def _check_weights(self, step: int, stats: StepStats, verdict: Verdict) -> None:
        """On steps that measure parameter norms: NaN/Inf in the weights themselves is a non-finite alert."""
        if stats.param_norm is None:
            return
        bad = tuple(n for n, v in zip(stats.layers, stats.param_norm) if not math.isfinite(v))
        if not bad or self._weights_nonfinite:
            self._weights_nonfinite = bool(bad)
            return
        self._weights_nonfinite = True
        response = self.settings.responses.response(AlertKind.NONFINITE)
        if response not in KINDS[AlertKind.NONFINITE].drops:
            cause = (
                f'An earlier non-finite gradient may have reached them (on_nonfinite="{response}" lets such updates'
                " through), or they were loaded, initialised or changed that way."
            )
        else:
            cause = (
                f'Non-finite gradients of the watched parameters are kept out (on_nonfinite="{response}"), so they'
                " were loaded, initialised or changed that way outside the optimizer's update."
            )
        message = (
            f"Non-finite weights (NaN/Inf) at step {step} in {format_layers(bad)}: the parameters themselves are"
            f" corrupted, not only a gradient. {cause}"
            + REMEDIES_PLAIN
            + "\n".join(f"  - {h}" for h in remedies(AlertKind.NONFINITE, self.env.traits))
        )
        alert = GradientAlert(AlertKind.NONFINITE, step, bad, math.nan, 0.0, message, self.index, {"what": "weights"})
        verdict.alerts.append(alert)

    # ------------------------------------------------------------------ after the decision
    def settle(self, decision: Decision, flags: Flags, **where: Any) -> tuple[float, float] | None:
        """Count what the (reduced) ``flags`` make of the decision; returns the clip applied, if any.

        A step that is skipped, clipped as a spike or alerted is noted in the summary with ``where`` its batch came
        from (``epoch``, ``batch_idx``).
        """
        skipped = flags.skip or flags.stop
        clip = None if skipped else decision.clip(flags)
        clipped = clip is not None and decision.stats is not None and clip[1] < decision.stats.total_norm
        reasons = ["skipped"] if skipped else []
        if skipped:
            self.summary.count(names.SKIPPED_STEPS)
        if clipped:
            self.summary.count(names.CLIPPED_STEPS)
            clips_spikes = self.settings.responses.response(AlertKind.EXPLODING) == Response.CLIP
            spike = decision.verdict is not None and decision.verdict.spike and clips_spikes
            reasons += ["clipped spike"] if spike else []
        reasons += ["alert"] if decision.alerts else []
        if reasons:
            self.summary.note_batch(decision.step, reasons, optimizer=self.index, **where)
        return clip

    def take_interval_max(self, default: float) -> float:
        """The largest finite total norm since the last call (``default`` when there was none)."""
        value, self.interval_max = self.interval_max, 0.0
        return value if value > 0 else default

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The detector's, the clipper's and the cadence's state."""
        return {"detector": self.detector.state_dict(), "clipper": self.clipper.state_dict(), "ticks": self.ticks}

    def restore(self, pending: dict[str, dict[str, Any]]) -> None:
        """Take this optimizer's part of a checkpoint's ``{"detectors"|"clippers"|"ticks": {index: state}}``."""
        key = str(self.index)
        detector = pending.get("detectors", {}).pop(key, None)
        if detector is not None:
            self.detector.load_state_dict(detector)
        clipper = pending.get("clippers", {}).pop(key, None)
        if clipper is not None:
            self.clipper.load_state_dict(clipper)
        self.ticks = int(pending.get("ticks", {}).pop(key, self.ticks))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["collector"] = None  # parameters belong to one fit
        state["_watched"] = -1
        return state


def act(decision: Decision, flags: Flags, optimizer: Any, engine: StepEngine, control: Any = None) -> Flags:
    """Carry out a decision under the (reduced) ``flags``: the one place that changes the training run.

    Drops the step's gradients (skip or stop: optimizers leave parameters without a gradient untouched, state
    included), or scales them to the clip threshold; sets ``control.should_stop`` (a Trainer) on stop; raises
    :class:`GradientAlertError` on raise, with this process's alert or, when another process raised, a stand-in.

    Returns:
        ``flags``, for chaining.
    """
    if flags.skip or flags.stop:
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
    else:
        clip = decision.clip(flags)
        if clip is not None and decision.stats is not None and engine.collector is not None:
            coefficient = clip_coefficient(decision.stats.total_norm, clip[0])
            if coefficient < 1.0:
                engine.collector.scale_(coefficient)
    if flags.stop and control is not None:
        control.should_stop = True
    if flags.fail:
        raise GradientAlertError(failure_of(decision))
    return flags


def _scale_of(scaler: Any) -> float:
    """The loss scaler's current scale (0 when it cannot tell: then only the patience rule applies)."""
    get_scale = getattr(scaler, "get_scale", None)
    try:
        return float(get_scale()) if callable(get_scale) else 0.0
    except (RuntimeError, TypeError, ValueError):
        return 0.0


def failure_of(decision: Decision) -> GradientAlert:
    """The alert a raising step raises: this process's, or a stand-in when another process raised."""
    alert = decision.failure
    if alert is None:
        alert = GradientAlert(
            AlertKind.NONFINITE, decision.step, (), math.nan, 0.0, "A gradient alert was raised on another rank"
        )
    return alert
