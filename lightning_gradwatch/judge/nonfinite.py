"""Non-finite gradients: any NaN/Inf gradient value; one alert per episode (consecutive non-finite steps).

A non-finite step ends the judging of the step: the other kinds see only finite steps, and learn nothing from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from lightning_gradwatch.alerts import GradientAlert, format_layers
from lightning_gradwatch.judge.context import Context, Verdict
from lightning_gradwatch.judge.rule import DetectionRule
from lightning_gradwatch.judge.state import Stateful, state
from lightning_gradwatch.kinds import AlertKind, Rule

if TYPE_CHECKING:  # annotations only: detection is plain Python and imports no torch
    from lightning_gradwatch.measure.records import StepStats

__all__ = ["NonFinite", "NonfiniteWatch"]


@dataclass(eq=False)
class NonFinite(DetectionRule):
    """NaN or Inf in any gradient value, or a total norm that is not finite."""

    nonfinite_episode: bool = state(False, load=bool)

    name: ClassVar[Rule] = Rule.NONFINITE
    kind: ClassVar[AlertKind] = AlertKind.NONFINITE

    def judge(self, step: int, stats: StepStats, verdict: Verdict) -> bool:
        """Judge one step; returns whether it is finite (and judging goes on)."""
        if stats.finite and math.isfinite(stats.total_norm):
            self.nonfinite_episode = False
            return True
        verdict.nonfinite = True
        self.ctx.counts.add("nonfinite_steps")
        if not self.nonfinite_episode:
            self.nonfinite_episode = True
            verdict.alerts.append(self._alert(step, stats))
        return False

    def _alert(self, step: int, stats: StepStats) -> GradientAlert:
        layers = stats.nonfinite_layers or stats.layers
        values = sum(stats.nonfinite_count)
        message = (
            f"Non-finite gradients (NaN/Inf) at step {step}: {values} value(s) in {format_layers(layers)}."
            + self.ctx.hints(self.kind)
        )
        return self.alert(step, layers, float(values), 0.0, message)


class NonfiniteWatch:
    """The non-finite rule, first of the watches: a non-finite step is judged by nothing else."""

    kind = AlertKind.NONFINITE
    settings: tuple[str, ...] = ()

    def __init__(self, ctx: Context) -> None:
        self.rule = NonFinite(ctx)

    def parts(self) -> tuple[Stateful, ...]:
        """The rule's part of the checkpoint."""
        return (self.rule,)

    def update(self, step: int, stats: StepStats, verdict: Verdict) -> bool:
        """Judge one step; returns whether judging goes on (the step is finite)."""
        return self.rule.judge(step, stats, verdict)
