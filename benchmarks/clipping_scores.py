"""Scoring the families benchmark: per-cell ratios, per-family tables, targets, leave-one-family-out selection.

Definitions (issue 24):

- *best fixed*: the best clean validation metric over the fixed thresholds {0.03 ... 100}, in hindsight, per cell;
- *ratio*: a rule's metric over the best fixed one (``inf`` when the rule lost the run: non-finite weights or loss);
- *trouble* cells: those with outliers or growth (by design); *healthy* cells: nothing wrong by design;
- *non-finite where a fixed threshold saves*: the rule lost the run, and some fixed threshold in {0.03 ... 10} kept
  it finite;
- *no worse than ZClip's defaults*: the rule's metric at most 1.05x ZClip's (or ZClip lost the run);
- healthy cells are judged against no clipping (1.1x).

Targets, per family: no non-finite where a fixed threshold saves; within 2x of best fixed in >= 95% of the trouble
cells; no worse than ZClip's defaults in >= 80% of all cells; every healthy cell within 1.1x of no clipping.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clipping_families import Cell
from clipping_rules import FIXED, FIXED_SAVING
from clipping_run import Result

RATIO_TARGET, TROUBLE_SHARE, ZCLIP_SHARE, HEALTHY_TARGET, TIE = 2.0, 0.95, 0.80, 1.1, 1.05
ZCLIP = "ZClip defaults"


@dataclass
class CellResults:
    cell: Cell
    results: dict[str, Result] = field(default_factory=dict)

    def metric(self, rule: str) -> float:
        return self.results[rule].metric

    @property
    def best_fixed(self) -> tuple[str, float]:
        scores = [(f"fixed {v:g}", self.metric(f"fixed {v:g}")) for v in FIXED]
        scores = [s for s in scores if math.isfinite(s[1])]
        return min(scores, key=lambda s: s[1]) if scores else ("-", math.nan)

    @property
    def scored_trouble(self) -> bool:
        """A cell with outliers or growth that some fixed threshold kept finite: its ratio counts toward the targets."""
        return not self.cell.healthy and math.isfinite(self.best_fixed[1])

    @property
    def saved_by_fixed(self) -> bool:
        return any(math.isfinite(self.metric(f"fixed {v:g}")) for v in FIXED_SAVING)

    def ratio(self, rule: str) -> float:
        """Metric over the best fixed threshold's (``inf``: the rule lost the run; ``nan``: every threshold did)."""
        best = self.best_fixed[1]
        if not math.isfinite(best):
            return math.nan
        m = self.metric(rule)
        return m / best if math.isfinite(m) else math.inf

    def healthy_ratio(self, rule: str) -> float:
        m, none = self.metric(rule), self.metric("none")
        if not math.isfinite(none):
            return math.nan
        return m / none if math.isfinite(m) else math.inf

    def lost_where_saved(self, rule: str) -> bool:
        return not math.isfinite(self.metric(rule)) and self.saved_by_fixed

    def no_worse_than_zclip(self, rule: str) -> bool:
        m, z = self.metric(rule), self.metric(ZCLIP)
        return math.isfinite(m) and (not math.isfinite(z) or m <= TIE * z)


@dataclass
class Summary:
    """One rule on a set of cells, against the targets."""

    trouble: int
    within: int
    lost: int
    worst: float
    median: float
    cells: int
    zclip_ok: int
    healthy: int
    healthy_ok: int
    healthy_worst: float

    @property
    def passes(self) -> dict[str, bool]:
        return {
            "finite": self.lost == 0,
            "2x": self.trouble == 0 or self.within >= TROUBLE_SHARE * self.trouble,
            "zclip": self.cells == 0 or self.zclip_ok >= ZCLIP_SHARE * self.cells,
            "healthy": self.healthy_ok == self.healthy,
        }


def summarise(reports: Sequence[CellResults], rule: str) -> Summary:
    trouble = [r for r in reports if r.scored_trouble]
    ratios = [r.ratio(rule) for r in trouble]
    finite = [x for x in ratios if math.isfinite(x)]
    healthy = [r for r in reports if r.cell.healthy]
    hr = [r.healthy_ratio(rule) for r in healthy]
    return Summary(
        trouble=len(trouble),
        within=sum(x <= RATIO_TARGET for x in finite),
        lost=sum(r.lost_where_saved(rule) for r in reports),
        worst=max(ratios) if ratios else math.nan,
        median=statistics.median(ratios) if ratios else math.nan,
        cells=len(reports),
        zclip_ok=sum(r.no_worse_than_zclip(rule) for r in reports),
        healthy=len(healthy),
        healthy_ok=sum(math.isfinite(x) and x <= HEALTHY_TARGET for x in hr),
        healthy_worst=max(hr) if hr else math.nan,
    )


def violations(reports: Sequence[CellResults], rule: str) -> tuple[int, int, int, float]:
    """What the leave-one-family-out selection minimises, in this order (lexicographic):

    runs lost where a fixed threshold saves; trouble cells beyond 2x of best fixed plus healthy cells beyond 1.1x of
    no clipping; cells worse than ZClip's defaults; the mean log ratio to best fixed over all cells (ties).
    """
    lost = sum(r.lost_where_saved(rule) for r in reports)
    misses = 0
    logs = []
    for r in reports:
        ratio = r.ratio(rule)
        if math.isfinite(ratio):
            logs.append(math.log(ratio))
        if r.cell.healthy:
            h = r.healthy_ratio(rule)
            misses += not (math.isfinite(h) and h <= HEALTHY_TARGET)
        elif math.isfinite(r.best_fixed[1]):
            misses += not (ratio <= RATIO_TARGET)
    zclip = sum(not r.no_worse_than_zclip(rule) for r in reports)
    return lost, misses, zclip, (sum(logs) / len(logs) if logs else math.inf)


def choose(reports: Sequence[CellResults], candidates: Sequence[str]) -> str:
    return min(candidates, key=lambda c: violations(reports, c))


def fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "NaN"
    return f"{value:.3g}"


def family_table(reports: Sequence[CellResults], rules: Sequence[str]) -> list[str]:
    """Per rule: trouble cells within 2x / worst / median ratio to best fixed, lost runs, ZClip share, healthy."""
    lines = [
        "| rule | trouble: within 2x of best fixed | worst ratio | median ratio | non-finite where a fixed one"
        " saves | no worse than ZClip defaults | healthy: within 1.1x of none | worst healthy ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rule in rules:
        s = summarise(reports, rule)
        lines.append(
            f"| {rule} | {s.within}/{s.trouble} | {fmt(s.worst)} | {fmt(s.median)} | {s.lost} |"
            f" {s.zclip_ok}/{s.cells} | {s.healthy_ok}/{s.healthy} | {fmt(s.healthy_worst)} |"
        )
    return lines


def overview(by_family: dict[str, list[CellResults]], rules: Sequence[str]) -> list[str]:
    """One line per rule, one column per family: worst / median ratio to best fixed on trouble cells (lost)."""
    names = list(by_family)
    lines = ["| rule | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for rule in rules:
        cols = []
        for name in names:
            s = summarise(by_family[name], rule)
            lost = f", {s.lost} lost" if s.lost else ""
            cols.append(f"{fmt(s.worst)} / {fmt(s.median)}{lost}")
        lines.append(f"| {rule} | " + " | ".join(cols) + " |")
    return lines


def verdict_line(s: Summary) -> str:
    p = s.passes
    mark = {True: "PASS", False: "MISS"}
    return (
        f"finite {s.lost} lost {mark[p['finite']]}; within 2x {s.within}/{s.trouble} {mark[p['2x']]};"
        f" vs ZClip {s.zclip_ok}/{s.cells} {mark[p['zclip']]}; healthy {s.healthy_ok}/{s.healthy} {mark[p['healthy']]}"
    )


def lofo(by_family: dict[str, list[CellResults]], candidates: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Leave-one-family-out: for each family, the candidate chosen on the others, reported on it."""
    lines = [
        "| left-out family | chosen on the other families | within 2x | worst / median ratio | non-finite where"
        " saved | no worse than ZClip | healthy within 1.1x (worst) | targets |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    chosen: dict[str, str] = {}
    pooled: list[tuple[CellResults, str]] = []
    for name, reports in by_family.items():
        others = [r for n, rs in by_family.items() if n != name for r in rs]
        pick = choose(others, candidates)
        chosen[name] = pick
        pooled += [(r, pick) for r in reports]
        s = summarise(reports, pick)
        p = s.passes
        lines.append(
            f"| {name} | {pick} | {s.within}/{s.trouble} | {fmt(s.worst)} / {fmt(s.median)} | {s.lost} |"
            f" {s.zclip_ok}/{s.cells} | {s.healthy_ok}/{s.healthy} ({fmt(s.healthy_worst)}) |"
            f" {' '.join(k for k, v in p.items() if v) or '-'} |"
        )
    return lines, chosen


def pooled_lofo(by_family: dict[str, list[CellResults]], chosen: dict[str, str]) -> Summary:
    """All families together, each scored with the candidate chosen without it."""
    acc = Summary(0, 0, 0, 0.0, math.nan, 0, 0, 0, 0, 0.0)
    ratios: list[float] = []
    for name, reports in by_family.items():
        s = summarise(reports, chosen[name])
        ratios += [r.ratio(chosen[name]) for r in reports if r.scored_trouble]
        acc.trouble += s.trouble
        acc.within += s.within
        acc.lost += s.lost
        acc.cells += s.cells
        acc.zclip_ok += s.zclip_ok
        acc.healthy += s.healthy
        acc.healthy_ok += s.healthy_ok
        acc.worst = max(acc.worst, s.worst)
        if math.isfinite(s.healthy_worst):
            acc.healthy_worst = max(acc.healthy_worst, s.healthy_worst)
    acc.median = statistics.median(ratios) if ratios else math.nan
    return acc


def cell_rows(
    reports: Sequence[CellResults], rules: Sequence[str], key: Callable[[CellResults, str], float]
) -> list[str]:
    lines = ["| cell | kind | best fixed | " + " | ".join(rules) + " |", "|---|---|---:|" + "---:|" * len(rules)]
    for r in reports:
        best_name, best = r.best_fixed
        lines.append(
            f"| {r.cell.config} s{r.cell.seed} | {r.cell.kind} | {fmt(best)} ({best_name.removeprefix('fixed ')}) | "
            + " | ".join(fmt(key(r, rule)) for rule in rules)
            + " |"
        )
    return lines
