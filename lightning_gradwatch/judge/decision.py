"""The pure judge: one optimizer step's statistics (floats) in, a frozen :class:`Decision` out.

:class:`StepJudge` owns one optimizer's detector, adaptive clip threshold and loss-scaler bookkeeping. Its
:meth:`~StepJudge.judge` reads nothing but its arguments and its own state: no tensor, no Trainer, no writer, no
warning. Measuring before it, counting, writing and acting after it are the engine's (``engine/``) and the actor's
(``act.py``).

Example:
    >>> from lightning_gradwatch.config import WatchConfig
    >>> from lightning_gradwatch.measure.records import StepStats
    >>> judge = StepJudge(WatchConfig.from_arguments(on_nonfinite="skip"))
    >>> decision = judge.judge(0, StepStats(("fc",), (float("nan"),), float("nan"), (4,), (1,)))
    >>> decision.flags, [(a.kind, str(r)) for a, r in decision.alerts], str(decision.health)
    (Flags(skip=True, stop=False, fail=False), [('nonfinite', 'skip')], 'non-finite')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Union

from lightning_gradwatch.alerts import CLIPPING_NOTICE, NEW_DATA_NOTICE, GradientAlert, format_layers
from lightning_gradwatch.config import WatchConfig
from lightning_gradwatch.judge.clipping import AdaptiveClipThreshold, clip_coefficient, sgd_step_scale
from lightning_gradwatch.judge.context import Verdict
from lightning_gradwatch.judge.detector import GradientDetector
from lightning_gradwatch.kinds import KINDS, AlertKind, Health, Response, Rule, by_severity, kind_spec
from lightning_gradwatch.remedies import ModelTraits

if TYPE_CHECKING:  # annotations only: judging is plain Python and imports no torch
    from lightning_gradwatch.measure.records import StepStats

__all__ = ["Decision", "Flags", "StepJudge", "failure_of", "stand_in"]

#: an SGD optimizer's rate for every layer, or each layer's by name (``None``: not SGD)
Rates = Union[float, Mapping[str, float], None]


@dataclass(frozen=True)
class Flags:
    """What to do with a step: drop its update, stop training after it, raise; and the kinds alerted at it.

    ``alerted``: the alert kinds found at this step (on any process, once the flags are reduced): a process whose
    own gradients did not alert still records that another's did.
    """

    skip: bool = False
    stop: bool = False
    fail: bool = False
    alerted: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __or__(self, other: Flags) -> Flags:
        kinds = tuple(sorted({*self.alerted, *other.alerted}))
        return Flags(self.skip or other.skip, self.stop or other.stop, self.fail or other.fail, kinds)


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
        scaled_nonfinite: a non-finite step under an fp16 loss scaler (counted as an overflow, judged or not).
        notices: what is said once at this step that is no alert, ``(kind, message)`` each: new data (the loss
            jumped at once and stayed up), and ``clip="adaptive"`` holding back a run whose loss got worse for
            ``clip_notice_steps`` steps.
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
    scaled_nonfinite: bool = False
    notices: tuple[tuple[str, str], ...] = ()

    @property
    def failure(self) -> GradientAlert | None:
        """The alert whose response is ``"raise"``, if any."""
        return next((a for a, response in self.alerts if response == Response.RAISE), None)

    def clip(self, flags: Flags) -> tuple[float, float] | None:
        """``(threshold, norm after clipping)`` when the step is clipped under the (reduced) ``flags``."""
        if self.clip_threshold is None or self.stats is None or flags.skip or flags.stop or not self.stats.finite:
            return None
        return self.clip_threshold, self.stats.total_norm * clip_coefficient(self.stats.total_norm, self.clip_threshold)


def _notices(verdict: Verdict, clipping: str | None) -> tuple[tuple[str, str], ...]:
    """The step's notices, ``(kind, message)`` each: the detector's (new data), then the clipping rule's."""
    said = ((NEW_DATA_NOTICE, verdict.notice), (CLIPPING_NOTICE, clipping))
    return tuple((kind, message) for kind, message in said if message is not None)


def failure_of(decision: Decision, alerted: tuple[str, ...] = ()) -> GradientAlert:
    """The alert a raising step raises: this process's, or a stand-in when another process raised.

    ``alerted``: the kinds alerted at the step on any process (the reduced flags'): the stand-in's kind.
    """
    alert = decision.failure
    return alert if alert is not None else stand_in(alerted[0] if alerted else AlertKind.NONFINITE, decision.step)


def stand_in(kind: str, step: int, optimizer: int = 0) -> GradientAlert:
    """An alert another process found at ``step``, for this one's record (its own gradients did not alert).

    Each process judges its own gradients: the same ones under DDP (averaged before the step), not in a loop that
    does not average them. A record that lacked it let ``gradwatch check`` pass a run stopped for it.

    Example:
        >>> alert = stand_in("exploding", 12)
        >>> alert.kind, alert.message.split(":")[0]
        ('exploding', 'Exploding gradients on another process at step 12')
    """
    word = kind_spec(kind).health.value  # "non-finite", "exploding", "vanishing"
    message = (
        f"{word.capitalize()} gradients on another process at step {step}: this process judges its own gradients,"
        f" and they are not {word}.\nEach process's gradients are judged as they are"
        " (not averaged across processes, as DDP does); the warning of the process that found it names the layers"
        " and the remedies."
    )
    return GradientAlert(kind, step, (), math.nan, 0.0, message, optimizer)


def _clipping_on(settings: WatchConfig) -> str:
    """The clipping a run already has, as its argument reads (empty: none), for the remedy hints."""
    clip = settings.clipping.clip
    if clip is not None:
        return f'clip="{clip}"' if isinstance(clip, str) else f"clip={clip}"
    if settings.responses.on_exploding == "clip":
        return 'on_exploding="clip"'
    return ""


class StepJudge:
    """Judges the steps of one optimizer: detection, responses, flags, the clip threshold, the health word.

    Args:
        settings: the configuration (responses, clipping, detection, fp16 overflow patience).
        index: the optimizer's index (recorded in alerts).
        traits: what the model looks like, for remedy hints.
    """

    def __init__(self, settings: WatchConfig, index: int = 0, traits: ModelTraits | None = None) -> None:
        self.settings = settings
        self.index = index
        traits = replace(traits or ModelTraits(), clipping=_clipping_on(settings))
        self.detector = GradientDetector(settings.detection, traits=traits, optimizer=index)
        self.traits = traits
        self.clipper = AdaptiveClipThreshold.from_config(settings.clipping)
        self._overflow_run = 0
        self._scaled_finite = False  # the run has had a finite step under the loss scaler
        self._weights_nonfinite = False
        self.half_weights = False  # the watched weights are fp16/bf16 (the optimizer updates them in half precision)

    def judge(
        self,
        step: int,
        stats: StepStats,
        loss: float | None = None,
        scale: Callable[[], float] | None = None,
        log: bool = False,
        histograms: bool = False,
        several: bool = False,
        rates: Rates = None,
        init_norm: float = 0.0,
        learning_rates: Sequence[float] | None = None,
    ) -> Decision:
        """Judge one measured step.

        Args:
            step: the trainer's global step (recorded in alerts).
            stats: the step's statistics.
            loss: this step's training loss (``None``: not known).
            scale: the fp16 loss scaler's current scale, read only when needed (``None``: no loss scaler).
            log: scalars are due at this step (recorded in the decision).
            histograms: histograms are due at this step (likewise).
            several: the run steps several optimizers. Each one's loss is then its own objective against the others
                (a GAN's generator loss rises as its discriminator learns), no measure of the run's progress: the
                adaptive clip threshold is not given it (no loss ceiling, no notice of a loss that does not fall).
            rates: the SGD rate of every layer or of each (:class:`~lightning_gradwatch.engine.step_rates.StepRates`;
                ``None``: not SGD): with ``stats.weight_norm``, the adaptive threshold's step-size cap.
            init_norm: the norm PyTorch's default initialisation gives the step's weights (``StepRates.init_norm``):
                the step-size cap takes the weights' size as at least ``clip_weight_floor`` times it.
            learning_rates: the learning rate of each of the optimizer's parameter groups at this step (``None``: not
                known): a loss that jumps at once under rates that were not raised is new data.
        """
        scaled_nonfinite = scale is not None and not stats.finite
        if self._overflowed(stats, scale):
            return Decision(step, stats, overflow=True, scaled_nonfinite=True)  # nothing to write either
        if loss is not None:
            self.detector.observe_loss(loss)
        self.detector.observe_rates(learning_rates)
        verdict = self.detector.update(step, stats)
        self._check_weights(step, stats, verdict)
        respond = self.settings.responses.response
        alerts = tuple((a, respond(a.kind)) for a in verdict.alerts)
        alerts = tuple((a, r) for a, r in alerts if r != Response.IGNORE)
        flags = self._flags(verdict, alerts)
        threshold = notice = None
        if not (flags.skip or flags.stop) and stats.finite:
            threshold, notice = self._clip(step, stats, verdict, None if several else loss, rates, init_norm)
        health = self._health(verdict)
        notices = _notices(verdict, notice)
        return Decision(
            step, stats, verdict, flags, threshold, alerts, health, log, histograms, False, scaled_nonfinite, notices
        )

    def _overflowed(self, stats: StepStats, scale: Callable[[], float] | None) -> bool:
        """An fp16 overflow step the scaler skips by itself (lowering its scale): not a failure, not a statistic.

        Judged from the scaler's own state. Before the run's first finite step, a scale still above 1 is the scaler
        searching down from a high start (``init_scale=2**24`` and up take dozens of overflows): recovery, however
        long. Once the run has been finite, or at a scale of 1 or less (where fp16 cannot overflow from scaling),
        ``amp_overflow_patience`` overflows in a row mean the gradients themselves are non-finite.
        """
        if scale is None or stats.finite:
            self._overflow_run = 0
            self._scaled_finite = self._scaled_finite or scale is not None
            return False
        if not self._scaled_finite and scale() > 1.0:
            return True  # still falling from its initial scale
        self._overflow_run += 1
        return self._overflow_run < self.settings.measure.amp_overflow_patience

    def _flags(self, verdict: Verdict, alerts: tuple[tuple[GradientAlert, Response], ...]) -> Flags:
        # a kind's dropping responses drop every step it affects, not only the alerted one: every non-finite step;
        # with on_exploding="skip", every spike step and the step an explosion is found at (a jump in the first steps,
        # or a trend, has no spike step)
        response = self.settings.responses.response
        skip = any(verdict.affected(kind) and response(kind) in spec.drops for kind, spec in KINDS.items())
        responses = {r for _, r in alerts}
        alerted = tuple(sorted({str(a.kind) for a, _ in alerts}))
        return Flags(skip, Response.STOP in responses, Response.RAISE in responses, alerted)

    def _clip(
        self, step: int, stats: StepStats, verdict: Verdict, loss: float | None, rates: Rates, init_norm: float
    ) -> tuple[float | None, str | None]:
        """The step's clip threshold, and the adaptive rule's notice when it is due at this step."""
        threshold = self._clip_threshold(stats, verdict, loss, rates, init_norm)
        due = self.clipper.notice_due and self.settings.clipping.adaptive
        return threshold, self.clipper.notice(step, self.traits.vanilla_rnn) if due else None

    def _clip_threshold(
        self, stats: StepStats, verdict: Verdict, loss: float | None, rates: Rates, init_norm: float = 0.0
    ) -> float | None:
        """The threshold this step is clipped to, when clipping is configured (the adaptive one learns from it)."""
        s = self.settings
        threshold = math.inf
        if s.clipping.adaptive:
            scale = None if rates is None else sgd_step_scale(rates, stats.layers, stats.grad_norm)
            threshold = self.clipper.update(
                stats.total_norm,
                loss,
                offset=verdict.chain_offset,
                weight_norm=stats.weight_norm,
                step_scale=scale,
                init_norm=init_norm,
            )
        elif s.clipping.fixed is not None:
            threshold = s.clipping.fixed
        if s.responses.response(AlertKind.EXPLODING) == Response.CLIP:
            threshold = min(threshold, verdict.exploding_clip())
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
        verdict.alerts.append(self._weights_alert(step, bad))

    def _weights_alert(self, step: int, bad: tuple[str, ...]) -> GradientAlert:
        response = self.settings.responses.response(AlertKind.NONFINITE)
        if response not in KINDS[AlertKind.NONFINITE].drops:
            cause = (
                f'An earlier non-finite gradient may have reached them (on_nonfinite="{response}" lets such updates'
                " through), or the optimizer's update itself overflowed, or they were loaded or initialised that way."
            )
        else:
            seen = self.detector.ctx.counts.counts.get("nonfinite_steps", 0)
            kept_out = "were kept out" if seen else "have all been finite"
            cause = (
                f'The gradients of the watched parameters {kept_out} (on_nonfinite="{response}"), so the optimizer\'s'
                " update itself made the weights non-finite from finite gradients (an overflow, or a division by zero"
                " in its arithmetic), unless something besides the optimizer changed them (a load, an in-place edit)."
            )
        if self.half_weights:
            cause += (
                ' The weights are in half precision (as precision="16-true" or "bf16-true" makes them), so the'
                " optimizer computes in half precision too: fp16 overflows above 65504, and Adam's eps of 1e-8 rounds"
                ' to 0, so a zero second moment divides by zero. Train with precision="16-mixed" or "bf16-mixed"'
                " (float32 weights, half-precision compute), or raise the optimizer's eps (1e-4 in fp16)."
            )
        message = (
            f"Non-finite weights (NaN/Inf) at step {step} in {format_layers(bad)}: the parameters themselves are"
            f" corrupted, not only a gradient. {cause}" + self.detector.ctx.hints(AlertKind.NONFINITE)
        )
        return GradientAlert(
            AlertKind.NONFINITE,
            step,
            bad,
            math.nan,
            0.0,
            message,
            self.index,
            {"rule": Rule.NONFINITE.value, "what": "weights"},
        )
