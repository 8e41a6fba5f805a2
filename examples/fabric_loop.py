"""GradWatch in a Lightning Fabric loop: Fabric's loggers, ranks and precision, GradWatch's charts and responses.

A small classifier with a NaN batch at step 30 (inputs multiplied by NaN, as a corrupted record would give), trained
with ``fabric.backward`` and GradWatch between it and ``optimizer.step``. ``watch.loop(model, fabric=fabric)``
writes through Fabric's TensorBoard logger, unscales fp16 gradients through Fabric's precision plugin, and under DDP
takes every decision on all ranks together. With ``on_nonfinite="skip"``, the NaN step's update is dropped and
training goes on; ``gradwatch check`` on the log directory names the step (exit 1).

    python examples/fabric_loop.py [--out runs/fabric_loop] [--steps 120] [--quick] [--devices 2]
    gradwatch check runs/fabric_loop
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `examples.harness`

import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from examples.harness import finite_weights, single_thread
from lightning_gradwatch import GradWatch

NAN_AT_STEP = 30


def data(seed: int = 0) -> DataLoader:
    """Four Gaussian blobs in 16 dimensions, 32 samples a batch."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 16, generator=g) * 2
    y = torch.randint(0, 4, (4096,), generator=g)
    x = centers[y] + torch.randn(4096, 16, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)


def train(fabric: Fabric, steps: int) -> dict[str, Any]:
    """Fabric's loop, with GradWatch between ``fabric.backward`` and ``optimizer.step``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 4))
    model, optimizer = fabric.setup(net, torch.optim.AdamW(net.parameters(), lr=3e-3))
    loader = fabric.setup_dataloaders(data())
    watch = GradWatch(on_nonfinite="skip", log_every_n_steps=2)
    step = 0
    with watch.loop(model, fabric=fabric) as loop:
        while step < steps and not loop.should_stop:
            for x, y in loader:
                if step == NAN_AT_STEP:
                    x = x * float("nan")
                loss = nn.functional.cross_entropy(model(x), y)
                fabric.backward(loss)
                if loop.step(optimizer, loss):
                    optimizer.step()
                optimizer.zero_grad()
                step += 1
                if step == steps or loop.should_stop:
                    break
    return {"steps": step, "finite_weights": finite_weights(model), "alerts": [(a.kind, a.step) for a in watch.alerts]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train once; returns steps, finite weights and the alerts (rank 0's view), and the log directory."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/fabric_loop", help="TensorBoard log directory")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps")
    parser.add_argument("--quick", action="store_true", help="60 steps")
    parser.add_argument("--devices", type=int, default=1, help="processes (DDP on CPU with gloo when more than 1)")
    args = parser.parse_args(argv)
    steps = 60 if args.quick else args.steps
    strategy = "ddp" if args.devices > 1 else "auto"
    fabric = Fabric(
        accelerator="cpu", devices=args.devices, strategy=strategy, loggers=TensorBoardLogger(args.out, name="")
    )
    fabric.launch()
    with single_thread():
        outcome = train(fabric, steps)
    outcome["log_dir"] = fabric.logger.log_dir
    if fabric.global_rank == 0:
        print(f"steps {outcome['steps']}, finite weights: {outcome['finite_weights']}, alerts: {outcome['alerts']}")
        print(f"TensorBoard logs and gradwatch.json: {outcome['log_dir']}   (gradwatch check {args.out})")
    return outcome


if __name__ == "__main__":
    main()
