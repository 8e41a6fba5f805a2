"""Score detectors on recorded bank traces, against each run's outcome; per-group and leave-one-family-out tables.

A *detector factory* is a callable taking detection constants (keyword arguments) and returning a *maker*: a
callable that, given a run's exempt layers, builds a fresh detector with ``observe_loss(loss)`` and
``update(step, stats) -> verdict`` (``verdict.alerts``). The replay feeds it as GradWatch's engine does
(``gradwatch_adapter.replay``).

Scoring a run against its outcome (``bank_outcome.outcome``):

- healthy: any alert is a false alarm (counted, and separately when it is an exploding alert);
- diverged: the first exploding alert at or before the deadline, and no vanishing alert before it;
- nonfinite: the non-finite alert at the first non-finite step and no alert before it;
- never_learned: a vanishing alert at or before the deadline naming the first layer, no exploding alert before;
- dead: an alert naming the dead layers dead at or before the deadline (a vanishing one, or an exploding one by the
  kill rule: a blow-up that killed them), naming every dead layer, and no other exploding alert before.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bank_outcome import Outcome
from bank_runs import Trace, optimizer_class
from gradwatch_adapter import DetectorMaker, replay

Alert = tuple[str, int, tuple[str, ...], str]  # kind, step, layers, the rule that found it
Factory = Callable[..., DetectorMaker]

KILL = "kill"  # the exploding rule that names layers a blow-up killed: a dead run's diagnosis too
FALSE_ALARM_COST = 3  # a false alarm costs this many missed or late alerts when constants are chosen


@dataclass(frozen=True)
class Score:
    """One run judged: ``status`` is ``ok``, ``false alarm``, ``late``, ``missed``, ``vanishing first``,
    ``exploding first``, ``wrong layers`` or ``alert before``."""

    name: str
    verdict: str
    status: str
    first: int | None  # the step of the alert that counts (or of the first false alarm)
    deadline: int | None
    exploding_false_alarm: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def alerts_of(trace: Trace, maker: DetectorMaker, current: bool = True) -> list[Alert]:
    """The alerts ``maker``'s detector gives on ``trace`` (``current``: told each step's own loss, else the previous
    batch's)."""
    found = replay(trace.records, maker(trace.exempt, optimizer_class(trace.spec.optimizer)), current)
    return [(a.kind, a.step, tuple(a.layers), str(a.extra.get("rule", ""))) for a in found]


def judge(name: str, out: Outcome, alerts: Sequence[Alert]) -> Score:
    """Score one run's alerts against its outcome."""
    v, deadline = out.verdict, out.deadline
    if v == "healthy":
        if not alerts:
            return Score(name, v, "ok", None, None)
        return Score(name, v, "false alarm", alerts[0][1], None, any(a[0] == "exploding" for a in alerts))
    assert deadline is not None
    if v == "nonfinite":
        before = [a for a in alerts if a[1] < (out.step or 0)]
        if before:
            return Score(name, v, "alert before", before[0][1], deadline, before[0][0] == "exploding")
        hit = next((a for a in alerts if a[0] == "nonfinite"), None)
        if hit is None or hit[1] != out.step:
            return Score(name, v, "missed", None if hit is None else hit[1], deadline)
        return Score(name, v, "ok", hit[1], deadline)
    wanted, other = ("exploding", "vanishing") if v == "diverged" else ("vanishing", "exploding")
    # the diagnosis wanted: its kind, or for a dead run also the kill rule's exploding alert naming the killed layers
    hits = [a for a in alerts if a[0] == wanted or (v == "dead" and a[3] == KILL)]
    hit = next(iter(hits), None)
    wrong = next((a for a in alerts if a[0] == other and a not in hits), None)
    if wrong is not None and (hit is None or wrong[1] < hit[1]) and wrong[1] <= deadline:
        return Score(name, v, f"{other} first", wrong[1], deadline)
    if hit is None:
        return Score(name, v, "missed", None, deadline)
    if hit[1] > deadline:
        return Score(name, v, "late", hit[1], deadline)
    if v in ("never_learned", "dead") and not set(out.layers) <= set(hit[2]):
        return Score(name, v, "wrong layers", hit[1], deadline)
    return Score(name, v, "ok", hit[1], deadline)


def evaluate(
    traces: Mapping[str, Trace], outcomes: Mapping[str, Outcome], maker: DetectorMaker, current: bool = True
) -> dict[str, Score]:
    return {name: judge(name, outcomes[name], alerts_of(t, maker, current)) for name, t in traces.items()}


# ---------------------------------------------------------------------------------------------------------- tables

VERDICTS = ("diverged", "nonfinite", "never_learned", "dead")


def _ratio(scores: list[Score], verdict: str) -> str:
    part = [s for s in scores if s.verdict == verdict]
    return f"{sum(s.ok for s in part)}/{len(part)}" if part else "-"


def group_table(scores: Mapping[str, Score], group_of: Callable[[str], str], title: str) -> list[str]:
    """Markdown: per group, runs, false alarms on healthy runs (any / exploding), each verdict caught in time."""
    groups: dict[str, list[Score]] = {}
    for name, s in scores.items():
        groups.setdefault(group_of(name), []).append(s)
    lines = [
        f"| {title} | runs | healthy | false alarms (any) | false alarms (exploding) | diverged caught in time |"
        " NaN batch at its step | never learned caught in time | dead named |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [*sorted(groups.items()), ("**all**", [s for v in groups.values() for s in v])]
    for group, part in rows:
        healthy = [s for s in part if s.verdict == "healthy"]
        alarms = sum(not s.ok for s in healthy)
        exploding = sum(s.exploding_false_alarm for s in healthy)
        cells = " | ".join(_ratio(part, v) for v in VERDICTS)
        lines.append(f"| {group} | {len(part)} | {len(healthy)} | {alarms} | {exploding} | {cells} |")
    return lines


def cost(scores: Iterable[Score]) -> int:
    """What choosing constants minimises: false alarms weigh ``FALSE_ALARM_COST``, misses and late alerts 1."""
    total = 0
    for s in scores:
        if s.ok:
            continue
        total += FALSE_ALARM_COST if s.verdict == "healthy" or s.status == "alert before" else 1
    return total


def grid(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``space``'s values, in order (the first values first)."""
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


@dataclass
class Fold:
    family: str
    constants: dict[str, Any]
    scores: list[Score]


def leave_one_family_out(
    traces: Mapping[str, Trace],
    outcomes: Mapping[str, Outcome],
    factory: Factory,
    space: Mapping[str, Sequence[Any]],
    family_of: Callable[[str], str],
    current: bool = True,
) -> list[Fold]:
    """For each family, the constants (from ``space``) of least cost on all other families, scored on it."""
    configs = grid(space)
    per_config = [evaluate(traces, outcomes, factory(**c), current) for c in configs]
    families = sorted({family_of(n) for n in traces})
    folds = []
    for family in families:
        costs = [cost(s for n, s in scores.items() if family_of(n) != family) for scores in per_config]
        best = min(range(len(configs)), key=lambda i: (costs[i], i))
        chosen = per_config[best]
        folds.append(Fold(family, configs[best], [s for n, s in chosen.items() if family_of(n) == family]))
    return folds


def lofo_table(folds: list[Fold], space: Mapping[str, Sequence[Any]]) -> list[str]:
    varied = [k for k, v in space.items() if len(v) > 1]
    lines = [
        "| left-out family | constants chosen on the others | runs | false alarms (any) | false alarms (exploding) |"
        " diverged caught in time | NaN batch at its step | never learned caught in time | dead named |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    every: list[Score] = []
    for f in folds:
        every += f.scores
        healthy = [s for s in f.scores if s.verdict == "healthy"]
        chosen = ", ".join(f"{k}={f.constants[k]:g}" for k in varied) or "(none varied)"
        cells = " | ".join(_ratio(f.scores, v) for v in VERDICTS)
        lines.append(
            f"| {f.family} | {chosen} | {len(f.scores)} | {sum(not s.ok for s in healthy)} |"
            f" {sum(s.exploding_false_alarm for s in healthy)} | {cells} |"
        )
    healthy = [s for s in every if s.verdict == "healthy"]
    cells = " | ".join(_ratio(every, v) for v in VERDICTS)
    lines.append(
        f"| **all (each family left out)** | | {len(every)} | {sum(not s.ok for s in healthy)} |"
        f" {sum(s.exploding_false_alarm for s in healthy)} | {cells} |"
    )
    return lines


def failures(scores: Mapping[str, Score]) -> list[str]:
    """One line per run that is not ok."""
    return [
        f"- {n}: {s.verdict}, {s.status} (alert at {s.first}, deadline {s.deadline})"
        for n, s in sorted(scores.items())
        if not s.ok
    ]
