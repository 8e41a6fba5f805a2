"""The ``gradwatch`` command: check runs for gradient alerts (for CI), or print a per-layer health report.

Exit codes of ``gradwatch check``: 0 healthy, 1 an alert of a ``--fail-on`` kind was found, 2 bad usage or
unreadable input (a missing path, a corrupt ``gradwatch.json`` or event file), with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from lightning_gradwatch import __version__
from lightning_gradwatch.alerts import ALERT_KINDS
from lightning_gradwatch.runs import RunReadError, RunRecord, find_runs, load_run

EXIT_OK, EXIT_ALERT, EXIT_ERROR = 0, 1, 2


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
    check = sub.add_parser(
        "check",
        help="exit 1 when a run has gradient alerts (0 healthy, 2 unreadable input)",
        description="Find runs under each PATH (a run's log dir or any parent of runs) and check their alerts.",
    )
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.add_argument(
        "--fail-on",
        type=_kinds,
        default=ALERT_KINDS,
        metavar="KINDS",
        help="comma-separated alert kinds that fail the check (default: vanishing,exploding,nonfinite)",
    )
    check.add_argument("--format", choices=("text", "json", "github"), default="text")
    report = sub.add_parser(
        "report",
        help="print a per-layer gradient health table for each run",
        description="Print, for each run under PATH, a per-layer table and the alerts with their remedies.",
    )
    report.add_argument("paths", nargs="+", metavar="PATH")
    report.add_argument("--format", choices=("text", "json"), default="text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        runs = _load(args.paths)
    except RunReadError as err:
        print(f"gradwatch: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    if args.command == "check":
        return _check(runs, set(args.fail_on), args.format, sys.stdout)
    return _report(runs, args.format, sys.stdout)


def _load(paths: list[str]) -> list[RunRecord]:
    runs = [run for run in (load_run(d) for d in find_runs(paths)) if run is not None]
    if not runs:
        raise RunReadError(f"no GradWatch run (gradwatch.json or GradWatch event files) under {', '.join(paths)}")
    return runs


# ---------------------------------------------------------------------- check
def _failing(run: RunRecord, fail_on: set[str]) -> list[dict[str, Any]]:
    return [a for a in run.alerts if a["kind"] in fail_on]


def _check(runs: list[RunRecord], fail_on: set[str], fmt: str, out: TextIO) -> int:
    failed = [run for run in runs if _failing(run, fail_on)]
    code = EXIT_ALERT if failed else EXIT_OK
    if fmt == "json":
        doc = {
            "result": "fail" if failed else "pass",
            "fail_on": sorted(fail_on),
            "runs": [
                {
                    "path": str(run.path),
                    "source": run.source,
                    "status": run.status,
                    "failing": bool(_failing(run, fail_on)),
                    "alerts": [_json_alert(a) for a in run.alerts],
                }
                for run in runs
            ],
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    elif fmt == "github":
        _github(runs, fail_on, out)
    else:
        for run in runs:
            out.write(_run_line(run, fail_on) + "\n")
            for alert in run.alerts:
                flag = "FAIL" if alert["kind"] in fail_on else "note"
                out.write(f"  [{flag}] step {alert['step']}: {_first_line(alert['message'])}\n")
        verdict = "FAIL" if failed else "PASS"
        out.write(f"{verdict}: {len(failed)} of {len(runs)} run(s) with alerts of kind {', '.join(sorted(fail_on))}\n")
    return code


def _run_line(run: RunRecord, fail_on: set[str]) -> str:
    kinds = sorted({a["kind"] for a in run.alerts})
    last = run.steps.get("last")
    steps = f", {last + 1} steps" if isinstance(last, int) else ""
    status = f", {run.status}" if run.status and run.status != "finished" else ""
    if not run.alerts:
        return f"{run.path}: healthy ({len(run.layers)} layers{steps}{status})"
    return f"{run.path}: {len(run.alerts)} alert(s): {', '.join(kinds)}{steps}{status}"


def _json_alert(alert: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in alert.items()}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _github(runs: list[RunRecord], fail_on: set[str], out: TextIO) -> None:
    """Workflow commands (one annotation per alert) and, when available, a Markdown job summary."""
    for run in runs:
        for alert in run.alerts:
            level = "error" if alert["kind"] in fail_on else "warning"
            title = _escape_property(f"GradWatch {alert['kind']} gradients at step {alert['step']} ({run.path})")
            out.write(f"::{level} title={title}::{_escape_data(alert['message'].strip())}\n")
    failed = [run for run in runs if _failing(run, fail_on)]
    if not failed:
        kinds = ", ".join(sorted(fail_on))
        out.write(f"::notice title=GradWatch::{len(runs)} run(s) checked, no alerts of kind {kinds}\n")
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        with open(summary_path, "a", encoding="utf-8") as fh:
            fh.write(_markdown_summary(runs, fail_on))


def _markdown_summary(runs: list[RunRecord], fail_on: set[str]) -> str:
    failed = sum(1 for run in runs if _failing(run, fail_on))
    lines = [
        "## GradWatch gradient health",
        "",
        f"**{'FAIL' if failed else 'PASS'}**: {failed} of {len(runs)} run(s) with alerts "
        f"({', '.join(sorted(fail_on))}).",
        "",
        "| run | alerts | first alert |",
        "|---|---|---|",
    ]
    for run in runs:
        first = run.alerts[0] if run.alerts else None
        detail = f"{first['kind']} at step {first['step']}: {', '.join(first['layers'][:4])}" if first else "none"
        lines.append(f"| `{run.path}` | {len(run.alerts)} | {detail} |")
    return "\n".join(lines) + "\n\n"


# ---------------------------------------------------------------------- report
def _layer_status(layer: dict[str, Any], alerts: list[dict[str, Any]]) -> str:
    kinds = []
    if layer.get("nonfinite_steps"):
        kinds.append("non-finite")
    for kind, label in (("nonfinite", "non-finite"), ("exploding", "exploding"), ("vanishing", "vanishing")):
        if label not in kinds and any(kind == a["kind"] and layer["name"] in a["layers"] for a in alerts):
            kinds.append(label)
    return ", ".join(kinds) or "ok"


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}"


def _report(runs: list[RunRecord], fmt: str, out: TextIO) -> int:
    if fmt == "json":
        doc = [
            {
                "path": str(run.path),
                "source": run.source,
                "status": run.status,
                "steps": run.steps,
                "events": run.events,
                "layers": [{**layer, "status": _layer_status(layer, run.alerts)} for layer in run.layers],
                "alerts": [_json_alert(a) for a in run.alerts],
            }
            for run in runs
        ]
        out.write(json.dumps(doc, indent=2, default=lambda v: None) + "\n")
        return EXIT_OK
    for i, run in enumerate(runs):
        if i:
            out.write("\n")
        out.write(render_table(run))
    return EXIT_OK


def render_table(run: RunRecord) -> str:
    """A run's per-layer table and alerts as plain text for a terminal."""
    header = ("layer", "last", "median", "min", "max", "grad/weight", "status")
    rows = []
    for layer in run.layers:
        g, r = layer["grad_norm"], layer["grad_to_weight"]
        rows.append(
            (
                layer["name"],
                _fmt(g["last"]),
                _fmt(g["median"]),
                _fmt(g["min"]),
                _fmt(g["max"]),
                _fmt(r["median"]),
                _layer_status(layer, run.alerts),
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        middle = "  ".join(f"{c:>{w}}" for c, w in zip(cells[1:-1], widths[1:-1]))
        return f"{first}  {middle}  {cells[-1]}".rstrip()

    steps = run.steps.get("last")
    source = "gradwatch.json" if run.source == "json" else "event files"
    title = f"{run.path}  ({source}"
    title += f", {steps + 1} steps" if isinstance(steps, int) else ""
    title += f", {run.status})" if run.status else ")"
    parts = [title, "gradient L2 norm per layer (grad/weight: median gradient-to-weight ratio)", line(header)]
    parts.append("  ".join("-" * w for w in widths))
    parts += [line(row) for row in rows]
    events = {k: v for k, v in run.events.items() if v}
    if events:
        parts.append("events: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(events.items())))
    if run.alerts:
        parts.append("")
        parts.append(f"alerts ({len(run.alerts)}):")
        for alert in run.alerts:
            parts.append(f"- step {alert['step']}, {alert['kind']}:")
            parts += [f"    {text}" for text in alert["message"].strip().splitlines()]
    else:
        parts.append("no alerts")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
