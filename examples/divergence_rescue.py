"""A run that diverges, three ways: watched only, stopped early, and rescued by adaptive clipping.

A small regression net (3 linear layers) under plain SGD meets one batch with four corrupted labels (multiplied by
10^4, as a sentinel value such as -9999 in raw data would be) at step 60. Its gradient norm jumps from about 1 to
about 4e3; that update throws the weights far off, the next steps' norms are 5e7 and 4e25, and at step 63 everything
is NaN. The three runs start from the same weights and see the same batches; only the GradWatch configuration
differs (every response not named is ``"warn"``):

1. ``warn``: ``GradWatch(on_exploding="warn", on_nonfinite="warn")`` only reports. The *exploding* alert comes at
   step 61, two steps before the first NaN gradient (step 63); the run goes on to the end with NaN weights and a NaN
   loss.
2. ``stop``: ``GradWatch(on_exploding="stop")`` ends training at the alert: step 61's update is skipped and the run
   stops after 62 steps with finite weights (already pushed far off by the corrupted step 60, so the loss is large,
   3e8: the point is a clean stop and a readable record at the moment of failure, instead of hours of NaN).
3. ``adaptive``: ``GradWatch(clip="adaptive")`` clips the outlying steps to a threshold it learned from the run
   itself, with no number to tune (the corrupted step 60 from a norm of about 4e3 to 2; 2 steps clipped in all):
   the run completes all its steps with finite weights and an ordinary loss (0.054, the same as a run that never
   saw the corrupted batch), and no alert at all.

The final loss is the mean squared error of the final weights over the whole training set.

    python examples/divergence_rescue.py [--out runs/divergence_rescue] [--steps 300] [--quick]
    tensorboard --logdir runs/divergence_rescue   # compare gradwatch/total_norm and gradwatch/clipped_norm
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `examples.harness`

import torch

from examples.harness import example_arguments, finite_weights, single_thread, train_demo
from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import Divergence

WATCH_ONLY: dict[str, Any] = {"on_vanishing": "warn", "on_exploding": "warn", "on_nonfinite": "warn"}
VARIANTS: dict[str, dict[str, Any]] = {
    "warn": WATCH_ONLY,
    "stop": {**WATCH_ONLY, "on_exploding": "stop"},
    "adaptive": {**WATCH_ONLY, "clip": "adaptive"},  # every alert kind only warns: clipping alone rescues
}
CORRUPT_AT_STEP = 60
QUICK_STEPS = 100


@torch.no_grad()
def final_loss(model: Divergence) -> float:
    """The model's loss over its whole training set, with its final weights (NaN once they are)."""
    return float(model.loss(model.dataset().tensors))


def first_nan_step(losses: list[float]) -> int | None:
    """The first step whose training loss was not finite, if any."""
    return next((step for step, loss in enumerate(losses) if not math.isfinite(loss)), None)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train the three variants; returns, per variant, steps completed, final loss, finite weights and alerts."""
    args = example_arguments(__doc__, argv, out="runs/divergence_rescue", steps=300, quick_steps=QUICK_STEPS)
    steps = args.steps
    with single_thread():
        outcome: dict[str, dict[str, Any]] = {}
        for name, kwargs in VARIANTS.items():
            torch.manual_seed(0)  # the same initial weights in every variant
            model = Divergence(corrupt_at_step=CORRUPT_AT_STEP, corrupt_scale=1e4)
            # GradientWarnings are held back during fit (train_demo); the alerts are printed below instead
            watch = GradWatch(log_every_n_steps=1, histogram_every_n_steps=20, **kwargs)
            trainer = train_demo(model, watch, args.out, name, steps)
            outcome[name] = {
                "steps": trainer.global_step,
                "final_loss": final_loss(model),
                "finite_weights": finite_weights(model),
                "nan_loss_from": first_nan_step(model.losses),
                "alerts": [(alert.kind, alert.step) for alert in watch.alerts],
            }
            print(f"\n== {name}: GradWatch({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
            for alert in watch.alerts[:3]:
                print(alert.message.splitlines()[0])
    print("\n| variant | steps | final loss | finite weights | NaN loss from step | alerts |")
    print("|---|---:|---:|:---:|---:|---|")
    for name, r in outcome.items():
        loss = f"{r['final_loss']:.3g}" if math.isfinite(r["final_loss"]) else "nan"
        alerts = ", ".join(f"{kind}@{step}" for kind, step in r["alerts"][:3]) or "-"
        nan_from = "-" if r["nan_loss_from"] is None else r["nan_loss_from"]
        print(f"| {name} | {r['steps']} | {loss} | {'yes' if r['finite_weights'] else 'no'} | {nan_from} | {alerts} |")
    print(f"\nTensorBoard logs and gradwatch.json reports: {args.out}/   (tensorboard --logdir {args.out})")
    return outcome


if __name__ == "__main__":
    main()
