"""Internal. The overhead budget: GradWatch times its own work and spaces out histograms and pictures to fit.

GradWatch's cost has a part that cannot be thinned (measuring and detecting at every step, the scalars at the log
steps the user asked for) and two parts that can: histograms (extra work on the training thread at histogram steps)
and the gradient-flow pictures (drawn on a worker thread, which on a small machine competes with training for the
same cores). :class:`OverheadBudget` keeps the observed step time (the median time between consecutive
optimizer-step hooks, GradWatch's own work included), the average hook time of ordinary steps, the extra hook time of
a histogram step and the time to draw and write one set of pictures; from these it chooses the closest spacing of
histograms and pictures that keeps GradWatch's amortized cost within ``fraction`` of the step time (and hook costs
under :data:`FLOOR_SECONDS` a step within any budget; pictures, whose seconds of drawing are measured, are held to
the fraction itself). It only ever widens what was asked for: histograms stay on the grid
of the asked interval (an explicit ``histogram_every_n_steps`` is never changed), and pictures are drawn at histogram
steps.

A short run has a floor of its own for pictures: a run of known length gets about :data:`MIN_PICTURES` sets spread
over it (at least one every ``1 / MIN_PICTURES`` of the run, on the histogram grid) whatever the fraction allows, as
long as drawing all of them takes at most :data:`PICTURES_FLOOR_SECONDS`; a long run's pictures are held to the
fraction, as its budget spaces them closer than that anyway.

Example:
    >>> budget = OverheadBudget(0.03, histogram_every=4, explicit=False, pictures=True)
    >>> now = 0.0
    >>> for step in range(40):  # 100 ms steps, 1 ms of hook time, 1 ms more on histogram steps
    ...     budget.step_done(now, 0.002 if step % 4 == 0 else 0.001, histograms=step % 4 == 0)
    ...     now += 0.1
    >>> budget.picture_done(2.0)  # one set of pictures took 2 s to draw
    >>> budget.update()
    >>> budget.histogram_every, budget.pictures_every  # histograms as asked; pictures within the 1.75 ms left
    (4, 1144)
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from lightning_gradwatch.history import Ema, Window

__all__ = ["FLOOR_SECONDS", "MIN_PICTURES", "PICTURES_FLOOR_SECONDS", "OverheadBudget"]

_STEP_WINDOW = 64  # step intervals kept for the median step time
_MIN_STEPS = 4  # intervals needed before the budget judges anything
_MIN_JUDGED = 8  # plain steps timed before the per-step work is said to break the budget
#: the per-step work is warned of when over twice its budget and over this much a step (below, a toy model's
#: millisecond is timing noise on a shared machine; the report records any excess all the same)
_FAR_OVER_SECONDS = 0.01
_HOOK_WINDOW = 256  # hook times of ordinary steps kept (log steps among them) for their amortized mean
_HISTOGRAM_WINDOW = 16  # hook times of histogram steps kept: their median is robust to one slow step
_SMOOTHING = 0.2  # weight of a new observation in the running averages
_MAX_EVERY = 10**9
#: GradWatch's hook may always take this much per step: on steps of a few milliseconds a budget of a few percent is
#: tens of microseconds, less than timing noise, and would thin out a toy run's charts for nothing
FLOOR_SECONDS = 0.002
#: a run of known length gets about this many sets of gradient-flow pictures spread over it, whatever the fraction
#: allows (a toy run of 2 ms steps would otherwise get its first and last only) ...
MIN_PICTURES = 8
#: ... as long as drawing all of them (on the worker thread) takes at most this many seconds
PICTURES_FLOOR_SECONDS = 2.0


class OverheadBudget:
    """Spaces out histograms and pictures so GradWatch's own time stays within a fraction of the step time.

    Args:
        fraction: the budget, a fraction of the step time in (0, 1].
        histogram_every: the histogram interval asked for (explicitly or by default), in optimizer steps; 0: none.
        explicit: the user gave ``histogram_every_n_steps``: it is honoured, only pictures are thinned (with one
            warning, from :meth:`update`'s caller, when the histograms alone break the budget).
        pictures: pictures are drawn at histogram steps.
    """

    def __init__(self, fraction: float, histogram_every: int, explicit: bool, pictures: bool) -> None:
        self.fraction = float(fraction)
        self.asked = histogram_every
        self.explicit = explicit
        self.pictures = pictures
        self.histogram_every = histogram_every
        self.pictures_every = histogram_every  # in optimizer steps; a multiple of histogram_every
        self.run_steps = 0  # the run's length in optimizer steps, when known (0: unknown)
        self.pictures_floor_every = 0  # the short-run floor's picture interval (0: none applies)
        self.histograms_break_budget = False
        self.per_step_breaks_budget = False  # what is never thinned (measuring, judging, asked scalars) is over
        self.per_step_far_over = False  # ... by far: worth a warning
        self.pictures_left_out = 0
        self._intervals = Window(_STEP_WINDOW)
        self._last_start: float | None = None
        self._plain = Window(_HOOK_WINDOW)  # hook time of steps without histograms
        self._histogram = Window(_HISTOGRAM_WINDOW)  # hook time of histogram steps
        self._picture = Ema(_SMOOTHING)  # drawing (worker thread) and writing (training thread) time of one set
        self._picture_write = 0.0  # writing time waiting to be added to the next drawn set
        self._drawn = deque[float]()  # drawing times handed over by the worker thread
        # scalars at an interval GradWatch chose itself (from the run length) may be widened, up to `log_widest`
        self.log_asked = 0  # 0: the scalar interval is not the budget's to change
        self.log_every = 0
        self.log_widest = 0
        self._log = Window(_HISTOGRAM_WINDOW)  # hook time of log steps, when log_asked

    def retime(self, histogram_every: int, log_every: int = 0, log_widest: int = 0, run_steps: int = 0) -> None:
        """Start from the intervals chosen for the run once its length is known (before its first step).

        ``log_every`` (when not 0) is a scalar interval GradWatch chose itself, closer than the Trainer's
        ``log_widest``: the budget may widen it again, on its own grid, up to ``log_widest``. ``run_steps`` is the
        run's length in optimizer steps (0: unknown), for the short-run floor of pictures.
        """
        self.asked = self.histogram_every = self.pictures_every = histogram_every
        self.log_asked = self.log_every = log_every
        self.log_widest = max(log_widest, log_every)
        self.run_steps = max(int(run_steps), 0)

    # ------------------------------------------------------------------ observations
    def step_done(self, started: float, hook_seconds: float, histograms: bool, log: bool = False) -> None:
        """One optimizer-step hook that started at ``started`` (``time.perf_counter``) took ``hook_seconds``."""
        first = self._last_start is None
        if not first and started > self._last_start:  # type: ignore[operator]
            self._intervals.append(started - self._last_start)  # type: ignore[operator]
        self._last_start = started
        if first:  # the first hook also sets up the fit's collectors: not a step's cost
            return
        if histograms:
            self._histogram.append(hook_seconds)
        elif log and self.log_asked:
            self._log.append(hook_seconds)
        else:
            self._plain.append(hook_seconds)

    def picture_done(self, seconds: float) -> None:
        """The worker thread drew one set of pictures in ``seconds`` (safe to call from that thread)."""
        self._drawn.append(seconds)

    def pictures_written(self, seconds: float) -> None:
        """Writing finished pictures took ``seconds`` of the training thread (counted as the pictures' cost)."""
        self._picture_write += seconds

    # ------------------------------------------------------------------ estimates
    @property
    def step_seconds(self) -> float | None:
        """The median time between consecutive optimizer-step hooks, once a few are known."""
        return self._intervals.median() if len(self._intervals) >= _MIN_STEPS else None

    @property
    def picture_seconds(self) -> float | None:
        """The running average time of one set of pictures, drawing and writing (``None`` before the first)."""
        return self._picture.value

    def _histogram_extra(self) -> float:
        """Extra hook time of a histogram step over an ordinary one (a log step, when those are timed apart)."""
        if not self._histogram:
            return 0.0
        return max(self._histogram.median() - self._base() - self._log_extra(), 0.0)

    def _base(self) -> float:
        """Mean hook time of the recent ordinary steps (fixed log steps among them): what the budget cannot thin."""
        return self._plain.mean() if self._plain else 0.0

    def _log_extra(self) -> float:
        """Extra hook time of a log step over a plain one, when the scalar interval is the budget's (else 0)."""
        if not self.log_asked or not self._log:
            return 0.0
        return max(self._log.median() - self._base(), 0.0)

    def costs(self) -> tuple[float, float, float]:
        """GradWatch's seconds per step at the current spacing: per-step work, histograms, pictures.

        The per-step work is the plain steps' and the scalars'; the histograms' is their extra hook time; the
        pictures' is their drawing (0.0 while not known). :meth:`overhead` is their sum over the step time.
        """
        histograms = pictures = 0.0
        if self.histogram_every > 0:
            histograms = self._histogram_extra() / self.histogram_every
            if self.pictures and self._picture.value is not None:
                pictures = self._picture.value / self.pictures_every
        return self._per_step(), histograms, pictures

    def _per_step(self) -> float:
        """Hook time per step that histograms and pictures cannot change: plain steps and the scalars."""
        return self._base() + (self._log_extra() / self.log_every if self.log_asked else 0.0)

    def update(self) -> None:
        """Take in the drawing times reported since the last call and choose the histogram and picture spacing."""
        self.take_drawn()
        step, allowed = self.step_seconds, self.hook_allowance()
        if step is None or allowed is None:
            return
        if self.log_asked and self._log:  # scalars the run length asked for: first in line, within half the room
            self._widen_scalars(allowed)
        judged = len(self._plain) >= _MIN_JUDGED
        typical = self.per_step_seconds  # a median, like the step time: one stalled step does not make it over
        self.per_step_breaks_budget = judged and typical > allowed
        self.per_step_far_over = judged and typical > max(2 * allowed, _FAR_OVER_SECONDS)
        if self.asked > 0:
            self._space_histograms(step, allowed)

    def _space_histograms(self, step: float, allowed: float) -> None:
        """Choose the histogram and picture spacing within ``allowed`` seconds a step (``step``: the step time)."""
        # what the budget leaves after the per-step work (and at least a quarter of it, when that alone is over)
        room = max(allowed - self._per_step(), allowed / 4)
        extra = self._histogram_extra()
        pictures = self.pictures and self._picture.value is not None
        histogram_every = self._histogram_spacing(room / 2 if pictures else room, extra)
        # warned of only when the asked histograms alone take the whole budget, measured on a few of them
        self.histograms_break_budget = self.explicit and len(self._histogram) >= 3 and extra / self.asked > allowed
        self.histogram_every = histogram_every
        self.pictures_every = self._picture_spacing(step, allowed, room, extra) if pictures else histogram_every
        self.pictures_floor_every = self.floor_every
        if self.pictures_floor_every:
            self.pictures_every = min(self.pictures_every, self.pictures_floor_every)

    def take_drawn(self) -> None:
        """Average in the drawing times the worker thread handed over, with the writing time since."""
        while self._drawn:
            self._picture.add(self._drawn.popleft() + self._picture_write)
            self._picture_write = 0.0

    def _widen_scalars(self, allowed: float) -> None:
        """Space out the scalars the run length asked for, within half the room (all of it without histograms)."""
        room = max(allowed - self._base(), allowed / 4)
        share = room / 2 if self.asked > 0 else room
        wanted = self.log_asked * _ceil(self._log_extra() / share / self.log_asked)
        self.log_every = max(self.log_every, min(wanted, self.log_widest))  # never closer again: no see-saw

    def _histogram_spacing(self, room: float, extra: float) -> int:
        """The histogram interval on the asked grid whose extra hook time fits ``room`` (as asked, when explicit).

        A run of known length keeps about :data:`MIN_PICTURES` histogram steps spread over it (one every eighth of
        it, on the asked grid) as long as their extra time stays within :data:`PICTURES_FLOOR_SECONDS` in all: the
        short-run floor's pictures are drawn on histogram steps, and a short run's histograms do not stop at its
        first steps.
        """
        if self.explicit or extra / self.asked <= room:
            return self.asked
        every = self.asked * _ceil(extra / room / self.asked)
        if self.run_steps and (MIN_PICTURES + 2) * extra <= PICTURES_FLOOR_SECONDS:
            every = min(every, self.asked * max(1, round(self.run_steps / MIN_PICTURES / self.asked)))
        return every

    def _picture_spacing(self, step: float, allowed: float, room: float, extra: float) -> int:
        """The picture interval, a multiple of the histogram interval, whose drawing fits what the budget leaves."""
        assert self._picture.value is not None
        histogram_every = self.histogram_every
        # pictures cost seconds of matplotlib, measured, not hook times at the edge of timing noise: no floor
        strict = self.fraction * step
        picture_total = max(strict - self._per_step(), strict / 4) if strict < allowed else room
        picture_room = max(picture_total - extra / histogram_every, picture_total / 4)
        return histogram_every * _ceil(self._picture.value / picture_room / histogram_every)

    @property
    def floor_spread(self) -> int:
        """The picture interval that spreads about :data:`MIN_PICTURES` sets over a run of known length.

        On the histogram grid, before their cost is counted (0: the run's length is not known, or no pictures).
        """
        every, steps = self.histogram_every, self.run_steps
        if not steps or not self.pictures or every <= 0:
            return 0
        return every * max(1, round(steps / MIN_PICTURES / every))

    @property
    def floor_every(self) -> int:
        """The picture interval of a short run's floor (0: the floor gives nothing, or the picture time is not known).

        :attr:`floor_spread`, or wider so that all of its sets take at most :data:`PICTURES_FLOOR_SECONDS` to draw.
        The sets counted: the first, one every interval, and the last histogram step's, drawn at the end of the fit.
        """
        seconds, every, spread = self._picture.value, self.histogram_every, self.floor_spread
        if not spread or not seconds:
            return 0
        affordable = min(int(PICTURES_FLOOR_SECONDS // seconds), MIN_PICTURES + 2)
        if affordable < 3:  # the first and the last sets are drawn anyway
            return 0
        # (run_steps - 1) // interval + 2 sets (the last one's included) must stay within what the floor pays for
        fewest = (self.run_steps - 1) // (affordable - 1) + 1
        return max(spread, every * _ceil(fewest / every))

    def overhead(self) -> float | None:
        """GradWatch's estimated amortized cost as a fraction of the step time, at the current spacing."""
        step = self.step_seconds
        if step is None:
            return None
        return sum(self.costs()) / step

    def hook_allowance(self) -> float | None:
        """The hook time a step may take (per-step work and histograms together), as :meth:`update` spaces them.

        The fraction of the step time, and at least :data:`FLOOR_SECONDS`: hook costs under 2 ms a step are within
        any budget. Pictures, drawn on the worker thread, are held to the fraction itself.
        """
        step = self.step_seconds
        return None if step is None else max(self.fraction * step, FLOOR_SECONDS)

    @property
    def per_step_seconds(self) -> float:
        """GradWatch's time per step that nothing can thin: measuring and judging, and scalars at a fixed interval.

        The median over the recent ordinary steps, as the step time is: what a typical step pays, which a stall of
        the machine during one hook does not change (the amortized cost, :meth:`overhead`, takes the mean).
        """
        return self._plain.median() if self._plain else 0.0

    @property
    def thinned(self) -> bool:
        """Whether scalars, histograms or pictures are spaced out wider than asked."""
        wider_pictures = self.pictures and self.pictures_every > self.asked
        return self.log_every > self.log_asked or self.histogram_every > self.asked or wider_pictures

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``gradwatch.json``'s ``budget``."""

        def rounded(x: float | None, digits: int = 6) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, digits)

        return {
            "overhead_budget": self.fraction,
            "thinned": self.thinned,
            "asked": {
                "log_every_n_steps": self.log_asked or None,
                "histogram_every_n_steps": self.asked,
                "pictures_every_n_steps": self.asked if self.pictures else 0,
            },
            "log_every_n_steps": self.log_every or None,
            "histogram_every_n_steps": self.histogram_every,
            "pictures_every_n_steps": self.pictures_every if self.pictures else 0,
            "pictures_left_out": self.pictures_left_out,
            "run_steps": self.run_steps or None,
            "pictures_floor": {
                "pictures": MIN_PICTURES,
                "seconds": PICTURES_FLOOR_SECONDS,
                "pictures_every_n_steps": self.pictures_floor_every or None,
            },
            "histograms_break_budget": self.histograms_break_budget,
            "exceeded_by_per_step_work": self.per_step_breaks_budget,
            "step_seconds": rounded(self.step_seconds),
            "hook_seconds": rounded(self._per_step() if self._plain else None),
            "histogram_extra_seconds": rounded(self._histogram_extra() if self._histogram else None),
            "picture_seconds": rounded(self._picture.value),
            "estimated_overhead": rounded(self.overhead(), 4),
        }


def _ceil(x: float) -> int:
    return max(1, min(_MAX_EVERY, math.ceil(x))) if math.isfinite(x) else _MAX_EVERY
