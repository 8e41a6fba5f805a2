"""Outliers in most batches: the clipping grid's MLP at outlier rates where nearly every batch of 64 carries one.

    python benchmarks/clipping_most_batches.py [--seeds 3] [--steps 384]

The grid (``clipping_grid.py``) puts outliers in at most 1% of the samples. Here 4% and 10% of the samples are
outliers (93% and 99.9% of the batches carry one): regression targets x100 or x1000 under SGD with momentum and under
AdamW, and classification inputs x100 or x1000 under AdamW. Each row: one cell, the best fixed threshold of 0.03 ...
10 (its validation metric) and every rule's metric as a ratio to it, all from the same weights and batches. For the
regression under SGD, the same runs with ``nn.HuberLoss`` instead of the squared loss (their validation MSE), and the
step at which ``clip="adaptive"`` says its notice. A clean run (no outliers) is printed first for scale.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clipping_families import Cell, Setup, mlp_setup
from clipping_rules import PEERS, Rule, ours
from clipping_run import train

FIXED = ("fixed 0.03", "fixed 0.1", "fixed 0.3", "fixed 1", "fixed 3", "fixed 10")
SHOWN = ("none", "ZClip defaults", "ours")
HUBER = ("none", "fixed 0.3", "ours")
RATES, MAGNITUDES = (0.04, 0.1), (100.0, 1000.0)
CELLS = [
    (task, optimizer, rate, magnitude)
    for task, optimizer in (("regression", "sgd"), ("regression", "adamw"), ("classification", "adamw"))
    for rate in RATES
    for magnitude in MAGNITUDES
]


def _cell(task: str, optimizer: str, rate: float, magnitude: float, seed: int) -> Cell:
    params = (("task", task), ("optimizer", optimizer), ("rate", rate), ("magnitude", magnitude))
    return Cell("mlp", f"{task[:5]} {optimizer} {100 * rate:g}% x{magnitude:g}", seed, "outliers", params)


def _rules() -> dict[str, Callable[[], Rule]]:
    return {**{name: PEERS[name] for name in (*FIXED, "none", "ZClip defaults")}, "ours": ours()[1]}


def _huber(setup: Setup) -> Setup:
    setup.loss = lambda model, x, y: nn.functional.huber_loss(model(x), y)
    return setup


def _row(cell: Cell, steps: int) -> str:
    """One cell: the best fixed threshold's metric, each shown rule's ratio to it, the notice, Huber (SGD)."""
    runs = {name: train(mlp_setup(cell, steps), factory(), trace=name == "ours") for name, factory in _rules().items()}
    finite = [runs[name].metric for name in FIXED if runs[name].finite]
    best = min(finite) if finite else math.nan
    ratios = " ".join(f"{name} {runs[name].metric / best:8.3g}x" for name in SHOWN)
    notice = runs["ours"].trace.get("notice", [None])[0]
    line = f"{cell.config:28s} s{cell.seed}  best fixed {best:8.3g}  {ratios}  notice at step {notice}"
    if cell.get("task") == "regression" and cell.get("optimizer") == "sgd":
        huber = {name: train(_huber(mlp_setup(cell, steps)), _rules()[name]()).metric for name in HUBER}
        line += "  Huber: " + " ".join(f"{name} {metric:.3g}" for name, metric in huber.items())
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=384)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    clean = _cell("regression", "sgd", 0.0, 1.0, 0)
    metric = train(mlp_setup(clean, args.steps), PEERS["none"]()).metric
    print(f"clean regression under SGD, no clipping: validation MSE {metric:.3g}")
    for task, optimizer, rate, magnitude in CELLS:
        for seed in range(args.seeds):
            print(_row(_cell(task, optimizer, rate, magnitude, seed), args.steps), flush=True)


if __name__ == "__main__":
    main()
