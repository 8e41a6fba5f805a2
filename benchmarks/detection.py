"""Detection quality, measured on the scenario bank of ``benchmarks/scenarios.py``: each scenario is a real Trainer run
with GradWatch, and its alerts are compared with the verdict written down for it before it was first run.

    python benchmarks/detection.py [--quick | --full] [--only NAME[,NAME]] [--half calibration|held-out]
                                   [--save TRACES] [--replay TRACES]

``--quick`` (the default) runs the quick subset, ``--full`` the whole bank. The calibration half and the held-out half
are printed separately, each with its summary: healthy runs must stay silent; every divergence must be alerted as
exploding at least two steps before its first non-finite gradient (*lead NaN*), and before its loss reaches 10x its
running minimum where there is no non-finite gradient (*lead 10x*; the running minimum is taken over the median of
the last five losses, and the loss must stay at 10x or above, and above its first value, for five steps, so one hard
batch or a converged loss wandering near zero is not a divergence); no exploding run may be called vanishing;
vanishing runs must name the right layers.

Runs use ``on_*="warn"``, which leaves training untouched, so the detector's input does not depend on its output:
``--save`` keeps each run's per-step statistics and ``--replay`` judges them again with the detector as it is now,
without training (how the constants were chosen on the calibration half). The numbers to quote come from real runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scenarios import BANK, Scenario  # noqa: E402

import lightning_gradwatch.judge.decision as engine_module  # noqa: E402  (the step judge builds the detectors)
from lightning_gradwatch import GradWatch  # noqa: E402
from lightning_gradwatch.detectors import DetectionConfig, GradientDetector  # noqa: E402
from lightning_gradwatch.stats import StepStats  # noqa: E402

LEAD_STEPS = 2  # an exploding alert must come at least this many steps before the first non-finite gradient
LOSS_FACTOR = 10.0  # ... and before the loss reaches this multiple of its running minimum
LOSS_SMOOTHING = 5  # the running minimum is of the median of this many losses; the loss must stay up this long


@dataclass
class Trace:
    """What one run fed its detector, step by step, and what it did."""

    exempt: frozenset[str] = frozenset()
    traits: Any = None
    steps: list[tuple[int, float | None, StepStats]] = field(default_factory=list)  # (step, loss observed, stats)
    losses: dict[int, float] = field(default_factory=dict)  # the model's own loss at each step
    alerts: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)
    global_step: int = 0
    seconds: float = 0.0


_RECORDING: list[Trace] = []


class _RecordingDetector(GradientDetector):
    """The detector the callback builds, recording its input (the benchmark's only instrumentation)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trace = _RECORDING[-1]
        self._trace.exempt, self._trace.traits = self.exempt_layers, self.traits
        self._observed: float | None = None

    def observe_loss(self, loss: float) -> None:
        self._observed = loss
        super().observe_loss(loss)

    def update(self, step: int, stats: StepStats) -> Any:
        kept = StepStats(stats.layers, stats.grad_norm, stats.total_norm, stats.numel, stats.nonfinite_count)
        self._trace.steps.append((step, self._observed, kept))
        self._observed = None
        return super().update(step, stats)


def run(scenario: Scenario) -> Trace:
    """Train ``scenario`` with GradWatch (every response ``"warn"``) and record what its detector saw."""
    trace = Trace()
    _RECORDING.append(trace)
    engine_module.GradientDetector = _RecordingDetector  # type: ignore[misc]
    watch = GradWatch(
        on_vanishing="warn",
        on_exploding="warn",
        on_nonfinite="warn",
        log_every_n_steps=50,
        histogram_every_n_steps=0,
        images=False,
        progress_bar=False,
    )
    model = scenario.build()
    try:
        trainer = _fit(scenario, model, watch, trace)
    finally:
        engine_module.GradientDetector = GradientDetector  # type: ignore[misc]
        _RECORDING.remove(trace)
    trace.losses = dict(model.losses)
    trace.alerts = [(a.kind, a.step, a.layers) for a in watch.alerts]
    trace.global_step = trainer.global_step
    return trace


def _fit(scenario: Scenario, model: pl.LightningModule, watch: GradWatch, trace: Trace) -> pl.Trainer:
    with tempfile.TemporaryDirectory(prefix="gradwatch-detection-") as root:
        trainer = pl.Trainer(
            max_steps=scenario.steps,
            max_epochs=-1,
            logger=False,
            default_root_dir=root,
            accelerator="cpu",
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[watch],
            **scenario.trainer(),
        )
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model)
        trace.seconds = time.perf_counter() - start
    return trainer


def replay(trace: Trace, config: DetectionConfig | None = None) -> list[tuple[str, int, tuple[str, ...]]]:
    """The alerts the detector as it is now gives on a recorded run."""
    detector = GradientDetector(config, exempt_layers=trace.exempt, traits=trace.traits)
    alerts = []
    for step, loss, stats in trace.steps:
        if loss is not None:
            detector.observe_loss(loss)
        alerts += [(a.kind, a.step, a.layers) for a in detector.update(step, stats).alerts]
    return alerts


# ---------------------------------------------------------------------------------------------------------- judging


def first_nonfinite(trace: Trace) -> int | None:
    """The first step with a non-finite gradient."""
    return next((step for step, _, stats in trace.steps if not stats.finite), None)


def loss_mark(losses: dict[int, float]) -> int | None:
    """The first step from which the loss stays >= 10x its running minimum (of medians of 5), and above its first
    value, for 5 steps (a loss that wanders between 1e-9 and 1e-7 after converging has not diverged)."""
    steps = sorted(losses)
    values = [losses[s] for s in steps]
    up = [False] * len(values)
    low = math.inf
    start = values[0] if values else math.nan
    for i, v in enumerate(values):
        up[i] = not math.isfinite(v) or (math.isfinite(low) and v >= LOSS_FACTOR * low and v > start)
        window = [x for x in values[max(0, i - LOSS_SMOOTHING + 1) : i + 1] if math.isfinite(x)]
        if window:
            low = min(low, statistics.median(window))
    for i in range(len(values)):
        if all(up[i : i + LOSS_SMOOTHING]):
            return steps[i]
    return None


@dataclass
class Row:
    scenario: Scenario
    alerts: list[tuple[str, int, tuple[str, ...]]]
    nan_step: int | None
    mark_step: int | None
    verdict: str
    first_alert: int | None
    lead_nan: int | None
    lead_mark: int | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def judge(scenario: Scenario, trace: Trace, alerts: list[tuple[str, int, tuple[str, ...]]]) -> Row:
    """Compare ``alerts`` with what ``scenario`` expects."""
    nan_step, mark_step = first_nonfinite(trace), loss_mark(trace.losses)
    kinds = [kind for kind, _, _ in alerts]
    row = Row(scenario, alerts, nan_step, mark_step, "ok", None, None, None, trace.seconds)
    expect = scenario.expect
    first = next((a for a in alerts if a[0] == expect), None)
    row.first_alert = first[1] if first else None
    if expect == "silent":
        row.verdict = "ok" if not kinds else f"FALSE ALARM ({', '.join(sorted(set(kinds)))})"
        return row
    if first is None:
        row.verdict = f"MISSED (got {', '.join(sorted(set(kinds))) or 'nothing'})"
        if expect == "exploding" and nan_step is None and mark_step is None:
            row.verdict += ", run did not diverge"
        return row
    if expect == "exploding":
        row.lead_nan = None if nan_step is None else nan_step - first[1]
        row.lead_mark = None if mark_step is None else mark_step - first[1]
        problems = []
        if nan_step is None and mark_step is None:
            problems.append("run did not diverge")
        if row.lead_nan is not None and row.lead_nan < LEAD_STEPS:
            problems.append("LATE for NaN")
        if nan_step is None and row.lead_mark is not None and row.lead_mark < 1:
            problems.append("LATE for 10x loss")
        if "vanishing" in kinds:
            problems.append("ALSO VANISHING")
        row.verdict = "; ".join(problems) or "ok"
    elif expect == "vanishing":
        named = set(first[2])
        if not set(scenario.layers) <= named or named & set(scenario.not_layers):
            row.verdict = f"WRONG LAYERS ({', '.join(first[2][:4])})"
        elif "exploding" in kinds:
            row.verdict = "ALSO EXPLODING"
    elif expect == "nonfinite":
        before = [k for k, s, _ in alerts if s < first[1]]
        if before:
            row.verdict = f"ALERT BEFORE THE NaN ({', '.join(before)})"
    return row


# ---------------------------------------------------------------------------------------------------------- output


def _fmt(value: int | None) -> str:
    return "-" if value is None else str(value)


def table(rows: list[Row]) -> list[str]:
    """Markdown table of one half."""
    out = [
        "| scenario | expected | got | first alert | first NaN | loss 10x | lead NaN | lead 10x | layers | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        got = ", ".join(f"{k}@{s}" for k, s, _ in r.alerts[:3]) + (" ..." if len(r.alerts) > 3 else "") or "silent"
        first = next((a for a in r.alerts if a[0] == r.scenario.expect), r.alerts[0] if r.alerts else None)
        layers = "-" if first is None else ", ".join(first[2][:3]) + (" ..." if len(first[2]) > 3 else "")
        out.append(
            f"| {r.scenario.name} | {r.scenario.expect} | {got} | {_fmt(r.first_alert)} | {_fmt(r.nan_step)} |"
            f" {_fmt(r.mark_step)} | {_fmt(r.lead_nan)} | {_fmt(r.lead_mark)} | {layers} | {r.verdict} |"
        )
    return out


def summary(rows: list[Row]) -> str:
    """One line: the targets, counted."""
    healthy = [r for r in rows if r.scenario.expect == "silent"]
    exploding = [r for r in rows if r.scenario.expect == "exploding"]
    diverged = [r for r in exploding if r.nan_step is not None or r.mark_step is not None]
    vanishing = [r for r in rows if r.scenario.expect == "vanishing"]
    nonfinite = [r for r in rows if r.scenario.expect == "nonfinite"]
    misdiagnosed = sum(any(k == "vanishing" for k, _, _ in r.alerts) for r in exploding)
    return (
        f"{sum(r.ok for r in rows)} of {len(rows)} as expected; healthy silent {sum(r.ok for r in healthy)}/"
        f"{len(healthy)}; divergences alerted in time {sum(r.ok for r in diverged)}/{len(diverged)}"
        f" ({len(exploding) - len(diverged)} expected divergence(s) did not diverge); exploding runs called"
        f" vanishing {misdiagnosed}; vanishing with the right layers {sum(r.ok for r in vanishing)}/{len(vanishing)};"
        f" NaN batches {sum(r.ok for r in nonfinite)}/{len(nonfinite)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick subset (the default)")
    size.add_argument("--full", action="store_true", help="the whole bank")
    parser.add_argument("--only", default="", help="comma-separated substrings of scenario names")
    parser.add_argument("--half", choices=("calibration", "held-out"), help="one half only")
    parser.add_argument("--save", help="write the runs' traces to this file (pickle)")
    parser.add_argument("--replay", help="judge the traces in this file again instead of training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.disable(logging.INFO)  # Lightning's banners
    warnings.filterwarnings("ignore")
    chosen = [
        s
        for s in BANK
        if (args.full or args.replay or s.quick)
        and (not args.only or any(o in s.name for o in args.only.split(",")))
        and (args.half is None or s.half == args.half)
    ]
    stored: dict[str, Trace] = {}
    if args.replay:
        with open(args.replay, "rb") as f:
            stored = pickle.load(f)
        chosen = [s for s in chosen if s.name in stored]
    rows: list[Row] = []
    for scenario in chosen:
        if args.replay:
            trace = stored[scenario.name]
            alerts = replay(trace)
        else:
            trace = run(scenario)
            stored[scenario.name] = trace
            alerts = trace.alerts
        row = judge(scenario, trace, alerts)
        rows.append(row)
        print(f"[{scenario.half}] {scenario.name}: {row.verdict} ({trace.seconds:.1f} s)", flush=True)
    if args.save and not args.replay:
        with open(args.save, "wb") as f:
            pickle.dump(stored, f)
    for half in ("calibration", "held-out"):
        part = [r for r in rows if r.scenario.half == half]
        if not part:
            continue
        print(f"\n### {half} half ({len(part)} scenarios)\n")
        print("\n".join(table(part)))
        print(f"\n{half}: {summary(part)}")


if __name__ == "__main__":
    main()
