"""A run that diverges, three ways: watched only, stopped early, and rescued by adaptive clipping.

A small regression net under plain SGD meets one batch with four corrupted labels (multiplied by 10^4, as a
sentinel value such as -9999 in raw data would be) at step 60. Its gradient norm jumps by orders of magnitude, the
weights overshoot, and two steps later everything is NaN.

1. ``warn``: GradWatch only reports. The *exploding* alert comes at step 61, two steps before the first NaN; the
   run ends with NaN weights and a NaN loss.
2. ``stop``: ``GradWatch(on_exploding="stop")`` ends training at the alert (step 61), before the weights turn
   non-finite: the run stops with finite weights and a readable record of what happened, instead of hours of NaN.
3. ``adaptive``: ``GradWatch(clip="adaptive")`` clips the few outlying steps to a threshold it learned from the
   run itself, with no number to tune: the run completes with finite weights and an ordinary final loss.

    python examples/divergence_rescue.py [--out runs/divergence_rescue] [--steps 300] [--quick]
    tensorboard --logdir runs/divergence_rescue   # compare gradwatch/total_norm and gradwatch/clipped_norm
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import Divergence, finite_weights, train_demo

WATCH_ONLY = {"on_vanishing": "warn", "on_exploding": "warn", "on_nonfinite": "warn"}
VARIANTS: dict[str, dict[str, Any]] = {
    "warn": WATCH_ONLY,
    "stop": {**WATCH_ONLY, "on_exploding": "stop"},
    "adaptive": {**WATCH_ONLY, "clip": "adaptive"},  # every alert kind only warns: clipping alone rescues
}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train the three variants; returns, per variant, steps completed, final loss, finite weights and alerts."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/divergence_rescue", help="TensorBoard log directory")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--quick", action="store_true", help="100 steps per run")
    args = parser.parse_args(argv)
    steps = 100 if args.quick else args.steps
    outcome: dict[str, dict[str, Any]] = {}
    for name, kwargs in VARIANTS.items():
        model = Divergence(corrupt_at_step=60, corrupt_scale=1e4)
        watch = GradWatch(log_every_n_steps=1, histogram_every_n_steps=20, **kwargs)
        trainer = train_demo(model, watch, args.out, name, steps)
        tail = model.losses[-10:]
        outcome[name] = {
            "steps": trainer.global_step,
            "final_loss": sum(tail) / len(tail),
            "finite_weights": finite_weights(model),
            "alerts": [(alert.kind, alert.step) for alert in watch.alerts],
        }
        print(f"\n== {name}: GradWatch({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
        for alert in watch.alerts[:3]:
            print(alert.message.splitlines()[0])
    print("\n| variant | steps | final loss | finite weights | alerts |\n|---|---:|---:|:---:|---|")
    for name, r in outcome.items():
        loss = f"{r['final_loss']:.3g}" if math.isfinite(r["final_loss"]) else "nan"
        alerts = ", ".join(f"{kind}@{step}" for kind, step in r["alerts"][:3]) or "-"
        print(f"| {name} | {r['steps']} | {loss} | {'yes' if r['finite_weights'] else 'no'} | {alerts} |")
    print(f"\nTensorBoard logs and gradwatch.json reports: {args.out}/   (tensorboard --logdir {args.out})")
    return outcome


if __name__ == "__main__":
    main()
