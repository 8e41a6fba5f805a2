"""Large GradWatch runs written in seconds, through the package's own writers, without training a model.

A synthetic run has the shape of a deep net whose first layers' gradients vanish: layer ``i`` of ``n`` has a gradient
norm about ``10 ** (-8 * (1 - i / (n - 1)))`` (the last layer near 1, the first near 1e-8), with noise, a spike of
the total norm a third of the way in, and one vanishing alert. Its event files hold the scalars GradWatch writes at
every log step (``step_scalars``: norms, log10 norms, ratios, parameter norms, max-abs, zero fractions; the spike
threshold) in one ``Summary`` per step, as in training; its ``gradwatch.json`` comes from :class:`RunSummary`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from lightning_gradwatch import __version__
from lightning_gradwatch._names import SPIKE_THRESHOLD, TOTAL_NORM_MAX
from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.report import RunSummary, build_report, write_report
from lightning_gradwatch.stats import StepStats
from lightning_gradwatch.write.content import alert_text, step_scalars
from lightning_gradwatch.write.tensorboard import TensorBoardSink


def write_synthetic_run(
    directory: str | Path, steps: int = 10_000, layers: int = 200, log_every: int = 1, seed: int = 0
) -> Path:
    """Write a finished run of ``steps`` steps and ``layers`` layers, logged every ``log_every`` steps."""
    from torch.utils.tensorboard import SummaryWriter

    directory = Path(directory)
    rng = random.Random(seed)
    names = tuple(f"blocks.{i}.linear" for i in range(layers))
    decades = [-8.0 * (1 - i / max(layers - 1, 1)) for i in range(layers)]
    summary = RunSummary()
    spike = steps // 3
    alert_step = min(50, steps - 1)
    alert = GradientAlert(
        "vanishing",
        alert_step,
        names[: max(1, layers // 4)],
        1e-8,
        1e-5,
        f"Vanishing gradients at step {alert_step}: the first {max(1, layers // 4)} layers had gradient norms below"
        " 1e-05x the largest layer's.\nRemedies:\n  - add residual (skip) connections around deep stacks",
    )
    writer = SummaryWriter(str(directory))
    sink = TensorBoardSink(writer)
    for step in range(steps):
        scale = 30.0 if step == spike else 1.0
        norms = tuple(scale * 10 ** (d + rng.gauss(0, 0.1)) for d in decades)
        total = math.sqrt(sum(n * n for n in norms))
        logged = step % log_every == 0
        extended = {
            "param_norm": tuple(1.0 for _ in names),
            "max_abs": tuple(n / 10 for n in norms),
            "zero_fraction": tuple(0.0 for _ in names),
        }
        stats = StepStats(names, norms, total, tuple(1024 for _ in names), tuple(0 for _ in names), **extended)
        summary.add_step(step, stats, logged=logged)
        if logged:
            scalars = step_scalars(stats)
            scalars[TOTAL_NORM_MAX] = total
            scalars[SPIKE_THRESHOLD] = 5.0
            sink.write(step, scalars, {})
        if step == alert_step:
            sink.write_text("gradwatch/alerts", alert_text(alert), step)
    writer.close()
    doc = build_report(version=__version__, status="finished", config={}, summary=summary, alerts=[alert])
    write_report(directory, doc)
    return directory
