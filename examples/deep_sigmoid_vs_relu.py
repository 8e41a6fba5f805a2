"""The vanishing gradient problem, seen and named: an 11-layer sigmoid MLP against the same net with ReLU + BatchNorm.

Both train on the same synthetic classification task (Gaussian clusters, an easy problem, so any trouble comes from
the network). In the sigmoid net every layer multiplies the backward signal by at most 0.25, and its first layers'
gradients shrink to about a millionth of the last layer's: GradWatch raises a *vanishing* alert that names them, and
the net stays near chance accuracy. The ReLU + BatchNorm net trains to high accuracy with no alert.

    python examples/deep_sigmoid_vs_relu.py [--out runs/deep_sigmoid_vs_relu] [--steps 300] [--quick]
    tensorboard --logdir runs/deep_sigmoid_vs_relu

In TensorBoard: *Custom Scalars* (one chart per metric, a line per layer), *Histograms* (``grad_hist/...``) and
*Images* (``gradwatch/flow``: mean and max |gradient| per layer; ``gradwatch/flow_heatmap``: layer x step).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import DeepMLP, accuracy, train_demo

RUNS = {
    "sigmoid": lambda: DeepMLP("sigmoid", depth=11),
    "relu_batchnorm": lambda: DeepMLP("relu", batchnorm=True, depth=11),
}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train both nets; returns, per run, its alerts' kinds, the layers they name and the accuracy."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/deep_sigmoid_vs_relu", help="TensorBoard log directory")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--quick", action="store_true", help="120 steps per run")
    args = parser.parse_args(argv)
    steps = 120 if args.quick else args.steps
    outcome: dict[str, dict[str, Any]] = {}
    for name, make in RUNS.items():
        model = make()
        watch = GradWatch(log_every_n_steps=5, histogram_every_n_steps=25)
        train_demo(model, watch, args.out, name, steps)
        outcome[name] = {
            "alerts": [alert.kind for alert in watch.alerts],
            "layers": [list(alert.layers) for alert in watch.alerts],
            "accuracy": accuracy(model),
        }
        print(f"\n== {name}: {len(watch.alerts)} alert(s)")
        for alert in watch.alerts:
            print(alert.message)
    print("\n| run | accuracy | alerts |\n|---|---:|---|")
    for name, result in outcome.items():
        print(f"| {name} | {result['accuracy']:.1%} | {', '.join(result['alerts']) or '-'} |")
    print(f"\nTensorBoard logs and gradwatch.json reports: {args.out}/   (tensorboard --logdir {args.out})")
    return outcome


if __name__ == "__main__":
    main()
