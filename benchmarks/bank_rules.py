"""The detectors the bank scores: the package as it is, an older copy of it, and variants of its constants.

A *candidate* is a detector factory (detection constants in, a maker of fresh detectors out), the constants it is
shown with, the loss it is told (the previous batch's, as GradWatch told it before, or the step's own), and a small
grid of constants for the leave-one-family-out table (the first value of each is the default).

- ``defaults``: the package's detector with GradWatch's defaults, told the loss GradWatch tells it (the step's own).
- ``before``: the package as it was before the rules of issue 23 (``--old``: a directory holding an older
  ``lightning_gradwatch``, or a git ref to take it from; default ``main``), told the previous batch's loss, as it was.
- ``*_observed`` / ``*_current``: the same detectors told the other loss, to choose which one GradWatch hands them.

The rules now in the package were first prototyped here as wrappers of the older detector (``rebase``: the chained
norm; ``rise``: spikes and steady rises only with a rising smoothed loss; ``loss_climb``; ``stalled``) and measured
with three more that were not kept: ``takeoff`` (spikes silent while the smoothed loss falls: the loss lags the norm
by a step or more, so a take-off is usually alerted before its loss falls), ``confirm_jump`` (a startup jump alerted
once the next step confirms it: late on divergences whose NaN comes 3-4 steps in) and ``trend_floor`` (the trend rule
with "at least a tenth of its start" in place of "above its start": one more divergence caught, two more false
alarms). Their numbers are in the README's "Detection quality".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradwatch_adapter import DetectorMaker, baseline_factory


@dataclass(frozen=True)
class Candidate:
    """A detector to score: its factory, the constants it is shown with, its grid, and the loss it is told."""

    doc: str
    factory: Callable[..., DetectorMaker]
    defaults: dict[str, Any] = field(default_factory=dict)
    space: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    current: bool = True  # told the step's own loss (else the previous batch's)


#: the package's new constants (their defaults first): each chosen on the other families in the LOFO table
SPACE: dict[str, Sequence[Any]] = {
    "exploding_rise_margin": (0.25, 0.05),
    "exploding_growth_steps": (5, 4),
    "exploding_trend_start_factor": (2.0, 1.0),
    "exploding_climb_factor": (10.0, 3.0),
    "stall_decades": (4.0, 3.0),
    "stall_steps": (20, 30),
}
#: the older detector: a small grid around its defaults (the defaults first)
BEFORE_SPACE: dict[str, Sequence[Any]] = {
    "exploding_zscore": (4.0, 6.0),
    "exploding_patience": (2, 3),
    "vanishing_ratio": (1e-5, 1e-4),
    "vanishing_patience": (50, 20),
}


def candidates(before: Callable[..., DetectorMaker] | None = None) -> dict[str, Candidate]:
    """The candidates; ``before``: the older package's factory (``gradwatch_adapter.package_factory``), if any."""
    found = {
        "defaults": Candidate("the package's detector, GradWatch's defaults", baseline_factory, {}, SPACE),
        "defaults_observed": Candidate(
            "the same, told the previous batch's loss", baseline_factory, {}, SPACE, current=False
        ),
    }
    if before is not None:
        found["before"] = Candidate(
            "the detector before issue 23, told the previous batch's loss (as it was)",
            before,
            {},
            BEFORE_SPACE,
            current=False,
        )
        found["before_current"] = Candidate(
            "the detector before issue 23, told the step's own loss", before, {}, BEFORE_SPACE
        )
    return found
