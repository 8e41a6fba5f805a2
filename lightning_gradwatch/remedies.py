"""Remedy hints: what to try, given what was seen and what the model looks like (``kinds.KINDS`` names them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning_gradwatch._enum import StrEnum

__all__ = ["Cause", "ModelTraits", "exploding_remedies", "nonfinite_remedies", "vanishing_remedies"]

_CLIP = (
    'clip gradients: GradWatch(clip="adaptive"), or GradWatch(on_exploding="clip") for the spike steps and explosions'
    " only"
)


class Cause(StrEnum):
    """What a detection rule saw, for the remedy hints.

    Example:
        >>> Cause.DEAD == "dead", f"{Cause.DEAD}"
        (True, 'dead')
    """

    STARTUP = "startup"  # exploding: orders of magnitude within the first steps
    GROWTH = "growth"  # exploding: norm and loss climbing together over many steps
    OUTLIER = "outlier"  # exploding: spikes far beyond the run's history, as bad batches give
    KILL = "kill"  # exploding: one update so large that layers have had gradients exactly zero since
    DEAD = "dead"  # vanishing: gradients exactly zero


@dataclass(frozen=True)
class ModelTraits:
    """What the remedy hints need to know about a model, read once from its modules, and the clipping it has.

    Example:
        >>> import torch
        >>> ModelTraits.from_module(torch.nn.Sequential(torch.nn.RNN(2, 2), torch.nn.Tanh()))
        ModelTraits(saturating_activations=True, vanilla_rnn=True, normalisation=False, clipping='', optimizer='')
    """

    saturating_activations: bool = False
    vanilla_rnn: bool = False
    normalisation: bool = False
    clipping: str = ""  # the clipping the run already has (``'clip="adaptive"'``), not to be suggested again
    optimizer: str = ""  # the watched optimizer's class name (``"Lion"``), when known

    @property
    def adaptive_clipping(self) -> bool:
        """Whether ``clip="adaptive"`` holds every step: an outlier's update is scaled to the run's typical norm."""
        return self.clipping == 'clip="adaptive"'

    @property
    def scale_free_steps(self) -> bool:
        """Whether the optimizer's step does not grow with the gradient (its size is the learning rate's)."""
        name = self.optimizer.lower()
        return any(kin in name for kin in SCALE_FREE_OPTIMIZERS)

    @property
    def own_step_sizes(self) -> bool:
        """Whether the optimizer sizes each parameter's step by that parameter's own gradients (Adam and its kin).

        Adam, RMSprop, Adagrad and the like divide each gradient by a running measure of its own size, and the
        scale-free optimizers step by the learning rate whatever the gradient: a layer whose gradient lies decades
        below another's steps as far.

        Example:
            >>> ModelTraits(optimizer="AdamW").own_step_sizes, ModelTraits(optimizer="SGD").own_step_sizes
            (True, False)
        """
        name = self.optimizer.lower()
        return self.scale_free_steps or any(kin in name for kin in OWN_STEP_SIZE_OPTIMIZERS)

    @classmethod
    def from_module(cls, module: Any) -> ModelTraits:
        """Inspect ``module.modules()`` by type name (no import of the classes needed)."""
        names = {type(m).__name__ for m in module.modules()}
        saturating = bool(names & {"Sigmoid", "Tanh", "Hardtanh", "Softsign", "LogSigmoid", "Hardsigmoid"})
        rnn = "RNN" in names or "RNNCell" in names
        norm = any(n.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d")) or "Norm" in n for n in names)
        return cls(saturating_activations=saturating, vanilla_rnn=rnn, normalisation=norm)


#: parts of optimizer class names (lower case) whose step is the same for a gradient scaled by any factor: the sign of
#: a momentum (Lion and its 8-bit and fused versions, signSGD, Signum, Rprop's sign rule) or an orthogonalised update
#: (Muon); clipping the gradient's norm does not shorten it
SCALE_FREE_OPTIMIZERS = frozenset({"lion", "muon", "signsgd", "signum", "rprop", "tiger"})
#: parts of optimizer class names (lower case) whose step divides each parameter's (or each layer's) gradient by a
#: running measure of its own size: Adam and its variants (AdamW, NAdam, RAdam, Adamax, AdEMAMix, fused and 8-bit
#: ones), RMSprop, Adagrad, Adadelta, Adafactor, AdaBelief, LAMB, LARS, NovoGrad, MADGRAD, AdaHessian, Yogi,
#: AdaBound, ADOPT, CAME, SM3, Ranger, Adan, Sophia, Prodigy, Shampoo, SOAP
OWN_STEP_SIZE_OPTIMIZERS = (
    "adam",
    "ademamix",
    "rmsprop",
    "adagrad",
    "adadelta",
    "adafactor",
    "adabelief",
    "lamb",
    "lars",
    "novograd",
    "madgrad",
    "adahessian",
    "yogi",
    "adabound",
    "adopt",
    "came",
    "sm3",
    "ranger",
    "adan",
    "sophia",
    "prodigy",
    "shampoo",
    "soap",
)


def nonfinite_remedies(traits: ModelTraits, cause: Cause | str | None = None) -> list[str]:
    """Hints for NaN/Inf gradients (whatever the model).

    Example:
        >>> nonfinite_remedies(ModelTraits())[0]
        'look for NaN/Inf in the inputs, labels or loss of the batches at this step'
        >>> nonfinite_remedies(ModelTraits(clipping="clip=1.0"))[2]
        'lower the learning rate (clipping is already on: clip=1.0)'
    """
    if traits.clipping:
        rate = f"lower the learning rate (clipping is already on: {traits.clipping})"
    elif traits.scale_free_steps:
        rate = f"lower the learning rate ({traits.optimizer} steps by the learning rate whatever the gradient's norm)"
    else:
        rate = 'lower the learning rate and clip gradients (GradWatch(clip="adaptive"))'
    return [
        "look for NaN/Inf in the inputs, labels or loss of the batches at this step",
        "guard divisions, logs and square roots in the loss (add an epsilon)",
        rate,
        "with fp16, prefer bf16-mixed precision or keep the loss scaler enabled",
    ]


def vanishing_remedies(traits: ModelTraits, cause: Cause | str | None = None) -> list[str]:
    """Hints for vanishing gradients; ``cause="dead"``: gradients exactly zero.

    Example:
        >>> vanishing_remedies(ModelTraits(vanilla_rnn=True))[0]
        'replace the vanilla nn.RNN with nn.LSTM or nn.GRU (gated cells keep gradients alive over long sequences)'
    """
    hints: list[str] = []
    if cause == Cause.DEAD:
        hints.append(
            "lower the learning rate: one too-high step can push every ReLU unit negative for all inputs, and a dead"
            " unit never recovers"
        )
        hints.append("use LeakyReLU or GELU, which keep a gradient for negative inputs")
        hints.append(
            "check the output for certainty: a softmax or sigmoid whose probabilities reached exactly 1 (a policy or"
            " classifier collapsed onto one action or class, its logits hundreds apart) gives zero gradients too; an"
            " entropy bonus or label smoothing, a lower learning rate or bounded logits prevent it"
        )
        hints.append("check that no part of the model is frozen, detached (.detach(), torch.no_grad) or unused")
        return hints
    if traits.vanilla_rnn:
        hints.append(
            "replace the vanilla nn.RNN with nn.LSTM or nn.GRU (gated cells keep gradients alive over long sequences)"
        )
    if traits.saturating_activations:
        hints.append("replace sigmoid/tanh activations with a ReLU-family activation (ReLU, LeakyReLU, GELU)")
    if not traits.normalisation:
        hints.append("add normalisation layers (BatchNorm, LayerNorm)")
    else:
        hints.append(
            "lower the learning rate or add a warm-up: in a normalised model (a transformer) a learning rate too high"
            " early can saturate the normalised layers or collapse attention, starving the layers before them"
        )
    hints.append("add residual (skip) connections around deep stacks")
    hints.append("use He (Kaiming) initialisation for ReLU-family layers, Xavier (Glorot) for tanh/sigmoid")
    if not traits.saturating_activations and not traits.vanilla_rnn:
        hints.append("check for dead ReLUs (LeakyReLU or GELU avoid them) and for frozen or detached layers")
    return hints


def exploding_remedies(traits: ModelTraits, cause: Cause | str | None = None) -> list[str]:
    """Hints for exploding gradients; ``cause``: ``"startup"``, ``"growth"``, ``"kill"`` or ``"outlier"`` (the default).

    Example:
        >>> exploding_remedies(ModelTraits(), "outlier")[0]
        'check the inputs and labels of the batches at this step for outliers or corruption'
        >>> exploding_remedies(ModelTraits(clipping='clip="adaptive"'), "outlier")[1]
        'clipping is already on (clip="adaptive"): it bounds each step, not the cause; try the others'
    """
    hints: list[str] = []
    clip = _CLIP
    if traits.scale_free_steps:
        clip = (
            f"clipping will not help: {traits.optimizer} takes a step of the learning rate's size whatever the"
            " gradient's norm, so only a lower learning rate shortens it"
        )
    elif traits.clipping:
        clip = f"clipping is already on ({traits.clipping}): it bounds each step, not the cause; try the others"
    if cause == Cause.KILL:
        hints.append(
            "lower the learning rate, by 10x or more: one update far larger than the ones before pushed every ReLU"
            " unit of these layers negative for all inputs, and a dead unit never recovers"
        )
        hints.append("add a learning-rate warm-up")
        hints.append(clip)
        hints.append("use LeakyReLU or GELU, which keep a gradient for negative inputs")
    elif cause == Cause.STARTUP:
        hints.append(
            "lower the learning rate, by 10x or more: a gradient norm that grows tenfold or more within the first"
            " steps means each update overshoots"
        )
        hints.append("add a learning-rate warm-up")
        hints.append(clip)
    elif cause == Cause.GROWTH:
        hints.append(
            "lower the learning rate: a gradient norm and a loss that climb together over many steps are the mark of"
            " a learning rate too high for the model (under an optimizer that normalises its steps, such as Adam, such"
            " a run may never produce a NaN)"
        )
        hints.append("add a learning-rate warm-up, or lengthen it")
        hints.append(clip)
        hints.append(
            "if the loss rises by design (temporal-difference targets that grow as the values are learnt, a curriculum"
            ' of harder data), the climb is expected: keep the alert as a note with on_exploding="warn" and'
            " `gradwatch check --fail-on nonfinite,vanishing`"
        )
    else:
        hints.append("check the inputs and labels of the batches at this step for outliers or corruption")
        hints.append(clip)
        hints.append("lower the learning rate, or add a learning-rate warm-up")
    if traits.vanilla_rnn:
        hints.append("replace the vanilla nn.RNN with nn.LSTM or nn.GRU")
    if not traits.normalisation:
        hints.append("add normalisation layers (BatchNorm, LayerNorm)")
    return hints
