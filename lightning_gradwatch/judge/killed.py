"""A blow-up that kills layers: one update far larger than the ones before, after which layers give no gradient.

A ReLU unit whose weights one too-large update pushed negative for every input gives exactly zero gradient from then
on, and so do the layers before it once all of a layer's units are dead: the run goes on, its loss near chance, the
head's bias the only part still learning. The blow-up itself is one step: the next step's norm is the dead net's,
small, so the spike rules see a lone spike that fell back, and the per-layer rule names the dead layers only after
``vanishing_patience`` (50) steps, as vanishing. :class:`Kill` ties the two: a step whose total norm is
``exploding_jump_factor`` (10) times the median of the :data:`BEFORE` steps before it (or a spike), after which layers
that had a gradient on each of the :data:`ALIVE` steps before it are exactly zero on :data:`DEAD_STEPS` (5) of the
:data:`FOLLOW` (10) steps after it, the last :data:`STILL_DEAD` (3) of them included, while the loss (median of 5) is
above its best from before the blow-up (or no loss is known), is an explosion, alerted as soon as that holds,
naming those layers.

Exact zeros in a layer that had a gradient on every step before are not noise: a healthy layer's gradient is not
exactly zero on five steps of ten. A branch used on some batches only (its gradients zeroed between uses) is not
alive on every step before; a loss term switched off gives zeros in a run whose loss goes on falling; a model that
fits its data exactly has a loss of 0 and every gradient zero, after whatever step came before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from typing_extensions import override

from lightning_gradwatch.alerts import format_layers
from lightning_gradwatch.history import Window
from lightning_gradwatch.judge.rule import ExplodingRule, Finding, NormStep
from lightning_gradwatch.judge.state import as_int_map, as_optional_float, state
from lightning_gradwatch.kinds import Cause, Rule

__all__ = ["ALIVE", "BEFORE", "DEAD_STEPS", "FOLLOW", "STILL_DEAD", "Kill"]

#: a blow-up's norm is compared with the median of this many steps before it (at least 3 of them) ...
BEFORE = 10
#: ... the layers it may kill had a gradient (not exactly zero) on each of this many steps before it ...
ALIVE = 5
#: ... and are exactly zero on this many of the :data:`FOLLOW` steps after it ...
DEAD_STEPS = 5
#: ... the last this many of them included
STILL_DEAD = 3
#: a blow-up is followed for this many steps (units die with its update, or with the next few)
FOLLOW = 10


def _norm_window(values: Any = ()) -> Window:
    return Window(BEFORE, (float(v) for v in values))


@dataclass(eq=False)
class Kill(ExplodingRule):
    """One step's blow-up, after which layers that had gradients have exactly none (see the module docstring)."""

    kill_norms: Window = state(load=_norm_window, factory=_norm_window)  # log10 of the last BEFORE (chained) norms
    live_steps: dict[str, int] = state(load=as_int_map, factory=dict)  # per layer: consecutive steps with a gradient
    blowup: int | None = state(None, load=lambda v: None if v is None else int(v))  # the blow-up's step
    blowup_norm: float = state(0.0, load=float)  # its total norm
    blowup_ratio: float = state(0.0, load=float)  # ... over the median of the steps before
    blowup_floor: float | None = state(None, load=as_optional_float)  # the best loss (median) before it
    blowup_since: int = state(0, load=int)  # steps seen since it
    killed_zeros: dict[str, int] = state(load=as_int_map, factory=dict)  # the layers alive then: exact zeros since
    killed_run: dict[str, int] = state(load=as_int_map, factory=dict)  # ... and in a row, up to this step

    name: ClassVar[Rule] = Rule.KILL

    def __post_init__(self) -> None:
        self._killed: tuple[str, ...] = ()  # the layers this step finds killed ...
        # ... by this blow-up: its step, norm and ratio, the steps since and the fewest zeros among them of a layer
        self._blowup = (0, 0.0, 0.0, 0, 0)

    def observe(self, step: NormStep) -> None:
        """Follow a blow-up's aftermath (a new blow-up is followed from its step); count each layer's live steps."""
        self._killed = ()
        stats, exempt = step.stats, self.ctx.exempt_layers
        if self.ctx.episode.exploding_episode:  # an explosion already alerted: its aftermath is its own
            self.blowup = None
        ratio = self._blow_up(step)
        if ratio is not None:  # a new blow-up: followed from here (the layers alive then had a gradient now)
            self.blowup, self.blowup_norm, self.blowup_ratio, self.blowup_since = step.step, step.norm, ratio, 0
            self.blowup_floor = self.ctx.losses.loss_floor
            alive = [n for n in stats.layers if n not in exempt and self.live_steps.get(n, 0) >= ALIVE]
            self.killed_zeros, self.killed_run = dict.fromkeys(alive, 0), {}
            if not alive:
                self.blowup = None
        elif self.blowup is not None:
            self._follow(step)
        for name, norm in zip(stats.layers, stats.grad_norm):
            self.live_steps[name] = self.live_steps.get(name, 0) + 1 if norm != 0.0 else 0
        if step.x is not None:
            self.kill_norms.append(step.x)

    def _blow_up(self, step: NormStep) -> float | None:
        """A blow-up's ratio to the median norm of the steps before (``inf`` with none), or ``None``: no blow-up.

        A blow-up is a spike, or a norm ``exploding_jump_factor`` times the median of the steps before (3 or more).
        """
        if step.x is None:
            return None
        ratio = 10 ** (step.x - self.kill_norms.median()) if len(self.kill_norms) else math.inf
        if step.spike or (len(self.kill_norms) >= 3 and ratio >= self.config.exploding_jump_factor):
            return ratio
        return None

    def _follow(self, step: NormStep) -> None:
        """Count the exact zeros of the layers alive at the blow-up, for :data:`FOLLOW` steps.

        Zero on :data:`DEAD_STEPS` of the steps since, the last :data:`STILL_DEAD` of them included, is killed: dying
        units flicker (a few inputs still reach one for a step or two).
        """
        self.blowup_since += 1
        zero = {n for n, g in zip(step.stats.layers, step.stats.grad_norm) if g == 0.0}
        for name in self.killed_zeros:
            self.killed_zeros[name] += name in zero
            self.killed_run[name] = self.killed_run.get(name, 0) + 1 if name in zero else 0
        killed = self._dead()
        if killed and self._lifted():
            self._killed = killed
            zeros = min(self.killed_zeros[n] for n in killed)
            self._blowup = (self.blowup or 0, self.blowup_norm, self.blowup_ratio, self.blowup_since, zeros)
        if killed or self.blowup_since >= FOLLOW:
            self.blowup = None

    def _dead(self) -> tuple[str, ...]:
        """The followed layers zero on :data:`DEAD_STEPS` steps since the blow-up, the last :data:`STILL_DEAD` too."""
        run = self.killed_run
        return tuple(n for n, z in self.killed_zeros.items() if z >= DEAD_STEPS and run.get(n, 0) >= STILL_DEAD)

    def _lifted(self) -> bool:
        """Whether the loss (median of 5) is above its best from before the blow-up by ``stall_tolerance`` of it.

        The units that died did part of what the run had learnt. A model that fits its data exactly has a loss of 0
        and zero gradients: that is convergence. No loss known: the zeros alone.
        """
        level, floor = self.ctx.losses.level, self.blowup_floor
        if level is None or floor is None:
            return True
        return level > floor + self.config.stall_tolerance * abs(floor)

    @override
    def fires(self, step: NormStep) -> bool:
        return bool(self._killed)

    @override
    def describe(self, step: NormStep) -> Finding:
        at, norm, ratio, since, zeros = self._blowup
        level, floor = self.ctx.losses.level, self.blowup_floor
        loss = (
            f", and the training loss (median of the last 5 steps, {level:.4g}) is above its best before it"
            f" ({floor:.4g})"
            if level is not None and floor is not None
            else ""
        )
        what = (
            f"the update of step {at} (total norm {norm:.4g}, {ratio:.3g}x the median of the steps before) left"
            f" {format_layers(self._killed)} with gradients exactly zero on"
            f" {f'each of the {since}' if zeros == since else f'{zeros} of the {since}'} steps since: it killed their"
            f" units{loss}"
        )
        threshold = norm / ratio * self.config.exploding_jump_factor if math.isfinite(ratio) and ratio > 0 else norm
        return Finding(what, Cause.KILL, norm, threshold, self._killed, "Killed")
