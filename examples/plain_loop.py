"""GradWatch in a plain PyTorch training loop: no Trainer, the same charts, alerts, responses and CI verdict.

A small regression net under SGD meets one batch whose labels are corrupted (multiplied by 10^4) at step 60, the
divergence of ``divergence_rescue.py``, trained here in a loop you write yourself. Two runs from the same weights on
the same batches:

1. ``watched``: ``GradWatch(on_exploding="stop")``. ``loop.step`` measures every layer's gradients after
   ``backward``, judges them, and on the explosion drops the step's update and sets ``loop.should_stop``: the loop
   ends with finite weights, and ``gradwatch check`` on its log directory exits 1.
2. ``clipped``: ``GradWatch(clip="adaptive")``: the corrupted step is clipped before ``optimizer.step``, the run
   completes with an ordinary loss and no alert.

    python examples/plain_loop.py [--out runs/plain_loop] [--steps 200] [--quick]
    gradwatch check runs/plain_loop        # the gate a CI job runs afterwards
    tensorboard --logdir runs/plain_loop
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `examples.harness`

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from examples.harness import example_arguments, finite_weights, single_thread
from lightning_gradwatch import GradWatch

CORRUPT_AT_STEP = 60
VARIANTS: dict[str, dict[str, Any]] = {
    "watched": {"on_exploding": "stop"},
    "clipped": {"clip": "adaptive"},
}


def data(seed: int = 0) -> DataLoader:
    """A smooth regression target (16 features), 32 samples a batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8192, 16, generator=g)
    y = (x[:, :4].sum(1, keepdim=True) + 0.5 * torch.sin(3 * x[:, 4:5])) / 2
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)


def train(watch: GradWatch, log_dir: str, steps: int) -> dict[str, Any]:
    """The loop a user writes, with GradWatch between ``backward`` and ``optimizer.step``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    losses: list[float] = []
    with watch.loop(model, log_dir=log_dir) as loop:
        while len(losses) < steps and not loop.should_stop:
            for x, y in data():
                if len(losses) == CORRUPT_AT_STEP:
                    y = y.clone()
                    y[:4] *= 1e4
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                if loop.step(optimizer, loss):  # False: this step's update was dropped (skip or stop)
                    optimizer.step()
                optimizer.zero_grad()
                losses.append(float(loss.detach()))
                if loop.should_stop or len(losses) == steps:
                    break
    return {
        "steps": len(losses),
        "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        "finite_weights": finite_weights(model),
        "alerts": [(alert.kind, alert.step) for alert in watch.alerts],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train both variants; returns, per variant, steps taken, the last losses' mean, finite weights and alerts."""
    args = example_arguments(__doc__, argv, out="runs/plain_loop", steps=200, quick_steps=100)
    outcome: dict[str, dict[str, Any]] = {}
    with single_thread():
        for name, kwargs in VARIANTS.items():
            watch = GradWatch(log_every_n_steps=1, **kwargs)
            outcome[name] = train(watch, str(Path(args.out) / name), args.steps)
            for alert in watch.alerts[:2]:
                print(f"[{name}] {alert.message.splitlines()[0]}")
    print("\n| variant | steps | last loss | finite weights | alerts |")
    print("|---|---:|---:|:---:|---|")
    for name, r in outcome.items():
        loss = f"{r['last_loss']:.3g}" if math.isfinite(r["last_loss"]) else "nan"
        alerts = ", ".join(f"{kind}@{step}" for kind, step in r["alerts"]) or "-"
        print(f"| {name} | {r['steps']} | {loss} | {'yes' if r['finite_weights'] else 'no'} | {alerts} |")
    print(f"\nTensorBoard logs and gradwatch.json reports: {args.out}/   (gradwatch check {args.out})")
    return outcome


if __name__ == "__main__":
    main()
