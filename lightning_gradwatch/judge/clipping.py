"""Clipping policy: a step's clip threshold, fixed or learnt from the run's own gradient norms and training loss.

Plain Python over floats. Deciding and scaling are separate, as in ``torch.nn.utils.clip_grad``: this module turns a
step's total norm and the training loss (already on the host, from the step's one statistics transfer) into a
threshold and a coefficient; the actor (:mod:`lightning_gradwatch.act`) multiplies the gradients in place on their
device.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_gradwatch.config import ClipConfig
from lightning_gradwatch.history import SortedWindow, Window, pow10_or_inf

__all__ = [
    "NOTICE_CEILING",
    "NOTICE_CLIPPING",
    "NOTICE_RISING",
    "AdaptiveClipThreshold",
    "clip_coefficient",
    "clipping_notice",
    "sgd_step_scale",
]

#: why the notice was said: the loss-driven ceiling held the run back; clipping acted on most steps of a run whose
#: loss did not fall; the norm clipping scales down kept rising
NOTICE_CEILING, NOTICE_CLIPPING, NOTICE_RISING = "ceiling", "clipping", "rising"

_EPS = 1e-6  # torch's clip_grad_norm_ divides by total_norm + 1e-6


def clip_coefficient(total_norm: float, max_norm: float) -> float:
    """The factor that brings ``total_norm`` down to ``max_norm`` (1.0 when it is already below).

    Matches ``torch.nn.utils.clip_grad_norm_``: ``max_norm / (total_norm + 1e-6)``, clamped to at most 1.

    Example:
        >>> clip_coefficient(10.0, 1.0)
        0.09999999000000101
        >>> clip_coefficient(0.5, 1.0)
        1.0
    """
    if not math.isfinite(total_norm) or total_norm <= max_norm:
        return 1.0
    return min(1.0, max_norm / (total_norm + _EPS))


class AdaptiveClipThreshold:
    """``clip="adaptive"``: outliers clipped to the norm of learning steps, under a ceiling from the loss.

    The threshold of a step is the lower of two parts (the first alone without ``use_loss``), both on
    ``log10(total norm)``:

    - **The outlier threshold.** Over the last ``window`` *learnt* norms (below), the *typical* level is their
      ``quantile`` (25th percentile) and the *spread* the distance from their ``low_quantile`` (5th) up to it: both
      sit in the lower part of the distribution, and outliers are not learnt. The typical level is at least the
      lowest of the last ``short_window`` norms, so a model taking off (its norm up for good) is followed within that
      many steps. A step above ``typical + zscore * max(spread, min_spread)`` whose training loss is
      ``outlier_loss`` decades (twice) above the loss level too (below), or not known, is an outlier and is scaled
      down to the typical norm (an outlier's direction is mostly the outlier's own: the less of it the better). An
      outlier batch's loss rises with its norm; a model leaving a plateau or escaping a small initialisation raises
      its norm over ordinary losses: such a step is only held to the outlier threshold. Any other step is held to
      it too. No norm above the threshold is learnt, its loss up or not (a norm that climbs over a loss not yet
      twice its level, as a recurrent net's whose gradients explode, does not raise the typical level: the short
      window follows a level every recent step reaches). During the first ``warmup_steps`` the
      margin is at least ``warmup_margin`` decades. The run's *start* is the lowest of its first ``first_norms``
      learnt norms: a step no larger is never clipped (unless a plateau cut, below, lowered the threshold), and an
      outlier is scaled down to the typical norm but not below the start. Steps the size of those the run began
      with are safe however far the recent norms have fallen (near zero loss, the rare hard batches carry the
      gradient: scaling them to the typical norm of the easy ones stalls the run).
    - **The ceiling, from the training loss** (``use_loss``, on by default). The loss *level* is the ``loss_quantile``
      of the last ``loss_window`` losses: the clean batches' level, which batches with outliers (high losses) do not
      move. Its first value is the run's starting point. The run *gets worse* when the level is ``worse_by`` above its
      start, or ``worse_by`` above its best while having given back ``give_back`` of the progress made, and the gradient
      norm has risen with it (the lowest of the last ``norm_window`` norms ``norm_rise`` decades above the norm at that
      start or best): a noisy mini-batch loss over a flat norm is not a worse run. Then, at most every ``cut_every``
      steps and only while the level keeps rising, the ceiling drops below the lower of the step's norm and the outlier
      threshold, by a factor that grows with how much worse the loss got (``cut`` to ``10 ** max_cut``), never below
      ``floor`` decades under the typical level. It rises back by ``relax`` decades on each step the run is not worse
      (``rise`` more when the loss level is a new best: a run the ceiling holds back need not beat its best to get its
      step size back), and is lifted once ``release`` decades above the outlier threshold. Cut on trouble, raised while
      there is none: a noisy rise of a healthy run costs it a few dozen slower steps, a run that keeps getting worse
      stays held. **A divergence is remembered**: when the loss level of a cut is ``trouble_depth`` decades (3x) or
      more above the start or the best, the size of the steps before the run began getting worse (the median norm
      after clipping of the last ``loss_window`` steps) is kept as the level it diverged at. The ceiling then rises
      back at the full rate only up to ``trouble_margin`` decades below that level (half its step size), and
      ``trouble_relax`` times as fast above it, unless the loss level makes new bests (each one lifts the memory
      too). Without it, a recurrent net at the edge of stability climbs back to the step size that made it blow up,
      and blows up again; a noisy rise of the loss (less than 3x) leaves no memory.

    - **The step-size cap** (``step_ratio``, 0.1; SGD only, given ``weight_norm`` and ``step_scale``). A step may move
      the weights by at most ``step_ratio`` of their size: the threshold is at most ``step_ratio * size /
      step_scale`` (``step_scale``: how far SGD moves the weights per unit of gradient norm, its learning rate times
      ``(1 - dampening) / (1 - momentum)``; :func:`sgd_step_scale`), with ``step_scale`` at least the largest of the
      run so far: the cap holds the gradient norm where the run's highest learning rate put it, so a schedule that
      decays the rate shrinks a capped step as it shrinks every other (a cap at a tenth of the weights for each rate
      would let a gradient 10x larger through once the rate is 10x lower, and the last steps of a run whose every
      step is capped, under heavy-tailed label noise or a rate far too high, would move the weights as far as its
      first: a linear regression under Cauchy label noise ended at 3-5x the loss of the best fixed threshold). A rate
      that rises (a warm-up) lowers the cap with it. Their size is their norm, but at least
      ``weight_floor`` times ``init_norm``, the norm PyTorch's default initialisation gives them: weights drawn or
      decayed far below it (a linear model from weights at 0.001, a net escaping a small initialisation) must grow,
      and a tenth of their own tiny norm a step holds them back for good. Weights that all started at zero: that run
      is not capped. It is the one scale the run's own norms cannot give: a recurrent net whose
      gradients grow from the first step has no calm past to learn a threshold from, and a learning-rate schedule whose
      peak is too high multiplies every step by the same factor. A healthy SGD step moves the weights by far less than a
      tenth of their norm. The cap applies last: the memory of a divergence keeps the rule's own step sizes (a run the
      cap holds is not also held back at the capped size), and the notice counts the steps it clips.

    - **A plateau lowers the threshold** (``plateau_cut``, 0.3 decade: 2x). When clipping scales down most steps
      while the training loss does not fall (the notice's test, below), clipping sets the steps' size and that size
      makes no progress: the threshold is lowered 2x, for good, and judged again ``notice_steps`` steps later, as a
      plateau schedule lowers a learning rate, down to ``plateau_max`` decades (100x) below the threshold the rule
      would set; only while the batch losses scatter (quartiles ``plateau_spread`` decades apart or more: noise sets
      the steps' size), not on a flat, quiet loss (a plateau of the model, which smaller steps prolong). Heavy-tailed
      noise on every label is the case: the typical norm is the noise's, the best fixed threshold lies 10-100x below
      it, and the training loss, dominated by the noise, cannot show the clean part improving.

    A norm is *learnt* only on steps where the run is not getting worse, and only when it is no outlier: a norm that
    grows with the loss, from the first step on (a recurrent net whose gradients explode, a learning rate too high),
    never becomes the typical level, and outliers in most batches (an image x50 in four batches of five) do not
    raise the threshold that scales them down. That is the memory the failure cannot rewrite; the ceiling is what
    holds such a run back. The short window takes the norm of every step learnt from, outliers included: a norm that
    every recent step reaches is the model's new level, not an outlier.

    **The notice: clipping that hides a failing run** is said once (:attr:`notice_due`, :attr:`notice_reason`), judged
    over the last ``notice_steps`` steps: the ceiling below the outlier threshold on all of them (the loss got worse and
    clipping has been holding the run back since); or at least ``notice_share`` of them clipped (scaled down by
    ``notice_depth`` decades or more) while the training loss did not fall (the median of their second half not below
    ``notice_stall`` times that of their first half); or the clipped steps' norm (before clipping) up ``notice_rise``
    decades from the first half to the second. Clipping hides such a failure, it does not fix it.

    Inputs per step: the total norm (before clipping) and the training loss the judge is given (this step's or the
    previous step's: the rule judges levels over ``loss_window`` steps, so a step of lag does not matter), and the
    detector's chain offset. **Like with like**: the norms learnt and judged are the detector's *chained* total norm,
    which moves only by the growth of the layers two steps share when the set of layers with a gradient changes (a
    backbone unfrozen mid-run, a branch used on some batches); the threshold is returned as a total norm over the
    step's own layers. A backbone joining is thus no outlier, and the layers it brings are not scaled down to the
    head's typical norm. The threshold is a deterministic function of this history: every rank computes the same
    one, without communicating, when the loss is the same on every rank. The state (:meth:`state_dict`) is plain
    values, so a resumed run continues with the threshold it had. ``max_norm``, when given, is a fixed cap on every
    step.

    Args:
        zscore: how many spreads above the typical level a norm must be to be an outlier.
        warmup_steps: during this many first steps, the outlier margin is at least ``warmup_margin`` decades.
        max_norm: optional fixed cap applied on every step.
        use_loss: add the ceiling a worsening loss lowers (on by default; ``False`` for runs whose loss rises by
            design, such as a curriculum of harder batches).
        step_ratio: the step-size cap: under SGD, a step moves the weights by at most this fraction of their size
            (their norm, at least ``weight_floor`` times ``init_norm``; ``None``: no cap).
        **constants: the rule's constants by name (``window=50``): the fields of
            :class:`~lightning_gradwatch.config.ClipConfig` that are no ``GradWatch`` argument, without their
            ``clip_`` prefix, documented there.

    Raises:
        TypeError: an argument of the wrong type (``window=2.5``), or a constant the rule does not have.
        ValueError: a value out of range (a ``zscore`` or ``max_norm`` that is not positive).

    Example:
        >>> clip = AdaptiveClipThreshold()
        >>> clip.threshold()  # nothing seen yet
        inf
        >>> for norm in [1.0, 1.1, 0.9, 1.0, 1.05, 0.95] * 5:
        ...     _ = clip.update(norm, loss=1.0)
        >>> round(clip.threshold(), 2)  # typical norm 0.95 (25th percentile), times 10 ** (3 * 0.1)
        1.9
        >>> clip.update(1000.0, loss=5.0)  # an outlier (its loss up with it) is scaled down to the typical norm
        0.95
        >>> round(clip.update(1000.0, loss=1.0), 2)  # as high a norm over an ordinary loss: held to the threshold
        1.9
        >>> round(clip.update(1.2, loss=1.0), 2)  # an ordinary step is left alone: the threshold it was held to
        1.9
        >>> guarded = AdaptiveClipThreshold()
        >>> for norm in [1.0, 1.1, 0.9, 1.0, 1.05, 0.95] * 5:
        ...     _ = guarded.update(norm, loss=1.0)
        >>> for _ in range(10):  # the loss doubles over a flat norm: batch-loss noise, not a worse run
        ...     ceiling = guarded.update(1.0, loss=2.0)
        >>> round(ceiling, 2)  # the outlier threshold, no ceiling
        1.94
        >>> for _ in range(4):  # the norm rises too (0.4 decade), 3 steps in a row: the ceiling drops below the
        ...     ceiling = guarded.update(2.5, loss=2.0)  # outlier threshold, by 3x
        >>> round(ceiling, 2)
        0.66
    """

    def __init__(
        self,
        zscore: float = ClipConfig.clip_zscore,
        warmup_steps: int = ClipConfig.clip_warmup_steps,
        max_norm: float | None = ClipConfig.clip_max_norm,
        use_loss: bool = ClipConfig.clip_use_loss,
        step_ratio: float | None = ClipConfig.clip_step_ratio,
        **constants: Any,
    ) -> None:
        known = ClipConfig().constants()
        unknown = sorted(set(constants) - set(known))
        if unknown:
            raise TypeError(f"AdaptiveClipThreshold has no constant {', '.join(unknown)}; it has {', '.join(known)}")
        prefix = ClipConfig.PREFIX
        try:
            #: every setting of the rule, checked once (``settings.constants()``: the constants)
            self.settings = ClipConfig(
                clip=ClipConfig.ADAPTIVE,
                clip_zscore=zscore,
                clip_warmup_steps=warmup_steps,
                clip_max_norm=max_norm,
                clip_use_loss=use_loss,
                clip_step_ratio=step_ratio,
                **{prefix + name: value for name, value in constants.items()},
            )
        except (TypeError, ValueError) as err:  # named as this class takes them: `zscore`, not `clip_zscore`
            raise type(err)(str(err).replace(f"`{prefix}", "`")) from None
        c = self.settings
        self.zscore, self.warmup_steps, self.max_norm, self.use_loss = zscore, warmup_steps, max_norm, use_loss
        self.step_ratio = step_ratio
        self._c = c.constants()
        self.steps = 0  # finite, non-zero norms seen
        self.start_weights: float | None = None  # the weights' norm at the first step capped (None: not known)
        self.top_scale = 0.0  # the largest SGD step scale of the run so far (its highest learning rate)
        self._first: list[float] | None = []  # the run's first `first_norms` learnt log10 norms (None: not known)
        self._norms = SortedWindow(c.clip_window)  # learnt log10 norms: the last `window` of them
        self._recent = Window(c.clip_short_window)  # the last `short_window` learnt log10 norms
        self._losses = SortedWindow(c.clip_loss_window)  # the last `loss_window` finite losses
        self._loss_norms = Window(c.clip_loss_window)  # the last `loss_window` finite log10 norms (all steps)
        self.first_level: float | None = None  # the loss level when it was first known
        self.best_level = math.inf
        self.first_norm_level = math.nan  # the norm level when the loss level was first known
        self.best_norm_level = math.nan  # the norm level at the best loss level
        self.level = math.nan  # the loss level now
        self._level_at_cut = -math.inf  # the loss level at the last cut, while the run stays worse
        self.ceiling = math.inf  # log10 norm; inf: not in force
        self.trouble = math.inf  # log10 norm: the level the run got worse at (the ceiling rises slowly above it)
        self._episode_held = math.inf  # log10 norm: the steps' size when the run began getting worse
        self._applied = Window(c.clip_loss_window)  # the last `loss_window` steps' chained log10 norms after clipping
        self._since_cut = 0
        self._offset = 0.0  # the latest step's log10(chained norm / total norm)
        self.ceiling_steps = 0  # consecutive steps the ceiling has been in force
        self.noticed = False  # the notice was due once (it is said once per run)
        self.notice_due = False  # the notice is due at the step just learnt
        self.notice_reason = ""  # why it was due: NOTICE_CEILING, NOTICE_CLIPPING or NOTICE_RISING
        self.notice_amount = 0.0  # ... and by how much: steps clipped, or decades the clipped norm rose
        n = c.clip_notice_steps
        self._clipped = Window(n)  # the last `notice_steps` steps: 1.0 clipped, 0.0 not
        self._step_losses = Window(n)  # ... their training loss (NaN: not known)
        self._step_norms = Window(n)  # ... their log10 norm before clipping
        self.plateau = 0.0  # decades the threshold is lowered by, for clipping that made no progress
        self._plateau_wait = 0  # steps until the plateau is judged again

    @classmethod
    def from_config(cls, settings: ClipConfig) -> AdaptiveClipThreshold:
        """The rule with a configuration's settings and constants.

        Example:
            >>> AdaptiveClipThreshold.from_config(ClipConfig(clip="adaptive", clip_window=50)).settings.clip_window
            50
        """
        return cls(
            settings.clip_zscore,
            settings.clip_warmup_steps,
            settings.clip_max_norm,
            settings.clip_use_loss,
            settings.clip_step_ratio,
            **settings.constants(),
        )

    # ------------------------------------------------------------------ the outlier threshold
    def _levels(self) -> tuple[float, float]:
        """(typical, outlier threshold) as log10 norms; ``inf`` before any norm is learnt."""
        if not len(self._norms):
            return math.inf, math.inf
        c = self._c
        typical = self._norms.quantile(c["quantile"])
        spread = typical - self._norms.quantile(c["low_quantile"])
        if len(self._recent) >= c["short_window"]:  # a level every recent step reached: a model taking off
            typical = max(typical, min(self._recent))
        margin = self.zscore * max(spread, c["min_spread"])
        if self.steps < self.warmup_steps:
            margin = max(margin, c["warmup_margin"])
        return typical, max(typical + margin, self._start())

    def _start(self) -> float:
        """The lowest of the run's first ``first_norms`` learnt norms, once known (``-inf`` before, or when off)."""
        first, count = self._first, self._c["first_norms"]
        return min(first) if first and count and len(first) >= count else -math.inf

    # ------------------------------------------------------------------ the loss
    def _observe(self, loss: float | None, x: float) -> tuple[bool, bool]:
        """Learn the loss and the log norm ``x``; (the run is getting worse, the loss level is a new best)."""
        if self.use_loss and math.isfinite(x):
            self._loss_norms.append(x)
        if loss is None or not self.use_loss or math.isnan(loss):
            return False, False
        if not math.isfinite(loss):  # an overflowing loss is as bad as it gets
            return self.first_level is not None, False
        c = self._c
        self._losses.append(loss)
        if len(self._losses) < min(c["first_losses"], c["loss_window"]):
            return False, False
        self.level = level = self._losses.quantile(c["loss_quantile"])
        norm = self._norm_level(start=self.first_level is None, new_best=level < self.best_level)
        if self.first_level is None:
            self.first_level = level
        new_best = level < self.best_level
        self.best_level = min(self.best_level, level)
        return self._worse(level, norm), new_best

    def _worse(self, level: float, norm: float) -> bool:
        """The loss level is worse than at the start or at the best, and the norm has risen since then."""
        c, first, best = self._c, self.first_level, self.best_level
        assert first is not None
        by = c["worse_by"]
        above_first = level > first + by * abs(first) and self._risen(norm, self.first_norm_level)
        above_best = level > best + by * abs(best) and level > best + c["give_back"] * (first - best)
        return above_first or (above_best and self._risen(norm, self.best_norm_level))

    def _norm_level(self, start: bool, new_best: bool) -> float:
        """The norm's level now: a level each of the last ``norm_window`` steps reached.

        Kept as the reference at the start (the lowest of the first norms: a norm rising from step 1 counts) and, as
        the median norm, at a new best of the loss (the typical norm then, not one low draw of a noisy run's norm).
        """
        norms = list(self._loss_norms)
        norm = min(norms[-self._c["norm_window"] :], default=math.nan)
        if start:
            self.first_norm_level = norm
        if new_best:
            self.best_norm_level = self._loss_norms.median() if norms else math.nan
        return norm

    def _risen(self, norm: float, reference: float) -> bool:
        """The norm is ``norm_rise`` above the reference (or either is not known: a state kept before the norm was)."""
        return not norm <= reference + self._c["norm_rise"]

    def _lower_ceiling(self, x: float, limit: float, typical: float) -> None:
        """The run got worse: the ceiling drops below this step's norm (or the outlier threshold, if lower)."""
        c = self._c
        reference = min(self.best_level, self.first_level if self.first_level is not None else self.best_level)
        depth = math.log10(self.level / reference) if reference > 0 and self.level > 0 else 0.0
        cut = min(max(math.log10(c["cut"]), depth), c["max_cut"])
        held = min(self.ceiling, x, limit)
        if self._level_at_cut == -math.inf:  # the run begins getting worse (again): the steps' size until now
            self._episode_held = self._applied.median() if len(self._applied) else held
        if depth >= c["trouble_depth"]:  # ... and diverges: its loss level 3x up or more
            self.trouble = min(self.trouble, self._episode_held)
        self.ceiling = held - cut
        if math.isfinite(typical):
            self.ceiling = max(self.ceiling, typical - c["floor"])
        self._since_cut, self._level_at_cut = 0, self.level

    # ------------------------------------------------------------------ a step
    def update(
        self,
        total_norm: float,
        loss: float | None = None,
        offset: float = 0.0,
        weight_norm: float | None = None,
        step_scale: float | None = None,
        init_norm: float = 0.0,
    ) -> float:
        """Learn one step; returns the threshold that applies to it (the norm to clip it to).

        For an outlier that is the typical norm, for any other step the outlier threshold; either way at most the
        ceiling, ``max_norm`` and the step-size cap. Non-finite and zero norms are not learnt.

        Args:
            total_norm: the step's total gradient norm, before clipping.
            loss: the training loss the judge is given (``None`` or NaN: not known; the ceiling then stays as it
                is, and a norm above the outlier threshold is an outlier on its own).
            offset: ``log10(chained norm / total norm)`` at this step (the detector's, 0 while the set of layers
                with a gradient has not changed): the rule learns and judges the chained norm, so a backbone
                unfrozen mid-run (more layers, a larger total norm) is not taken for an outlier; the threshold it
                returns is a total norm over this step's layers.
            weight_norm: the norm of the weights with a gradient at this step (``None``: not known, no step-size
                cap).
            step_scale: how far the optimizer moves those weights per unit of ``total_norm``
                (:func:`sgd_step_scale`; ``None``: not an SGD step, no step-size cap). With both, the threshold is
                at most ``step_ratio * max(weight_norm, weight_floor * init_norm) / max(step_scale, top)``, ``top``
                the largest ``step_scale`` of the run so far.
            init_norm: the norm PyTorch's default initialisation gives those weights (``StepRates.init_norm``; 0:
                not known): the cap takes their size as at least ``weight_floor`` times it.
        """
        finite = math.isfinite(total_norm) and total_norm > 0
        self._offset = offset
        log_norm = math.log10(total_norm) if finite else math.inf
        x = log_norm + offset  # the chained norm, which the rule learns and judges
        worse, new_best = self._observe(loss, x)
        typical, limit = self._levels()
        self._move_ceiling(x, limit, typical, worse, new_best)
        above = finite and x > limit
        outlier = above and self._loss_is_high(loss)  # scaled down to the typical norm
        if finite:
            self.steps += 1
            if not worse:
                self._learn(x, above)  # a norm above the threshold is not learnt, with its loss up or not
        threshold = self._cap(
            min(math.inf if not len(self._norms) else max(typical, self._start()) if outlier else limit, self.ceiling)
        )
        self._count_ceiling(limit)
        # the memory of a divergence keeps the rule's own step sizes, not the step-size cap's: a run the cap holds is
        # not also held back by a divergence remembered at the capped size
        if finite:
            self._applied.append(min(log_norm, math.log10(threshold)) + offset)
        threshold = min(threshold, self._step_cap(weight_norm, step_scale, init_norm)) * 10**-self.plateau
        depth = log_norm - math.log10(threshold) if finite and total_norm > threshold > 0 else 0.0
        self._watch_clipping(x, loss, depth)  # the notice counts every clipped step, the cap's too
        return threshold

    def _loss_is_high(self, loss: float | None) -> bool:
        """The step's loss is ``outlier_loss`` decades above the loss level, or not known (then the norm decides)."""
        if loss is None or not self.use_loss or math.isnan(loss) or not self.level > 0:
            return True
        return not loss <= self.level * 10 ** self._c["outlier_loss"]

    def _learn(self, x: float, above: bool) -> None:
        """Learn the chained log norm of a step where the run is not getting worse (``above`` the outlier threshold)."""
        if not above:  # the typical level and the spread are the ordinary steps'
            self._norms.append(x)
        self._recent.append(x)  # a level every recent step reaches, outliers included: a model taking off
        if self._first is not None and len(self._first) < self._c["first_norms"]:
            self._first.append(x)

    def _move_ceiling(self, x: float, limit: float, typical: float, worse: bool, new_best: bool) -> None:
        """Lower the ceiling on a worse step, raise it on any other, lift it once far above the limit."""
        c = self._c
        self._since_cut += 1
        if worse and math.isfinite(x) and self._since_cut > c["cut_every"] and self.level >= self._level_at_cut:
            self._lower_ceiling(x, limit, typical)
        elif not worse and math.isfinite(self.ceiling):
            self._raise_ceiling(new_best)
            if self.ceiling > limit + c["release"]:
                self.ceiling = self.trouble = math.inf
        if not worse:
            self._level_at_cut = -math.inf

    def _raise_ceiling(self, new_best: bool) -> None:
        """Raise the ceiling on a step the run is not worse.

        ``relax`` decades up to half the step size the run diverged at (``trouble``), ``trouble_relax`` of that above
        it; ``rise`` more on a new best of the loss, which lifts that memory too.
        """
        c = self._c
        below = self.trouble - c["trouble_margin"]
        self.ceiling = max(min(self.ceiling + c["relax"], below), self.ceiling + c["relax"] * c["trouble_relax"])
        if new_best:  # the run learns at this step size: above the level it diverged at too
            self.ceiling += c["rise"]
            self.trouble = max(self.trouble, self.ceiling + c["trouble_margin"])

    def _count_ceiling(self, limit: float) -> None:
        """Count the steps in a row the ceiling held below the outlier threshold (a ceiling above it holds nothing)."""
        self.ceiling_steps = self.ceiling_steps + 1 if self.ceiling < limit else 0
        self._say(NOTICE_CEILING, self.ceiling_steps >= self._c["notice_steps"])

    def _say(self, reason: str, due: bool) -> None:
        self.notice_due = due and not self.noticed
        if self.notice_due:
            self.noticed, self.notice_reason = True, reason

    def _watch_clipping(self, x: float, loss: float | None, depth: float) -> None:
        """Keep the step (clipped by ``depth`` decades, loss, norm); say the notice when clipping hides a failure.

        A step counts as clipped for the notice when it was scaled down by ``notice_depth`` decades or more: a norm
        held a little below where it was is no sign of anything.
        """
        self._clipped.append(1.0 if depth >= self._c["notice_depth"] else 0.0)
        self._step_losses.append(math.nan if loss is None else float(loss))
        self._step_norms.append(x)
        self._plateau_wait = max(0, self._plateau_wait - 1)
        if len(self._clipped) < self._c["notice_steps"]:
            return
        flags = list(self._clipped)
        if sum(flags) < min(self._c["notice_share"] * len(flags), 2 * (len(flags) // 4)):
            return  # too few clipped steps for any test (the common case, judged without building more lists)
        stalled = self._stalled_clipping(flags)  # one test, for the plateau cut and the notice
        self._cut_on_plateau(stalled)
        if self.noticed:
            return
        for reason, amount in (
            (NOTICE_CLIPPING, stalled),
            (NOTICE_RISING, self._clipped_rise(flags)),
        ):
            self._say(reason, amount is not None)
            if self.notice_due:
                self.notice_amount = float(amount)
                return

    def _cut_on_plateau(self, stalled: int | None) -> None:
        """Clipping set the steps' size and the loss did not fall: the threshold is lowered ``plateau_cut`` more.

        ``stalled``: the notice's test over the last ``notice_steps`` steps (:meth:`_stalled_clipping`, ``None``
        when it does not hold). Judged again that many steps after a cut, so each cut is judged on steps of the size
        it set; at most ``plateau_max`` decades in all. Only while the batch
        losses scatter (their quartiles ``plateau_spread`` decades apart or more): the steps' size is then set by
        noise, which smaller steps reduce; a flat, quiet loss is a plateau of the model, which smaller steps prolong.
        Not without ``use_loss`` (a loss that rises by design says nothing of progress), nor beside ``max_norm`` (a
        scale the user knows for the model: the cut would take it down too).
        """
        c = self._c
        off = not c["plateau_cut"] or not self.use_loss or self.max_norm is not None
        if off or self._plateau_wait or stalled is None or self._loss_spread() < c["plateau_spread"]:
            return
        self.plateau = min(self.plateau + c["plateau_cut"], c["plateau_max"])
        self._plateau_wait = c["notice_steps"]

    def _loss_spread(self) -> float:
        """Decades between the quartiles of the window's finite losses.

        0 with fewer than 4, or a lower quartile at or below 0: a loss that is not positive, as a negative
        log-likelihood can be, is never cut on.
        """
        losses = [v for v in self._step_losses if math.isfinite(v)]
        if len(losses) < 4:
            return 0.0
        low, _, high = statistics.quantiles(losses, n=4)
        return math.log10(high / low) if low > 0 else 0.0

    def _stalled_clipping(self, flags: list[float]) -> int | None:
        """How many steps were clipped, when at least ``notice_share`` of them were and the loss did not fall."""
        half, clipped = len(flags) // 2, int(sum(flags))
        if clipped < self._c["notice_share"] * len(flags):
            return None
        losses = list(self._step_losses)
        early, late = _finite_median(losses[:half]), _finite_median(losses[half:])
        return clipped if late >= self._c["notice_stall"] * early else None  # not while a loss is not known

    def _clipped_rise(self, flags: list[float]) -> float | None:
        """Decades the clipped steps' norm rose from the first half to the second, when ``notice_rise`` or more."""
        norms, half = list(self._step_norms), len(flags) // 2
        early = [v for v, f in zip(norms[:half], flags[:half]) if f and math.isfinite(v)]
        late = [v for v, f in zip(norms[half:], flags[half:]) if f and math.isfinite(v)]
        if min(len(early), len(late)) < max(1, half // 2):
            return None
        rise = statistics.median(late) - statistics.median(early)
        return rise if rise >= self._c["notice_rise"] else None

    def _step_cap(self, weight_norm: float | None, step_scale: float | None, init_norm: float = 0.0) -> float:
        """The largest total norm whose step moves the weights by ``step_ratio`` of their size.

        Their size: their norm, at least ``weight_floor`` times ``init_norm``; the step's scale: at least the largest
        of the run so far (a decaying learning rate does not raise the cap). Weights that all started at zero (a
        linear model) have no scale to hold a step to: such a run is not capped.
        """
        ratio = self.step_ratio
        if ratio is None or weight_norm is None or step_scale is None or not math.isfinite(weight_norm):
            return math.inf
        if self.start_weights is None:
            self.start_weights = weight_norm
        if math.isfinite(step_scale):
            self.top_scale = max(self.top_scale, step_scale)
        if not step_scale > 0 or not self.start_weights > 0 or not weight_norm > 0:
            return math.inf
        return ratio * max(weight_norm, self._c["weight_floor"] * init_norm) / max(step_scale, self.top_scale)

    def _cap(self, log_norm: float) -> float:
        """A chained ``log10`` level as a total norm over the latest step's layers, at most ``max_norm``."""
        threshold = pow10_or_inf(log_norm - self._offset)
        return threshold if self.max_norm is None else min(threshold, self.max_norm)

    def notice(self, step: int, vanilla_rnn: bool = False) -> str:
        """The notice's text, once it was due (:func:`clipping_notice` with this rule's reason and numbers)."""
        reason = self.notice_reason or NOTICE_CEILING
        steps = self.ceiling_steps if reason == NOTICE_CEILING else self._c["notice_steps"]
        text = clipping_notice(step, steps, vanilla_rnn, reason, self.notice_amount)
        if self.plateau > 0:
            cut, most, every = 10 ** self._c["plateau_cut"], 10 ** self._c["plateau_max"], self._c["notice_steps"]
            text += (
                f' Meanwhile clip="adaptive" lowers its threshold {cut:.3g}x for every {every} steps it clips most of'
                f" while the loss does not fall (at most {most:.3g}x), as a plateau schedule lowers a learning rate."
            )
        return text

    def threshold(self) -> float:
        """The norm the next step is held to unless it is an outlier (``inf`` before the first step, without a cap).

        The step-size cap is not in it: it depends on the next step's weights and learning rate.
        """
        return self._cap(min(self._levels()[1], self.ceiling)) * 10**-self.plateau

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain values that let a resumed run continue with the same threshold."""
        return {
            "steps": self.steps,
            "first_norms": None if self._first is None else list(self._first),
            "log_norms": list(self._norms),
            "recent_norms": list(self._recent),
            "losses": list(self._losses),
            "first_level": self.first_level,
            "best_level": self.best_level,
            "loss_norms": list(self._loss_norms),
            "first_norm_level": _known(self.first_norm_level),
            "best_norm_level": _known(self.best_norm_level),
            "level": self.level,
            "level_at_cut": self._level_at_cut,
            "ceiling": self.ceiling,
            "trouble": self.trouble,
            "episode_held": self._episode_held,
            "applied": list(self._applied),
            "since_cut": self._since_cut,
            "ceiling_steps": self.ceiling_steps,
            "noticed": self.noticed,
            "notice_reason": self.notice_reason,
            "notice_amount": self.notice_amount,
            "clipped": list(self._clipped),
            "step_losses": list(self._step_losses),
            "step_norms": list(self._step_norms),
            "plateau": self.plateau,
            "plateau_wait": self._plateau_wait,
            "start_weights": self.start_weights,
            "top_scale": self.top_scale,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; missing keys keep their defaults.

        A state saved by an earlier rule loads: the previous adaptive rule's window of log norms (``steps``,
        ``log_norms``) becomes the learnt norms, with no loss history (the ceiling starts lifted); the rule before it
        (``mean`` and ``var`` of the log norm) becomes a window of evenly spaced quantiles of that normal
        distribution, so an older checkpoint resumes near the threshold it had.
        """
        self.steps = int(state.get("steps", 0))
        self._load_norms(state)
        self._losses = SortedWindow(self.settings.clip_loss_window, (float(x) for x in state.get("losses", ())))
        first = state.get("first_level")
        self.first_level = None if first is None else float(first)
        self.best_level = float(state.get("best_level", math.inf))
        self._loss_norms = Window(self.settings.clip_loss_window, (float(x) for x in state.get("loss_norms", ())))
        self.first_norm_level = _level(state.get("first_norm_level"))
        self.best_norm_level = _level(state.get("best_norm_level"))
        self.level = float(state.get("level", math.nan))
        self._level_at_cut = float(state.get("level_at_cut", -math.inf))
        self.ceiling = float(state.get("ceiling", math.inf))
        self.trouble = float(state.get("trouble", math.inf))
        self._episode_held = float(state.get("episode_held", math.inf))
        self._applied = Window(self.settings.clip_loss_window, (float(x) for x in state.get("applied", ())))
        self._since_cut = int(state.get("since_cut", 0))
        self.ceiling_steps = int(state.get("ceiling_steps", 0))
        start_weights = state.get("start_weights")
        self.start_weights = None if start_weights is None else float(start_weights)
        self.top_scale = float(state.get("top_scale", 0.0))
        self._load_notice(state)

    def _load_norms(self, state: Mapping[str, Any]) -> None:
        """The learnt norms' part of :meth:`load_state_dict` (``steps`` already loaded)."""
        first = state.get("first_norms", None if self.steps else [])  # a state from before: the start is not known
        self._first = None if first is None else [float(x) for x in first]
        log_norms = state.get("log_norms")
        if log_norms is None and "mean" in state and self.steps > 0:
            mean, std = float(state["mean"]), math.sqrt(max(float(state.get("var", 0.0)), 0.0))
            count = min(self.steps, self.settings.clip_window)
            normal = statistics.NormalDist()
            log_norms = [mean + std * normal.inv_cdf((i + 0.5) / count) for i in range(count)]
        learnt = [float(x) for x in log_norms or () if math.isfinite(float(x))]
        self._norms = SortedWindow(self.settings.clip_window, learnt)
        # the last learnt norms, in their order (none from quantiles standing for the mean + std rule's state)
        self._recent = Window(self.settings.clip_short_window, _recent_norms(state, learnt))

    def _load_notice(self, state: Mapping[str, Any]) -> None:
        """The notice's part of :meth:`load_state_dict`."""
        self.noticed = bool(state.get("noticed", False))
        self.notice_due = False
        self.notice_reason = str(state.get("notice_reason", NOTICE_CEILING if self.noticed else ""))
        self.notice_amount = float(state.get("notice_amount", 0.0))
        n = self.settings.clip_notice_steps
        self._clipped = Window(n, (float(v) for v in state.get("clipped", ())))
        self._step_losses = Window(n, (float(v) for v in state.get("step_losses", ())))
        self._step_norms = Window(n, (float(v) for v in state.get("step_norms", ())))
        self.plateau = min(float(state.get("plateau", 0.0)), self.settings.clip_plateau_max)
        self._plateau_wait = int(state.get("plateau_wait", 0))


def _recent_norms(state: Mapping[str, Any], learnt: list[float]) -> list[float]:
    """The short window of a state: its own (outliers included), or the last learnt norms of an older state."""
    recent = state.get("recent_norms")
    if recent is not None:
        return [float(x) for x in recent]
    return learnt if "log_norms" in state else []


def _finite_median(values: list[float]) -> float:
    """The median of the finite values (NaN when none is): a loss not known or overflowing does not count."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def _known(level: float) -> float | None:
    """A level for the state: ``None`` while not known (a state compares equal to its reloaded copy)."""
    return None if math.isnan(level) else level


def _level(value: Any) -> float:
    return math.nan if value is None else float(value)


def sgd_step_scale(rates: float | Mapping[str, float], layers: Sequence[str], grad_norm: Sequence[float]) -> float:
    """How far an SGD step moves the weights per unit of the step's total gradient norm.

    Once its velocity has built up, SGD with momentum ``m`` and dampening ``d`` moves a parameter by about
    ``lr * (1 - d) / (1 - m)`` times its gradient (``lr`` without momentum, where dampening does nothing): its
    *rate*. With one rate for every layer that is the answer; with
    several (parameter groups with learning rates of their own), the step's norm is the root of the sum of each
    layer's ``(rate * gradient norm) ** 2``, per unit of the total gradient norm.

    Args:
        rates: one rate for every layer, or each layer's by name (a layer not named has rate 0).
        layers: the step's layers.
        grad_norm: their gradient norms.

    Example:
        >>> sgd_step_scale(0.5, ["a", "b"], [3.0, 4.0])
        0.5
        >>> round(sgd_step_scale({"a": 1.0, "b": 0.1}, ["a", "b"], [3.0, 4.0]), 4)  # a step of norm 3.027
        0.6053
    """
    if not isinstance(rates, Mapping):
        return float(rates)
    total = math.sqrt(math.fsum(g * g for g in grad_norm))
    step = math.sqrt(math.fsum((rates.get(name, 0.0) * g) ** 2 for name, g in zip(layers, grad_norm)))
    return step / total if total > 0 else 0.0


def clipping_notice(
    step: int, steps: int, vanilla_rnn: bool = False, reason: str = NOTICE_CEILING, amount: float = 0.0
) -> str:
    """What GradWatch says, once, when clipping hides a failing run.

    Args:
        step: the step it is said at.
        steps: over how many steps it was judged (for the ceiling: how many steps in a row it has been in force).
        vanilla_rnn: the model has a vanilla ``nn.RNN`` (the remedy names gated cells and the recurrent gain).
        reason: :data:`NOTICE_CEILING`, :data:`NOTICE_CLIPPING` or :data:`NOTICE_RISING`.
        amount: for ``NOTICE_CLIPPING`` the steps clipped, for ``NOTICE_RISING`` the decades the norm rose.

    Example:
        >>> clipping_notice(120, 50).split(":")[0]
        'Clipping has held this run back for 50 steps (to step 120) because its training loss got worse'
        >>> clipping_notice(120, 50, reason=NOTICE_CLIPPING, amount=41).split(":")[0]
        'Clipping scaled down 41 of the last 50 steps (to step 120) while the training loss did not fall'
        >>> clipping_notice(120, 50, reason=NOTICE_RISING, amount=1.5).split(":")[0]
        'The gradient norm clipping scales down rose 1.5 decades (32x) over the last 50 steps (to step 120)'
    """
    remedy = "lower the learning rate (by 3-10x), or add a learning-rate warm-up"
    if vanilla_rnn:
        remedy += (
            "; for the recurrent net, a gated cell (nn.LSTM or nn.GRU instead of nn.RNN) or recurrent weights"
            " initialised with a gain below 1"
        )
    if reason == NOTICE_CLIPPING:
        what = (
            f"Clipping scaled down {amount:.0f} of the last {steps} steps (to step {step}) while the training loss"
            " did not fall: the threshold is doing the learning rate's work."
        )
    elif reason == NOTICE_RISING:
        what = (
            f"The gradient norm clipping scales down rose {amount:.1f} decades ({10**amount:.0f}x) over the last"
            f" {steps} steps (to step {step}): the gradients are growing and clipping only holds the steps back."
        )
    else:
        what = (
            f"Clipping has held this run back for {steps} steps (to step {step}) because its training loss got"
            ' worse: clip="adaptive" lowered its ceiling and the loss has not recovered enough to lift it.'
        )
    return (
        f"{what} The learning rate is likely too high for this model, or many of its batches carry outliers."
        f" Clipping hides such a failure, it does not fix it: {remedy}; check the data for corrupted rows or labels,"
        " or use a robust loss such as nn.HuberLoss for outlier targets."
        " GradWatch says this once per run; gradwatch.json lists it under `notices`."
    )
