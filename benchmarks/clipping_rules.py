"""Clipping rules for the families benchmark: the peers, the rules GradWatch shipped, and candidate rules.

Two kinds of rule:

- a *threshold rule* has the interface of the package's ``AdaptiveClipThreshold``: ``update(total_norm, loss=...,
  layer_norms=..., stats=...)`` learns one step and returns the norm to clip this step to (``inf``: no clipping),
  from floats already on the host; ``state_dict``/``load_state_dict`` carry its state. The benchmark loop measures and
  scales with the package's path (``clipping_adapter.Measure``);
- an *acting rule* (ZClip, AGC) touches the gradients itself: ``apply_(model)`` clips and returns the total norm
  before clipping.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from clipping_adapter import SpikeDetector, StepStats, shipped_adaptive
from torch import nn


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of a sorted, non-empty sequence, interpolated linearly (as ``numpy.quantile``)."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class ThresholdRule:
    """No clipping; the base of every threshold rule."""

    def update(
        self,
        total_norm: float,
        loss: float | None = None,
        layer_norms: Sequence[float] = (),
        stats: StepStats | None = None,
    ) -> float:
        return math.inf

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class Fixed(ThresholdRule):
    def __init__(self, value: float) -> None:
        self.value = value

    def update(self, total_norm: float, loss: float | None = None, layer_norms: Sequence[float] = (), stats=None):
        return self.value


class AutoClip(ThresholdRule):
    """Seetharaman et al. 2020: clip to the p-th percentile of every total norm so far (this one included)."""

    def __init__(self, percentile: float = 10.0) -> None:
        self.p = percentile
        self.history: list[float] = []

    def update(self, total_norm: float, loss: float | None = None, layer_norms: Sequence[float] = (), stats=None):
        if math.isfinite(total_norm):
            bisect.insort(self.history, total_norm)
        return quantile(self.history, self.p / 100) if self.history else math.inf

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = sorted(state.get("history", []))


class Shipped(ThresholdRule):
    """``clip="adaptive"`` today: the package's ``AdaptiveClipThreshold`` with GradWatch's defaults."""

    def __init__(self, **kwargs: Any) -> None:
        self.clipper = shipped_adaptive(**kwargs)

    def update(self, total_norm: float, loss: float | None = None, layer_norms: Sequence[float] = (), stats=None):
        return self.clipper.update(total_norm)

    def state_dict(self) -> dict[str, Any]:
        return self.clipper.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clipper.load_state_dict(state)


class MeanStdLog(ThresholdRule):
    """The rule before it: 10 ** (mean + 2.5 std) of log10 norm (EMA 0.03), after a 25-step warm-up."""

    def __init__(self, zscore: float = 2.5, warmup_steps: int = 25, ema_decay: float = 0.03) -> None:
        self.zscore, self.warmup, self.decay = zscore, warmup_steps, ema_decay
        self.steps, self.mean, self.var = 0, 0.0, 0.0

    def update(self, total_norm: float, loss: float | None = None, layer_norms: Sequence[float] = (), stats=None):
        threshold = math.inf
        if self.steps >= max(self.warmup, 2):
            std = max(math.sqrt(max(self.var, 0.0)), 0.02)
            threshold = 10 ** min(self.mean + self.zscore * std, 300.0)
        if not math.isfinite(total_norm) or total_norm <= 0:
            return threshold
        x = math.log10(min(total_norm, threshold))
        self.steps += 1
        delta = x - self.mean
        if self.steps <= max(self.warmup, 2):
            self.mean += delta / self.steps
            self.var += (delta * (x - self.mean) - self.var) / self.steps
        else:
            self.mean += self.decay * delta
            self.var = (1 - self.decay) * (self.var + self.decay * delta * delta)
        return threshold

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "mean": self.mean, "var": self.var}


class SpikeClip(ThresholdRule):
    """``on_exploding="clip"``: the exploding detector fed the step's statistics; spike steps go to its threshold."""

    def __init__(self) -> None:
        self.detector = SpikeDetector()

    def update(self, total_norm: float, loss: float | None = None, layer_norms: Sequence[float] = (), stats=None):
        assert stats is not None
        return self.detector.threshold(stats)


# ---------------------------------------------------------------------------------------------------------- acting
class ActingRule:
    """A rule that clips the gradients itself; ``apply_`` returns the total norm before clipping."""

    def apply_(self, model: nn.Module) -> float:
        raise NotImplementedError


class ZClipRule(ActingRule):
    """The ``zclip`` package (``ZClip.step(model)`` measures and clips)."""

    def __init__(self, **kwargs: Any) -> None:
        from zclip import ZClip

        self.zclip = ZClip(**kwargs)

    def apply_(self, model: nn.Module) -> float:
        return float(self.zclip.step(model))


class AGC(ActingRule):
    """Unit-wise adaptive gradient clipping (Brock et al. 2021, NFNets), as ``timm.utils.agc.adaptive_clip_grad``.

    Each unit (a row of a weight: an output neuron or filter; a whole bias) is clipped so that its gradient norm is
    at most ``clipping * max(|unit weights|, eps)``. Every parameter is clipped, the classifier included (timm's
    behaviour when handed all parameters).
    """

    def __init__(self, clipping: float, eps: float = 1e-3) -> None:
        self.clipping, self.eps = clipping, eps

    @staticmethod
    def _unitwise(x: torch.Tensor) -> torch.Tensor:
        if x.ndim <= 1:
            return x.norm(2.0)
        return x.norm(2.0, dim=tuple(range(1, x.ndim)), keepdim=True)

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        for p in params:
            max_norm = self._unitwise(p).clamp_(min=self.eps).mul_(self.clipping)
            grad_norm = self._unitwise(p.grad)
            clipped = p.grad * (max_norm / grad_norm.clamp(min=1e-6))
            p.grad.copy_(torch.where(grad_norm < max_norm, p.grad, clipped))
        return norm


Rule = ThresholdRule | ActingRule

FIXED = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
FIXED_SAVING = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # "a fixed threshold stays finite" is judged on these

PEERS: dict[str, Callable[[], Rule]] = {
    "none": ThresholdRule,
    **{f"fixed {v:g}": (lambda v=v: Fixed(v)) for v in FIXED},
    "ZClip defaults": lambda: ZClipRule(),
    "ZClip no cap": lambda: ZClipRule(max_grad_norm=None),
    "AutoClip p10": AutoClip,
    "AGC 0.01": lambda: AGC(0.01),
    "AGC 0.02": lambda: AGC(0.02),
    "AGC 0.16": lambda: AGC(0.16),
    "mean+2.5std (previous)": MeanStdLog,
    'on_exploding="clip"': SpikeClip,
    "adaptive (today)": Shipped,
}


# ---------------------------------------------------------------------------------------------------------- candidate
class GuardedClipThreshold(ThresholdRule):
    """Outliers clipped to the level of the steps that were learning, under a ceiling that only the loss lowers.

    The threshold of a step is the lower of two parts:

    - the *outlier threshold*: over the last ``window`` *learnt* norms (below), ``typical`` is the ``quantile`` of
      ``log10(norm)``, raised to the lowest of the last ``short_window`` learnt norms when all of them are above it
      (a model taking off is followed within ``short_window`` steps); the spread is the distance from the
      ``quantile / 5`` quantile to the ``quantile`` (at least ``min_spread`` decades). A step above
      ``typical + zscore * spread`` (during the first ``warmup_steps`` steps, at least ``warmup_margin`` decades
      above) is an outlier and is scaled to the typical norm; an ordinary step is held to the outlier threshold;
    - the *ceiling*, from the training loss (the callback has the previous step's). The loss *level* is the
      ``loss_quantile`` of the last ``loss_window`` losses (the clean batches' level: batches with outliers carry
      high losses and do not move it until they fill most of the window); its first value is taken once
      ``first_losses`` losses are known. The run *gets worse* when the level is more than ``worse_than_start``
      above its first value, or more than ``worse_than_start`` above its best and has given back more than
      ``give_back`` of the progress from first to best. Then, at most every ``hold`` steps and only while the level
      keeps rising, the ceiling drops below the lower of the step's norm and the outlier threshold by a factor that
      grows with how much worse the loss got (``cut`` to ``10 ** max_cut``), never below ``floor`` decades under
      the typical norm. It rises by ``rise`` decades on every step whose loss level is a new best, and is lifted
      once ``release`` decades above the outlier threshold. A non-finite loss counts as worse.

    A norm is learnt (enters the window) only on steps where the run is not getting worse, so a norm that grows
    with the loss, from the first step on, never becomes the typical level: the memory the failure cannot rewrite.
    Without a loss (``loss=None`` on every step, or ``use_loss=False``) the ceiling never acts.

    Inputs per step, all on the host already: the total norm, and the previous step's training loss. Deterministic
    from their history, so every rank computes the same threshold *if the loss it is given is the same on every
    rank*: a DDP rank's own loss is not (the mean over ranks is, and can ride on the per-step flag reduction).

    Args:
        quantile: the typical level's quantile of the learnt log norms.
        zscore: spreads above the typical level that make an outlier.
        window: how many learnt norms the outlier statistics cover.
        short_window: the typical level is at least the lowest of the last ``short_window`` learnt norms.
        min_spread: floor of the spread, in decades.
        warmup_steps: steps during which the outlier margin is at least ``warmup_margin``.
        warmup_margin: the least outlier margin during warm-up, in decades.
        loss_window: losses in the loss level.
        loss_quantile: the loss level's quantile of the last ``loss_window`` losses.
        first_losses: losses needed before the first level (and the run's first value) is taken.
        worse_than_start: relative rise of the loss level (over its first value, or over its best) that can make
            the run worse.
        give_back: share of the progress made that the loss level must give back to make the run worse.
        cut: the least factor the ceiling drops by.
        max_cut: the most decades the ceiling drops by at once.
        hold: steps between two cuts.
        rise: decades the ceiling rises on a step whose loss level is a new best.
        release: decades above the outlier threshold at which the ceiling is lifted.
        floor: the lowest the ceiling goes, in decades below the typical norm.
        use_loss: ``False``: the outlier threshold alone (an ablation).
        max_norm: optional fixed cap on every step.
    """

    def __init__(
        self,
        quantile: float = 0.25,
        zscore: float = 3.0,
        window: int = 100,
        short_window: int = 20,
        min_spread: float = 0.1,
        warmup_steps: int = 25,
        warmup_margin: float = 0.3,
        loss_window: int = 10,
        loss_quantile: float = 0.2,
        first_losses: int = 3,
        worse_than_start: float = 0.1,
        give_back: float = 0.5,
        cut: float = 3.0,
        max_cut: float = 2.0,
        hold: int = 3,
        rise: float = 0.01,
        release: float = 1.0,
        floor: float = 1.0,
        use_loss: bool = True,
        max_norm: float | None = None,
    ) -> None:
        self.quantile, self.zscore, self.window, self.short_window = quantile, zscore, window, short_window
        self.min_spread, self.warmup_steps, self.warmup_margin = min_spread, warmup_steps, warmup_margin
        self.loss_window, self.loss_quantile, self.first_losses = loss_window, loss_quantile, first_losses
        self.worse_than_start, self.give_back = worse_than_start, give_back
        self.cut, self.max_cut, self.hold = math.log10(cut), max_cut, hold
        self.rise, self.release, self.floor = rise, release, floor
        self.use_loss, self.max_norm = use_loss, max_norm
        self.steps = 0  # finite norms seen
        self.norms: list[float] = []  # learnt log10 norms, oldest first (the last ``window``)
        self.losses: list[float] = []  # the last ``loss_window`` finite losses
        self.first_level: float | None = None
        self.best_level = math.inf
        self.level = math.nan
        self.level_at_cut = -math.inf  # the loss level at the last cut, while the run stays worse
        self.ceiling = math.inf  # log10; inf: not in force
        self.since_cut = 0

    # the outlier threshold ---------------------------------------------------------------------------------------
    def _levels(self) -> tuple[float, float]:
        """(typical, outlier threshold) in log10; ``inf`` before any norm is learnt."""
        if not self.norms:
            return math.inf, math.inf
        ordered = sorted(self.norms)
        typical = quantile(ordered, self.quantile)
        spread = typical - quantile(ordered, self.quantile / 5)
        if len(self.norms) >= self.short_window:  # a level every recent step reached: a model taking off
            typical = max(typical, min(self.norms[-self.short_window :]))
        margin = self.zscore * max(spread, self.min_spread)
        if self.steps < self.warmup_steps:
            margin = max(margin, self.warmup_margin)
        return typical, typical + margin

    # the loss ------------------------------------------------------------------------------------------------------
    def _observe(self, loss: float | None) -> tuple[bool, bool]:
        """Learn the loss; (the run is getting worse, the loss level is a new best)."""
        if loss is None or not self.use_loss:
            return False, False
        if not math.isfinite(loss):
            return self.first_level is not None, False
        self.losses = [*self.losses[1 - self.loss_window :], loss]
        if len(self.losses) < min(self.first_losses, self.loss_window):
            return False, False
        self.level = level = quantile(sorted(self.losses), self.loss_quantile)
        if self.first_level is None:
            self.first_level = level
        first, new_best = self.first_level, level < self.best_level
        best = self.best_level = min(self.best_level, level)
        tolerance = self.worse_than_start
        worse = level > first + tolerance * abs(first) or (
            level > best + tolerance * abs(best) and level > best + self.give_back * (first - best)
        )
        return worse, new_best

    def _lower_ceiling(self, x: float, limit: float, typical: float) -> None:
        """The run got worse: the ceiling drops below this step's norm (or the outlier threshold, if lower)."""
        reference = min(self.best_level, self.first_level if self.first_level is not None else self.best_level)
        depth = math.log10(self.level / reference) if reference > 0 and self.level > 0 else 0.0
        self.ceiling = min(self.ceiling, x, limit) - min(max(self.cut, depth), self.max_cut)
        if math.isfinite(typical):
            self.ceiling = max(self.ceiling, typical - self.floor)
        self.since_cut, self.level_at_cut = 0, self.level

    def update(self, total_norm: float, loss: float | None = None, layer_norms: Sequence[float] = (), stats=None):
        """Learn one step; the norm to clip it to. ``loss``: the previous step's training loss, if known."""
        worse, new_best = self._observe(loss)
        typical, limit = self._levels()
        finite = math.isfinite(total_norm) and total_norm > 0
        x = math.log10(total_norm) if finite else math.inf
        self.since_cut += 1
        if worse and finite and self.since_cut > self.hold and self.level >= self.level_at_cut:
            self._lower_ceiling(x, limit, typical)
        elif new_best and math.isfinite(self.ceiling):
            self.ceiling += self.rise
            if self.ceiling > limit + self.release:
                self.ceiling = math.inf
        if not worse:
            self.level_at_cut = -math.inf
        if finite:
            self.steps += 1
            if not worse:
                self.norms = [*self.norms[1 - self.window :], x]
        threshold = math.inf if not self.norms else typical if finite and x > limit else limit
        return self._cap(min(threshold, self.ceiling))

    def _cap(self, log_norm: float) -> float:
        threshold = 10**log_norm if log_norm < 300 else math.inf
        return threshold if self.max_norm is None else min(threshold, self.max_norm)

    STATE = ("steps", "norms", "losses", "first_level", "best_level", "level", "level_at_cut", "ceiling", "since_cut")

    def state_dict(self) -> dict[str, Any]:
        return {name: (lambda v: list(v) if isinstance(v, list) else v)(getattr(self, name)) for name in self.STATE}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in self.STATE:
            if name in state:
                value = state[name]
                setattr(self, name, list(value) if isinstance(value, list) else value)


GUARDED_VERSION = 9  # bump when the rule's logic or defaults change: cached results carry the name


def guarded(**kwargs: Any) -> tuple[str, Callable[[], Rule]]:
    """A candidate's name (the constants it changes) and factory."""
    name = f"guarded v{GUARDED_VERSION}" + "".join(f" {k}={v:g}" for k, v in sorted(kwargs.items()))
    return name, lambda: GuardedClipThreshold(**kwargs)


# the leave-one-family-out grid: the constants the selection may change, the others at their defaults
GRID = [{"quantile": q, "warmup_margin": w, "floor": f} for q in (0.1, 0.25) for w in (0.3, 1.0) for f in (1.0, 2.0)]
CANDIDATES: dict[str, Callable[[], Rule]] = dict(guarded(**spec) for spec in GRID)
OURS = guarded(quantile=0.25, warmup_margin=0.3, floor=1.0)[0]  # the defaults: chosen on every fold
NO_LOSS, _no_loss = guarded(use_loss=False)
ABLATIONS: dict[str, Callable[[], Rule]] = {NO_LOSS: _no_loss}
