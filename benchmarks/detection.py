"""Detection quality, measured: each scenario is trained with GradWatch and its alerts are compared with what should
happen.

    python benchmarks/detection.py [--quick] [--only NAME[,NAME]]

Healthy scenarios must stay silent (an alert there is a false alarm). Failing ones must alert with the right kind,
at the right layers; for divergences, the exploding warning must come at least two steps before the first non-finite
gradient (the *lead*). Runs use ``on_*="warn"``, which leaves training untouched, so the first non-finite step seen in
the same run is the reference. A second run of each divergence with the default responses shows whether the weights
stay finite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import DeepMLP, Divergence, SequenceMemory, SmallCNN, TinyTransformerLM


@dataclass
class Scenario:
    name: str
    expect: str  # "silent", "vanishing", "exploding", "nonfinite"
    model: Callable[[], pl.LightningModule]
    steps: int
    quick_steps: int
    trainer: dict[str, Any] = field(default_factory=dict)
    first_layers: tuple[str, ...] = ()  # layers a vanishing alert must name


def _fp16() -> dict[str, Any]:
    from lightning.pytorch.plugins import MixedPrecision

    return {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**24))]}


SCENARIOS = [
    Scenario("cnn (healthy, converges)", "silent", lambda: SmallCNN(), 600, 200),
    Scenario("transformer LM (healthy)", "silent", lambda: TinyTransformerLM(), 400, 150),
    Scenario("relu+batchnorm MLP, 11 layers", "silent", lambda: DeepMLP("relu", batchnorm=True), 400, 150),
    Scenario("residual MLP, 20 blocks", "silent", lambda: DeepMLP("relu", residual=True, depth=22), 400, 150),
    Scenario("regression to zero loss", "silent", lambda: Divergence(lr=0.05), 800, 300),
    Scenario("fp16 + GradScaler overflow", "silent", lambda: DeepMLP("relu", batchnorm=True), 200, 100, _fp16()),
    Scenario(
        "sigmoid MLP, 11 layers",
        "vanishing",
        lambda: DeepMLP("sigmoid"),
        300,
        150,
        first_layers=("net.0", "net.2"),
    ),
    Scenario("LSTM, 40-step memory", "silent", lambda: SequenceMemory("lstm"), 300, 150),
    Scenario(
        "corrupted labels under SGD", "exploding", lambda: Divergence(corrupt_at_step=60, corrupt_scale=1e4), 100, 100
    ),
    Scenario("learning-rate ramp", "exploding", lambda: Divergence(lr_growth=1.05), 120, 120),
    Scenario("slow learning-rate ramp", "exploding", lambda: Divergence(lr_growth=1.02), 300, 300),
    Scenario(
        "Adam MLP taking off (norms rise, loss falls)",
        "silent",
        lambda: DeepMLP("relu", optimizer="adam", lr=1e-3),
        400,
        150,
    ),
    Scenario("NaN batch", "nonfinite", lambda: DeepMLP("relu", batchnorm=True, nan_at_step=40), 100, 100),
]


@dataclass
class Outcome:
    alerts: list[tuple[str, int, tuple[str, ...]]]
    spikes: int
    first_nonfinite: int | None
    steps: int
    finite_weights: bool
    seconds: float


def run(scenario: Scenario, steps: int, **watch: Any) -> Outcome:
    torch.manual_seed(0)
    gradwatch = GradWatch(log_every_n_steps=50, histogram_every_n_steps=0, images=False, progress_bar=False, **watch)
    with tempfile.TemporaryDirectory(prefix="gradwatch-detection-") as root:
        trainer = pl.Trainer(
            max_steps=steps,
            max_epochs=-1,
            logger=False,
            default_root_dir=root,
            accelerator="cpu",
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **scenario.trainer,
        )
        trainer.callbacks.append(gradwatch)
        model = scenario.model()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model)
    alerts = [(a.kind, a.step, a.layers) for a in gradwatch.alerts]
    first_nonfinite = next((step for kind, step, _ in alerts if kind == "nonfinite"), None)
    events = gradwatch.state_dict()["summary"]["events"]
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    seconds = time.perf_counter() - start
    return Outcome(alerts, events.get("spike_steps", 0), first_nonfinite, trainer.global_step, finite, seconds)


def judge(scenario: Scenario, outcome: Outcome) -> tuple[str, str]:
    """(verdict, lead) for one scenario."""
    kinds = [kind for kind, _, _ in outcome.alerts]
    lead = ""
    if scenario.expect == "silent":
        return ("ok" if not kinds else f"FALSE ALARM ({', '.join(kinds)})"), lead
    if scenario.expect not in kinds:
        return f"MISSED (got {', '.join(kinds) or 'nothing'})", lead
    first = next(a for a in outcome.alerts if a[0] == scenario.expect)
    if scenario.expect == "exploding":
        if outcome.first_nonfinite is None:
            lead = "no NaN"
        else:
            lead = str(outcome.first_nonfinite - first[1])
            if outcome.first_nonfinite - first[1] < 2:
                return "LATE", lead
    if scenario.first_layers and not set(scenario.first_layers) <= set(first[2]):
        return f"WRONG LAYERS ({', '.join(first[2][:4])})", lead
    return "ok", lead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps per scenario")
    parser.add_argument("--only", default="", help="comma-separated substrings of scenario names")
    args = parser.parse_args()
    torch.set_num_threads(2)
    chosen = [s for s in SCENARIOS if not args.only or any(o in s.name for o in args.only.split(","))]
    rows = []
    failures = 0
    for scenario in chosen:
        steps = scenario.quick_steps if args.quick else scenario.steps
        outcome = run(scenario, steps, on_nonfinite="warn", on_exploding="warn", on_vanishing="warn")
        verdict, lead = judge(scenario, outcome)
        failures += verdict != "ok"
        alerts = (
            "; ".join(
                f"{k}@{s} [{', '.join(layers[:3])}{'...' if len(layers) > 3 else ''}]"
                for k, s, layers in outcome.alerts[:3]
            )
            or "-"
        )
        defaults = ""
        if scenario.expect in ("exploding", "nonfinite"):
            stopped = run(scenario, steps)  # default responses: stop on non-finite
            defaults = f"stops at {stopped.steps}, weights {'finite' if stopped.finite_weights else 'NOT FINITE'}"
        rows.append(
            (
                scenario.name,
                scenario.expect,
                alerts,
                str(outcome.first_nonfinite or "-"),
                lead,
                str(outcome.spikes),
                verdict,
                defaults,
                f"{outcome.seconds:.1f}",
            )
        )
        print(f"{scenario.name}: {verdict} ({outcome.seconds:.1f} s)", flush=True)
    header = (
        "scenario",
        "expected",
        "alerts (kind@step [layers])",
        "first NaN",
        "lead",
        "spikes",
        "verdict",
        "with default responses",
        "s",
    )
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{len(rows) - failures} of {len(rows)} scenarios as expected")


if __name__ == "__main__":
    main()
