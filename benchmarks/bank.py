"""The generated detection bank: train runs, record their traces, judge detectors by each run's outcome.

    python benchmarks/bank.py record [--quick] [--only TEXT] [--traces FILE]   # train, write traces (pickle)
    python benchmarks/bank.py score [--traces FILE] [--rules NAME,...] [--failures] [--outcomes]
    python benchmarks/bank.py lightning [--traces FILE]    # each family through a real Trainer vs the plain loop

``record`` trains every run of ``bank_runs.generate()`` (422 runs, 7-9 minutes on one core; ``--quick``: 82 of
them, about 2 minutes) in plain loops measuring where GradWatch measures, and writes their traces. ``score``
replays the traces through today's detector (``baseline``) and the candidate rules of ``bank_rules`` and prints,
for each, the tables by family (``--all-tables``: also by optimizer, schedule and event), and the
leave-one-family-out table: for each family, the constants chosen from the candidate's small grid on all the other
families, scored on the left-out one. ``lightning`` trains the runs marked ``lightning`` (at least one per family,
and the issue's two) through a real Trainer with ``GradWatch(on_*="warn")`` and compares the callback's alerts
with the replay of the plain loop's trace. Trace files are a few MB: keep them out of the repository.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from bank_outcome import outcome  # noqa: E402
from bank_runs import RunSpec, Trace, generate, train  # noqa: E402
from bank_score import (  # noqa: E402
    evaluate,
    failures,
    group_table,
    leave_one_family_out,
    lofo_table,
)

DEFAULT_TRACES = os.environ.get("GRADWATCH_BANK_TRACES", "/tmp/gradwatch-bank-traces.pkl")


def _load(path: str) -> dict[str, Trace]:
    with open(path, "rb") as f:
        return pickle.load(f)


def _save(path: str, traces: dict[str, Trace]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(traces, f)
    os.replace(tmp, path)


def record(args: argparse.Namespace) -> None:
    specs = [s for s in generate() if (not args.quick or s.quick) and args.only in s.name]
    traces: dict[str, Trace] = _load(args.traces) if os.path.exists(args.traces) else {}
    started = time.perf_counter()
    for i, spec in enumerate(specs):
        if spec.name in traces and not args.fresh:
            continue
        trace = train(spec)
        traces[spec.name] = trace
        print(f"[{i + 1}/{len(specs)}] {spec.name}: {len(trace.records)} steps, {trace.seconds:.1f} s", flush=True)
        if i % 10 == 0:
            _save(args.traces, traces)
    _save(args.traces, traces)
    print(f"{len(traces)} traces in {args.traces} ({time.perf_counter() - started:.0f} s)")


def _family(traces: dict[str, Trace]):
    return lambda name: traces[name].spec.family


def old_package(where: str) -> Any:
    """An older copy of the package, imported under another name: a directory holding one, or a git ref to take it
    from (``git archive``)."""
    from replay_check import load_old

    path = Path(where)
    if not (path / "__init__.py").is_file():
        target = Path(tempfile.mkdtemp(prefix="gradwatch-before-"))
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", where, "lightning_gradwatch"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        path = target / "lightning_gradwatch"
    return load_old(str(path))


def score(args: argparse.Namespace) -> None:
    import bank_rules
    from gradwatch_adapter import package_factory

    traces = _load(args.traces)
    if args.only:
        traces = {n: t for n, t in traces.items() if args.only in n}
    outcomes = {n: outcome(t) for n, t in traces.items()}
    if args.outcomes:
        for n, o in sorted(outcomes.items()):
            print(f"- {n}: {o.verdict} step={o.step} deadline={o.deadline} spread={o.spread:.1f} {o.note} {o.layers}")
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    print(f"{len(traces)} runs; outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    names = args.rules.split(",")
    before = package_factory(old_package(args.old)) if any(n.startswith("before") for n in names) else None
    known = bank_rules.candidates(before)
    groupings = _groupings({n: t.spec for n, t in traces.items()})
    for rule in names:
        candidate = known[rule]
        print(f"\n## {rule}: {candidate.doc}\n")
        scores = evaluate(traces, outcomes, candidate.factory(**candidate.defaults), candidate.current)
        for title, key in groupings.items():
            if title == "family" or args.all_tables:
                print("\n".join(group_table(scores, key, title)) + "\n")
        if args.failures:
            print("\n".join(failures(scores)) + "\n")
        if not args.no_lofo:
            folds = leave_one_family_out(
                traces, outcomes, candidate.factory, candidate.space, _family(traces), candidate.current
            )
            print(f"Leave one family out (grid: {dict(candidate.space)}):\n")
            print("\n".join(lofo_table(folds, candidate.space)) + "\n", flush=True)


def _groupings(spec: dict[str, RunSpec]) -> dict[str, Callable[[str], str]]:
    """How runs are grouped in the tables: by family, optimizer, schedule, event."""

    def event(name: str) -> str:
        s = spec[name]
        return "none, noisy: " + "+".join(s.noise) if s.noise else s.event

    return {
        "family": lambda n: spec[n].family,
        "optimizer": lambda n: spec[n].optimizer,
        "schedule": lambda n: spec[n].schedule,
        "event": event,
    }


def lightning(args: argparse.Namespace) -> None:
    from bank_score import alerts_of
    from bank_trainer import train_lightning
    from gradwatch_adapter import baseline_factory

    maker = baseline_factory()  # the callback's detector, told the loss the callback tells it
    specs = [s for s in generate() if s.lightning and args.only in s.name]
    print("| run | callback's alerts | plain loop replayed | same | largest total-norm difference |")
    print("|---|---|---|---|---|")
    for spec in specs:
        real = train_lightning(spec)
        plain = train(spec)
        replayed = alerts_of(plain, maker)
        got = [(k, s) for k, s, _ in real.alerts or []]
        want = [(a[0], a[1]) for a in replayed]
        common = {r.step: r.total_norm for r in real.records}
        diffs = [
            abs(r.total_norm - common[r.step]) / max(abs(common[r.step]), 1e-30)
            for r in plain.records
            if r.step in common and math.isfinite(r.total_norm) and math.isfinite(common[r.step])
        ]
        fmt = lambda a: ", ".join(f"{k}@{s}" for k, s in a) or "none"  # noqa: E731
        print(
            f"| {spec.name} | {fmt(got)} | {fmt(want)} | {'yes' if got == want else 'NO'} |"
            f" {max(diffs, default=0.0):.1e} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("record", "score", "lightning"))
    parser.add_argument("--traces", default=DEFAULT_TRACES, help="trace file (pickle)")
    parser.add_argument("--quick", action="store_true", help="record the quick subset only")
    parser.add_argument("--fresh", action="store_true", help="record the chosen runs again (others are kept)")
    parser.add_argument("--only", default="", help="runs whose name contains this text")
    parser.add_argument(
        "--rules",
        default="before,defaults",
        help="comma-separated candidates (bank_rules.candidates; default: before,defaults)",
    )
    parser.add_argument("--old", default="main", help="the package before: a directory holding it, or a git ref")
    parser.add_argument("--failures", action="store_true", help="list the runs each candidate gets wrong")
    parser.add_argument("--outcomes", action="store_true", help="list every run's outcome")
    parser.add_argument("--all-tables", action="store_true", help="also by optimizer, schedule and event")
    parser.add_argument("--no-lofo", action="store_true", help="skip the leave-one-family-out table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore")
    {"record": record, "score": score, "lightning": lightning}[args.command](args)


if __name__ == "__main__":
    main()
