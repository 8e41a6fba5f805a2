"""The outcome of one training run of the second blind clipping round: its clean held-out metric (lower is better).

outcome(model, metric_fn) -> float
    Evaluates ``metric_fn(model)`` (the family's clean held-out metric) on the model as it is, under ``no_grad``.
    A run is *lost* (``math.inf``) when any weight of the model is non-finite or the metric is non-finite.
    ``run.py`` calls it once after the last optimizer step (the result, ``metric``), and after every 10th of the last
    100 steps (``late``: the median of those ten).

Per family the metric is:
  studentt : validation MSE to the noiseless teacher of an MLP regression trained on noisy labels
  flips    : validation cross-entropy on the true labels of the held-out digits
  parity   : held-out binary cross-entropy to the true parity (the training labels have 5% wrong)
  long     : validation MSE to the noiseless teacher, after 800 steps
  adamw    : validation MSE to the clean targets
  conv1d   : validation cross-entropy of the motif classes
"""

import math

import torch


@torch.no_grad()
def outcome(model, metric_fn):
    for p in model.parameters():
        if not torch.isfinite(p).all():
            return math.inf
    try:
        m = float(metric_fn(model))
    except (RuntimeError, ValueError, FloatingPointError):
        return math.inf
    return m if math.isfinite(m) else math.inf
