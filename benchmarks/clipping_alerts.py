"""Alerts under ``clip="adaptive"``: which runs would ``on_exploding="stop"`` end, and did clipping save them?

    python benchmarks/clipping_alerts.py [--quick] [--families cnn,recurrent] [--cache FILE]

A user who turns adaptive clipping on and puts ``on_exploding="stop"`` (or ``gradwatch check``) in CI wants two things
of the pair: a run that clipping saves is not stopped, and a run clipping cannot save is. Every cell of the clipping
families (``clipping_families.py``: outlier batches, growth from the first step, learning rates too high, healthy
runs; 3 seeds each) trains once through ``GradWatch(clip="adaptive").loop`` (the public plain-loop API, responses
``"warn"``, so the run goes on and its outcome is known), and once per fixed threshold and without clipping
(``clipping_run.train``, the same loop as ``clipping_suite.py``, whose ``--cache`` file this reuses).

Each run's verdict comes from its outcome alone (:func:`saved`): clipping saved it when its clean validation metric is
finite and within 2x of the best fixed threshold in hindsight of its cell. Then:

- *stopped though saved*: an exploding or non-finite alert in a run clipping saved (a false stop under
  ``on_exploding="stop"`` or ``on_nonfinite="stop"``, and a failed ``gradwatch check``);
- *stopped, lost*: an alert in a run clipping did not save (the stop was right);
- *not stopped, lost*: no alert in a run clipping did not save (a failure clipping hid; the clipping notice may
  still have said so: counted beside).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clipping_families as families
import clipping_scores as scores
from clipping_rules import PEERS
from clipping_run import train
from clipping_suite import Cache, result_key

from lightning_gradwatch import GradWatch

FIXED_RULES = ("none", *(f"fixed {v:g}" for v in scores.FIXED))
SAVED_WITHIN = 2.0  # a clipped run within this factor of the best fixed threshold in hindsight was saved


def saved(metric: float, best_fixed: float) -> bool:
    """A run's verdict, from its outcome alone: finite and within 2x of its cell's best fixed threshold in hindsight.

    A cell where every fixed threshold lost the run has no reference: its runs are saved when finite.
    """
    if not math.isfinite(metric):
        return False
    return not math.isfinite(best_fixed) or metric <= SAVED_WITHIN * best_fixed


@dataclass
class Watched:
    """One run through ``GradWatch(clip="adaptive").loop``: its metric, and the alerts and notices on the way."""

    metric: float
    alerts: list[tuple[str, int]]  # (kind, step) of exploding and non-finite alerts
    notice: bool  # the clipping notice was said


def train_watched(setup: families.Setup) -> Watched:
    """The cell's run as ``clipping_run.train`` trains it, with ``GradWatch(clip="adaptive")`` clipping and judging."""
    model = setup.model()
    optimizer = setup.optimizer(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, setup.schedule) if setup.schedule else None
    with tempfile.TemporaryDirectory() as log_dir:
        watch = GradWatch(
            clip="adaptive", on_exploding="warn", on_nonfinite="warn", on_vanishing="ignore", images=False
        )
        lost = False
        with watch.loop(model, steps=len(setup.batches), log_dir=log_dir) as loop:
            for x, y in setup.batches:
                loss = setup.loss(model, x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if loop.step(optimizer, loss):
                    optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if not math.isfinite(float(loss.detach())):
                    lost = True
                    break
        metric = math.nan if lost else setup.evaluate(model)
        notices = json.loads(next(Path(log_dir).rglob("gradwatch.json")).read_text()).get("notices", [])
    alerts = [(str(a.kind), a.step) for a in watch.alerts if a.kind in ("exploding", "nonfinite")]
    return Watched(metric, alerts, any(n["kind"] == "clipping" for n in notices))


def fixed_thresholds(cell: families.Cell, quick: bool, cache: Cache) -> scores.CellResults:
    """The cell trained without clipping and under each fixed threshold (keys as ``clipping_suite.py`` caches them)."""
    report = scores.CellResults(cell)
    setup = None
    for name in FIXED_RULES:
        key = result_key(cell, name, quick)
        result = cache.get(key)
        if result is None:
            setup = setup or families.setup(cell, quick)
            result = train(setup, PEERS[name]())
            cache.put(key, result)
        report.results[name] = result
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, a third of the steps")
    parser.add_argument("--families", default="", help="comma-separated subset of the families")
    parser.add_argument("--cache", type=Path, default=None, help="clipping_suite.py's JSON-lines results to reuse")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    started = time.perf_counter()
    chosen = tuple(f for f in args.families.split(",") if f) or None
    seeds = (0,) if args.quick else families.SEEDS
    cache = Cache(args.cache)
    rows = []
    totals = [0] * 6
    for fam in families.FAMILIES:
        if chosen and fam.name not in chosen:
            continue
        print(f"\n# {fam.name}", flush=True)
        counts = [0] * 6  # runs, saved, stopped though saved, stopped lost, not stopped lost, noticed among those
        for cell in families.cells((fam.name,), seeds):
            report = fixed_thresholds(cell, args.quick, cache)
            run = train_watched(families.setup(report.cell, args.quick))
            best = report.best_fixed[1]
            ok = saved(run.metric, best)
            counts[0] += 1
            counts[1] += ok
            counts[2] += ok and bool(run.alerts)
            counts[3] += not ok and bool(run.alerts)
            counts[4] += not ok and not run.alerts
            counts[5] += not ok and not run.alerts and run.notice
            mark = "  FALSE STOP" if ok and run.alerts else ""
            verdict = "yes" if ok else "no "
            print(
                f"  {report.cell.key:44s} {report.cell.kind:8s} adaptive {scores.fmt(run.metric):>8s}"
                f"  best fixed {scores.fmt(best):>8s}  saved {verdict}  alerts {run.alerts[:2]}{mark}",
                flush=True,
            )
        rows.append((fam.name, counts))
        totals = [t + c for t, c in zip(totals, counts)]
    print('\n## Alerts under clip="adaptive" (on_exploding="stop" would end the alerted runs)\n')
    print("| family | runs | saved by clipping | stopped though saved | stopped, lost | not stopped, lost |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (n, ok, false_stop, hit, miss, noticed) in [*rows, ("all", totals)]:
        print(f"| {name} | {n} | {ok} | {false_stop} | {hit} | {miss} ({noticed} with the clipping notice) |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
