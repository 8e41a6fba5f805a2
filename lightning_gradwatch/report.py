"""The run report, ``gradwatch.json``: bounded per-layer summaries, events and alerts, written atomically.

This module owns the file's format (writing it during training and reading it back in the ``gradwatch`` command).
"""

from __future__ import annotations

import heapq
import json
import math
import os
import tempfile
from array import array
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_gradwatch._names import NONFINITE_STEPS
from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.history import StepGrid, median
from lightning_gradwatch.kinds import RunStatus

__all__ = [
    "REPORT_FILE",
    "REPORT_FORMAT",
    "REPORT_FORMAT_VERSION",
    "RunSummary",
    "Series",
    "build_report",
    "in_model_order",
    "json_safe",
    "read_report",
    "wall_time",
    "write_report",
]

if TYPE_CHECKING:  # the report is read by the `gradwatch` command, which does not need torch
    from lightning_gradwatch.measure.records import StepStats

REPORT_FILE = "gradwatch.json"
REPORT_FORMAT = "gradwatch-report"
REPORT_FORMAT_VERSION = 1
MAX_BAD_BATCHES = 1000  # the first ones are kept, the rest counted; an alerted step always is


def wall_time(value: Any) -> float | None:
    """A wall time read back from ``gradwatch.json`` (``logs_since``): seconds, or ``None`` when absent or not finite.

    Example:
        >>> wall_time(1700000000.5), wall_time("x"), wall_time(float("nan")), wall_time(True)
        (1700000000.5, None, None, None)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def in_model_order(orders: Iterable[Sequence[str]]) -> list[str]:
    """Layer names in the model's order, from lists that each hold some of them in that order.

    Each list is one view of the model's (registration) order: the layers an optimizer watches, or those a step
    measured (a frozen or unused layer is missing from it). The result keeps every list's order; names no list
    places relative to each other keep the order they were first seen in.

    Example:
        >>> in_model_order([["net.2", "net.4"], ["net.0", "net.2", "net.4"]])  # net.0 unfrozen later
        ['net.0', 'net.2', 'net.4']
        >>> in_model_order([["generator.0", "generator.1"], ["critic.0"]])  # two optimizers' layers
        ['generator.0', 'generator.1', 'critic.0']
    """
    names, after = _precedence(orders)
    rank = {name: i for i, name in enumerate(names)}
    waiting = dict.fromkeys(names, 0)  # how many names must still come before each
    for name in chain.from_iterable(after.values()):
        waiting[name] += 1
    ready = [rank[name] for name, count in waiting.items() if count == 0]
    out: list[str] = []
    while waiting:
        # the first-seen name nothing else must precede; should the lists disagree (a cycle), the first-seen left
        name = names[heapq.heappop(ready)] if ready else next(iter(waiting))
        del waiting[name]
        out.append(name)
        for later in after[name] & waiting.keys():
            waiting[later] -= 1
            if waiting[later] == 0:
                heapq.heappush(ready, rank[later])
    return out


def _precedence(orders: Iterable[Sequence[str]]) -> tuple[list[str], dict[str, set[str]]]:
    """The names in the order first seen, and the names that directly follow each in some list."""
    after: dict[str, set[str]] = {}
    for order in orders:
        for name in order:
            after.setdefault(name, set())
        for before, name in pairwise(order):
            after[before].add(name)
    return list(after), after


#: a series' median is taken over at most this many of its values: every one, then a uniform random sample of them
MEDIAN_SAMPLE = 256
_LCG_MUL, _LCG_ADD, _LCG_SEED = 6364136223846793005, 1442695040888963407, 0x9E3779B97F4A7C15


class Series:
    """A bounded summary of one scalar stream: count, first, last (and its step), min, max, median, a thinned history.

    The history keeps at most ``2 * capacity`` points spread over the whole run (every other point is dropped and
    the stride doubled when it fills), so memory stays flat however long training runs. The median is over every
    finite value up to :data:`MEDIAN_SAMPLE` of them, then over a uniform random sample of that many (reservoir
    sampling, with a fixed seed): the thinned history keeps every 2nd, 4th, ... step, and a stream whose values
    alternate with the steps (batches from two sources) would be read from one of them.

    Example:
        >>> s = Series(capacity=4)
        >>> for step in range(100):
        ...     s.add(step, float(step))
        >>> s.count, s.min, s.max, s.last, s.last_step
        (100, 0.0, 99.0, 99.0, 99)
        >>> len(s.history) <= 8
        True
    """

    __slots__ = (
        "_draw",
        "_sample",
        "_seen",
        "_steps",
        "_stride",
        "_values",
        "capacity",
        "count",
        "first",
        "last",
        "last_step",
        "max",
        "min",
    )

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.count = 0
        self.first = math.nan
        self.last = math.nan
        self.last_step: int | None = None  # exact, where the thinned history may end earlier
        self.min = math.inf
        self.max = -math.inf
        self._steps = array("q")  # compact: one Series per layer is updated on every step
        self._values = array("d")
        self._stride = 1
        self._seen = 0
        self._sample = array("d")  # the median's values: every one, then a uniform random sample
        self._draw = _LCG_SEED

    @property
    def history(self) -> list[tuple[int, float]]:
        """The thinned ``(step, value)`` history."""
        return list(zip(self._steps, self._values))

    @history.setter
    def history(self, points: list[tuple[int, float]]) -> None:
        self._steps = array("q", (int(s) for s, _ in points))
        self._values = array("d", (float(v) for _, v in points))

    def add(self, step: int, value: float) -> None:
        """Add one value (non-finite values count, but stay out of min, max and the history)."""
        self.count += 1
        self.last, self.last_step = value, step
        if not math.isfinite(value):
            return
        if self.first != self.first:
            self.first = value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self._take(value)
        if self._seen % self._stride == 0:
            self._steps.append(step)
            self._values.append(value)
            if len(self._steps) >= 2 * self.capacity:
                self._steps, self._values = self._steps[::2], self._values[::2]
                self._stride *= 2
        self._seen += 1

    def _take(self, value: float) -> None:
        """Keep a finite value for the median: the first :data:`MEDIAN_SAMPLE`, then each with that chance."""
        if len(self._sample) < MEDIAN_SAMPLE:
            self._sample.append(value)
            return
        self._draw = (self._draw * _LCG_MUL + _LCG_ADD) % 2**64
        slot = (self._draw >> 16) % (self._seen + 1)
        if slot < MEDIAN_SAMPLE:
            self._sample[slot] = value

    @property
    def median(self) -> float:
        """Median of the finite values: exact up to :data:`MEDIAN_SAMPLE`, then of a uniform sample (``nan``: none)."""
        return median(self._sample) if self._sample else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON (non-finite numbers become ``None``)."""
        return {
            "count": self.count,
            "first": _num(self.first),
            "last": _num(self.last),
            "last_step": self.last_step,
            "min": _num(self.min),
            "max": _num(self.max),
            "median": _num(self.median),
            "history": [[step, _num(v)] for step, v in self.history],
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this series after a resume."""
        return {
            "count": self.count,
            "first": self.first,
            "last": self.last,
            "last_step": self.last_step,
            "min": self.min,
            "max": self.max,
            "history": [list(p) for p in self.history],
            "stride": self._stride,
            "seen": self._seen,
            "sample": list(self._sample),
            "draw": self._draw,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; missing keys keep their defaults."""
        self.count = int(state.get("count", 0))
        self.first = float(state.get("first", math.nan))
        self.last = float(state.get("last", math.nan))
        last_step = state.get("last_step")
        self.last_step = None if last_step is None else int(last_step)
        self.min = float(state.get("min", math.inf))
        self.max = float(state.get("max", -math.inf))
        self.history = [(int(s), float(v)) for s, v in state.get("history", [])]
        self._stride = int(state.get("stride", 1))
        self._seen = int(state.get("seen", 0))
        sample = state.get("sample")
        if sample is None:  # a state from before the sample: the history's values stand for it, as many as it held
            values = list(self._values)
            wanted = min(self._seen, MEDIAN_SAMPLE)
            sample = [values[i % len(values)] for i in range(wanted)] if values else []
        self._sample = array("d", (float(v) for v in sample))
        self._draw = int(state.get("draw", _LCG_SEED))


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


class RunSummary:
    """Per-layer and run-level summaries of one training run, fed by :class:`~lightning_gradwatch.stats.StepStats`.

    The total norm and the per-layer norms are summarised on every measured step (a spike between log steps is in
    the report); gradient-to-weight ratios on the steps that measure parameter norms. Layers are listed in the
    model's order (:meth:`watch`), not in the order their first gradient came: a layer frozen for the first steps
    is still listed where it sits in the model. The per-layer norms are also kept on one step axis per optimizer
    (``key``), for the heat map: every layer that had a gradient, on the steps it had one.
    """

    def __init__(self) -> None:
        self.total_norm: dict[str, Series] = {}
        self.layers: dict[str, dict[str, Any]] = {}
        self.grids: dict[str, StepGrid] = {}  # per optimizer key: the layers' norms on a shared step axis
        self.order: list[str] = []  # every watched layer, in the model's order
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.measured_steps = 0
        self.logged_steps = 0
        self.events: dict[str, int] = {}
        self.bad_batches: list[dict[str, Any]] = []

    def note_batch(self, step: int, reasons: list[str], **where: Any) -> None:
        """Record a step that was skipped, clipped as a spike or alerted, with where its batch came from.

        The first :data:`MAX_BAD_BATCHES` are kept, the rest counted (``bad_batches_not_kept``), except an alerted
        step: it takes the place of the latest kept step that was not alerted (a run whose batches are mostly outliers
        fills the list with clipped spikes long before the step an explosion is found at).

        Example:
            >>> summary = RunSummary()
            >>> summary.note_batch(12, ["skipped", "alert"], optimizer=0, epoch=1, batch_idx=3)
            >>> summary.bad_batches
            [{'step': 12, 'reasons': ['skipped', 'alert'], 'optimizer': 0, 'epoch': 1, 'batch_idx': 3}]
        """
        kept = self.bad_batches
        if len(kept) >= MAX_BAD_BATCHES:
            self.count("bad_batches_not_kept")
            if "alert" not in reasons:
                return
            plain = next((i for i in range(len(kept) - 1, -1, -1) if "alert" not in kept[i]["reasons"]), None)
            if plain is None:
                return
            del kept[plain]  # an alerted step is never the one left out
        kept.append({"step": step, "reasons": list(reasons), **where})

    def place(self, layers: Sequence[str]) -> None:
        """Every watched layer in the model's order, set each time an optimizer's layers change.

        Layers known only from a resumed run's state follow them.

        Example:
            >>> summary = RunSummary()
            >>> summary.place(["critic.0"])  # the critic's optimizer stepped first
            >>> summary.place(["generator.0", "critic.0"]); summary.order  # the generator is registered first
            ['generator.0', 'critic.0']
        """
        known = set(layers)
        self.order = [*layers, *(name for name in self.order if name not in known)]

    def ordered(self, layers: Iterable[str] | None = None) -> list[str]:
        """The summarised layers (of ``layers`` when given) in the model's order; others, unwatched, after them."""
        rank = {name: i for i, name in enumerate(self.order)}
        names = self.layers if layers is None else [name for name in layers if name in self.layers]
        return sorted(names, key=lambda name: rank.get(name, len(rank)))

    def count(self, event: str, n: int = 1) -> None:
        """Count a run event such as ``"amp_overflow_steps"`` or ``"skipped_steps"``."""
        self.events[event] = self.events.get(event, 0) + n

    def add_step(self, step: int, stats: StepStats, key: str = "", logged: bool = False) -> None:
        """Add one measured step: the total norm and every layer's norm (``logged``: counted as a logged step).

        Gradient-to-weight ratios need the parameter norms, measured on log and histogram steps only.
        """
        if self.first_step is None:
            self.first_step = step
        self.last_step = step
        self.measured_steps += 1
        self.logged_steps += int(logged)
        self.total_norm.setdefault(key, Series()).add(step, stats.total_norm)
        self.grids.setdefault(key, StepGrid()).add(step, zip(stats.layers, stats.grad_norm))
        if not stats.finite:
            self.count(NONFINITE_STEPS)
        ratios = stats.grad_to_weight or ()
        for i, name in enumerate(stats.layers):
            entry = self.layers.get(name)
            if entry is None:
                entry = self.layers[name] = {
                    "numel": stats.numel[i],
                    "grad_norm": Series(),
                    "grad_to_weight": Series(),
                    "nonfinite_steps": 0,
                }
            entry["grad_norm"].add(step, stats.grad_norm[i])
            if ratios:
                entry["grad_to_weight"].add(step, ratios[i])
            if stats.nonfinite_count[i]:
                entry["nonfinite_steps"] += 1

    def norm_grid(self, layers: Iterable[str], key: str = "") -> tuple[list[str], list[int], list[list[float]]]:
        """One optimizer's per-layer gradient norms on a common step axis: ``(layers, steps, norms[layer][column])``.

        Every layer that had a gradient in the run is a row, ``nan`` in the columns whose steps gave it none: in
        the order of ``layers`` (the model's), then any other in the order they first had one.

        Example:
            >>> from types import SimpleNamespace
            >>> def step(layers):
            ...     return SimpleNamespace(
            ...         layers=layers, grad_norm=[1.0] * len(layers), numel=[4] * len(layers),
            ...         nonfinite_count=[0] * len(layers), total_norm=1.0, finite=True, grad_to_weight=None,
            ...     )
            >>> summary = RunSummary()
            >>> for i, layers in enumerate([["fc1", "fc3"], ["fc1", "fc2", "fc3"], ["fc3"]]):
            ...     summary.add_step(i, step(layers))
            >>> summary.norm_grid(["fc1", "fc2", "fc3"])
            (['fc1', 'fc2', 'fc3'], [0, 1, 2], [[1.0, 1.0, nan], [nan, 1.0, nan], [1.0, 1.0, 1.0]])
        """
        grid = self.grids.get(key)
        if grid is None:
            return [], [], []
        order = list(dict.fromkeys(layers))
        known, ordered = set(grid.names), set(order)
        names = [name for name in order if name in known] + [name for name in grid.names if name not in ordered]
        return names, list(grid.steps), grid.rows(names)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the report."""
        return {
            "steps": {
                "first": self.first_step,
                "last": self.last_step,
                "measured": self.measured_steps,
                "logged": self.logged_steps,
            },
            "total_norm": {key or "all": s.to_dict() for key, s in self.total_norm.items()},
            "layers": [
                {
                    "name": name,
                    "numel": entry["numel"],
                    "grad_norm": entry["grad_norm"].to_dict(),
                    "grad_to_weight": entry["grad_to_weight"].to_dict(),
                    "nonfinite_steps": entry["nonfinite_steps"],
                }
                for name, entry in ((name, self.layers[name]) for name in self.ordered())
            ],
            "events": dict(self.events),
            "bad_batches": [dict(b) for b in self.bad_batches],
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the summaries after a resume."""
        return {
            "first_step": self.first_step,
            "last_step": self.last_step,
            "measured_steps": self.measured_steps,
            "logged_steps": self.logged_steps,
            "events": dict(self.events),
            "bad_batches": [dict(b) for b in self.bad_batches],
            "order": list(self.order),
            "total_norm": {k: s.state_dict() for k, s in self.total_norm.items()},
            "grids": {k: grid.state_dict() for k, grid in self.grids.items()},
            "layers": {
                name: {
                    "numel": e["numel"],
                    "grad_norm": e["grad_norm"].state_dict(),
                    "grad_to_weight": e["grad_to_weight"].state_dict(),
                    "nonfinite_steps": e["nonfinite_steps"],
                }
                for name, e in self.layers.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; missing keys keep their defaults."""
        self.first_step = state.get("first_step")
        self.last_step = state.get("last_step")
        self.measured_steps = int(state.get("measured_steps", 0))
        self.logged_steps = int(state.get("logged_steps", 0))
        self.events = {str(k): int(v) for k, v in state.get("events", {}).items()}
        self.bad_batches = [dict(b) for b in state.get("bad_batches", [])]
        self.order = in_model_order([[str(name) for name in state.get("order", [])], self.order])
        self.total_norm = {}
        for key, s in state.get("total_norm", {}).items():
            self.total_norm[key] = Series()
            self.total_norm[key].load_state_dict(s)
        self.layers = {}
        for name, e in state.get("layers", {}).items():
            grad_norm, ratio = Series(), Series()
            grad_norm.load_state_dict(e.get("grad_norm", {}))
            ratio.load_state_dict(e.get("grad_to_weight", {}))
            self.layers[name] = {
                "numel": int(e.get("numel", 0)),
                "grad_norm": grad_norm,
                "grad_to_weight": ratio,
                "nonfinite_steps": int(e.get("nonfinite_steps", 0)),
            }
        self.grids = {}
        for key, g in state.get("grids", {}).items():
            self.grids[key] = StepGrid()
            self.grids[key].load_state_dict(g)
        if "grids" not in state and len(self.total_norm) == 1:  # saved before the grids: rebuilt from the histories
            self.grids = {key: self._grid_from_histories() for key in self.total_norm}

    def _grid_from_histories(self) -> StepGrid:
        """The layers' thinned histories on one step axis (a run of one optimizer, saved without its grid)."""
        points: dict[int, list[tuple[str, float]]] = {}
        for name, entry in self.layers.items():
            for step, value in entry["grad_norm"].history:
                points.setdefault(step, []).append((name, value))
        grid = StepGrid()
        for step in sorted(points):
            grid.add(step, points[step])
        return grid


def build_report(
    *,
    version: str,
    status: RunStatus | str,
    config: Mapping[str, Any],
    summary: RunSummary,
    alerts: Iterable[GradientAlert],
    error: str | None = None,
) -> dict[str, Any]:
    """The whole ``gradwatch.json`` document."""
    doc: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        "gradwatch_version": version,
        "status": str(status),  # the value of a RunStatus
        "config": dict(config),
    }
    if error:
        doc["error"] = error
    doc.update(summary.to_dict())
    doc["alerts"] = [json_safe(a.to_dict()) for a in alerts]
    return doc


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as its ``repr`` (JSON has no NaN), containers copied.

    Example:
        >>> json_safe({"value": float("nan"), "layers": ("fc",)})
        {'value': 'nan', 'layers': ['fc']}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_report(directory: str | os.PathLike[str], doc: Mapping[str, Any], name: str = REPORT_FILE) -> Path:
    """Write ``doc`` to ``directory/gradwatch.json`` (or ``name``) atomically (a reader never sees half a file).

    Raises:
        OSError: when the directory cannot be created or written.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    path = target / name
    fd, tmp = tempfile.mkstemp(prefix=".gradwatch-", suffix=".json.tmp", dir=target)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it private: 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(json_safe(dict(doc)), fh, indent=1, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    try:  # Linux says it without changing it (other threads may be creating files)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere, reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def read_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a ``gradwatch.json``.

    Raises:
        ValueError: when the file is not JSON or not a GradWatch report.
        OSError: when it cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from err
    except RecursionError as err:
        raise ValueError(f"{path} is not a GradWatch report (its JSON is nested too deeply to read)") from err
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
        raise ValueError(f'{path} is not a GradWatch report (no "format": "{REPORT_FORMAT}")')
    return doc
