"""Candidate detection rules, prototyped as wrappers and subclasses of today's detector, scored on the bank.

Each follows from how training fails (or does not):

- ``rebase`` (**compare like with like**): the total norm the exploding rules see is *chained* over the layers
  present at both of two consecutive steps: each step's norm is the previous step's times the growth of the
  layers the two steps share. A backbone that joins, an adapter added with ``add_param_group``, a branch used on
  one batch in three, layers frozen mid-run: the change of set is never a jump, and with an unchanging set the
  chained norm is the total norm itself. Layers new to the run are judged by the per-layer tests from the step they
  join.
- ``takeoff`` (**a norm that rises while the loss falls is learning**): the spike and steady-rise rules do not
  fire while the smoothed loss (median of the last 5 observed losses) is at least ``takeoff_drop`` below the
  median of the 5 before.
- ``confirm_jump`` (**a startup transient falls back at once**): a startup *jump* (the norm 10x its first steps'
  within the warm-up) is an explosion only when the next step confirms it (its norm not already back below half
  the jump's).
- ``loss_climb`` (**a loss far above where training started is a divergence, whatever the norm**): the smoothed
  loss at ``climb_factor`` times its start (the median of the first 5 observed losses) on two consecutive
  steps is an explosion, even when the norm stays flat (dead ReLUs under a diverging head).
- ``stalled`` (**vanishing judged with the loss**): once ``stall_steps`` losses have been observed, a loss that
  has not moved from its start (median of the last 10 within ``stall_tolerance`` of the median of the first 5)
  while layers lie ``stall_decades`` or more below the largest (median over the last 10 steps) is vanishing,
  naming every layer ``stall_decades - 1`` or more decades below the largest. A slowly learning deep net has a
  moving loss; a converged one has a loss far below its start.
- ``combined``: all five.
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
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.takeoff_drop, self.confirm_jump, self.climb_factor = takeoff_drop, confirm_jump, climb_factor
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

    def _climbed(self) -> bool:
        if self.climb_factor is None or len(self.losses) < 8:
            return False
        start = statistics.median(self.losses[:5])
        up = start > 0 and statistics.median(self.losses[-5:]) >= self.climb_factor * start
        self.climb_run = self.climb_run + 1 if up else 0
        return self.climb_run >= 2

    def judge_exploding(self, rule: str | None, x: float | None) -> str | None:
        climbed = self._climbed()
        if self.confirm_jump:
            pending, self.pending_jump = self.pending_jump, None
            if rule == "jump":
                self.pending_jump = x
                rule = None
            elif pending is not None and x is not None and x >= pending - _HALF:
                rule = "jump"  # the next step confirms the jump
        if rule in ("spikes", "growth") and self._falling():
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
        if now < (1.0 - self.tolerance) * start:
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
    "stall_steps",
    "stall_decades",
    "stall_tolerance",
    "rebase",
)


def candidate_factory(**constants: Any) -> DetectorMaker:
    """A detector with the rules whose constants are given (``rebase=True`` for the chained norm)."""
    config, rest = config_and_rest(constants)
    unknown = set(rest) - set(RULE_CONSTANTS)
    if unknown:
        raise ValueError(f"unknown constants {sorted(unknown)}")

    def make(exempt: frozenset[str]) -> Any:
        detector: Any
        loss_rules = {k: rest[k] for k in ("takeoff_drop", "confirm_jump", "climb_factor") if k in rest}
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
TAKEOFF = {"takeoff_drop": 0.05}
CONFIRM = {"confirm_jump": True}
CLIMB = {"climb_factor": 3.0}
STALLED = {"stall_steps": 20, "stall_decades": 4.0, "stall_tolerance": 0.05}
COMBINED = {**REBASE, **TAKEOFF, **CONFIRM, **CLIMB, **STALLED}

CANDIDATES: dict[str, Candidate] = {
    "baseline": Candidate("today's detector (GradWatch defaults)", baseline_factory, {}, BASELINE_SPACE),
    "rebase": Candidate("chained total norm over the layers present at consecutive steps", candidate_factory,
                        REBASE, {**REBASE, "exploding_zscore": (4.0, 6.0), "exploding_patience": (2, 3)}),
    "takeoff": Candidate("no spike/steady-rise explosion while the smoothed loss falls", candidate_factory, TAKEOFF,
                         {"takeoff_drop": (0.02, 0.05, 0.1)}),
    "confirm_jump": Candidate("a startup jump is an explosion once the next step confirms it", candidate_factory,
                              CONFIRM, CONFIRM),
    "loss_climb": Candidate("the smoothed loss at climb_factor x its start is an explosion", candidate_factory, CLIMB,
                            {"climb_factor": (3.0, 10.0)}),
    "stalled": Candidate("vanishing judged with the loss: a loss that has not moved, layers decades apart",
                         candidate_factory, STALLED,
                         {"stall_steps": (20, 30, 45), "stall_decades": (3.0, 4.0), "stall_tolerance": (0.05,)}),
    "combined": Candidate("rebase + takeoff + confirm_jump + loss_climb + stalled", candidate_factory, COMBINED,
                          {**{k: (v,) for k, v in COMBINED.items()}, "takeoff_drop": (0.05, 0.1),
                           "climb_factor": (3.0, 10.0), "stall_decades": (3.0, 4.0), "stall_steps": (30, 45)}),
}  # fmt: skip
for _c in CANDIDATES.values():  # a grid's single values may be given bare
    object.__setattr__(_c, "space", {k: v if isinstance(v, tuple) else (v,) for k, v in _c.space.items()})
