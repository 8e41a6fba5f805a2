"""What the detection rules share: the verdict they fill, the run's histories of the norm and the loss, the counts.

One :class:`Context` per detector (per optimizer). Its histories are updated by the detector in a fixed order each
step, and read by the rules; each is a :class:`~lightning_gradwatch.judge.state.Stateful` part of the checkpoint.

- :class:`NormBaseline`: ``log10`` of the *chained* total norm (see below): running mean and variance (plain over
  the warm-up, then exponential and winsorised), the *ceiling* (largest ordinary norm) and *peak* (largest norm),
  both slowly forgetting, and the previous step's value.
- :class:`LossTrack`: the loss, always smoothed (one mini-batch loss against the next is noise): its *start* (the
  median of the first :data:`LOSS_WINDOW` losses), medians over the last :data:`LOSS_WINDOW` steps of the loss and
  of the log norm, the loss at its best (with the norm then), and whether it is rising (the median of the last
  3 losses against the median of the 5 losses 5 to 10 steps before).

**Like with like.** The set of layers with a gradient changes in ordinary runs: a backbone unfrozen mid-run, an
adapter added with ``add_param_group``, a branch used on some batches, layers frozen. A total norm over a grown set
jumps without anything being wrong. Every run-level baseline therefore reads a *chained* total norm: while the set of
layers with a non-zero gradient stays the same it is the total norm itself (up to a constant factor); when the set
changes, it moves by the growth of the norm over the layers present at both steps,
``I_t = I_(t-1) * |g_t|_C / |g_(t-1)|_C``. The change of set itself is never a jump; layers that join are judged by
the per-layer tests from their first step. Messages report real norms: a level of the history is shown as it reads
over the current set of layers.
- :class:`ExplodingEpisode`: whether an exploding episode lasts, and the best loss before the run's first one (the
  vanishing rules wait for the loss to come back near it).
- :class:`Counts`: spikes and non-finite steps, for the checkpoint.
- :class:`~lightning_gradwatch.judge.rates.LearningRates` and :class:`~lightning_gradwatch.judge.gap.LayerGap`: the
  optimizer's learning rates at its last steps, and how far below the largest layer the deepest layer before it lies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lightning_gradwatch.alerts import REMEDIES_PLAIN, GradientAlert, ModelTraits, remedies
from lightning_gradwatch.config import DetectionConfig
from lightning_gradwatch.history import RunningMoments, Window, log10_or_none, median, pow10_clamped
from lightning_gradwatch.judge.gap import LayerGap
from lightning_gradwatch.judge.rates import LearningRates
from lightning_gradwatch.judge.state import Stateful, as_counts, as_float_map, as_optional_float, state
from lightning_gradwatch.kinds import AlertKind, Cause

if TYPE_CHECKING:  # annotations only: detection is plain Python and imports no torch
    from lightning_gradwatch.measure.records import StepStats

__all__ = [
    "FLOOR_BLOCK",
    "FLOOR_BLOCKS",
    "LARGEST_SHARE",
    "LOSS_WINDOW",
    "MIN_WARMUP",
    "ORDERS_OF_MAGNITUDE",
    "RECOVERED_LOSS_FACTOR",
    "RISE_RECENT",
    "RISE_WINDOW",
    "START_HIGH_WINDOW",
    "Context",
    "Counts",
    "ExplodingEpisode",
    "LossTrack",
    "NormBaseline",
    "Verdict",
]

#: the warm-up lasts at least this many finite steps, whatever ``warmup_steps`` says (a spread needs two values)
MIN_WARMUP = 2
#: steps whose median loss and median log norm the loss-aware rules compare: one mini-batch loss against the next is
#: noise
LOSS_WINDOW = 5
#: an exploding episode lasts, and vanishing verdicts wait after one, while the loss (median) is above this many
#: times its best
RECOVERED_LOSS_FACTOR = 2.0
#: an exploding episode ends after this many quiet steps in a row (no spike, no rule sustaining it, the loss back):
#: one quiet step amid a blow-up is no recovery
QUIET_STEPS = LOSS_WINDOW
#: layers holding at least this share of a step's squared total norm are named as the largest (and drawn exploding)
LARGEST_SHARE = 0.1
#: the loss is rising when the median of its last RISE_RECENT values is above the median of the first LOSS_WINDOW of
#: its last RISE_WINDOW values (5 to 10 steps before)
RISE_WINDOW = 10
#: how many first losses the highest first loss is taken over (the climb rule's reference): enough that a run whose
#: batches are mostly outlier batches almost surely shows one there
START_HIGH_WINDOW = 10
RISE_RECENT = 3
#: the trend climbs from the lowest median loss of the last FLOOR_BLOCKS blocks of FLOOR_BLOCK steps (the last 75 to
#: 100 steps): a divergence climbs from where the run just was, within tens of steps (6-70 on the detection bank); a
#: loss that creeps up over hundreds of steps (a TD loss whose targets grow as the values are learnt) is not one
FLOOR_BLOCK = 25
FLOOR_BLOCKS = 3
#: a jump of at least this factor is said to be of orders of magnitude (a norm that far beyond every ordinary norm
#: of the run is an update that threw it off: the spike rule's shortened patience, and no new data)
ORDERS_OF_MAGNITUDE = 100.0


@dataclass
class Verdict:
    """What the detectors concluded about one step.

    Attributes:
        alerts: alerts that fired at this step (at most one per kind; episodes are alerted once).
        nonfinite: the step has NaN/Inf gradients.
        spike: the total norm is above the spike threshold (alerted or not).
        spike_threshold: the total norm above which a step is a spike (``inf`` during warm-up).
        chain_offset: ``log10(chained norm / total norm)`` at this step (0 until the set of layers with a gradient
            first changes): what puts this step's norm on the run's history, like with like.
        vanishing_layers: layers currently in a vanishing episode.
        exploding: the run is in an exploding episode at this step (alerted now or earlier), whether or not this
            step is a spike: a divergence found by its trend has no spike step.
        held_norm: from an exploding alert on, the largest ordinary norm before it, as a total norm over this step's
            layers, until a step's norm is back under it (``inf`` otherwise): what ``on_exploding="clip"`` holds the
            explosion's steps to.
        beyond: while a norm is held, this step's is ``exploding_jump_factor`` (10) times that norm or more: a spike
            by the first steps' measure, whether or not the run has a spike threshold yet (``on_exploding="skip"``
            drops it).
        notice: what the detector says once at this step that is no alert (new data), or ``None``.
    """

    alerts: list[GradientAlert] = field(default_factory=list)
    nonfinite: bool = False
    spike: bool = False
    spike_threshold: float = math.inf
    chain_offset: float = 0.0
    vanishing_layers: tuple[str, ...] = ()
    exploding: bool = False
    held_norm: float = math.inf
    beyond: bool = False
    notice: str | None = None

    def exploding_clip(self) -> float:
        """The total norm ``on_exploding="clip"`` holds this step to (``inf``: none).

        A spike step goes to the spike threshold; from an exploding alert on, every step goes to the largest ordinary
        norm before the alert, until a step's norm is back under it (an explosion in the first steps comes before any
        spike threshold, and its norms would otherwise become the run's history).
        """
        return min(self.spike_threshold if self.spike else math.inf, self.held_norm)

    def alert(self, kind: AlertKind | str) -> GradientAlert | None:
        """The alert of ``kind`` fired at this step, if any."""
        return next((a for a in self.alerts if a.kind == kind), None)

    def affected(self, kind: AlertKind | str) -> bool:
        """Whether ``kind`` affects this step: the steps a dropping response keeps out of the weights.

        Non-finite: every non-finite step. Exploding: every spike step, the step an explosion is found at, and
        the steps after it ``exploding_jump_factor`` times beyond the largest ordinary norm before it (an explosion
        in the first steps comes before any spike threshold). Vanishing: the step it is alerted at.
        """
        if kind == AlertKind.NONFINITE:
            return self.nonfinite
        if kind == AlertKind.EXPLODING:
            return self.spike or self.beyond or self.alert(kind) is not None
        return self.alert(kind) is not None

    def in_episode(self, kind: AlertKind | str) -> bool:
        """Whether an episode of ``kind`` holds at this step (what the health word shows)."""
        if kind == AlertKind.NONFINITE:
            return self.nonfinite
        if kind == AlertKind.EXPLODING:
            return self.exploding
        return bool(self.vanishing_layers)


@dataclass(eq=False)
class NormBaseline(Stateful):
    """The run's history of ``log10(total norm)`` (see the module docstring).

    ``steps``, ``mean`` and ``var`` are those of its running moments (a
    :class:`~lightning_gradwatch.history.RunningMoments`).
    """

    config: DetectionConfig = field(default_factory=DetectionConfig, repr=False)
    # log10 of the largest ordinary total norm so far, slowly forgetting
    ceiling: float | None = state(None, load=as_optional_float)
    peak: float | None = state(None, load=as_optional_float)  # log10 of the largest total norm, forgetting
    previous: float | None = state(None, load=as_optional_float)  # log10 of the previous finite step's norm
    rise: float | None = state(None, load=as_optional_float)  # decades that step's norm rose over the one before it
    # the latest judged step's update was held: clipped below its norm, or skipped (it could not throw the run off)
    previous_held: bool = state(False, load=bool)
    # log10(chained norm / total norm) at the latest finite step: 0 until the set of layers first changes
    offset: float = state(0.0, load=float)
    # the latest finite step's layers with a non-zero gradient, and their norms
    present: dict[str, float] = state(load=as_float_map, factory=dict)
    first_norm: float | None = state(None, load=as_optional_float)  # log10 of the first finite non-zero chained norm

    settings = ("warmup_steps", "ema_decay", "exploding_ceiling_memory")

    def __post_init__(self) -> None:
        self.moments = RunningMoments(warmup=self.warmup, decay=self.config.ema_decay)
        self.current: float | None = None  # log10 of this step's chained norm (None: a zero norm)

    def chain(self, stats: StepStats) -> float | None:
        """Take a finite step: ``log10`` of its chained total norm (``None`` for a zero norm), kept in :attr:`current`.

        While the set of layers with a non-zero gradient is the one of the step before, the offset stays as it is
        (the chained norm is the total norm times a constant); when it changes, the chained norm moves by the growth
        of the norm over the layers the two steps share (no common layer: it does not move).
        """
        present = {name: norm for name, norm in zip(stats.layers, stats.grad_norm) if norm > 0.0}
        x = log10_or_none(stats.total_norm)
        if self.present and present.keys() != self.present.keys() and self.previous is not None and x is not None:
            common = present.keys() & self.present.keys()
            now = math.sqrt(sum(present[name] ** 2 for name in common))
            before = math.sqrt(sum(self.present[name] ** 2 for name in common))
            growth = math.log10(now / before) if now > 0.0 and before > 0.0 else 0.0
            self.offset = self.previous + growth - x  # I_t = I_(t-1) * |g_t|_C / |g_(t-1)|_C
        self.present = present
        self.current = None if x is None else x + self.offset
        return self.current

    def real(self, level: float) -> float:
        """A level of the chained history (``log10``) as a norm over the current set of layers."""
        return pow10_clamped(level - self.offset)

    @property
    def warmup(self) -> int:
        """Finite steps before the history can tell a spike."""
        return max(self.config.warmup_steps, MIN_WARMUP)

    @property
    def warm(self) -> bool:
        """Whether the warm-up is over."""
        return self.moments.steps >= self.warmup

    @property
    def steps(self) -> int:
        """Finite steps learnt."""
        return self.moments.steps

    @property
    def mean(self) -> float:
        """Running mean of ``log10(total norm)``."""
        return self.moments.mean

    @property
    def std(self) -> float:
        """Running standard deviation of ``log10(total norm)``."""
        return self.moments.std

    def forget(self) -> None:
        """The ceiling and the peak forget by a factor 10 per ``exploding_ceiling_memory`` steps."""
        forget = 1.0 / self.config.exploding_ceiling_memory
        if self.ceiling is not None:
            self.ceiling -= forget
        if self.peak is not None:
            self.peak -= forget

    def learn(self, x: float, cap: float, spike: bool) -> None:
        """Learn one step's log norm, at most ``cap`` (the spike threshold's, chained).

        A spike moves the mean toward a lasting new level, but never widens the spread.
        """
        self.moments.learn(min(x, cap), spread=not spike)
        if self.first_norm is None:
            self.first_norm = x
        if not spike:
            self.ceiling = x if self.ceiling is None else max(self.ceiling, x)
        self.peak = x if self.peak is None else max(self.peak, x)

    def reset(self) -> None:
        """Forget all history."""
        super().reset()
        self.moments = RunningMoments(warmup=self.warmup, decay=self.config.ema_decay)

    def state_dict(self) -> dict[str, Any]:
        """The moments and the forgetting maxima."""
        moments = self.moments
        return {"steps": moments.steps, "mean": moments.mean, "var": moments.var, **super().state_dict()}

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict` output; missing keys keep their defaults."""
        super().load_state_dict(state)
        self.moments.steps = int(state.get("steps", 0))
        self.moments.mean = float(state.get("mean", 0.0))
        self.moments.var = float(state.get("var", 0.0))


def _loss_window(values: Any = ()) -> Window:
    return Window(LOSS_WINDOW, (float(v) for v in values))


def _rise_window(values: Any = ()) -> Window:
    return Window(RISE_WINDOW, (float(v) for v in values))


def _floor_window(values: Any = ()) -> Window:
    return Window(FLOOR_BLOCKS, (float(v) for v in values))


@dataclass(eq=False)
class LossTrack(Stateful):
    """The run's history of the training loss, smoothed (see the module docstring).

    :meth:`observe_norm` runs once per finite step and leaves in :attr:`compared` the step's ``(median loss, median
    log norm)`` when they are comparable with the loss's best (``None`` before there is a loss, or when the loss is at
    a new best this step).
    """

    start_losses: Window = state(load=_loss_window, factory=_loss_window)  # the first few observed losses
    recent_losses: Window = state(load=_loss_window, factory=_loss_window)  # the last few observed losses
    rise_losses: Window = state(load=_rise_window, factory=_rise_window)  # the last RISE_WINDOW observed losses
    losses_seen: int = state(0, load=int)  # finite losses observed
    recent_norms: Window = state(load=_loss_window, factory=_loss_window)  # log10 of the last few chained norms
    loss_floor: float | None = state(None, load=as_optional_float)  # the best median loss so far
    norm_at_floor: float | None = state(None, load=as_optional_float)  # median log10 norm when the loss was best
    first_high: float | None = state(None, load=as_optional_float)  # the highest of the first START_HIGH_WINDOW losses
    block_floors: Window = state(load=_floor_window, factory=_floor_window)  # the lowest median loss of each past block
    block_norms: Window = state(load=_floor_window, factory=_floor_window)  # ... the median log10 norm then
    block_floor: float | None = state(None, load=as_optional_float)  # the lowest median loss of the current block
    block_norm: float | None = state(None, load=as_optional_float)  # ... the median log10 norm then
    block_steps: int = state(0, load=int)  # medians taken in the current block
    first_from: int = state(0, load=int)  # losses seen before where training started (new data moves it)

    def __post_init__(self) -> None:
        self.compared: tuple[float, float] | None = None

    def observe_loss(self, loss: float) -> None:
        """Record the latest training loss (non-finite losses are ignored)."""
        if math.isfinite(loss):
            self.losses_seen += 1
            if len(self.start_losses) < LOSS_WINDOW:
                self.start_losses.append(loss)
            if self.losses_seen - self.first_from <= START_HIGH_WINDOW:
                self.first_high = loss if self.first_high is None else max(self.first_high, loss)
            self.recent_losses.append(loss)
            self.rise_losses.append(loss)

    @property
    def start(self) -> float | None:
        """Where training started: the median of the first :data:`LOSS_WINDOW` losses (``None`` before any)."""
        return self.start_losses.median() if len(self.start_losses) else None

    @property
    def best(self) -> float | None:
        """The run's best loss so far: its best median (:attr:`loss_floor`), before that the lowest loss told.

        Before :data:`LOSS_WINDOW` losses there is no median to be the best: the lowest single loss stands for it (an
        explosion in the first steps lifts a median of the few losses told with its own; the lowest is from before).
        ``None`` before any loss.
        """
        if self.loss_floor is not None:
            return self.loss_floor
        return min(self.start_losses) if len(self.start_losses) else None

    @property
    def start_high(self) -> float | None:
        """The highest of the first :data:`START_HIGH_WINDOW` losses (``None`` before any)."""
        if self.first_high is None and len(self.start_losses):  # a state saved before it was kept
            return max(self.start_losses)
        return self.first_high

    def move_start(self, high: float | None, first_from: int) -> None:
        """Where training started is now ``high``, the highest of the losses from ``first_from`` losses seen on.

        New data moves it (see ``judge/new_data.py``), and puts it back when it was none.
        """
        self.first_high, self.first_from = high, first_from

    @property
    def recent_floor(self) -> tuple[float, float] | None:
        """The lowest median loss of the last 75-100 steps, and the median log10 norm then (``None`` before any).

        Kept per block of :data:`FLOOR_BLOCK` steps: the last :data:`FLOOR_BLOCKS` blocks and the current one.
        """
        lows = list(zip(self.block_floors, self.block_norms))
        if self.block_floor is not None and self.block_norm is not None:
            lows.append((self.block_floor, self.block_norm))
        return min(lows) if lows else None

    def _block(self, loss: float, norm: float) -> None:
        """Take a median loss and norm into the current block; a full block is kept by its lowest loss."""
        if self.block_floor is None or loss < self.block_floor:
            self.block_floor, self.block_norm = loss, norm
        self.block_steps += 1
        if self.block_steps == FLOOR_BLOCK and self.block_norm is not None:
            self.block_floors.append(self.block_floor)
            self.block_norms.append(self.block_norm)
            self.block_floor, self.block_norm, self.block_steps = None, None, 0

    @property
    def recent_low(self) -> float | None:
        """The lowest of the last :data:`LOSS_WINDOW` losses (``None`` before any)."""
        return min(self.recent_losses) if len(self.recent_losses) else None

    @property
    def level(self) -> float | None:
        """The loss now: the median of the last :data:`LOSS_WINDOW` losses (``None`` before any)."""
        return self.recent_losses.median() if len(self.recent_losses) else None

    def within(self, factor: float) -> bool:
        """Whether every one of the last :data:`RISE_WINDOW` losses is below ``factor`` times the highest first one.

        That is a jump new data can make (a trained model confidently wrong on renamed classes: 3-7x where an
        untrained one started); a blow-up's losses go tens to thousands of times past it. A loss whose start is not
        positive has no such scale: within. No loss known: not within (the norm alone judges, as it did).
        """
        high = self.start_high
        if not len(self.rise_losses) or high is None:
            return False
        return high <= 0.0 or max(self.rise_losses) < factor * high

    @property
    def latest(self) -> float | None:
        """The loss now, for a rise: the median of the last :data:`RISE_RECENT` losses (``None`` with fewer)."""
        if len(self.rise_losses) < RISE_RECENT:
            return None
        return median(list(self.rise_losses)[-RISE_RECENT:])

    def rise_text(self) -> str:
        """How the loss rose (:meth:`rise_medians`), for a message; empty when no loss is known."""
        medians = self.rise_medians()
        if medians is None:
            return ""
        now, before = medians
        return f", while the loss rose from {before:.4g} to {now:.4g} (medians 5 to 10 steps back and of the last 3)"

    def rise_medians(self) -> tuple[float, float] | None:
        """The loss now and before a rise (``None`` until :data:`RISE_WINDOW` losses have been seen).

        The median of the last :data:`RISE_RECENT` losses, and of the :data:`LOSS_WINDOW` losses 5 to 10 steps before.
        """
        if len(self.rise_losses) < RISE_WINDOW:
            return None
        values = list(self.rise_losses)
        return median(values[-RISE_RECENT:]), median(values[:LOSS_WINDOW])

    def _medians(self, count: int) -> tuple[float, float] | None:
        """The medians of the last 3 losses and of the first 3 of the last ``count`` (at most :data:`RISE_WINDOW`).

        ``None`` with fewer than 6 of them.
        """
        count = min(count, RISE_WINDOW, len(self.rise_losses))
        if count < 2 * RISE_RECENT:
            return None
        values = list(self.rise_losses)[-count:]
        return median(values[-RISE_RECENT:]), median(values[:RISE_RECENT])

    def rising(self, margin: float, climb_factor: float | None = None) -> bool | None:
        """Whether the loss rises (``None`` until :data:`RISE_WINDOW` losses have been seen).

        Rising: the median of its last :data:`RISE_RECENT` values is above ``1 + margin`` times the median of the
        :data:`LOSS_WINDOW` values 5 to 10 steps before. A loss whose median has gone to zero or below (a negative
        log-likelihood with a learnt variance) has no natural zero to be a multiple of: it rises by ``margin`` of
        the larger of its size and the progress the run made (the highest of its first losses down to its best).
        With ``climb_factor``, a loss coming down (:meth:`coming_down`) while :meth:`within` that factor of where
        training started does not rise (new data lifted it once, and it is being learnt).
        """
        medians = self.rise_medians()
        if medians is None:
            return None
        now, before = medians
        scale = abs(before)
        high, floor = self.start_high, self.loss_floor
        if (before <= 0.0 or (floor is not None and floor <= 0.0)) and high is not None and floor is not None:
            scale = max(scale, high - floor)
        if now - before <= margin * scale:
            return False
        return climb_factor is None or not (self.coming_down() and self.within(climb_factor))  # else: settling

    def coming_down(self) -> bool:
        """Whether the loss is coming down: the median of its last 3 values below the median of the 3 before them.

        A divergence raises the loss step after step; a loss that jumped with new data (a task switched, labels
        renamed) and is being learnt comes down from its jump.
        """
        medians = self._medians(2 * RISE_RECENT)
        return medians is not None and medians[0] < medians[1]

    def climbing(self, margin: float) -> bool:
        """Whether the loss still climbs: the median of its last 3 values ``margin`` above the median of the 3 before.

        The margin is of the earlier median's size (a share of it).
        """
        medians = self._medians(2 * RISE_RECENT)
        return medians is not None and medians[0] - medians[1] > margin * abs(medians[1])

    def down_since(self, seen: int, began: float | None = None) -> bool:
        """Whether the loss has come down since the step ``losses_seen`` was ``seen`` (that step's loss included).

        The median of the last 3 of those losses below the median of their first 3 (of the last
        :data:`RISE_WINDOW`); with fewer than 6 of them, :meth:`coming_down`. Or the loss now (:attr:`latest`) below
        ``began``, the loss kept from that step (a climb longer than the window: a loss term switched on mid-run is
        learnt down over a hundred noisy steps, some 10 of which end higher). A divergence's loss ends higher than it
        began, however noisy; a loss that jumped with new data and is being learnt ends lower.
        """
        latest = self.latest
        if latest is not None and began is not None and latest < began:
            return True
        medians = self._medians(self.losses_seen - seen + 1)
        return self.coming_down() if medians is None else medians[0] < medians[1]

    def jumped(self, margin: float) -> bool:
        """Whether the latest loss jumped: more than ``margin`` (a share of its size) above the median before it.

        The median of the :data:`LOSS_WINDOW` losses before it; ``False`` with fewer than 3 of them.
        """
        values = list(self.rise_losses)
        before = values[:-1][-LOSS_WINDOW:]
        if len(before) < RISE_RECENT:
            return False
        level = median(before)
        return values[-1] - level > margin * abs(level)

    def climbing_since(self, seen: int, margin: float, put: float | None, thrown: bool) -> bool:
        """Whether the loss climbs past where a shock put it when ``losses_seen`` was ``seen`` (that step included).

        Where the shock put the loss: that step's loss, the new data's under the weights it found (the batches after
        it swing about the new level: a resize's 5.2, then 2.1, then 4.8); ``thrown`` (the shock's update was orders
        of magnitude beyond the run's norms), the lower of that step's loss and the next (a corrupted batch's own
        loss is an outlier; the run its update threw off is at the next one). Climbing: every loss after it (the last
        :data:`RISE_RECENT` of them; one or two at the spike rule's patience) more than ``margin`` (a share of its
        size) above it. A divergence raises the loss of every batch, step after step, with its norm; a shock (new
        data, longer sequences, smaller batches) lifts the loss at once, and the loss stays there or comes down,
        batch by batch, while the optimizer adapts its steps to the new norm. With no later loss: climbing (not
        known). Once more than :data:`RISE_WINDOW` losses were seen since, where the shock put the loss is ``put``
        (:meth:`shock_level` while it could be read; ``None``: climbing), against the last :data:`RISE_RECENT`
        losses: a new loss term switched on mid-run keeps the norm up for a hundred steps while the run learns the
        loss down, and 10 losses back is not where the shock put it.
        """
        shock = self._shock(seen, thrown)
        if shock is not None:
            level, later = shock
        elif self.losses_seen - seen >= RISE_WINDOW:  # its first losses have left the window: where it put the loss
            level, later = put, list(self.rise_losses)[-RISE_RECENT:]
        else:
            return True  # no loss since the shock
        return level is None or not later or min(later) - level > margin * abs(level)

    def shock_level(self, seen: int, thrown: bool) -> float | None:
        """Where a shock put the loss (see :meth:`climbing_since`), while the losses since are all in the window.

        ``None`` before the shock's first loss, and once more than :data:`RISE_WINDOW` losses were seen since.
        """
        shock = self._shock(seen, thrown)
        return None if shock is None else shock[0]

    def _shock(self, seen: int, thrown: bool) -> tuple[float, list[float]] | None:
        """Where a shock put the loss and the losses after it (the last :data:`RISE_RECENT`): :meth:`shock_level`."""
        count = self.losses_seen - seen + 1
        if count <= 0 or count > RISE_WINDOW or not len(self.rise_losses):
            return None
        values = list(self.rise_losses)[-min(count, len(self.rise_losses)) :]
        at = 1 if thrown and len(values) > 2 and values[1] < values[0] else 0
        return values[at], values[at + 1 :][-RISE_RECENT:]

    def observe_norm(self, x: float | None) -> None:
        """Take a finite step's log norm (``None``: a zero norm); keep the loss's best and the norm then."""
        self.compared = None
        if x is not None:
            self.recent_norms.append(x)
        if len(self.recent_losses) < LOSS_WINDOW or not len(self.recent_norms):
            return  # a best level is a median of LOSS_WINDOW losses, never a single one
        loss, level = self.recent_losses.median(), self.recent_norms.median()
        self._block(loss, level)
        if self.loss_floor is None or loss < self.loss_floor:
            self.loss_floor, self.norm_at_floor = loss, level
            return
        self.compared = loss, level

    def above(self, best: float | None) -> bool:
        """Whether the loss (median) is still above :data:`RECOVERED_LOSS_FACTOR` times ``best`` (a best loss)."""
        if not len(self.recent_losses) or best is None:
            return False
        return self.recent_losses.median() > RECOVERED_LOSS_FACTOR * best


@dataclass(eq=False)
class ExplodingEpisode(Stateful):
    """Whether an exploding episode lasts, and what the first one left behind."""

    exploding_episode: bool = state(False, load=bool)
    exploded: bool = state(False, load=bool)  # an exploding alert has fired in this run
    # the best median loss before the first exploding alert
    exploded_floor: float | None = state(None, load=as_optional_float)
    # the best median loss before this episode (the lowest loss so far, when it began within the first steps)
    episode_floor: float | None = state(None, load=as_optional_float)
    quiet_steps: int = state(0, load=int)  # quiet steps in a row in this episode
    # the largest ordinary (chained, log10) norm before an exploding alert, while the steps' norms stay above it:
    # what on_exploding="clip" holds them to
    held_norm: float | None = state(None, load=as_optional_float)

    def start(self, loss_floor: float | None) -> None:
        """An exploding episode begins; the first one of the run keeps the best loss from before it."""
        self.exploding_episode = True
        self.episode_floor, self.quiet_steps = loss_floor, 0
        if not self.exploded:
            self.exploded = True
            self.exploded_floor = loss_floor

    def calm(self, quiet: bool) -> None:
        """A step of the episode, ``quiet`` or not: :data:`QUIET_STEPS` quiet steps in a row end it."""
        self.quiet_steps = self.quiet_steps + 1 if quiet else 0
        self.exploding_episode = self.quiet_steps < QUIET_STEPS

    def hold(self, alerted: bool, ceiling: float | None, x: float | None) -> None:
        """Hold the largest ordinary norm before an alert (``ceiling``), until a step's norm ``x`` is back under it.

        A second alert while one is held keeps the lower.
        """
        if alerted and ceiling is not None:
            self.held_norm = ceiling if self.held_norm is None else min(self.held_norm, ceiling)
        elif self.held_norm is not None and x is not None and x <= self.held_norm:
            self.held_norm = None

    def beyond(self, x: float | None, factor: float) -> bool:
        """While a norm is held: the step's (log10) norm ``x`` is ``factor`` times that norm or more."""
        return self.held_norm is not None and x is not None and x >= self.held_norm + math.log10(factor)


@dataclass(eq=False)
class Counts(Stateful):
    """Events counted for the checkpoint: spike steps and non-finite steps."""

    counts: dict[str, int] = state(load=as_counts, factory=as_counts)

    def add(self, event: str) -> None:
        """Count one ``event``."""
        self.counts[event] = self.counts.get(event, 0) + 1


@dataclass(eq=False)
class Context:
    """What every rule of one detector reads: configuration, model traits, the histories, the exploding episode.

    Attributes:
        config: the detection thresholds.
        traits: what the model looks like, to pick remedy hints.
        optimizer: the watched optimizer's index (recorded in alerts).
        exempt_layers: layers left out of the per-layer vanishing test.
    """

    config: DetectionConfig
    traits: ModelTraits
    optimizer: int = 0
    exempt_layers: frozenset[str] = frozenset()
    norms: NormBaseline = field(init=False)
    losses: LossTrack = field(default_factory=LossTrack)
    episode: ExplodingEpisode = field(default_factory=ExplodingEpisode)
    counts: Counts = field(default_factory=Counts)
    rates: LearningRates = field(default_factory=LearningRates)
    gap: LayerGap = field(default_factory=LayerGap)

    def __post_init__(self) -> None:
        self.norms = NormBaseline(self.config)

    def parts(self) -> tuple[Stateful, ...]:
        """The shared parts of the checkpoint."""
        return (self.norms, self.losses, self.episode, self.counts, self.rates, self.gap)

    def hints(self, kind: AlertKind, cause: Cause | None = None) -> str:
        """The remedy hints of an alert message."""
        return REMEDIES_PLAIN + "\n".join(f"  - {h}" for h in remedies(kind, self.traits, cause))

    def largest_layers(self, stats: StepStats) -> tuple[str, ...]:
        """The layers holding a large share (:data:`LARGEST_SHARE`) of the squared total norm, in forward order."""
        ranked = sorted(zip(stats.layers, stats.grad_norm), key=lambda item: -item[1])
        share = {n for n, g in ranked if g * g >= LARGEST_SHARE * stats.total_norm**2} or {ranked[0][0]}
        return tuple(n for n in stats.layers if n in share)

    def spike_threshold(self) -> float:
        """The total norm above which a step over the current set of layers is a spike.

        ``inf`` until warm-up ends, unless absolute.
        ``exploding_zscore`` standard deviations of ``log10`` of the chained norm over its running mean, and at least
        ``exploding_min_factor`` times the running (geometric) mean, as a total norm over the current set of layers;
        never above ``exploding_threshold`` (a total norm).
        """
        cfg = self.config
        threshold = math.inf
        if self.norms.warm:
            margin = max(cfg.exploding_zscore * self.norms.std, math.log10(cfg.exploding_min_factor))
            threshold = self.norms.real(self.norms.mean + margin)
        if cfg.exploding_threshold is not None:
            threshold = min(threshold, cfg.exploding_threshold)
        return threshold

    def vanishing_suspended(self) -> bool:
        """Whether vanishing verdicts wait: during an explosion, and after one until the loss is back near its best.

        Layers small next to exploding ones are not vanishing. A run recovers from an explosion when its loss (median
        of the last :data:`LOSS_WINDOW` steps) is back within :data:`RECOVERED_LOSS_FACTOR` times its best level from
        before; until then it is still the explosion's run, already alerted.
        """
        episode = self.episode
        if episode.exploding_episode:
            return True
        if not episode.exploded:
            return False
        return self.losses.above(episode.exploded_floor)
