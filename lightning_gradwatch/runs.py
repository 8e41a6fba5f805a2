"""Finding GradWatch runs on disk and loading them, from ``gradwatch.json`` or from the event files alone.

A directory with neither but a CSV logger's ``metrics.csv`` holding GradWatch's columns is a run too (one killed
before its first alert, under Lightning's ``CSVLogger``): its numbers are the file's.

Event files are read record by record with their checksums verified (TensorBoard's own reader stops quietly at a
corrupt record), so a damaged file is reported instead of read as a shorter, healthy-looking run. The one exception
is the end of the file of a run that did not finish: a process killed while writing leaves half a record there,
which is what such a run looks like, not damage (:attr:`RunRecord.partial`).

A run's ``status`` (``gradwatch.json``'s ``"status"``) tells whether training finished:

- ``"finished"``: ``fit`` returned (also when GradWatch's ``stop`` response ended it early);
- ``"running"``: written while training, at each alert; a run that still says so was killed (SIGKILL, out of
  memory, a lost machine) after its last alert, or is still training;
- ``"interrupted"``: Ctrl+C or SIGTERM ended training;
- ``"failed"``: an exception ended training (``error`` says which);
- ``None``: no ``gradwatch.json`` (a run killed before its first alert, or event files copied without it).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from lightning_gradwatch._names import ALERT_DATA_FENCE, ALERTS_TAG, ALERTS_TEXT_TAG, RECORD_ELSEWHERE, TOTAL_NORM
from lightning_gradwatch.alerts import parse_alert_markdown
from lightning_gradwatch.csv_logs import CSV_FILE, CsvLogError, read_metrics_csv
from lightning_gradwatch.kinds import RunStatus
from lightning_gradwatch.report import REPORT_FILE, in_model_order, read_report
from lightning_gradwatch.report_fields import alert_entry, by_number, report_fields
from lightning_gradwatch.tfrecords import RecordFileError, read_records

__all__ = ["RunReadError", "RunRecord", "find_runs", "load_run", "read_runs"]

EVENT_FILE_MARK = "tfevents"
ALERT_TEXT_TAGS = (ALERTS_TEXT_TAG, ALERTS_TAG)
TOTAL_NORM_TAG = TOTAL_NORM
EARLIER_LOGS = "an earlier run's logs in this directory left out"
FINISHED = RunStatus.FINISHED


class RunReadError(Exception):
    """A run directory, report or event file that cannot be read; the message is one line."""


@dataclass
class RunRecord:
    """What the ``gradwatch`` command needs to know about one run.

    ``layers`` entries, in the model's order, hold ``name``, ``grad_norm`` and ``grad_to_weight`` summaries
    (``count``, ``last``, ``median``, ``min``, ``max``), ``nonfinite_steps`` and ``last_step``, the last step that
    measured the layer (from event files: logged it; ``None`` when unknown); ``total_norm`` maps ``"all"`` (or
    ``"optimizer_<i>"`` with several optimizers) to the same summary of the total norm; ``alerts`` entries hold
    ``kind``, ``step``, ``layers``, ``value``, ``threshold``, ``message`` and ``optimizer``. ``status`` is described
    in the module's docstring; ``error`` is the exception that ended a failed or interrupted run; ``partial`` names
    an event file that ends in half a record; ``unreadable`` says why the run could not be read (its other fields
    are then empty). ``history`` holds each layer's gradient norms as ``(step, norm)`` points (from
    ``gradwatch.json``: its thinned history of finite norms; from event files: every logged step), ``total_history``
    the same for each ``total_norm`` key; ``config`` is ``gradwatch.json``'s configuration (empty from event files);
    ``series`` holds every GradWatch scalar of the event files by tag (``grad_norm/<layer>``,
    ``gradwatch/total_norm``, ``gradwatch/clip_threshold``, ...) as ``(step, value)`` points, when the run was
    loaded with ``series=True``. ``fits`` lists the run's fits (``first_step``, ``last_step``, ``status``: a second
    ``trainer.fit`` continues a run), and ``status`` is the last one's; ``earlier_alerts`` are alerts a resumed
    checkpoint brought from the run they happened in (judged there, not here). ``numbers_from_events``: the report
    of an unfinished run is older than its event files (written at its last alert, say, before the run was killed),
    so its steps, layers, total norms and event counts are taken from the event files (logged steps only; its alerts
    and configuration stay the report's).
    """

    path: Path
    source: str  # "json", "events" or "csv"
    status: str | None = None
    steps: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)
    total_norm: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None
    partial: str | None = None
    unreadable: str | None = None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    total_history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    fits: list[dict[str, Any]] = field(default_factory=list)
    earlier_alerts: list[dict[str, Any]] = field(default_factory=list)
    notices: list[dict[str, Any]] = field(default_factory=list)
    numbers_from_events: bool = False
    logs_since: float | None = None
    earlier_logs: str | None = None
    events_restored: dict[str, int] = field(default_factory=dict)

    @property
    def logs_name(self) -> str:
        """What its logged values were read from, besides a record: ``"metrics.csv"`` or ``"event files"``."""
        return CSV_FILE if self.source == "csv" else "event files"

    @property
    def finished(self) -> bool:
        """Whether training ran to its end (``status == "finished"``)."""
        return self.status == FINISHED


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories under ``paths``, in a stable order.

    Each path is a run directory or any parent of runs (searched recursively), or a run's ``gradwatch.json`` or
    event file (that run only).

    Raises:
        RunReadError: a path does not exist, is another kind of file, or a directory cannot be listed.
    """
    found: list[Path] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise RunReadError(f"{raw}: no such file or directory")
        if not root.is_dir():
            if root.name != REPORT_FILE and EVENT_FILE_MARK not in root.name:
                raise RunReadError(
                    f"{raw}: not a run directory, {REPORT_FILE} or TensorBoard event file; give a run's log"
                    " directory or any parent of runs"
                )
            found.append(root.parent)
            continue

        def unreadable(err: OSError) -> None:
            raise RunReadError(f"{err.filename}: cannot list ({_one_line(err)})") from err

        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
            dirnames.sort()
            if REPORT_FILE in filenames or CSV_FILE in filenames or any(EVENT_FILE_MARK in f for f in filenames):
                found.append(Path(dirpath))
    unique = list(dict.fromkeys(found))
    return unique


def read_runs(paths: list[str], series: bool = False) -> list[RunRecord]:
    """Every run under ``paths`` (see :func:`find_runs`); a run that cannot be read is one with ``unreadable`` set.

    ``series``: keep every scalar series of the event files in :attr:`RunRecord.series` (for pictures).

    Raises:
        RunReadError: a path does not exist or cannot be listed, or no GradWatch run is found under one of them.
    """
    runs: dict[Path, RunRecord] = {}
    for raw in paths:  # each path named must hold a run: one that does not is an error, not a silent pass
        found = 0
        for directory in find_runs([raw]):
            run = runs.get(directory) or _load_or_unreadable(directory, series)
            if run is not None:
                runs[directory] = run
                found += 1
        if not found:
            raise RunReadError(f"no GradWatch run (gradwatch.json, GradWatch event files or metrics.csv) under {raw}")
    return list(runs.values())


def _load_or_unreadable(directory: Path, series: bool) -> RunRecord | None:
    """:func:`load_run`, with a run that cannot be read kept as one with ``unreadable`` set."""
    try:
        return load_run(directory, series=series)
    except RunReadError as err:
        source = (
            "json"
            if (directory / REPORT_FILE).exists()
            else "csv"
            if isinstance(err.__cause__, CsvLogError)
            else "events"
        )
        return RunRecord(directory, source, unreadable=str(err))


def load_run(directory: Path, series: bool = False) -> RunRecord | None:
    """Load one run; ``None`` for a directory of event files that GradWatch did not write.

    ``series``: keep every scalar series of the event files in :attr:`RunRecord.series`.

    Raises:
        RunReadError: the report or an event file is corrupt or unreadable (the message names the file).
    """
    report_path = directory / REPORT_FILE
    try:
        event_files = sorted(
            (p for p in directory.iterdir() if p.is_file() and EVENT_FILE_MARK in p.name), key=_in_time_order
        )
    except OSError as err:
        raise RunReadError(f"{directory}: cannot list ({_one_line(err)})") from err
    if report_path.exists():
        return _from_report_and_events(directory, report_path, event_files, series)
    if not event_files and (directory / CSV_FILE).is_file():  # a CSV logger's run, unless its record is elsewhere
        return None if (directory / RECORD_ELSEWHERE).exists() else _from_csv(directory, series)
    return _from_events(directory, event_files, series)


def _from_report_and_events(directory: Path, report_path: Path, event_files: list[Path], series: bool) -> RunRecord:
    """A run with a report: its numbers are the report's (of an unfinished run, the logs written after it too).

    The event files' checksums are verified, and the values of an earlier run in the same directory left out.
    """
    try:
        doc = read_report(report_path)
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        message = _one_line(err)
        raise RunReadError(message if str(report_path) in message else f"{report_path}: {message}") from err
    run = _from_report(directory, doc)
    since = run.logs_since
    if not run.finished:  # the report may be older than the logs: take the steps and alerts written after it
        _add_later_events(run, _from_events(directory, event_files, series, since))
    elif series:  # every checksum verified while reading
        scan = _scan_events(event_files, partial_ok=False, since=since)
        run.series = scan.series
        run.earlier_logs = EARLIER_LOGS if scan.earlier else None
    else:  # verify every checksum; the report is the source of the numbers
        scanner = _Scanner(since)
        for path in event_files:
            records, note = _read_records(path, partial_ok=since is not None)
            if since is not None and not _opened_since(path, records, since):
                scanner.take(path, records, note, partial_ok=False)  # maybe an earlier run's: its values' times tell
            elif note:
                _read_records(path, partial_ok=False)  # this run's file cut short: an error (raised)
        run.earlier_logs = EARLIER_LOGS if scanner.earlier else None
    return run


def _in_time_order(path: Path) -> tuple[int, int, int, str]:
    """Sort key of event files in the order they were opened.

    TensorBoard names them ``events.out.tfevents.<seconds>.<host>.<pid>.<n>``: by those numbers, not as text (where
    a process's 10th file sorts before its 9th).

    Example:
        >>> names = ["events.out.tfevents.1700000000.h.7.10", "events.out.tfevents.1700000000.h.7.9"]
        >>> [p.name[-4:] for p in sorted(map(Path, names), key=_in_time_order)]
        ['.7.9', '7.10']
    """
    parts = path.name.split(EVENT_FILE_MARK + ".", 1)[-1].split(".")

    def number(text: str) -> int:
        return int(text) if text.isdigit() else -1

    pid = number(parts[-2]) if len(parts) >= 3 else -1
    return number(parts[0]), pid, number(parts[-1]), path.name


def _opened_since(path: Path, records: list[bytes], since: float) -> bool:
    """Whether an event file was opened at or after ``since`` (its first record's time): all of it is this run's."""
    from tensorboard.compat.proto import event_pb2

    if not records:
        return True
    try:
        return event_pb2.Event.FromString(records[0]).wall_time >= since
    except Exception as err:
        raise RunReadError(f"{path}: corrupt event record ({_one_line(err)})") from err


def _add_later_events(run: RunRecord, logged: RunRecord | None) -> None:
    if logged is None:
        return
    run.partial = logged.partial
    run.series = logged.series
    run.earlier_logs = logged.earlier_logs
    last, logged_last = run.steps.get("last"), logged.steps.get("last")
    if isinstance(logged_last, int) and (not isinstance(last, int) or logged_last > last):
        run.steps["last"] = logged_last
        if logged.layers:  # the logs went on after the report was written: their numbers are the run's latest
            run.layers, run.total_norm, run.events = logged.layers, logged.total_norm, logged.events
            run.history, run.total_history = logged.history, logged.total_history
            run.numbers_from_events = True
    known = {(a["kind"], a["step"], a["optimizer"]) for a in run.alerts}
    run.alerts += [a for a in logged.alerts if (a["kind"], a["step"], a["optimizer"]) not in known]
    run.alerts.sort(key=lambda a: a["step"])


def _from_report(directory: Path, doc: dict[str, Any]) -> RunRecord:
    try:
        fields = report_fields(doc)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as err:
        raise RunReadError(f"{directory / REPORT_FILE}: unexpected content ({_one_line(err)})") from err
    return RunRecord(directory, "json", **fields)


# ---------------------------------------------------------------------- event files
def _read_records(path: Path, partial_ok: bool) -> tuple[list[bytes], str | None]:
    """:func:`~lightning_gradwatch.tfrecords.read_records`, its error a :class:`RunReadError`."""
    try:
        return read_records(path, partial_ok)
    except RecordFileError as err:
        raise RunReadError(str(err)) from err


def _from_events(
    directory: Path, event_files: list[Path], keep_series: bool = False, since: float | None = None
) -> RunRecord | None:
    """The run the event files hold: since ``since`` (see :func:`_scan_events`), or, without it, the latest run.

    Without a record to say where the run began, a later file whose first GradWatch step is 0 begins another run in
    the same directory (a job re-run in place from scratch); the latest is the run, and the earlier ones are said,
    not read. A run resumed in place from a checkpoint continues its steps: one run.
    """
    scan = _scan_events(event_files, since=since)
    earlier_logs = EARLIER_LOGS if scan.earlier else None
    if since is None:
        begins = _run_beginnings(scan.firsts)
        if len(begins) > 1:
            scan = _scan_events(event_files[begins[-1] :])
            runs = len(begins) - 1
            whose = "runs'" if runs > 1 else "run's"
            earlier_logs = f"{runs} earlier {whose} event files here not read"
    record = _from_series(directory, "events", scan.series, scan.orders, scan.alerts, keep_series)
    if record is not None:
        record.partial, record.earlier_logs = scan.partial, earlier_logs
    return record


def _from_series(
    directory: Path,
    source: str,
    series: dict[str, list[tuple[int, float]]],
    orders: list[tuple[str, ...]],
    alerts: list[dict[str, Any]],
    keep_series: bool,
) -> RunRecord | None:
    """A run without a record, from GradWatch's scalar series (``None``: no layer's norm and no alert in them)."""
    if not any(tag.startswith(_LAYER_NORM_PREFIX) for tag in series) and not alerts:
        return None
    layers = [_layer_from_series(name, series) for name in in_model_order(orders)]
    totals = _total_series(series)
    alerts.sort(key=lambda a: a["step"])
    total_norm = {key: _summarise(points) for key, points in sorted(totals.items(), key=by_number)}
    steps, events = _logged_steps(totals), _event_counts(series)
    history = {layer["name"]: sorted(series[_LAYER_NORM_PREFIX + layer["name"]]) for layer in layers}
    return RunRecord(
        directory,
        source,
        None,
        steps,
        layers,
        alerts,
        events,
        total_norm,
        history=history,
        total_history=totals,
        series=series if keep_series else {},
    )


def _from_csv(directory: Path, keep_series: bool = False) -> RunRecord | None:
    """The run a CSV logger's ``metrics.csv`` holds (``None``: none of GradWatch's columns in it)."""
    try:
        series, order, partial = read_metrics_csv(directory / CSV_FILE, _READ_PREFIXES, _LAYER_NORM_PREFIX)
    except CsvLogError as err:
        raise RunReadError(_one_line(err)) from err
    record = _from_series(directory, "csv", series, [order], [], keep_series)
    if record is not None:
        record.partial = partial
    return record


def _run_beginnings(firsts: list[int | None]) -> list[int]:
    """The files (indexes, in time order) that begin a run.

    The first with GradWatch values begins one, and so does each later one whose first step is 0 (a run trained
    from scratch); a file whose steps go on from any other step continues the run before it (a resume in place, even
    from a checkpoint older than the last step logged).

    Example:
        >>> _run_beginnings([0, 51, None, 0, 40, 0])  # resumed in place at 51 and at 40, two runs from step 0 between
        [0, 3, 5]
    """
    begins: list[int] = []
    for i, first in enumerate(firsts):
        if first is not None and (not begins or first == 0):
            begins.append(i)
    return begins


def _total_series(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """The total-norm series by key (``"all"``, or the suffix of ``gradwatch/total_norm/<key>``), sorted by step."""
    return {
        (tag[len(TOTAL_NORM_TAG) + 1 :] or "all"): sorted(points)
        for tag, points in series.items()
        if tag == TOTAL_NORM_TAG or tag.startswith(f"{TOTAL_NORM_TAG}/")
    }


def _logged_steps(totals: dict[str, list[tuple[int, float]]]) -> dict[str, int]:
    """First and last logged step and how many were logged (empty when none was)."""
    logged = sorted({step for points in totals.values() for step, _ in points})
    return {"first": logged[0], "last": logged[-1], "logged": len(logged)} if logged else {}


def _event_counts(series: dict[str, list[tuple[int, float]]]) -> dict[str, int]:
    """The run's event counters (running totals: the largest value logged is the count)."""
    return {
        name: int(max(v for _, v in series[f"gradwatch/{name}"]))
        for name in ("amp_overflow_steps", "skipped_steps", "spike_steps", "clipped_steps")
        if series.get(f"gradwatch/{name}")
    }


def _layer_from_series(name: str, series: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    norms = sorted(series[_LAYER_NORM_PREFIX + name])
    return {
        "name": name,
        "grad_norm": _summarise(norms),
        "grad_to_weight": _summarise(sorted(series.get(f"grad_to_weight/{name}", []))),
        "nonfinite_steps": sum(1 for _, v in norms if not math.isfinite(v)),
        "last_step": norms[-1][0] if norms else None,
    }


class _Scan(NamedTuple):
    """What the event files hold of GradWatch's (see :func:`_scan_events`)."""

    series: dict[str, list[tuple[int, float]]]
    alerts: list[dict[str, Any]]
    partial: str | None
    orders: list[tuple[str, ...]]
    firsts: list[int | None]  # each file's first step with a GradWatch value (None: it has none)
    earlier: int  # GradWatch values left out as written before ``since``


def _scan_events(event_files: list[Path], partial_ok: bool = True, since: float | None = None) -> _Scan:
    """What the event files hold of GradWatch's (see :class:`_Scan`).

    GradWatch's scalar series ``{tag: [(step, value)]}``, its alerts, a note on a file cut short, the orders, each
    file's first step and how many values were an earlier run's.

    A step writes its layers in the model's order: each distinct order of a step's ``grad_norm/<layer>`` values is
    kept (:func:`~lightning_gradwatch.report.in_model_order` puts them together). ``partial_ok``: half a record at
    the end of a file is what a killed run leaves (else it is an error). ``since``: the wall time the run's record
    began at (``gradwatch.json``'s ``logs_since``); GradWatch's values written before it are an earlier run's and
    are left out (counted).
    """
    scanner = _Scanner(since)
    for path in event_files:
        records, note = _read_records(path, partial_ok=partial_ok or since is not None)
        scanner.take(path, records, note, partial_ok)
    return _Scan(
        scanner.series, scanner.alerts, scanner.partial, scanner.orders.distinct(), scanner.firsts, scanner.earlier
    )


class _Scanner:
    """What :func:`_scan_events` gathers, file by file."""

    def __init__(self, since: float | None) -> None:
        self.since = since
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.alerts: list[dict[str, Any]] = []
        self.partial: str | None = None
        self.orders = _StepOrders()
        self.firsts: list[int | None] = []
        self.earlier = 0

    def take(self, path: Path, records: list[bytes], note: str | None, partial_ok: bool) -> None:
        """One event file's records, and the note that it ends in half a record (read with half a record allowed).

        An earlier run's file cut short (killed while writing) is none of this run's business; this run's is kept
        with its note when ``partial_ok``, else it is an error.
        """
        self.scan(path, records)
        if note and self.since is not None and self.firsts[-1] is None:
            note = None  # an earlier run's file, cut short when that run was killed: not this run's to report
        elif note and not partial_ok:
            _read_records(path, partial_ok=False)  # this run's file cut short: an error (raised)
        self.partial = self.partial or note

    def scan(self, path: Path, records: list[bytes]) -> None:
        """One event file's records."""
        from tensorboard.compat.proto import event_pb2

        first = None
        for payload in records:
            try:
                event = event_pb2.Event.FromString(payload)
            except Exception as err:
                raise RunReadError(f"{path}: corrupt event record ({_one_line(err)})") from err
            self.orders.at(event.step)
            values = [v for v in event.summary.value if v.tag.startswith(_READ_PREFIXES)]  # not other loggers'
            if values and self.since is not None and event.wall_time < self.since:  # an earlier run's
                self.earlier += len(values)
                continue
            if values and first is None:
                first = event.step
            for value in values:
                self._value(path, value, event.step)
        self.firsts.append(first)

    def _value(self, path: Path, value: Any, step: int) -> None:
        tag = value.tag
        if tag in ALERT_TEXT_TAGS:
            if value.HasField("tensor") and value.tensor.string_val:
                text = value.tensor.string_val[0].decode("utf-8", "replace")
                self.alerts.append(_alert_from_text(path, text, step))
            return
        number = _scalar(value, tag)
        if number is not None:
            points = self.series.get(tag)
            if points is None:
                points = self.series[tag] = []
            points.append((step, number))
            self.orders.add(tag)


_LAYER_NORM_PREFIX = "grad_norm/"
_READ_PREFIXES = (_LAYER_NORM_PREFIX, "grad_to_weight/", "gradwatch/")


class _StepOrders:
    """The distinct orders of the layers each step wrote (its ``grad_norm/<layer>`` values, over its events)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, ...], None] = {}
        self._step: int | None = None
        self._layers: list[str] = []

    def at(self, step: int) -> None:
        """The next event's step: a new step closes the one before."""
        if step != self._step:
            self._seen[tuple(self._layers)] = None
            self._step, self._layers = step, []

    def add(self, tag: str) -> None:
        """A scalar of the current step (a layer's norm is one of its layers, the others are ignored)."""
        if tag.startswith(_LAYER_NORM_PREFIX):
            self._layers.append(tag[len(_LAYER_NORM_PREFIX) :])

    def distinct(self) -> list[tuple[str, ...]]:
        """Every distinct order, the current step's included."""
        self._seen[tuple(self._layers)] = None
        return list(self._seen)


def _scalar(value: Any, tag: str) -> float | None:
    """A GradWatch scalar's value (written as ``simple_value``, or as a tensor by other writers), else ``None``."""
    kind = value.WhichOneof("value")
    if kind == "simple_value":
        return value.simple_value
    if kind == "tensor" and not tag.startswith("gradwatch/") and value.tensor.float_val:
        return value.tensor.float_val[0]
    return None


def _alert_from_text(path: Path, text: str, step: int) -> dict[str, Any]:
    """An alert from its Text entry: the JSON block at its end, or (older runs) the Markdown itself."""
    _, fence, data = text.rpartition(ALERT_DATA_FENCE)
    if not fence:
        return {**parse_alert_markdown(text, step), "optimizer": 0}
    try:
        return alert_entry(json.loads(data.rstrip().removesuffix("```")))
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RecursionError) as err:
        raise RunReadError(f"{path}: unexpected alert data at step {step} ({_one_line(err)})") from err


def _summarise(points: list[tuple[int, float]]) -> dict[str, float]:
    finite = [v for _, v in points if math.isfinite(v)]
    if not points:
        return {**dict.fromkeys(("last", "median", "min", "max"), math.nan), "count": 0.0}
    return {
        "last": points[-1][1],
        "median": statistics.median(finite) if finite else math.nan,
        "min": min(finite) if finite else math.nan,
        "max": max(finite) if finite else math.nan,
        "count": float(len(points)),
    }


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
