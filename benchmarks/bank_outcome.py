"""Each run's verdict from its outcome (what its loss and gradients did), never from what the generator meant to do.

:func:`outcome` is the one definition. Its terms, over the run's own per-step training loss and gradient norms:

- *smoothed loss* ``S(t)``: the median of the last 5 finite losses up to step ``t``; *start*: the median of the
  first 5; *best(t)*: the lowest smoothed loss before ``t``. *smoothed norm* ``N(t)``: the median of the last 5
  total gradient norms; ``N_best``: the smoothed norm when the loss was at its best.
- **nonfinite** / **diverged (NaN)**: the first step ``n`` with a non-finite loss or gradient (fp16 overflow steps
  that the loss scaler skips by itself, by GradWatch's own rule, do not count). If one of the 10 steps before ``n``
  shows a climb (a loss at 2x or more of the best smoothed loss before it and at least 0.1x the start, or a total
  norm 10x or more the median norm of the steps before the climb), the run **diverged** and its deadline is
  ``n - 2`` (an exploding alert must come two steps before the first NaN); when even the climb's first step comes
  after ``n - 2``, the run is marked *sudden* and its deadline is ``n - 1``. With no climb, the non-finite value
  came from nowhere (a NaN batch): the verdict is **nonfinite**, deadline ``n``: the non-finite alert at that step,
  nothing before it.
- **diverged** (no NaN): from some step ``t`` on, for 5 consecutive steps (or to the run's end), either the
  smoothed loss is 10x its best and (above its start, or at least 0.1x its start with the smoothed norm 10x
  ``N_best``: a near-zero loss wandering between 1e-5 and 1e-4 has not diverged), or the smoothed
  loss is 3x its start with the smoothed norm 3x ``N_best``. Deadline ``t``: the step the smoothed loss is 10x its
  best (or 3x its start).
- **dead**: a layer (not a normalisation layer) whose gradient is exactly zero from some step to the end of the run,
  for at least 50 steps: it never comes back (steps whose loss is exactly 0, a batch fitted exactly, do not count; a
  layer used on some steps only is not dead); deadline: 60 steps after its zeros began; the alert must name the dead
  layers.
- **never_learned**: the loss still at its starting level at the end (the median of the last 20 losses at least
  0.9x the start) while the layers are decades apart: the median over the first 60 steps of
  ``log10(largest layer norm / smallest layer norm)`` (normalisation layers left out) is 3 or more. With 4 decades
  or more the deadline is step 60 (a vanishing alert within 60 steps), else the run's end; the alert must name the
  model's first layer.
- **healthy**: everything else, including runs that learn slowly or not at all with layers close together (nothing
  a gradient alert could fix). Any alert on a healthy run is a false alarm.

Order of precedence: nonfinite/diverged, dead, never_learned, healthy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bank_runs import Trace
from gradwatch_adapter import overflow_steps

SMOOTH = 5  # steps of the smoothed loss and norm (medians)
CLIMB_LOOKBACK = 10  # steps before a NaN searched for the climb that announces it
DIVERGED_LOSS_FACTOR = 10.0  # the smoothed loss at this many times its best ...
DIVERGED_START_FACTOR = 3.0  # ... or at this many times its start (with the norm 3x up)
DIVERGED_SUSTAIN = 5  # for this many consecutive steps
NEAR_ZERO = 0.1  # below this fraction of its start, a loss 10x its best is near-zero noise, not a divergence
DEAD_STEPS = 50  # all-zero steps, to the run's end, that make a layer dead
NEVER_LEARNED_FRACTION = 0.9  # the end loss at least this fraction of the start
SPREAD_DECADES = 3.0  # layers this many decades apart (median over the first 60 steps)
DEADLINE_DECADES = 4.0  # from this spread, the vanishing alert is due by step 60
EARLY_STEPS = 60


@dataclass(frozen=True)
class Outcome:
    """What happened to a run.

    Attributes:
        verdict: ``"diverged"``, ``"nonfinite"``, ``"dead"``, ``"never_learned"`` or ``"healthy"``.
        step: when it happened (first non-finite step, the step the loss mark was reached, first zero step, 0).
        deadline: the last step at which the expected alert is in time (``None`` for healthy runs).
        layers: layers the alert must name (dead layers; the first layer of a run that never learned).
        spread: median decades between the largest and smallest layer norm over the first 60 steps.
        note: how the verdict was reached (``sudden``: a divergence whose climb began after its deadline).
    """

    verdict: str
    step: int | None = None
    deadline: int | None = None
    layers: tuple[str, ...] = ()
    spread: float = 0.0
    note: str = ""


def _medians(values: Sequence[float], window: int = SMOOTH) -> list[float]:
    out, kept = [], []
    for v in values:
        if math.isfinite(v):
            kept = [*kept[1 - window :], v]
        out.append(statistics.median(kept) if kept else math.nan)
    return out


def _norms(trace: Trace) -> dict[int, float]:
    """Total norm per step, fp16 overflow steps left out."""
    return {
        r.step: r.total_norm for r, skip in zip(trace.records, overflow_steps(trace.records)) if not skip and r.finite
    }


def first_nonfinite(trace: Trace) -> int | None:
    """The first step with a non-finite loss or gradient (fp16 overflow steps skipped by the scaler excepted)."""
    skipped = {r.step for r, skip in zip(trace.records, overflow_steps(trace.records)) if skip}
    steps = [r.step for r in trace.records if not r.finite and r.step not in skipped]
    steps += [s for s, v in enumerate(trace.losses) if not math.isfinite(v) and s not in skipped]
    return min(steps) if steps else None


def _climb_start(trace: Trace, n: int, norms: dict[int, float]) -> int | None:
    """The first step of a climb among the ``CLIMB_LOOKBACK`` steps before ``n``, if any."""
    smooth = _medians(trace.losses[:n])
    begin = max(0, n - CLIMB_LOOKBACK)
    before = [norms[s] for s in range(begin) if s in norms] or [norms[s] for s in range(min(2, n)) if s in norms]
    reference = statistics.median(before) if before else None
    start = statistics.median(trace.losses[:SMOOTH]) if n >= SMOOTH else math.nan
    for t in range(begin, n):
        best = min((v for v in smooth[: max(t - 1, 0) + 1] if math.isfinite(v)), default=math.nan)
        loss = trace.losses[t]
        near_zero = math.isfinite(start) and loss < NEAR_ZERO * start  # noise of a converged loss, not a climb
        if t > 0 and math.isfinite(best) and loss >= 2.0 * best and not near_zero:
            return t
        if reference and norms.get(t, 0.0) >= 10.0 * reference:
            return t
    return None


def _divergence_mark(trace: Trace, norms: dict[int, float]) -> int | None:
    """The first step from which the loss stays far above its best or its start while the norm climbs."""
    losses = trace.losses
    if len(losses) < SMOOTH:
        return None
    smooth = _medians(losses)
    norm_smooth = _medians([norms.get(s, math.nan) for s in range(len(losses))])
    start = statistics.median(losses[:SMOOTH])
    up: list[bool] = []
    best, norm_at_best = math.inf, math.nan
    for t, s in enumerate(smooth):
        n = norm_smooth[t]
        climbed = False
        if t >= SMOOTH and math.isfinite(s):
            ten_x = s >= DIVERGED_LOSS_FACTOR * best and (
                s > start or (s >= NEAR_ZERO * start and n >= DIVERGED_LOSS_FACTOR * norm_at_best)
            )
            three_x = s >= DIVERGED_START_FACTOR * start and n >= 3 * norm_at_best
            climbed = ten_x or three_x
        up.append(climbed)
        if math.isfinite(s) and s < best:
            best, norm_at_best = s, n
    for t in range(len(up)):
        if up[t] and all(up[t : t + DIVERGED_SUSTAIN]):
            return t
    return None


def layer_spread(trace: Trace) -> float:
    """Median over the first 60 steps of the decades between the largest and smallest layer norm (normalisation
    layers left out, layers with exactly zero gradient too: they are dead, not small)."""
    spreads = []
    for r in trace.records[:EARLY_STEPS]:
        norms = [g for name, g in zip(r.layers, r.grad_norm) if name not in trace.exempt and g > 0 and math.isfinite(g)]
        if len(norms) >= 2:
            spreads.append(math.log10(max(norms) / min(norms)))
    return statistics.median(spreads) if spreads else 0.0


def dead_layers(trace: Trace) -> tuple[int, tuple[str, ...]] | None:
    """The layers whose gradient is exactly zero from some step to the run's end, at least ``DEAD_STEPS`` steps
    (never coming back: a layer used on some steps only is not dead), and the first step of the earliest such run."""
    since: dict[str, int] = {}  # layer -> first step of its current run of zeros
    for r in trace.records:
        if r.step < len(trace.losses) and trace.losses[r.step] == 0.0:
            continue  # a model that fits its batch exactly has zero gradients: that is convergence
        for name, g in zip(r.layers, r.grad_norm):
            if name in trace.exempt:
                continue
            if g == 0.0:
                since.setdefault(name, r.step)
            else:
                since.pop(name, None)
    last = trace.records[-1].step if trace.records else 0
    dead = {n: s for n, s in since.items() if last - s + 1 >= DEAD_STEPS}
    if not dead:
        return None
    return min(dead.values()), tuple(n for n in trace.layer_names if n in dead)


def first_layer(trace: Trace) -> str:
    """The model's first watched layer that is not a normalisation layer."""
    return next(n for n in trace.layer_names if n not in trace.exempt)


def outcome(trace: Trace) -> Outcome:
    """The run's verdict, from what its loss and gradients did (see the module docstring)."""
    norms = _norms(trace)
    spread = layer_spread(trace)
    n = first_nonfinite(trace)
    if n is not None:
        climb = _climb_start(trace, n, norms)
        if climb is None:
            return Outcome("nonfinite", n, n, spread=spread, note="no climb before it")
        if climb > n - 2:
            return Outcome("diverged", n, n - 1, spread=spread, note="sudden")
        return Outcome("diverged", n, n - 2, spread=spread, note="NaN")
    mark = _divergence_mark(trace, norms)
    if mark is not None:
        return Outcome("diverged", mark, mark, spread=spread, note="loss mark")
    dead = dead_layers(trace)
    if dead is not None:
        return Outcome("dead", dead[0], dead[0] + EARLY_STEPS, dead[1], spread)
    losses = [v for v in trace.losses if math.isfinite(v)]
    if len(losses) >= 2 * SMOOTH:
        start = statistics.median(losses[:SMOOTH])
        end = statistics.median(losses[-20:])
        if end >= NEVER_LEARNED_FRACTION * start and spread >= SPREAD_DECADES:
            deadline = EARLY_STEPS if spread >= DEADLINE_DECADES else len(trace.losses) - 1
            return Outcome("never_learned", 0, deadline, (first_layer(trace),), spread)
    return Outcome("healthy", spread=spread)
