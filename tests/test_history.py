"""The history toolkit against plain recomputation."""

from __future__ import annotations

import json
import math
import random
import statistics

import numpy
import pytest

from lightning_gradwatch.history import (
    Ema,
    RunningMoments,
    SortedWindow,
    StepGrid,
    Window,
    pow10_clamped,
    pow10_or_inf,
)
from lightning_gradwatch.report import Series


def test_windows_keep_the_last_values_and_their_order_statistics():
    rng = random.Random(0)
    values = [rng.choice([rng.gauss(0, 1), 1.0, 2.0]) for _ in range(500)]
    window, ordered = Window(7), SortedWindow(7)
    for i, x in enumerate(values):
        window.append(x)
        ordered.append(x)
        last = values[max(0, i - 6) : i + 1]
        assert list(window) == list(ordered) == last
        assert ordered.sorted == sorted(last)
        assert window.median() == statistics.median(last)
        assert math.isclose(ordered.quantile(0.25), float(numpy.quantile(last, 0.25)), rel_tol=1e-12, abs_tol=1e-12)


def test_running_moments_are_the_plain_ones_during_warmup():
    values = [0.3, -1.2, 2.5, 0.7, 1.1]
    moments = RunningMoments(warmup=5, decay=0.1)
    for x in values:
        moments.learn(x)
    assert math.isclose(moments.mean, statistics.fmean(values))
    assert math.isclose(moments.var, statistics.pvariance(values))


def test_ema_starts_at_its_first_value_and_caps_on_the_log_scale():
    ema = Ema(0.2)
    ema.add(10.0)
    assert ema.value == 10.0
    assert pow10_clamped(400.0) == 1e300
    assert pow10_or_inf(400.0) == math.inf
    assert pow10_or_inf(2.0) == pow10_clamped(2.0) == 100.0


def test_step_grid_columns_hold_exactly_the_streams_measured_in_their_steps():
    """However often each stream comes, a column holds a stream's first value within its steps, and is blank for a
    stream only when none of its steps gave that stream a value: a thinned axis never makes a layer look absent."""
    rng = random.Random(0)
    every = {"trunk": 1, "odd": 2, "third": 3, "rare": 7}
    frozen = {"frozen": 50, "late": 400}  # a value before step 50; from step 400 on
    grid, seen = StepGrid(capacity=16), {}
    for step in range(0, 1000, 1 + (rng.random() < 0.1)):  # now and then a step without any measurement
        values = [(name, float(step)) for name, n in every.items() if (step + 1) % n == 0]
        values += [("frozen", float(step))] * (step < frozen["frozen"]) + [("late", float(step))] * (step >= 400)
        grid.add(step, values)
        for name, _ in values:
            seen.setdefault(name, []).append(step)
    assert 16 <= len(grid.steps) < 32
    names = ["trunk", "late", "odd", "third", "rare", "frozen"]
    rows = grid.rows(names)
    width = grid.width
    for name, row in zip(names, rows):
        for column, first in enumerate(grid.steps):
            bucket = first // width
            inside = [step for step in seen[name] if step // width == bucket]
            assert (row[column] == inside[0]) if inside else math.isnan(row[column]), (name, first)


def test_a_series_median_is_not_read_from_one_of_two_alternating_sources():
    """Batches from two sources alternate: 40% of the steps 100x the others. The thinned history keeps every 2nd,
    4th, ... step, and its median read 53.2 where every step's is 0.89; the median's own uniform sample does not
    follow the steps' pattern."""
    series, values = Series(capacity=64), []
    for step in range(3000):
        value = (100.0 if step % 10 in (0, 2, 4, 6) else 1.0) * (1.0 + 0.001 * (step % 13))
        series.add(step, value)
        values.append(value)
    assert series.median == pytest.approx(statistics.median(values), rel=0.01)
    resumed = Series(capacity=64)
    resumed.load_state_dict(json.loads(json.dumps(series.state_dict())))
    assert resumed.median == series.median
