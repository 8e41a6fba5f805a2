"""How far the gradient reaches back: the gap between the largest layer and the deepest layer before it, per step.

Gradients vanish on their way back from the loss, so the layers they starve come before the layers that have them
(in the model's order). The *gap* of a step is how many decades the deepest of the layers before the largest lies
below it (exempt layers and layers with a zero gradient left out; 0 when there is none). A gap that *closes* (its
median over the last :data:`GAP_WINDOW` steps :data:`CLOSING` decades or more below its median over the
:data:`GAP_WINDOW` steps :data:`CLOSING_STEPS` before) is the gradient reaching the first layers: a deep stack
learning its way out, its loss following. Under an optimizer that sizes each parameter's step by its own gradients
(Adam and its kin) a layer decades below the largest steps as far as the largest, and that is how such a stack learns:
its weights grow until the gradient reaches its first layers (a plain ReLU stack of 14 layers at PyTorch's default
initialisation under Adam: 4.5 decades at first, 3 by step 40, 1 by step 60, its loss leaving chance at 40-80).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lightning_gradwatch.history import Window, median
from lightning_gradwatch.judge.state import Stateful, state

if TYPE_CHECKING:  # annotations only: detection is plain Python and imports no torch
    from lightning_gradwatch.measure.records import StepStats

__all__ = ["CLOSING", "CLOSING_STEPS", "GAP_WINDOW", "LayerGap", "largest_at"]

#: the gap is a median over this many steps
GAP_WINDOW = 10
#: a gap this many decades smaller than it was :data:`CLOSING_STEPS` steps before is closing ...
CLOSING = 0.1
#: ... over this many steps
CLOSING_STEPS = 40


def largest_at(stats: StepStats) -> int:
    """The index of the layer with the largest gradient norm this step (-1 with no layer)."""
    return max(range(len(stats.grad_norm)), key=stats.grad_norm.__getitem__, default=-1)


def _gap_window(values: Any = ()) -> Window:
    return Window(CLOSING_STEPS + GAP_WINDOW, (float(v) for v in values))


@dataclass(eq=False)
class LayerGap(Stateful):
    """Each step's gap, over the last :data:`CLOSING_STEPS` + :data:`GAP_WINDOW` steps, and whether it closes.

    ``depths`` holds this step's decades below the largest layer, per layer (exempt layers and zero gradients left
    out): the stall keeps them, layer by layer, from here.

    Example:
        >>> from lightning_gradwatch.measure.records import StepStats
        >>> gap = LayerGap()
        >>> for step in range(50):  # the first layer 4.5 decades below the last, then closing 0.03 decade a step
        ...     first = 10 ** (-4.5 + 0.03 * step)
        ...     gap.observe(StepStats(("a", "b"), (first, 1.0), 1.0, (10, 10), (0, 0)), frozenset())
        >>> gap.closing()
        True
    """

    gaps: Window = state(load=_gap_window, factory=_gap_window)

    def __post_init__(self) -> None:
        self.depths: dict[str, float] = {}  # this step's: each layer's decades below the largest (the stall's too)

    def observe(self, stats: StepStats, exempt: frozenset[str]) -> None:
        """Take one finite step's layer norms (a step with every gradient zero starts the history again)."""
        top = max(stats.grad_norm, default=0.0)
        if top <= 0.0:
            self.depths = {}
            self.gaps.clear()
            return
        self.depths = {
            n: math.log10(top / g) for n, g in zip(stats.layers, stats.grad_norm) if g > 0 and n not in exempt
        }
        before = stats.layers[: largest_at(stats)]
        self.gaps.append(max((self.depths[n] for n in before if n in self.depths), default=0.0))

    def closing(self) -> bool | None:
        """Whether the gap closes (``None``: fewer steps seen than the comparison needs)."""
        gaps = list(self.gaps)
        if len(gaps) < CLOSING_STEPS + GAP_WINDOW:
            return None
        return median(gaps[:GAP_WINDOW]) - median(gaps[-GAP_WINDOW:]) >= CLOSING
