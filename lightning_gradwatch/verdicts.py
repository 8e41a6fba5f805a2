"""A run's verdict, and the exit code of ``gradwatch check`` that follows from the verdicts of all runs.

| verdict | the run | exit code |
|---|---|---|
| ``healthy`` | finished, no alert of a ``fail_on`` kind | 0 |
| ``alerts`` | an alert of a ``fail_on`` kind (or a notice, when its kind is one), finished or not | 1 |
| ``unfinished`` | no ``gradwatch.json``, or one still saying ``"running"`` (killed) | 3 |
| ``interrupted`` | Ctrl+C or SIGTERM ended training | 3 |
| ``failed`` | an exception ended training | 3 |
| ``unmeasured`` | finished, but GradWatch measured no optimizer step: nothing was judged | 3 |
| ``unreadable`` | its ``gradwatch.json`` or an event file is corrupt, truncated or cannot be read | 2 |

The exit code is the most serious verdict's: 2 (an unreadable run: the gate cannot vouch for what it could not read)
wins over 1, which wins over 3; ``allow_unfinished`` turns 3 into 0.

A notice (``clipping``: clipping that hides a failing run; ``new_data``: the loss jumped at once and stayed up with
new data) fails the gate only when its kind is among ``fail_on`` (``gradwatch check --fail-on
exploding,nonfinite,clipping``); by default it is said, never failed on.

Example:
    >>> from pathlib import Path
    >>> from lightning_gradwatch.runs import RunRecord
    >>> runs = [RunRecord(Path("a"), "json", status="finished"), RunRecord(Path("b"), "json", unreadable="bad JSON")]
    >>> [verdict(run, {"nonfinite"}) for run in runs]
    ['healthy', 'unreadable']
    >>> gate(runs, {"nonfinite"}).code
    2
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lightning_gradwatch import _names as names
from lightning_gradwatch.alerts import ALERT_KINDS, CLIPPING_NOTICE, NEW_DATA_NOTICE
from lightning_gradwatch.runs import RunRecord

__all__ = [
    "EXIT_ALERT",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_UNFINISHED",
    "GATE_KINDS",
    "NOTICE_KINDS",
    "RESULTS",
    "UNFINISHED_VERDICTS",
    "VERDICTS",
    "Gate",
    "counted_alerts",
    "entry_kind",
    "failing_alerts",
    "fails_gate",
    "first_line",
    "gate",
    "gate_line",
    "reason",
    "resumed_at",
    "run_facts",
    "verdict",
    "where",
]

EXIT_OK, EXIT_ALERT, EXIT_ERROR, EXIT_UNFINISHED = 0, 1, 2, 3
#: Kinds of notice a run can say (``notices`` in ``gradwatch.json``): never failed on unless asked for.
NOTICE_KINDS: tuple[str, ...] = (CLIPPING_NOTICE, NEW_DATA_NOTICE)
#: Every kind ``fail_on`` may name: the alert kinds (the default) and the notice kinds.
GATE_KINDS: tuple[str, ...] = (*ALERT_KINDS, *NOTICE_KINDS)
#: Verdicts of runs the gate cannot vouch for: they did not finish (by ``status``; ``None``: no ``gradwatch.json``),
#: or finished without a measured step.
UNFINISHED_VERDICTS = ("unfinished", "interrupted", "failed", "unmeasured")
VERDICTS = ("healthy", "alerts", *UNFINISHED_VERDICTS, "unreadable")
#: ``gradwatch check --format json``'s ``result`` for each exit code.
RESULTS = {EXIT_OK: "pass", EXIT_ALERT: "fail", EXIT_ERROR: "unreadable", EXIT_UNFINISHED: "unfinished"}
_ERROR_WIDTH = 160
_WHY = {
    "unfinished": "training did not finish (killed, or still running)",
    "interrupted": "training was interrupted (Ctrl+C or SIGTERM)",
    "failed": "training ended with an exception",
    "unmeasured": "GradWatch measured no optimizer step, so nothing was judged: no training batch ran (an empty"
    " dataloader, limit_train_batches=0), or, under manual optimization, the torch optimizer inside"
    " self.optimizers() was stepped instead of the one it returns",
}


def failing_alerts(run: RunRecord, fail_on: set[str]) -> list[dict[str, Any]]:
    """The run's alerts of a ``fail_on`` kind, then its notices of one (a notice kind named in ``fail_on``)."""
    return [a for a in (*run.alerts, *run.notices) if a["kind"] in fail_on]


def counted_alerts(run: RunRecord, fail_on: set[str]) -> list[dict[str, Any]]:
    """What a run's verdict counts as its alerts, in step order: every alert, and each notice of a ``fail_on`` kind."""
    notices = [n for n in run.notices if n["kind"] in fail_on]
    return sorted([*run.alerts, *notices], key=lambda entry: entry["step"])


def entry_kind(entry: dict[str, Any]) -> str:
    """An alert's kind (``exploding``), or a notice's (``clipping notice``)."""
    return f"{entry['kind']} notice" if entry["kind"] in NOTICE_KINDS else str(entry["kind"])


def verdict(run: RunRecord, fail_on: set[str]) -> str:
    """A run's verdict: ``unreadable``, else ``alerts`` (of a ``fail_on`` kind), else ``healthy`` or why not.

    Example:
        >>> from pathlib import Path
        >>> verdict(RunRecord(Path("run"), "json", status="finished"), {"nonfinite"})
        'healthy'
        >>> verdict(RunRecord(Path("run"), "events"), {"nonfinite"})  # no gradwatch.json: killed, or still running
        'unfinished'
    """
    if run.unreadable is not None:
        return "unreadable"
    if failing_alerts(run, fail_on):
        return "alerts"
    if run.finished:
        return "unmeasured" if run.source == "json" and run.steps.get("measured") == 0 else "healthy"
    if run.status in ("interrupted", "failed"):
        return run.status
    return "unfinished"


def fails_gate(run_verdict: str, allow_unfinished: bool) -> bool:
    """Whether a run with this verdict makes the check fail."""
    if run_verdict in UNFINISHED_VERDICTS:
        return not allow_unfinished
    return run_verdict != "healthy"


@dataclass(frozen=True)
class Gate:
    """The check's outcome: its exit ``code`` and how many runs have each verdict (``counts``)."""

    code: int
    counts: dict[str, int]

    @property
    def result(self) -> str:
        """``pass``, ``fail``, ``unreadable`` or ``unfinished``."""
        return RESULTS[self.code]


def gate(runs: Iterable[RunRecord], fail_on: set[str], allow_unfinished: bool = False) -> Gate:
    """The exit code that follows from every run's verdict (2 wins over 1, 1 over 3), with the count of each verdict."""
    verdicts = [verdict(run, fail_on) for run in runs]
    counts = {v: verdicts.count(v) for v in VERDICTS}
    if counts["unreadable"]:
        return Gate(EXIT_ERROR, counts)
    if counts["alerts"]:
        return Gate(EXIT_ALERT, counts)
    if not allow_unfinished and any(counts[v] for v in UNFINISHED_VERDICTS):
        return Gate(EXIT_UNFINISHED, counts)
    return Gate(EXIT_OK, counts)


def reason(run: RunRecord, run_verdict: str) -> str:
    """Why a run is unreadable or did not finish, in one line."""
    if run_verdict == "unreadable":
        return run.unreadable or "cannot be read"
    if run_verdict == "unmeasured":
        return _WHY[run_verdict]
    if run.status is None:
        return "no gradwatch.json (killed before writing it, or it could not be written, or was not copied)"
    if run.status == "running":
        return 'gradwatch.json still says "running" (the process was killed, or is still training)'
    if run.status not in ("interrupted", "failed"):
        return f"unknown status {run.status!r} in gradwatch.json"
    error = first_line(run.error or "").rstrip(": ")
    if len(error) > _ERROR_WIDTH:
        error = error[: _ERROR_WIDTH - 3] + "..."
    return _WHY[run_verdict] + (f": {error}" if error else "")


def first_line(text: str) -> str:
    """The first line of ``text`` (stripped), or ``""``."""
    return text.strip().splitlines()[0] if text.strip() else ""


def gate_line(outcome: Gate, n_runs: int, fail_on: set[str], allow_unfinished: bool) -> str:
    """The check's outcome in one line: ``PASS: 0 of 3 run(s) with alerts (failing kinds: ...); did not finish: ...``.

    Example:
        >>> gate_line(Gate(1, {"alerts": 1, "unfinished": 0, "interrupted": 0, "failed": 0, "unreadable": 0}), 2,
        ...           {"nonfinite"}, False)
        'FAIL: 1 of 2 run(s) with alerts (failing kinds: nonfinite)'
    """
    counts = outcome.counts
    line = f"{outcome.result.upper()}: {counts['alerts']} of {n_runs} run(s) with alerts"
    line += f" (failing kinds: {', '.join(sorted(fail_on))})"
    allowed = " (allowed by --allow-unfinished)" if allow_unfinished else ""
    unfinished = [f"{counts[v]} {v}" for v in UNFINISHED_VERDICTS if v != "unmeasured" and counts.get(v)]
    if unfinished:
        line += f"; did not finish: {', '.join(unfinished)}{allowed}"
    if counts.get("unmeasured"):
        line += f"; no step measured: {counts['unmeasured']}{allowed}"
    if counts["unreadable"]:
        line += f"; could not be read: {counts['unreadable']}"
    return line


def where(alert: dict[str, Any]) -> str:
    """Where an alert fired: ``step 12``, or ``step 12 (optimizer 1)``."""
    optimizer = alert.get("optimizer") or 0
    return f"step {alert['step']}" + (f" (optimizer {optimizer})" if optimizer else "")


def _count(number: int, thing: str) -> str:
    """``"1 layer"``, ``"3 layers"``."""
    return f"{number} {thing}{'' if number == 1 else 's'}"


def run_facts(run: RunRecord, run_verdict: str, status: bool = False) -> list[str]:
    """What ``gradwatch check`` says about a run after its verdict, and the HTML report with it.

    Its layers, steps, fits, the alerts of an earlier run it resumed after, the steps a response skipped or
    clipped, how it ended (only for a run with alerts that did not finish, unless ``status``: always), a half
    record.
    """
    last = run.steps.get("last")
    facts = [_count(len(run.layers), "layer")]
    if isinstance(last, int):
        facts.append(_count(last + 1, "step"))
    resumed = resumed_at(run)
    if resumed is not None:
        facts.append(f"resumed at step {resumed}: steps {resumed}-{last} written here")
    if len(run.fits) > 1:
        facts.append(f"{len(run.fits)} fits")
    if run.earlier_alerts:
        facts.append(f"resumed after {len(run.earlier_alerts)} alert(s) of an earlier run, judged there")
    facts += _responded(run)
    if status or (run_verdict == "alerts" and not run.finished):
        facts.append(run.status or "no gradwatch.json")
    if run.partial:
        facts.append(run.partial)
    if run.earlier_logs:
        facts.append(run.earlier_logs)
    return facts


def _responded(run: RunRecord) -> list[str]:
    """The steps a response skipped or clipped, and where a stop ended training (a healthy verdict says so).

    Of a run resumed from a checkpoint in another directory, only those after the resume: the checkpoint's counts
    are the earlier run's.
    """
    facts = []
    before = run.events_restored if resumed_at(run) is not None else {}
    for event, what in ((names.SKIPPED_STEPS, "skipped"), (names.CLIPPED_STEPS, "clipped")):
        count = run.events.get(event, 0) - before.get(event, 0)
        if isinstance(count, int) and count > 0:
            facts.append(f"{count} step{'s' * (count != 1)} {what}")
    stopped = run.fits[-1].get("stopped_at") if run.fits else None  # how the run ended: its last fit
    if stopped is not None:
        facts.append(f"stopped by GradWatch at step {stopped}")
    return facts


def resumed_at(run: RunRecord) -> int | None:
    """The step a run resumed from a checkpoint at, when it began in another directory (its record counts from 0)."""
    first_fit = run.fits[0].get("first_step") if run.fits else None
    first = run.steps.get("first")
    if isinstance(first_fit, int) and isinstance(first, int) and first_fit > first:
        return first_fit
    return None
