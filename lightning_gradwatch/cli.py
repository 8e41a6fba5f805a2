"""The ``gradwatch`` command: check runs for gradient alerts (for CI), or print a per-layer health report.

Exit codes of ``gradwatch check`` (each run's verdict, and how they combine: :mod:`lightning_gradwatch.verdicts`):

- 0: every run finished, with no alert of a ``--fail-on`` kind;
- 1: an alert of a ``--fail-on`` kind was found (this wins over 3); a notice (``clipping``: clipping that hides a
  failing run; ``new_data``: the loss jumped at once with new data) counts only when ``--fail-on`` names its kind;
- 2: a run could not be read (a corrupt or truncated ``gradwatch.json`` or event file: that run's verdict is
  ``unreadable``, the other runs' verdicts are printed too; this wins over 1 and 3), or bad usage (a missing path,
  an unwritable ``$GITHUB_STEP_SUMMARY``: one line on stderr, nothing on stdout);
- 3: no such alert, but a run did not finish: killed (no ``gradwatch.json``, or one still saying ``"running"``),
  interrupted (Ctrl+C, SIGTERM) or failed (an exception); or it finished without GradWatch measuring a single
  optimizer step (``unmeasured``). ``--allow-unfinished`` turns this into 0.

Each run gets a verdict: ``healthy``, ``alerts``, ``unfinished``, ``interrupted``, ``failed``, ``unmeasured`` or
``unreadable``.
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
from lightning_gradwatch.github import SummaryError, github_output
from lightning_gradwatch.html_report import HtmlFile, build_html, write_html
from lightning_gradwatch.kinds import KINDS, AlertKind, Health, by_severity
from lightning_gradwatch.layer_state import LARGE_FACTOR, layer_states, marks, named_in, total_states
from lightning_gradwatch.runs import RunReadError, RunRecord, read_runs
from lightning_gradwatch.verdicts import (
    EXIT_ERROR,
    EXIT_OK,
    GATE_KINDS,
    Gate,
    counted_alerts,
    entry_kind,
    fails_gate,
    first_line,
    gate,
    gate_line,
    reason,
    run_facts,
    verdict,
    where,
)

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, exit 2
        self.exit(EXIT_ERROR, f"gradwatch: error: {message}\n")


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in GATE_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"--fail-on takes a comma-separated list of {', '.join(GATE_KINDS)}; got {text!r}"
        )
    return kinds


_PATH_HELP = (
    "a run's log directory (where its gradwatch.json and TensorBoard event files, or a CSVLogger's metrics.csv, are),"
    " any parent of runs"
    " (searched recursively), or a run's gradwatch.json or event file (that run only)"
)
_HTML_HELP = (
    "also write FILE: one self-contained HTML page with a section per run (verdict, gradient-flow heatmap, each"
    " layer's norm coloured by depth, total norm with its thresholds, alerts on the timeline with their remedies);"
    " no network needed to open it"
)
_CHECK_EXIT_CODES = """exit codes:
  0  every run finished, with no alert of a --fail-on kind
  1  a run has an alert of a --fail-on kind (wins over 3); a notice counts when --fail-on names its kind
     (clipping)
  2  a run could not be read (its verdict is 'unreadable'; wins over 1 and 3; the other runs are printed too),
     or bad usage (a missing PATH, an unwritable $GITHUB_STEP_SUMMARY): one line on stderr
  3  a run did not finish: killed, interrupted or failed; or no step of it was measured ('unmeasured')
     (--allow-unfinished turns this into 0)
"""
_REPORT_EXIT_CODES = """exit codes:
  0  every run was read and reported (alerts do not change it: gate on them with `gradwatch check`)
  2  a run could not be read (the other runs are reported too), or bad usage (a missing PATH): one line on stderr
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (``gradwatch --help``)."""
    parser = _Parser(
        prog="gradwatch",
        description="Check GradWatch runs for gradient alerts, or report per-layer gradient health.",
    )
    parser.add_argument("--version", action="version", version=f"lightning-gradwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    check = sub.add_parser(
        "check",
        help="exit 0 healthy, 1 gradient alerts, 2 unreadable input, 3 a run did not finish",
        description="Check the runs under each PATH for gradient alerts, and that they finished: one verdict per\n"
        "run (healthy, alerts, unfinished, interrupted, failed, unmeasured, unreadable), and an exit code for all of\n"
        "them.",
        epilog=_CHECK_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help=_PATH_HELP)
    check.add_argument(
        "--fail-on",
        type=_kinds,
        default=ALERT_KINDS,
        metavar="KINDS",
        help="comma-separated alert kinds that fail the check (default: vanishing,exploding,nonfinite); add"
        " 'clipping' to fail on the notice that clipping hides a failing run (clip=\"adaptive\" scaling down most"
        " steps of a run whose loss does not fall), 'new_data' on the notice that the loss jumped at once with new"
        " data and stayed up (a run whose data must not change)",
    )
    check.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="gate on alerts only: a run that was killed, interrupted, failed or unmeasured passes when it has no"
        " alerts",
    )
    check.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="text: a line per run and per alert, then the result (default); json: one document with each run's"
        " verdict and the exit code; github: workflow annotations, and a Markdown table appended to"
        " $GITHUB_STEP_SUMMARY when it is set (naming the --html file)",
    )
    check.add_argument("--html", metavar="FILE", help=_HTML_HELP)
    report = sub.add_parser(
        "report",
        help="print a per-layer gradient health table for each run",
        description="Print, for each run under each PATH, its total and per-layer gradient norms and its alerts\n"
        "with their remedies.",
        epilog=_REPORT_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("paths", nargs="+", metavar="PATH", help=_PATH_HELP)
    report.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: a table per run for a terminal (default); json: a list with one object per run (its summaries,"
        " layers and alerts)",
    )
    report.add_argument("--html", metavar="FILE", help=_HTML_HELP)
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
        runs = read_runs(args.paths, series=args.html is not None)
        fail_on = set(getattr(args, "fail_on", ALERT_KINDS))
        allow_unfinished = getattr(args, "allow_unfinished", False)
        html = _html(args.html, runs, fail_on, allow_unfinished) if args.html is not None else None
        if args.command == "check":
            code = _check(runs, fail_on, args.format, out, allow_unfinished=allow_unfinished, html=html)
        else:
            code = _report(runs, args.format, out, html=html)
    except (RunReadError, SummaryError, _UsageError) as err:
        _write(sys.stderr, f"gradwatch: error: {err}\n")
        return EXIT_ERROR
    for run in runs:  # each on stdout with the other runs' verdicts; on stderr too, as an error
        if run.unreadable is not None:
            _write(sys.stderr, f"gradwatch: error: {run.unreadable}\n")
    try:
        _write(sys.stdout, out.getvalue())
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader is gone: point stdout at /dev/null so the interpreter's final flush stays quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return code


def _html(path: str, runs: list[RunRecord], fail_on: set[str], allow_unfinished: bool) -> HtmlFile:
    """Write the HTML report to ``path``.

    Raises:
        _UsageError: the file cannot be written (before anything is printed).
    """
    page = build_html(runs, fail_on, allow_unfinished)
    try:
        return write_html(path, page)
    except OSError as err:
        raise _UsageError(f"--html {path}: cannot write the HTML report ({err.strerror or err})") from err


def _write(stream: TextIO, text: str) -> None:
    """Write ``text`` in the stream's encoding, with backslash escapes for what it cannot encode.

    Such as a path named ``données`` on an ASCII terminal, or undecodable bytes in a file name.
    """
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))


# ---------------------------------------------------------------------- check
def _check(
    runs: list[RunRecord],
    fail_on: set[str],
    fmt: str,
    out: TextIO,
    *,
    allow_unfinished: bool = False,
    html: HtmlFile | None = None,
) -> int:
    outcome = gate(runs, fail_on, allow_unfinished)
    if fmt == "json":
        doc = _check_doc(runs, fail_on, outcome, allow_unfinished)
        if html is not None:
            doc["html"] = html.path
        out.write(json.dumps(doc, indent=2) + "\n")
    elif fmt == "github":
        github_output(runs, fail_on, allow_unfinished, out, html)
    else:
        _check_text(runs, fail_on, outcome, out, allow_unfinished)
        if html is not None:
            out.write(f"HTML report: {html}\n")
    return outcome.code


def _check_doc(runs: list[RunRecord], fail_on: set[str], outcome: Gate, allow_unfinished: bool) -> dict[str, Any]:
    """``gradwatch check --format json``: the result, and each run's verdict and what it said."""
    return {
        "result": outcome.result,
        "exit_code": outcome.code,
        "fail_on": sorted(fail_on),
        "allow_unfinished": allow_unfinished,
        "verdicts": outcome.counts,
        "runs": [
            {
                "path": str(run.path),
                "source": run.source,
                "status": run.status,
                "verdict": verdict(run, fail_on),
                "failing": fails_gate(verdict(run, fail_on), allow_unfinished),
                "steps": run.steps,
                "error": run.error,
                "unreadable": run.unreadable,
                "partial": run.partial,
                "alerts": [_json_alert(a) for a in run.alerts],
                "fits": run.fits,
                "earlier_alerts": [_json_alert(a) for a in run.earlier_alerts],
                "notices": run.notices,
            }
            for run in runs
        ],
    }


def _check_text(runs: list[RunRecord], fail_on: set[str], outcome: Gate, out: TextIO, allow_unfinished: bool) -> None:
    """A line per run and per alert or notice (``[FAIL]`` when of a ``--fail-on`` kind), then the result."""
    for run in runs:
        out.write(_run_line(run, fail_on) + "\n")
        for alert in run.alerts:
            out.write(f"  [{'FAIL' if alert['kind'] in fail_on else 'note'}] {_alert_line(alert)}\n")
        for notice in run.notices:  # said once; fails the check only when --fail-on names its kind
            out.write(f"  [{'FAIL' if notice['kind'] in fail_on else 'info'}] {_alert_line(notice)}\n")
    out.write(gate_line(outcome, len(runs), fail_on, allow_unfinished) + "\n")
    hint = _notice_hint(runs, fail_on)
    if hint:
        out.write(hint + "\n")


def _notice_hint(runs: list[RunRecord], fail_on: set[str]) -> str:
    """How to fail on the notices the check passed (``""``: none)."""
    passed = sorted({n["kind"] for run in runs for n in run.notices if n["kind"] not in fail_on})
    if not passed:
        return ""
    kinds = ",".join(k for k in GATE_KINDS if k in fail_on or k in passed)
    return f"(a {'/'.join(passed)} notice does not fail the check; --fail-on {kinds} fails on it)"


def _alert_line(alert: dict[str, Any]) -> str:
    """The alert's first line; its step (and optimizer) in front only when the message does not say it."""
    text = first_line(alert["message"])
    optimizer = alert.get("optimizer") or 0
    if f"step {alert['step']}" not in text:
        return f"{where(alert)}: {text}"
    return f"optimizer {optimizer}: {text}" if optimizer else text


def _run_line(run: RunRecord, fail_on: set[str]) -> str:
    run_verdict = verdict(run, fail_on)
    if run_verdict == "unreadable":
        return f"{run.path}: unreadable: {reason(run, run_verdict)}"
    detail = f" ({', '.join(run_facts(run, run_verdict))})"
    if run_verdict == "healthy":
        return f"{run.path}: healthy{detail}"
    if run_verdict == "alerts":
        counted = counted_alerts(run, fail_on)
        kinds = sorted({entry_kind(a) for a in counted})
        return f"{run.path}: {len(counted)} alert(s): {', '.join(kinds)}{detail}"
    return f"{run.path}: {run_verdict}: {reason(run, run_verdict)}{detail}"


def _json_alert(alert: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in alert.items()}


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


def _report(runs: list[RunRecord], fmt: str, out: TextIO, html: HtmlFile | None = None) -> int:
    code = EXIT_ERROR if any(run.unreadable is not None for run in runs) else EXIT_OK
    if fmt == "json":
        out.write(json.dumps(_finite_or_none([_report_doc(run) for run in runs]), indent=2, default=lambda v: None))
        out.write("\n")
        return code
    out.write(LEGEND)
    for run in runs:
        out.write("\n")
        out.write(render_table(run) if run.unreadable is None else f"{run.path}  (unreadable)\n{run.unreadable}\n")
    if html is not None:
        out.write(f"\nHTML report: {html}\n")
    return code


def _report_doc(run: RunRecord) -> dict[str, Any]:
    """One run for ``report --format json``: each layer's ``status`` (the alerts' kinds) with its ``state`` now."""
    states, totals = layer_states(run), total_states(run)
    return {
        "path": str(run.path),
        "source": run.source,
        "status": run.status,
        "error": run.error,
        "unreadable": run.unreadable,
        "steps": run.steps,
        "events": run.events,
        "total_norm": {key: {**total, **totals[key].to_dict()} for key, total in run.total_norm.items()},
        "layers": [
            {
                **layer,
                "status": _layer_status(layer, run.alerts),
                **states[layer["name"]].to_dict(),
                "named_in": named_in(layer["name"], run.alerts),
            }
            for layer in run.layers
        ],
        "alerts": [_json_alert(a) for a in run.alerts],
        "fits": run.fits,
        "earlier_alerts": [_json_alert(a) for a in run.earlier_alerts],
    }


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


LEGEND = f"""\
gradient health per layer; columns:
  steps        measured steps in the row (from event files alone: logged steps)
  last..max    the gradient L2 norm over those steps: last, median (of up to 256 of them), min, max
  grad/weight  median gradient-to-weight ratio
  now          the state over the last tenth of the steps (the run's title says which):
               ok; small: below the vanishing threshold (1e-05x the largest layer by default);
               zero: no gradient; large: {LARGE_FACTOR:g}x or more its earlier median; non-finite: NaN/Inf;
               no gradient since step N: none in the run's last steps (frozen, unused branch)
  alerts       the alerts that named the layer, as kind@step: then, not now
"""


def _optimizer_of(key: str) -> int | None:
    return int(key[len("optimizer_") :]) if key.startswith("optimizer_") and key[10:].isdigit() else None


def _table_rows(run: RunRecord) -> list[tuple[str, ...]]:
    """One row per total norm (per optimizer), then one per layer."""
    rows = []
    totals, states = total_states(run), layer_states(run)
    for key, total in run.total_norm.items():
        name = "(total)" if key == "all" else f"(total, {key.replace('_', ' ')})"
        values = [_fmt(total[k]) for k in ("last", "median", "min", "max")]
        alerts = marks(named_in(None, run.alerts, _optimizer_of(key)))
        rows.append((name, _count(total.get("count", math.nan)), *values, "-", totals[key].state, alerts))
    for layer in run.layers:
        g, r = layer["grad_norm"], layer["grad_to_weight"]
        values = [_fmt(g[k]) for k in ("last", "median", "min", "max")]
        alerts = marks(named_in(layer["name"], run.alerts), layer.get("nonfinite_steps") or 0)
        now = states[layer["name"]].label
        rows.append((layer["name"], _count(g.get("count", math.nan)), *values, _fmt(r["median"]), now, alerts))
    return rows


def render_table(run: RunRecord) -> str:
    """A run's total and per-layer gradient norms, states and alerts, as plain text for a terminal (see LEGEND)."""
    header = ("layer", "steps", "last", "median", "min", "max", "grad/weight", "now", "alerts")
    rows = _table_rows(run)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        middle = "  ".join(f"{c:>{w}}" for c, w in zip(cells[1:-2], widths[1:-2]))
        return f"{first}  {middle}  {cells[-2]:<{widths[-2]}}  {cells[-1]}".rstrip()

    parts = [_table_title(run)]
    if run.error:
        parts.append(f"error: {first_line(run.error)}")
    parts += [line(header), "  ".join("-" * w for w in widths)]
    parts += [line(row) for row in rows]
    events = {k: v for k, v in run.events.items() if v}
    if events:
        parts.append("events: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(events.items())))
    parts += _alert_lines(run)
    return "\n".join(parts) + "\n"


def _table_title(run: RunRecord) -> str:
    """The run's path, where its numbers come from, how many steps it ran, its status and the window of ``now``."""
    steps = run.steps.get("last")
    source = "gradwatch.json" if run.source == "json" else run.logs_name
    if run.numbers_from_events:
        source = "gradwatch.json, older than the event files the numbers come from"
    title = f"{run.path}  ({source}"
    title += f", {steps + 1} steps" if isinstance(steps, int) else ""
    title += f", {run.status or 'no gradwatch.json: did not finish'}"
    windows = [s for s in (*total_states(run).values(), *layer_states(run).values()) if s.first_step is not None]
    if windows:
        title += f"; now: steps {min(s.first_step for s in windows)}-{max(s.last_step for s in windows)}"
    return title + ")"


def _alert_lines(run: RunRecord) -> list[str]:
    """The run's alerts, each with its whole message indented, or ``no alerts``.

    And the alerts of an earlier run it resumed after (judged there).
    """
    earlier = ", ".join(f"{a['kind']}@{a['step']}" for a in run.earlier_alerts)
    after = [f"resumed after {len(run.earlier_alerts)} alert(s) of an earlier run, judged there: {earlier}"]
    if not run.alerts:
        return ["no alerts", *(after if earlier else [])]
    parts = ["", f"alerts ({len(run.alerts)}):"]
    for alert in run.alerts:
        head, *rest = alert["message"].strip().splitlines() or [""]
        parts.append(f"- {_alert_line({**alert, 'message': head})}")
        parts += [f"    {text}" for text in rest]
    return parts + (after if earlier else [])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
