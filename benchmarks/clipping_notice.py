"""The notice "clipping is hiding a failing run", judged on the per-step traces of a clipping rule.

Two ways to decide it, both evaluated on every cell (false alarms on healthy cells, hits on the trouble cells where
no clipping fails: lost, or more than 3x the best fixed threshold):

- *generic*, for any rule: over the last ``WINDOW`` steps (and at least ``WINDOW`` steps into the run), either at
  least ``SHARE`` of them were clipped while the loss median of their second half is no better than ``STALL`` times
  that of their first half (clipping on most steps of a run that does not learn), or the norm before clipping of the
  clipped steps rose by ``RISE`` decades from the first half to the second (the clipped norm keeps rising);
- *ceiling*, for a rule with a loss-driven ceiling (the package's ``AdaptiveClipThreshold``): the ceiling has been in
  force (it was lowered because the loss got worse and has not been lifted) for ``WINDOW`` consecutive steps. In a
  run that learns, the ceiling is never lowered, so the notice costs nothing to decide and says exactly what
  happened;
- *package*: the step at which the package's rule itself says its notice (``notice_due``: what GradWatch warns).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from clipping_rules import is_ours
from clipping_scores import CellResults

WINDOW, SHARE, STALL, RISE = 50, 0.5, 0.9, 1.0


def fires_generic(trace: dict[str, list[float]], window: int = WINDOW) -> int | None:
    """The step the generic notice fires at, or ``None``."""
    norms, thresholds, losses = trace.get("norm", []), trace.get("threshold", []), trace.get("loss", [])
    clipped = [math.isfinite(n) and n > t for n, t in zip(norms, thresholds)]
    half = window // 2
    for end in range(window, len(norms) + 1):
        recent = clipped[end - window : end]
        if sum(recent) >= SHARE * window:
            a, b = statistics.median(losses[end - window : end - half]), statistics.median(losses[end - half : end])
            if not (math.isfinite(b) and b < STALL * a):
                return end - 1
        early = [math.log10(n) for n, c in zip(norms[end - window : end - half], recent[:half]) if c and n > 0]
        late = [math.log10(n) for n, c in zip(norms[end - half : end], recent[half:]) if c and n > 0]
        if min(len(early), len(late)) >= half // 2 and statistics.median(late) - statistics.median(early) >= RISE:
            return end - 1
    return None


def fires_ceiling(trace: dict[str, list[float]], window: int = WINDOW) -> int | None:
    """The step at which the ceiling has been in force for ``window`` consecutive steps, or ``None``."""
    run = 0
    for step, ceiling in enumerate(trace.get("ceiling", [])):
        run = run + 1 if math.isfinite(ceiling) else 0
        if run >= window:
            return step
    return None


def fires_package(trace: dict[str, list[float]]) -> int | None:
    """The step at which the package's rule said its notice, or ``None``."""
    notice = trace.get("notice")
    return int(notice[0]) if notice else None


NOTICES = {"generic": fires_generic, "ceiling": fires_ceiling, "package": fires_package}


def failing(report: CellResults) -> bool:
    """No clipping loses the run or ends above 3x the best fixed threshold."""
    ratio = report.ratio("none")
    return not report.cell.healthy and (math.isinf(ratio) or (math.isfinite(ratio) and ratio > 3))


def table(by_family: dict[str, list[CellResults]], rules: Sequence[str]) -> list[str]:
    lines = [
        f"window {WINDOW} steps. generic: >= {SHARE:.0%} clipped and the loss median not below {STALL}x, or the"
        f" clipped norms up {RISE:g} decade; ceiling: the loss-driven ceiling in force {WINDOW} steps in a row\n",
        "| rule | notice | family | healthy cells: false alarms | trouble cells where no clipping fails: fired |"
        " other trouble cells: fired |",
        "|---|---|---|---:|---:|---:|",
    ]
    for rule in rules:
        for notice, fires in NOTICES.items():
            groups = [*by_family.items(), ("**all**", [r for rs in by_family.values() for r in rs])]
            for name, reports in groups:
                counts = [0] * 6
                if notice != "generic" and not is_ours(rule):
                    continue
                for r in reports:
                    trace = r.results[rule].trace if rule in r.results else {}
                    if not trace:
                        continue
                    slot = 0 if r.cell.healthy else 2 if failing(r) else 4
                    counts[slot] += fires(trace) is not None
                    counts[slot + 1] += 1
                if not any(counts[1::2]):
                    continue
                lines.append(
                    f"| {rule} | {notice} | {name} | {counts[0]}/{counts[1]} | {counts[2]}/{counts[3]} |"
                    f" {counts[4]}/{counts[5]} |"
                )
    return lines
