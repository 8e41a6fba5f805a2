"""The clipping families benchmark: every rule on every cell of every family, tables, leave-one-family-out.

    python benchmarks/clipping_suite.py [--quick] [--families cnn,recurrent] [--cache FILE] [--no-trainer]

(also ``python benchmarks/clipping.py --part families``; 29 minutes of CPU on one core, every rule and candidate
included, before the one-constant candidates were added: each adds 2-3 minutes on the nine families). Families and
cells: ``clipping_families.py``; rules: ``clipping_rules.py``; scores and targets: ``clipping_scores.py``. Every rule
of a cell trains from the same initial weights on the same batches. ``--quick``: one seed, a third of the steps (a few
minutes). ``--cache FILE`` keeps each (cell, rule) result in a JSON-lines file and reuses it (a rule's name carries
its constants). ``--step-caps``: only the peers, our default and ``clip="adaptive"`` with its SGD step-size cap at
another ratio (0.05, 0.2, none) or another floor on the weights' size (0, 0.3 or 3 times their default-initialisation
norm), each chosen leaving one family out. ``--candidates "k=v;..."``: those settings of our rule instead of the
built-in grid, chosen leaving one family out among them and the default; ``--no-ablations``: without the ablations.
``--threads N``: torch threads (1 by default; another count rounds differently, and its results are cached apart:
``clipping_chaos.py`` compares the two).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clipping_families as families
import clipping_notice as notice
import clipping_scores as scores
from clipping_adapter import LOSS_OF_THIS_STEP
from clipping_rules import (
    ABLATIONS,
    CANDIDATES,
    NO_STEP_CAP,
    OURS,
    PEERS,
    PREVIOUS,
    STEP_CAPS,
    USE_LOSS,
    WEIGHT_CAP,
    WEIGHT_FLOORS,
    Rule,
    is_ours,
    ours,
)
from clipping_run import Result, train, train_with_trainer

TRACED = ("none", PREVIOUS, OURS)
INTS = (
    "window",
    "warmup_steps",
    "short_window",
    "loss_window",
    "first_losses",
    "cut_every",
    "notice_steps",
    "norm_window",
)
SPIKE_CLIP = 'on_exploding="clip"'
SHOWN = (
    "none",
    "ZClip defaults",
    "ZClip no cap",
    "AutoClip p10",
    "AGC 0.01",
    "AGC 0.02",
    "AGC 0.16",
    "mean+2.5std (previous)",
    SPIKE_CLIP,
    PREVIOUS,
    USE_LOSS,
    OURS,
    WEIGHT_CAP,
    NO_STEP_CAP,
)

# one cell per family through a real Trainer: GradWatch(clip=...) against the plain loop
TRAINER_CELLS = {
    "mlp": "regre adamw 1% x3000",
    "cnn": "sgd 5% x50",
    "recurrent": "rnn gain 1.5 lr 0.1",
    "transformer": "lr 30x",
    "cauchy": "adamw cauchy 0.3",
    "schedule": "peak 3x",
    "finetune": "5% x50",
    "linear": "linreg init 1e-3",
    "issue": "digits mlp 5% x50",
}


class Cache:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self.data[row["key"]] = row["result"]

    def get(self, key: str) -> Result | None:
        row = self.data.get(key)
        return None if row is None else Result.from_json(row)

    def put(self, key: str, result: Result) -> None:
        if self.path is None:
            return
        row = result.to_json()
        self.data[key] = row
        with self.path.open("a") as f:
            f.write(json.dumps({"key": key, "result": row}) + "\n")


def parse_spec(spec: str) -> dict[str, Any]:
    """``"quantile=0.1,cut_every=5"`` -> keyword arguments of the package's ``AdaptiveClipThreshold``."""
    pairs = (item.split("=") for item in spec.split(",") if item)
    return {k: (v == "1") if k == "use_loss" else int(v) if k in INTS else float(v) for k, v in pairs}


def package_version(detector: bool = False) -> str:
    """What our rule's results depend on: the package's clipping policy and its configuration, and the loss timing;
    with ``detector``, the whole judge (``on_exploding="clip"`` clips what the exploding detector finds).

    Part of the cache key of our rule's cells, so a cached result never outlives the code that produced it.
    """
    root = Path(__file__).resolve().parents[1] / "lightning_gradwatch"
    digest = hashlib.sha1()
    parts = ["judge/clipping.py", "config.py", "history.py"]
    if detector:
        parts += sorted(str(p.relative_to(root)) for p in (root / "judge").glob("*.py") if p.name != "clipping.py")
    for part in parts:
        digest.update((root / part).read_bytes())
    digest.update(b"this step" if LOSS_OF_THIS_STEP else b"previous step")
    return digest.hexdigest()[:10]


def result_key(cell: families.Cell, name: str, quick: bool) -> str:
    """A (cell, rule) result's key in the cache, before the package's version (for the rules that depend on it)."""
    key = f"{'quick' if quick else 'full'}|{cell.key}|{name}"
    if torch.get_num_threads() != 1:  # another rounding: a result of its own
        key = f"threads {torch.get_num_threads()}|{key}"
    return key


def run_cells(
    cells: Sequence[families.Cell], rules: dict[str, Callable[[], Rule]], quick: bool, cache: Cache
) -> list[scores.CellResults]:
    reports = []
    for cell in cells:
        started = time.perf_counter()
        setup = None
        report = scores.CellResults(cell)
        for name, factory in rules.items():
            key = result_key(cell, name, quick)
            if is_ours(name) or name in ABLATIONS:  # results that depend on the package's code
                key += f"|{package_version()}"
            elif name == SPIKE_CLIP:  # ... and on its detector's
                key += f"|{package_version(detector=True)}"
            result = cache.get(key)
            if result is None:
                setup = setup or families.setup(cell, quick)
                result = train(setup, factory(), trace=name in TRACED)
                cache.put(key, result)
            report.results[name] = result
        reports.append(report)
        best_name, best = report.best_fixed
        print(
            f"  {cell.key:44s} {cell.kind:8s} none {scores.fmt(report.metric('none')):>8s}"
            f"  best fixed {scores.fmt(best):>8s} ({best_name})"
            f"  previous {scores.fmt(report.ratio(PREVIOUS)):>6s}x"
            f"  ours {scores.fmt(report.ratio(OURS)):>6s}x  [{time.perf_counter() - started:.0f} s]",
            flush=True,
        )
    return reports


def trainer_check(by_family: dict[str, list[scores.CellResults]], quick: bool) -> list[str]:
    lines = [
        "| family | cell | GradWatch(clip=...) | plain loop | Trainer + GradWatch | relative difference |",
        "|---|---|---|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name, reports in by_family.items():
        report = next((r for r in reports if r.cell.config == TRAINER_CELLS.get(name)), None)
        if report is None:
            continue
        setup = families.setup(report.cell, quick)
        for rule, kwargs in ((OURS, {"clip": "adaptive"}), ("fixed 1", {"clip": 1.0})):
            loop = report.results[rule].metric
            real = train_with_trainer(setup, kwargs).metric
            diff = abs(real - loop) / abs(loop) if math.isfinite(loop) and math.isfinite(real) else math.nan
            lines.append(
                f"| {name} | {report.cell.config} s{report.cell.seed} | {kwargs['clip']!r} | {scores.fmt(loop)} |"
                f" {scores.fmt(real)} | {diff:.1e} |"
            )
            print(lines[-1], flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, a third of the steps")
    parser.add_argument("--families", default="", help="comma-separated subset of the families")
    parser.add_argument("--cache", type=Path, default=None, help="JSON-lines file of results to reuse and extend")
    parser.add_argument("--no-trainer", action="store_true", help="skip the real-Trainer cells")
    parser.add_argument("--no-candidates", action="store_true", help="only the peers and our default")
    parser.add_argument("--no-ablations", action="store_true", help="without the ablations of our rule")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (another count rounds differently: a run's chaos)"
    )
    parser.add_argument(
        "--step-caps",
        action="store_true",
        help="only the peers, our default and the SGD step cap's ratios and floors (each chosen leaving a family out)",
    )
    parser.add_argument("--cells", action="store_true", help="also print every cell's ratios")
    parser.add_argument(
        "--candidates", default="", help='instead of the built-in grid: "quantile=0.1,zscore=3;quantile=0.25" (ours)'
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)  # Lightning's banners, in the Trainer cells
    started = time.perf_counter()
    chosen_families = tuple(f for f in args.families.split(",") if f) or None
    seeds = (0,) if args.quick else families.SEEDS
    candidates = dict(CANDIDATES)
    if args.candidates:
        candidates = dict(ours(**parse_spec(spec)) for spec in args.candidates.split(";"))
    ablations = {} if args.no_ablations else ABLATIONS
    rules: dict[str, Callable[[], Rule]] = {**PEERS, **({} if args.no_candidates else {**candidates, **ablations})}
    if args.step_caps:
        rules, candidates = {**PEERS, OURS: CANDIDATES[OURS], **STEP_CAPS, **WEIGHT_FLOORS}, {}
    rules.setdefault(OURS, CANDIDATES[OURS])
    cache = Cache(args.cache)
    by_family: dict[str, list[scores.CellResults]] = {}
    for fam in families.FAMILIES:
        if chosen_families and fam.name not in chosen_families:
            continue
        print(f"\n# {fam.name}", flush=True)
        cells = families.cells((fam.name,), seeds)
        by_family[fam.name] = run_cells(cells, rules, args.quick, cache)
    lines: list[str] = []
    shown = [r for r in SHOWN if r in rules]

    def out(*new: str) -> None:
        lines.extend(new)
        print("\n".join(new), flush=True)

    for name, reports in by_family.items():
        out(f"\n## {name} ({len(reports)} cells, {len({r.cell.config for r in reports})} configurations)\n")
        out(*scores.family_table(reports, shown))
        if args.cells:
            out("", *scores.cell_rows(reports, shown, scores.CellResults.ratio))
    out("\n## Worst / median ratio to best fixed on trouble cells, per family\n")
    out(*scores.overview(by_family, shown))
    everything = [r for rs in by_family.values() for r in rs]
    out("\n## All families pooled\n")
    out(*scores.family_table(everything, shown))

    def lofo(names: list[str], title: str, every: str) -> None:
        """Leave-one-family-out over ``names`` (when there is a choice), then every one of them on every family."""
        if len(by_family) > 1 and len(names) > 1:
            out(f"\n## Leave-one-family-out: {title}\n")
            table, chosen = scores.lofo(by_family, names)
            out(*table)
            out("", f"pooled: {scores.verdict_line(scores.pooled_lofo(by_family, chosen))}")
            out(f"\n### {every}\n")
            out(*scores.overview(by_family, names))

    lofo(
        [*([] if OURS in candidates else [OURS]), *(c for c in candidates if c in rules)],  # the default among them
        "our rule's constants chosen on the other families",
        "Every candidate on every family (for the record: not a selection)",
    )
    floors = [c for c in WEIGHT_FLOORS if c in rules]
    lofo(
        [OURS, *floors] if len(floors) > 1 else [],  # the shipped floor (1x the default-initialisation norm) and others
        "the step cap's floor on the weights' size (times their default-initialisation norm) chosen on the other"
        " families",
        "Every floor on every family",
    )
    caps = [c for c in STEP_CAPS if c in rules]
    lofo(
        [OURS, *caps] if len(caps) > 1 else [],  # the shipped ratio (0.1), the others and none
        "the SGD step cap's ratio (or none) chosen on the other families",
        "Every ratio on every family",
    )
    out("\n## The notice: clipping is hiding a failing run\n")
    out(*notice.table(by_family, (PREVIOUS, OURS)))
    if not args.no_trainer:
        out("\n## The callback path: one cell per family through a real Trainer with GradWatch\n")
        lines += trainer_check(by_family, args.quick)
    out(f"\nfamilies: {time.perf_counter() - started:.0f} s")
    return lines


if __name__ == "__main__":
    main()
