"""Candidate detection rules, prototyped as wrappers and subclasses of today's detector, scored on the bank.

Each follows from how training fails (or does not). Kept (see ``combined``):

- ``rebase`` (**compare like with like**): the total norm the exploding rules see is *chained* over the layers
  present at both of two consecutive steps: each step's norm is the previous step's times the growth of the
  layers the two steps share. A backbone that joins, an adapter added with ``add_param_group``, a branch used on
  one batch in three, layers frozen mid-run: the change of set is never a jump, and with an unchanging set the
  chained norm is the total norm itself. Layers new to the run are judged by the per-layer tests from the step they
  join.
- ``rise`` (**a divergence raises the loss; a norm that rises while the loss does not is learning**): the spike
  and steady-rise rules fire only when the smoothed loss (median of the last 3 observed losses) is above
  ``1 + rise_margin`` times its level 5 to 10 steps before (median of 5). A plateau that breaks (a recurrent net
  finding its task, a deep net taking off) raises the norm before the loss falls; a corrupted batch absorbed leaves
  the loss where it was.
- ``loss_climb`` (**a loss far above where training started is a divergence, whatever the norm**): the smoothed
  loss at ``climb_factor`` times its start (the median of the first 5 observed losses) on two consecutive
  steps is an explosion, even when the norm stays flat (dead ReLUs under a diverging head). It covers what
  ``rise`` lets pass: a divergence whose norm does not climb.
- ``stalled`` (**vanishing judged with the loss**): once ``stall_steps`` losses have been observed, a loss that
  has never moved from its start (its lowest median of 5 within ``stall_tolerance`` of the median of the first 5)
  while layers lie ``stall_decades`` or more below the largest (median over the last 10 steps) is vanishing,
  naming every layer ``stall_decades - 1`` or more decades below the largest. A slowly learning deep net has a
  loss that moved; a converged one has a loss far below its start.

Measured and not kept: ``takeoff`` (the spike and steady-rise rules silent while the smoothed loss falls by
``takeoff_drop``: the observed loss lags the norm by a step or more, so a take-off is usually alerted before its
loss falls), ``confirm_jump`` (a startup jump alerted only once the next step confirms it: late on the
divergences whose NaN comes 3-4 steps in), ``trend_floor`` (the trend rule with "at least a tenth of its start"
in place of "above its first value": one more divergence caught, two more false alarms).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gradwatch_adapter import (
    DetectorMaker,
    GradientDetector,
    HookedDetector,
    StepStats,
    baseline_factory,
    config_and_rest,
    vanishing_alert,
)

_HALF = math.log10(2.0)


# ---------------------------------------------------------------------------------------------------------- rebase


class ChainedNorm:
    """Feeds ``inner`` a total norm chained over the layers present at consecutive steps (per-layer norms scaled
    alike, so every ratio between layers is unchanged)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.previous: dict[str, float] | None = None
        self.index: float | None = None
        self.scale = 1.0

    def observe_loss(self, loss: float) -> None:
        self.inner.observe_loss(loss)

    def update(self, step: int, stats: StepStats) -> Any:
        if not stats.finite or not math.isfinite(stats.total_norm):
            return self.inner.update(step, stats)
        present = dict(zip(stats.layers, stats.grad_norm))
        if self.previous is not None and self.index is not None:
            common = present.keys() & self.previous.keys()
            now = math.sqrt(sum(present[n] ** 2 for n in common))
            before = math.sqrt(sum(self.previous[n] ** 2 for n in common))
            if now > 0 and before > 0 and stats.total_norm > 0:
                self.scale = self.index * now / before / stats.total_norm
        self.previous = present
        self.index = stats.total_norm * self.scale
        if self.scale == 1.0:
            return self.inner.update(step, stats)
        scaled = replace(
            stats, total_norm=stats.total_norm * self.scale, grad_norm=tuple(g * self.scale for g in stats.grad_norm)
        )
        return self.inner.update(step, scaled)


# ---------------------------------------------------------------------------------------------------------- loss-aware


class LossAware(HookedDetector):
    """Today's detector with the ``takeoff`` and ``loss_climb`` rules (each on when its constant is set)."""

    def __init__(
        self,
        *args: Any,
        takeoff_drop: float | None = None,
        confirm_jump: bool = False,
        climb_factor: float | None = None,
        trend_floor: float | None = None,
        rise_margin: float | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.takeoff_drop, self.confirm_jump, self.climb_factor = takeoff_drop, confirm_jump, climb_factor
        self.trend_floor, self.rise_margin = trend_floor, rise_margin
        self.norms: list[float] = []  # log10 of the total norm
        self.best_loss: float | None = None
        self.norm_at_best: float | None = None
        self.losses: list[float] = []
        self.pending_jump: float | None = None
        self.climb_run = 0

    def observe_loss(self, loss: float) -> None:
        super().observe_loss(loss)
        if math.isfinite(loss):
            self.losses.append(float(loss))

    def _falling(self) -> bool:
        if self.takeoff_drop is None or len(self.losses) < 10:
            return False
        now, before = statistics.median(self.losses[-5:]), statistics.median(self.losses[-10:-5])
        return now <= (1.0 - self.takeoff_drop) * before

    def _not_rising(self) -> bool:
        """The smoothed loss (median of the last 3) is not above its level 5 to 10 steps ago (median of 5)."""
        if self.rise_margin is None or len(self.losses) < 10:
            return False
        return statistics.median(self.losses[-3:]) <= (1.0 + self.rise_margin) * statistics.median(self.losses[-10:-5])

    def _climbed(self) -> bool:
        if self.climb_factor is None or len(self.losses) < 8:
            return False
        start = statistics.median(self.losses[:5])
        up = start > 0 and statistics.median(self.losses[-5:]) >= self.climb_factor * start
        self.climb_run = self.climb_run + 1 if up else 0
        return self.climb_run >= 2

    def _trend_from_best(self, x: float | None) -> bool:
        """The trend rule with a near-zero guard: the smoothed loss 3x its best and at least ``trend_floor`` of its
        start, while the smoothed norm grew 3x since the loss was at its best."""
        if x is not None:
            self.norms.append(x)
        if self.trend_floor is None or len(self.losses) < 5 or len(self.norms) < 5:
            return False
        loss, level = statistics.median(self.losses[-5:]), statistics.median(self.norms[-5:])
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.norm_at_best = loss, level
            return False
        assert self.norm_at_best is not None
        cfg = self.config
        return (
            loss >= cfg.exploding_trend_loss_factor * self.best_loss
            and loss >= self.trend_floor * statistics.median(self.losses[:5])
            and level >= self.norm_at_best + math.log10(cfg.exploding_trend_norm_factor)
        )

    def judge_exploding(self, rule: str | None, x: float | None) -> str | None:
        climbed = self._climbed()
        if self._trend_from_best(x) and rule is None:
            rule = "trend"
        if self.confirm_jump:
            pending, self.pending_jump = self.pending_jump, None
            if rule == "jump":
                self.pending_jump = x
                rule = None
            elif pending is not None and x is not None and x >= pending - _HALF:
                rule = "jump"  # the next step confirms the jump
        if rule in ("spikes", "growth") and (self._falling() or self._not_rising()):
            rule = None
        if rule is None and climbed:
            rule = "trend"
        return rule


# ---------------------------------------------------------------------------------------------------------- stalled


class Stalled:
    """Wraps a detector with the ``stalled`` vanishing rule (its alert first; the inner one's then left out)."""

    def __init__(self, inner: Any, exempt: frozenset[str], steps: int, decades: float, tolerance: float) -> None:
        self.inner, self.exempt = inner, exempt
        self.steps, self.decades, self.tolerance = steps, decades, tolerance
        self.losses: list[float] = []
        self.gaps: list[dict[str, float]] = []  # per step, decades below the largest layer
        self.fired = False
        self.exploded = False
        self.best = math.inf  # the lowest median of 5 observed losses

    def observe_loss(self, loss: float) -> None:
        self.inner.observe_loss(loss)
        if math.isfinite(loss):
            self.losses.append(float(loss))

    def update(self, step: int, stats: StepStats) -> Any:
        verdict = self.inner.update(step, stats)
        self.exploded = self.exploded or verdict.exploding or any(a.kind == "exploding" for a in verdict.alerts)
        if self.fired:
            verdict.alerts = [a for a in verdict.alerts if a.kind != "vanishing"]
            return verdict
        if not stats.finite:
            return verdict
        top = max(stats.grad_norm, default=0.0)
        if top <= 0:
            return verdict
        self.gaps = [
            *self.gaps[-9:],
            {n: math.log10(top / g) for n, g in zip(stats.layers, stats.grad_norm) if n not in self.exempt and g > 0},
        ]
        if self.exploded or len(self.losses) < self.steps or len(self.gaps) < 10:
            return verdict
        start, now = statistics.median(self.losses[:5]), statistics.median(self.losses[-10:])
        self.best = min(self.best, statistics.median(self.losses[-5:]))
        if self.best < (1.0 - self.tolerance) * start:  # the loss has moved at some point: it learns, or learned
            return verdict
        names = [n for n in stats.layers if all(n in g for g in self.gaps)]
        gap = {n: statistics.median(g[n] for g in self.gaps) for n in names}
        if not gap or max(gap.values()) < self.decades:
            return verdict
        layers = tuple(n for n in names if gap[n] >= self.decades - 1)
        self.fired = True
        message = (
            f"Vanishing gradients at step {step}: the loss has not moved from its start ({now:.4g} against"
            f" {start:.4g}) while {', '.join(layers[:4])} lie {max(gap.values()):.1f} decades below the largest"
            " layer: the first layers are not learning."
        )
        alert = vanishing_alert(step, layers, 10 ** -max(gap.values()), 10**-self.decades, message)
        verdict.alerts = [a for a in verdict.alerts if a.kind != "vanishing"] + [alert]
        return verdict


# ---------------------------------------------------------------------------------------------------------- factories

RULE_CONSTANTS = (
    "takeoff_drop",
    "confirm_jump",
    "climb_factor",
    "trend_floor",
    "rise_margin",
    "stall_steps",
    "stall_decades",
    "stall_tolerance",
    "rebase",
)


LOSS_RULES = ("takeoff_drop", "confirm_jump", "climb_factor", "trend_floor", "rise_margin")


def candidate_factory(**constants: Any) -> DetectorMaker:
    """A detector with the rules whose constants are given (``rebase=True`` for the chained norm)."""
    config, rest = config_and_rest(constants)
    unknown = set(rest) - set(RULE_CONSTANTS)
    if unknown:
        raise ValueError(f"unknown constants {sorted(unknown)}")

    def make(exempt: frozenset[str]) -> Any:
        detector: Any
        loss_rules = {k: rest[k] for k in LOSS_RULES if k in rest}
        if loss_rules:
            detector = LossAware(config, exempt_layers=exempt, **loss_rules)
        else:
            detector = GradientDetector(config, exempt_layers=exempt)
        if rest.get("rebase"):
            detector = ChainedNorm(detector)
        if rest.get("stall_decades") is not None:
            detector = Stalled(detector, exempt, rest.get("stall_steps", 20), rest["stall_decades"],
                               rest.get("stall_tolerance", 0.05))  # fmt: skip
        return detector

    return make


@dataclass(frozen=True)
class Candidate:
    """A detector to score: its factory, the constants it is shown with, and its grid for the LOFO table."""

    doc: str
    factory: Callable[..., DetectorMaker]
    defaults: dict[str, Any] = field(default_factory=dict)
    space: Mapping[str, Sequence[Any]] = field(default_factory=dict)


#: today's detector: a small grid around GradWatch's defaults (the defaults first)
BASELINE_SPACE: dict[str, Sequence[Any]] = {
    "exploding_zscore": (4.0, 6.0),
    "exploding_patience": (2, 3),
    "vanishing_ratio": (1e-5, 1e-4),
    "vanishing_patience": (50, 20),
}
REBASE = {"rebase": True}
RISE = {"rise_margin": 0.0}
CLIMB = {"climb_factor": 3.0}
STALLED = {"stall_steps": 20, "stall_decades": 4.0, "stall_tolerance": 0.05}
COMBINED = {**REBASE, **RISE, **CLIMB, **STALLED}

CANDIDATES: dict[str, Candidate] = {
    "baseline": Candidate("today's detector (GradWatch defaults)", baseline_factory, {}, BASELINE_SPACE),
    "rebase": Candidate("chained total norm over the layers present at consecutive steps", candidate_factory,
                        REBASE, {**REBASE, "exploding_zscore": (4.0, 6.0), "exploding_patience": (2, 3)}),
    "rise": Candidate("spikes and steady rises alerted only with a rising smoothed loss", candidate_factory, RISE,
                      {"rise_margin": (0.0, 0.05, 0.1)}),
    "loss_climb": Candidate("the smoothed loss at climb_factor x its start is an explosion", candidate_factory, CLIMB,
                            {"climb_factor": (3.0, 10.0)}),
    "stalled": Candidate("vanishing judged with the loss: a loss that never moved, layers decades apart",
                         candidate_factory, STALLED,
                         {"stall_steps": (20, 30, 45), "stall_decades": (3.0, 4.0), "stall_tolerance": (0.05,)}),
    "combined": Candidate("rebase + rise + loss_climb + stalled", candidate_factory, COMBINED,
                          {**COMBINED, "rise_margin": (0.0, 0.05), "climb_factor": (3.0, 10.0),
                           "stall_decades": (3.0, 4.0), "stall_steps": (20, 30)}),
    "takeoff": Candidate("(not kept) spikes and steady rises silent while the smoothed loss falls", candidate_factory,
                         {"takeoff_drop": 0.05}, {"takeoff_drop": (0.02, 0.05, 0.1)}),
    "confirm_jump": Candidate("(not kept) a startup jump alerted once the next step confirms it", candidate_factory,
                              {"confirm_jump": True}, {"confirm_jump": True}),
    "trend_floor": Candidate("(not kept) the trend rule guarded by a tenth of the start, not the first value",
                             candidate_factory, {"trend_floor": 0.1}, {"trend_floor": (0.1,)}),
}  # fmt: skip
for _c in CANDIDATES.values():  # a grid's single values may be given bare
    object.__setattr__(_c, "space", {k: v if isinstance(v, tuple) else (v,) for k, v in _c.space.items()})
