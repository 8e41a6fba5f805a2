"""The record of one run directory across its fits, and of the alerts a resumed checkpoint brought with it.

A *run* is a log directory (where ``gradwatch.json`` goes). Its record must say everything that happened there, so
that ``gradwatch check`` judges the whole:

- **Several fits, one record.** A second ``trainer.fit`` on the same Trainer (or any later fit writing into the same
  directory) continues the run: its fits are listed one after another (``fits``: first and last step, status), and
  the alerts of every fit stay in ``alerts``. A fit by another process that writes into a directory holding an
  earlier ``gradwatch.json`` (a logger with a fixed version, a job re-run in place) takes that record's fits and
  alerts over when it resumes (its first step is past 0), so nothing earlier is lost when the file is rewritten. One
  that trains from step 0 is a new run in an old directory (``logger=False`` runs all share ``default_root_dir``): it
  starts a new record, and the earlier one is kept beside it as ``gradwatch.previous.json``.
- **Its own logs.** A record that begins at step 0 notes the wall time of that step (``logs_since``): GradWatch's
  event values written before it in the directory's event files are an earlier run's (a job re-run in place, with
  or without a record of its own), and readers leave them out.
- **Alerts counted once.** A run resumed from a checkpoint into a *new* directory gets the checkpoint's alerts back in
  ``GradWatch.alerts`` (its history is kept), but they happened in the earlier run and are judged there: this record
  lists them under ``earlier_alerts``, apart from ``alerts``.

Example:
    >>> from lightning_gradwatch.alerts import GradientAlert
    >>> ledger = RunLedger()
    >>> ledger.begin_fit(None)  # a first fit: nothing to continue
    False
    >>> ledger.saw(0); ledger.saw(15)
    >>> ledger.end_fit("finished")
    >>> ledger.begin_fit(None)  # the same directory again: the run goes on
    True
    >>> ledger.carry([GradientAlert("nonfinite", 5, ("fc",), 1.0, 0.0, "NaN")])  # from a checkpoint of another run
    >>> ledger.saw(16)
    >>> [(f["first_step"], f["last_step"], f["status"]) for f in ledger.to_report()["fits"]]
    [(0, 15, 'finished'), (16, 16, 'running')]
    >>> [a["step"] for a in ledger.to_report()["earlier_alerts"]]
    [5]
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.kinds import RunStatus
from lightning_gradwatch.report import REPORT_FILE, read_report, wall_time, write_report

__all__ = ["MAX_ALERTS_KEPT", "PREVIOUS_REPORT_FILE", "RunLedger", "alert_key"]

#: where an earlier run's record goes when a new run, trained from step 0, starts in its directory
PREVIOUS_REPORT_FILE = "gradwatch.previous.json"

MAX_ALERTS_KEPT = 1000  # per run: the first ones are kept (the first failure matters most), the rest counted
_UNSET = object()  # no fit yet: the first directory is never a continuation


def alert_key(alert: Mapping[str, Any]) -> tuple[Any, ...]:
    """What tells two records of one alert apart from two alerts: kind, step, optimizer and layers."""
    return (str(alert.get("kind")), alert.get("step"), alert.get("optimizer") or 0, tuple(alert.get("layers") or ()))


class RunLedger:
    """The fits and alerts of the run directory a session writes to (see the module docstring)."""

    def __init__(self) -> None:
        self.directory: Any = _UNSET
        self.owner: Any = None
        self._reset()

    def _reset(self) -> None:
        self.fits: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []  # alerts that happened in this directory, in order
        self.earlier: list[dict[str, Any]] = []  # alerts a checkpoint brought from another run
        self.notices: list[dict[str, Any]] = []  # what GradWatch said once that is no alert (clipping held a run back)
        self.unreadable: str | None = None  # why an earlier gradwatch.json could not be taken over
        self.logs_since: float | None = None  # wall time of the record's step 0 (its own logs are written after it)
        self.events_before: dict[str, int] | None = None  # the run's event counts when this record began
        self._taken_over: dict[str, Any] | None = None  # the record taken over, until this run's first step

    def begin_fit(
        self, directory: str | os.PathLike[str] | None, owner: Any = None, read_earlier: bool = False
    ) -> bool:
        """A fit begins writing to ``directory``; returns whether it continues the run of the previous fit.

        A fit into another directory starts a new record; with ``read_earlier`` (the process that writes the
        report), an earlier ``gradwatch.json`` found there is taken over. Fits that write no report (no directory)
        continue a run only under the same ``owner`` (the same Trainer).
        """
        directory = None if directory is None else os.fspath(directory)
        continuing = directory == self.directory and (directory is not None or owner == self.owner)
        self.owner = owner
        if not continuing:
            self._reset()
            self.directory = directory
            if read_earlier and directory is not None:
                self._take_over(Path(directory) / REPORT_FILE)
        self.fits.append({"first_step": None, "last_step": None, "status": str(RunStatus.RUNNING)})
        return continuing

    def _take_over(self, path: Path) -> None:
        if not path.is_file():
            return
        try:
            doc = read_report(path)
        except (OSError, ValueError) as err:
            self.unreadable = str(err)
            return
        fits = doc.get("fits")
        if not isinstance(fits, list):  # a report from before several fits were recorded: one fit
            steps = doc.get("steps") if isinstance(doc.get("steps"), dict) else {}
            fits = [{"first_step": steps.get("first"), "last_step": steps.get("last"), "status": doc.get("status")}]
        self.fits = _records(fits)
        self.alerts = _records(doc.get("alerts", []))
        self.earlier = _records(doc.get("earlier_alerts", []))
        self.notices = _records(doc.get("notices", []))
        self.logs_since = wall_time(doc.get("logs_since"))
        self.events_before = _counts(doc.get("events_restored"))  # a record that had none counted from its start
        self._taken_over = doc

    def counts_at_start(self, events: Mapping[str, int]) -> None:
        """The run's event counts before the current step; kept when this record has none yet (its first step).

        A run resumed from a checkpoint into a new directory brings the counts of the steps before it; what the
        record says was skipped or clipped here is the difference.
        """
        if self.events_before is None:
            self.events_before = {str(k): int(v) for k, v in events.items()}

    def saw(self, step: int) -> None:
        """The current fit measured ``step``."""
        fit = self.fits[-1]
        if fit["first_step"] is None:
            fit["first_step"] = step
        fit["last_step"] = step

    def stepped(self, step: int) -> str | None:
        """The current fit reached ``step`` (measured or not); returns what to say when a new record was started.

        At the first step after taking an earlier record over: a fit that trains from step 0 is another run, so the
        record starts anew and the earlier one is kept as :data:`PREVIOUS_REPORT_FILE`. Decided at the first step
        whether it is measured or not (an fp16 overflow at step 0 is still step 0).
        """
        earlier, self._taken_over = self._taken_over, None
        said = self._start_over(earlier) if earlier is not None and step == 0 else None
        if step == 0 and self.logs_since is None and len(self.fits) == 1:  # before the step writes anything
            self.logs_since = time.time()
        return said

    def _start_over(self, earlier: dict[str, Any]) -> str | None:
        """Keep the earlier run's record as :data:`PREVIOUS_REPORT_FILE` and start a new one with the current fit."""
        directory = Path(self.directory)
        try:
            kept = write_report(directory, earlier, PREVIOUS_REPORT_FILE)
        except OSError as err:  # the earlier record cannot be kept apart: it stays part of this one
            return f"GradWatch: could not keep the earlier run's record apart ({err}); it stays in {REPORT_FILE}."
        fits, alerts = len(self.fits) - 1, len(self.alerts)
        self.fits, self.alerts, self.earlier, self.notices = self.fits[-1:], [], [], []
        self.logs_since = self.events_before = None  # the earlier run's: this one's are noted at its first step
        return (
            f"GradWatch: {directory} held the record of an earlier run ({fits} fit(s), {alerts} alert(s)); this fit"
            f" trains from step 0, so it starts a new record. The earlier one is kept as {kept}."
        )

    def record(self, alert: GradientAlert) -> bool:
        """An alert happened in this run; returns whether it is kept (the first :data:`MAX_ALERTS_KEPT` are).

        One this run already recorded (a fit resumed in place from a checkpoint taken before it replays its steps, and
        the alert fires again at the same step) is kept once.
        """
        entry = alert.to_dict()
        key = alert_key(entry)
        if any(alert_key(a) == key for a in self.alerts):
            return True
        if len(self.alerts) >= MAX_ALERTS_KEPT:
            return False
        self.alerts.append(entry)
        return True

    def note(self, kind: str, step: int, message: str, optimizer: int = 0) -> None:
        """A notice was said at ``step`` (no alert: ``gradwatch check`` fails on it only when asked, ``--fail-on``)."""
        self.notices.append({"kind": kind, "step": step, "optimizer": optimizer, "message": message})

    def carry(self, alerts: Iterable[GradientAlert]) -> None:
        """A checkpoint brought these alerts; those this run did not record happened in the run it came from."""
        here = {alert_key(a) for a in self.alerts}
        known = here | {alert_key(a) for a in self.earlier}
        for alert in alerts:
            entry = alert.to_dict()
            if alert_key(entry) not in known:
                self.earlier.append(entry)
                known.add(alert_key(entry))

    def stopped(self, step: int) -> None:
        """A ``"stop"`` response ended the current fit at ``step`` (its ``stopped_at``)."""
        if self.fits:
            self.fits[-1]["stopped_at"] = step

    def end_fit(self, status: RunStatus | str, error: str | None = None) -> None:
        """The current fit ended."""
        if self.fits:
            self.fits[-1]["status"] = str(status)
            if error:
                self.fits[-1]["error"] = error
            else:  # a loop that caught a step's exception and went on to its end
                self.fits[-1].pop("error", None)

    def drop_fit(self) -> None:
        """Forget the current fit: it trained nothing of the run (a learning-rate or batch-size search's fit)."""
        if self.fits:
            self.fits.pop()

    def to_report(self) -> dict[str, Any]:
        """The record's part of ``gradwatch.json``: its fits, alerts, earlier alerts, notices and event counts.

        ``events_restored``: the run's event counts when the record began (a checkpoint's, resumed into a new
        directory); ``logs_since`` only for a record that began at step 0.
        """
        since = {} if self.logs_since is None else {"logs_since": self.logs_since}
        return {
            "fits": [dict(f) for f in self.fits],
            "alerts": list(self.alerts),
            "earlier_alerts": list(self.earlier),
            "notices": list(self.notices),
            "events_restored": dict(self.events_before or {}),
            **since,
        }


def _counts(value: Any) -> dict[str, int]:
    """Event counts read back from ``gradwatch.json`` (anything else: none)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def _records(items: Any) -> list[dict[str, Any]]:
    """The records (dicts) of a list read back from ``gradwatch.json``, copied; anything else is dropped."""
    return [dict(item) for item in items if isinstance(item, dict)] if isinstance(items, list) else []
