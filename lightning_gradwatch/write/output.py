"""Internal. One fit's output on global rank 0: step scalars and histograms, pictures, alerts and the report.

The engine hands each decision here; this module turns it into writes (through :class:`~.writers.Writers`), the
drawing thread's work, warnings, and ``gradwatch.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from lightning_gradwatch import _names as names
from lightning_gradwatch._version import __version__
from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.engine.environment import Environment
from lightning_gradwatch.engine.ledger import RunLedger
from lightning_gradwatch.judge.context import LARGEST_SHARE
from lightning_gradwatch.judge.decision import Decision, Flags
from lightning_gradwatch.kinds import Health, Response, RunStatus, kind_spec
from lightning_gradwatch.measure.records import StepStats
from lightning_gradwatch.report import RunSummary, build_report, json_safe
from lightning_gradwatch.write.budget import FLOOR_SECONDS, MIN_PICTURES, OverheadBudget
from lightning_gradwatch.write.content import histogram_tags, step_scalars
from lightning_gradwatch.write.picture_schedule import Draw, PictureSchedule
from lightning_gradwatch.write.pictures import (
    BackgroundDrawing,
    gradient_flow_png,
    gradient_heatmap_png,
    matplotlib_available,
)
from lightning_gradwatch.write.progress import warn
from lightning_gradwatch.write.sinks import Sink
from lightning_gradwatch.write.writers import Writers

__all__ = ["LaneView", "RunOutput", "flow_rows", "layer_health", "per_step_message"]

_BUDGET_EVERY = 8  # optimizer steps between two revisions of the budget's spacing
_DRAWING_TIMEOUT = 60.0  # seconds the end of a fit waits for the last gradient-flow pictures


class LaneView(Protocol):
    """What the output reads of one optimizer's lane through the engine."""

    index: int
    suffix: str  # tells apart the run-level tags of several optimizers
    key: str  # its part of the run summary (its total norm, its layers' heat map)
    ticks: int  # the optimizer's own step count

    @property
    def sharded(self) -> bool:
        """Whether its statistics are collectives (every process measures the same steps)."""
        ...

    def spike_threshold(self) -> float:
        """The total norm above which its next step is a spike."""
        ...

    def take_interval_max(self, default: float) -> float:
        """The largest finite total norm since the last call."""
        ...


class RunOutput:
    """Everything one fit writes. Built on every rank; only global rank 0 writes.

    Args:
        env: the fit's environment (whether this process writes, where the report goes).
        loggers: the trainer's loggers.
        summary: the run summary (for the report and the heat map).
        alerts: the list recorded alerts are kept in (the callback's ``alerts``).
        ledger: the run directory's record across fits (its fits and alerts go into the report).
        config: the configuration, for the report.
        images: draw gradient-flow pictures at histogram steps (when a logger shows images).
        namespace: for the second and later GradWatch of one Trainer: the subdirectory of the log directory its
            TensorBoard output and report go to, and the prefix of its scalars in other loggers.
        budget: the overhead budget that spaces out histograms and pictures (``None``: none).
        log_name: the logger the budget's message goes to.
        sinks: more outputs, beside the loggers' (see :mod:`~lightning_gradwatch.write.sinks`).
    """

    def __init__(
        self,
        env: Environment,
        loggers: Any,
        summary: RunSummary,
        alerts: list[GradientAlert],
        ledger: RunLedger,
        config: Callable[[], dict[str, Any]],
        images: bool,
        namespace: str = "",
        budget: OverheadBudget | None = None,
        log_name: str = "lightning_gradwatch",
        sinks: Iterable[Sink] = (),
    ) -> None:
        self.is_global_zero = env.is_global_zero
        self.schedule = {"log_every_n_steps": env.log_every, "histogram_every_n_steps": env.hist_every}
        self.log_dir = os.path.join(env.log_dir, namespace) if env.log_dir is not None and namespace else env.log_dir
        self.writers = Writers(loggers, namespace, self.log_dir, sinks) if env.is_global_zero else None
        if self.writers is not None and env.log_dir is not None and self.log_dir is not None:
            point_to_record(loggers, env.log_dir, self.log_dir)
        self.summary = summary
        self.alerts = alerts
        self.ledger = ledger
        self._config = config
        self._warned_no_gradients = False
        self.drawing: BackgroundDrawing | None = None
        self.budget = budget if env.is_global_zero else None
        self._log = logging.getLogger(log_name)
        self._timed_steps = 0
        self._said_thinned = False
        self._warned_budget = False
        self._warned_per_step = False
        self.finished = False  # the fit's last pictures and report were written
        self.pictures: PictureSchedule | None = None  # which histogram steps get pictures
        if images and self.writers is not None and self.writers.wants_images:
            if matplotlib_available():
                self.drawing = BackgroundDrawing(max_waiting=MIN_PICTURES + 2)  # a short run's floor, all queued
                self.pictures = PictureSchedule(self.drawing, self.budget)
            else:
                warn(
                    "GradWatch draws its gradient-flow images with matplotlib, which is not installed: `pip install"
                    " matplotlib` (or `lightning-gradwatch[images]`), or pass `images=False`. Everything else works"
                    " without it."
                )

    @property
    def writes(self) -> bool:
        """Whether this process writes step data (rank 0 with at least one logger)."""
        return self.writers is not None and bool(self.writers)

    def layers_merged(self, index: int, modules: int, layers: int, how: str, max_layers: int | None) -> None:
        """Say once that an optimizer's layers were merged to respect ``max_layers``."""
        if self.is_global_zero:
            warn(
                f"GradWatch merges the {modules} layers of optimizer {index} into {layers}, {how}"
                f" (max_layers={max_layers}), so TensorBoard stays readable. Pass a larger `max_layers`, or"
                " `include`/`exclude`, to see more."
            )

    def no_gradients(self, index: int, step: int, watched: int = 1) -> None:
        """Say once that an optimizer's watched parameters had no gradient (``watched``: how many it watches)."""
        if self.is_global_zero and not self._warned_no_gradients:
            self._warned_no_gradients = True
            if watched == 0:
                warn(
                    f"GradWatch watches none of optimizer {index}'s parameters: `include`/`exclude` leave none of"
                    " them. Its steps are not measured, checked or clipped."
                )
                return
            warn(
                f"GradWatch found no gradient on the watched parameters of optimizer {index} at step {step}"
                " (all frozen or unused, or the step skipped its backward). Such steps are not measured."
            )

    def say(self, message: str) -> None:
        """Say ``message`` once, as an INFO line (rank 0), and write the report it changed."""
        if self.is_global_zero:
            self._log.info(message)
            self.write_report(RunStatus.RUNNING)

    # ------------------------------------------------------------------ alerts
    def record(self, decision: Decision, optimizer: int = 0) -> None:
        """Keep the decision's alerts (bounded), write them, warn, and update the report; say its notices, if any."""
        for kind, message in decision.notices:
            self.ledger.note(kind, decision.step, message, optimizer)
            if self.is_global_zero:
                warn(message)
                self.write_report(RunStatus.RUNNING)
        for alert, response in decision.alerts:
            if self.ledger.record(alert):
                self.alerts.append(alert)
            else:  # a run that alerts without end keeps its first alerts, and counts the rest
                self.summary.count(names.ALERTS_NOT_KEPT)
            if not self.is_global_zero:
                continue
            if self.writers:
                self.writers.write_alert(alert)
            if response != Response.RAISE:
                action = kind_spec(alert.kind).says(response)
                warn(alert.message if action is None else f"{alert.message}\n{action}")
            self.write_report(RunStatus.RUNNING)

    # ------------------------------------------------------------------ steps
    def write_step(self, decision: Decision, lane: LaneView, clip: tuple[float, float] | None, flags: Flags) -> None:
        """Write a log or histogram step's scalars, histograms and (handed to the drawing thread) pictures.

        A step that alerts, is not finite, or is skipped or stops the run (its ``flags``, as the processes agreed
        on them) has its scalars written too, whenever it falls: the charts never end at the step before a run's
        last, nor hide a NaN between two log steps.
        """
        stats = decision.stats
        if stats is None or not self.writes:
            return
        log = decision.log or _remarkable(decision, stats, flags)
        if not (log or decision.histograms):
            return
        assert self.writers is not None
        scalars = self._scalars(stats, lane, clip) if log else {}
        self.writers.write_step(decision.step, scalars, histogram_tags(stats))
        if decision.histograms and self.pictures is not None:
            self.pictures.offer(lane.suffix, lane.ticks, decision.step, lambda: self._picture_job(decision, lane))

    def _scalars(self, stats: StepStats, lane: LaneView, clip: tuple[float, float] | None) -> dict[str, float]:
        suffix = lane.suffix
        scalars = step_scalars(stats, suffix=suffix)
        scalars[names.run_tag(names.TOTAL_NORM_MAX, suffix)] = lane.take_interval_max(stats.total_norm)
        threshold = lane.spike_threshold()
        if math.isfinite(threshold):
            scalars[names.run_tag(names.SPIKE_THRESHOLD, suffix)] = threshold
        if clip is not None:
            scalars[names.run_tag(names.CLIPPED_NORM, suffix)] = clip[1]
            if math.isfinite(clip[0]):
                scalars[names.run_tag(names.CLIP_THRESHOLD, suffix)] = clip[0]
        for event in names.EVENT_SCALARS:
            scalars[f"{names.NAMESPACE}/{event}"] = float(self.summary.events.get(event, 0))
        return scalars

    def _picture_job(self, decision: Decision, lane: LaneView) -> Draw | None:
        """This step's picture data, taken now, and what draws it on the worker thread (``None``: nothing to draw).

        Both pictures show every layer of the lane that had a gradient in the run, not only those that had one at
        this step: the bar chart leaves the others' places empty, the heat map their cells.
        Matplotlib never runs on the training thread.
        """
        stats, step, suffix = decision.stats, decision.step, lane.suffix
        if stats is None or stats.mean_abs is None or stats.max_abs is None:
            return None
        rows, steps, norms = self.summary.norm_grid(self.summary.order, lane.key)
        layers, mean_abs, max_abs, health, missing = flow_rows(
            rows, stats.layers, stats.mean_abs, stats.max_abs, layer_health(stats, decision)
        )
        budget = self.budget

        def draw() -> dict[str, bytes]:
            started = time.perf_counter()
            flow = gradient_flow_png(layers, mean_abs, max_abs, health, step, no_gradient=missing)
            images = {names.run_tag(names.GRADIENT_FLOW, suffix): flow}
            if len(steps) >= 2:
                heatmap = gradient_heatmap_png(rows, steps, norms, steps[-1])  # the whole run's, when drawn at its end
                images[names.run_tag(names.GRADIENT_HEATMAP, suffix)] = heatmap
            if budget is not None:
                budget.picture_done(time.perf_counter() - started)
            return images

        return draw

    def write_drawn(self, drawn: list[tuple[int, dict[str, bytes]]] | None = None) -> None:
        """Write the pictures the drawing thread has finished; report its failure once."""
        if self.drawing is None or self.writers is None:
            return
        if drawn is None:
            drawn = self.drawing.collect() if self.drawing.ready else []
        started = time.perf_counter()
        for step, images in drawn:
            self.writers.write_images(step, images)
        if drawn and self.budget is not None:
            self.budget.pictures_written(time.perf_counter() - started)
        if self.drawing.error is not None:
            err = self.drawing.error
            self.drawing.close(timeout=0)
            self.drawing = self.pictures = None
            warn(
                f"GradWatch could not draw its gradient-flow images ({type(err).__name__}: {err}); it stops drawing"
                " them for this run."
            )

    # ------------------------------------------------------------------ the overhead budget
    def retime(self, log_every: int, hist_every: int, log_widest: int, run_steps: int = 0) -> None:
        """Take the run's intervals, chosen once its length is known (before the first step).

        ``log_every`` is closer than the Trainer's ``log_widest``; under a budget it may be widened again.
        ``run_steps``: the run's length in optimizer steps (0: unknown), for the short-run floor of pictures.
        """
        self.schedule = {"log_every_n_steps": log_every, "histogram_every_n_steps": hist_every}
        if self.budget is not None:  # a scalar interval the run length did not choose is not the budget's to widen
            self.budget.retime(hist_every, log_every if log_widest else 0, log_widest, run_steps)

    def log_every(self, lane: LaneView) -> int:
        """The scalar interval in force for this lane: the budget's, when the run length chose it, unless sharded.

        Sharded (FSDP) statistics of log steps are collectives, so there every rank keeps the interval chosen.
        """
        budget = self.budget
        if budget is None or not budget.log_asked or lane.sharded:
            return self.schedule["log_every_n_steps"]
        return budget.log_every

    def histogram_every(self, lane: LaneView) -> int:
        """The histogram interval in force for this lane: the budget's, unless its statistics are collectives.

        Sharded (FSDP) histograms are computed by every rank together, so every rank must keep the same interval;
        only rank 0 times itself, so there the asked interval stays.
        """
        if self.budget is None:
            return self.schedule["histogram_every_n_steps"]
        if lane.sharded:
            self.budget.explicit = True  # kept as asked, and only the pictures are spaced out
            return self.schedule["histogram_every_n_steps"]
        return self.budget.histogram_every

    def step_timed(self, started: float, seconds: float, histograms: bool, log: bool = False) -> None:
        """Take GradWatch's time for one optimizer-step hook; now and then revise the spacing, and say so once."""
        budget = self.budget
        if budget is None:
            return
        budget.step_done(started, seconds, histograms, log)
        self._timed_steps += 1
        if self._timed_steps % _BUDGET_EVERY and not histograms:
            return
        budget.update()
        self._say_budget()

    def _say_budget(self) -> None:
        """Say once what the budget thins, and warn once when explicit histograms alone break it."""
        budget = self.budget
        if budget is None:
            return
        if budget.thinned and not self._said_thinned:  # within the budget: what was thinned, for whoever looks
            self._said_thinned = True
            self._log.debug(f"GradWatch: {budget_message(budget)}")
        if budget.per_step_far_over and not self._warned_per_step:
            self._warned_per_step = True
            warn(per_step_message(budget))
        if budget.histograms_break_budget and not self._warned_budget:
            self._warned_budget = True
            warn(
                f"GradWatch's histograms every {budget.asked} steps (histogram_every_n_steps={budget.asked}) alone"
                f" take more than overhead_budget={budget.fraction} of the training time"
                f" (about {budget.to_dict()['histogram_extra_seconds']} s each on"
                f" {budget.to_dict()['step_seconds']} s steps). A larger `histogram_every_n_steps`, or None to let"
                " the budget space them out, keeps GradWatch within its budget."
            )

    # ------------------------------------------------------------------ the end
    def write_report(self, status: RunStatus, error: str | None = None) -> None:
        """Write ``gradwatch.json`` through the sinks that keep it (a failure is reported once; training goes on)."""
        if self.writers is None or not self.writers.reports or not self.ledger.fits:
            return  # no fit: a tuner's search was all the run had
        doc = build_report(
            version=__version__,
            status=status,
            config=self._config(),
            summary=self.summary,
            alerts=(),
            error=error,
        )
        doc.update(json_safe(self.ledger.to_report()))
        doc["schedule"] = dict(self.schedule)
        if self.budget is not None:
            doc["budget"] = self.budget.to_dict()
        self.writers.write_report(doc)

    def finish(self, status: RunStatus, error: str | None = None) -> None:
        """Last pictures, flushed logs, the final report.

        A fit that fails at a step (a ``"raise"`` response) is finished there, before its exception leaves it; a
        later call (the fit's end, or a loop that caught the exception and went on) only writes the report again,
        with the status it ended with.
        """
        if self.finished:
            self.write_report(status, error)
            return
        self.finished = True
        if not self.is_global_zero:
            return
        if self.drawing is not None and self.pictures is not None:
            drawing = self.drawing
            self.write_drawn(self.pictures.finish(timeout=_DRAWING_TIMEOUT))  # held, and the last step's pictures
            if self.budget is not None:
                self.budget.update()  # the last pictures' time, for the report
                self._say_budget()
                if over_budget(self.budget) and not self._warned_per_step:  # beyond the budget: said plainly
                    self._log.info(overhead_message(self.budget, self._timed_steps))
            if drawing.dropped:
                warn(
                    f"GradWatch left out {drawing.dropped} gradient-flow picture(s): they were asked for faster"
                    " than matplotlib draws them. A larger `histogram_every_n_steps`, or `images=False`, avoids"
                    " this."
                )
        if self.writers:
            self.writers.close()
        self.write_report(status, error)


def budget_message(budget: OverheadBudget) -> str:
    """What the budget thinned, in one sentence.

    Example:
        >>> budget = OverheadBudget(0.03, histogram_every=4, explicit=False, pictures=True)
        >>> budget.histogram_every = budget.pictures_every = 8
        >>> budget_message(budget).split(" (steps")[0]
        'to stay within overhead_budget=0.03 of the training time'
        >>> budget_message(budget).split("it writes ")[1].split(".")[0]
        'histograms and their pictures every 8 steps instead of 4'
    """
    b = budget.to_dict()
    parts = []
    if budget.log_every > budget.log_asked:
        parts.append(f"scalars every {budget.log_every} steps instead of {budget.log_asked}")
    own_pictures = budget.pictures and budget.pictures_every > budget.histogram_every
    if budget.histogram_every > budget.asked:
        what = "histograms" if own_pictures or not budget.pictures else "histograms and their pictures"
        parts.append(f"{what} every {budget.histogram_every} steps instead of {budget.asked}")
    if own_pictures:
        notes = [] if b["picture_seconds"] is None else [f"about {b['picture_seconds']} s each to draw"]
        if budget.pictures_floor_every and budget.pictures_every == budget.pictures_floor_every:
            notes.append(f"about {MIN_PICTURES} over this run's {budget.run_steps} steps")
        drawing = f" ({'; '.join(notes)})" if notes else ""
        parts.append(f"gradient-flow pictures every {budget.pictures_every} steps instead of {budget.asked}{drawing}")
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return (
        f"to stay within overhead_budget={budget.fraction} of the training time (steps of about"
        f" {_duration(b['step_seconds'])}), it writes {listed}. gradwatch.json records the spacing under `budget`;"
        " `overhead_budget=None` turns the budget off."
    )


def over_budget(budget: OverheadBudget) -> bool:
    """Whether GradWatch's estimated cost, at the spacing the run ended with, is more than twice its budget.

    Counted as the budget counts it: hook time (the per-step work and the histograms) within what the budget allows
    a step (:meth:`~.budget.OverheadBudget.hook_allowance`: hook costs under 2 ms a step are within any budget)
    counts as no more than the budget; pictures count in full. What a short run of small steps pays past it: its
    floor of pictures, or hook time of more than 2 ms a step.
    """
    costs = _Costs.of(budget)
    return costs is not None and costs.charged > 2 * costs.budget


class _Costs:
    """GradWatch's seconds per step by part, against what the budget allows them."""

    def __init__(self, budget: OverheadBudget, step: float, allowance: float) -> None:
        self.step = step
        self.budget = budget.fraction * step  # seconds a step
        self.per_step, self.histograms, self.pictures = budget.costs()
        self.hooks = self.per_step + self.histograms
        self.allowance = allowance
        self.hooks_allowed = self.hooks <= allowance

    @classmethod
    def of(cls, budget: OverheadBudget) -> _Costs | None:
        """The budget's costs (``None`` before the step time is known)."""
        step, allowance = budget.step_seconds, budget.hook_allowance()
        return None if step is None or allowance is None else cls(budget, step, allowance)

    @property
    def charged(self) -> float:
        """Seconds a step counted against the budget: hook time within its allowance as no more than the budget."""
        return self.pictures + (min(self.hooks, self.budget) if self.hooks_allowed else self.hooks)

    def costly(self) -> list[str]:
        """The parts worth bringing down: over the budget by themselves (all the charged ones, when none is)."""
        hooks = not self.hooks_allowed  # hook time within its allowance needs no remedy
        alone = {
            "pictures": self.pictures > self.budget,
            "histograms": hooks and self.histograms > self.budget,
            "per_step": hooks and self.per_step > self.allowance,
        }
        counted = {
            "pictures": self.pictures / self.step >= _LISTED,
            "histograms": hooks and self.histograms / self.step >= _LISTED,
            "per_step": hooks,
        }
        parts = [part for part, over in alone.items() if over]
        return parts or [part for part, named in counted.items() if named]


_LISTED = 0.01  # a part of GradWatch's cost is named from this share of the step time on
_ADVICE = {
    "pictures": "`images=False` turns the pictures off",
    "histograms": "a larger `histogram_every_n_steps` spaces out the histograms",
    "per_step": (
        "the per-step work grows with the number of parameter tensors, not the step (about 1.4 ms for 78), a few"
        " percent of a step of 50 ms or more: watching fewer parameters (`include`/`exclude`) or modules rather than"
        " single parameters (`granularity`) brings it down"
    ),
}


def overhead_message(budget: OverheadBudget, steps: int) -> str:
    """What GradWatch cost a run of ``steps`` steps whose cost went past its budget, by part, and what helps.

    Only the parts that cost too much are given a remedy: hook time within what any budget allows is said to be.

    Example:
        >>> budget = OverheadBudget(0.03, histogram_every=12, explicit=False, pictures=True)
        >>> budget.retime(12, run_steps=100)
        >>> for i in range(16):
        ...     budget.step_done(started=0.005 * i, hook_seconds=0.001, histograms=i % 12 == 0)
        >>> budget.picture_done(0.25)
        >>> budget.update()
        >>> said = overhead_message(budget, steps=100)
        >>> over_budget(budget), said.split(" (100")[0]
        (True, 'GradWatch cost about 228% of the training time of this run, about 1.1 s in all')
        >>> [part.split(" (")[0] for part in said.split(": ")[1].split("), ")][:2]
        ['its gradient-flow pictures 208%', 'its measuring and judging at every step 20%']
        >>> for sentence in said.split(". ")[1:]:  # 1 ms of hook time a step is within any budget: pictures advised
        ...     print(sentence)
        GradWatch's hook (1 ms a step) is within the budget: hook costs under 2 ms a step are within any budget
        `images=False` turns the pictures off
        gradwatch.json records the costs under `budget`.
    """
    b = budget.to_dict()
    costs = _Costs.of(budget)
    assert costs is not None, "no step time yet"
    step = costs.step
    parts = []
    if costs.pictures / step >= _LISTED:
        parts.append(
            f"its gradient-flow pictures {costs.pictures / step:.0%} ({_duration(b['picture_seconds'])} each to draw,"
            " on a worker thread the end of the fit waits for)"
        )
    if costs.histograms / step >= _LISTED:
        parts.append(f"its histograms {costs.histograms / step:.0%} (every {budget.histogram_every} steps)")
    parts.append(
        f"its measuring and judging at every step {costs.per_step / step:.0%} ({_duration(costs.per_step)} a step)"
    )
    share = budget.overhead() or 0.0
    said = [
        f"GradWatch cost about {share:.0%} of the training time of this run, about {_duration(share * step * steps)}"
        f" in all ({steps} steps of about {_duration(step)}), beyond overhead_budget={budget.fraction}:"
        f" {', '.join(parts)}"
    ]
    if costs.hooks_allowed:
        within = f": hook costs under {_duration(FLOOR_SECONDS)} a step are within any budget"
        said.append(
            f"GradWatch's hook ({_duration(costs.hooks)} a step) is within the budget"
            f"{within if costs.hooks <= FLOOR_SECONDS else ''}"
        )
    advice = "; ".join(_ADVICE[part] for part in costs.costly())
    said.append(advice[:1].upper() + advice[1:])
    return ". ".join(said) + ". gradwatch.json records the costs under `budget`."


def _duration(seconds: float | None) -> str:
    """``0.00773`` -> ``"7.7 ms"``; ``0.26`` -> ``"0.26 s"``; ``1234.5`` -> ``"1234 s"``."""
    if seconds is None or not math.isfinite(seconds):
        return "? s"
    if seconds < 0.1:
        return f"{seconds * 1e3:.2g} ms"
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


def per_step_message(budget: OverheadBudget) -> str:
    """The warning given once when what GradWatch never thins alone takes more than its budget.

    Example:
        >>> budget = OverheadBudget(0.03, histogram_every=0, explicit=False, pictures=False)
        >>> for i in range(12):
        ...     budget.step_done(started=0.04 * i, hook_seconds=0.02, histograms=False)
        >>> budget.update()
        >>> budget.per_step_far_over, per_step_message(budget).split(" (")[0]
        (True, "GradWatch's work at every step takes about 20 ms of each 40 ms step")
    """
    step = budget.step_seconds or math.nan
    hook = budget.per_step_seconds
    return (
        f"GradWatch's work at every step takes about {1e3 * hook:.3g} ms of each {1e3 * step:.3g} ms step"
        f" ({hook / step:.0%}), more than overhead_budget={budget.fraction} allows. It cannot be thinned: measuring"
        " and judging every step is what lets GradWatch skip, clip or stop a bad step, and the scalars are written"
        " at their interval (`log_every_n_steps`, or the Trainer's when it is not given). Its cost grows with the"
        " number of parameter tensors watched. To bring it down:"
        " watch fewer parameters (`include`/`exclude`), chart modules rather than single parameters"
        ' (`granularity="module"`, a smaller `max_layers`), or write scalars less often (a larger'
        " `log_every_n_steps`). gradwatch.json records the figures under `budget`."
    )


def flow_rows(
    rows: Sequence[str],
    layers: Sequence[str],
    mean_abs: Sequence[float],
    max_abs: Sequence[float],
    health: Sequence[Health],
) -> tuple[list[str], list[float], list[float], list[Health], set[str]]:
    """One step's per-layer values placed on the run's rows: ``(layers, mean_abs, max_abs, health, no_gradient)``.

    A layer of ``rows`` without a value at this step gets ``nan`` and is listed in ``no_gradient``; a layer of this
    step missing from ``rows`` is added after them.

    Example:
        >>> ok, low = Health.OK, Health.VANISHING
        >>> layers, mean_abs, _, health, no_gradient = flow_rows(["fc1", "fc2", "fc3"], ["fc1", "fc3"], [0.1, 0.3],
        ...                                                      [1.0, 3.0], [ok, low])
        >>> layers, mean_abs, [str(h) for h in health], no_gradient
        (['fc1', 'fc2', 'fc3'], [0.1, nan, 0.3], ['ok', 'ok', 'vanishing'], {'fc2'})
    """
    at = {name: i for i, name in enumerate(layers)}
    known = set(rows)
    order = [*rows, *(name for name in layers if name not in known)]
    missing = {name for name in order if name not in at}

    def placed(values: Sequence[Any], absent: Any) -> list[Any]:
        return [values[at[name]] if name in at else absent for name in order]

    return order, placed(mean_abs, math.nan), placed(max_abs, math.nan), placed(health, Health.OK), missing


def _remarkable(decision: Decision, stats: StepStats, flags: Flags) -> bool:
    """Whether a step is charted wherever it falls.

    It alerts, is not finite, or is skipped or stops the run; an fp16 overflow the loss scaler skips by itself is not.
    """
    if decision.overflow:
        return False
    return bool(decision.alerts) or not stats.finite or flags.skip or flags.stop or flags.fail


def layer_health(stats: StepStats, decision: Decision) -> list[Health]:
    """Per layer: ``non-finite``, ``exploding`` (a large share of a spike step's norm), ``vanishing`` or ``ok``."""
    verdict = decision.verdict
    vanishing = set(verdict.vanishing_layers) if verdict is not None else set()
    big = LARGEST_SHARE * stats.total_norm**2 if verdict is not None and verdict.spike else math.inf
    out = []
    for name, norm, bad in zip(stats.layers, stats.grad_norm, stats.nonfinite_count):
        if bad:
            out.append(Health.NONFINITE)
        elif norm * norm >= big:
            out.append(Health.EXPLODING)
        else:
            out.append(Health.VANISHING if name in vanishing else Health.OK)
    return out


def point_to_record(loggers: Any, log_dir: str, record_dir: str) -> None:
    """Leave :data:`RECORD_ELSEWHERE` in every other logger's local directory, naming where the record goes.

    A CSV logger beside TensorBoard gets GradWatch's scalars but not ``gradwatch.json``: ``gradwatch check`` reads a
    ``metrics.csv`` without a record as a run killed before it wrote one, unless this says the record is elsewhere.
    ``log_dir`` is the run's directory, ``record_dir`` the record's (a second GradWatch's ``gradwatch-2`` in it):
    the logger writing to ``log_dir`` gets no pointer. Best effort: a directory that cannot be written is left as it is.
    """
    for logger in loggers or ():
        try:
            directory = getattr(logger, "log_dir", None)
        except Exception:  # a logger whose log_dir needs what it does not have
            continue
        if not isinstance(directory, str) or os.path.abspath(directory) == os.path.abspath(log_dir):
            continue
        try:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, names.RECORD_ELSEWHERE), "w", encoding="utf-8") as f:
                json.dump({"record": os.path.abspath(record_dir)}, f)
        except OSError:
            continue
