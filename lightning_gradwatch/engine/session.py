"""The engine of one GradWatch, framework-free: a fit's setup and teardown, the per-step pipeline, the state.

A training framework is adapted to it in a few lines: the Lightning callback (``callback.py``) reads the Trainer once
per fit into an :class:`~lightning_gradwatch.engine.environment.Environment`, hands each optimizer step to
:meth:`Session.step` with a :class:`~lightning_gradwatch.act.actor.Host` (how its processes agree on flags, how
training stops), and ends the fit with :meth:`Session.end`. A Fabric or plain PyTorch loop does the same from its
own objects.

One optimizer step (:meth:`Session.step`), per optimizer lane:

    measure (one transfer) -> judge (pure) -> record -> reduce flags (host) -> settle -> write -> act

Example:
    >>> import torch
    >>> from lightning_gradwatch.act.actor import LocalHost
    >>> from lightning_gradwatch.config import WatchConfig
    >>> model = torch.nn.Linear(4, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> session = Session(WatchConfig.from_arguments(on_nonfinite="skip", images=False))
    >>> _ = session.begin(Environment(log_every=1, hist_every=0))
    >>> model(torch.full((2, 4), float("nan"))).sum().backward()
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")  # kept in `caught` instead of printed
    ...     flags = session.step(LocalHost(), optimizer, model, step=0)
    >>> [a.kind for a in session.alerts], flags.skip, model.weight.grad is None  # alerted, the update dropped
    (['nonfinite'], True, True)
    >>> [type(w.message).__name__ for w in caught]  # and warned
    ['GradientWarning']
    >>> session.end("finished")
"""

from __future__ import annotations

import atexit
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import chain
from typing import Any

from torch import Tensor

from lightning_gradwatch.act.actor import Host, act
from lightning_gradwatch.alerts import GradientAlert, GradientAlertError
from lightning_gradwatch.config import WatchConfig
from lightning_gradwatch.engine.environment import (
    Environment,
    exempt_parameters,
    named_parameters,
    optimizer_class_name,
)
from lightning_gradwatch.engine.lane import Lane
from lightning_gradwatch.engine.ledger import RunLedger
from lightning_gradwatch.judge.decision import Decision, Flags, failure_of, stand_in
from lightning_gradwatch.kinds import Response, RunStatus
from lightning_gradwatch.report import RunSummary
from lightning_gradwatch.write.budget import OverheadBudget
from lightning_gradwatch.write.output import RunOutput
from lightning_gradwatch.write.progress import ProgressItems, warn
from lightning_gradwatch.write.sinks import Sink

__all__ = ["STATE_FORMAT_VERSION", "Fit", "Session", "saved_alerts"]

#: the version of :meth:`Session.state_dict`'s layout
STATE_FORMAT_VERSION = 1


@dataclass
class Fit:
    """What lives for one fit: released at its end, never pickled.

    ``stopped``: a ``"stop"`` response ended training here; ``held_from``: the step it did, when Lightning holds
    training on past it (``min_steps``, ``min_epochs``): every later step's update is dropped.
    """

    env: Environment
    output: RunOutput
    progress: ProgressItems
    stopped: bool = False
    held_from: int | None = None


class Session:
    """One GradWatch's engine: the optimizers' lanes, the run summary, the alerts, and each fit's output.

    Args:
        settings: the configuration.
    """

    def __init__(self, settings: WatchConfig) -> None:
        self.settings = settings
        self.alerts: list[GradientAlert] = []
        self.summary = RunSummary()
        self.lanes: dict[int, Lane] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self.ledger = RunLedger()
        self.fit: Fit | None = None

    # ------------------------------------------------------------------ a fit
    def begin(
        self,
        env: Environment,
        loggers: Any = (),
        namespace: str = "",
        log_name: str = "lightning_gradwatch",
        sinks: Iterable[Sink] = (),
        owner: Any = None,
    ) -> Fit:
        """A fit begins, with its output: a new run, or the next fit of the run it continues.

        A fit that writes to the directory of the previous fit (a second ``trainer.fit``) continues its run: the
        alerts, the detectors' history and the summary go on, and the report lists both fits. Any other fit starts
        fresh (a checkpoint may restore the state next), taking over an earlier ``gradwatch.json`` in its directory.

        Args:
            env: the fit's environment (every process calls this).
            loggers: where scalars, histograms, pictures and alert text go (rank 0 writes).
            namespace: for a second instance in one run: the subdirectory its output goes to.
            log_name: the logger its messages go to.
            sinks: more outputs beside the loggers' (a plain loop may have no logger at all).
            owner: the training loop (the Trainer): fits that write no report continue a run only under the same one.
        """
        s = self.settings
        directory = os.path.join(env.log_dir, namespace) if env.log_dir is not None and namespace else env.log_dir
        if not self.ledger.begin_fit(directory, owner, read_earlier=env.is_global_zero):
            # a new run; a fit that continues the run keeps its alerts, its detectors' history and its summary
            self.alerts, self.lanes, self._pending, self.summary = [], {}, {}, RunSummary()
        images = s.output.images and env.hist_every > 0
        budget = None
        if s.output.overhead_budget is not None and env.is_global_zero:
            explicit = s.schedule.histogram_every_n_steps is not None
            budget = OverheadBudget(s.output.overhead_budget, env.hist_every, explicit=explicit, pictures=images)
        output = RunOutput(
            env, loggers, self.summary, self.alerts, self.ledger, s.to_dict, images, namespace, budget, log_name, sinks
        )
        self.fit = Fit(env, output, ProgressItems())
        if len(self.ledger.fits) > 1:  # the report says "finished" for the earlier fits: not if this one is killed
            output.write_report(RunStatus.RUNNING)
        if env.is_global_zero:
            # a rank that dies under `ddp_spawn` never sees `on_exception` (the parent handles it): at least flush
            # the logs and write the report when its interpreter exits
            atexit.register(self._at_exit)
        return self.fit

    def retime(self, env: Environment) -> None:
        """Take the fit's schedule, chosen once its length is known (before its first step)."""
        if self.fit is not None and env is not self.fit.env:
            self.fit.env = env
            self.fit.output.retime(env.log_every, env.hist_every, env.log_widest, env.run_steps)

    def end(self, status: RunStatus | str, error: str | None = None, tuning: bool = False) -> None:
        """The fit ends (``status``: finished, interrupted, failed): last pictures, flushed logs, the report.

        ``tuning``: the fit was a learning-rate or batch-size search (Lightning's ``Tuner``), which trains nothing
        the run keeps: it is not listed among the run's fits (and a run of no other fit writes no report).
        """
        fit, self.fit = self.fit, None
        if fit is None:
            return
        atexit.unregister(self._at_exit)
        fit.progress.detach()
        self.ledger.end_fit(status, error)
        if tuning:
            self.ledger.drop_fit()
            last = self.ledger.fits[-1] if self.ledger.fits else {}
            if last.get("status") in {str(s) for s in RunStatus}:  # the report says how the run's last fit ended
                status, error = last["status"], last.get("error")
        fit.output.finish(RunStatus(status), error)

    def fail(self, exception: BaseException) -> None:
        """The fit ends with ``exception``: interrupted by Ctrl+C or SIGTERM (a ``SystemExit``), else failed."""
        interrupted = isinstance(exception, (KeyboardInterrupt, SystemExit))
        status = RunStatus.INTERRUPTED if interrupted else RunStatus.FAILED
        self.end(status, error=f"{type(exception).__name__}: {exception}")

    def _at_exit(self) -> None:
        """The process exits during a fit: failed, with the error the fit already failed with, if any.

        A ``"raise"`` in a spawned worker: its exception reaches the launching process, not this one's callbacks.
        """
        fit = self.ledger.fits[-1] if self.ledger.fits else {}
        error = fit.get("error") if fit.get("status") == str(RunStatus.FAILED) else None
        self.end(RunStatus.FAILED, error=error or "the process exited during training")

    # ------------------------------------------------------------------ the step
    def step(
        self,
        host: Host,
        optimizer: Any,
        module: Any,
        *,
        step: int,
        index: int = 0,
        count: int = 1,
        loss: Tensor | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> Flags:
        """Measure, judge, write and act on one optimizer step (its gradients final, before the optimizer steps).

        Args:
            host: the training loop: how its processes agree on flags, how it stops.
            optimizer: the optimizer about to step.
            module: the model that owns the optimizer's parameters (their names come from it).
            step: the global step (recorded in alerts and charts).
            index: the optimizer's index among the run's ``count`` optimizers.
            count: how many optimizers the run has.
            loss: this step's training loss (a one-element tensor, unscaled; under gradient accumulation the sum of
                the micro-batches' losses, each divided by their number), averaged over the processes and read in
                the step's one transfer.
            where: where the step's batch came from (``epoch``, ``batch_idx``), for the report's bad batches.

        Returns:
            The flags every process agreed on (no flag when the step was not judged): with ``skip`` or ``stop``,
            the step's gradients were dropped.
        """
        fit = self.fit
        if fit is None:
            return Flags()
        started = time.perf_counter()
        decision, flags = Decision(step), Flags()
        try:
            decision, flags = self._step(fit, host, optimizer, module, step, index, count, loss, where or {})
        finally:  # GradWatch's own time, for the overhead budget (not the end of a fit that fails at this step)
            if not fit.output.finished:
                fit.output.step_timed(started, time.perf_counter() - started, decision.histograms, decision.log)
        return flags

    def _step(
        self,
        fit: Fit,
        host: Host,
        optimizer: Any,
        module: Any,
        step: int,
        index: int,
        count: int,
        loss: Tensor | None,
        where: Mapping[str, Any],
    ) -> tuple[Decision, Flags]:
        """The pipeline of one step; returns the decision and the flags the processes agreed on."""
        fit.output.write_drawn()
        lane = self._lane(fit, index, count, optimizer, module)
        lane.hist_every = fit.output.histogram_every(lane)
        lane.log_every = fit.output.log_every(lane)
        loss = host.average(loss)  # every process's detector sees the same loss
        others = self._others(index) if count > 1 else None  # the rest of a game of several optimizers
        self.ledger.counts_at_start(self.summary.events)  # a record's first step: what a checkpoint brought
        decision = lane.decide(step, loss, count > 1, fit.output.writes, others, optimizer)  # measure, judge, record
        said = self.ledger.stepped(decision.step)
        if said is not None:
            fit.output.say(said)
        if decision.stats is None:
            fit.output.no_gradients(index, decision.step, len(lane.collector or ()))
        if decision.verdict is None:  # nothing measured, or an fp16 overflow the scaler skips by itself
            return decision, Flags()
        self.ledger.saw(decision.step)
        fit.progress.update(decision.stats.total_norm, decision.health)  # type: ignore[union-attr]
        fit.output.record(decision, lane.index)
        flags = self._agreed(host.reduce(decision.flags))
        self._record_others(fit, decision, flags, lane.index)
        held = fit.held_from is not None and decision.step > fit.held_from
        if held:  # a stop Lightning did not carry out: no update from then on
            flags = replace(flags, skip=True, stop=True)
        clip = lane.settle(decision, flags, note=not held, **where)
        fit.output.write_step(decision, lane, clip, flags)
        if flags.fail:
            error = f"{GradientAlertError.__name__}: {failure_of(decision, flags.alerted).message.splitlines()[0]}"
            self.ledger.end_fit(RunStatus.FAILED, error)
            fit.output.finish(RunStatus.FAILED, error=error)
        act(decision, flags, optimizer, host, lane.collector)
        if flags.stop and not fit.stopped:
            self._stopped(fit, host, decision.step)
        return decision, flags

    def _stopped(self, fit: Fit, host: Host, step: int) -> None:
        """A ``"stop"`` response ended training at ``step``: recorded, and held to where the loop around holds it."""
        fit.stopped = True
        self.ledger.stopped(step)
        holding = host.held()
        if holding:
            fit.held_from = step
            if fit.output.is_global_zero:
                warn(
                    f"Lightning does not stop training before {holding} (trainer.should_stop waits until then):"
                    f" GradWatch drops the update of every step after step {step} (each counted as skipped), so the"
                    " weights stay as they were before it."
                )

    def _agreed(self, flags: Flags) -> Flags:
        """The reduced flags, the kinds alerted ordered with those whose response is ``"raise"`` first.

        A process that raises for another's alert raises a stand-in of the kind configured to raise.
        """
        if not flags.fail:
            return flags
        respond = self.settings.responses.response
        raising = tuple(kind for kind in flags.alerted if respond(kind) == Response.RAISE)
        return replace(flags, alerted=raising + tuple(kind for kind in flags.alerted if kind not in raising))

    def _record_others(self, fit: Fit, decision: Decision, flags: Flags, optimizer: int) -> None:
        """Record the kinds another process alerted at this step that this run has no alert of (a stand-in each).

        Each process judges its own gradients: in a loop that does not average them across processes, one process
        may alert alone, and the record global rank 0 writes would lack it (``gradwatch check`` passed a run stopped
        for it).
        """
        known = {a.get("kind") for a in self.ledger.alerts} | {a.kind for a, _ in decision.alerts}  # this record's
        missing = [kind for kind in flags.alerted if kind not in known]
        if missing:
            alerts = tuple((stand_in(kind, decision.step, optimizer), Response.WARN) for kind in missing)
            fit.output.record(replace(decision, alerts=alerts, notices=()), optimizer)

    def _others(self, index: int) -> float | None:
        """The sum of the other optimizers' latest losses (``None`` when none is known): the rest of the game."""
        known = [lane.loss for i, lane in self.lanes.items() if i != index and lane.loss is not None]
        return sum(known) if known else None

    def _lane(self, fit: Fit, index: int, count: int, optimizer: Any, module: Any) -> Lane:
        """This optimizer's lane, watching the optimizer's current parameters under their cleaned names."""
        lane = self.lanes.get(index)
        if lane is None:
            name = optimizer_class_name(optimizer)
            lane = self.lanes[index] = Lane(self.settings, index, count, fit.env, self.summary, name)
            lane.restore(self._pending)
        identity = tuple(map(id, chain.from_iterable(g["params"] for g in optimizer.param_groups)))
        if lane.needs_parameters(identity):
            named = named_parameters(module, optimizer, index)
            exempt = exempt_parameters(module, self.settings.measure.granularity)
            if lane.watch(named, exempt, fit.env.plain_group, identity):
                fit.output.layers_merged(lane.index, *lane.merge(), self.settings.measure.max_layers)
            self.summary.place(self._in_module_order(module))
        return lane

    def _in_module_order(self, module: Any) -> list[str]:
        """Every optimizer's layers by their first parameter's place in ``module``.

        Interleaved as the model's, whichever optimizer steps first (a GAN's discriminator); layers of parameters
        not in it keep their order.
        """
        place = {id(p): i for i, p in enumerate(module.parameters())} if hasattr(module, "parameters") else {}
        first: dict[str, float] = {}
        for lane in self.lanes.values():
            stats = lane.collector
            if stats is None:
                continue
            for param, layer in zip(stats.params, stats.layer_of):
                name = stats.layer_names[layer]
                first[name] = min(first.get(name, math.inf), place.get(id(param), math.inf))
        return sorted(first, key=first.__getitem__)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The lanes' detectors, adaptive thresholds and step counts, the run summary and the alerts."""
        lanes = self.lanes.items()
        return {
            "format_version": STATE_FORMAT_VERSION,
            "detectors": {str(k): lane.judge.detector.state_dict() for k, lane in lanes},
            "clippers": {
                str(k): lane.judge.clipper.state_dict() for k, lane in lanes if self.settings.clipping.adaptive
            },
            "ticks": {str(k): lane.ticks for k, lane in lanes},
            "summary": self.summary.state_dict(),
            "alerts": [a.to_dict() for a in self.alerts],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (lanes not built yet take theirs when their optimizer first steps)."""
        self._pending = {part: dict(state.get(part, {})) for part in ("detectors", "clippers", "ticks")}
        for lane in self.lanes.values():
            lane.restore(self._pending)
        self.summary.load_state_dict(state.get("summary", {}))  # in place: the fit's output holds both
        self.alerts[:] = saved_alerts(state)
        self.ledger.carry(self.alerts)  # those this run did not record belong to the run they happened in

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["fit"] = None  # loggers, event writers and parameters belong to one fit
        return state


def saved_alerts(state: Mapping[str, Any]) -> list[GradientAlert]:
    """The alerts a :meth:`Session.state_dict` holds, in step order."""
    return [GradientAlert.from_dict(a) for a in state.get("alerts", [])]
