"""The history toolkit against plain recomputation."""

from __future__ import annotations

import math
import random
import statistics

import numpy

from lightning_gradwatch.history import Ema, RunningMoments, SortedWindow, Window, pow10_clamped, pow10_or_inf


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
