"""The detection rule: a small object with its own settings, its own checkpointed state and its own message.

A rule belongs to one alert kind and is composed, with the other rules of its kind, by that kind's watch
(``ExplodingWatch``, ``VanishingWatch``, ``NonfiniteWatch``), which owns the episode (an alert once per episode).
Everything a rule reads beyond its own state is in its :class:`~lightning_gradwatch.judge.context.Context`: the
thresholds, the run's histories of the norm and the loss, the exploding episode.

A rule names in ``settings`` the ``DetectionConfig`` fields it owns (each field has one owner), declares its state
with :func:`~lightning_gradwatch.judge.state.state`, and writes its own message. Adding one is one class and one line
in its kind's list of rules (``EXPLODING_RULES``, ``VANISHING_RULES``); its name is a member of
:class:`~lightning_gradwatch.kinds.Rule`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.config import DetectionConfig
from lightning_gradwatch.judge.context import Context, Verdict
from lightning_gradwatch.judge.state import Stateful
from lightning_gradwatch.kinds import AlertKind, Cause, Rule

if TYPE_CHECKING:  # annotations only: detection is plain Python and imports no torch
    from collections.abc import Sequence

    from lightning_gradwatch.measure.records import StepStats

__all__ = [
    "DetectionRule",
    "ExplodingRule",
    "Finding",
    "NormStep",
    "RuleWatch",
    "VanishingRule",
    "climbed",
    "times",
    "versus",
]


@dataclass(frozen=True)
class NormStep:
    """One finite step, as the exploding rules see it.

    Attributes:
        step: the trainer's global step.
        stats: the step's statistics.
        x: ``log10`` of its total norm (``None`` for a zero norm).
        threshold: the spike threshold that applies to it (learnt from the steps before).
        spike: its total norm is above the threshold.
    """

    step: int
    stats: StepStats
    x: float | None
    threshold: float
    spike: bool

    @property
    def norm(self) -> float:
        """The total norm."""
        return self.stats.total_norm


def times(value: float, reference: float) -> float:
    """``value / reference`` for a finding's message, ``inf`` when the reference is not positive (a loss of 0).

    Example:
        >>> times(6.0, 2.0), times(1.0, 0.0)
        (3.0, inf)
    """
    return value / reference if reference > 0 else math.inf


def versus(loss: float, first: float) -> str:
    """A loss against a reference, in words: ``3x``, or ``above``/``not above`` when the reference is not positive.

    Example:
        >>> versus(6.0, 2.0), versus(4.0, -1.0), versus(-2.0, -1.0)
        ('3x', 'above', 'not above')
    """
    if first > 0:
        return f"{loss / first:.3g}x"
    return "above" if loss > first else "not above"


def climbed(loss: float, floor: float, first: float, factor: float) -> bool:
    """Whether ``loss`` has climbed to ``factor`` times ``floor``.

    From a floor at zero or below, where a factor says nothing (a critic's or a negative log-likelihood's loss): by
    ``factor - 1`` times the way the run had come down to it from ``first``, the highest of its first losses (never,
    when it had not come down).

    Example:
        >>> climbed(3.0, 1.0, 2.0, 3.0), climbed(42.8, -73.2, 0.5, 3.0), climbed(80.0, -73.2, 0.5, 3.0)
        (True, False, True)
    """
    if floor > 0:
        return loss >= factor * floor
    return first > floor and loss - floor >= (factor - 1.0) * (first - floor)


class Finding(NamedTuple):
    """What an exploding rule saw, for its alert: the message's middle, the remedies' cause, value and threshold.

    ``layers``: the layers the alert names, after ``named`` (``None``: the step's largest, "Largest in").
    """

    what: str
    cause: Cause | None
    value: float
    threshold: float
    layers: tuple[str, ...] | None = None
    named: str = "Largest in"


@dataclass(eq=False)
class DetectionRule(Stateful):
    """Base of the rules: the shared context, the rule's name, kind and settings (see the module docstring)."""

    ctx: Context = field(repr=False)

    name: ClassVar[Rule]
    kind: ClassVar[AlertKind]
    settings: ClassVar[tuple[str, ...]] = ()

    @property
    def config(self) -> DetectionConfig:
        """The detection thresholds."""
        return self.ctx.config

    def alert(self, step: int, layers: Sequence[str], value: float, threshold: float, message: str) -> GradientAlert:
        """This rule's alert: its kind, the watched optimizer, and its own name in ``extra["rule"]``."""
        extra = {"rule": self.name.value}
        return GradientAlert(self.kind, step, tuple(layers), value, threshold, message, self.ctx.optimizer, extra)


@dataclass(eq=False)
class ExplodingRule(DetectionRule):
    """An exploding rule.

    Each finite step, every rule observes it (:meth:`observe`, in the order of the list); then the first whose
    :meth:`fires` holds calls the step an explosion, and its :meth:`describe` goes in the alert.
    """

    kind: ClassVar[AlertKind] = AlertKind.EXPLODING

    def observe(self, step: NormStep) -> None:
        """Take in one finite step, before any rule is asked whether it fires (default: nothing to keep)."""

    def fires(self, step: NormStep) -> bool:
        """Whether this rule calls the step an explosion."""
        raise NotImplementedError

    def sustains(self) -> bool:
        """Whether the rule keeps an exploding episode open even on a step that is no spike (default: no)."""
        return False

    def describe(self, step: NormStep) -> Finding:
        """What the rule saw, for the alert of the step it fired at."""
        raise NotImplementedError


@dataclass(eq=False)
class VanishingRule(DetectionRule):
    """A vanishing rule.

    Each finite step it observes the step (:meth:`observe`); unless vanishing verdicts are suspended (during and
    after an explosion) it then judges it (:meth:`judge`), else it is told to :meth:`suspend`.
    """

    kind: ClassVar[AlertKind] = AlertKind.VANISHING

    def observe(self, stats: StepStats) -> None:
        """Take in one finite step, suspended or not (default: nothing to keep)."""

    def suspend(self) -> None:
        """Vanishing verdicts wait at this step: forget what is running."""
        raise NotImplementedError

    def ongoing(self) -> bool:
        """Whether an episode this rule alerted still lasts (the other rules then add no alert of their own)."""
        return False

    def judge(self, step: int, stats: StepStats, top: float, verdict: Verdict) -> GradientAlert | None:
        """Judge one step (``top``: the largest layer norm); returns the alert it fires, if any."""
        raise NotImplementedError


class RuleWatch:
    """Base of a kind's watch: its rules, built over one context, in the order of its list of rules.

    Args:
        ctx: the detector's context.
        rules: the rule classes, in order.
    """

    kind: ClassVar[AlertKind]
    settings: ClassVar[tuple[str, ...]] = ()  # the DetectionConfig fields the watch owns itself

    def __init__(self, ctx: Context, rules: tuple[type[DetectionRule], ...]) -> None:
        self.ctx = ctx
        self.rules = tuple(rule(ctx) for rule in rules)

    def parts(self) -> tuple[Stateful, ...]:
        """The rules' parts of the checkpoint."""
        return self.rules
