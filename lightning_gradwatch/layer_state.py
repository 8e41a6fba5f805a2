"""Each layer's state over the last steps of a run (now), apart from the alerts that named it (then).

An alert says what happened at a step; a run can recover from it (an Adam run at a high learning rate whose
gradients exploded at step 1 and settled after), or be worse by the end than when it fired. The state says what the
gradient norms are at the end of the run, from the numbers alone:

- **window**: the layer's norms in the last tenth of the steps it was measured over, and at least its last
  :data:`MIN_POINTS` points (``gradwatch.json`` keeps 64 to 128 points evenly spread over the run; event files hold
  every logged step). ``recent`` is their median.
- ``no-gradient``: the layer was last measured before the run's own window began (the window of its total norm;
  of the earliest, with several optimizers): frozen since, or a branch no longer used. It has no ``recent`` norm,
  and ``since`` is the last step that measured it (from event files: that logged it); the report shows
  ``no gradient since step <since>``;
- ``non-finite``: the layer's last measured norm is NaN or Inf;
- ``zero``: ``recent`` is exactly 0 (no gradient reaches the layer: dead units, a detached or unused branch);
- ``small``: ``recent`` is below ``vanishing_ratio`` (the run's, 1e-5 by default) times the largest layer's
  ``recent``, or below ``vanishing_floor`` when the run set one: the vanishing alert's rule, applied to the end;
- ``large``: ``recent`` is at least :data:`LARGE_FACTOR` times the median before the window (a decade above the
  layer's own earlier level);
- ``ok``: none of these.

The total norm gets the same states but ``small`` and ``no-gradient`` (it has no larger layer to be compared with,
and its window is the run's).

Example:
    >>> points = [(step, 1.0) for step in range(90)] + [(step, 20.0) for step in range(90, 100)]
    >>> state_of(points, top=20.0)
    LayerState(state='large', recent=20.0, first_step=90, last_step=99, points=10, since=None)
    >>> named_in("fc2", [{"kind": "exploding", "step": 1, "layers": ["fc1", "fc2"]}])
    ['exploding@1']
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightning_gradwatch.runs import RunRecord

__all__ = [
    "LARGE_FACTOR",
    "MIN_POINTS",
    "NO_GRADIENT",
    "RECENT_FRACTION",
    "STATES",
    "LayerState",
    "layer_states",
    "marks",
    "named_in",
    "recent_window",
    "state_of",
    "total_states",
]

NO_GRADIENT = "no-gradient"
STATES = ("ok", "small", "zero", "large", "non-finite", NO_GRADIENT)
RECENT_FRACTION = 0.1
MIN_POINTS = 5
LARGE_FACTOR = 10.0
DEFAULT_VANISHING_RATIO = 1e-5
MAX_STEPS_SHOWN = 3


@dataclass(frozen=True)
class LayerState:
    """A layer's (or total's) state over its last steps: ``state``, the median norm ``recent`` and its window.

    ``since``: for ``no-gradient``, the last step that measured the layer.
    """

    state: str
    recent: float
    first_step: int | None
    last_step: int | None
    points: int
    since: int | None = None

    @property
    def label(self) -> str:
        """The state as the reports show it: its word, or ``no gradient since step 63``.

        Example:
            >>> LayerState(NO_GRADIENT, math.nan, None, None, 0, since=63).label
            'no gradient since step 63'
        """
        return f"no gradient since step {self.since}" if self.state == NO_GRADIENT else self.state

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON (a non-finite ``recent`` is ``None``; ``since`` only for ``no-gradient``)."""
        since = {"since": self.since} if self.state == NO_GRADIENT else {}
        return {
            "state": self.state,
            **since,
            "recent": {
                "median": self.recent if math.isfinite(self.recent) else None,
                "first_step": self.first_step,
                "last_step": self.last_step,
                "points": self.points,
            },
        }


def recent_window(points: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """The points in the last tenth of the steps ``points`` cover, and at least the last :data:`MIN_POINTS`.

    Example:
        >>> [s for s, _ in recent_window([(s, 1.0) for s in range(0, 200, 2)])]
        [180, 182, 184, 186, 188, 190, 192, 194, 196, 198]
    """
    if not points:
        return []
    first, last = points[0][0], points[-1][0]
    cutoff = last - RECENT_FRACTION * (last - first)
    start = next(i for i, (step, _) in enumerate(points) if step >= cutoff)
    return list(points[min(start, max(len(points) - MIN_POINTS, 0)) :])


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def state_of(
    points: Sequence[tuple[int, float]],
    *,
    last: float | None = None,
    top: float | None = None,
    ratio: float = DEFAULT_VANISHING_RATIO,
    floor: float | None = None,
) -> LayerState:
    """The state of one series of norms (``points`` in step order).

    Args:
        points: ``(step, norm)`` points.
        last: the last measured norm when ``points`` leaves out non-finite ones (``gradwatch.json``'s history).
        top: the largest layer's ``recent`` median; ``None``: no ``small`` state (the total norm).
        ratio: ``small`` below ``ratio * top``.
        floor: ``small`` below this absolute norm too.
    """
    window = recent_window(points)
    recent = _median([v for _, v in window])
    first_step, last_step = (window[0][0], window[-1][0]) if window else (None, None)
    last = points[-1][1] if last is None and points else last
    earlier = points[: len(points) - len(window)]
    state = _state(recent, last, earlier, top, ratio, floor)
    return LayerState(state, recent, first_step, last_step, len(window))


def _state(
    recent: float,
    last: float | None,
    earlier: Sequence[tuple[int, float]],
    top: float | None,
    ratio: float,
    floor: float | None,
) -> str:
    """The state word, from the window's median ``recent``, the last norm and the points before the window."""
    if last is not None and not math.isfinite(last):
        return "non-finite"
    if recent == 0.0:
        return "zero"
    if top is not None and math.isfinite(recent) and _below(recent, top, ratio, floor):
        return "small"
    before = _median([v for _, v in earlier])
    return "large" if before > 0 and recent >= LARGE_FACTOR * before else "ok"


def _below(recent: float, top: float, ratio: float, floor: float | None) -> bool:
    """Below ``ratio`` times the largest layer's recent median, or below the absolute ``floor``."""
    return (top > 0 and recent < ratio * top) or (floor is not None and recent < floor)


def _config_number(config: dict[str, Any], key: str) -> float | None:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def layer_states(run: RunRecord) -> dict[str, LayerState]:
    """Every layer's state at the end of ``run``, by layer name (``small``: against the run's largest layer)."""
    ratio = _config_number(run.config, "vanishing_ratio") or DEFAULT_VANISHING_RATIO
    floor = _config_number(run.config, "vanishing_floor")
    gone = _without_gradient(run)
    recents = {
        name: _median([v for _, v in recent_window(points)]) for name, points in run.history.items() if name not in gone
    }
    top = max((v for v in recents.values() if math.isfinite(v)), default=math.nan)
    return {
        layer["name"]: LayerState(NO_GRADIENT, math.nan, None, None, 0, since=gone[layer["name"]])
        if layer["name"] in gone
        else state_of(
            run.history.get(layer["name"], []),
            last=layer["grad_norm"].get("last"),
            top=top if math.isfinite(top) else None,
            ratio=ratio,
            floor=floor,
        )
        for layer in run.layers
    }


def _without_gradient(run: RunRecord) -> dict[str, int]:
    """The layers last measured before the run's window (its total norm's; the earliest), with that last step."""
    start = min((s.first_step for s in total_states(run).values() if s.first_step is not None), default=None)
    if start is None:
        return {}
    return {
        layer["name"]: layer["last_step"]
        for layer in run.layers
        if layer.get("last_step") is not None and layer["last_step"] < start
    }


def total_states(run: RunRecord) -> dict[str, LayerState]:
    """The state of each total norm of ``run`` (``"all"``, or one per optimizer), by ``total_norm`` key."""
    return {
        key: state_of(run.total_history.get(key, []), last=total.get("last")) for key, total in run.total_norm.items()
    }


def named_in(layer: str | None, alerts: Sequence[dict[str, Any]], optimizer: int | None = None) -> list[str]:
    """The alerts that named ``layer`` (every alert when ``None``, of ``optimizer`` when given), as ``kind@step``."""
    return [
        f"{a['kind']}@{a['step']}"
        for a in alerts
        if (layer is None or layer in a["layers"]) and (optimizer is None or (a.get("optimizer") or 0) == optimizer)
    ]


def marks(names: Sequence[str], nonfinite_steps: int = 0) -> str:
    """``kind@step`` marks in one short cell: steps grouped by kind, at most 3 each (``exploding@1,40 +2``).

    Example:
        >>> marks(["exploding@1", "vanishing@49", "exploding@40", "exploding@41", "exploding@50", "exploding@70"])
        'exploding@1,40,41 +2, vanishing@49'
        >>> marks([], nonfinite_steps=3)
        'non-finite on 3 steps (no alert)'
    """
    steps: dict[str, list[str]] = {}
    for mark in names:
        kind, _, step = mark.partition("@")
        steps.setdefault(kind, []).append(step)
    cells = []
    for kind, found in steps.items():
        more = f" +{len(found) - MAX_STEPS_SHOWN}" if len(found) > MAX_STEPS_SHOWN else ""
        cells.append(f"{kind}@{','.join(found[:MAX_STEPS_SHOWN])}{more}")
    if nonfinite_steps and "nonfinite" not in steps:
        cells.append(f"non-finite on {nonfinite_steps} steps (no alert)")
    return ", ".join(cells) or "-"
