"""One optimizer's lane through the engine: measure (one transfer), judge (pure), count.

A :class:`Lane` owns one optimizer's statistics collector, its :class:`~lightning_gradwatch.judge.decision.StepJudge`
and its schedule (a step count of its own, for several optimizers). :meth:`Lane.decide` measures the step, hands
the floats to the judge, and counts the result in the run summary; after the processes agreed on the flags,
:meth:`Lane.settle` counts what they made of it.

Example:
    >>> import torch
    >>> from lightning_gradwatch.config import WatchConfig
    >>> model = torch.nn.Linear(4, 1)
    >>> lane = Lane(WatchConfig.from_arguments(on_nonfinite="skip"))
    >>> lane.watch(model.named_parameters(), exempt=set())
    False
    >>> model.weight.grad = torch.full((1, 4), float("nan"))
    >>> model.bias.grad = torch.zeros(1)
    >>> decision = lane.decide(step=0)
    >>> decision.flags.skip, [a.kind for a, _ in decision.alerts], lane.summary.events
    (True, ['nonfinite'], {'nonfinite_steps': 1})
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from lightning_gradwatch import _names as names
from lightning_gradwatch.config import WatchConfig
from lightning_gradwatch.engine.environment import Environment, scale_of
from lightning_gradwatch.engine.step_rates import StepRates, learning_rates
from lightning_gradwatch.judge.context import Verdict
from lightning_gradwatch.judge.decision import Decision, Flags, StepJudge
from lightning_gradwatch.measure.layers import layer_name
from lightning_gradwatch.measure.stats import GradientStats
from lightning_gradwatch.report import RunSummary
from lightning_gradwatch.write.progress import warn

__all__ = ["Lane"]

_HALF = (torch.float16, torch.bfloat16)


class Lane:
    """Measures, judges and counts the steps of one optimizer.

    Args:
        settings: the configuration.
        index: the optimizer's index (recorded in alerts).
        count: how many optimizers the run has (with more than one, its run-level tags and summary are its own).
        environment: ranks, schedule, loss scaler and model traits of the fit.
        summary: the run summary to update (shared by the lanes of one run).
        optimizer: the optimizer's class name (``"AdamW"``), for the remedy hints.
    """

    def __init__(
        self,
        settings: WatchConfig,
        index: int = 0,
        count: int = 1,
        environment: Environment | None = None,
        summary: RunSummary | None = None,
        optimizer: str = "",
    ) -> None:
        self.settings = settings
        self.index = index
        self.suffix = names.optimizer_suffix(index) if count > 1 else ""  # of its run-level tags
        self.key = names.optimizer_key(index) if count > 1 else ""  # of its total norm in the summary
        self.env = environment or Environment(log_every=1, hist_every=0)
        self.summary = summary if summary is not None else RunSummary()
        self.judge = StepJudge(settings, index, replace(self.env.traits, optimizer=optimizer))
        self.collector: GradientStats | None = None
        self._rates: StepRates | None = None  # its layers' SGD rates, for the adaptive threshold's step-size cap
        self.ticks = 0  # steps this optimizer took: its own cadence under manual optimization
        self.loss: float | None = None  # the latest finite loss of this optimizer's steps (its player's, in a game)
        self.hist_every = self.env.hist_every  # histogram interval in force (an overhead budget may widen it)
        self.log_every = self.env.log_every  # scalar interval in force (likewise)
        self.interval_max = 0.0
        self.judge_error: str | None = None  # the detector's own failure, once (its steps are then only measured)
        self._watched: tuple[int, ...] = ()
        self._scale = None if self.env.scaler is None else partial(scale_of, self.env.scaler)

    # ------------------------------------------------------------------ parameters
    def needs_parameters(self, identity: tuple[int, ...]) -> bool:
        """Whether the watched parameters must be (re)read: first step, or the optimizer holds other parameters.

        ``identity`` is the optimizer's parameters' ids in order: a parameter group swapped for another of the same
        size (adapters exchanged mid-run) is a change, as much as an added group.
        """
        return self.collector is None or identity != self._watched

    def watch(
        self,
        named_parameters: Iterable[tuple[str, Tensor]],
        exempt: set[int],
        plain_group: Any = None,
        identity: tuple[int, ...] = (),
    ) -> bool:
        """Watch these parameters (names already cleaned); ``exempt``: ids of parameters exempt from vanishing.

        ``identity`` is what :meth:`needs_parameters` compares the optimizer's parameters with next.

        Returns:
            Whether this first watch had to merge layers to respect ``max_layers`` (say so once).
        """
        s = self.settings.measure
        named = list(named_parameters)
        first = self.collector is None
        self._watched = identity
        self.collector = GradientStats(
            named,
            granularity=s.granularity,
            include=s.include,
            exclude=s.exclude,
            histogram_bins=s.histogram_bins,
            histogram_sample_size=s.histogram_sample_size,
            max_layers=s.max_layers,
            plain_group=plain_group,
        )
        c = self.collector
        self._rates = StepRates(c.params, c.layer_of, c.layer_names, c.param_names)
        self.judge.detector.exempt_layers = self.collector.layers_made_of(exempt)
        self.judge.half_weights = any(p.dtype in _HALF for p in self.collector.params)
        return first and self.collector.aggregated is not None

    def merge(self) -> tuple[int, int, str]:
        """How layers were merged to respect ``max_layers``: ``(modules, layers, how)``."""
        assert self.collector is not None
        assert self.collector.aggregated is not None
        granularity = self.settings.measure.granularity
        modules = len({layer_name(n, granularity) for n in self.collector.param_names})
        return modules, len(self.collector.layer_names), self.collector.aggregated

    @property
    def sharded(self) -> bool:
        """Whether its statistics are collectives (sharded gradients: every process measures the same steps)."""
        return self.collector is not None and self.collector.sharded

    def spike_threshold(self) -> float:
        """The total norm above which its next step is a spike."""
        return self.judge.detector.spike_threshold()

    # ------------------------------------------------------------------ the step
    def decide(
        self,
        step: int,
        loss: Tensor | None = None,
        own_cadence: bool = False,
        measure_all: bool = True,
        others: float | None = None,
        optimizer: Any = None,
    ) -> Decision:
        """Measure this step's gradients, judge them, and count the decision in the run summary.

        Args:
            step: the trainer's global step (recorded in alerts and charts).
            loss: this step's training loss (a one-element tensor), read in the step's one transfer.
            own_cadence: count the schedule in this optimizer's own steps (several optimizers), not ``step``.
            measure_all: measure what the log and histogram steps write (False on processes that do not write,
                unless the statistics are collectives).
            others: with several optimizers, the sum of the other optimizers' latest losses (``None``: none known).
                The detector judges the *game's* loss, this step's plus theirs: one player's loss rises by design
                as its opponent learns (a GAN's generator against its discriminator), the sum does not.
            optimizer: the optimizer about to step: under ``clip="adaptive"``, an SGD optimizer's learning rates
                and the weights' norm (measured in the same transfer) cap the step's size.
        """
        assert self.collector is not None, "call watch() first"
        log, hist = self._due(step, own_cadence)
        measure_all = measure_all or self.collector.sharded  # sharded statistics are collectives
        rates = self._step_rates(optimizer)
        stats = self.collector.collect(
            extended=(log or hist) and measure_all,
            histograms=hist and measure_all,
            extra=() if loss is None else (loss,),
            weights=rates is not None,
        )
        if stats is None:
            return Decision(step)
        step_loss = self._judged_loss(stats.extra[0] if stats.extra else None, own_cadence, others)
        decision = self._judge(step, stats, step_loss, (log, hist), own_cadence, rates, learning_rates(optimizer))
        self.record(decision)
        return decision

    def _judge(
        self,
        step: int,
        stats: Any,
        loss: float | None,
        due: tuple[bool, bool],
        several: bool,
        rates: Any,
        lrs: tuple[float, ...] | None = None,
    ) -> Decision:
        """The judge's decision on a measured step; a fault of GradWatch's own never ends the training it watches.

        An exception inside the judge is warned once; from then on the lane's steps are measured and charted, not
        judged: an empty verdict, so every process still takes the same path (the step's flag reduction).
        """
        log, hist = due
        if self.judge_error is None:
            init_norm = 0.0 if rates is None or self._rates is None else self._rates.init_norm()
            try:
                return self.judge.judge(
                    step,
                    stats,
                    loss,
                    self._scale,
                    log,
                    hist,
                    several=several,
                    rates=rates,
                    init_norm=init_norm,
                    learning_rates=lrs,
                )
            except Exception as err:
                frame = traceback.extract_tb(err.__traceback__)[-1]
                self.judge_error = f"{type(err).__name__}: {err}, at {frame.filename}:{frame.lineno}"
                warn(
                    f"GradWatch's detector failed at step {step} ({self.judge_error}); it judges no more steps of"
                    " this run (no alerts, responses or clipping from here on), while training and its charts go on."
                    " This is a GradWatch bug: please report it with this message."
                )
        return Decision(step, stats, Verdict(), log=log, histograms=hist)

    def _step_rates(self, optimizer: Any) -> float | Mapping[str, float] | None:
        """The SGD rates the adaptive threshold's step-size cap reads (``None``: no cap, nothing more to measure)."""
        clipping = self.settings.clipping
        if optimizer is None or self._rates is None or not clipping.adaptive or clipping.clip_step_ratio is None:
            return None
        return self._rates(optimizer)

    def _judged_loss(self, loss: float | None, several: bool, others: float | None) -> float | None:
        """Keep this optimizer's latest finite loss; the loss its step is judged on (with several, the game's)."""
        if loss is None or not math.isfinite(loss):
            return loss
        self.loss = loss
        return loss + others if several and others is not None else loss

    def _due(self, step: int, own_cadence: bool) -> tuple[bool, bool]:
        """Count this optimizer's step; whether scalars and histograms are due at it."""
        cadence = self.ticks if own_cadence else step
        self.ticks += 1
        return cadence % self.log_every == 0, self.hist_every > 0 and cadence % self.hist_every == 0

    def record(self, decision: Decision) -> None:
        """Count a judged step in the run summary: fp16 overflows, the step's norms, spikes, the interval maximum."""
        stats = decision.stats
        if decision.scaled_nonfinite:
            self.summary.count(names.AMP_OVERFLOW_STEPS)
        if stats is None or decision.verdict is None:
            return
        self.summary.add_step(decision.step, stats, key=self.key, logged=decision.log)
        if stats.finite:
            self.interval_max = max(self.interval_max, stats.total_norm)
        if decision.verdict.spike:
            self.summary.count(names.SPIKE_STEPS)

    def settle(self, decision: Decision, flags: Flags, note: bool = True, **where: Any) -> tuple[float, float] | None:
        """Count what the (reduced) ``flags`` make of the decision; returns the clip applied, if any.

        A step that is skipped, clipped as a spike or alerted is noted in the summary with ``where`` its batch came
        from (``epoch``, ``batch_idx``), unless ``note`` is false (a step a held stop skips: its batch is clean).
        """
        skipped = flags.skip or flags.stop
        clip = None if skipped else decision.clip(flags)
        clipped = clip is not None and decision.stats is not None and clip[1] < decision.stats.total_norm
        if skipped:
            self.summary.count(names.SKIPPED_STEPS)
        if clipped:
            self.summary.count(names.CLIPPED_STEPS)
        self.judge.detector.observe_held(skipped or clipped)  # as every process agreed: the next step reads it
        reasons = self._reasons(decision, skipped, clipped)
        if reasons and note:
            self.summary.note_batch(decision.step, reasons, optimizer=self.index, **where)
        return clip

    def _reasons(self, decision: Decision, skipped: bool, clipped: bool) -> list[str]:
        """Why the report notes this step's batch: skipped, clipped as a spike, alerted (none: not noted).

        A spike (the exploding detector's) that clipping scaled down is noted whatever clipped it: ``on_exploding=
        "clip"``, ``clip="adaptive"`` scaling an outlier batch down, or a fixed ``clip``.
        """
        spike = clipped and decision.verdict is not None and decision.verdict.spike
        return ["skipped"] * skipped + ["clipped spike"] * spike + ["alert"] * bool(decision.alerts)

    def take_interval_max(self, default: float) -> float:
        """The largest finite total norm since the last call (``default`` when there was none)."""
        value, self.interval_max = self.interval_max, 0.0
        return value if value > 0 else default

    # ------------------------------------------------------------------ state
    def restore(self, pending: dict[str, dict[str, Any]]) -> None:
        """Take this optimizer's part of a checkpoint's ``{"detectors"|"clippers"|"ticks": {index: state}}``."""
        key = str(self.index)
        detector = pending.get("detectors", {}).pop(key, None)
        if detector is not None:
            self.judge.detector.load_state_dict(detector)
        clipper = pending.get("clippers", {}).pop(key, None)
        if clipper is not None:
            self.judge.clipper.load_state_dict(clipper)
        self.ticks = int(pending.get("ticks", {}).pop(key, self.ticks))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["collector"] = None  # parameters belong to one fit
        state["_watched"] = ()
        return state
