"""Orders of magnitude within the first steps: the exploding rule that needs no history.

A learning rate far too high grows the norm tenfold or more within two or three steps, before any history exists, at
times 3-5x per step with no single step tenfold, and the loss with it (an overshoot); a net leaving a small
initialisation grows its first norms tenfold over a loss that stays level (its first gradients are batch noise on tiny
weights). :class:`Jump` tells the two apart by the loss; under ``clip="adaptive"`` a jump waits a step, so an outlier
batch among the first steps is no explosion. Part of ``judge/exploding.py``'s rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from typing_extensions import override

from lightning_gradwatch.judge.context import ORDERS_OF_MAGNITUDE
from lightning_gradwatch.judge.rule import ExplodingRule, Finding, NormStep, times, versus
from lightning_gradwatch.judge.state import as_optional_float, state
from lightning_gradwatch.kinds import Cause, Rule

__all__ = ["JUMP_LOSS_FACTOR", "JUMP_PEAK_LOSS_FACTOR", "JUMP_STEPS", "PLATEAU_PATIENCE", "Jump"]

#: grown from the start (:class:`Jump`): the loss this many times its first value ...
JUMP_LOSS_FACTOR = 3.0
#: ... on this many steps in a row (a bad batch is one step; a divergence compounds)
JUMP_STEPS = 2
#: a run of spikes, or of jumps held by clipping, that does not compound is an explosion only after this many times
#: ``exploding_patience`` (and, for spikes, not while the loss comes down since it began)
PLATEAU_PATIENCE = 2
#: a norm tenfold over the largest so far is a jump while the step's loss is this many times the first (an overshoot
#: lifts the loss with the norm: a tanh net at lr 50, 3x at the tenfold step); short of :data:`ORDERS_OF_MAGNITUDE`,
#: a tenfold norm over a loss that did not grow is a net leaving a small initialisation (its first gradients are
#: batch noise on tiny weights: 0.38 then 3.8, its batch loss 1.4x)
JUMP_PEAK_LOSS_FACTOR = 2.0


@dataclass(eq=False)
class Jump(ExplodingRule):
    """Orders of magnitude within the first steps: no history is needed to see that.

    A norm ``exploding_jump_factor`` times the largest so far while the loss is :data:`JUMP_PEAK_LOSS_FACTOR` times
    the first (a hundredfold norm, or one without a loss, by itself); or, step after step, that many times the first
    norm while the loss is :data:`JUMP_LOSS_FACTOR` times the first loss (a learning rate far too high multiplies both
    a few times per step: no single step is a tenfold jump, three in a row are a hundredfold).

    Under ``clip="adaptive"`` a jump waits a step: an outlier batch in the first steps is one such step, scaled down
    to the run's typical norm before it reaches the weights, and the next step's norm and loss are back among the
    run's. (A fixed ``clip`` may hold a step to a norm far above the run's: there a jump fires at once.) The jump
    fires at the next step when the run is not back: its norm halfway (in decades) to a jump over the norms before
    or further (3.2x them; the norm alone, as a loss need not tell progress: a WGAN critic's). A next
    step that jumps itself fires at once after an update that was not held; after a held one it is another outlier
    batch, or the run going on up: it waits too, up to ``exploding_patience`` (3) jumps in a row each above the one
    before (a divergence compounds), or :data:`PLATEAU_PATIENCE` (2) times that many whatever their norms. A waiting
    step's norm is not learnt: the run's history is the norms of its ordinary steps. A run back after the jumps came
    through them: the largest of them is a norm its batches reach, and a jump is measured over it from then on (a run
    with outlier batches has many).
    """

    grown_steps: int = state(0, load=int)  # consecutive steps grown from the start, the loss with it
    losses_at: int = state(0, load=int)  # finite losses seen at the step before (a fresh one since: this step's)
    waited: int = state(0, load=int)  # consecutive jump steps that waited, their updates held by clipping
    waited_peak: float | None = state(None, load=as_optional_float)  # log10 of the largest norm before the first
    waited_rising: bool = state(True, load=bool)  # each jump that waited was above the one before
    waited_top: float | None = state(None, load=as_optional_float)  # log10 of the largest norm that waited
    waited_from: int = state(0, load=int)  # the step the first of them was at

    name: ClassVar[Rule] = Rule.JUMP
    settings: ClassVar[tuple[str, ...]] = ("exploding_jump_factor",)

    def __post_init__(self) -> None:
        self._from_start = False  # this step fires as grown from the start (not as a jump over the largest so far)
        self._fresh = False  # a finite loss was told for this step
        self._step = 0  # this step's number
        # a jump that waited fires at this step: (its first step, its largest norm, the norm before it, not back)
        self._waited_on: tuple[int, float | None, float | None, bool] | None = None

    def observe(self, step: NormStep) -> None:
        """Keep the first norm; count the steps in a row grown from it, with the loss."""
        seen = self.ctx.losses.losses_seen
        self._fresh, self.losses_at, self._step = seen > self.losses_at, seen, step.step
        first = self.ctx.norms.first_norm
        grown = (
            not self.ctx.norms.warm
            and step.x is not None
            and first is not None
            and step.x >= first + math.log10(self.config.exploding_jump_factor)
            and self._loss_grown()
        )
        self.grown_steps = self.grown_steps + 1 if grown else 0

    def _loss_known(self) -> bool:
        """A finite loss was told for this step, and the first loss is positive.

        Not known: a loop that passes no loss, or passes it on some steps only (the latest would be an older step's),
        a non-finite loss, a first loss at or below zero (a negative log-likelihood has no scale to be a multiple of).
        """
        losses = self.ctx.losses
        return self._fresh and bool(len(losses.start_losses)) and losses.start_losses.first() > 0

    def _loss_grown(self, factor: float = JUMP_LOSS_FACTOR) -> bool:
        """The latest loss is ``factor`` times the first (both known, the first positive)."""
        losses = self.ctx.losses
        if not len(losses.start_losses) or not len(losses.recent_losses):
            return False
        first = losses.start_losses.first()
        return first > 0 and losses.recent_losses.last() >= factor * first

    @property
    def waiting(self) -> bool:
        """A jump is waiting: this step's norm is not learnt (see the class docstring)."""
        return self.waited > 0

    def _peak(self) -> float | None:
        """The largest norm the jump is measured over: the run's, or the one before the first step that waited."""
        return self.waited_peak if self.waited else self.ctx.norms.peak

    @override
    def fires(self, step: NormStep) -> bool:
        self._waited_on = None
        adaptive = self.ctx.traits.adaptive_clipping
        if self.waiting and not adaptive:
            self._end_wait()  # resumed without clip="adaptive": no update is held any more
        peak = self._peak()
        over_peak = self._over_peak(step.x, peak)
        # grown from the start: the run's first blow-up (one already alerted, by a jump over the peak, is this one)
        self._from_start = not over_peak and self.grown_steps >= JUMP_STEPS and not self.ctx.episode.exploded
        if not adaptive:
            return over_peak or self._from_start
        if self.waiting and step.x is None:
            return False  # no gradient at this step: it tells nothing of the jump waited on
        return self._waits_out(step.x, over_peak or self._from_start, self._not_back(step.x, peak))

    def _not_back(self, x: float | None, peak: float | None) -> bool:
        """After a jump that waited: halfway to a jump over the norms before it (in decades), or further.

        The norm alone: a loss need not tell progress (a WGAN critic's swings through zero), and a batch after an
        outlier is back among the run's norms whatever its loss.
        """
        return self.waiting and x is not None and x > (peak or 0.0) + math.log10(self.config.exploding_jump_factor) / 2

    def _over_peak(self, x: float | None, peak: float | None) -> bool:
        """The log norm ``x`` jumps over ``peak`` (in the warm-up, or while a jump waits), the loss grown with it."""
        if x is None or peak is None or (self.ctx.norms.warm and not self.waiting):
            return False
        return x > peak + math.log10(self.config.exploding_jump_factor) and (
            not self._loss_known()  # the norm alone
            or self._loss_grown(JUMP_PEAK_LOSS_FACTOR)
            or x > peak + math.log10(ORDERS_OF_MAGNITUDE)
        )

    def _waits_out(self, x: float | None, jumped: bool, not_back: bool) -> bool:
        """Whether a jump found at this step (log norm ``x``) fires now, under ``clip="adaptive"`` (class docstring).

        ``jumped``: this step jumps (over the norms before, or grown from the start); ``not_back``: after a jump that
        waited, the run is not back. A jump waits. After one, the next step fires it when the run is not back, unless
        it jumps itself (another outlier batch: it waits too); either fires at once when the update waited on was not
        held. A step back among the norms before the jump ends the wait.
        """
        if self.waiting and (jumped or not_back):
            if not self.ctx.norms.previous_held or not jumped or self._waited_out(x):
                self._waited_on = (self.waited_from, self.waited_top, self.waited_peak, not jumped)
                self._end_wait()
                return True
        elif not jumped:
            if self.waiting:
                self._came_back()
            self._end_wait()
            return False
        if not self.waiting:
            self.waited_peak, self.waited_from = self._peak(), self._step
        self.waited_top = x if self.waited_top is None or x is None else max(self.waited_top, x)
        self.waited += 1
        return False

    def _came_back(self) -> None:
        """The run came through the jumps that waited: their batches are the run's, the peak rises to the largest."""
        norms, top = self.ctx.norms, self.waited_top
        if top is not None:
            norms.peak = top if norms.peak is None else max(norms.peak, top)

    def _end_wait(self) -> None:
        self.waited, self.waited_peak, self.waited_top, self.waited_rising = 0, None, None, True

    def _waited_out(self, x: float | None) -> bool:
        """Whether the held jumps in a row, this step's included, are the run going up.

        ``exploding_patience`` (3) of them each above the one before (a divergence compounds), or
        :data:`PLATEAU_PATIENCE` (2) times that many whatever their norms (outlier batches in a row come in any
        order: 50, 68, then 82, 35, 27).
        """
        previous = self.ctx.norms.previous
        self.waited_rising = self.waited_rising and x is not None and previous is not None and x > previous
        patience = self.config.exploding_patience
        return self.waited + 1 >= (patience if self.waited_rising else PLATEAU_PATIENCE * patience)

    @override
    def describe(self, step: NormStep) -> Finding:
        if self._waited_on is not None:
            return self._describe_wait(step, *self._waited_on)
        norms = self.ctx.norms
        first = norms.first_norm if self._from_start else None  # grown from the first norm, or a jump over the peak
        reference = norms.real(first if first is not None else self._peak() or 0.0)
        ratio = times(step.norm, reference)
        if first is not None:
            losses = self.ctx.losses
            loss_first, loss_now = losses.start_losses.first(), losses.recent_losses.last()
            what = (
                f"total norm {step.norm:.4g} is {ratio:.3g}x the first step's ({reference:.4g}) on"
                f" {self.grown_steps} steps in a row, and the training loss {versus(loss_now, loss_first)} its"
                f" first value ({loss_first:.4g} to {loss_now:.4g}): both grew from the start"
            )
        else:
            orders = ": orders of magnitude within the first steps" if ratio >= ORDERS_OF_MAGNITUDE else ""
            losses = self.ctx.losses
            with_loss = (
                f", the training loss {versus(losses.recent_losses.last(), losses.start_losses.first())} its first"
                " value"
                if self._loss_known()
                else ""
            )
            what = (
                f"total norm {step.norm:.4g} is {ratio:.3g}x the largest norm of the run's first steps"
                f" ({reference:.4g}){with_loss}{orders}"
            )
        return Finding(what, Cause.STARTUP, step.norm, self.config.exploding_jump_factor * reference)

    def _describe_wait(self, step: NormStep, at: int, top: float | None, peak: float | None, away: bool) -> Finding:
        """A jump that waited, fired: the run not back after it (``away``), or its norm jumping on."""
        norms = self.ctx.norms
        reference, jumped = norms.real(peak or 0.0), norms.real(top or 0.0)
        what = (
            f"total norm {step.norm:.4g} is {times(step.norm, reference):.3g}x the largest norm of the run's first"
            f' steps ({reference:.4g}), after a jump at step {at} to {jumped:.4g} that clip="adaptive" scaled down'
            + (": the run has not come back" if away else ": the norm jumps on")
        )
        factor = self.config.exploding_jump_factor
        return Finding(what, Cause.STARTUP, step.norm, (math.sqrt(factor) if away else factor) * reference)
