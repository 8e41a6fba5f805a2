"""The optimizer's learning rates at its last steps: whether they were raised (the detector's new-data test)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning_gradwatch.judge.state import Stateful, state

__all__ = ["RAISED", "RATE_WINDOW", "LearningRates"]

#: a learning rate more than this many times its lowest of the :data:`RATE_WINDOW` steps before was raised: the
#: optimizer's own steps grew, so a loss that jumps then may be the training's doing, not the data's
RAISED = 1.5
RATE_WINDOW = 10


def _as_rows(value: Any = ()) -> list[list[float]]:
    return [[float(r) for r in row] for row in value]


@dataclass(eq=False)
class LearningRates(Stateful):
    """The learning rate of each parameter group at the optimizer's last steps; none told: not known.

    Example:
        >>> rates = LearningRates()
        >>> for step in range(12):
        ...     rates.observe((1e-3,))
        >>> rates.steady()
        True
        >>> rates.observe((1e-1,))  # raised 100x
        >>> rates.steady()
        False
    """

    rate_rows: list[list[float]] = state(load=_as_rows, factory=list)  # the last RATE_WINDOW + 2 steps'

    def observe(self, rates: Sequence[float] | None) -> None:
        """Take this step's learning rates (``None``: not known; what was told before is forgotten)."""
        if rates is None:
            self.rate_rows = []
            return
        self.rate_rows = [*self.rate_rows, [float(r) for r in rates]][-(RATE_WINDOW + 2) :]

    def steady(self) -> bool:
        """Whether no rate of this step or the step before is :data:`RAISED` times its lowest of the steps before.

        Its lowest over the :data:`RATE_WINDOW` steps before those two. Not known (fewer steps told, parameter
        groups added or removed among them, a rate that is not finite): not steady.
        """
        rows = self.rate_rows
        if len(rows) < RATE_WINDOW + 2 or len({len(row) for row in rows}) != 1:
            return False
        for group in zip(*rows):
            if not all(math.isfinite(r) for r in group) or max(group[-2:]) > RAISED * min(group[:-2]):
                return False
        return True
