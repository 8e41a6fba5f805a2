"""Vanishing gradients: the whole network, a run that does not learn, each layer; all wait while an explosion lasts.

- :class:`Collapse`: the whole network is vanishing when every gradient is exactly zero, or when the (chained) total
  norm has fallen below ``collapse_ratio`` times its post-warm-up level, while the loss (median of 5 steps) has not
  come down (a model that converges shrinks its gradients and its loss together; one that fits its data exactly has
  loss 0 and zero gradients), for ``vanishing_patience`` consecutive steps.
- :class:`Stall`: vanishing judged with the loss. Once ``stall_steps`` losses have been seen, a run whose loss has not
  moved from where it started (its lowest median of 5 within ``stall_tolerance`` of the median of its first 5) while
  layers before the largest one in the model's order lie ``stall_decades`` (4) or more decades below it (each layer's
  median over the last 10 steps), the first of them :data:`REACHED` (2) or more, is vanishing: its first layers are
  not learning (gradients vanish on their way back from the loss; a head after the largest layer, small beside
  another head's loss, is not that; nor is a layer far below between first layers the gradient reaches). So is a run
  that learned and gave back :data:`GAVE_BACK` of it while its total norm fell below the norm at the loss's best (a
  collapse: a divergence gives its progress back with a growing norm), until it has learnt half of it back. It names
  the layers below ``vanishing_ratio`` times the largest (the ones the per-layer test and ``gradwatch report`` call
  small), the deepest one at least. A slowly learning deep net has a loss that moved, a converged one a loss far below
  its start: both stay silent; a stack whose first layers get a millionth of the last one's gradient, with a loss at
  chance, is named within tens of steps. A gap that closes is no stall (the gradient is reaching the first layers, and
  the loss follows: :class:`~lightning_gradwatch.judge.gap.LayerGap`). Under an optimizer that sizes each parameter's
  step by its own gradients (Adam and its kin, RMSprop, Adagrad; ``ModelTraits.own_step_sizes``) the layers far below
  step as far as the largest: such a net learns its way out by closing the gap (a deep plain ReLU stack under Adam
  takes 40-100 steps before its loss moves), so there the stall waits until whether the gap closes is known.
- :class:`Layers`: a layer is vanishing on a step when its norm is below ``vanishing_ratio`` times the largest layer
  norm, or below the absolute ``vanishing_floor``; it is alerted when that lasts ``vanishing_patience`` consecutive
  steps, once per episode (an episode lasts while any layer stays vanishing; layers that join it are reported in
  ``Verdict.vanishing_layers``). Normalisation layers and biases are exempt: their gradients are naturally small.
  Under an optimizer that sizes each parameter's step by its own gradients, a layer below ``vanishing_ratio`` times
  the largest steps as far as the largest: it is alerted only once the gap is known not to close
  (:class:`~lightning_gradwatch.judge.gap.LayerGap`); below the absolute ``vanishing_floor``, or exactly zero, as
  under any optimizer.
  A layer whose gradient is exactly *zero* is a dead one only when that follows from how training fails: its zeros
  last ``vanishing_patience`` steps while the loss has not improved since they began (its lowest median of 5 since
  then not ``stall_tolerance`` below its median of 5 when they began, or the best median before if lower: a blow-up
  that kills units lifts the loss where they die, and its coming back down is no improvement; its first 5 for zeros
  from the first step:
  the units give no gradient and nothing else makes up for them; a head whose loss term is weighted 0 for a while
  gives exact zeros too, in a run whose loss falls), and longer than any zeros it came back from before (a branch
  used on some batches only, with gradients zeroed rather than set to ``None`` between its uses, comes back after as
  long every time: it is intermittent, not dead).

A run is alerted once per vanishing episode, whichever rule sees it first: while one rule's episode lasts, the others
add no alert of their own. No vanishing verdict is given during an exploding episode, nor after one until the loss is
back within 2x of its best level from before (a layer small next to an exploding one is not vanishing); layers whose
gradients are exactly zero after an explosion are its aftermath (dead units), not a new diagnosis, and a run that
exploded is not judged by :class:`Stall`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import override

from lightning_gradwatch.alerts import GradientAlert, display_layer, format_layers
from lightning_gradwatch.history import Window, median
from lightning_gradwatch.judge.context import LOSS_WINDOW, Context, Verdict
from lightning_gradwatch.judge.gap import largest_at
from lightning_gradwatch.judge.rule import RuleWatch, VanishingRule
from lightning_gradwatch.judge.state import as_float_map, as_int_map, as_optional_float, state
from lightning_gradwatch.kinds import AlertKind, Cause, Rule

if TYPE_CHECKING:  # annotations only: detection is plain Python and imports no torch
    from lightning_gradwatch.config import DetectionConfig
    from lightning_gradwatch.measure.records import StepStats

__all__ = ["STALL_WINDOW", "VANISHING_RULES", "Collapse", "Layers", "Stall", "VanishingWatch", "moved"]

#: each layer's depth below the largest is the median over this many steps (at all of which it had a gradient)
STALL_WINDOW = 10
#: a first layer (in the model's order) less than this many decades below the largest is reached by the gradient:
#: nothing vanishes on the way back to it, and a layer after it that lies far below (an attention gate, a branch) is
#: small for its own reason
REACHED = 2.0
#: a run whose loss (median) has given back this share of what it learned is judged as a stall again ...
GAVE_BACK = 0.75
#: ... and such a stall lasts while it has given back this share
KEEPS_STALL = 0.5


def moved(level: float, reference: float, tolerance: float) -> bool:
    """Whether a loss ``level`` has come down from ``reference`` by more than ``tolerance`` of its size."""
    return level < reference - tolerance * abs(reference)


@dataclass(eq=False)
class Collapse(VanishingRule):
    """The whole network: all-zero gradients, or a collapse, while the loss has not come down with it.

    A model that fits its data exactly (loss 0.0 in float32) has all-zero gradients too: that is convergence.
    """

    collapse_run: int = state(0, load=int)
    collapse_episode: bool = state(False, load=bool)
    reference_norm: float | None = state(None, load=as_optional_float)  # the (chained) total norm just after warm-up
    reference_loss: float | None = state(None, load=as_optional_float)  # the loss (median) then

    name: ClassVar[Rule] = Rule.COLLAPSE
    settings: ClassVar[tuple[str, ...]] = ("collapse_ratio", "collapse_loss_fraction")

    def observe(self, stats: StepStats) -> None:
        """The first step after warm-up sets the reference levels."""
        if self.reference_norm is None and self.ctx.norms.warm:
            self.reference_norm = _chained(self.ctx)
            self.reference_loss = self.ctx.losses.level

    @override
    def suspend(self) -> None:
        self.collapse_run = 0

    @override
    def ongoing(self) -> bool:
        return self.collapse_episode

    def _converged(self) -> bool:
        """Whether the loss (median) has come down: to 0.0, or below ``collapse_loss_fraction`` of its level then."""
        level = self.ctx.losses.level
        return level is not None and (
            level == 0.0
            or (
                self.reference_loss is not None
                and self.reference_loss > 0
                and level <= self.config.collapse_loss_fraction * self.reference_loss
            )
        )

    @override
    def judge(self, step: int, stats: StepStats, top: float, verdict: Verdict) -> GradientAlert | None:
        cfg = self.config
        collapsed = self._collapsed(top)
        self.collapse_run = self.collapse_run + 1 if collapsed else 0
        if self.collapse_run >= cfg.vanishing_patience and not self.collapse_episode:
            self.collapse_episode = True
            return self._alert(step, stats)
        if not collapsed:
            self.collapse_episode = False
        return None

    def _collapsed(self, top: float) -> bool:
        """Whether the network has collapsed at this step.

        All-zero gradients, or a (chained) total norm far below the reference, while the loss has not come down.
        """
        converged = self._converged()
        if top > 0.0 and self.reference_norm:
            below = _chained(self.ctx) < self.config.collapse_ratio * self.reference_norm
            loss_stuck = self.reference_loss is not None and self.reference_loss > 0 and not converged
            return below and loss_stuck
        return top == 0.0 and not converged

    def _alert(self, step: int, stats: StepStats) -> GradientAlert:
        cfg = self.config
        ref = self.reference_norm or 0.0
        ratio = _chained(self.ctx) / ref if ref else 0.0
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
        return self.alert(step, stats.layers, ratio, cfg.collapse_ratio, message)


def _largest_layer(stats: StepStats) -> str:
    """The layer with the largest gradient norm this step, as messages name it."""
    return display_layer(stats.layers[largest_at(stats)])


def _chained(ctx: Context) -> float:
    """This step's chained total norm (0.0 for a zero norm)."""
    current = ctx.norms.current
    return 0.0 if current is None else 10**current


def _as_windows(value: Any) -> dict[str, Window]:
    return {str(k): Window(STALL_WINDOW, (float(x) for x in v)) for k, v in value.items()}


@dataclass(eq=False)
class Stall(VanishingRule):
    """A loss that has not moved from its start while layers lie decades below the largest: nothing learns there."""

    # per layer present (non-zero) at each of its last steps: its decades below the largest layer, over STALL_WINDOW
    stall_depths: dict[str, Window] = state(load=_as_windows, factory=dict)
    stall_best: float | None = state(None, load=as_optional_float)  # the loss's lowest median while judged
    stall_episode: list[str] = state(load=list, factory=list)  # the layers named, while the stall lasts

    name: ClassVar[Rule] = Rule.STALL
    settings: ClassVar[tuple[str, ...]] = ("stall_steps", "stall_decades", "stall_tolerance")

    def observe(self, stats: StepStats) -> None:
        """Keep each layer's depth below the largest layer, as the gap reads it this step.

        Layers exempt, or with a zero gradient, are left out: their history starts again.
        """
        depths = self.ctx.gap.depths
        kept = {n: w for n, w in self.stall_depths.items() if n in depths}
        for name, depth in depths.items():
            kept.setdefault(name, Window(STALL_WINDOW)).append(depth)
        self.stall_depths = kept

    def _waits(self) -> bool:
        """Whether the stall waits: the gap closes, or that is not known yet under an optimizer that sizes each step.

        See :class:`~lightning_gradwatch.judge.gap.LayerGap`; the optimizer sizes each parameter's step by its own
        gradients (``ModelTraits.own_step_sizes``).
        """
        closing = self.ctx.gap.closing()
        return self.ctx.traits.own_step_sizes if closing is None else closing

    @override
    def suspend(self) -> None:
        """Nothing to forget: the depths are kept through an explosion (a run that exploded is not judged)."""

    @override
    def ongoing(self) -> bool:
        return bool(self.stall_episode)

    @override
    def judge(self, step: int, stats: StepStats, top: float, verdict: Verdict) -> GradientAlert | None:
        start = self.ctx.losses.start
        if not self._judged() or start is None:
            return None
        learned = self._learned(start)
        # judged again when the loss gave back most of what it learned (a collapse after learning), until it has
        # learnt half of it back
        back = learned and self._gave_back(start, KEEPS_STALL if self.stall_episode else GAVE_BACK)
        if learned and not back:  # it learns, or learned and keeps what it learned
            self.stall_episode = []
            return None
        if self.stall_episode:
            verdict.vanishing_layers = tuple(n for n in stats.layers if n in self.stall_episode)
            return None
        return None if self._waits() else self._name(step, stats, verdict, start, learned)

    def _name(self, step: int, stats: StepStats, verdict: Verdict, start: float, learned: bool) -> GradientAlert | None:
        """Alert when layers lie ``stall_decades`` or more below the largest, naming those below the per-layer ratio.

        Only layers before the largest one in the model's order count: gradients vanish on their way back from the
        loss, so the layers they starve come before the layers that have them. A layer after the largest (a head
        whose loss term is small beside another head's, a loss on targets in the thousands) is small for its own
        loss's reason, and does not stall the layers before it. Nor does a layer far below while the first layer
        lies less than :data:`REACHED` decades below the largest: the gradient reaches the input, so nothing
        vanishes on its way back (an attention gate whose scores start near uniform, in a bag-of-instances model
        trained one bag a step, lies 4.6 decades below its head while its encoder lies 0.4 below). Nor while the gap
        closes, or, under an optimizer that sizes each step by its own gradients, before it is known to (the
        judge's :meth:`_waits`).
        """
        before = set(stats.layers[: largest_at(stats)])
        depth = {n: median(w) for n, w in self.stall_depths.items() if len(w) == STALL_WINDOW and n in before}
        deepest = max(depth.values(), default=0.0)
        first = next((depth[n] for n in stats.layers if n in depth), 0.0)
        if deepest < self.config.stall_decades or first < REACHED:
            return None
        # every layer below vanishing_ratio; when none is that deep, the layers within a decade of the deepest
        small = min(max(self.config.stall_decades, deepest - 1.0), -math.log10(self.config.vanishing_ratio))
        named = tuple(n for n in stats.layers if depth.get(n, -math.inf) >= small)
        self.stall_episode = list(named)
        verdict.vanishing_layers = named
        return self._alert(step, stats, named, (min(depth[n] for n in named), deepest), start, learned)

    def _judged(self) -> bool:
        """Whether the stall is judged at this step: no explosion, and the loss known for ``stall_steps`` steps."""
        losses = self.ctx.losses
        seen_enough = losses.level is not None and losses.losses_seen >= self.config.stall_steps
        return seen_enough and not self.ctx.episode.exploded

    def _gave_back(self, start: float, share: float) -> bool:
        """Whether the loss has given back ``share`` of what it learned while the gradient shrank (medians).

        The loss on its way back to its start, the total norm below what it was at the loss's best: a divergence gives
        its progress back with a growing norm. Not all the way back: a collapse to chance may end below the loss of an
        untrained model (its outputs were not uniform).
        """
        losses, best = self.ctx.losses, self.stall_best
        if losses.level is None or best is None or losses.level - best < share * (start - best):
            return False
        floor_norm, norms = losses.norm_at_floor, losses.recent_norms
        return floor_norm is not None and len(norms) > 0 and norms.median() < floor_norm

    def _learned(self, start: float) -> bool:
        """Whether the loss's lowest median so far has moved from its start (kept as ``stall_best``)."""
        level = self.ctx.losses.level
        self.stall_best = level if self.stall_best is None else min(self.stall_best, level)
        return moved(self.stall_best, start, self.config.stall_tolerance)

    def _alert(
        self,
        step: int,
        stats: StepStats,
        named: tuple[str, ...],
        depths: tuple[float, float],
        start: float,
        learned: bool,
    ) -> GradientAlert:
        cfg, losses = self.config, self.ctx.losses
        top_layer = _largest_layer(stats)
        shallow, deepest = depths
        verb = "lies" if len(named) == 1 else "lie"
        how_deep = f"{deepest:.1f}" if round(shallow, 1) == round(deepest, 1) else f"{shallow:.1f} to {deepest:.1f}"
        if learned:  # ... and gave it back
            where = (
                f"the loss has given back most of what it learned ({losses.level:.4g}; it started at {start:.4g}, its"
                f" best was {self.stall_best:.4g}; medians of {LOSS_WINDOW} steps)"
            )
            what = "the first layers have stopped learning"
        else:
            where = (
                f"the loss has not come down from where training started ({losses.level:.4g} against {start:.4g},"
                f" medians of {LOSS_WINDOW} steps, after {losses.losses_seen} steps)"
            )
            what = "the first layers are not learning"
        message = (
            f"Vanishing gradients at step {step}: {where} while {format_layers(named)} {verb} {how_deep} decades below"
            f" the largest layer ({top_layer}, medians over {STALL_WINDOW} steps): {what}." + self.ctx.hints(self.kind)
        )
        return self.alert(step, named, 10**-deepest, 10**-cfg.stall_decades, message)


@dataclass(eq=False)
class Layers(VanishingRule):
    """Per layer, relative to the largest layer (or below an absolute floor); exactly zero: dead, when it matters."""

    vanishing_run: dict[str, int] = state(load=as_int_map, factory=dict)  # consecutive vanishing steps per layer
    vanishing_episode: set[str] = state(load=set, factory=set)  # layers in the ongoing episode
    zero_run: dict[str, int] = state(load=as_int_map, factory=dict)  # layers exactly zero now: for how many steps
    zero_loss: dict[str, float] = state(load=as_float_map, factory=dict)  # the loss (median) when their zeros began
    zero_low: dict[str, float] = state(load=as_float_map, factory=dict)  # ... and its lowest (median) since
    came_back: dict[str, int] = state(load=as_int_map, factory=dict)  # the longest zero run a layer came back from

    name: ClassVar[Rule] = Rule.LAYERS
    settings: ClassVar[tuple[str, ...]] = ("vanishing_ratio", "vanishing_floor")

    def observe(self, stats: StepStats) -> None:
        """Follow each layer's zeros: how long, the loss then and its lowest since, the longest it came back from."""
        losses, runs = self.ctx.losses, self.zero_run
        # the loss when the zeros began: a median of LOSS_WINDOW losses (the first ones, for zeros from the start)
        level = losses.level if len(losses.recent_losses) >= LOSS_WINDOW else None
        for name, norm in zip(stats.layers, stats.grad_norm):
            if norm == 0.0:
                if name not in self.zero_loss and level is not None:
                    # the loss then: at most the best the run had before (a blow-up that kills units lifts the loss
                    # where they die; the loss coming back down from it is no improvement)
                    floor = losses.loss_floor
                    self.zero_loss[name] = level if floor is None else min(level, floor)
                elif name in self.zero_loss and name not in self.zero_low:  # a checkpoint kept before the lowest was
                    floor = losses.loss_floor  # the best of the run: its lowest since the zeros began is not known
                    self.zero_low[name] = self.zero_loss[name] if floor is None else min(self.zero_loss[name], floor)
                if level is not None:
                    self.zero_low[name] = min(self.zero_low.get(name, level), level)
                runs[name] = runs.get(name, 0) + 1
            elif name in runs:
                self.came_back[name] = max(self.came_back.get(name, 0), runs.pop(name))
                self.zero_loss.pop(name, None)
                self.zero_low.pop(name, None)

    @override
    def suspend(self) -> None:
        self.vanishing_run.clear()
        self.vanishing_episode.clear()

    @override
    def ongoing(self) -> bool:
        return bool(self.vanishing_episode)

    @override
    def judge(self, step: int, stats: StepStats, top: float, verdict: Verdict) -> GradientAlert | None:
        ongoing = bool(self.vanishing_episode)  # layers joining an ongoing episode are not alerted again
        limit = self.config.vanishing_ratio * top
        starving = self._starving()
        pairs = zip(stats.layers, stats.grad_norm)
        newly = [name for name, norm in pairs if self._layer_step(name, norm, top, limit, starving)]
        named = set(verdict.vanishing_layers) | self.vanishing_episode
        verdict.vanishing_layers = tuple(n for n in stats.layers if n in named)
        if not newly or ongoing:
            return None
        ordered = tuple(n for n in stats.layers if n in self.vanishing_episode)
        worst = min(stats.grad_norm[stats.layers.index(n)] for n in ordered)
        return self._alert(step, ordered, worst / top if top else 0.0, stats)

    def _layer_step(self, name: str, norm: float, top: float, limit: float, starving: bool) -> bool:
        """Count one layer's step; returns whether the layer starts a vanishing episode now.

        ``starving``: a layer small by the ratio is starved by the largest (:meth:`_starving`); one below the absolute
        floor always is.
        """
        runs = self.vanishing_run
        zero = norm == 0.0
        if self._left_out(name, zero):
            return False
        floored = _below(norm, self.config.vanishing_floor)
        if top > 0 and (norm < limit or floored):
            runs[name] = runs.get(name, 0) + 1
            ready = runs[name] >= self.config.vanishing_patience and (self._dead(name) if zero else starving or floored)
            if ready and name not in self.vanishing_episode:
                self.vanishing_episode.add(name)
                return True
        elif name in runs:
            del runs[name]
            self.vanishing_episode.discard(name)
        return False

    def _left_out(self, name: str, zero: bool) -> bool:
        """An exempt layer, or units an explosion killed, is not judged (its count and its episode end).

        Units an explosion killed (gradients exactly zero after it) are its aftermath, not a new diagnosis.
        """
        if name in self.ctx.exempt_layers or (zero and self.ctx.episode.exploded):
            self.vanishing_run.pop(name, None)
            self.vanishing_episode.discard(name)
            return True
        return False

    def _starving(self) -> bool:
        """Whether, at this step, a layer small beside the largest (not zero) is starved by it.

        Under an optimizer that sizes each parameter's step by its own gradients, such a layer steps as far as the
        largest: it is starved only while the gap does not close (known, and not closing: see
        :class:`~lightning_gradwatch.judge.gap.LayerGap`). Under others, always. Asked once a step, for every layer.
        """
        return not self.ctx.traits.own_step_sizes or self.ctx.gap.closing() is False

    def _dead(self, name: str) -> bool:
        """Whether a layer's zeros make it dead.

        They last longer than any the layer came back from (a branch used on some steps only comes back after as
        long, every time), and the loss has not improved since they began (its lowest median since then within
        ``stall_tolerance`` of its median then; or no loss is known): nothing else makes up for the units that give
        no gradient.
        """
        if self.zero_run.get(name, 0) <= self.came_back.get(name, 0):
            return False
        low, then = self.zero_low.get(name), self.zero_loss.get(name)
        return low is None or then is None or not moved(low, then, self.config.stall_tolerance)

    def _alert(self, step: int, layers: tuple[str, ...], ratio: float, stats: StepStats) -> GradientAlert:
        cfg = self.config
        top_layer = _largest_layer(stats)
        norms = dict(zip(stats.layers, stats.grad_norm))
        if all(norms.get(n, 1.0) == 0.0 for n in layers):
            message = (
                f"Vanishing gradients at step {step}: {format_layers(layers)} had gradients exactly zero for"
                f" {cfg.vanishing_patience} or more consecutive steps, while the loss did not improve and"
                f" {top_layer} still learns: their units give no gradient for any input (dead ReLUs, saturated units,"
                " or a part of the graph cut off)." + self.ctx.hints(self.kind, Cause.DEAD)
            )
        else:
            message = (
                f"Vanishing gradients at step {step}: {_named(layers, norms, top_layer, cfg)} for"
                f" {cfg.vanishing_patience} consecutive steps (smallest ratio {ratio:.3g})." + self.ctx.hints(self.kind)
            )
        return self.alert(step, layers, ratio, cfg.vanishing_ratio, message)


def _named(layers: tuple[str, ...], norms: dict[str, float], top: str, cfg: DetectionConfig) -> str:
    """Which layers lie below what: the ratio to the largest layer, or the absolute ``vanishing_floor``.

    A layer below the floor is said to be so (the largest layer itself may be), not to lie below a share of itself.
    """
    ratio = f"{cfg.vanishing_ratio:g}x the largest layer's ({top})"
    floored = tuple(n for n in layers if _below(norms.get(n, 0.0), cfg.vanishing_floor))
    if not floored:
        return f"{format_layers(layers)} had gradient norms below {ratio}"
    rest = tuple(n for n in layers if n not in floored)
    said = f"{format_layers(floored)} had gradient norms below {cfg.vanishing_floor:g} (vanishing_floor)"
    return said + (f", and {format_layers(rest)} below {ratio}" if rest else "")


def _below(norm: float, floor: float | None) -> bool:
    """Whether ``norm`` is below the absolute ``floor`` (when one is set)."""
    return floor is not None and norm < floor


#: The vanishing rules, in order: each judges every step it is not suspended on; the first alert of a step is kept,
#: and none while another rule's episode lasts.
VANISHING_RULES: tuple[type[VanishingRule], ...] = (Collapse, Stall, Layers)


class VanishingWatch(RuleWatch):
    """The vanishing rules of :data:`VANISHING_RULES`, suspended during and after an explosion.

    Owns ``vanishing_patience``, which every vanishing rule but the stall waits for.
    """

    kind = AlertKind.VANISHING
    settings = ("vanishing_patience",)
    rules: tuple[VanishingRule, ...]

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx, VANISHING_RULES)

    def update(self, step: int, stats: StepStats, verdict: Verdict) -> bool:
        """Judge one finite step (after the exploding watch); judging goes on."""
        top = max(stats.grad_norm) if stats.grad_norm else 0.0
        self.ctx.gap.observe(stats, self.ctx.exempt_layers)
        for rule in self.rules:
            rule.observe(stats)
        if self.ctx.vanishing_suspended() or (self.ctx.episode.exploded and top == 0.0):
            for rule in self.rules:
                rule.suspend()
            return True
        ongoing = [rule.ongoing() for rule in self.rules]  # an episode alerted already, by one rule or another
        for i, rule in enumerate(self.rules):
            alert = rule.judge(step, stats, top, verdict)
            if alert is not None and verdict.alert(self.kind) is None and not any(ongoing[:i] + ongoing[i + 1 :]):
                verdict.alerts.append(alert)
        return True
