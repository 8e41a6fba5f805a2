"""``gradwatch check --format github``: workflow commands (annotations) and a Markdown job summary.

One annotation per alert (an error for a ``--fail-on`` kind, else a warning), one per run that did not finish or
cannot be read, a notice when everything passed; the summary is appended to ``$GITHUB_STEP_SUMMARY``.
"""

from __future__ import annotations

import os
from typing import TextIO

from lightning_gradwatch.alerts import format_layers
from lightning_gradwatch.html_report import HtmlFile
from lightning_gradwatch.runs import RunRecord
from lightning_gradwatch.verdicts import (
    EXIT_OK,
    UNFINISHED_VERDICTS,
    counted_alerts,
    entry_kind,
    fails_gate,
    gate,
    gate_line,
    reason,
    verdict,
    where,
)

__all__ = ["SummaryError", "escape_data", "github_output", "markdown_summary"]


class SummaryError(Exception):
    """``$GITHUB_STEP_SUMMARY`` names a file that cannot be written; the message is one line."""


def escape_data(text: str) -> str:
    """Text as a workflow command's data (``%``, CR and LF escaped)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_output(
    runs: list[RunRecord], fail_on: set[str], allow_unfinished: bool, out: TextIO, html: HtmlFile | None = None
) -> None:
    """Workflow commands (one annotation per alert, per unfinished and per unreadable run) and a job summary.

    Raises:
        SummaryError: ``$GITHUB_STEP_SUMMARY`` names a file that cannot be appended to (checked before any output).
    """
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    summary = None
    if summary_path:
        try:
            summary = open(summary_path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        except OSError as err:
            why = err.strerror or type(err).__name__
            raise SummaryError(f"GITHUB_STEP_SUMMARY={summary_path}: cannot append the job summary ({why})") from err
    outcome = gate(runs, fail_on, allow_unfinished)
    try:
        for run in runs:
            _annotate(run, fail_on, allow_unfinished, out)
        if outcome.code == EXIT_OK:
            kinds = ", ".join(sorted(fail_on))
            out.write(f"::notice title=GradWatch::{len(runs)} run(s) checked, no alerts of kind {kinds}\n")
        if html is not None:
            out.write(f"::notice title=GradWatch HTML report::{escape_data(str(html))}\n")
        if summary is not None:
            summary.write(markdown_summary(runs, fail_on, allow_unfinished, html))
    except OSError as err:
        raise SummaryError(f"GITHUB_STEP_SUMMARY={summary_path}: cannot write the job summary ({err})") from err
    finally:
        if summary is not None:
            summary.close()


def _annotate(run: RunRecord, fail_on: set[str], allow_unfinished: bool, out: TextIO) -> None:
    """A run's workflow commands: one per alert and per notice, and one when it did not finish or cannot be read.

    A notice (clipping that hides a failing run) is a ``::notice``, or an ``::error`` when ``fail_on`` names its kind.
    """
    for alert in run.alerts:
        level = "error" if alert["kind"] in fail_on else "warning"
        title = _escape_property(f"GradWatch {alert['kind']} gradients at {where(alert)} ({run.path})")
        out.write(f"::{level} title={title}::{escape_data(alert['message'].strip())}\n")
    for notice in run.notices:
        level = "error" if notice["kind"] in fail_on else "notice"
        title = _escape_property(f"GradWatch {notice['kind']} notice at {where(notice)} ({run.path})")
        out.write(f"::{level} title={title}::{escape_data(notice['message'].strip())}\n")
    run_verdict = verdict(run, fail_on)
    if run_verdict in (*UNFINISHED_VERDICTS, "unreadable"):
        level = "error" if fails_gate(run_verdict, allow_unfinished) else "warning"
        title = _escape_property(f"GradWatch run {run_verdict} ({run.path})")
        out.write(f"::{level} title={title}::{escape_data(reason(run, run_verdict))}\n")


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_summary(
    runs: list[RunRecord], fail_on: set[str], allow_unfinished: bool = False, html: HtmlFile | None = None
) -> str:
    """The job summary: the gate's line and a row per run (and where the HTML report is, when one was written).

    Example:
        >>> from pathlib import Path
        >>> alert = {"kind": "vanishing", "step": 19, "layers": ["net.0", "net.2", "net.4", "net.6", "net.8"]}
        >>> run = RunRecord(Path("run"), "json", status="finished", alerts=[alert])
        >>> markdown_summary([run], {"vanishing"}).splitlines()[-2]
        '| `run` | alerts | 1 | vanishing at step 19: net.0, net.2, net.4, net.6 (+1 more) | - |'
    """
    outcome = gate(runs, fail_on, allow_unfinished)
    lines = [
        "## GradWatch gradient health",
        "",
        f"**{gate_line(outcome, len(runs), fail_on, allow_unfinished).replace(': ', '**: ', 1)}.",
        "",
        "| run | verdict | alerts | first alert | notices |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        run_verdict = verdict(run, fail_on)
        counted = counted_alerts(run, fail_on)
        first = counted[0] if counted else None
        detail = "none" if first is None else f"{entry_kind(first)} at {where(first)}"
        if first is not None and first.get("layers"):
            detail += f": {format_layers(first['layers'], limit=4)}"
        if run_verdict == "unreadable":
            detail = _markdown_cell(reason(run, run_verdict))
        count = "-" if run_verdict == "unreadable" else str(len(counted))
        said = "; ".join(f"{n['kind']} at {where(n)}" for n in run.notices) or "-"
        lines.append(f"| `{run.path}` | {run_verdict} | {count} | {detail} | {_markdown_cell(said)} |")
    if html is not None:
        lines += [
            "",
            f"**Pictures of each run**: `{_markdown_cell(html.path)}` ({html.kilobytes}, one self-contained HTML file:"
            " gradient flow per layer and step, each layer's norm by depth, the total norm with its clipping and"
            " spike thresholds, the alerts on the timeline with their remedies). Open it from this run's artifacts.",
        ]
    return "\n".join(lines) + "\n\n"
