"""The history toolkit: the few ways the package remembers a stream of numbers, each written once.

Plain Python over floats, no torch. Used by detection (windows of recent losses and norms, the running moments of
the log norm, the log-norm caps), the adaptive clipping threshold (a sorted window and its quantiles), the overhead
budget (windows of timings, an exponential average) and the run report (medians).

- :func:`median`, :func:`quantile`: of a window's values (``quantile`` interpolates linearly, as ``numpy.quantile``);
- :class:`Window`: the last ``size`` values, in arrival order;
- :class:`SortedWindow`: the same, also kept sorted, for quantiles at every step;
- :class:`Ema`: an exponential average that starts at its first value;
- :class:`RunningMoments`: the mean and variance of a stream, plain over a warm-up, then exponential and winsorised;
- :class:`StepGrid`: several streams on one step axis that thins as it grows, each missing where it had no value;
- :func:`log10_or_none`, :func:`pow10_clamped`, :func:`pow10_or_inf`: to and from the log scale, with the cap
  :data:`LOG10_CAP` past which ``10 ** x`` overflows a float.

Example:
    >>> window = Window(3)
    >>> for x in [5.0, 1.0, 4.0, 2.0]:
    ...     window.append(x)
    >>> list(window), window.median()
    ([1.0, 4.0, 2.0], 2.0)
    >>> ordered = SortedWindow(4, [3.0, 1.0, 2.0, 4.0, 0.0])
    >>> ordered.sorted, ordered.quantile(0.25)
    ([0.0, 1.0, 2.0, 4.0], 0.75)
"""

from __future__ import annotations

import bisect
import math
import statistics
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "LOG10_CAP",
    "Ema",
    "RunningMoments",
    "SortedWindow",
    "StepGrid",
    "Window",
    "log10_or_none",
    "median",
    "pow10_clamped",
    "pow10_or_inf",
    "quantile",
]

#: ``10 ** 300`` is close to the largest float (about ``1.8e308``): a log10 value past it stands for an overflow
LOG10_CAP = 300.0

#: the median of values (the middle one, or the mean of the two middle ones), ``statistics.median``
median = statistics.median


def quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of a sorted, non-empty list, interpolated linearly (as ``numpy.quantile``).

    Example:
        >>> quantile([0.0, 1.0, 2.0, 3.0], 0.5)
        1.5
    """
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def log10_or_none(value: float) -> float | None:
    """``log10(value)`` for a positive value, else ``None`` (a zero norm has no place on the log scale)."""
    return math.log10(value) if value > 0 else None


def pow10_clamped(x: float) -> float:
    """``10 ** x``, at most ``10 ** LOG10_CAP`` (a finite threshold however far a log-scale level has run)."""
    return 10 ** min(x, LOG10_CAP)


def pow10_or_inf(x: float) -> float:
    """``10 ** x``, or ``inf`` from ``LOG10_CAP`` on (a threshold that far out holds nothing back)."""
    return 10**x if x < LOG10_CAP else math.inf


class Window:
    """The last ``size`` values, in arrival order.

    Args:
        size: how many values it keeps.
        values: values to start with (the last ``size`` of them are kept).
    """

    def __init__(self, size: int, values: Iterable[float] = ()) -> None:
        self._values: deque[float] = deque(values, maxlen=size)

    def append(self, x: float) -> None:
        """Add a value (the oldest leaves when the window is full)."""
        self._values.append(x)

    def clear(self) -> None:
        """Forget every value."""
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[float]:
        return iter(self._values)

    def first(self) -> float:
        """The oldest value (the window must not be empty)."""
        return self._values[0]

    def last(self) -> float:
        """The latest value (the window must not be empty)."""
        return self._values[-1]

    def median(self) -> float:
        """The median of the values (the window must not be empty)."""
        return median(self._values)

    def mean(self) -> float:
        """The mean of the values (the window must not be empty)."""
        return statistics.fmean(self._values)


class SortedWindow:
    """The last ``size`` values, in arrival order and sorted: any quantile at every step, in ``O(size)`` per value.

    Args:
        size: how many values it keeps.
        values: values to start with (the last ``size`` of them are kept).
    """

    def __init__(self, size: int, values: Iterable[float] = ()) -> None:
        self.size = size
        self._recent: deque[float] = deque()  # in arrival order
        self.sorted: list[float] = []  # the same values, sorted
        for x in values:
            self.append(x)

    def append(self, x: float) -> None:
        """Add a value; the oldest leaves once more than ``size`` are held."""
        self._recent.append(x)
        bisect.insort(self.sorted, x)
        while len(self._recent) > self.size:
            old = self._recent.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]

    def __len__(self) -> int:
        return len(self._recent)

    def __iter__(self) -> Iterator[float]:
        return iter(self._recent)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the values (the window must not be empty)."""
        return quantile(self.sorted, q)


class Ema:
    """An exponential average that starts at its first value: ``value = (1 - weight) * value + weight * x``.

    Example:
        >>> ema = Ema(weight=0.5)
        >>> ema.value is None
        True
        >>> for x in (4.0, 2.0):
        ...     ema.add(x)
        >>> ema.value, ema.count
        (3.0, 2)
    """

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.value: float | None = None
        self.count = 0

    def add(self, x: float) -> None:
        """Take in one value."""
        self.count += 1
        self.value = x if self.value is None else (1 - self.weight) * self.value + self.weight * x


class RunningMoments:
    """The running mean and variance of a stream, robust once warmed up.

    Over the first ``warmup`` values they are the plain mean and (population) variance, updated one value at a time
    (Welford). After that they are exponential averages with weight ``decay`` on the newest value, each value's
    distance from the mean first clamped to ``winsor`` standard deviations (at least ``winsor * min_std``), so a trend
    or an outlier drags them only slowly. ``learn(x, spread=False)`` moves the mean but leaves the variance as it is.

    Attributes:
        steps: values learnt.
        mean: the running mean.
        var: the running variance.

    Example:
        >>> moments = RunningMoments(warmup=2, decay=0.5)
        >>> for x in (1.0, 3.0, 10.0):
        ...     moments.learn(x)
        >>> moments.steps, moments.mean, moments.var  # 10 is clamped to 2 + 2 * 1 before it counts
        (3, 3.0, 1.5)
    """

    def __init__(self, warmup: int, decay: float, winsor: float = 2.0, min_std: float = 1e-3) -> None:
        self.warmup = warmup
        self.decay = decay
        self.winsor = winsor
        self.min_std = min_std
        self.steps = 0
        self.mean = 0.0
        self.var = 0.0

    @property
    def std(self) -> float:
        """The running standard deviation."""
        return math.sqrt(max(self.var, 0.0))

    def learn(self, x: float, spread: bool = True) -> None:
        """Take in one value (``spread=False``: it moves the mean only)."""
        self.steps += 1
        if self.steps <= self.warmup:
            delta = x - self.mean
            self.mean += delta / self.steps
            self.var += (delta * (x - self.mean) - self.var) / self.steps
            return
        bound = self.winsor * max(self.std, self.min_std)
        delta = min(max(x - self.mean, -bound), bound)
        a = self.decay
        self.mean += a * delta
        if spread:
            self.var = (1 - a) * (self.var + a * delta * delta)


class StepGrid:
    """Several named streams on one step axis that thins as it grows: a value per stream and column, or none.

    A column stands for ``width`` consecutive steps (one at first) and is named by the first step that filled it.
    When ``2 * capacity`` columns are held, the width doubles and each pair of neighbouring columns becomes one,
    keeping each stream's first value in it, so memory stays flat however long the run. All streams share the
    columns: a stream is missing (``nan``) exactly in the columns whose steps gave it no value (a layer used on odd
    steps only, frozen after a while, or added late), and nowhere else, however differently often the streams came.

    Args:
        capacity: half the most columns held.

    Example:
        >>> grid = StepGrid(capacity=2)
        >>> for step in range(6):  # "branch" on odd steps only; "frozen" until step 2
        ...     grid.add(step, [("trunk", 1.0 + step), ("branch", 10.0 + step)][: 1 + step % 2])
        ...     grid.add(step, [("frozen", 0.5)] if step < 2 else [])
        >>> grid.width, grid.steps, grid.names
        (2, [0, 2, 4], ['trunk', 'frozen', 'branch'])
        >>> grid.rows(["trunk", "branch", "frozen"])
        [[1.0, 3.0, 5.0], [11.0, 13.0, 15.0], [0.5, nan, nan]]
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.width = 1
        self.steps: list[int] = []  # each column's first step
        self._values: dict[str, array[float]] = {}  # per stream, a value per column (nan: none)

    @property
    def names(self) -> list[str]:
        """The streams, in the order they first came."""
        return list(self._values)

    def add(self, step: int, values: Iterable[tuple[str, float]]) -> None:
        """Add the ``(name, value)`` pairs of one step; a stream keeps its first value in a column (``nan``: none)."""
        streams = self._values
        new = not self.steps or step // self.width > self.steps[-1] // self.width
        if new:
            self.steps.append(step)
            for row in streams.values():
                row.append(math.nan)
        column = len(self.steps) - 1
        for name, value in values:
            row = streams.get(name)
            if row is None:
                row = streams[name] = array("d", [math.nan]) * len(self.steps)
            if new or math.isnan(row[column]):  # a new column holds nothing yet
                row[column] = value
        if len(self.steps) >= 2 * self.capacity:
            self._thin()

    def _thin(self) -> None:
        """Double the width: neighbouring columns that now share one merge, each stream's first value kept."""
        self.width = width = self.width * 2
        keep = [i for i, step in enumerate(self.steps) if i == 0 or step // width > self.steps[i - 1] // width]
        ends = [*keep[1:], len(self.steps)]
        for name, row in self._values.items():
            self._values[name] = array("d", (_first(row[a:b]) for a, b in zip(keep, ends)))
        self.steps = [self.steps[i] for i in keep]

    def rows(self, names: Sequence[str]) -> list[list[float]]:
        """The values of these streams, one list per stream aligned with :attr:`steps` (all ``nan`` if unknown)."""
        missing = [math.nan] * len(self.steps)
        return [list(self._values[name]) if name in self._values else list(missing) for name in names]

    def state_dict(self) -> dict[str, Any]:
        """Plain values to continue the grid after a resume (``None`` where a stream has no value)."""
        values = {name: [None if math.isnan(x) else x for x in row] for name, row in self._values.items()}
        return {"width": self.width, "steps": list(self.steps), "values": values}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; missing keys keep their defaults."""
        self.width = int(state.get("width", 1))
        self.steps = [int(step) for step in state.get("steps", [])]
        self._values = {
            str(name): array("d", (math.nan if x is None else float(x) for x in row))
            for name, row in state.get("values", {}).items()
        }


def _first(values: Iterable[float]) -> float:
    """The first value that is not ``nan`` (``nan`` when there is none)."""
    return next((x for x in values if not math.isnan(x)), math.nan)
