"""Detection of vanishing, exploding and non-finite gradients over the stream of :class:`StepStats`.

Plain Python over floats, stateful and checkpointable (:meth:`GradientDetector.state_dict`). One detector watches the
parameters of one optimizer, and is told each step's training loss (:meth:`GradientDetector.observe_loss`).

- **Non-finite**: any NaN/Inf gradient value; one alert per episode (consecutive non-finite steps).
- **Exploding**, alerted once per episode by whichever rule sees it first:

  * *jump*: during the warm-up, a total norm ``exploding_jump_factor`` (10) times the largest norm so far. A learning
    rate far too high grows the norm by orders of magnitude within two or three steps, before any history exists.
  * *spikes*: the run's history of ``log10(total norm)`` is summarised by an exponential moving mean and variance
    (started by a plain mean over the warm-up, then winsorised at two standard deviations, so a trend or an outlier
    drags it only slowly). A step is a *spike* when its norm exceeds
    ``10 ** (mean + max(zscore * std, log10(min_factor)))`` or the optional absolute threshold. Spikes move the mean
    toward a lasting new level (clipped to the spike threshold) but never widen the variance, so an explosion cannot
    hide by inflating its own threshold. ``patience`` consecutive spikes that are not already falling back (the
    latest at least half the one before) and whose latest exceeds ``ceiling_factor`` times the run's *ceiling* (the
    largest norm of an ordinary step so far, forgetting by a factor 10 per ``ceiling_memory`` steps) are an
    explosion: a converged classifier's hard-batch spikes stay below the norms of its early training, a divergence
    leaves its whole history behind. A lone spike, or one that falls back at once, is counted and not alerted.
  * *growth*: ``growth_steps`` consecutive steps each above the one before and above ``mean + 2 std``, while the
    training loss rises too (a rising norm with a falling loss is a model taking off, not diverging).
  * *trend*: the loss (median of the last 5 steps) at ``exploding_trend_loss_factor`` (3) times its best median and
    above its first value, while the median norm has grown ``exploding_trend_norm_factor`` (3) times since the loss
    was at its best: Adam/AdamW at a too-high learning rate, whose normalised updates make norm and loss climb
    together over tens of steps, often without ever producing a NaN.

- **Vanishing**: a layer is vanishing on a step when its norm is below ``ratio`` times the largest layer norm, or
  below the absolute ``floor``; it is alerted when that lasts ``patience`` consecutive steps, once per episode (an
  episode lasts while any layer stays vanishing; layers that join it are reported in ``Verdict.vanishing_layers``).
  The whole network is vanishing when every gradient is exactly zero, or when the total norm has fallen below
  ``collapse_ratio`` times its post-warm-up level, while the loss has not come down (a model that converges shrinks
  its gradients and its loss together; one that fits its data exactly has loss 0 and zero gradients). Normalisation
  layers and biases are exempt from the per-layer test: their gradients are naturally small. No vanishing verdict is
  given during an exploding episode, nor after one until the loss is back within 2x of its best level from before
  (a layer small next to an exploding one is not vanishing); layers whose gradients are exactly zero after an
  explosion are its aftermath (dead units), not a new diagnosis.

``benchmarks/detection.py`` runs the scenario bank of ``benchmarks/scenarios.py`` (60 real training runs, a
calibration half on which these defaults were chosen and a held-out half) and prints how they fare on each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from lightning_gradwatch._validation import above_one, at_least_one, fraction, integer, number
from lightning_gradwatch.alerts import REMEDIES_PLAIN, GradientAlert, ModelTraits, format_layers, remedies
from lightning_gradwatch.config import ConfigGroup, setting
from lightning_gradwatch.history import median, pow10_clamped
from lightning_gradwatch.kinds import AlertKind, Cause, Rule

if TYPE_CHECKING:  # annotations only: detection is plain Python and imports no torch
    from lightning_gradwatch.stats import StepStats

__all__ = ["DetectionConfig", "GradientDetector", "Verdict"]


@dataclass(frozen=True)
class DetectionConfig(ConfigGroup):
    """Thresholds of the detectors. Every field has a default calibrated to stay silent on healthy training.

    Args:
        warmup_steps: steps whose statistics only build the history (no exploding or collapse verdict).
        exploding_zscore: how many standard deviations of ``log10(total norm)`` above the mean make a spike.
        exploding_min_factor: a spike is at least this many times the running (geometric) mean norm.
        exploding_patience: consecutive spikes that make an explosion (a lone spike is only counted).
        exploding_growth_steps: consecutive steps of a steady rise (each norm above the one before and above
            mean + 2 std, while the loss rises too) that make an explosion before any single step is a spike.
        exploding_threshold: optional absolute total-norm threshold; above it a step is always a spike (and
            consecutive such spikes are an explosion whatever the ceiling).
        exploding_ceiling_factor: consecutive spikes are an explosion only once the latest exceeds this many times
            the run's ceiling (the largest norm of an ordinary step so far).
        exploding_ceiling_memory: steps over which the ceiling forgets by a factor of 10 when no ordinary step
            renews it (so early-training norms do not mask explosions for ever in a long run).
        exploding_jump_factor: during the warm-up (before the history can tell a spike), a step whose norm is this
            many times the largest norm so far is an explosion: a learning rate far too high blows up from step 0.
        exploding_trend_loss_factor: an explosion by trend: the loss (median of the last 5 steps) has climbed to this
            many times its best median, and above its first value, ...
        exploding_trend_norm_factor: ... while the gradient norm (median of the last 5 steps) has grown this many
            times since the loss was at its best. The slow divergence of Adam/AdamW at a too-high learning rate,
            which may never produce a NaN.
        ema_decay: weight of the newest step in the running mean and variance (about ``1 / decay`` steps of memory).
        vanishing_ratio: a layer whose norm is below this fraction of the largest layer norm is vanishing.
        vanishing_floor: optional absolute per-layer norm below which a layer is vanishing.
        vanishing_patience: consecutive vanishing steps before an alert.
        collapse_ratio: the whole network is vanishing when the total norm falls below this fraction of its level
            just after warm-up while the loss stays above ``collapse_loss_fraction`` of its level then.
        collapse_loss_fraction: see ``collapse_ratio``.

    Example:
        >>> DetectionConfig(vanishing_patience=10).vanishing_patience
        10
        >>> DetectionConfig(exploding_zscore=-1)
        Traceback (most recent call last):
        ...
        ValueError: `exploding_zscore` must be a positive, finite number, got -1
        >>> DetectionConfig(vanishing_patience=2.5)
        Traceback (most recent call last):
        ...
        TypeError: `vanishing_patience` must be an int, got float 2.5
    """

    warmup_steps: int = setting(10, integer(minimum=0))
    exploding_zscore: float = setting(4.0, number())
    exploding_min_factor: float = setting(3.0, at_least_one)
    exploding_patience: int = setting(2, integer(minimum=1))
    exploding_growth_steps: int = setting(4, integer(minimum=2))
    exploding_threshold: float | None = setting(None, number(optional=True))
    exploding_ceiling_factor: float = setting(2.0, at_least_one, argument=False)
    exploding_ceiling_memory: int = setting(10_000, integer(minimum=1), argument=False)
    exploding_jump_factor: float = setting(10.0, above_one)
    exploding_trend_loss_factor: float = setting(3.0, above_one)
    exploding_trend_norm_factor: float = setting(3.0, above_one)
    ema_decay: float = setting(0.05, fraction, argument=False)
    vanishing_ratio: float = setting(1e-5, fraction)
    vanishing_floor: float | None = setting(None, number(optional=True))
    vanishing_patience: int = setting(50, integer(minimum=1))
    collapse_ratio: float = setting(1e-4, number(), argument=False)
    collapse_loss_fraction: float = setting(0.5, number(), argument=False)


_HALF = math.log10(2.0)
_WINDOW = 5  # steps whose median loss and norm the trend rule compares


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class Verdict:
    """What the detectors concluded about one step.

    Attributes:
        alerts: alerts that fired at this step (at most one per kind; episodes are alerted once).
        nonfinite: the step has NaN/Inf gradients.
        spike: the total norm is above the spike threshold (alerted or not).
        spike_threshold: the total norm above which a step is a spike (``inf`` during warm-up).
        vanishing_layers: layers currently in a vanishing episode.
        exploding: the run is in an exploding episode at this step (alerted now or earlier), whether or not this
            step is a spike: a divergence found by its trend has no spike step.
    """

    alerts: list[GradientAlert] = field(default_factory=list)
    nonfinite: bool = False
    spike: bool = False
    spike_threshold: float = math.inf
    vanishing_layers: tuple[str, ...] = ()
    exploding: bool = False

    def alert(self, kind: AlertKind | str) -> GradientAlert | None:
        """The alert of ``kind`` fired at this step, if any."""
        return next((a for a in self.alerts if a.kind == kind), None)

    def affected(self, kind: AlertKind | str) -> bool:
        """Whether ``kind`` affects this step: the steps a dropping response keeps out of the weights.

        Non-finite: every non-finite step. Exploding: every spike step, and the step an explosion is found at.
        Vanishing: the step it is alerted at.
        """
        if kind == AlertKind.NONFINITE:
            return self.nonfinite
        if kind == AlertKind.EXPLODING:
            return self.spike or self.alert(kind) is not None
        return self.alert(kind) is not None

    def in_episode(self, kind: AlertKind | str) -> bool:
        """Whether an episode of ``kind`` holds at this step (what the health word shows)."""
        if kind == AlertKind.NONFINITE:
            return self.nonfinite
        if kind == AlertKind.EXPLODING:
            return self.exploding
        return bool(self.vanishing_layers)


def _load(read: Callable[[Any], Any]) -> dict[str, Any]:
    """A state field's metadata: how a checkpoint's plain value is read back."""
    return {"load": read}


def _plain(value: Any) -> Any:
    """A state value as a checkpoint keeps it: copies of containers, a set as a sorted list."""
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, (dict, list)):
        return type(value)(value)
    return value


def _int_map(value: Mapping[Any, Any]) -> dict[str, int]:
    return {str(k): int(v) for k, v in value.items()}


def _float_list(value: Any) -> list[float]:
    return [float(v) for v in value]


def _counts(value: Mapping[Any, Any] | None = None) -> dict[str, int]:
    return {"spikes": 0, "nonfinite_steps": 0, **_int_map(value or {})}


_INT, _FLOAT, _OPTIONAL, _BOOL = _load(int), _load(float), _load(_float_or_none), _load(bool)
_INT_MAP, _SET, _COUNTS, _FLOATS = _load(_int_map), _load(set), _load(_counts), _load(_float_list)


@dataclass(eq=False, repr=False)
class _DetectorState:
    """The detector's state, declared once.

    :meth:`GradientDetector.reset`, ``state_dict`` and ``load_state_dict`` all follow this list: a new field is one
    line here, and checkpoints without it load with its default.
    """

    steps: int = field(default=0, metadata=_INT)  # finite steps seen
    mean: float = field(default=0.0, metadata=_FLOAT)  # of log10(total norm)
    var: float = field(default=0.0, metadata=_FLOAT)
    # log10 of the largest ordinary total norm so far, slowly forgetting
    ceiling: float | None = field(default=None, metadata=_OPTIONAL)
    spike_run: int = field(default=0, metadata=_INT)
    growth_run: int = field(default=0, metadata=_INT)
    growth_loss: float | None = field(default=None, metadata=_OPTIONAL)
    previous: float | None = field(default=None, metadata=_OPTIONAL)
    last_loss: float | None = field(default=None, metadata=_OPTIONAL)
    exploding_episode: bool = field(default=False, metadata=_BOOL)
    nonfinite_episode: bool = field(default=False, metadata=_BOOL)
    vanishing_run: dict[str, int] = field(default_factory=dict, metadata=_INT_MAP)
    vanishing_episode: set[str] = field(default_factory=set, metadata=_SET)
    collapse_run: int = field(default=0, metadata=_INT)
    collapse_episode: bool = field(default=False, metadata=_BOOL)
    reference_norm: float | None = field(default=None, metadata=_OPTIONAL)
    reference_loss: float | None = field(default=None, metadata=_OPTIONAL)
    counts: dict[str, int] = field(default_factory=_counts, metadata=_COUNTS)
    peak: float | None = field(default=None, metadata=_OPTIONAL)  # log10 of the largest total norm, forgetting
    recent_losses: list[float] = field(default_factory=list, metadata=_FLOATS)  # the last few observed losses
    recent_norms: list[float] = field(default_factory=list, metadata=_FLOATS)  # log10 of the last few total norms
    first_loss: float | None = field(default=None, metadata=_OPTIONAL)
    loss_floor: float | None = field(default=None, metadata=_OPTIONAL)  # the best median loss so far
    norm_at_floor: float | None = field(default=None, metadata=_OPTIONAL)  # median log10 norm when the loss was best
    # the best median loss before the first exploding alert
    exploded_floor: float | None = field(default=None, metadata=_OPTIONAL)
    exploded: bool = field(default=False, metadata=_BOOL)  # an exploding alert has fired in this run


class GradientDetector(_DetectorState):
    """Watches the gradient statistics of one optimizer and reports alerts.

    Args:
        config: detection thresholds.
        exempt_layers: layers left out of the per-layer vanishing test (normalisation layers, biases).
        traits: what the model looks like, to pick remedy hints.
        optimizer: index of the watched optimizer (recorded in alerts).

    Example:
        >>> from lightning_gradwatch.stats import StepStats
        >>> det = GradientDetector(DetectionConfig(warmup_steps=3))
        >>> def step(norm): return StepStats(("fc",), (norm,), norm, (10,), (0,))
        >>> [det.update(i, step(1.0)).alerts for i in range(5)]
        [[], [], [], [], []]
        >>> det.update(5, step(1e4)).spike, det.update(6, step(1e5)).alert("exploding").kind
        (True, 'exploding')
    """

    def __init__(
        self,
        config: DetectionConfig | None = None,
        exempt_layers: Collection[str] = (),
        traits: ModelTraits | None = None,
        optimizer: int = 0,
    ) -> None:
        self.config = config or DetectionConfig()
        self.exempt_layers = frozenset(exempt_layers)
        self.traits = traits or ModelTraits()
        self.optimizer = optimizer
        self.reset()

    def reset(self) -> None:
        """Forget all history."""
        _DetectorState.__init__(self)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain values that let a resumed run continue where it stopped."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(_DetectorState)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; keys missing from older checkpoints keep their defaults."""
        self.reset()
        for f in fields(_DetectorState):
            if f.name in state:
                setattr(self, f.name, f.metadata["load"](state[f.name]))

    # ------------------------------------------------------------------ detection
    @property
    def std(self) -> float:
        """Running standard deviation of ``log10(total norm)``."""
        return math.sqrt(max(self.var, 0.0))

    def spike_threshold(self) -> float:
        """The total norm above which the next step is a spike (``inf`` until warm-up ends, unless absolute)."""
        cfg = self.config
        threshold = math.inf
        if self.steps >= max(cfg.warmup_steps, 2):
            margin = max(cfg.exploding_zscore * self.std, math.log10(cfg.exploding_min_factor))
            threshold = pow10_clamped(self.mean + margin)
        if cfg.exploding_threshold is not None:
            threshold = min(threshold, cfg.exploding_threshold)
        return threshold

    def observe_loss(self, loss: float) -> None:
        """Record the latest training loss (non-finite losses are ignored).

        The loss tells a model taking off (norm up, loss down) from a divergence (both up), and a converged model from
        a collapsed one.
        """
        if math.isfinite(loss):
            self.last_loss = loss
            if self.first_loss is None:
                self.first_loss = loss
            self.recent_losses = [*self.recent_losses[1 - _WINDOW :], loss]

    def update(self, step: int, stats: StepStats) -> Verdict:
        """Judge one step's statistics; returns the verdict, with any alerts that fired now."""
        verdict = Verdict()
        if not stats.finite or not math.isfinite(stats.total_norm):
            verdict.nonfinite = True
            self.counts["nonfinite_steps"] = self.counts.get("nonfinite_steps", 0) + 1
            if not self.nonfinite_episode:
                self.nonfinite_episode = True
                verdict.alerts.append(self._nonfinite_alert(step, stats))
            return verdict
        self.nonfinite_episode = False
        self._update_exploding(step, stats, verdict)
        verdict.exploding = self.exploding_episode
        self._update_vanishing(step, stats, verdict)
        return verdict

    def _update_exploding(self, step: int, stats: StepStats, verdict: Verdict) -> None:
        """Spikes, the rules, the exploding episode, then learn this step's norm (see the module docstring)."""
        threshold = self.spike_threshold()
        verdict.spike_threshold = threshold
        norm = stats.total_norm
        x = math.log10(norm) if norm > 0 else None
        spike = norm > threshold
        self._forget_peaks()
        falling_back = self._count_spike(x, verdict) if spike else self._end_spikes()
        self._update_growth(x)
        rule = self._exploding_rule(x, norm, falling_back)
        if rule is not None:
            if not self.exploding_episode:
                self._start_exploding_episode()
                verdict.alerts.append(self._exploding_alert(step, stats, threshold, rule))
        elif not spike and self.growth_run == 0 and not self._loss_still_up():
            self.exploding_episode = False
        if x is not None:
            self._learn_norm(x, threshold, spike)

    def _forget_peaks(self) -> None:
        """The ceiling and the peak forget by a factor 10 per ``exploding_ceiling_memory`` steps."""
        forget = 1.0 / self.config.exploding_ceiling_memory
        if self.ceiling is not None:
            self.ceiling -= forget
        if self.peak is not None:
            self.peak -= forget

    def _count_spike(self, x: float | None, verdict: Verdict) -> bool:
        """Count a spike step; returns whether the spike run already falls back (a transient, not a trend)."""
        verdict.spike = True
        self.counts["spikes"] = self.counts.get("spikes", 0) + 1
        self.spike_run += 1
        # a spike run that already falls back fast (below half its previous step) is a transient, not a trend
        return x is not None and self.previous is not None and x < self.previous - _HALF

    def _end_spikes(self) -> bool:
        """A step that is not a spike ends the spike run (and so is not falling back)."""
        self.spike_run = 0
        return False

    def _start_exploding_episode(self) -> None:
        """An exploding episode begins; the first one of the run keeps the best loss from before it."""
        self.exploding_episode = True
        if not self.exploded:
            self.exploded = True
            self.exploded_floor = self.loss_floor

    def _learn_norm(self, x: float, threshold: float, spike: bool) -> None:
        """A spike moves the mean toward a lasting new level, but never widens the spread."""
        self._learn(min(x, math.log10(threshold)), spread=not spike)
        if not spike:
            self.ceiling = x if self.ceiling is None else max(self.ceiling, x)
        self.peak = x if self.peak is None else max(self.peak, x)

    def _loss_still_up(self) -> bool:
        """Whether the loss (median of the last 5 steps) is still above 2x its best: an episode lasts that long."""
        return (
            bool(self.recent_losses)
            and self.loss_floor is not None
            and median(self.recent_losses) > 2.0 * max(self.loss_floor, 0.0)
        )

    def _exploding_rule(self, x: float | None, norm: float, falling_back: bool) -> Rule | None:
        """Which rule, if any, calls this step an explosion: ``jump``, ``spikes``, ``growth`` or ``trend``."""
        trend = self._update_trend(x)  # always: it keeps the loss floor and the recent norms
        if self._jumped(x):
            return Rule.JUMP
        if self._spikes_left_history(x, norm, falling_back):
            return Rule.SPIKES
        if self._growing():
            return Rule.GROWTH
        return Rule.TREND if trend else None

    def _jumped(self, x: float | None) -> bool:
        """Orders of magnitude within the first steps: no history is needed to see that."""
        cfg = self.config
        in_warmup = self.steps < max(cfg.warmup_steps, 2)
        return (
            in_warmup
            and x is not None
            and self.peak is not None
            and x > self.peak + math.log10(cfg.exploding_jump_factor)
        )

    def _spikes_left_history(self, x: float | None, norm: float, falling_back: bool) -> bool:
        """Consecutive spikes are an explosion once they leave the run's whole history behind."""
        cfg = self.config
        absolute = cfg.exploding_threshold is not None and norm > cfg.exploding_threshold
        beyond = self.ceiling is None or (x is not None and x > self.ceiling + math.log10(cfg.exploding_ceiling_factor))
        return self.spike_run >= cfg.exploding_patience and not falling_back and (absolute or beyond)

    def _growing(self) -> bool:
        """A steady rise of the norm, long enough, while the loss rose too."""
        return (
            self.growth_run >= self.config.exploding_growth_steps
            and self.last_loss is not None
            and self.growth_loss is not None
            and self.last_loss > self.growth_loss
        )

    def _update_trend(self, x: float | None) -> bool:
        """Whether the loss has climbed well above its best while the norm grew with it (medians of 5 steps)."""
        cfg = self.config
        if x is not None:
            self.recent_norms = [*self.recent_norms[1 - _WINDOW :], x]
        if not self.recent_losses or not self.recent_norms or self.first_loss is None:
            return False
        loss, level = median(self.recent_losses), median(self.recent_norms)
        if self.loss_floor is None or loss < self.loss_floor:
            self.loss_floor, self.norm_at_floor = loss, level
            return False
        assert self.norm_at_floor is not None
        return (
            len(self.recent_losses) >= 3
            and loss >= cfg.exploding_trend_loss_factor * self.loss_floor
            and loss > self.first_loss
            and level >= self.norm_at_floor + math.log10(cfg.exploding_trend_norm_factor)
        )

    def _update_growth(self, x: float | None) -> None:
        """Count consecutive steps that each rise above the previous one while above mean + 2 std."""
        elevated = self.mean + max(2.0 * self.std, 0.5 * math.log10(self.config.exploding_min_factor))
        ready = self.steps >= max(self.config.warmup_steps, 2)
        if ready and x is not None and self.previous is not None and x > elevated and x > self.previous:
            if self.growth_run == 0:
                self.growth_loss = self.last_loss
            self.growth_run += 1
        else:
            self.growth_run = 0
            self.growth_loss = None
        self.previous = x

    def _learn(self, x: float, spread: bool = True) -> None:
        cfg = self.config
        self.steps += 1
        if self.steps <= max(cfg.warmup_steps, 2):  # plain running mean/variance (Welford) over the warm-up
            delta = x - self.mean
            self.mean += delta / self.steps
            self.var += (delta * (x - self.mean) - self.var) / self.steps
            return
        # winsorised at 2 std: a trend or an outlier drags the baseline only slowly
        bound = 2.0 * max(self.std, 1e-3)
        delta = min(max(x - self.mean, -bound), bound)
        a = cfg.ema_decay
        self.mean += a * delta
        if spread:
            self.var = (1 - a) * (self.var + a * delta * delta)

    def vanishing_suspended(self) -> bool:
        """Whether vanishing verdicts wait: during an explosion, and after one until the loss is back near its best.

        Layers small next to exploding ones are not vanishing. A run recovers from an explosion when its loss (median
        of the last 5 steps) is back within 2x its best level from before; until then it is still the explosion's
        run, already alerted.
        """
        if self.exploding_episode:
            return True
        if not self.exploded or self.exploded_floor is None or not self.recent_losses:
            return False
        return median(self.recent_losses) > 2.0 * self.exploded_floor

    def _update_vanishing(self, step: int, stats: StepStats, verdict: Verdict) -> None:
        """The whole-network collapse test, then the per-layer test (both wait while an explosion lasts)."""
        top = max(stats.grad_norm) if stats.grad_norm else 0.0
        if self.reference_norm is None and self.steps >= max(self.config.warmup_steps, 2):
            self.reference_norm = stats.total_norm
            self.reference_loss = self.last_loss
        if self.vanishing_suspended() or (self.exploded and top == 0.0):
            self.collapse_run = 0
            self.vanishing_run.clear()
            self.vanishing_episode.clear()
            return
        self._update_collapse(step, stats, top, verdict)
        self._update_vanishing_layers(step, stats, top, verdict)

    def _converged(self) -> bool:
        """Whether the loss has come down: to 0.0, or below ``collapse_loss_fraction`` of its post-warm-up level."""
        return self.last_loss is not None and (
            self.last_loss == 0.0
            or (
                self.reference_loss is not None
                and self.reference_loss > 0
                and self.last_loss <= self.config.collapse_loss_fraction * self.reference_loss
            )
        )

    def _update_collapse(self, step: int, stats: StepStats, top: float, verdict: Verdict) -> None:
        """The whole network: all-zero gradients, or a collapse, while the loss has not come down with it.

        A model that fits its data exactly (loss 0.0 in float32) has all-zero gradients too: that is convergence.
        """
        cfg = self.config
        converged = self._converged()
        collapsed = top == 0.0 and not converged
        if top > 0.0 and self.reference_norm:
            below = stats.total_norm < cfg.collapse_ratio * self.reference_norm
            loss_stuck = self.reference_loss is not None and self.reference_loss > 0 and not converged
            collapsed = below and loss_stuck
        self.collapse_run = self.collapse_run + 1 if collapsed else 0
        if self.collapse_run >= cfg.vanishing_patience and not self.collapse_episode:
            self.collapse_episode = True
            verdict.alerts.append(self._collapse_alert(step, stats))
        elif not collapsed:
            self.collapse_episode = False

    def _update_vanishing_layers(self, step: int, stats: StepStats, top: float, verdict: Verdict) -> None:
        """Per layer, relative to the largest layer (or below an absolute floor)."""
        ongoing = bool(self.vanishing_episode)  # layers joining an ongoing episode are not alerted again
        limit = self.config.vanishing_ratio * top
        newly: list[str] = []
        for name, norm in zip(stats.layers, stats.grad_norm):
            if self._layer_step(name, norm, top, limit):
                newly.append(name)
        verdict.vanishing_layers = tuple(n for n in stats.layers if n in self.vanishing_episode)
        if newly and not ongoing and not verdict.alert(AlertKind.VANISHING):
            ordered = tuple(n for n in stats.layers if n in self.vanishing_episode)
            worst = min(stats.grad_norm[stats.layers.index(n)] for n in ordered)
            verdict.alerts.append(self._vanishing_alert(step, ordered, worst / top if top else 0.0, stats))

    def _layer_step(self, name: str, norm: float, top: float, limit: float) -> bool:
        """Count one layer's step; returns whether the layer starts a vanishing episode now."""
        runs, floor = self.vanishing_run, self.config.vanishing_floor
        # units an explosion killed (gradients exactly zero after it) are its aftermath, not a new diagnosis
        if name in self.exempt_layers or (self.exploded and norm == 0.0):
            runs.pop(name, None)
            self.vanishing_episode.discard(name)
            return False
        if top > 0 and (norm < limit or (floor is not None and norm < floor)):
            runs[name] = runs.get(name, 0) + 1
            if runs[name] >= self.config.vanishing_patience and name not in self.vanishing_episode:
                self.vanishing_episode.add(name)
                return True
        elif name in runs:
            del runs[name]
            self.vanishing_episode.discard(name)
        return False

    # ------------------------------------------------------------------ messages
    def _hints(self, kind: AlertKind, cause: Cause | None = None) -> str:
        return REMEDIES_PLAIN + "\n".join(f"  - {h}" for h in remedies(kind, self.traits, cause))

    def _nonfinite_alert(self, step: int, stats: StepStats) -> GradientAlert:
        layers = stats.nonfinite_layers or stats.layers
        values = sum(stats.nonfinite_count)
        message = (
            f"Non-finite gradients (NaN/Inf) at step {step}: {values} value(s) in {format_layers(layers)}."
            + self._hints(AlertKind.NONFINITE)
        )
        return GradientAlert(AlertKind.NONFINITE, step, tuple(layers), float(values), 0.0, message, self.optimizer)

    def _exploding_alert(self, step: int, stats: StepStats, threshold: float, rule: Rule) -> GradientAlert:
        baseline = 10**self.mean
        ranked = sorted(zip(stats.layers, stats.grad_norm), key=lambda item: -item[1])
        share = {n for n, g in ranked if g * g >= 0.1 * stats.total_norm**2} or {ranked[0][0]}
        ordered = tuple(n for n in stats.layers if n in share)
        norm = stats.total_norm
        if rule == Rule.JUMP:
            peak = 10 ** (self.peak or 0.0)
            what = (
                f"total norm {norm:.4g} is {norm / peak:.3g}x the largest norm of the run's first steps ({peak:.4g}):"
                " it grew by orders of magnitude from the start"
            )
            cause, value, limit = Cause.STARTUP, norm, self.config.exploding_jump_factor * peak
        elif rule == Rule.TREND:
            loss, floor = median(self.recent_losses), self.loss_floor or 0.0
            ratio = loss / floor if floor > 0 else math.inf
            level, start = 10 ** median(self.recent_norms), 10 ** (self.norm_at_floor or 0.0)
            what = (
                f"the loss has climbed to {loss:.4g}, {ratio:.3g}x its best level ({floor:.4g}) and above its first"
                f" value, while the total norm grew from {start:.4g} to {level:.4g} (medians of the last {_WINDOW}"
                " steps)"
            )
            cause, value, limit = Cause.GROWTH, ratio, self.config.exploding_trend_loss_factor
        elif rule == Rule.GROWTH:
            what = (
                f"total norm {norm:.4g} has risen for {self.growth_run} consecutive steps while the loss"
                f" rose too (typical norm so far {baseline:.4g}; a single step becomes a spike above {threshold:.4g})"
            )
            cause, value, limit = Cause.GROWTH, norm, threshold
        else:
            what = (
                f"total norm {norm:.4g} for {self.spike_run} consecutive steps above the spike threshold"
                f" {threshold:.4g} (typical norm so far {baseline:.4g}"
                + (f", largest ordinary norm {10**self.ceiling:.4g}" if self.ceiling is not None else "")
                + ")"
            )
            cause, value, limit = Cause.OUTLIER, norm, threshold
        message = f"Exploding gradients at step {step}: {what}. Largest in: {format_layers(ordered)}." + self._hints(
            AlertKind.EXPLODING, cause
        )
        extra = {"rule": Rule(rule).value}
        return GradientAlert(AlertKind.EXPLODING, step, ordered, value, limit, message, self.optimizer, extra)

    def _vanishing_alert(self, step: int, layers: tuple[str, ...], ratio: float, stats: StepStats) -> GradientAlert:
        cfg = self.config
        top_layer = stats.layers[max(range(len(stats.grad_norm)), key=stats.grad_norm.__getitem__)]
        norms = dict(zip(stats.layers, stats.grad_norm))
        if all(norms.get(n, 1.0) == 0.0 for n in layers):
            message = (
                f"Vanishing gradients at step {step}: {format_layers(layers)} had gradients exactly zero for"
                f" {cfg.vanishing_patience} consecutive steps while {top_layer} still learns: their units give no"
                " gradient for any input (dead ReLUs, saturated units, or a part of the graph cut off)."
                + self._hints(AlertKind.VANISHING, Cause.DEAD)
            )
        else:
            message = (
                f"Vanishing gradients at step {step}: {format_layers(layers)} had gradient norms below "
                f"{cfg.vanishing_ratio:g}x the largest layer's ({top_layer})"
                + (f" or below {cfg.vanishing_floor:g}" if cfg.vanishing_floor is not None else "")
                + f" for {cfg.vanishing_patience} consecutive steps (smallest ratio {ratio:.3g})."
                + self._hints(AlertKind.VANISHING)
            )
        return GradientAlert(AlertKind.VANISHING, step, layers, ratio, cfg.vanishing_ratio, message, self.optimizer)

    def _collapse_alert(self, step: int, stats: StepStats) -> GradientAlert:
        cfg = self.config
        ref = self.reference_norm or 0.0
        ratio = stats.total_norm / ref if ref else 0.0
        if stats.total_norm == 0:
            what = "every gradient is exactly zero"
            cause = Cause.DEAD
        else:
            what = (
                f"the total gradient norm fell to {ratio:.3g}x its level after warm-up while the loss has not come"
                " down with it"
            )
            cause = None
        message = (
            f"Vanishing gradients at step {step}: {what}, for {cfg.vanishing_patience} consecutive steps."
            + self._hints(AlertKind.VANISHING, cause)
        )
        kind = AlertKind.VANISHING
        return GradientAlert(kind, step, stats.layers, ratio, cfg.collapse_ratio, message, self.optimizer)


def config_fields() -> tuple[str, ...]:
    """Names of the :class:`DetectionConfig` fields."""
    return tuple(f.name for f in fields(DetectionConfig))
