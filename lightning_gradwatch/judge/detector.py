"""The detector: the rules of every alert kind over the stream of one optimizer's :class:`StepStats`.

Plain Python over floats, stateful and checkpointable (:meth:`GradientDetector.state_dict`). One detector watches the
parameters of one optimizer, and is told each step's training loss (:meth:`GradientDetector.observe_loss`).

Each step goes through the watches of :data:`WATCHES` in order, each composing the rules of one kind:

- non-finite (``judge/nonfinite.py``): any NaN/Inf gradient value, alerted once per episode; such a step is judged by
  nothing else;
- exploding (``judge/exploding.py``): the rules of ``EXPLODING_RULES`` (*jump*, *spikes*, *growth*, *trend*,
  *climb*), alerted once per episode by whichever sees it first;
- vanishing (``judge/vanishing.py``): the rules of ``VANISHING_RULES`` (the whole network's *collapse*, the *stall*
  of a run that does not learn, then each layer), waiting while an explosion lasts.

The rules share the run's histories (``judge/context.py``): the running moments, ceiling and peak of the log of the
*chained* total norm (comparing like with like when the set of layers with a gradient changes), and the loss's
medians, start and best. Every piece of state is declared once, by the part that owns
it; the detector's checkpoint is the union of its parts', as flat as it always was, so older checkpoints load.

``benchmarks/bank.py`` scores the detector on a generated bank of training runs (model families x optimizers x
schedules x events, seeds varied), each judged by its outcome, per family and with every constant chosen on the other
families (leave one family out).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from lightning_gradwatch.config import DetectionConfig
from lightning_gradwatch.judge.context import Context, Verdict
from lightning_gradwatch.judge.exploding import ExplodingWatch
from lightning_gradwatch.judge.nonfinite import NonfiniteWatch
from lightning_gradwatch.judge.state import Stateful
from lightning_gradwatch.judge.vanishing import VanishingWatch
from lightning_gradwatch.kinds import AlertKind
from lightning_gradwatch.remedies import ModelTraits

if TYPE_CHECKING:  # annotations only: detection is plain Python and imports no torch
    from lightning_gradwatch.measure.records import StepStats

__all__ = ["WATCHES", "DetectionConfig", "GradientDetector", "KindWatch", "Verdict"]


class KindWatch(Protocol):
    """The rules of one alert kind, and its episode."""

    kind: AlertKind
    settings: tuple[str, ...]  # the DetectionConfig fields it owns itself (its rules list theirs)

    def parts(self) -> tuple[Stateful, ...]:
        """Its parts of the checkpoint."""
        ...

    def update(self, step: int, stats: StepStats, verdict: Verdict) -> bool:
        """Judge one step into ``verdict``; returns whether the next watches judge it too."""
        ...


#: The watches, in the order they judge a step (a new alert kind adds its watch here and its entry in ``KINDS``).
WATCHES: tuple[type[KindWatch], ...] = (NonfiniteWatch, ExplodingWatch, VanishingWatch)  # type: ignore[assignment]


class GradientDetector:
    """Watches the gradient statistics of one optimizer and reports alerts.

    Args:
        config: detection thresholds.
        exempt_layers: layers left out of the per-layer vanishing test (normalisation layers, biases).
        traits: what the model looks like, to pick remedy hints.
        optimizer: index of the watched optimizer (recorded in alerts).

    Example:
        >>> from lightning_gradwatch.measure.records import StepStats
        >>> det = GradientDetector(DetectionConfig(warmup_steps=3))
        >>> def step(norm): return StepStats(("fc",), (norm,), norm, (10,), (0,))
        >>> [det.update(i, step(1.0)).alerts for i in range(5)]
        [[], [], [], [], []]
        >>> det.update(5, step(1e4)).spike, det.update(6, step(1e5)).alert("exploding").kind
        (True, 'exploding')
        >>> det.state_dict()["counts"]
        {'spikes': 2, 'nonfinite_steps': 0}
    """

    def __init__(
        self,
        config: DetectionConfig | None = None,
        exempt_layers: Collection[str] = (),
        traits: ModelTraits | None = None,
        optimizer: int = 0,
    ) -> None:
        self.ctx = Context(config or DetectionConfig(), traits or ModelTraits(), optimizer, frozenset(exempt_layers))
        self.watches = tuple(watch(self.ctx) for watch in WATCHES)  # type: ignore[call-arg]
        keys = [key for part in self._parts() for key in part.state_dict()]
        assert len(keys) == len(set(keys)), f"two parts of the detector keep the same state: {sorted(keys)}"

    @property
    def config(self) -> DetectionConfig:
        """The detection thresholds."""
        return self.ctx.config

    @property
    def traits(self) -> ModelTraits:
        """What the model looks like (for remedy hints)."""
        return self.ctx.traits

    @property
    def optimizer(self) -> int:
        """The watched optimizer's index."""
        return self.ctx.optimizer

    @property
    def exempt_layers(self) -> frozenset[str]:
        """Layers left out of the per-layer vanishing test."""
        return self.ctx.exempt_layers

    @exempt_layers.setter
    def exempt_layers(self, layers: Collection[str]) -> None:
        self.ctx.exempt_layers = frozenset(layers)

    def _parts(self) -> tuple[Stateful, ...]:
        return self.ctx.parts() + tuple(part for watch in self.watches for part in watch.parts())

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget all history."""
        for part in self._parts():
            part.reset()

    def state_dict(self) -> dict[str, Any]:
        """Plain values that let a resumed run continue where it stopped (one flat mapping, every part's keys)."""
        return {key: value for part in self._parts() for key, value in part.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; keys missing from older checkpoints keep their defaults."""
        for part in self._parts():
            part.load_state_dict(state)

    # ------------------------------------------------------------------ detection
    def spike_threshold(self) -> float:
        """The total norm above which the next step is a spike (``inf`` until warm-up ends, unless absolute)."""
        return self.ctx.spike_threshold()

    def observe_loss(self, loss: float) -> None:
        """Record the latest training loss (non-finite losses are ignored).

        The loss tells a model taking off (norm up, loss down) from a divergence (both up), and a converged model from
        a collapsed one.
        """
        self.ctx.losses.observe_loss(loss)

    def observe_rates(self, rates: Sequence[float] | None) -> None:
        """Record the learning rates the optimizer steps with now, one per parameter group (``None``: not known).

        A learning rate that was not raised tells a loss that jumps with new data from one the training threw up.
        """
        self.ctx.rates.observe(rates)

    def observe_held(self, held: bool) -> None:
        """Record whether the update of the step just judged was held: clipped below its norm, or skipped.

        A spike orders of magnitude beyond the run, right after a spike whose update reached the weights, is a run
        that update threw off; after one whose update was held, it is another bad batch (outliers in a row, under
        ``clip="adaptive"``), judged on the full ``exploding_patience``.
        """
        self.ctx.norms.previous_held = held

    def update(self, step: int, stats: StepStats) -> Verdict:
        """Judge one step's statistics; returns the verdict, with any alerts that fired now."""
        verdict = Verdict()
        for watch in self.watches:
            if not watch.update(step, stats, verdict):
                break
        return verdict
