"""A cap on the step's size relative to the weights, on top of ``clip="adaptive"``: measured, not shipped.

    python benchmarks/clipping_trust.py [--caps 0.1,0.05,0.02] [--cache FILE]

On every SGD cell of the clipping families (``clipping_families.py``; AdamW's step does not scale with the gradient),
the threshold of each step is ``min(clip="adaptive", c * ||w|| / lr)``: SGD's step ``lr * ||g||`` held to ``c`` times
the weights' norm (``lr`` of the step, after the schedule). Each cell's ratio is to the best fixed threshold
(0.03 ... 10) in hindsight, or to no clipping for a healthy cell, as in ``clipping_suite.py``. ``--cache FILE``: the
suite's cache, whose peers' results (no clipping, the fixed thresholds, ZClip) are reused; without one they are
trained here (about 20 minutes more).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clipping_families as families
from clipping_rules import PEERS, ThresholdRule, ours
from clipping_run import train
from clipping_suite import Cache

FIXED = ("fixed 0.03", "fixed 0.1", "fixed 0.3", "fixed 1", "fixed 3", "fixed 10")


class TrustCap(ThresholdRule):
    """``clip="adaptive"``, its threshold held to ``cap * ||w|| / lr`` (``cap`` 0: the package's rule alone)."""

    def __init__(self, cap: float) -> None:
        self.rule, self.cap = ours()[1](), cap
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Keep the run's model and optimizer (the weights and the step's learning rate); returns the optimizer."""
        self.model, self.optimizer = model, optimizer
        return optimizer

    def update(self, total_norm: float, loss: float | None = None, layer_norms=(), stats=None) -> float:
        threshold = self.rule.update(total_norm, loss=loss, layer_norms=layer_norms, stats=stats)
        if self.cap <= 0 or self.model is None or self.optimizer is None:
            return threshold
        weights = torch.stack([p.detach().norm() for p in self.model.parameters() if p.grad is not None]).norm()
        return min(threshold, self.cap * float(weights) / self.optimizer.param_groups[0]["lr"])


def run(cell: families.Cell, cap: float) -> float:
    """The cell's final metric under ``clip="adaptive"`` with the step cap ``cap`` (0: none); NaN when lost."""
    setup, rule = families.setup(cell), TrustCap(cap)
    made = setup.optimizer
    setup = dataclasses.replace(setup, optimizer=lambda model: rule.bind(model, made(model)))
    return train(setup, rule).metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caps", default="0.1,0.05,0.02", help="comma-separated values of c")
    parser.add_argument("--cache", type=Path, default=None, help="the suite's JSON-lines cache of results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    caps = [0.0, *(float(c) for c in args.caps.split(","))]
    cache = Cache(args.cache)

    def peer(cell: families.Cell, name: str) -> float:
        key = f"full|{cell.family}/{cell.config}/s{cell.seed}|{name}"
        result = cache.get(key)
        if result is None:
            result = train(families.setup(cell), PEERS[name]())
            cache.put(key, result)
        return result.metric

    rows: dict[float, list[tuple[str, str, float, bool]]] = {c: [] for c in caps}
    for cell in families.cells():
        if not isinstance(families.setup(cell).optimizer(torch.nn.Linear(1, 1)), torch.optim.SGD):
            continue
        fixed = [m for m in (peer(cell, name) for name in FIXED) if math.isfinite(m)]
        reference = peer(cell, "none") if cell.kind == "healthy" else min(fixed or [math.nan])
        zclip = peer(cell, "ZClip defaults")
        line = []
        for c in caps:
            metric = run(cell, c)
            ratio = metric / reference if math.isfinite(metric) else math.inf
            no_worse = math.isfinite(metric) and (not math.isfinite(zclip) or metric <= 1.05 * zclip)
            rows[c].append((cell.family, cell.kind, ratio, no_worse))
            line.append(f"c={c:g}: {ratio:.3g}")
        print(f"{cell.family}/{cell.config}/s{cell.seed} ({cell.kind}):", ", ".join(line), flush=True)
    print("\n| c | healthy within 1.1x | trouble within 2x | no worse than ZClip | per family: worst / within 2x |")
    print("|---|---:|---:|---:|---|")
    for c, got in rows.items():
        healthy = [r for _, kind, r, _ in got if kind == "healthy"]
        trouble = [r for _, kind, r, _ in got if kind != "healthy"]
        per_family = []
        for family in dict.fromkeys(f for f, *_ in got):
            ratios = sorted(r for f, kind, r, _ in got if f == family and kind != "healthy")
            per_family.append(f"{family} {ratios[-1]:.3g} / {sum(r <= 2 for r in ratios)}/{len(ratios)}")
        name = 'none (clip="adaptive")' if c == 0 else f"{c:g}"
        print(
            f"| {name} | {sum(r <= 1.1 for r in healthy)}/{len(healthy)} "
            f"| {sum(r <= 2 for r in trouble)}/{len(trouble)} | {sum(z for *_, z in got)}/{len(got)} "
            f"| {', '.join(per_family)} |"
        )


if __name__ == "__main__":
    main()
