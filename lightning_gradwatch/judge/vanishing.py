"""Vanishing gradients: the whole network, then each layer; both wait while an explosion lasts.

- :class:`Collapse`: the whole network is vanishing when every gradient is exactly zero, or when the total norm has
  fallen below ``collapse_ratio`` times its post-warm-up level, while the loss has not come down (a model that
  converges shrinks its gradients and its loss together; one that fits its data exactly has loss 0 and zero
  gradients), for ``vanishing_patience`` consecutive steps.
- :class:`Layers`: a layer is vanishing on a step when its norm is below ``vanishing_ratio`` times the largest layer
  norm, or below the absolute ``vanishing_floor``; it is alerted when that lasts ``vanishing_patience`` consecutive
  steps, once per episode (an episode lasts while any layer stays vanishing; layers that join it are reported in
  ``Verdict.vanishing_layers``). Normalisation layers and biases are exempt: their gradients are naturally small.

No vanishing verdict is given during an exploding episode, nor after one until the loss is back within 2x of its
best level from before (a layer small next to an exploding one is not vanishing); layers whose gradients are
exactly zero after an explosion are its aftermath (dead units), not a new diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from typing_extensions import override

from lightning_gradwatch.alerts import GradientAlert, format_layers
from lightning_gradwatch.judge.context import Context, Verdict
from lightning_gradwatch.judge.rule import RuleWatch, VanishingRule
from lightning_gradwatch.judge.state import as_int_map, as_optional_float, state
from lightning_gradwatch.kinds import AlertKind, Cause, Rule

if TYPE_CHECKING:  # annotations only: detection is plain Python and imports no torch
    from lightning_gradwatch.measure.records import StepStats

__all__ = ["VANISHING_RULES", "Collapse", "Layers", "VanishingWatch"]


@dataclass(eq=False)
class Collapse(VanishingRule):
    """The whole network: all-zero gradients, or a collapse, while the loss has not come down with it.

    A model that fits its data exactly (loss 0.0 in float32) has all-zero gradients too: that is convergence.
    """

    collapse_run: int = state(0, load=int)
    collapse_episode: bool = state(False, load=bool)
    reference_norm: float | None = state(None, load=as_optional_float)  # the total norm just after warm-up
    reference_loss: float | None = state(None, load=as_optional_float)  # the loss then

    name: ClassVar[Rule] = Rule.COLLAPSE
    settings: ClassVar[tuple[str, ...]] = ("collapse_ratio", "collapse_loss_fraction")

    def observe(self, stats: StepStats) -> None:
        """The first step after warm-up sets the reference levels."""
        if self.reference_norm is None and self.ctx.norms.warm:
            self.reference_norm = stats.total_norm
            self.reference_loss = self.ctx.losses.last_loss

    @override
    def suspend(self) -> None:
        self.collapse_run = 0

    def _converged(self) -> bool:
        """Whether the loss has come down: to 0.0, or below ``collapse_loss_fraction`` of its post-warm-up level."""
        last_loss = self.ctx.losses.last_loss
        return last_loss is not None and (
            last_loss == 0.0
            or (
                self.reference_loss is not None
                and self.reference_loss > 0
                and last_loss <= self.config.collapse_loss_fraction * self.reference_loss
            )
        )

    @override
    def judge(self, step: int, stats: StepStats, top: float, verdict: Verdict) -> GradientAlert | None:
        cfg = self.config
        collapsed = self._collapsed(stats, top)
        self.collapse_run = self.collapse_run + 1 if collapsed else 0
        if self.collapse_run >= cfg.vanishing_patience and not self.collapse_episode:
            self.collapse_episode = True
            return self._alert(step, stats)
        if not collapsed:
            self.collapse_episode = False
        return None

    def _collapsed(self, stats: StepStats, top: float) -> bool:
        """Whether the network has collapsed at this step.

        All-zero gradients, or a total norm far below the reference, while the loss has not come down.
        """
        converged = self._converged()
        if top > 0.0 and self.reference_norm:
            below = stats.total_norm < self.config.collapse_ratio * self.reference_norm
            loss_stuck = self.reference_loss is not None and self.reference_loss > 0 and not converged
            return below and loss_stuck
        return top == 0.0 and not converged

    def _alert(self, step: int, stats: StepStats) -> GradientAlert:
        cfg = self.config
        ref = self.reference_norm or 0.0
        ratio = stats.total_norm / ref if ref else 0.0
        cause = None
        if stats.total_norm == 0:
            what, cause = "every gradient is exactly zero", Cause.DEAD
        else:
            what = (
                f"the total gradient norm fell to {ratio:.3g}x its level after warm-up while the loss has not come"
                " down with it"
            )
        message = (
            f"Vanishing gradients at step {step}: {what}, for {cfg.vanishing_patience} consecutive steps."
            + self.ctx.hints(self.kind, cause)
        )
        return GradientAlert(self.kind, step, stats.layers, ratio, cfg.collapse_ratio, message, self.ctx.optimizer)


@dataclass(eq=False)
class Layers(VanishingRule):
    """Per layer, relative to the largest layer (or below an absolute floor)."""

    vanishing_run: dict[str, int] = state(load=as_int_map, factory=dict)  # consecutive vanishing steps per layer
    vanishing_episode: set[str] = state(load=set, factory=set)  # layers in the ongoing episode

    name: ClassVar[Rule] = Rule.LAYERS
    settings: ClassVar[tuple[str, ...]] = ("vanishing_ratio", "vanishing_floor")

    @override
    def suspend(self) -> None:
        self.vanishing_run.clear()
        self.vanishing_episode.clear()

    @override
    def judge(self, step: int, stats: StepStats, top: float, verdict: Verdict) -> GradientAlert | None:
        ongoing = bool(self.vanishing_episode)  # layers joining an ongoing episode are not alerted again
        limit = self.config.vanishing_ratio * top
        newly = [name for name, norm in zip(stats.layers, stats.grad_norm) if self._layer_step(name, norm, top, limit)]
        verdict.vanishing_layers = tuple(n for n in stats.layers if n in self.vanishing_episode)
        if not newly or ongoing:
            return None
        ordered = verdict.vanishing_layers
        worst = min(stats.grad_norm[stats.layers.index(n)] for n in ordered)
        return self._alert(step, ordered, worst / top if top else 0.0, stats)

    def _layer_step(self, name: str, norm: float, top: float, limit: float) -> bool:
        """Count one layer's step; returns whether the layer starts a vanishing episode now."""
        runs, floor = self.vanishing_run, self.config.vanishing_floor
        # units an explosion killed (gradients exactly zero after it) are its aftermath, not a new diagnosis
        if name in self.ctx.exempt_layers or (self.ctx.episode.exploded and norm == 0.0):
            runs.pop(name, None)
            self.vanishing_episode.discard(name)
            return False
        if top > 0 and (norm < limit or _below(norm, floor)):
            runs[name] = runs.get(name, 0) + 1
            if runs[name] >= self.config.vanishing_patience and name not in self.vanishing_episode:
                self.vanishing_episode.add(name)
                return True
        elif name in runs:
            del runs[name]
            self.vanishing_episode.discard(name)
        return False

    def _alert(self, step: int, layers: tuple[str, ...], ratio: float, stats: StepStats) -> GradientAlert:
        cfg = self.config
        top_layer = stats.layers[max(range(len(stats.grad_norm)), key=stats.grad_norm.__getitem__)]
        norms = dict(zip(stats.layers, stats.grad_norm))
        if all(norms.get(n, 1.0) == 0.0 for n in layers):
            message = (
                f"Vanishing gradients at step {step}: {format_layers(layers)} had gradients exactly zero for"
                f" {cfg.vanishing_patience} consecutive steps while {top_layer} still learns: their units give no"
                " gradient for any input (dead ReLUs, saturated units, or a part of the graph cut off)."
                + self.ctx.hints(self.kind, Cause.DEAD)
            )
        else:
            message = (
                f"Vanishing gradients at step {step}: {format_layers(layers)} had gradient norms below "
                f"{cfg.vanishing_ratio:g}x the largest layer's ({top_layer})"
                + (f" or below {cfg.vanishing_floor:g}" if cfg.vanishing_floor is not None else "")
                + f" for {cfg.vanishing_patience} consecutive steps (smallest ratio {ratio:.3g})."
                + self.ctx.hints(self.kind)
            )
        return GradientAlert(self.kind, step, layers, ratio, cfg.vanishing_ratio, message, self.ctx.optimizer)


def _below(norm: float, floor: float | None) -> bool:
    """Whether ``norm`` is below the absolute ``floor`` (when one is set)."""
    return floor is not None and norm < floor


#: The vanishing rules, in order: each judges every step it is not suspended on; the first alert of a step is kept.
VANISHING_RULES: tuple[type[VanishingRule], ...] = (Collapse, Layers)


class VanishingWatch(RuleWatch):
    """The vanishing rules of :data:`VANISHING_RULES`, suspended during and after an explosion.

    Owns ``vanishing_patience``, which every vanishing rule waits for.
    """

    kind = AlertKind.VANISHING
    settings = ("vanishing_patience",)
    rules: tuple[VanishingRule, ...]

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx, VANISHING_RULES)

    def update(self, step: int, stats: StepStats, verdict: Verdict) -> bool:
        """Judge one finite step (after the exploding watch); judging goes on."""
        top = max(stats.grad_norm) if stats.grad_norm else 0.0
        for rule in self.rules:
            rule.observe(stats)
        if self.ctx.vanishing_suspended() or (self.ctx.episode.exploded and top == 0.0):
            for rule in self.rules:
                rule.suspend()
            return True
        for rule in self.rules:
            alert = rule.judge(step, stats, top, verdict)
            if alert is not None and verdict.alert(self.kind) is None:
                verdict.alerts.append(alert)
        return True
