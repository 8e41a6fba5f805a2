"""New data: a loss that jumps at once under an ordinary step moves where training started.

The exploding rules compare the loss with where training started (the highest of its first losses). A fit that
starts from a trained model has first losses near zero, and new data (new classes, a task switched, targets
rescaled) lifts its loss far past them, at once. Nothing the optimizer did can lift a loss that far in one ordinary
step: when the loss is ``exploding_climb_factor`` (10) times every one of the 6 losses before it and where training
started, after a step whose norm was no spike, under learning rates that were not raised, with a
norm short of 100x beyond every ordinary norm, the batch changed, not the weights. Where training started moves to
the new data's first losses, and stays there only while it stays new data: every loss of the next
:data:`~lightning_gradwatch.judge.context.LOSS_WINDOW` steps at that floor or above (an outlier batch, or the damage
its update did, leaves batches at or below where training started), then said once (a notice, no alert), and within
:data:`NEW_DATA_STEPS` losses below :data:`NEW_DATA_LEARNT` of the new start (a run a blow-up threw off stays up);
otherwise it is put back, and the rules judge the run as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_gradwatch.judge.context import LOSS_WINDOW, ORDERS_OF_MAGNITUDE, Context, LossTrack
from lightning_gradwatch.judge.rule import times
from lightning_gradwatch.judge.state import Stateful, as_optional_float, as_optional_int, state

__all__ = ["NEW_DATA_LEARNT", "NEW_DATA_STEPS", "NewData", "jump_floor"]

#: new data is learnt: within this many losses of its jump, the loss (median of the last 5) comes below ...
NEW_DATA_STEPS = 50
#: ... this share of where the new data started (a run a blow-up threw off stays up: it was no new data)
NEW_DATA_LEARNT = 0.5


def jump_floor(losses: LossTrack, factor: float) -> float | None:
    """``factor`` times where the loss was, when its latest value is that far up at once (``None``: it is not).

    Where it was: the highest of the :data:`LOSS_WINDOW` + 1 losses before it, and where training started (the
    highest first loss). The jump is this step's, from a loss that was calm, not the last of a climb nor one more
    swing of a loss that jumps about.
    """
    values = list(losses.rise_losses)
    high = losses.start_high
    if len(values) < LOSS_WINDOW + 2 or high is None or high <= 0.0:
        return None
    before = values[-(LOSS_WINDOW + 2) : -1]
    floor = factor * max(*before, high)
    return floor if min(before) > 0.0 and values[-1] >= floor else None


@dataclass(eq=False)
class NewData(Stateful):
    """New data being confirmed and learnt: where training started was, and what the notice says.

    ``new_data_seen`` is ``None`` unless new data is being confirmed or learnt.
    """

    new_data_seen: int | None = state(None, load=as_optional_int)  # losses seen at its jump, the jump's included
    new_data_floor: float | None = state(None, load=as_optional_float)  # while confirmed: every loss at it or above
    old_high: float | None = state(None, load=as_optional_float)  # where training started before it ...
    old_from: int = state(0, load=int)  # ... and the losses seen before that start
    new_data_step: int | None = state(None, load=as_optional_int)  # for the notice: its step, where the loss was,
    new_data_before: float | None = state(None, load=as_optional_float)  # ... and where it jumped to
    new_data_loss: float | None = state(None, load=as_optional_float)

    def __post_init__(self) -> None:
        self.confirmed = False  # confirmed at this step: the notice is due

    def judge(self, ctx: Context, step: int, x: float | None, spiked: bool) -> str | None:
        """Follow new data, and find it at this step; the notice when it is confirmed now (``None``: no notice).

        ``x``: this step's log10 chained norm; ``spiked``: the step before was a spike (no ordinary step).
        """
        factor = ctx.config.exploding_climb_factor
        if self.new_data_seen is not None and ctx.episode.exploding_episode:
            self.put_back(ctx.losses)  # the rules found an explosion since: it was no new data
        self.follow(ctx.losses)
        ceiling = ctx.norms.ceiling
        ordinary = not spiked and ctx.norms.warm and x is not None and ceiling is not None
        if ordinary and x <= ceiling + math.log10(ORDERS_OF_MAGNITUDE) and ctx.rates.steady():
            self.restart(ctx.losses, step, factor)
        return self.notice(factor) if self.confirmed else None

    def restart(self, losses: LossTrack, step: int, factor: float) -> bool:
        """Move where training started to the latest loss, if it jumped at once (:func:`jump_floor`)."""
        floor = None if self.new_data_seen is not None else jump_floor(losses, factor)
        if floor is None:
            return False
        latest = list(losses.rise_losses)[-1]
        self.new_data_seen, self.new_data_floor = losses.losses_seen, floor
        self.old_high, self.old_from = losses.first_high, losses.first_from
        self.new_data_step, self.new_data_before, self.new_data_loss = step, floor / factor, latest
        losses.move_start(latest, losses.losses_seen - 1)
        return True

    def follow(self, losses: LossTrack) -> None:
        """Judge the latest loss after the jump: it keeps it new data, confirms it (:attr:`confirmed`), or not."""
        self.confirmed = False
        if self.new_data_seen is None or not len(losses.rise_losses):
            return
        since = losses.losses_seen - self.new_data_seen  # losses after the jump's, this one included
        if self.new_data_floor is not None:  # every loss of the first LOSS_WINDOW stays up
            if list(losses.rise_losses)[-1] < self.new_data_floor:
                self.put_back(losses)
            elif since >= LOSS_WINDOW:
                self.new_data_floor, self.confirmed = None, True
            return
        level, start = losses.level, losses.first_high  # ... and the new data is learnt within NEW_DATA_STEPS
        if level is not None and start is not None and level < NEW_DATA_LEARNT * start:
            self.reset()
        elif since >= NEW_DATA_STEPS:
            self.put_back(losses)

    def put_back(self, losses: LossTrack) -> None:
        """It was no new data: where training started is where it was."""
        losses.move_start(self.old_high, self.old_from)
        self.reset()

    def notice(self, factor: float) -> str:
        """What is said once the new data is confirmed."""
        before, loss = self.new_data_before or 0.0, self.new_data_loss or 0.0
        return (
            f"New data at step {self.new_data_step}: the training loss jumped at once to {loss:.4g},"
            f" {times(loss, before):.3g}x the highest of the 6 losses before it and of the fit's first ones"
            f" ({before:.4g}), after an ordinary step, under learning rates that were not raised, and the loss of every"
            f" batch since stayed {factor:g}x above that: the data changed (a task"
            " switched, classes added, targets rescaled, a new source), not the weights. The run is judged from"
            " here against the new data's loss. If the data was not meant to change, check the data pipeline"
            " (gradwatch check --fail-on vanishing,exploding,nonfinite,new_data fails on this notice)."
        )
