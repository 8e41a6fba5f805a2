"""The ``gradwatch`` command: check runs for gradient alerts (for CI), or print a per-layer health report.

Exit codes of ``gradwatch check``:

- 0: every run finished, with no alert of a ``--fail-on`` kind;
- 1: an alert of a ``--fail-on`` kind was found (this wins over 3);
- 2: bad usage or unreadable input (a missing path, a corrupt ``gradwatch.json`` or event file, an unwritable
  ``$GITHUB_STEP_SUMMARY``), with a one-line reason naming the file on stderr;
- 3: no such alert, but a run did not finish: killed (no ``gradwatch.json``, or one still saying ``"running"``),
  interrupted (Ctrl+C, SIGTERM) or failed (an exception). ``--allow-unfinished`` turns this into 0.

Each run gets a verdict: ``healthy``, ``alerts``, ``unfinished``, ``interrupted`` or ``failed``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from lightning_gradwatch import __version__
from lightning_gradwatch._names import optimizer_key
from lightning_gradwatch.alerts import ALERT_KINDS
from lightning_gradwatch.kinds import KINDS, AlertKind, Health, RunStatus, by_severity
from lightning_gradwatch.runs import RunReadError, RunRecord, find_runs, load_run

__all__ = ["main"]

EXIT_OK, EXIT_ALERT, EXIT_ERROR, EXIT_UNFINISHED = 0, 1, 2, 3
#: Verdicts of runs that did not finish, by ``status`` (``None``: no ``gradwatch.json``).
UNFINISHED_VERDICTS = ("unfinished", "interrupted", "failed")
_ERROR_WIDTH = 160
_WHY = {
    "unfinished": "training did not finish (killed, or still running)",
    "interrupted": "training was interrupted (Ctrl+C or SIGTERM)",
    "failed": "training ended with an exception",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, exit 2
        self.exit(EXIT_ERROR, f"gradwatch: error: {message}\n")


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ALERT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"--fail-on takes a comma-separated list of {', '.join(ALERT_KINDS)}; got {text!r}"
        )
    return kinds


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (``gradwatch --help``)."""
    parser = _Parser(
        prog="gradwatch",
        description="Check GradWatch runs for gradient alerts, or report per-layer gradient health.",
    )
    parser.add_argument("--version", action="version", version=f"lightning-gradwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    where = "Each PATH is a run's log dir, any parent of runs, or a run's gradwatch.json or event file (that run only)."
    check = sub.add_parser(
        "check",
        help="exit 0 healthy, 1 gradient alerts, 2 unreadable input, 3 a run did not finish",
        description=f"Check the runs under each PATH for gradient alerts, and that they finished. {where}"
        " Exit codes: 0 every run finished without alerts of the --fail-on kinds; 1 such an alert (wins over 3);"
        " 2 bad usage or unreadable input; 3 a run did not finish (killed, interrupted, or failed).",
    )
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.add_argument(
        "--fail-on",
        type=_kinds,
        default=ALERT_KINDS,
        metavar="KINDS",
        help="comma-separated alert kinds that fail the check (default: vanishing,exploding,nonfinite)",
    )
    check.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="gate on alerts only: a run that was killed, interrupted or failed passes when it has no alerts",
    )
    check.add_argument("--format", choices=("text", "json", "github"), default="text")
    report = sub.add_parser(
        "report",
        help="print a per-layer gradient health table for each run",
        description=f"Print, for each run under PATH, its total and per-layer gradient norms and its alerts. {where}",
    )
    report.add_argument("paths", nargs="+", metavar="PATH")
    report.add_argument("--format", choices=("text", "json"), default="text")
    return parser


class _UsageError(Exception):
    """Bad input found while producing the output; the message is one line."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code.

    The whole output is built first and written at once: a reader that closes the pipe early
    (``gradwatch report runs | head``) ends the command quietly, with the exit code of the verdict.
    """
    args = build_parser().parse_args(argv)
    out = io.StringIO()
    try:
        runs = _load(args.paths)
        if args.command == "check":
            code = _check(runs, set(args.fail_on), args.format, out, allow_unfinished=args.allow_unfinished)
        else:
            code = _report(runs, args.format, out)
    except (RunReadError, _UsageError) as err:
        print(f"gradwatch: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    try:
        sys.stdout.write(out.getvalue())
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader is gone: point stdout at /dev/null so the interpreter's final flush stays quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return code


def _load(paths: list[str]) -> list[RunRecord]:
    runs = [run for run in (load_run(d) for d in find_runs(paths)) if run is not None]
    if not runs:
        raise RunReadError(f"no GradWatch run (gradwatch.json or GradWatch event files) under {', '.join(paths)}")
    return runs


# ---------------------------------------------------------------------- check
def _failing(run: RunRecord, fail_on: set[str]) -> list[dict[str, Any]]:
    return [a for a in run.alerts if a["kind"] in fail_on]


def verdict(run: RunRecord, fail_on: set[str]) -> str:
    """A run's verdict: ``alerts`` (of a ``fail_on`` kind), else ``healthy`` when it finished, else why not.

    Example:
        >>> from pathlib import Path
        >>> verdict(RunRecord(Path("run"), "json", status="finished"), {"nonfinite"})
        'healthy'
        >>> verdict(RunRecord(Path("run"), "events"), {"nonfinite"})  # no gradwatch.json: killed, or still running
        'unfinished'
    """
    if _failing(run, fail_on):
        return "alerts"
    if run.finished:
        return "healthy"
    if run.status in (RunStatus.INTERRUPTED, RunStatus.FAILED):
        return str(run.status)
    return "unfinished"


def _gate(runs: list[RunRecord], fail_on: set[str], allow_unfinished: bool) -> tuple[int, dict[str, int]]:
    verdicts = [verdict(run, fail_on) for run in runs]
    counts = {v: verdicts.count(v) for v in ("healthy", "alerts", *UNFINISHED_VERDICTS)}
    if counts["alerts"]:
        return EXIT_ALERT, counts
    if not allow_unfinished and any(counts[v] for v in UNFINISHED_VERDICTS):
        return EXIT_UNFINISHED, counts
    return EXIT_OK, counts


def _fails_gate(run_verdict: str, allow_unfinished: bool) -> bool:
    return run_verdict == "alerts" or (run_verdict in UNFINISHED_VERDICTS and not allow_unfinished)


def _check(runs: list[RunRecord], fail_on: set[str], fmt: str, out: TextIO, *, allow_unfinished: bool = False) -> int:
    code, counts = _gate(runs, fail_on, allow_unfinished)
    if fmt == "json":
        doc = {
            "result": {EXIT_OK: "pass", EXIT_ALERT: "fail", EXIT_UNFINISHED: "unfinished"}[code],
            "exit_code": code,
            "fail_on": sorted(fail_on),
            "allow_unfinished": allow_unfinished,
            "verdicts": counts,
            "runs": [
                {
                    "path": str(run.path),
                    "source": run.source,
                    "status": run.status,
                    "verdict": verdict(run, fail_on),
                    "failing": _fails_gate(verdict(run, fail_on), allow_unfinished),
                    "steps": run.steps,
                    "error": run.error,
                    "partial": run.partial,
                    "alerts": [_json_alert(a) for a in run.alerts],
                }
                for run in runs
            ],
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    elif fmt == "github":
        _github(runs, fail_on, allow_unfinished, out)
    else:
        for run in runs:
            out.write(_run_line(run, fail_on) + "\n")
            for alert in run.alerts:
                flag = "FAIL" if alert["kind"] in fail_on else "note"
                out.write(f"  [{flag}] {_where(alert)}: {_first_line(alert['message'])}\n")
        out.write(_gate_line(code, counts, len(runs), fail_on, allow_unfinished) + "\n")
    return code


def _gate_line(code: int, counts: dict[str, int], n_runs: int, fail_on: set[str], allow_unfinished: bool) -> str:
    head = {EXIT_OK: "PASS", EXIT_ALERT: "FAIL", EXIT_UNFINISHED: "UNFINISHED"}[code]
    line = f"{head}: {counts['alerts']} of {n_runs} run(s) with alerts of kind {', '.join(sorted(fail_on))}"
    unfinished = [f"{counts[v]} {v}" for v in UNFINISHED_VERDICTS if counts[v]]
    if unfinished:
        allowed = " (allowed by --allow-unfinished)" if allow_unfinished else ""
        line += f"; did not finish: {', '.join(unfinished)}{allowed}"
    return line


def _where(alert: dict[str, Any]) -> str:
    optimizer = alert.get("optimizer") or 0
    return f"step {alert['step']}" + (f" (optimizer {optimizer})" if optimizer else "")


def _run_line(run: RunRecord, fail_on: set[str]) -> str:
    run_verdict = verdict(run, fail_on)
    last = run.steps.get("last")
    facts = [f"{len(run.layers)} layers"]
    if isinstance(last, int):
        facts.append(f"{last + 1} steps")
    if run_verdict == "alerts" and not run.finished:
        facts.append(run.status or "no gradwatch.json")
    if run.partial:
        facts.append(run.partial)
    detail = f" ({', '.join(facts)})"
    if run_verdict == "healthy":
        return f"{run.path}: healthy{detail}"
    if run_verdict == "alerts":
        kinds = sorted({a["kind"] for a in run.alerts})
        return f"{run.path}: {len(run.alerts)} alert(s): {', '.join(kinds)}{detail}"
    return f"{run.path}: {run_verdict}: {_why(run, run_verdict)}{detail}"


def _why(run: RunRecord, run_verdict: str) -> str:
    if run.status is None:
        return "no gradwatch.json (killed before writing it, or it could not be written, or was not copied)"
    if run.status == RunStatus.RUNNING:
        return 'gradwatch.json still says "running" (the process was killed, or is still training)'
    if run.status not in (RunStatus.INTERRUPTED, RunStatus.FAILED):
        return f"unknown status {run.status!r} in gradwatch.json"
    error = _first_line(run.error or "").rstrip(": ")
    if len(error) > _ERROR_WIDTH:
        error = error[: _ERROR_WIDTH - 3] + "..."
    return _WHY[run_verdict] + (f": {error}" if error else "")


def _json_alert(alert: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in alert.items()}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _github(runs: list[RunRecord], fail_on: set[str], allow_unfinished: bool, out: TextIO) -> None:
    """Workflow commands (one annotation per alert and per unfinished run) and a Markdown job summary.

    Raises:
        _UsageError: ``$GITHUB_STEP_SUMMARY`` names a file that cannot be appended to (checked before any output).
    """
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    summary = None
    if summary_path:
        try:
            summary = open(summary_path, "a", encoding="utf-8")  # noqa: SIM115 (closed below, or on error)
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise _UsageError(f"GITHUB_STEP_SUMMARY={summary_path}: cannot append the job summary ({reason})") from err
    code, _ = _gate(runs, fail_on, allow_unfinished)
    try:
        for run in runs:
            _annotate(run, fail_on, allow_unfinished, out)
        if code == EXIT_OK:
            kinds = ", ".join(sorted(fail_on))
            out.write(f"::notice title=GradWatch::{len(runs)} run(s) checked, no alerts of kind {kinds}\n")
        if summary is not None:
            summary.write(_markdown_summary(runs, fail_on, allow_unfinished))
    except OSError as err:
        raise _UsageError(f"GITHUB_STEP_SUMMARY={summary_path}: cannot write the job summary ({err})") from err
    finally:
        if summary is not None:
            summary.close()


def _annotate(run: RunRecord, fail_on: set[str], allow_unfinished: bool, out: TextIO) -> None:
    """A run's workflow commands: one annotation per alert, and one when it did not finish."""
    for alert in run.alerts:
        level = "error" if alert["kind"] in fail_on else "warning"
        title = _escape_property(f"GradWatch {alert['kind']} gradients at {_where(alert)} ({run.path})")
        out.write(f"::{level} title={title}::{_escape_data(alert['message'].strip())}\n")
    run_verdict = verdict(run, fail_on)
    if run_verdict in UNFINISHED_VERDICTS:
        level = "warning" if allow_unfinished else "error"
        title = _escape_property(f"GradWatch run {run_verdict} ({run.path})")
        out.write(f"::{level} title={title}::{_escape_data(_why(run, run_verdict))}\n")


def _markdown_summary(runs: list[RunRecord], fail_on: set[str], allow_unfinished: bool = False) -> str:
    code, counts = _gate(runs, fail_on, allow_unfinished)
    lines = [
        "## GradWatch gradient health",
        "",
        f"**{_gate_line(code, counts, len(runs), fail_on, allow_unfinished).replace(': ', '**: ', 1)}.",
        "",
        "| run | verdict | alerts | first alert |",
        "|---|---|---|---|",
    ]
    for run in runs:
        first = run.alerts[0] if run.alerts else None
        detail = f"{first['kind']} at {_where(first)}: {', '.join(first['layers'][:4])}" if first else "none"
        lines.append(f"| `{run.path}` | {verdict(run, fail_on)} | {len(run.alerts)} | {detail} |")
    return "\n".join(lines) + "\n\n"


# ---------------------------------------------------------------------- report
def _layer_status(layer: dict[str, Any], alerts: list[dict[str, Any]]) -> str:
    kinds = []
    if layer.get("nonfinite_steps"):
        kinds.append(str(KINDS[AlertKind.NONFINITE].health))
    for kind in by_severity():
        label = str(KINDS[kind].health)
        if label not in kinds and any(kind == a["kind"] and layer["name"] in a["layers"] for a in alerts):
            kinds.append(label)
    return ", ".join(kinds) or str(Health.OK)


def _total_status(key: str, alerts: list[dict[str, Any]]) -> str:
    # "all", or one optimizer's key: its own alerts
    kinds = {a["kind"] for a in alerts if key == "all" or optimizer_key(a.get("optimizer") or 0) == key}
    return ", ".join(str(KINDS[k].health) for k in by_severity() if k in kinds) or str(Health.OK)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}"


def _count(value: float) -> str:
    return "-" if value is None or math.isnan(value) else str(int(value))


def _report(runs: list[RunRecord], fmt: str, out: TextIO) -> int:
    if fmt == "json":
        doc = [
            {
                "path": str(run.path),
                "source": run.source,
                "status": run.status,
                "error": run.error,
                "steps": run.steps,
                "events": run.events,
                "total_norm": run.total_norm,
                "layers": [{**layer, "status": _layer_status(layer, run.alerts)} for layer in run.layers],
                "alerts": [_json_alert(a) for a in run.alerts],
            }
            for run in runs
        ]
        out.write(json.dumps(_finite_or_none(doc), indent=2, default=lambda v: None) + "\n")
        return EXIT_OK
    for i, run in enumerate(runs):
        if i:
            out.write("\n")
        out.write(render_table(run))
    return EXIT_OK


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _table_rows(run: RunRecord) -> list[tuple[str, ...]]:
    """One row per total norm (per optimizer), then one per layer."""
    rows = []
    for key, total in run.total_norm.items():
        name = "(total)" if key == "all" else f"(total, {key.replace('_', ' ')})"
        values = [_fmt(total[k]) for k in ("last", "median", "min", "max")]
        rows.append((name, _count(total.get("count", math.nan)), *values, "-", _total_status(key, run.alerts)))
    for layer in run.layers:
        g, r = layer["grad_norm"], layer["grad_to_weight"]
        values = [_fmt(g[k]) for k in ("last", "median", "min", "max")]
        status = _layer_status(layer, run.alerts)
        rows.append((layer["name"], _count(g.get("count", math.nan)), *values, _fmt(r["median"]), status))
    return rows


def render_table(run: RunRecord) -> str:
    """A run's total and per-layer gradient norms and its alerts, as plain text for a terminal."""
    header = ("layer", "steps", "last", "median", "min", "max", "grad/weight", "status")
    rows = _table_rows(run)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        middle = "  ".join(f"{c:>{w}}" for c, w in zip(cells[1:-1], widths[1:-1]))
        return f"{first}  {middle}  {cells[-1]}".rstrip()

    parts = [_table_title(run)]
    if run.error:
        parts.append(f"error: {_first_line(run.error)}")
    parts.append(
        "gradient L2 norm, over the steps counted in `steps` (the total: every measured step from gradwatch.json,"
        " logged steps from event files); grad/weight: median gradient-to-weight ratio"
    )
    parts += [line(header), "  ".join("-" * w for w in widths)]
    parts += [line(row) for row in rows]
    events = {k: v for k, v in run.events.items() if v}
    if events:
        parts.append("events: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(events.items())))
    parts += _alert_lines(run)
    return "\n".join(parts) + "\n"


def _table_title(run: RunRecord) -> str:
    """The run's path, where its numbers come from, how many steps it ran and its status."""
    steps = run.steps.get("last")
    source = "gradwatch.json" if run.source == "json" else "event files"
    title = f"{run.path}  ({source}"
    title += f", {steps + 1} steps" if isinstance(steps, int) else ""
    title += f", {run.status or 'no gradwatch.json: did not finish'})"
    return title


def _alert_lines(run: RunRecord) -> list[str]:
    """The run's alerts, each with its whole message indented, or ``no alerts``."""
    if not run.alerts:
        return ["no alerts"]
    parts = ["", f"alerts ({len(run.alerts)}):"]
    for alert in run.alerts:
        parts.append(f"- {_where(alert)}, {alert['kind']}:")
        parts += [f"    {text}" for text in alert["message"].strip().splitlines()]
    return parts


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
