"""``gradwatch report --html FILE``: one self-contained HTML file with the pictures of each run, for a CI artifact.

One file holds every run given, a section each, in the order of the text report, after a summary of their
verdicts. A section shows:

- the run's **verdict** (as ``gradwatch check`` gives it) and why;
- the **gradient flow**: a heatmap of log10 of each layer's gradient norm (a row per layer, first layer on top; a
  column per logged step, or per bin of steps in long runs);
- each layer's **log10 norm over the steps**, coloured by depth (first layer dark blue, last yellow), the layers
  that are not ``ok`` now or were named in an alert drawn thick and labelled;
- the **total norm** (mean and maximum per column) with the clipping threshold (``gradwatch/clip_threshold``) and the
  spike threshold (``gradwatch/spike_threshold``) when the run logged them;
- the **alerts** on the same step axis (a numbered flag on each chart), then each alert's message and remedies;
- the layer table of ``gradwatch report`` (norms, state now, alerts then).

The numbers come from the event files (every logged step: ``grad_norm/<layer>``, ``gradwatch/total_norm``, ...),
else from ``gradwatch.json``'s thinned history. Columns are capped at :data:`MAX_COLUMNS` (a column's value is the
mean of the log10 norms of its steps; the total's maximum is kept too), and values are stored as 16-bit codes, so the
file stays small whatever the run's length: about 0.35 MB per run of 200 layers. The pictures are drawn by a small
inline script on canvases; the text (verdicts, alerts, remedies, tables) is plain HTML. Nothing is fetched: no
network, no server, no external library.

Example:
    >>> from pathlib import Path
    >>> from lightning_gradwatch.runs import RunRecord
    >>> html = build_html([RunRecord(Path("runs/a"), "json", status="finished")])
    >>> html.startswith("<!DOCTYPE html>"), "healthy" in html, "http" in html
    (True, True, False)
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from array import array
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from lightning_gradwatch import __version__
from lightning_gradwatch._names import CLIP_THRESHOLD, SPIKE_THRESHOLD, TOTAL_NORM, TOTAL_NORM_MAX
from lightning_gradwatch.alerts import ALERT_KINDS
from lightning_gradwatch.layer_state import LayerState, layer_states, marks, named_in
from lightning_gradwatch.runs import RunRecord
from lightning_gradwatch.verdicts import counted_alerts, entry_kind, failing_alerts, gate, reason, run_facts, verdict

__all__ = ["MAX_COLUMNS", "HtmlFile", "build_html", "run_data", "write_html"]

#: The most columns (steps, or bins of steps) a run's charts have.
MAX_COLUMNS = 500
_TOP_CODE = 65000  # codes 0.._TOP_CODE: log10 values between the run's lowest and highest
_ZERO, _NONFINITE, _MISSING = 65533, 65534, 65535
_KIND_NAMES = {"vanishing": "vanishing", "exploding": "exploding", "nonfinite": "non-finite"}


# ---------------------------------------------------------------------- data
def _columns(steps: Sequence[int]) -> list[int]:
    """The first step of each column: each logged step, or bins of equal width when there are too many."""
    if len(steps) <= MAX_COLUMNS:
        return list(steps)
    first, last = steps[0], steps[-1]
    width = math.ceil((last - first + 1) / MAX_COLUMNS)
    return list(range(first, last + 1, width))


def _binned(
    points: Sequence[tuple[int, float]], starts: Sequence[int]
) -> tuple[list[float | None], list[float | None]]:
    """Per column, the mean and the maximum of the log10 norms of its steps.

    A column is ``nan`` when a norm in it is NaN/Inf, ``-inf`` when every norm is 0, ``None`` when it has none.
    """
    n = len(starts)
    sums, counts, zeros, bad = [0.0] * n, [0] * n, [0] * n, [False] * n
    peaks = [-math.inf] * n
    for column, value in _placed(points, starts):
        if not math.isfinite(value):
            bad[column] = True
        elif value > 0:
            log = math.log10(value)
            sums[column] += log
            counts[column] += 1
            peaks[column] = max(peaks[column], log)
        else:
            zeros[column] += 1
    means = [_column_value(sums[i] / counts[i] if counts[i] else 0.0, counts[i], zeros[i], bad[i]) for i in range(n)]
    maxima = [_column_value(peaks[i], counts[i], zeros[i], bad[i]) for i in range(n)]
    return means, maxima


def _placed(points: Sequence[tuple[int, float]], starts: Sequence[int]) -> Iterable[tuple[int, float]]:
    """``(column, value)`` for each point at or after the first column's start (points in step order)."""
    column = 0
    for step, value in points:
        if not starts or step < starts[0]:
            continue
        while column + 1 < len(starts) and step >= starts[column + 1]:
            column += 1
        yield column, value


def _column_value(value: float, counts: int, zeros: int, bad: bool) -> float | None:
    """A column's value: NaN with a non-finite norm, ``value`` with positive norms, -inf with zeros only, or None."""
    if bad:
        return math.nan
    if counts:
        return value
    return -math.inf if zeros else None


def _larger(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return b if a is None else a
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return max(a, b)


def _encode(rows: Iterable[Sequence[float | None]], low: float, high: float) -> str:
    """16-bit codes of log10 values, row after row, little-endian, as base64."""
    span = (high - low) or 1.0
    codes = array("H")
    for row in rows:
        for v in row:
            if v is None:
                codes.append(_MISSING)
            elif math.isnan(v):
                codes.append(_NONFINITE)
            elif v == -math.inf:
                codes.append(_ZERO)
            else:
                codes.append(round(min(max((v - low) / span, 0.0), 1.0) * _TOP_CODE))
    if codes.itemsize != 2:  # pragma: no cover - "H" is 2 bytes on every platform Python supports
        raise RuntimeError("unsigned short is not 2 bytes")
    if array("H", [1]).tobytes() != b"\x01\x00":  # pragma: no cover - big-endian machines
        codes.byteswap()
    return base64.b64encode(codes.tobytes()).decode("ascii")


def _from_events(run: RunRecord) -> bool:
    """Whether the page draws the event files (every logged step): when they hold two logged steps or more.

    A run logged once (an interval longer than the run) is drawn from ``gradwatch.json``'s history of every
    measured step, thinned: one column would leave its charts blank.
    """
    return len({step for points in run.series.values() for step, _ in points}) >= 2


def _series(run: RunRecord) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """Per layer and per total key: the norms at every logged step (event files), else the report's history."""
    series = run.series if _from_events(run) else {}
    layers = {}
    for layer in run.layers:
        name = layer["name"]
        layers[name] = sorted(series.get(f"grad_norm/{name}") or run.history.get(name, []))
    totals = {}
    for key in run.total_norm:
        tag = TOTAL_NORM if key == "all" else f"{TOTAL_NORM}/{key}"
        totals[key] = sorted(series.get(tag) or run.total_history.get(key, []))
    return layers, totals


def _suffix(key: str) -> str:
    return "" if key == "all" else f"/{key}"


def run_data(run: RunRecord) -> dict[str, Any]:
    """What the page's script draws for one run (JSON-ready): columns, encoded norms, thresholds, alerts."""
    layer_points, total_points = _series(run)
    steps = sorted({s for points in (*layer_points.values(), *total_points.values()) for s, _ in points})
    starts = _columns(steps)
    rows = [_binned(layer_points[name], starts)[0] for name in layer_points]
    low, high = _range(v for row in rows for v in row)
    states = layer_states(run)
    return {
        "columns": starts,
        "last_step": steps[-1] if steps else None,
        "low": low,
        "high": high,
        "layers": list(layer_points),
        "marked": [_marked(states[name], named_in(name, run.alerts)) for name in layer_points],
        "norms": _encode(rows, low, high),
        **_encoded_totals(run, total_points, starts),
        "alerts": [{"step": a["step"], "kind": a["kind"]} for a in run.alerts],
        "source": run.logs_name if _from_events(run) else "gradwatch.json history",
    }


def _encoded_totals(
    run: RunRecord, total_points: dict[str, list[tuple[int, float]]], starts: Sequence[int]
) -> dict[str, Any]:
    """The total norms' lines per column, encoded on one shared range (``total_low`` to ``total_high``)."""
    totals = {key: _total_lines(run, key, points, starts) for key, points in total_points.items()}
    low, high = _range(v for lines in totals.values() for line in lines.values() for v in line)
    encoded = {key: {name: _encode([line], low, high) for name, line in lines.items()} for key, lines in totals.items()}
    return {"total_low": low, "total_high": high, "totals": encoded}


def _total_lines(
    run: RunRecord, key: str, points: Sequence[tuple[int, float]], starts: Sequence[int]
) -> dict[str, list[float | None]]:
    """One total norm's lines per column: mean, maximum (the logged largest too), and the thresholds logged."""
    mean, peak = _binned(points, starts)
    logged_peak = _binned(run.series.get(TOTAL_NORM_MAX + _suffix(key), []), starts)[1]
    lines = {"mean": mean, "max": [_larger(a, b) for a, b in zip(peak, logged_peak)]}
    for name, tag in (("clip", CLIP_THRESHOLD), ("spike", SPIKE_THRESHOLD)):
        if run.series.get(tag + _suffix(key)):
            lines[name] = _binned(run.series[tag + _suffix(key)], starts)[0]
    return lines


def _range(values: Iterable[float | None]) -> tuple[int, int]:
    """Whole decades around the finite values (at least one decade)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    low = math.floor(min(finite)) if finite else 0
    return low, max(math.ceil(max(finite)) if finite else 1, low + 1)


def _marked(state: LayerState, alerts: list[str]) -> str:
    """A label for a layer to mark (``small; vanishing@49``), or ``""`` when it is ok and no alert named it."""
    parts = ([state.label] if state.state != "ok" else []) + ([marks(alerts)] if alerts else [])
    return "; ".join(parts)


# ---------------------------------------------------------------------- page
def _asset(name: str) -> str:
    return resources.files("lightning_gradwatch").joinpath("_html", name).read_text(encoding="utf-8")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3g}"


def build_html(
    runs: Sequence[RunRecord],
    fail_on: Iterable[str] = ALERT_KINDS,
    allow_unfinished: bool = False,
    title: str = "GradWatch gradient report",
) -> str:
    """The whole page for ``runs``: a summary of their verdicts, then a section per run."""
    kinds = set(fail_on)
    outcome = gate(runs, kinds, allow_unfinished)
    counts = ", ".join(f"{n} {v}" for v, n in outcome.counts.items() if n)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_asset('report.css')}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="gate {outcome.result}"><b>{outcome.result.upper()}</b> (exit code {outcome.code}):'
        f" {len(runs)} run(s): {_e(counts)}; failing on alerts of kind {_e(', '.join(sorted(kinds)))}</p>",
        '<ul class="runs">',
    ]
    for i, run in enumerate(runs):
        run_verdict = verdict(run, kinds)
        parts.append(
            f'<li><a href="#run-{i}"><code>{_e(run.path)}</code></a> <span class="verdict {run_verdict}">'
            f"{run_verdict}</span></li>"
        )
    parts.append(
        f'</ul><p class="note">lightning-gradwatch {_e(__version__)}. Hover a chart to read its values.</p></header>'
    )
    for i, run in enumerate(runs):
        parts.append(_section(i, run, kinds))
    parts.append(f"<script>{_asset('report.js')}</script></body></html>")
    return "\n".join(parts) + "\n"


def _section(index: int, run: RunRecord, fail_on: set[str]) -> str:
    run_verdict = verdict(run, fail_on)
    head = (
        f'<section class="run" id="run-{index}"><h2><code>{_e(run.path)}</code> '
        f'<span class="verdict {run_verdict}">{run_verdict}</span></h2>'
    )
    if run_verdict == "unreadable":
        return head + f'<p class="why">{_e(reason(run, run_verdict))}</p></section>'
    facts = run_facts(run, run_verdict, status=True)  # as gradwatch check gives them, with how the run ended
    parts = [head, f'<p class="facts">{_e(", ".join(facts))}</p>']
    if run_verdict == "alerts":
        counted = counted_alerts(run, fail_on)
        kinds = sorted({entry_kind(a) for a in failing_alerts(run, fail_on)})
        parts.append(
            f'<p class="why">{len(counted)} alert(s): {_e(", ".join(kinds))}; the first at step'
            f" {counted[0]['step']}.</p>"
        )
    elif run_verdict != "healthy":
        parts.append(f'<p class="why">{_e(reason(run, run_verdict))}</p>')
    data = run_data(run)
    if data["columns"]:
        parts.append(_charts(index, data))
    parts.append(_alerts(run))
    parts.append(_notices(run))
    parts.append(_table(run))
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str).replace("</", "<\\/")
    parts.append(f'<script type="application/json" class="gradwatch-data" data-run="{index}">{payload}</script>')
    parts.append("</section>")
    return "\n".join(parts)


def _figure(chart: str, index: int, caption: str) -> str:
    """A chart's caption, canvas (drawn by the page's script) and the line that reads out the value under the mouse."""
    name = f"{chart}-{index}"
    return (
        f'<figure><figcaption>{caption}</figcaption><canvas class="{chart}" id="{name}" data-run="{index}"></canvas>'
        f'<div class="readout" id="{name}-readout">&nbsp;</div></figure>'
    )


def _charts(index: int, data: dict[str, Any]) -> str:
    columns = data["columns"]
    binned = "one column per logged step"
    if len(columns) >= MAX_COLUMNS:
        binned = f"{len(columns)} columns of {columns[1] - columns[0]} steps, each the mean of its logged steps"
    source = _e(data["source"])
    return "\n".join(
        [
            _figure(
                "heatmap",
                index,
                f"<b>Gradient flow</b>: log10 of each layer's gradient norm, first layer on top ({_e(binned)};"
                f" from the {source}). Black: zero; red: NaN/Inf; red labels: layers not <i>ok</i> now or named in"
                " an alert.",
            ),
            _figure(
                "layers",
                index,
                '<b>Each layer\'s gradient norm</b> (log10), coloured by depth: <span class="depth"></span> first'
                " to last layer. Thick and labelled: layers not <i>ok</i> now or named in an alert.",
            ),
            _figure(
                "total",
                index,
                '<b>Total gradient norm</b> (log10): <span class="key mean"></span> mean and <span class="key max">'
                '</span> largest per column; <span class="key clip"></span> clipping threshold and <span class="key'
                ' spike"></span> spike threshold when logged. Numbered flags: the alerts below.',
            ),
        ]
    )


def _alerts(run: RunRecord) -> str:
    if not run.alerts:
        return '<p class="noalerts">No alerts.</p>'
    items = [
        _item(alert, f'<span class="flag">{number}</span> <b>{_e(_KIND_NAMES.get(alert["kind"], alert["kind"]))}</b>')
        for number, alert in enumerate(run.alerts, 1)
    ]
    return f'<h3>Alerts ({len(run.alerts)})</h3><ol class="alerts">{"".join(items)}</ol>'


def _notices(run: RunRecord) -> str:
    """What the run said once without alerting (clipping that hides a failing run), with its remedies."""
    if not run.notices:
        return ""
    items = [_item(notice, f"<b>{_e(notice['kind'])} notice</b>", "notice") for notice in run.notices]
    return f'<h3>Notices ({len(run.notices)})</h3><ul class="alerts">{"".join(items)}</ul>'


def _item(entry: dict[str, Any], label: str, css: str | None = None) -> str:
    """An alert or notice as a list item: its label, where (unless its message says), its first line, the rest."""
    head, _, rest = entry["message"].strip().partition("\n")
    where = "" if f"step {entry['step']}" in head else f" at step {entry['step']}"
    where += f" (optimizer {entry['optimizer']})" if entry.get("optimizer") else ""
    remedies = f"<pre>{_e(rest)}</pre>" if rest.strip() else ""
    return f'<li class="{_e(css or entry["kind"])}">{label}{where}: {_e(head)}{remedies}</li>'


def _table(run: RunRecord) -> str:
    states = layer_states(run)
    rows = []
    for layer in run.layers:
        g, state = layer["grad_norm"], states[layer["name"]]
        alerts = marks(named_in(layer["name"], run.alerts), layer.get("nonfinite_steps") or 0)
        cells = [_fmt(g.get(k)) for k in ("last", "median", "min", "max")]
        rows.append(
            f'<tr class="{state.state}"><td><code>{_e(layer["name"])}</code></td>'
            + "".join(f"<td>{c}</td>" for c in cells)
            + f'<td>{_fmt(state.recent)}</td><td class="state">{state.label}</td><td>{_e(alerts)}</td></tr>'
        )
    return (
        "<details><summary>Layer table: gradient norms, state now, alerts then</summary><table><thead><tr>"
        "<th>layer</th><th>last</th><th>median</th><th>min</th><th>max</th><th>recent</th><th>now</th>"
        "<th>alerts</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></details>"
    )


class HtmlFile(NamedTuple):
    """An HTML report written, as the outputs name it: ``report.html (312 kB)``."""

    path: str
    size: int

    @property
    def kilobytes(self) -> str:
        """Its size in kB, rounded."""
        return f"{self.size / 1000:.0f} kB"

    def __str__(self) -> str:
        return f"{self.path} ({self.kilobytes})"


def write_html(path: str | os.PathLike[str], page: str) -> HtmlFile:
    """Write ``page`` to ``path`` atomically (a reader never sees half a file); returns what was written.

    Raises:
        OSError: the file cannot be written.
    """
    target = Path(path)
    data = page.encode("utf-8", "backslashreplace")
    fd, tmp = tempfile.mkstemp(prefix=".gradwatch-", suffix=".html.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return HtmlFile(os.fspath(path), len(data))
