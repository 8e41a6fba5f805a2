"""The vanishing gradient problem, seen and named: an 11-layer sigmoid MLP against the same net with ReLU + BatchNorm.

Both nets train on the same synthetic classification task (4 Gaussian clusters in 32 dimensions, an easy problem,
so any trouble comes from the network), with the same optimizer (SGD with momentum, learning rate 0.1).

What it shows (300 steps, the default):

- ``sigmoid``: every sigmoid multiplies the backward signal by at most 0.25, so the first layers' gradients shrink to
  about 1e-8 of the last layer's. GradWatch raises a *vanishing* alert at step 19 that names them (``net.0, net.2,
  net.4, net.6, net.8``) and lists the remedies; the net stays at chance, 25% accuracy.
- ``relu_batchnorm``: no alert, 100% accuracy.

Accuracy is ``torchmetrics`` ``MulticlassAccuracy`` over the training data after training, printed side by side and
written to TensorBoard as ``eval/accuracy``.

    python examples/deep_sigmoid_vs_relu.py [--out runs/deep_sigmoid_vs_relu] [--steps 300] [--quick]
    tensorboard --logdir runs/deep_sigmoid_vs_relu

In TensorBoard: *Custom Scalars* (one chart per metric, a line per layer: ``grad_norm`` shows the sigmoid net's
first layers far below its last), *Histograms* and *Distributions* (``grad_hist/<layer>``: the gradient values;
``grad_hist_log10/<layer>``: their log10 magnitudes, the sigmoid net's first layer decades below its last), *Images*
(``gradwatch/gradient_flow``: mean and max |gradient| per layer; ``gradwatch/gradient_heatmap``: layer x step) and
*Text* (the alert and its remedies).
Each run also leaves a ``gradwatch.json`` report (``gradwatch report runs/deep_sigmoid_vs_relu``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `examples.harness`

import torch

from examples.harness import accuracy, example_arguments, log_after_fit, single_thread, train_demo
from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import DeepMLP

RUNS: dict[str, Callable[[], DeepMLP]] = {
    "sigmoid": lambda: DeepMLP("sigmoid", depth=11),
    "relu_batchnorm": lambda: DeepMLP("relu", batchnorm=True, depth=11),
}
QUICK_STEPS = 120  # the vanishing alert needs 50 steps of evidence (vanishing_patience)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train both nets; returns, per run, its alerts' kinds, the layers they name, its accuracy and steps."""
    args = example_arguments(__doc__, argv, out="runs/deep_sigmoid_vs_relu", steps=300, quick_steps=QUICK_STEPS)
    steps = args.steps
    with single_thread():
        outcome: dict[str, dict[str, Any]] = {}
        for name, make in RUNS.items():
            torch.manual_seed(0)  # the same start whatever ran before
            model = make()
            # GradientWarnings are held back during fit (train_demo); the alerts are printed below instead
            watch = GradWatch(log_every_n_steps=5, histogram_every_n_steps=25)
            trainer = train_demo(model, watch, args.out, name, steps)
            acc = accuracy(model)
            log_after_fit(trainer, {"eval/accuracy": acc})
            outcome[name] = {
                "alerts": [alert.kind for alert in watch.alerts],
                "layers": [list(alert.layers) for alert in watch.alerts],
                "accuracy": acc,
                "steps": trainer.global_step,
            }
            print(f"\n== {name}: {len(watch.alerts)} alert(s)")
            for alert in watch.alerts:
                print(alert.message)
    print("\n| run | steps | accuracy | alerts |\n|---|---:|---:|---|")
    for name, result in outcome.items():
        alerts = ", ".join(result["alerts"]) or "-"
        print(f"| {name} | {result['steps']} | {result['accuracy']:.1%} | {alerts} |")
    print(f"\nTensorBoard logs and gradwatch.json reports: {args.out}/   (tensorboard --logdir {args.out})")
    return outcome


if __name__ == "__main__":
    main()
