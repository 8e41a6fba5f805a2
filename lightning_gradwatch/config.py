"""One source of configuration: each setting's default and check, written once, in small frozen groups.

``GradWatch``'s flat, typed arguments (which LightningCLI reads from its signature) take their defaults from these
groups, and a test holds the signature against them: every argument is a field of one group, with the same default
and type. The groups:

- :class:`ResponseConfig`: ``on_vanishing``, ``on_exploding``, ``on_nonfinite`` (defaults from the table of kinds);
- :class:`ClipConfig`: ``clip`` and the adaptive threshold's ``clip_zscore``, ``clip_warmup_steps``,
  ``clip_max_norm``, ``clip_use_loss``, ``clip_step_ratio``, and its constants;
- :class:`MeasureConfig`: which parameters are watched and how they are measured (``granularity``, ``include``,
  ``exclude``, ``histogram_bins``, ``histogram_sample_size``, ``max_layers``), and ``amp_overflow_patience``;
- :class:`ScheduleConfig`: ``log_every_n_steps``, ``histogram_every_n_steps``;
- :class:`OutputConfig`: ``progress_bar``, ``images``, ``overhead_budget``;
- :class:`DetectionConfig`: the detection rules' thresholds, some of them arguments;

and :class:`WatchConfig` holds one of each.

Each field is declared with :func:`setting`: its default, its check (a wrong type raises ``TypeError``, a wrong value
``ValueError``), and whether ``GradWatch`` takes it as an argument (the documentation of each is ``GradWatch``'s).

Example:
    >>> ClipConfig(clip="adaptive").clip_zscore
    3.0
    >>> MeasureConfig(max_layers=0)
    Traceback (most recent call last):
    ...
    ValueError: `max_layers` must be >= 1, got 0
    >>> ResponseConfig(on_exploding="skip").response("exploding")
    <Response.SKIP: 'skip'>
"""

from __future__ import annotations

import numbers
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Literal, Union

from lightning_gradwatch._validation import (
    Check,
    Granularity,
    above_one,
    at_least_one,
    check_bool,
    check_budget,
    check_clip,
    check_pattern,
    choice,
    fraction,
    integer,
    number,
)
from lightning_gradwatch.kinds import (
    KINDS,
    AlertKind,
    ExplodingResponse,
    NonfiniteResponse,
    Response,
    VanishingResponse,
    kind_spec,
)

__all__ = [
    "ClipConfig",
    "ConfigGroup",
    "DetectionConfig",
    "MeasureConfig",
    "OutputConfig",
    "ResponseConfig",
    "ScheduleConfig",
    "WatchConfig",
    "setting",
]


def setting(default: Any, check: Check, *, argument: bool = True) -> Any:
    """A configuration field: its default (the one place it is written), its check, and whether it is an argument.

    Args:
        default: the default value (an immutable one).
        check: ``check(name, value)`` raises ``TypeError`` or ``ValueError`` for a value it refuses.
        argument: ``GradWatch`` takes it as an argument of the same name (else it is a constant of the rules,
            documented and settable on the configuration object only).
    """
    return field(default=default, metadata={"check": check, "argument": argument})


class ConfigGroup:
    """Base of the configuration dataclasses: checks every field on construction; plain values; argument names."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = _plain_number(getattr(self, f.name))
            object.__setattr__(self, f.name, value)  # a NumPy integer is kept as the int it stands for
            check = f.metadata.get("check")
            if check is not None:
                check(f.name, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def settings(cls) -> tuple[Field[Any], ...]:
        """The fields declared with :func:`setting`."""
        return tuple(f for f in fields(cls) if "check" in f.metadata)  # type: ignore[arg-type]

    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        """The fields ``GradWatch`` takes as arguments."""
        return tuple(f.name for f in cls.settings() if f.metadata["argument"])


def _plain_number(value: Any) -> Any:
    """A number of another library (``numpy.int64(5)``, ``numpy.float32(0.1)``) as Python's ``int`` or ``float``.

    Example:
        >>> import numpy as np
        >>> five = _plain_number(np.int64(5))
        >>> five, type(five).__name__, _plain_number(True), _plain_number("5")
        (5, 'int', True, '5')
    """
    if isinstance(value, (bool, int, float)) or not isinstance(value, numbers.Real):
        return value  # Python's own numbers (and bools) as they are; anything else is the check's to refuse
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _default(kind: AlertKind) -> Any:
    return KINDS[kind].default.value


@dataclass(frozen=True)
class ResponseConfig(ConfigGroup):
    """What GradWatch does about each kind of alert (``GradWatch``'s ``on_<kind>`` arguments)."""

    on_vanishing: VanishingResponse = setting(_default(AlertKind.VANISHING), choice(VanishingResponse))
    on_exploding: ExplodingResponse = setting(_default(AlertKind.EXPLODING), choice(ExplodingResponse))
    on_nonfinite: NonfiniteResponse = setting(_default(AlertKind.NONFINITE), choice(NonfiniteResponse))

    def response(self, kind: AlertKind | str) -> Response:
        """The response chosen for ``kind``."""
        return Response(getattr(self, kind_spec(kind).argument))


@dataclass(frozen=True)
class ClipConfig(ConfigGroup):
    """Clipping: none, a fixed maximum norm, or the adaptive threshold and its settings.

    ``clip``, ``clip_zscore``, ``clip_warmup_steps``, ``clip_max_norm``, ``clip_use_loss`` and ``clip_step_ratio`` are
    ``GradWatch`` arguments (documented there). The others are the adaptive rule's constants (``argument=False``:
    settable here, and as keyword arguments of :class:`~lightning_gradwatch.judge.clipping.AdaptiveClipThreshold`
    without the ``clip_`` prefix). Norms are judged on the log scale: a *decade* is a factor of 10.

    Args:
        clip_window: learnt norms the outlier statistics cover.
        clip_quantile: the typical level is this quantile of the learnt log norms (outliers are not learnt; norms a
            little above the outlier threshold, learnt, do not reach it until they fill three quarters of the
            window).
        clip_low_quantile: the spread is the distance from this quantile up to the typical level.
        clip_min_spread: the least spread, in decades (a very steady run is not clipped at its ordinary level).
        clip_short_window: the typical level is at least the lowest of this many last learnt norms (a model
            taking off, whose norm rises for good, is followed within this many steps).
        clip_warmup_margin: during the first ``clip_warmup_steps``, the least margin of the outlier threshold above
            the typical level, in decades (0.3: twice the typical norm).
        clip_first_norms: the run's start is the lowest of its first this many learnt norms: a step no larger is
            never clipped (unless a plateau cut lowered the threshold), and an outlier is scaled to the typical norm
            but not below it (steps the size of those the run began with are safe, however far the recent norms
            have fallen: a classifier near zero loss, whose rare hard batches carry its gradient); 0 turns this off.
        clip_loss_window: losses the loss level is taken over.
        clip_loss_quantile: the loss level is this quantile of the last ``clip_loss_window`` losses: the level of
            the clean batches, which batches with outliers (high losses) do not move until they fill most of it.
        clip_first_losses: losses known before the first loss level (the run's starting point) is taken.
        clip_worse_by: the loss gets *worse* when its level is this much (relative) above its first level, or
            this much above its best level while also having given back ``clip_give_back`` of the progress made.
        clip_give_back: see ``clip_worse_by``.
        clip_norm_rise: ... and only while the gradient norm (before clipping) is up too: the lowest of the last
            ``clip_norm_window`` norms this many decades above the norm at the reference (at the first loss level:
            the lowest of the last ``clip_norm_window`` norms then; at the best: the median of the last
            ``clip_loss_window`` norms then). A divergence raises the loss and the norm together; a noisy mini-batch
            loss over a flat norm is not worse.
        clip_norm_window: see ``clip_norm_rise``.
        clip_cut: the least factor a worsening loss lowers the ceiling by (below the step's norm and the outlier
            threshold); the cut deepens with how much worse the loss got, ...
        clip_max_cut: ... up to this many decades at once.
        clip_cut_every: steps between two cuts; a cut needs the loss level still rising since the last one.
        clip_floor: the ceiling goes at most this many decades below the typical level.
        clip_relax: decades the ceiling rises back on each step the run is not getting worse (a new best or not):
            a run the ceiling held back gets its step size back once its loss is no longer worse ...
        clip_rise: ... and this many more on a step whose loss level is a new best ...
        clip_release: ... until it is this many decades above the outlier threshold, where it is lifted.
        clip_trouble_depth: a cut whose loss level is this many decades above the start or the best (0.5: about
            3x) is a divergence: the size of the steps before the run began getting worse (the median norm after
            clipping of the last ``clip_loss_window`` steps) is remembered as the level it diverged at, ...
        clip_trouble_margin: ... and the ceiling rises back at the full ``clip_relax`` only up to this many decades
            below it (0.3: half that step size), ...
        clip_trouble_relax: ... and this fraction of ``clip_relax`` above it; a new best of the loss level lifts
            the memory along with the ceiling (1.0: no memory, the ceiling rises back as fast everywhere).
        clip_notice_steps: clipping that hides a failing run is said once (a ``GradientWarning``, and ``notices``
            in ``gradwatch.json``), judged over this many steps: a ceiling below the outlier threshold this many
            steps in a row (the loss got worse and clipping is holding the run back), or, over the last this many
            steps, ...
        clip_notice_share: ... at least this share of them clipped while the training loss did not fall (the median
            of their second half not below ``clip_notice_stall`` times the median of their first half), ...
        clip_notice_stall: see ``clip_notice_share``.
        clip_notice_depth: a step counts as clipped for the notice when it was scaled down by this many decades or
            more (0.3: by half), so a norm held a little below where it was does not count.
        clip_notice_rise: ... or the norm of the clipped steps (before clipping) up this many decades from their
            first half to their second (clipping keeps scaling down a norm that keeps growing).
        clip_weight_floor: the step-size cap (``clip_step_ratio``) takes the weights' size as at least this many
            times the norm PyTorch's default initialisation gives them, from their shapes (``sqrt(out_features /
            3)`` for a Linear or Conv weight, ``sqrt(numel / (3 hidden_size))`` for a recurrent one; see
            ``StepRates.init_norm``), so weights initialised or decayed far below it are not held to a step of a
            tenth of their own tiny norm; 0: the weights' norm alone.
        clip_outlier_loss: a step above the outlier threshold is an outlier (scaled down to the typical norm) only
            when its training loss is this many decades above the loss level too (0.3: twice it; when the loss is
            known); otherwise it is held to the threshold. An outlier batch's loss is high with its norm, a model
            leaving a plateau raises its norm over ordinary losses. Neither is learnt.
        clip_plateau_cut: when clipping scaled down at least ``clip_notice_share`` of the last ``clip_notice_steps``
            steps while the training loss did not fall (the notice's test), clipping sets the steps' size and that
            size makes no progress: the threshold is lowered by this many decades more, for good, and the run is
            judged again ``clip_notice_steps`` steps later (0: off; off with ``clip_use_loss=False`` or
            ``clip_max_norm``), ...
        clip_plateau_max: ... down to at most this many decades below the threshold the rule would set; ...
        clip_plateau_spread: ... and only while the window's training losses scatter: their quartiles this many
            decades apart or more. Then the steps' size is set by noise, which smaller steps reduce; a loss that is
            flat and quiet is a plateau of the model (a task learnt only after a long flat stretch), which smaller
            steps only prolong.

    Example:
        >>> ClipConfig(clip="adaptive").constants()["floor"]
        1.0
    """

    clip: Union[float, Literal["adaptive"], None] = setting(None, check_clip)
    clip_zscore: float = setting(3.0, number())
    clip_warmup_steps: int = setting(25, integer(minimum=0))
    clip_max_norm: float | None = setting(None, number(optional=True))
    clip_use_loss: bool = setting(True, check_bool)
    clip_step_ratio: float | None = setting(0.1, number(optional=True))
    clip_window: int = setting(100, integer(minimum=1), argument=False)
    clip_quantile: float = setting(0.25, fraction, argument=False)
    clip_low_quantile: float = setting(0.05, fraction, argument=False)
    clip_min_spread: float = setting(0.1, number(zero=True), argument=False)
    clip_short_window: int = setting(20, integer(minimum=1), argument=False)
    clip_warmup_margin: float = setting(0.3, number(zero=True), argument=False)
    clip_first_norms: int = setting(10, integer(minimum=0), argument=False)
    clip_loss_window: int = setting(10, integer(minimum=1), argument=False)
    clip_loss_quantile: float = setting(0.2, fraction, argument=False)
    clip_first_losses: int = setting(3, integer(minimum=1), argument=False)
    clip_worse_by: float = setting(0.1, number(zero=True), argument=False)
    clip_give_back: float = setting(0.5, fraction, argument=False)
    clip_norm_rise: float = setting(0.3, number(zero=True), argument=False)
    clip_norm_window: int = setting(3, integer(minimum=1), argument=False)
    clip_cut: float = setting(3.0, above_one, argument=False)
    clip_max_cut: float = setting(2.0, number(), argument=False)
    clip_cut_every: int = setting(3, integer(minimum=1), argument=False)
    clip_floor: float = setting(1.0, number(zero=True), argument=False)
    clip_relax: float = setting(0.02, number(zero=True), argument=False)
    clip_rise: float = setting(0.01, number(), argument=False)
    clip_release: float = setting(1.0, number(zero=True), argument=False)
    clip_trouble_margin: float = setting(0.3, number(zero=True), argument=False)
    clip_trouble_relax: float = setting(0.1, number(zero=True), argument=False)
    clip_trouble_depth: float = setting(0.5, number(zero=True), argument=False)
    clip_notice_steps: int = setting(50, integer(minimum=2), argument=False)
    clip_notice_share: float = setting(0.5, fraction, argument=False)
    clip_notice_stall: float = setting(1.0, number(), argument=False)
    clip_notice_depth: float = setting(0.3, number(zero=True), argument=False)
    clip_notice_rise: float = setting(1.0, number(), argument=False)
    clip_weight_floor: float = setting(1.0, number(zero=True), argument=False)
    clip_outlier_loss: float = setting(0.3, number(zero=True), argument=False)
    clip_plateau_cut: float = setting(0.3, number(zero=True), argument=False)
    clip_plateau_max: float = setting(2.0, number(zero=True), argument=False)
    clip_plateau_spread: float = setting(0.1, number(zero=True), argument=False)

    ADAPTIVE: ClassVar[str] = "adaptive"
    PREFIX: ClassVar[str] = "clip_"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_max_norm is not None and not self.adaptive:
            instead = self.clip_max_norm if self.clip is None else min(float(self.clip), self.clip_max_norm)
            raise ValueError(
                f"`clip_max_norm` caps the adaptive threshold and needs clip='adaptive', got clip={self.clip!r}:"
                f" for a fixed maximum norm on every step, give it as `clip` (clip={instead})"
            )

    @property
    def adaptive(self) -> bool:
        """Whether the threshold is learnt (``clip="adaptive"``)."""
        return self.clip == self.ADAPTIVE

    @property
    def fixed(self) -> float | None:
        """The fixed maximum norm, when one is set."""
        return None if self.clip is None or self.adaptive else float(self.clip)

    def constants(self) -> dict[str, Any]:
        """The adaptive rule's constants (the fields that are no argument), by name without the ``clip_`` prefix."""
        constants = (f for f in self.settings() if not f.metadata["argument"])
        return {f.name.removeprefix(self.PREFIX): getattr(self, f.name) for f in constants}


@dataclass(frozen=True)
class MeasureConfig(ConfigGroup):
    """Which parameters are watched, how layers are formed and histograms sampled, and fp16 overflow patience."""

    granularity: Granularity = setting("module", choice(Granularity))
    include: str | None = setting(None, check_pattern)
    exclude: str | None = setting(None, check_pattern)
    histogram_bins: int = setting(64, integer(minimum=1))
    histogram_sample_size: int = setting(4096, integer(minimum=1))
    max_layers: int | None = setting(256, integer(minimum=1, optional=True))
    amp_overflow_patience: int = setting(20, integer(minimum=1))


@dataclass(frozen=True)
class ScheduleConfig(ConfigGroup):
    """How often scalars and histograms are written (``None``: chosen from the Trainer and the run length)."""

    log_every_n_steps: int | None = setting(None, integer(minimum=1, optional=True))
    histogram_every_n_steps: int | None = setting(None, integer(minimum=0, optional=True))


@dataclass(frozen=True)
class OutputConfig(ConfigGroup):
    """The progress bar items, the pictures, and the overhead budget."""

    progress_bar: bool = setting(True, check_bool)
    images: bool = setting(True, check_bool)
    overhead_budget: float | None = setting(0.03, check_budget)


@dataclass(frozen=True)
class DetectionConfig(ConfigGroup):
    """Thresholds of the detectors. Every field has a default calibrated to stay silent on healthy training.

    Each field is owned by one part of the detector (a rule lists the fields it owns in its ``settings``); the ones
    marked ``argument=False`` are the rules' constants, settable here and not through ``GradWatch``.

    Args:
        warmup_steps: steps whose statistics only build the history (no exploding or collapse verdict).
        exploding_zscore: how many standard deviations of ``log10(total norm)`` above the mean make a spike.
        exploding_min_factor: a spike is at least this many times the running (geometric) mean norm.
        exploding_patience: consecutive spikes that make an explosion (a lone spike is only counted); under
            ``clip="adaptive"``, also the jumps in the first steps that wait in a row, rising, before one fires.
        exploding_growth_steps: consecutive steps of a steady rise (each norm above the one before and above
            mean + 2 std, while the loss rises too) that make an explosion before any single step is a spike.
        exploding_threshold: optional absolute total-norm threshold; above it a step is always a spike (and
            consecutive such spikes are an explosion whatever the ceiling).
        exploding_ceiling_factor: consecutive spikes are an explosion only once the latest exceeds this many times
            the run's ceiling (the largest norm of an ordinary step so far).
        exploding_ceiling_memory: steps over which the ceiling forgets by a factor of 10 when no ordinary step
            renews it (so early-training norms do not mask explosions for ever in a long run).
        exploding_jump_factor: during the warm-up (before the history can tell a spike), a step whose norm is this
            many times the largest norm so far while its loss is twice the first loss (or whose norm is 100 times the
            largest, or with no loss known) is an explosion, and so are two steps in a row at this many times the
            first step's norm while their loss is 3 times the first loss: a learning rate far too high blows up from
            step 0, its loss with its norm (a net leaving a small initialisation grows its norm, not its loss).
        exploding_trend_loss_factor: an explosion by trend: the loss (median of the last 5 steps) has climbed to this
            many times its lowest median of the last 75-100 steps, and ``exploding_trend_start_factor`` times where
            training started (the highest of the first 10 losses), ...
        exploding_trend_norm_factor: ... while the gradient norm (median of the last 5 steps) has grown this many
            times since the loss was at that low. The slow divergence of Adam/AdamW at a too-high learning rate,
            which may never produce a NaN. Both must hold 5 steps in a row (a noisy healthy run's loss spans a
            decade from batch to batch), unless every one of the last 5 losses is at these factors above that low
            and above the highest of the first 10 (a divergence raises every batch's loss).
        exploding_trend_start_factor: see ``exploding_trend_loss_factor``.
        exploding_rise_margin: spikes and a steady rise are an explosion only while the loss rises: the median of
            its last 3 values above ``1 + margin`` times the median of the 5 values 5 to 10 steps before.
        exploding_climb_factor: every one of the last 5 losses at this many times the highest of the first 10, two
            steps in a row, is an explosion whatever the norm does.
        ema_decay: weight of the newest step in the running mean and variance (about ``1 / decay`` steps of memory).
        vanishing_ratio: a layer whose norm is below this fraction of the largest layer norm is vanishing (under an
            optimizer that sizes each parameter's step by its own gradients, such as Adam, such a layer steps as far
            as the largest: it is alerted only once the gap to the largest is known not to close, from step 49).
        vanishing_floor: optional absolute per-layer norm below which a layer is vanishing.
        vanishing_patience: consecutive vanishing steps before an alert.
        collapse_ratio: the whole network is vanishing when the total norm falls below this fraction of its level
            just after warm-up while the loss stays above ``collapse_loss_fraction`` of its level then.
        collapse_loss_fraction: see ``collapse_ratio``.
        stall_steps: the loss-aware vanishing rule judges a run once this many losses have been seen: ...
        stall_decades: ... a run whose loss has not moved from where it started (its lowest median within
            ``stall_tolerance`` of the start), or has given back three quarters of what it learned while its norm
            fell, while layers before the largest one in the model's order lie this many decades (or more) below it
            (medians over 10 steps) is
            vanishing, naming the layers below ``vanishing_ratio`` times the largest (when none is that far below,
            those within a decade of the deepest); unless that gap closes (0.1 decade or more over 40 steps).
            Under an optimizer that sizes each parameter's step by its own gradients, such as Adam, the stall waits
            until whether the gap closes is known (the first 50 steps).
        stall_tolerance: see ``stall_decades``.

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
    exploding_patience: int = setting(3, integer(minimum=1))
    exploding_growth_steps: int = setting(5, integer(minimum=2))
    exploding_threshold: float | None = setting(None, number(optional=True))
    exploding_ceiling_factor: float = setting(2.0, at_least_one, argument=False)
    exploding_ceiling_memory: int = setting(10_000, integer(minimum=1), argument=False)
    exploding_jump_factor: float = setting(10.0, above_one)
    exploding_trend_loss_factor: float = setting(3.0, above_one)
    exploding_trend_norm_factor: float = setting(3.0, above_one)
    exploding_trend_start_factor: float = setting(2.0, at_least_one, argument=False)
    exploding_rise_margin: float = setting(0.25, number(zero=True), argument=False)
    exploding_climb_factor: float = setting(10.0, above_one, argument=False)
    ema_decay: float = setting(0.05, fraction, argument=False)
    vanishing_ratio: float = setting(1e-5, fraction)
    vanishing_floor: float | None = setting(None, number(optional=True))
    vanishing_patience: int = setting(50, integer(minimum=1))
    collapse_ratio: float = setting(1e-4, number(), argument=False)
    collapse_loss_fraction: float = setting(0.5, number(), argument=False)
    stall_steps: int = setting(20, integer(minimum=10), argument=False)
    stall_decades: float = setting(4.0, number(), argument=False)
    stall_tolerance: float = setting(0.05, fraction, argument=False)


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
