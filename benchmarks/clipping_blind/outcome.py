"""The outcome of one training run: its final held-out metric (lower is better).

outcome(model, metric_fn) -> float
    Evaluates ``metric_fn(model)`` (a held-out metric, lower is better: validation MSE, validation cross-entropy,
    held-out InfoNCE, policy cross-entropy to the best arm) once, after the last optimizer step.
    A run is *lost* (returned as ``math.inf``) when any weight of the model is non-finite or the metric is non-finite.

Per family the metric is:
  ae      : validation MSE of a conv autoencoder reconstructing held-out digits (inputs scaled to [0, 1])
  bandit  : held-out mean cross-entropy of the policy to the best arm of each held-out context
  infonce : held-out InfoNCE loss (temperature 0.1, fixed across cells) of a two-tower model on 512 held-out pairs
  poly    : validation MSE of a deep MLP regression on polynomial features
  tcn     : validation MSE (clean targets) of a dilated causal 1-D conv net on sequences
  resmlp  : validation cross-entropy of a residual MLP without normalisation on breast-cancer data
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
