"""Vanishing gradients through time: a vanilla RNN against an LSTM on a task that needs an 80-step memory.

Each sequence starts with a token (one of 4, one-hot) followed by 79 steps of noise; the answer, read at the last
step, is the first token. Both nets (32 hidden units, Adam, learning rate 3e-3, the same batches) train for 600
steps; accuracy is ``torchmetrics`` ``MulticlassAccuracy`` on 2048 held-out sequences (chance: 25%).

What the per-layer charts can and cannot show here: an RNN's weights are shared by every time step, so their
gradient is a sum over time that the recent steps dominate, and it does not vanish; GradWatch rightly raises no
*vanishing* alert for either net. The vanishing is *through time*, and this example measures it directly: the
gradient of the loss with respect to each input, ``|d loss / d x_t|`` (``SequenceMemory.gradient_through_time``),
and the ratio of the first input's to the last input's, before and after training.

What it shows (the default run, seed 0):

- ``lstm``: 100% held-out accuracy within 100 steps. Its gradient reaching the first input is about 2e-2 of the
  last input's at the start and of the same order as the last input's after training: the answer can learn from the
  first token, and does.
- ``rnn``: stays at chance (25%). At the start the gradient reaching the first input is below 1e-15 of the last
  input's (0 in float32 for many initialisations); after training it is still around 1e-6 or less: nothing tells
  the net to remember.

The separation is statistical, not absolute. Over seeds 0-4 (1000 steps each), every LSTM learned the task within
600 steps (three within 100), and every vanilla RNN stayed at chance for at least 300 steps; two of them stayed at
chance for all 1000, one found a partial memory (74%) while its through-time ratio stayed near 1e-10 (a saturated,
attractor-like state keeps the token without passing a gradient back), and one found the full memory after about
900 steps, when its gradients exploded (GradWatch's *exploding* alert: the other half of the classic RNN story).

    python examples/rnn_vs_lstm.py [--out runs/rnn_vs_lstm] [--steps 600] [--quick]
    tensorboard --logdir runs/rnn_vs_lstm   # eval/accuracy, probe/first_to_last_input_gradient, grad_norm/...
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `examples.harness`

import torch

from examples.harness import accuracy, example_arguments, log_after_fit, single_thread, train_demo
from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import SequenceMemory

SEQ_LEN = 80
SEED = 0
QUICK_STEPS = 150


def through_time_ratio(model: SequenceMemory) -> float:
    """``|d loss / d x_0|`` over ``|d loss / d x_last|``: how much of the answer's gradient reaches the first input."""
    grad = model.gradient_through_time()
    return float(grad[0] / grad[-1])


def held_out_accuracy(model: SequenceMemory) -> float:
    """Accuracy on sequences the model never trained on (the same task, data drawn with another seed)."""
    return accuracy(model, SequenceMemory(seq_len=model.seq_len, seed=model.seed + 1).dataset())


def ratio_text(ratio: float) -> str:
    """A ratio for the table; an exact 0 is a gradient that underflowed float32 on its way back."""
    return "0 (underflow)" if ratio == 0.0 else f"{ratio:.1e}"


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Train both nets; returns, per net, accuracy, the through-time gradient ratios, the alerts' kinds and steps."""
    args = example_arguments(__doc__, argv, out="runs/rnn_vs_lstm", steps=600, quick_steps=QUICK_STEPS)
    steps = args.steps
    with single_thread():
        outcome: dict[str, dict[str, Any]] = {}
        for cell in ("rnn", "lstm"):
            torch.manual_seed(SEED)  # the same start whatever ran before
            model = SequenceMemory(cell, seq_len=SEQ_LEN, seed=SEED)
            before = through_time_ratio(model)
            # GradientWarnings are held back during fit (train_demo); the alerts are printed below instead
            watch = GradWatch(log_every_n_steps=5, histogram_every_n_steps=25)
            trainer = train_demo(model, watch, args.out, cell, steps)
            after = through_time_ratio(model)
            acc = held_out_accuracy(model)
            log_after_fit(trainer, {"eval/accuracy": acc, "probe/first_to_last_input_gradient": after})
            outcome[cell] = {
                "accuracy": acc,
                "ratio_before": before,
                "ratio_after": after,
                "alerts": [alert.kind for alert in watch.alerts],
                "steps": trainer.global_step,
            }
            print(f"\n== {cell}: {len(watch.alerts)} alert(s)")
            for alert in watch.alerts[:3]:
                print(alert.message)
    print("\n|d loss / d x_0| / |d loss / d x_last|: the share of the answer's gradient that reaches the first input")
    print("\n| net | steps | held-out accuracy | gradient ratio at start | after training | alerts |")
    print("|---|---:|---:|---:|---:|---|")
    for cell, r in outcome.items():
        print(
            f"| {cell} | {r['steps']} | {r['accuracy']:.1%} | {ratio_text(r['ratio_before'])} |"
            f" {ratio_text(r['ratio_after'])} | {', '.join(r['alerts']) or '-'} |"
        )
    print(f"\nTensorBoard logs and gradwatch.json reports: {args.out}/   (tensorboard --logdir {args.out})")
    return outcome


if __name__ == "__main__":
    main()
