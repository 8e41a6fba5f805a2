"""The actor: the one place that changes the training run.

It carries out a decision under the flags every process agreed on: drops the step's gradients (skip or stop:
optimizers leave parameters without a gradient untouched, state included), or scales them to the clip threshold
(:mod:`~lightning_gradwatch.act.scaling`; a step below its threshold is not touched at all), asks the training loop
to stop, or raises.

The training loop is seen through a :class:`Host`: how the processes agree on flags, and how training is stopped.
:class:`LocalHost` is one process's (a plain loop's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from lightning_gradwatch.act.scaling import GradientSource, drop_gradients_, scale_gradients_
from lightning_gradwatch.alerts import ALERT_KINDS, GradientAlertError
from lightning_gradwatch.judge.clipping import clip_coefficient
from lightning_gradwatch.judge.decision import Decision, Flags, failure_of

__all__ = ["Host", "LocalHost", "act", "agree", "averaged"]


class Host(Protocol):
    """What the engine needs of the training loop around it."""

    def reduce(self, flags: Flags) -> Flags:
        """The flags every process agrees on: a flag raised on any process holds on all of them."""
        ...

    def average(self, loss: Tensor | None) -> Tensor | None:
        """The step's training loss averaged over the processes, so every process's detector sees the same one.

        Every process calls it at each step (with ``None`` when it has no loss: the average is then NaN, and no
        process judges the step by its loss).
        """
        ...

    def stop(self) -> None:
        """End training after this step."""
        ...

    def held(self) -> str:
        """What holds training on past a stop (Lightning's ``min_steps``), or ``""``."""
        ...


class LocalHost:
    """One process, no framework: flags hold as they are, and a stop is remembered in :attr:`stopped`.

    Example:
        >>> host = LocalHost()
        >>> host.reduce(Flags(skip=True)), host.stopped
        (Flags(skip=True, stop=False, fail=False), False)
    """

    def __init__(self) -> None:
        self.stopped = False

    def reduce(self, flags: Flags) -> Flags:
        """The flags themselves."""
        return flags

    def average(self, loss: Tensor | None) -> Tensor | None:
        """The loss itself."""
        return loss

    def stop(self) -> None:
        """Remember that training should stop."""
        self.stopped = True

    def held(self) -> str:
        """Nothing holds a loop on past a stop: it reads :attr:`stopped` (or ``loop.step``'s answer) itself."""
        return ""


def agree(flags: Flags, sum_over_processes: Callable[[Tensor], Tensor], device: Any = "cpu") -> Flags:
    """The flags every process agrees on: a flag raised on any process holds on all of them.

    Args:
        flags: this process's flags.
        sum_over_processes: sums a tensor over the processes (an all-reduce); every process calls it once.
        device: where the collective wants its tensor (the process group's device).

    Example:
        >>> agree(Flags(stop=True), lambda t: t * 2)  # two processes, both saying stop
        Flags(skip=False, stop=True, fail=False)
    """
    said = [float(flags.skip), float(flags.stop), float(flags.fail), *(float(k in flags.alerted) for k in ALERT_KINDS)]
    summed = [v > 0 for v in sum_over_processes(torch.tensor(said, device=device)).tolist()]
    alerted = tuple(sorted(k for k, on in zip(ALERT_KINDS, summed[3:]) if on))
    return Flags(summed[0], summed[1], summed[2], alerted)


def averaged(loss: Tensor | None, mean_over_processes: Callable[[Tensor], Tensor], device: Any = "cpu") -> Tensor:
    """The mean of the processes' losses (one collective of one number; a process without a loss gives NaN).

    Args:
        loss: this process's loss (a one-element tensor), or ``None``.
        mean_over_processes: averages a tensor over the processes (an all-reduce); every process calls it once.
        device: where the collective wants its tensor (the process group's device).

    Example:
        >>> averaged(torch.tensor(3.0), lambda t: (t + 1.0) / 2)  # two processes: 3.0 here, 1.0 there
        tensor(2.)
    """
    value = torch.full((), math.nan) if loss is None else loss.detach().reshape(())
    return mean_over_processes(value.to(device=device, dtype=torch.float32, copy=True))  # collectives work in place


def act(
    decision: Decision,
    flags: Flags,
    optimizer: Any,
    host: Host | None = None,
    source: GradientSource | None = None,
) -> Flags:
    """Carry out a decision under the (reduced) ``flags``.

    Drops the step's gradients (skip or stop), or scales the gradients of ``source`` (the measured parameters) to
    the clip threshold; asks the ``host`` to stop on stop; raises :class:`GradientAlertError` on raise, with this
    process's alert or, when another process raised, a stand-in.

    Returns:
        ``flags``, for chaining.
    """
    if flags.skip or flags.stop:
        drop_gradients_(optimizer)
    else:
        clip = decision.clip(flags)
        if clip is not None and decision.stats is not None:
            coefficient = clip_coefficient(decision.stats.total_norm, clip[0])
            if coefficient < 1.0 and source is not None:
                scale_gradients_(source.params, coefficient, source.gradient_groups())
    if flags.stop and host is not None:
        host.stop()
    if flags.fail:
        raise GradientAlertError(failure_of(decision, flags.alerted))
    return flags
