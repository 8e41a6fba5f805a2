"""The one place the clipping families benchmark touches the package: measuring, scaling, the shipped rules, GradWatch.

Re-point these few names when the package's modules move; nothing else in ``clipping_families.py`` or
``clipping_rules.py`` imports ``lightning_gradwatch``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_gradwatch import GradWatch  # noqa: E402
from lightning_gradwatch.clipping import AdaptiveClipThreshold, clip_coefficient, sgd_step_scale  # noqa: E402
from lightning_gradwatch.config import ClipConfig  # noqa: E402
from lightning_gradwatch.detectors import DetectionConfig, GradientDetector  # noqa: E402
from lightning_gradwatch.engine.step_rates import StepRates  # noqa: E402
from lightning_gradwatch.judge.context import NormBaseline  # noqa: E402
from lightning_gradwatch.stats import GradientStats, StepStats  # noqa: E402

__all__ = [
    "LOSS_OF_THIS_STEP",
    "ChainOffset",
    "Measure",
    "SpikeDetector",
    "StepCap",
    "StepStats",
    "adaptive",
    "constants",
    "gradwatch",
]

#: the loss GradWatch's judge is given at a step: this step's training loss (True: the callback adds up the losses
#: it sees in ``on_before_backward`` and they travel with this step's statistics transfer), or the previous step's
LOSS_OF_THIS_STEP = True


class Measure:
    """The package's per-step path: one fused measurement (one host transfer), then clipping on the device."""

    def __init__(self, model: nn.Module) -> None:
        self.stats = GradientStats(model.named_parameters())

    def collect(self) -> StepStats:
        return self.stats.collect(weights=True)  # the weights' norm, for the adaptive rule's step-size cap

    def clip_(self, total_norm: float, threshold: float) -> bool:
        """Scale the gradients down to ``threshold`` (as ``clip_grad_norm_``); whether they were scaled."""
        coefficient = clip_coefficient(total_norm, threshold)
        if coefficient < 1.0:
            self.stats.scale_(coefficient)
            return True
        return False


class ChainOffset:
    """The chain offset GradWatch's detector gives ``clip="adaptive"`` at each step (``log10(chained / total)``).

    It moves only when the set of layers with a non-zero gradient changes (as when every unit of a layer dies).
    """

    def __init__(self) -> None:
        self.norms = NormBaseline()

    def __call__(self, stats: StepStats) -> float:
        if stats.finite:  # the detector chains finite steps only
            self.norms.previous = self.norms.chain(stats)
        return self.norms.offset


class StepCap:
    """What GradWatch's judge gives ``clip="adaptive"`` for its step-size cap: the step's weights' norm, how far
    the optimizer moves them per unit of gradient norm, and the norm PyTorch's default initialisation gives them
    (``(None, None, 0.0)`` under an optimizer other than SGD)."""

    def __init__(self, model: nn.Module, optimizer: Any) -> None:
        stats = GradientStats(model.named_parameters())
        self.optimizer = optimizer
        self.rates = StepRates(stats.params, stats.layer_of, stats.layer_names, stats.param_names)

    def __call__(self, stats: StepStats) -> tuple[float | None, float | None, float]:
        rates = self.rates(self.optimizer)
        if rates is None:
            return None, None, 0.0
        scale = sgd_step_scale(rates, stats.layers, stats.grad_norm)
        return stats.weight_norm, scale, self.rates.init_norm()


def adaptive(**kwargs: Any) -> AdaptiveClipThreshold:
    """``clip="adaptive"``: the package's rule, with GradWatch's defaults unless ``kwargs`` change a setting."""
    return AdaptiveClipThreshold(**kwargs)


def constants() -> dict[str, Any]:
    """The package rule's constants and their defaults (names as ``adaptive`` takes them)."""
    return ClipConfig().constants()


class SpikeDetector:
    """``on_exploding="clip"``: the exploding detector with GradWatch's defaults, given the step's loss as the callback
    gives it; spike steps go to its spike threshold, an exploding episode's steps to the largest ordinary norm before
    it (``Verdict.exploding_clip``)."""

    def __init__(self) -> None:
        self.detector = GradientDetector(DetectionConfig())
        self.step = 0

    def threshold(self, stats: StepStats, loss: float | None = None) -> float:
        if loss is not None:
            self.detector.observe_loss(loss)
        verdict = self.detector.update(self.step, stats)
        self.step += 1
        return verdict.exploding_clip()


def gradwatch(**kwargs: Any) -> Any:
    """A GradWatch that only clips: every alert response is ``ignore``, logging sparse."""
    responses = {"on_vanishing": "ignore", "on_exploding": "ignore", "on_nonfinite": "ignore", **kwargs}
    return GradWatch(**responses, log_every_n_steps=50)
