"""Exploding gradients: six rules, and the watch that keeps the episode.

An episode is alerted once, by whichever rule sees it first. Every norm below is the *chained* total norm of
``judge/context.py`` (the total norm, compared like with like when the set of layers with a gradient changes), and
every loss a median over several steps (one mini-batch loss against the next is noise):

- :class:`Jump`: during the warm-up, a total norm ``exploding_jump_factor`` (10) times the largest norm so far while
  the step's loss is :data:`JUMP_PEAK_LOSS_FACTOR` (2) times the first loss (or :data:`ORDERS_OF_MAGNITUDE` times the
  largest norm, or no loss known), or that many times the first norm on :data:`JUMP_STEPS` (2) steps in a row while
  their loss is :data:`JUMP_LOSS_FACTOR` (3) times the first loss. A learning rate far too high grows the norm tenfold
  or more within two or three steps, before any history exists, at times 3-5x per step with no single step tenfold,
  and the loss with it (an overshoot); a net leaving a small initialisation grows its first norms tenfold over a
  loss that stays level (its first gradients are batch noise on tiny weights).
- :class:`Spikes`: a step is a *spike* when its norm exceeds the spike threshold (``exploding_zscore`` standard
  deviations of ``log10(total norm)`` over its running mean, at least ``exploding_min_factor`` times the mean, or the
  absolute ``exploding_threshold``). Spikes move the mean toward a lasting new level (clipped to the spike threshold)
  but never widen the variance, so an explosion cannot hide by inflating its own threshold. ``exploding_patience``
  consecutive spikes that are not already falling back (the latest at least 3/4 of the one before; from the third
  on, above it and rising at least half as much as the one before: a divergence compounds, a catapult at the peak of
  a warm-up slows and turns), whose latest
  exceeds ``exploding_ceiling_factor`` times the run's *ceiling* (the largest norm of an ordinary step so far,
  forgetting by a factor 10 per ``exploding_ceiling_memory`` steps), while the loss rises, are an explosion: a
  converged classifier's hard-batch spikes stay below the norms of its early training, a divergence leaves its whole
  history behind, and raises the loss with it. A lone spike, one that falls back at once, or spikes while the loss
  does not rise (a plateau breaking: the norm leads, the loss follows down; a bad batch the run absorbs) are counted
  and not alerted. A run of spikes the run comes back from unalerted raises the ceiling to its largest norm (by at
  most a decade): SGD at the peak of a warm-up catapults its loss and norm for a few steps, again and again, and
  settles each time. *A shock the run learns from* is no explosion: new data (a task switched, classes renamed or
  added), or a learning rate raised that the optimizer absorbs, lifts loss and norm at once, to a level the norm
  then stays at while the loss comes down. So the spikes fire at the patience only while they *compound* (the
  latest norm :data:`COMPOUNDING` (1.5) times the step's before, or the one before that while still rising: a
  corrupted batch's 4e3, then 5e7; a run a bad batch threw off climbing again from where its spike fell back to) or are
  :data:`ORDERS_OF_MAGNITUDE` beyond the ceiling. When the loss jumped with the first spike (a shock's first step: its
  loss ``exploding_rise_margin`` above the median of the 5 before), the norm compounds only while every one of the
  losses since (the last 3 of them) climbs that margin past where the shock put it (its first loss, the new data's
  under the weights it found; the lower of its first two when the run of spikes has been :data:`ORDERS_OF_MAGNITUDE`
  beyond the ceiling: a corrupted batch's own loss is an outlier, and its update threw the run off to where the next
  batch's loss is): longer sequences, smaller batches or new data lift the loss at once and the norm may swing for a
  few steps (3.8, 9.1, 4.0, 11.7) while the optimizer adapts, with no batch's loss climbing; a divergence raises every
  batch's loss with its norm. Spikes whose loss did not jump with them (the norm leading, the loss following)
  compound as the norm does. A flat run of spikes is judged on :data:`PLATEAU_PATIENCE` (2) times the patience,
  and not while its loss comes down (the median of its last 3 losses below that of its first 3)
  nor, after a shock, while its losses do not climb past where the shock put them (a GRU's loss sat at the jump's
  0.9 for 7 spikes, then came down: a loss that stays up far from where it started is the trend and climb rules'
  to judge), all of this only while its losses stay within ``exploding_climb_factor`` (10) times the highest first
  one. Both are judged since the run began: where the shock put the loss is kept once its first losses have left the
  10-loss window, and a loss now (median of 3) below where it put it has come down (a loss term switched on mid-run
  keeps the norm up for a hundred steps while the run learns it down, and some 10 noisy losses on the way end higher
  than they began). Not while the run is taking off, as for :class:`Growth` (the VQ-VAE's climb crosses the spike
  threshold on its way: a flat run of 6-7 spikes).
- :class:`Growth`: ``exploding_growth_steps`` consecutive steps each above the one before and above mean + 2 std,
  while the loss rises (a rising norm with a loss that does not rise is a model taking off, not diverging), to a norm
  above the ceiling (a catapult's slow build-up below one the run already came back from is not a divergence), and
  not slowing down (the latest rise at least half the one before); and not while the run is taking off: within its
  first :data:`TAKE_OFF_LOSSES` (50) losses, its loss not yet halved from its start (no median below :data:`LEARNT`
  of it) and still within the highest of its first 10 losses (a net leaving a small initialisation grows its norm
  10-100x while its noisy loss stays level: a rise of 25% between medians there is a batch or two); or, no median
  loss yet below :data:`UNMOVED` (0.7) of the start, its norm within ``exploding_jump_factor`` (10) times its first
  norm (a loss term far from its equilibrium at the start, a VQ-VAE's codebook at U(-1/K, 1/K) far below its
  encoder's outputs, lifts the loss 8x and the norm 9x over 20 steps and comes back as the codebook catches up). A
  divergence from the start does both, its loss past its first ones and its norm past its first's decade; a run
  that had learnt first (AdamW far too high: a transformer's loss at half its start, then 9x back up, its norm 6x)
  is judged as before.
- :class:`Trend`: the loss (median of the last 5 steps) at ``exploding_trend_loss_factor`` (3) times its lowest
  median of the last 75-100 steps and ``exploding_trend_start_factor`` (2) times the highest of its first 10 losses
  (where training started: with batches of 2 the median of the first 5 was a lucky low one, 6x below the loss of an
  untrained model, on 3 of 30 seeds), while the median norm has grown ``exploding_trend_norm_factor`` (3) times since
  the loss was at that low (a divergence climbs from where the run just was, within tens of steps; a loss that creeps
  up over hundreds, a TD loss whose targets grow as the values are learnt, does not):
  Adam/AdamW at a too-high learning rate, whose normalised updates make norm and loss climb together over tens of
  steps, often without ever producing a NaN. A converged model's loss wandering, or a fine-tune's near where it
  started, is not a trend: batch by batch, a hard batch raises the loss and the norm together, and medians of both
  wander together with them. The trend must hold on :data:`TREND_PATIENCE` + 1 (6) consecutive steps, over which
  the loss does not come down (a loss that jumped with new data and is being learnt is no trend: over its last 10
  losses, or below where the trend began, median of 3), unless every one
  of the last 5 losses is at the trend's factors above the best and above the highest of the first 10 and the loss
  still climbs (a divergence raises the loss of every batch, step after step): in a noisy run (batches of 2, a rare
  class weighted 50x) a few high batch losses in a row lift a median of 5 past the best, itself a lucky low one,
  while low batch losses remain among them. Not while the run is taking off, as for :class:`Growth` (the VQ-VAE's
  climb is every batch's, 8x).
- :class:`Climb`: every one of the last 5 losses ``exploding_climb_factor`` (10) times the highest of the first 10,
  on :data:`CLIMB_PATIENCE` steps in a row, whatever the norm does: a divergence whose norm stays flat (dead units
  under a diverging head) raises the loss of every batch. A run whose batch losses are heavy-tailed (outlier targets
  in some batches) has batches far above a median of its first losses all along, and clean batches among them.

- :class:`~lightning_gradwatch.judge.killed.Kill` (``judge/killed.py``): one step's norm ``exploding_jump_factor`` (10)
  times the median of the steps before it (or a spike), after which layers that had a gradient on each of the 5 steps
  before are exactly zero on 5 of the next 10 steps, the last 3 included, while the loss is above its best from
  before: the update killed their units (every ReLU negative for every input), a blow-up whose norm is the dead
  net's at once, so no run of spikes follows it.

*The loss rises* (Spikes, Growth): the median of the last 3 losses is above ``1 + exploding_rise_margin`` times the
median of the 5 losses 5 to 10 steps before, and, while the last 10 losses are within ``exploding_climb_factor``
(10) times the highest first one, not below the median of the 3 before them (a loss coming down from a jump new data
made does not rise). A loss that has gone to zero or below (a negative log-likelihood with a learnt variance) rises
by that margin of the progress the run made (its highest first loss down to its best), not of its own size. Without
a loss (a loop that gives none) spikes are judged by the norm
alone, and a steady rise is not judged.

*New data* (``judge/new_data.py``): a loss 10x where it was and where training started, at once, after an ordinary
step under learning rates that were not raised, moves where training started (the highest first loss the rules
above compare with) to the new data's first losses, while it stays up and is learnt; said once, no alert.

An episode ends after :data:`~lightning_gradwatch.judge.context.QUIET_STEPS` (5) quiet steps in a row: no spike, no
rule sustaining it (a steady rise in progress), and the loss (median) back within 2x its best from before the episode
(in the first steps, before a median of 5 losses exists, the lowest loss told). A blow-up that falls back near its
start for a step on its way up is one episode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from typing_extensions import override

from lightning_gradwatch.alerts import GradientAlert, format_layers
from lightning_gradwatch.judge.context import (
    FLOOR_BLOCK,
    FLOOR_BLOCKS,
    LOSS_WINDOW,
    ORDERS_OF_MAGNITUDE,
    START_HIGH_WINDOW,
    Context,
    Verdict,
)
from lightning_gradwatch.judge.jump import PLATEAU_PATIENCE, Jump
from lightning_gradwatch.judge.killed import Kill
from lightning_gradwatch.judge.new_data import NewData
from lightning_gradwatch.judge.rule import ExplodingRule, Finding, NormStep, RuleWatch, climbed, times
from lightning_gradwatch.judge.state import Stateful, as_optional_float, state
from lightning_gradwatch.kinds import AlertKind, Cause, Rule

if TYPE_CHECKING:  # annotations only: detection is plain Python and imports no torch
    from lightning_gradwatch.config import DetectionConfig
    from lightning_gradwatch.measure.records import StepStats

__all__ = ["EXPLODING_RULES", "Climb", "ExplodingWatch", "Growth", "Jump", "Kill", "Spikes", "Trend"]

#: a spike run whose latest step is more than this many decades below the step before (below 3/4 of it) is falling
#: back: a transient (a bad batch's spike is the largest, the damage it did is smaller; a divergence grows)
FALLING_BACK = math.log10(4.0 / 3.0)
#: a steady rise counts steps above the running mean + this many standard deviations ...
GROWTH_ZSCORE = 2.0
#: ... and at least this share of the spike's least margin (``log10(exploding_min_factor)``) above the mean
GROWTH_MARGIN_SHARE = 0.5
#: a run of at least this many spikes the run came back from raises the ceiling to its largest norm ...
SURVIVED_RUN = 2
#: ... by at most this many decades (two bad batches in a row, 1000x the others, do not blind the rule)
SURVIVED_RAISE = 1.0
#: a rise of the norm less than this share of the rise before is slowing down (a catapult turning)
SLOWING = 0.5
#: the trend rule needs at least this many losses in its window ...
TREND_MIN_LOSSES = 3
#: ... and the loss and the norm up together on this many consecutive steps: a trend lasts (medians over 9 losses),
#: where a run of high batch losses in a noisy run (batches of 2, a rare class weighted 50x) lifts one median of 5
TREND_PATIENCE = LOSS_WINDOW
#: a spike run whose norm grows this many times over one step (or two, still rising) compounds (a divergence); one
#: that does not ...
COMPOUNDING = 1.5
#: a run whose best median loss is below this share of its start has learnt: a steady rise of its norm is judged
#: (one that has not, with its loss within its first losses' range or its norm within 10x its first, is taking off:
#: :func:`_taking_off`)
LEARNT = 0.5
#: a run whose best median loss has not gone below this share of its start has not moved: its norm's scale is its first
#: norm's (:func:`_taking_off`; a held-out metric 30% down is how a run's outcome tells it learnt)
UNMOVED = 0.7
#: ... and so is any run past this many losses: a take-off is the start of training (a net leaving weights at 1e-3
#: or 1e-4 rises for its first 10-25 steps); a run that learnt for longer without halving its loss (a fine-tune, a
#: hard task) and then climbs back toward where it started is diverging
TAKE_OFF_LOSSES = 50
#: the climb rule waits for this many losses (the first 10 it compares with, and a few more) ...
CLIMB_MIN_LOSSES = 12
#: ... and fires on this many consecutive steps at its factor
CLIMB_PATIENCE = 2


@dataclass(eq=False)
class Spikes(ExplodingRule):
    """Consecutive spikes are an explosion once they leave the run's whole history behind."""

    spike_run: int = state(0, load=int)
    run_peak: float | None = state(None, load=as_optional_float)  # log10 of the current spike run's largest norm
    run_seen: int = state(0, load=int)  # losses seen at its first spike
    run_jumped: bool = state(False, load=bool)  # its first spike's loss jumped with the norm (a shock's first step)
    run_put: float | None = state(None, load=as_optional_float)  # where it put the loss (LossTrack.shock_level)
    run_held: bool = state(False, load=bool)  # every spike of the run before this one had its update held

    name: ClassVar[Rule] = Rule.SPIKES
    settings: ClassVar[tuple[str, ...]] = ("exploding_patience", "exploding_ceiling_factor", "exploding_rise_margin")

    def __post_init__(self) -> None:
        self._falling_back = False  # this step's spike run already falls back
        self._slowing = False  # ... or its growth is dying out

    def observe(self, step: NormStep) -> None:
        """Count a spike step (a step that is not a spike ends the run)."""
        self._falling_back = self._slowing = False
        if not step.spike:
            self._survived()
            self.spike_run, self.run_peak = 0, None
            return
        self.ctx.counts.add("spikes")
        self._extend()
        if step.x is not None:
            self.run_peak = step.x if self.run_peak is None else max(self.run_peak, step.x)
        put = self.ctx.losses.shock_level(self.run_seen, self._thrown())
        if put is not None:  # kept for when the run's first losses have left the loss window
            self.run_put = put
        previous = self.ctx.norms.previous
        rise = None if step.x is None or previous is None else step.x - previous
        # a spike run that already falls back (below 3/4 of its previous step) is a transient, not a trend; from its
        # third spike on, one that goes down at all, or grows less than half as much as at the step before, is turning
        # (a catapult): a divergence compounds, step after step
        self._falling_back = rise is not None and rise < (0.0 if self.spike_run >= 3 else -FALLING_BACK)
        self._slowing = self.spike_run >= 3 and _slowing(rise, self.ctx.norms.rise)

    def _extend(self) -> None:
        """One more spike in the run: what its first one found, and whether every update before this one was held."""
        self.spike_run += 1
        if self.spike_run == 1:
            self.run_seen = self.ctx.losses.losses_seen
            self.run_jumped = self.ctx.losses.jumped(self.config.exploding_rise_margin)
            self.run_put = None
        held = self.ctx.norms.previous_held  # the spike before this one's update (a first spike has none before)
        self.run_held = self.spike_run > 1 and held and (self.spike_run == 2 or self.run_held)

    def _compounding(self, step: NormStep) -> bool:
        """The spike run grows at this step: :data:`COMPOUNDING` times over the step before, or over two, still rising.

        A divergence multiplies the norm step after step (a corrupted batch's 4e3, then 5e7; a run a bad batch threw
        off, climbing again from where the batch's spike fell back to). A shock the run absorbs (a new task, new data,
        a raised learning rate) lifts the norm once, to a level it then stays at (a noisy one) or comes down from.
        """
        norms = self.ctx.norms  # the step before's norm and its rise: spikes of this run from its second on
        last = norms.previous if self.spike_run >= 2 else None
        if step.x is None or last is None:
            return True
        before = last - norms.rise if self.spike_run >= 3 and norms.rise is not None else None
        grow = math.log10(COMPOUNDING)
        return step.x > last + grow or (before is not None and step.x > before + grow and step.x >= last)

    def _survived(self) -> None:
        """A run of spikes the run came back from on its own (no explosion alerted): its norms are the run's own.

        The run's dynamics made them, not one batch (a catapult at the peak of a learning-rate warm-up: the loss and
        the norm jump for a few steps and the run settles by itself): the ceiling rises to the spike run's largest
        norm, by at most :data:`SURVIVED_RAISE` decades, so the next such excursion is no explosion unless it goes
        twice as far.
        """
        norms = self.ctx.norms
        if self.spike_run < SURVIVED_RUN or self.run_peak is None or self.ctx.episode.exploding_episode:
            return
        if norms.ceiling is None:
            norms.ceiling = self.run_peak
        else:
            norms.ceiling = max(norms.ceiling, min(self.run_peak, norms.ceiling + SURVIVED_RAISE))

    @override
    def fires(self, step: NormStep) -> bool:
        cfg, ceiling = self.config, self.ctx.norms.ceiling
        absolute = cfg.exploding_threshold is not None and step.norm > cfg.exploding_threshold
        beyond = ceiling is None or (step.x is not None and step.x > ceiling + math.log10(cfg.exploding_ceiling_factor))
        rising = self.ctx.losses.rising(cfg.exploding_rise_margin, cfg.exploding_climb_factor) is not False
        settled = self._falling_back or self._slowing  # (no loss known: rising, the norm alone judges)
        if not (self.spike_run >= self._patience(step) and not settled and (absolute or beyond) and rising):
            return False
        return absolute or not (self._a_shock(step) or _taking_off(self.ctx, step, cfg))

    def _outliers_held(self, step: NormStep) -> bool:
        """Under ``clip="adaptive"``, a run of spikes each held before this one is, so far, outlier batches in a row.

        Their updates were scaled to the run's typical norm: they cannot have thrown the run off, and their own losses
        lift the loss medians (three outlier batches in a row in a classifier with outliers in one batch of eight).
        Such a run is an explosion once it compounds (:meth:`_compounding`: a divergence multiplies the norm step
        after step, outliers come in any order) or lasts :data:`PLATEAU_PATIENCE` times the patience.
        """
        if not (self.ctx.traits.adaptive_clipping and self.run_held):
            return False
        return not self._compounding(step) and self.spike_run < PLATEAU_PATIENCE * self.config.exploding_patience

    def _a_shock(self, step: NormStep) -> bool:
        """Whether this run of spikes is, so far, a shock the run learns from.

        It neither grows nor is orders of magnitude out, its losses stay within the climb factor of where training
        started, and it is short of twice the patience, or its loss comes down since it began, or, after a shock,
        does not climb past where the shock put it. Or, under ``clip="adaptive"``, outlier batches held in a row
        (:meth:`_outliers_held`).
        """
        cfg, losses = self.config, self.ctx.losses
        if self._outliers_held(step):
            return True
        if self._extreme(step.x) or not losses.within(cfg.exploding_climb_factor):
            return False
        if self.run_jumped and not losses.climbing_since(
            self.run_seen, cfg.exploding_rise_margin, self.run_put, self._thrown()
        ):
            return True  # no batch's loss climbs past the shock: no growth, and its level is the trend's to judge
        if self._compounding(step):
            return False
        plateau = self.spike_run < PLATEAU_PATIENCE * self._patience(step)
        return plateau or losses.down_since(self.run_seen, self.run_put)

    def _thrown(self) -> bool:
        """This run of spikes was :data:`ORDERS_OF_MAGNITUDE` beyond every ordinary norm (an update that size)."""
        return self._extreme(self.run_peak)

    def _patience(self, step: NormStep) -> int:
        """``exploding_patience`` spikes, one fewer when the latest is orders of magnitude beyond the ceiling.

        A learning rate raised 30x mid-run may lift loss and norm 8-9x for two steps, and an optimizer like Adam
        absorbs it: a third spike tells. A step :data:`ORDERS_OF_MAGNITUDE` beyond every ordinary norm of the run,
        right after a spike whose update GradWatch neither clipped nor skipped, is a run already thrown off (a
        corrupted batch's update: 4e3, then 5e7, then NaN); after a held one, another bad batch. Two outlier batches
        in a row (targets x100), the first scaled down by ``clip="adaptive"``, are no explosion; a third spike in a
        row is, one step later than without the clipping, whose held updates could not throw the run off meanwhile.
        """
        patience, thrown = self.config.exploding_patience, self._extreme(step.x) and not self.ctx.norms.previous_held
        return min(patience, max(patience - 1, 2)) if thrown else patience

    def _extreme(self, x: float | None) -> bool:
        """The log norm ``x`` is :data:`ORDERS_OF_MAGNITUDE` beyond every ordinary norm of the run."""
        ceiling = self.ctx.norms.ceiling
        return x is not None and ceiling is not None and x > ceiling + math.log10(ORDERS_OF_MAGNITUDE)

    @override
    def describe(self, step: NormStep) -> Finding:
        norms = self.ctx.norms
        what = (
            f"total norm {step.norm:.4g} for {self.spike_run} consecutive steps above the spike threshold"
            f" {step.threshold:.4g} (typical norm so far {norms.real(norms.mean):.4g}"
            + (f", largest ordinary norm {norms.real(norms.ceiling):.4g}" if norms.ceiling is not None else "")
            + ")"
            + self.ctx.losses.rise_text()
        )
        return Finding(what, Cause.OUTLIER, step.norm, step.threshold)


@dataclass(eq=False)
class Growth(ExplodingRule):
    """A steady rise of the norm, long enough, while the loss rises (medians)."""

    growth_run: int = state(0, load=int)

    name: ClassVar[Rule] = Rule.GROWTH
    settings: ClassVar[tuple[str, ...]] = ("exploding_growth_steps",)

    def __post_init__(self) -> None:
        self._slowing = False  # this step's rise is dying out

    def observe(self, step: NormStep) -> None:
        """Count consecutive steps that each rise above the previous one while above mean + 2 std."""
        norms, x = self.ctx.norms, step.x
        margin = max(GROWTH_ZSCORE * norms.std, GROWTH_MARGIN_SHARE * math.log10(self.config.exploding_min_factor))
        elevated = norms.mean + margin
        self._slowing = False
        if norms.warm and x is not None and norms.previous is not None and x > elevated and x > norms.previous:
            self.growth_run += 1
            self._slowing = self.growth_run >= 2 and _slowing(x - norms.previous, norms.rise)
        else:
            self.growth_run = 0

    @override
    def fires(self, step: NormStep) -> bool:
        rising = self.ctx.losses.rising(self.config.exploding_rise_margin, self.config.exploding_climb_factor)
        ceiling = self.ctx.norms.ceiling  # to norms the run has not had before (it came back from its spike runs)
        beyond = ceiling is None or (step.x is not None and step.x > ceiling)
        steady = self.growth_run >= self.config.exploding_growth_steps and not self._slowing
        return steady and rising is True and beyond and not _taking_off(self.ctx, step, self.config)

    @override
    def sustains(self) -> bool:
        return self.growth_run > 0

    @override
    def describe(self, step: NormStep) -> Finding:
        what = (
            f"total norm {step.norm:.4g} has risen for {self.growth_run} consecutive steps"
            f" (typical norm so far {self.ctx.norms.real(self.ctx.norms.mean):.4g}; a single step becomes a spike"
            f" above {step.threshold:.4g})" + self.ctx.losses.rise_text()
        )
        return Finding(what, Cause.GROWTH, step.norm, step.threshold)


def _taking_off(ctx: Context, step: NormStep, config: DetectionConfig) -> bool:
    """The run is taking off: a steady rise, a trend or a run of spikes is not judged yet (no positive start: not).

    Within its first :data:`TAKE_OFF_LOSSES` losses, either no median loss below :data:`LEARNT` of the start yet and
    the median of the last 3 losses within the highest of the first 10, or no median loss below :data:`UNMOVED` of
    the start yet and the norm within ``exploding_jump_factor`` (10) times the run's first norm. A net leaving a small
    initialisation grows its norm 10-100x step after step while its noisy loss stays where it started (a rise of 25%
    between medians is a batch or two); a loss term that starts far from its equilibrium lifts the loss 8x and the
    norm 9x over the first 20 steps and comes back (a VQ-VAE whose codebook starts at U(+-1/K), far below its
    encoder's outputs, until the codebook catches up), its loss never below 0.95 of its start on the way. A divergence
    from the start does both, its loss past its first losses' range and its norm past the first norm's decade (the
    jump rule's factor); a run that has learnt (AdamW at a learning rate far too high brings a transformer's loss to
    half its start in 14 steps, then climbs back 9x with the norm only 6x) is judged as before, and so is one later
    in the run.
    """
    losses = ctx.losses
    high, start, now = losses.start_high, losses.start, losses.latest
    if high is None or start is None or high <= 0.0 or now is None or losses.losses_seen > TAKE_OFF_LOSSES:
        return False
    if now <= high and _not_below(ctx, LEARNT * start):
        return True
    first = ctx.norms.first_norm
    near_first = first is not None and step.x is not None and step.x < first + math.log10(config.exploding_jump_factor)
    return near_first and _not_below(ctx, UNMOVED * start)


def _not_below(ctx: Context, level: float) -> bool:
    """No median loss of the run (its best, over :data:`LOSS_WINDOW` steps) below ``level`` yet."""
    best = ctx.losses.loss_floor
    return best is None or best >= level


def _slowing(rise: float | None, before: float | None) -> bool:
    """A rise of the norm (decades) less than :data:`SLOWING` of the rise the step before: the growth dies out.

    A divergence compounds (each step multiplies the norm by as much as the one before, or more); a catapult at the
    peak of a warm-up turns by itself, its growth slowing before the norm falls back.
    """
    return rise is not None and before is not None and before > 0.0 and rise < SLOWING * before


@dataclass(eq=False)
class Trend(ExplodingRule):
    """The loss has climbed well above its best while the norm grew with it (medians of 5 steps)."""

    trend_run: int = state(0, load=int)  # consecutive steps with the loss and the norm up together
    trend_seen: int = state(0, load=int)  # losses seen at the first of them
    trend_began: float | None = state(None, load=as_optional_float)  # the loss then (the median of its last 3)
    since_held: int = state(LOSS_WINDOW, load=int)  # steps since the latest whose update was held (at most 5)

    name: ClassVar[Rule] = Rule.TREND
    settings: ClassVar[tuple[str, ...]] = (
        "exploding_trend_loss_factor",
        "exploding_trend_norm_factor",
        "exploding_trend_start_factor",
    )

    def observe(self, step: NormStep) -> None:
        """Count consecutive steps on which the loss and the norm are up together."""
        self.since_held = 0 if self.ctx.norms.previous_held else min(self.since_held + 1, LOSS_WINDOW)
        self.trend_run = self.trend_run + 1 if self._up() else 0
        if self.trend_run == 1:
            self.trend_seen, self.trend_began = self.ctx.losses.losses_seen, self.ctx.losses.latest

    def _up(self) -> bool:
        """The loss (median) at the trend factors above its recent low and its start, the norm (median) up with it."""
        losses, cfg = self.ctx.losses, self.config
        recent, first = losses.recent_floor, losses.start_high
        if losses.compared is None or recent is None or first is None:
            return False
        floor, start = recent
        loss, level = losses.compared
        return (
            len(losses.recent_losses) >= TREND_MIN_LOSSES
            and loss > floor  # a loss at zero, as low as it has been, has not climbed (0 >= 2 x 0 says nothing)
            and climbed(loss, floor, first, cfg.exploding_trend_loss_factor)
            and climbed(loss, first if first > 0 else floor, first, cfg.exploding_trend_start_factor)
            and level >= start + math.log10(cfg.exploding_trend_norm_factor)
        )

    def _not_judged(self, step: NormStep) -> bool:
        """Whether the trend is not judged at this step.

        No step of a trend now, a run taking off, or (near where training started) a loss that jumped with new data
        being learnt down: over its last 10 losses, or below where the trend began.
        """
        losses, cfg = self.ctx.losses, self.config
        if not self.trend_run or _taking_off(self.ctx, step, cfg):  # every firing needs a step of the trend
            return True
        near_start = losses.within(cfg.exploding_climb_factor)  # a jump new data can make: judged on its direction
        return near_start and losses.down_since(self.trend_seen, self.trend_began)

    @override
    def fires(self, step: NormStep) -> bool:
        losses, cfg = self.ctx.losses, self.config
        if self._not_judged(step):
            return False
        if self._outliers_held():
            return self._every_batch_up()
        near_start = losses.within(cfg.exploding_climb_factor)
        if self.trend_run >= TREND_PATIENCE + (1 if near_start else 0):  # its direction on its own 6 steps' losses
            return True
        # no need to wait when every batch is up and (near where training started) the loss still climbs
        climbing = not near_start or losses.climbing(cfg.exploding_rise_margin)
        return self.trend_run > 0 and self._every_batch_up() and climbing

    def _outliers_held(self) -> bool:
        """Under ``clip="adaptive"``, a step among the last 5 had its update held: their median may be outliers'.

        Batches the rule scaled down as outliers keep their own losses, and in a run with outliers in half its batches
        (a classifier with 1% of its inputs x3000) three in five of them lift the median of 5 30-100x for a few steps
        at a time. A divergence raises every batch's loss: the trend then waits for that (:meth:`_every_batch_up`).
        """
        return self.ctx.traits.adaptive_clipping and self.since_held < LOSS_WINDOW - 1

    def _every_batch_up(self) -> bool:
        """Every one of the last 5 losses at the trend's factors above its recent low and above the highest first loss.

        A divergence raises the loss of every batch: then there is no need to wait. A noisy run's median is lifted
        by some of its batches, with low ones among them.
        """
        losses, cfg = self.ctx.losses, self.config
        recent, low, high = losses.recent_floor, losses.recent_low, losses.start_high
        floor = None if recent is None else recent[0]
        if floor is None or low is None or high is None or floor <= 0.0 or high <= 0.0:
            return False  # factors of a loss that can be zero or negative (a Gaussian NLL) say nothing
        return low >= cfg.exploding_trend_loss_factor * floor and low >= cfg.exploding_trend_start_factor * high

    @override
    def describe(self, step: NormStep) -> Finding:
        losses, norms = self.ctx.losses, self.ctx.norms
        floor, start = losses.recent_floor or (0.0, 0.0)
        first = losses.start_high or 0.0
        loss = losses.recent_losses.median()
        level, start = norms.real(losses.recent_norms.median()), norms.real(start)
        # the lowest of the last 75-100 steps once that many are kept, the lowest so far before
        since = (
            f"of the last {FLOOR_BLOCK * FLOOR_BLOCKS}-{FLOOR_BLOCK * (FLOOR_BLOCKS + 1)} steps"
            if len(losses.block_floors) == FLOOR_BLOCKS
            else "so far"
        )
        grew = f"while the total norm grew from {start:.4g} to {level:.4g} (medians of the last {LOSS_WINDOW} steps)"
        if floor > 0:
            ratio, threshold = times(loss, floor), self.config.exploding_trend_loss_factor
            first_losses = f"the highest of the first {START_HIGH_WINDOW} losses"
            above = f"{times(loss, first):.3g}x {first_losses}" if first > 0 else f"above {first_losses} ({first:.4g})"
            what = (
                f"the loss has climbed to {loss:.4g}, {ratio:.3g}x its lowest level {since} ({floor:.4g}) and"
                f" {above}, {grew}"
            )
        else:  # a loss that went to zero or below: its climb measured by the way it had come down
            ratio, threshold = (loss - floor) / (first - floor), self.config.exploding_trend_loss_factor - 1
            what = (
                f"the loss has climbed to {loss:.4g} from its lowest level {since} ({floor:.4g}), {ratio:.3g}x the"
                f" way it had come down from the highest of the first {START_HIGH_WINDOW} losses ({first:.4g}), {grew}"
            )
        return Finding(what, Cause.GROWTH, ratio, threshold)


@dataclass(eq=False)
class Climb(ExplodingRule):
    """Every recent loss far above every one of the first losses, whatever the norm does."""

    climb_run: int = state(0, load=int)

    name: ClassVar[Rule] = Rule.CLIMB
    settings: ClassVar[tuple[str, ...]] = ("exploding_climb_factor",)

    def observe(self, step: NormStep) -> None:
        """Count consecutive steps whose lowest recent loss is at the climb factor times the highest first one."""
        losses = self.ctx.losses
        start, low = losses.start_high, losses.recent_low
        up = (
            losses.losses_seen >= CLIMB_MIN_LOSSES
            and start is not None
            and low is not None
            and start > 0.0
            and low >= self.config.exploding_climb_factor * start
        )
        self.climb_run = self.climb_run + 1 if up else 0

    @override
    def fires(self, step: NormStep) -> bool:
        return self.climb_run >= CLIMB_PATIENCE

    @override
    def describe(self, step: NormStep) -> Finding:
        losses = self.ctx.losses
        low, start = losses.recent_low or 0.0, losses.start_high or 0.0
        ratio = times(low, start)
        what = (
            f"the loss has climbed: each of the last {LOSS_WINDOW} losses is {low:.4g} or more, {ratio:.3g}x the"
            f" highest of the first {START_HIGH_WINDOW} ({start:.4g}), with a total norm of {step.norm:.4g}"
        )
        return Finding(what, Cause.GROWTH, ratio, self.config.exploding_climb_factor)


#: The exploding rules, in order of precedence: each observes every finite step in this order, and the first that
#: fires names the alert.
EXPLODING_RULES: tuple[type[ExplodingRule], ...] = (Jump, Spikes, Growth, Trend, Climb, Kill)


class ExplodingWatch(RuleWatch):
    """The exploding episode over the rules of :data:`EXPLODING_RULES` (see the module docstring).

    Owns the spike settings (what a spike is: ``exploding_zscore``, ``exploding_min_factor``,
    ``exploding_threshold``).
    """

    kind = AlertKind.EXPLODING
    settings = ("exploding_zscore", "exploding_min_factor", "exploding_threshold")
    rules: tuple[ExplodingRule, ...]

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx, EXPLODING_RULES)
        self.new_data = NewData()
        self._jump = next(rule for rule in self.rules if isinstance(rule, Jump))

    @override
    def parts(self) -> tuple[Stateful, ...]:
        """The rules' parts of the checkpoint, and new data being confirmed or learnt."""
        return (*self.rules, self.new_data)

    def update(self, step: int, stats: StepStats, verdict: Verdict) -> bool:
        """Judge one finite step: spikes, the rules, the episode, then learn its norm; judging goes on.

        A step a jump waits on is not learnt (:class:`Jump`).
        """
        ctx = self.ctx
        x = ctx.norms.chain(stats)  # log10 of the chained norm: like with like when the set of layers changes
        threshold = ctx.spike_threshold()  # for this step's set of layers
        now = NormStep(step, stats, x, threshold, stats.total_norm > threshold)
        verdict.spike_threshold, verdict.spike = threshold, now.spike
        verdict.chain_offset = ctx.norms.offset
        ctx.norms.forget()
        ctx.losses.observe_norm(x)  # keeps the loss's best, for the trend and the episode
        spiked = next(rule for rule in self.rules if isinstance(rule, Spikes)).spike_run > 0
        verdict.notice = self.new_data.judge(ctx, now.step, now.x, spiked)
        for rule in self.rules:
            rule.observe(now)
        fired = next((rule for rule in self.rules if rule.fires(now)), None)
        self._episode(now, fired, verdict)
        self._hold(now, verdict)
        previous = ctx.norms.previous
        ctx.norms.rise = None if x is None or previous is None else x - previous
        ctx.norms.previous = x
        if x is not None and not self._jump.waiting:  # a jump held by clipping is no norm of the run's yet
            ctx.norms.learn(x, math.log10(threshold) + ctx.norms.offset, now.spike)
        verdict.exploding = ctx.episode.exploding_episode
        return True

    def _hold(self, now: NormStep, verdict: Verdict) -> None:
        """From an exploding alert on, the largest ordinary norm before it, until a step's norm is back under it.

        What ``on_exploding="clip"`` holds the explosion's steps to (:meth:`Verdict.exploding_clip`), and the steps
        ``exploding_jump_factor`` times beyond it that ``"skip"`` drops. Read before this step is learnt: the ceiling
        is the norms' before the alert.
        """
        episode, norms = self.ctx.episode, self.ctx.norms
        episode.hold(verdict.alert(self.kind) is not None, norms.ceiling, now.x)
        if episode.held_norm is not None:
            verdict.held_norm = norms.real(episode.held_norm)
            verdict.beyond = episode.beyond(now.x, self.ctx.config.exploding_jump_factor)

    def _episode(self, now: NormStep, fired: ExplodingRule | None, verdict: Verdict) -> None:
        """An explosion found now starts an episode (alerted once); quiet steps in a row end it."""
        episode = self.ctx.episode
        if fired is not None and not episode.exploding_episode:
            episode.start(self.ctx.losses.best)
            verdict.alerts.append(self._alert(now, fired))
        elif episode.exploding_episode:  # quiet: nothing found, no spike, no rule sustaining it, the loss back
            quiet = fired is None and not now.spike and not any(rule.sustains() for rule in self.rules)
            episode.calm(quiet and not self._loss_still_up())

    def _loss_still_up(self) -> bool:
        """Whether the loss (median of the last 5 steps) is still above 2x its best: an episode lasts that long.

        Its best: the lower of its best before the episode and its best since.
        """
        floors = [f for f in (self.ctx.losses.loss_floor, self.ctx.episode.episode_floor) if f is not None]
        return self.ctx.losses.above(max(min(floors), 0.0) if floors else None)

    def _alert(self, now: NormStep, rule: ExplodingRule) -> GradientAlert:
        ctx = self.ctx
        found = rule.describe(now)
        layers = found.layers or ctx.largest_layers(now.stats)
        message = (
            f"Exploding gradients at step {now.step}: {found.what}. {found.named}: {format_layers(layers)}."
            + ctx.hints(self.kind, found.cause)
        )
        return rule.alert(now.step, layers, found.value, found.threshold, message)
