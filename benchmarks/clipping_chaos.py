"""How much one cell of the clipping families means: every rule run twice, rounding differently.

    python benchmarks/clipping_chaos.py --cache FILE [--threads 2] [--families recurrent,cauchy] [--quick]

Each cell is trained with one torch thread (as ``clipping_suite.py`` does) and with ``--threads`` threads: the same
weights, batches and rule, only the order of the floating-point sums inside a matrix product differs (the last bits of
each step). A run at the edge of stability amplifies those bits, so its final metric, and its ratio to the best fixed
threshold (itself a run), move. Printed per rule: trouble cells within 2x of the best fixed threshold under each
thread count, the cells whose verdict (within 2x or not) flips, the healthy cells within 1.1x of no clipping under
each, and the median and largest factor by which the rule's own metric moved; then, for ``clip="adaptive"``, each
family's flips. A difference between two rules smaller than the flips is not a difference these cells can show.
Results are cached with ``clipping_suite.py``'s keys (those of another thread count carry it), so the suite's cache
gives the one-thread half.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clipping_families as families
import clipping_scores as scores
from clipping_rules import CANDIDATES, OURS, PEERS
from clipping_suite import Cache, run_cells

SHOWN = ("none", "ZClip defaults", "AutoClip p10", "AGC 0.02", "AGC 0.16", OURS)


def _moved(a: scores.CellResults, b: scores.CellResults, rule: str) -> float:
    """The factor by which the rule's metric moved between the two runs (``inf``: one of them lost the run)."""
    x, y = a.metric(rule), b.metric(rule)
    if not (math.isfinite(x) and math.isfinite(y)):
        return 1.0 if math.isfinite(x) == math.isfinite(y) else math.inf
    return max(x, y) / min(x, y) if min(x, y) > 0 else math.inf


def _within(r: scores.CellResults, rule: str) -> bool:
    return r.ratio(rule) <= scores.RATIO_TARGET


def _healthy(r: scores.CellResults, rule: str) -> bool:
    return r.healthy_ratio(rule) <= scores.HEALTHY_TARGET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="JSON-lines file of results to reuse and extend")
    parser.add_argument("--threads", type=int, default=2, help="the other thread count (default 2)")
    parser.add_argument("--families", default="", help="comma-separated subset of the families")
    parser.add_argument("--quick", action="store_true", help="one seed, a third of the steps")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    chosen = tuple(f for f in args.families.split(",") if f) or None
    seeds = (0,) if args.quick else families.SEEDS
    rules = {**PEERS, OURS: CANDIDATES[OURS]}
    cache = Cache(args.cache)
    runs: dict[int, dict[str, list[scores.CellResults]]] = {}
    for threads in (1, args.threads):
        torch.set_num_threads(threads)
        runs[threads] = {}
        for fam in families.FAMILIES:
            if chosen is None or fam.name in chosen:
                print(f"\n# {fam.name}, {threads} thread(s)", flush=True)
                runs[threads][fam.name] = run_cells(families.cells((fam.name,), seeds), rules, args.quick, cache)
    one, other = runs[1], runs[args.threads]
    pairs = [(a, b) for name in one for a, b in zip(one[name], other[name])]
    trouble = [(a, b) for a, b in pairs if a.scored_trouble]
    healthy = [(a, b) for a, b in pairs if a.cell.healthy]
    moved_best = sum(a.best_fixed[0] != b.best_fixed[0] for a, b in trouble)
    print(f"\n## Every cell twice: 1 thread and {args.threads}\n")
    print(f"{len(trouble)} trouble cells, {len(healthy)} healthy; the best fixed threshold changed on {moved_best}\n")
    print(
        "| rule | within 2x (1 / n threads) | verdicts flipped | healthy within 1.1x (1 / n) | healthy flipped |"
        " metric moved, median / largest factor |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for rule in SHOWN:
        w1, wn = sum(_within(a, rule) for a, _ in trouble), sum(_within(b, rule) for _, b in trouble)
        flips = sum(_within(a, rule) != _within(b, rule) for a, b in trouble)
        h1, hn = sum(_healthy(a, rule) for a, _ in healthy), sum(_healthy(b, rule) for _, b in healthy)
        hflips = sum(_healthy(a, rule) != _healthy(b, rule) for a, b in healthy)
        moved = [_moved(a, b, rule) for a, b in pairs]
        print(
            f"| {rule} | {w1} / {wn} | {flips} | {h1} / {hn} | {hflips} |"
            f" {scores.fmt(statistics.median(moved))} / {scores.fmt(max(moved))} |"
        )
    print(f"\n### {OURS}, per family: verdicts flipped (trouble within 2x, healthy within 1.1x)\n")
    for name in one:
        fam = list(zip(one[name], other[name]))
        t = [(a, b) for a, b in fam if a.scored_trouble]
        h = [(a, b) for a, b in fam if a.cell.healthy]
        flips = [a.cell.key for a, b in t if _within(a, OURS) != _within(b, OURS)]
        flips += [a.cell.key for a, b in h if _healthy(a, OURS) != _healthy(b, OURS)]
        within = f"{sum(_within(a, OURS) for a, _ in t)} / {sum(_within(b, OURS) for _, b in t)} of {len(t)}"
        print(f"- {name}: within 2x {within}; flipped: {', '.join(flips) or 'none'}")


if __name__ == "__main__":
    main()
