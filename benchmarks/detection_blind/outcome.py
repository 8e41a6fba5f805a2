"""Outcome of a training run, judged from the run's own record only.

Written before any GradWatch run of this round; not to be changed after.
"""

from __future__ import annotations

import math


def _smooth(losses, w):
    """Rolling median of window w (the windows that fit entirely)."""
    out = []
    for i in range(0, len(losses) - w + 1):
        win = sorted(losses[i : i + w])
        out.append(win[w // 2] if w % 2 else 0.5 * (win[w // 2 - 1] + win[w // 2]))
    return out


def outcome(trace) -> str:
    """Return "healthy" or "failed" for one training run (run WITHOUT GradWatch acting on it).

    `trace` is a dict with:
      loss           list of per-step training losses (floats; NaN/Inf allowed), in step order
      died           True if training raised / crashed before its planned end (optional, default False)
      nonfinite      True if any weight was NaN/Inf at the end of training (optional, default False)
      metric_start   held-out metric before training (optional)
      metric_end     held-out metric after training (optional)
      metric_ideal   the metric's perfect value (e.g. 0 for an error, 1 for an accuracy); required with a metric

    Rule (first that applies):
      1. died                                                              -> failed
      2. non-finite: any loss value NaN/Inf, any weight NaN/Inf at the end,
         or a non-finite held-out metric                                   -> failed
      3. diverged: with S = rolling median of the loss (window w = max(5, n // 20)),
         start = S[0], best = min(S), end = S[-1], scale = max(|start|, start - best, 1e-3):
         end - start > 2 * scale   (a positive loss ending above 3x its start)  -> failed
      4. never learned:
         - with a held-out metric: progress = (metric_start - metric_end) / (metric_start - metric_ideal),
           signed so that moving toward the ideal is positive (0 gap -> progress 1);
           progress < 0.05 (not 5% of the way from its start to its ideal, or got worse) -> failed
         - without one: end > start - 0.05 * scale                         -> failed
           (the smoothed loss has not come down 5% of its scale from its start)
      5. otherwise                                                         -> healthy
    A loss that rises by design (KL annealing, a curriculum) is judged on the held-out metric for
    learning; only rule 3 (ending above 3x its start) reads the loss for such runs. Slow learners
    that pass 4 are healthy.
    """
    if trace.get("died"):
        return "failed"
    losses = [float(x) for x in trace.get("loss", [])]
    if any(not math.isfinite(x) for x in losses) or trace.get("nonfinite"):
        return "failed"
    has_metric = trace.get("metric_start") is not None and trace.get("metric_end") is not None
    if has_metric:
        ms, me = float(trace["metric_start"]), float(trace["metric_end"])
        if not (math.isfinite(ms) and math.isfinite(me)):
            return "failed"
    if len(losses) < 5:
        return "failed"  # too short to have trained: counts as died
    w = max(5, len(losses) // 20)
    s = _smooth(losses, min(w, len(losses)))
    start, best, end = s[0], min(s), s[-1]
    scale = max(abs(start), start - best, 1e-3)
    if end - start > 2 * scale:
        return "failed"
    if has_metric:
        ideal = float(trace["metric_ideal"])
        gap = ms - ideal
        progress = 1.0 if gap == 0 else (ms - me) / gap
        if progress < 0.05:
            return "failed"
    else:
        if end > start - 0.05 * scale:
            return "failed"
    return "healthy"
