"""Replay check: the detector and the step engine of an older copy of the package, against the package as it is now,
fed the same recorded steps. It proves a restructuring changed nothing that a run can see.

    python benchmarks/bank.py record --traces traces.pkl           # the generated bank's traces (or --quick)
    git archive main lightning_gradwatch | tar -x -C /somewhere/old # keep the OLD package
    python benchmarks/replay_check.py traces.pkl --old /somewhere/old/lightning_gradwatch [--only NAME]

The old package is imported under another name (a copy whose imports are renamed), so both run in one process.
Every recorded trace (each step's statistics and the loss the detector was told) is fed step by step to both:

- **detector**: ``GradientDetector`` of each, default configuration and the trace's exempt layers and model traits.
  At every step the verdicts must be equal (``spike``, ``spike_threshold``, ``nonfinite``, ``exploding``,
  ``vanishing_layers``), every alert (kind, step, layers, value, threshold, message, optimizer, extra), the next
  spike threshold, and the state dicts. At three points of each trace the state is checkpointed: the new state loaded
  into a fresh new detector, and the OLD state loaded into a fresh new detector, must both continue exactly as the
  old detector does, to the end.
- **engine**: the per-step decisions under several configurations (responses, fixed and adaptive clipping,
  ``on_exploding="clip"``/``"skip"``, an fp16 loss scaler on the non-finite steps, non-finite weights on a few
  steps): the flags, the clip threshold, the alerts with their responses, the health word, the log step, what
  settling counts, the interval maximum, and at the end the run summary and the engine's state.

Floats are compared by ``repr`` (so ``nan`` equals ``nan`` and ``0.1`` differs from ``0.1000000001``). The first
mismatch of each trace and check is printed; the last line counts runs, steps and mismatches.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import math
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # the bank's traces are made of its classes

import lightning_gradwatch  # noqa: E402
from lightning_gradwatch.stats import StepStats  # noqa: E402

OLD_NAME = "gradwatch_old"
CHECKPOINTS = (0.25, 0.5, 0.75)  # where in each trace the state is saved and reloaded
LOG_EVERY = 5  # the engine's scalar interval in the replay (log steps measure more and note the interval maximum)
WEIGHTS_EVERY = 37  # in the "weights" variant, every this many log steps carries a non-finite weight norm


class Trace:
    """One recorded run as the replay feeds it: each step's statistics and the loss the detector is told."""

    exempt: frozenset[str]
    traits: Any
    steps: list[tuple[int, float | None, StepStats]]


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__" and name == "Trace":
            return Trace
        return super().find_class(module, name)


def load_traces(path: str) -> dict[str, Trace]:
    """The traces ``benchmarks/bank.py record`` wrote, by run name (or the older scenario bank's ``--save``)."""
    with open(path, "rb") as f:
        raw = _Unpickler(f).load()
    return {name: _from_bank(t) if hasattr(t, "records") else t for name, t in raw.items()}


def _from_bank(bank_trace: Any) -> Trace:
    """A bank trace: each step's statistics and its own loss (the previous batch's in traces that lack it)."""
    from gradwatch_adapter import to_stats

    from lightning_gradwatch.remedies import ModelTraits

    trace = Trace()
    trace.exempt, trace.traits = bank_trace.exempt, ModelTraits()
    trace.steps = [(r.step, r.observed if r.current is None else r.current, to_stats(r)) for r in bank_trace.records]
    return trace


def load_old(path: str) -> ModuleType:
    """Import the package at ``path`` as :data:`OLD_NAME` (a renamed copy in a temporary directory)."""
    where = Path(tempfile.mkdtemp(prefix="gradwatch-old-"))
    shutil.copytree(path, where / OLD_NAME, ignore=shutil.ignore_patterns("__pycache__"))
    for file in (where / OLD_NAME).rglob("*.py"):
        file.write_text(file.read_text().replace("lightning_gradwatch", OLD_NAME))
    sys.path.insert(0, str(where))
    return importlib.import_module(OLD_NAME)


# ---------------------------------------------------------------------------------------------------------- values
def plain(value: Any) -> Any:
    """A comparable form: floats by ``repr``, containers recursively, enums by value, objects by their fields."""
    if isinstance(value, float):
        return repr(value)
    if hasattr(value, "value") and type(value).__module__ != "builtins" and isinstance(value, str):
        return str(value.value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def alert_fields(alert: Any) -> list[Any]:
    return plain(
        [
            alert.kind,
            alert.step,
            alert.layers,
            alert.value,
            alert.threshold,
            alert.message,
            alert.optimizer,
            alert.extra,
        ]
    )


def verdict_fields(verdict: Any) -> list[Any]:
    return plain(
        [
            verdict.spike,
            verdict.spike_threshold,
            verdict.nonfinite,
            verdict.exploding,
            verdict.vanishing_layers,
            [alert_fields(a) for a in verdict.alerts],
        ]
    )


# ---------------------------------------------------------------------------------------------------------- detector
def detector_steps(module: Any, trace: Trace, start: int = 0, state: dict[str, Any] | None = None) -> Iterator[Any]:
    """Feed ``trace.steps[start:]`` to a fresh detector of ``module`` (loaded from ``state``), one record per step."""
    detector = module.GradientDetector(None, exempt_layers=trace.exempt, traits=trace.traits)
    if state is not None:
        detector.load_state_dict(copy.deepcopy(state))
    for step, loss, stats in trace.steps[start:]:
        if loss is not None:
            detector.observe_loss(loss)
        verdict = detector.update(step, stats)
        yield [verdict_fields(verdict), plain(detector.spike_threshold()), plain(detector.state_dict())], detector


def check_detector(old: ModuleType, new: ModuleType, trace: Trace, say: Callable[[str], None]) -> tuple[int, int]:
    """Steps compared and mismatches, for one trace: a straight run, then continuations from three checkpoints."""
    n = len(trace.steps)
    marks = sorted({int(n * f) for f in CHECKPOINTS if 0 < int(n * f) < n})
    saved_old: dict[int, dict[str, Any]] = {}
    saved_new: dict[int, dict[str, Any]] = {}
    expected: list[Any] = []
    compared = mismatches = 0
    steps = zip(detector_steps(old, trace), detector_steps(new, trace))
    for i, ((a, old_det), (b, new_det)) in enumerate(steps):
        compared += 1
        expected.append(a)
        if a != b:
            mismatches += 1
            if mismatches == 1:
                say(f"detector, step {trace.steps[i][0]}: {_first_difference(a, b)}")
        if i + 1 in marks:
            saved_old[i + 1] = copy.deepcopy(old_det.state_dict())
            saved_new[i + 1] = copy.deepcopy(new_det.state_dict())
    exempt = _norm_layers(trace)  # the recordings hold no exempt layers: check that path too, on norm layers
    if exempt:
        with_exempt = replace_exempt(trace, exempt)
        for i, (a, b) in enumerate(zip(detector_steps(old, with_exempt), detector_steps(new, with_exempt))):
            compared += 1
            if a[0] != b[0]:
                mismatches += 1
                say(f"detector with exempt layers, step {trace.steps[i][0]}: {_first_difference(a[0], b[0])}")
                break
    for mark in marks:
        for origin, state in (("new", saved_new[mark]), ("old", saved_old[mark])):
            for j, (b, _) in enumerate(detector_steps(new, trace, mark, state)):
                compared += 1
                if expected[mark + j] != b:
                    mismatches += 1
                    say(
                        f"detector resumed from the {origin} state at step {trace.steps[mark][0]}, step"
                        f" {trace.steps[mark + j][0]}: {_first_difference(expected[mark + j], b)}"
                    )
                    break
    return compared, mismatches


def _norm_layers(trace: Trace) -> frozenset[str]:
    """The trace's normalisation layers, by name (the layers GradWatch exempts from the per-layer vanishing test)."""
    names = {n for _, _, stats in trace.steps for n in stats.layers}
    return frozenset(n for n in names if any(k in n.rsplit(".", 1)[-1] for k in ("norm", "bn", "ln")))


def replace_exempt(trace: Trace, exempt: frozenset[str]) -> Trace:
    """The same trace with other exempt layers."""
    other = Trace()
    other.traits, other.steps, other.exempt = trace.traits, trace.steps, exempt
    return other


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        for k in a:
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{path}.{k}")
    return f"{path or 'value'}: old {str(a)[:300]} != new {str(b)[:300]}"


# ---------------------------------------------------------------------------------------------------------- engine
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "skip": {"on_exploding": "skip", "on_nonfinite": "skip"},
    "clip spikes": {"on_exploding": "clip"},
    "adaptive": {"clip": "adaptive"},
    "adaptive, clip spikes, cap": {"clip": "adaptive", "on_exploding": "clip", "clip_max_norm": 50.0},
    "fixed 1.0, stop, raise": {"clip": 1.0, "on_vanishing": "stop", "on_exploding": "stop", "on_nonfinite": "raise"},
    "ignore": {"on_vanishing": "ignore", "on_exploding": "ignore", "on_nonfinite": "ignore"},
    "fp16 scaler": {"scaler": True},
    "non-finite weights": {"weights": True},
}


class _Scaler:
    """An fp16 loss scaler stand-in: the scale halves on every non-finite step, from 2**20."""

    def __init__(self) -> None:
        self.scale = 2.0**20

    def get_scale(self) -> float:
        return self.scale


def engine_inputs(trace: Trace, variant: dict[str, Any]) -> Iterator[tuple[int, float | None, StepStats]]:
    """The trace's steps as the engine's collector would return them (the loss riding in ``extra``)."""
    for i, (step, loss, stats) in enumerate(trace.steps):
        if variant.get("weights") and i % LOG_EVERY == 0:
            norms = [1.0] * len(stats.layers)
            if norms and (i // LOG_EVERY) % WEIGHTS_EVERY == 3:
                norms[0] = math.inf
            stats = replace(stats, param_norm=tuple(norms))
        yield step, loss, replace(stats, extra=() if loss is None else (loss,))


def engine_steps(module: Any, trace: Trace, variant: dict[str, Any]) -> Iterator[Any]:
    """One record per step from ``module``'s engine, then one for its end state.

    Two APIs: a ``StepEngine`` (``_engine.py``: ``decide`` measures, judges and counts), or a ``Lane`` (``engine/``:
    the same through its pure ``StepJudge``). Either is given a stand-in collector that returns the recorded steps.
    """
    settings = {k: v for k, v in variant.items() if k not in ("scaler", "weights")}
    scaler = _Scaler() if variant.get("scaler") else None
    report_module = importlib.import_module(f"{module.__name__}.report")
    summary = report_module.RunSummary()
    if importlib.util.find_spec(f"{module.__name__}._engine") is not None:
        engine_module = importlib.import_module(f"{module.__name__}._engine")
        env_module = importlib.import_module(f"{module.__name__}._environment")
        env = env_module.Environment(log_every=LOG_EVERY, hist_every=0, scaler=scaler, traits=trace.traits)
        engine = engine_module.StepEngine(_config(module, engine_module, settings), 0, env, summary)
        detector, clipper = engine.detector, engine.clipper
    else:
        lane_module = importlib.import_module(f"{module.__name__}.engine.lane")
        env_module = importlib.import_module(f"{module.__name__}.engine.environment")
        env = env_module.Environment(log_every=LOG_EVERY, hist_every=0, scaler=scaler, traits=trace.traits)
        engine = lane_module.Lane(_config(module, None, settings), 0, 1, env, summary)
        detector, clipper = engine.judge.detector, engine.judge.clipper
    current: list[StepStats] = []
    engine.collector = SimpleNamespace(sharded=False, collect=lambda **_: current[0])
    detector.exempt_layers = trace.exempt
    for i, (step, _, stats) in enumerate(engine_inputs(trace, variant)):
        current[:] = [stats]
        decision = engine.decide(step, None)
        record: list[Any] = [plain(decision.step), decision.overflow, decision.log, decision.histograms]
        if decision.verdict is not None:
            flags = decision.flags
            clip = engine.settle(decision, flags, epoch=0, batch_idx=i)
            record += [
                verdict_fields(decision.verdict),
                [flags.skip, flags.stop, flags.fail],
                plain(decision.clip_threshold),
                [[alert_fields(a), str(r)] for a, r in decision.alerts],
                str(decision.health),
                plain(clip),
                plain(detector.spike_threshold()),
                plain(engine.take_interval_max(-1.0)) if decision.log else None,
            ]
        if scaler is not None and not stats.finite:
            scaler.scale /= 2
        yield record
    state = {"detector": detector.state_dict(), "clipper": clipper.state_dict(), "ticks": engine.ticks}
    yield [plain(summary.state_dict()), plain(state)]


def _config(module: Any, engine_module: Any, settings: dict[str, Any]) -> Any:
    """The engine's configuration object for flat ``GradWatch`` arguments (``Settings`` in the oldest API)."""
    if engine_module is not None and hasattr(engine_module, "Settings"):
        return engine_module.Settings(**settings)
    config_module = importlib.import_module(f"{module.__name__}.config")
    return config_module.WatchConfig.from_arguments(**settings)


def check_engine(old: ModuleType, new: ModuleType, trace: Trace, say: Callable[[str], None]) -> tuple[int, int]:
    compared = mismatches = 0
    for name, variant in VARIANTS.items():
        for i, (a, b) in enumerate(zip(engine_steps(old, trace, variant), engine_steps(new, trace, variant))):
            compared += 1
            if a != b:
                mismatches += 1
                if mismatches == 1 or i == len(trace.steps):
                    where = "the end" if i == len(trace.steps) else f"step {trace.steps[i][0]}"
                    say(f"engine ({name}), {where}: {_first_difference(a, b)}")
    return compared, mismatches


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", help="the traces benchmarks/bank.py record wrote")
    parser.add_argument("--old", required=True, help="the directory of the old lightning_gradwatch package")
    parser.add_argument("--only", default="", help="comma-separated substrings of run names")
    parser.add_argument("--no-engine", action="store_true", help="the detector check only")
    args = parser.parse_args(argv)
    old = load_old(args.old)
    new = lightning_gradwatch
    old_detectors = importlib.import_module(f"{OLD_NAME}.detectors")
    new_detectors = importlib.import_module("lightning_gradwatch.detectors")
    traces = load_traces(args.traces)
    chosen = {k: t for k, t in traces.items() if not args.only or any(o in k for o in args.only.split(","))}
    started = time.perf_counter()
    totals = {"runs": 0, "steps": 0, "detector comparisons": 0, "engine comparisons": 0, "mismatches": 0}
    for name, trace in chosen.items():
        lines: list[str] = []
        d_compared, d_bad = check_detector(old_detectors, new_detectors, trace, lines.append)
        e_compared, e_bad = (0, 0) if args.no_engine else check_engine(old, new, trace, lines.append)
        totals["runs"] += 1
        totals["steps"] += len(trace.steps)
        totals["detector comparisons"] += d_compared
        totals["engine comparisons"] += e_compared
        totals["mismatches"] += d_bad + e_bad
        verdict = "identical" if not d_bad + e_bad else f"{d_bad + e_bad} MISMATCHES"
        print(f"{name}: {len(trace.steps)} steps, {verdict}", flush=True)
        for line in lines:
            print(f"    {line}")
    print(
        f"\nreplay: {totals['runs']} runs, {totals['steps']} steps, {totals['detector comparisons']} detector and"
        f" {totals['engine comparisons']} engine step comparisons, {totals['mismatches']} mismatches"
        f" ({time.perf_counter() - started:.0f} s)"
    )
    return 1 if totals["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
