"""Vanishing gradients through time: a vanilla RNN against an LSTM on a task that needs a 60-step memory.

Each sequence starts with a token (one of 4, one-hot) followed by 59 steps of noise; the answer, read at the last
step, is the first token. The LSTM (forget-gate bias initialised to remember) learns it within 150 steps. The
vanilla tanh RNN stays at chance: the gradient that links its answer to the first input is about 10^-14 of the one
from the last input, so nothing tells it to remember. (Train it long enough and it does find the memory, and then
its gradients explode: GradWatch's *exploding* alert, the other half of the classic RNN story.)

What GradWatch's per-layer picture can and cannot show here: an RNN's weights are shared by every time step, so
their gradient is a sum over time that the recent steps dominate, and it does not vanish; the vanishing is *through
time*. This example therefore also measures ``|d loss / d x_t|`` per time step (``SequenceMemory.
gradient_through_time``) before and after training, and prints the first-to-last ratio of each net.

    python examples/rnn_vs_lstm.py [--out runs/rnn_vs_lstm] [--steps 300] [--quick]
    tensorboard --logdir runs/rnn_vs_lstm
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import SequenceMemory, accuracy, train_demo

SEQ_LEN = 60


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train both nets; returns, per net, accuracy, the through-time gradient ratios and the alerts' kinds."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/rnn_vs_lstm", help="TensorBoard log directory")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--quick", action="store_true", help="150 steps per run")
    args = parser.parse_args(argv)
    steps = 150 if args.quick else args.steps
    outcome: dict[str, dict[str, Any]] = {}
    for cell in ("rnn", "lstm"):
        model = SequenceMemory(cell, seq_len=SEQ_LEN)
        before = model.gradient_through_time()
        watch = GradWatch(log_every_n_steps=5, histogram_every_n_steps=25)
        train_demo(model, watch, args.out, cell, steps)
        after = model.gradient_through_time()
        outcome[cell] = {
            "accuracy": accuracy(model),
            "ratio_before": float(before[0] / before[-1]),
            "ratio_after": float(after[0] / after[-1]),
            "alerts": [alert.kind for alert in watch.alerts],
        }
        print(f"\n== {cell}: {len(watch.alerts)} alert(s)")
        for alert in watch.alerts[:3]:
            print(alert.message)
    print("\n| net | accuracy | gradient at x_0 / at x_last, at start | after training | alerts |")
    print("|---|---:|---:|---:|---|")
    for cell, r in outcome.items():
        print(
            f"| {cell} | {r['accuracy']:.1%} | {r['ratio_before']:.1e} | {r['ratio_after']:.1e} |"
            f" {', '.join(r['alerts']) or '-'} |"
        )
    print(f"\nTensorBoard logs and gradwatch.json reports: {args.out}/   (tensorboard --logdir {args.out})")
    return outcome


if __name__ == "__main__":
    main()
