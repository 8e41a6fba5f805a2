"""Alert records, the warning and error they travel in, and remedy hints."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "ALERT_KINDS",
    "REMEDIES_MARKDOWN",
    "REMEDIES_PLAIN",
    "AlertKind",
    "GradientAlert",
    "GradientAlertError",
    "GradientWarning",
    "ModelTraits",
    "RemedyCause",
    "alert_markdown",
    "format_layers",
    "parse_alert_markdown",
    "remedies",
]

AlertKind = Literal["vanishing", "exploding", "nonfinite"]
ALERT_KINDS: tuple[AlertKind, ...] = ("vanishing", "exploding", "nonfinite")


@dataclass(frozen=True)
class GradientAlert:
    """One gradient-health finding at one optimizer step.

    Args:
        kind: ``"vanishing"``, ``"exploding"`` or ``"nonfinite"``.
        step: the trainer's ``global_step`` when the alert fired.
        layers: names of the layers at fault, in forward order.
        value: the measured quantity that crossed the threshold (its meaning depends on ``kind``; see ``message``).
        threshold: the threshold it crossed.
        message: a human-readable explanation with remedy hints.
        optimizer: index of the optimizer whose parameters were measured.

    Example:
        >>> alert = GradientAlert("exploding", step=12, layers=("fc1",), value=40.0, threshold=8.0, message="...")
        >>> alert.kind, alert.step
        ('exploding', 12)
        >>> GradientAlert.from_dict(alert.to_dict()) == alert
        True
    """

    kind: AlertKind
    step: int
    layers: tuple[str, ...]
    value: float
    threshold: float
    message: str
    optimizer: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values."""
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradientAlert:
        """Rebuild an alert from :meth:`to_dict` output; unknown keys are ignored."""
        return cls(
            kind=data["kind"],
            step=int(data["step"]),
            layers=tuple(data.get("layers", ())),
            value=float(data.get("value", float("nan"))),
            threshold=float(data.get("threshold", float("nan"))),
            message=str(data.get("message", "")),
            optimizer=int(data.get("optimizer", 0)),
            extra=dict(data.get("extra", {})),
        )

    def __str__(self) -> str:
        return self.message


class GradientWarning(UserWarning):
    """Warning category of GradWatch alerts; filter it with :mod:`warnings` like any other category.

    Example:
        >>> import warnings
        >>> warnings.simplefilter("error", GradientWarning)  # turn gradient warnings into errors
        >>> warnings.resetwarnings()
    """


class GradientAlertError(RuntimeError):
    """Raised for an alert whose configured response is ``"raise"``; carries the alert.

    Example:
        >>> alert = GradientAlert("nonfinite", 3, ("fc1",), float("nan"), 0.0, "NaN gradients in fc1")
        >>> err = GradientAlertError(alert)
        >>> err.alert.kind
        'nonfinite'
    """

    def __init__(self, alert: GradientAlert) -> None:
        super().__init__(alert.message)
        self.alert = alert

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.alert,))


def format_layers(layers: tuple[str, ...] | list[str], limit: int = 6) -> str:
    """``a, b, c`` with a count of the rest when there are many.

    Example:
        >>> format_layers(["l0", "l1", "l2"], limit=2)
        'l0, l1 (+1 more)'
    """
    shown = ", ".join(layers[:limit])
    return shown if len(layers) <= limit else f"{shown} (+{len(layers) - limit} more)"


@dataclass(frozen=True)
class ModelTraits:
    """What the remedy hints need to know about a model, read once from its modules."""

    saturating_activations: bool = False
    vanilla_rnn: bool = False
    normalisation: bool = False
    residual_hint: bool = False

    @classmethod
    def from_module(cls, module: Any) -> ModelTraits:
        """Inspect ``module.modules()`` by type name (no import of the classes needed)."""
        names = {type(m).__name__ for m in module.modules()}
        saturating = bool(names & {"Sigmoid", "Tanh", "Hardtanh", "Softsign", "LogSigmoid", "Hardsigmoid"})
        rnn = "RNN" in names or "RNNCell" in names
        norm = any(n.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d")) or "Norm" in n for n in names)
        return cls(saturating_activations=saturating, vanilla_rnn=rnn, normalisation=norm)


RemedyCause = Literal["startup", "growth", "outlier", "dead"]


def remedies(kind: AlertKind, traits: ModelTraits | None = None, cause: RemedyCause | str | None = None) -> list[str]:
    """Remedy hints that fit ``kind``, what was seen (``cause``) and the model's traits, most specific first.

    Args:
        kind: the alert kind.
        traits: what the model looks like.
        cause: what the detector saw. Exploding: ``"startup"`` (orders of magnitude within the first steps),
            ``"growth"`` (norm and loss climbing together over many steps), ``"outlier"`` (spikes far beyond the
            run's history, as bad batches give). Vanishing: ``"dead"`` (gradients exactly zero).

    Example:
        >>> remedies("vanishing", ModelTraits(vanilla_rnn=True))[0]
        'replace the vanilla nn.RNN with nn.LSTM or nn.GRU (gated cells keep gradients alive over long sequences)'
        >>> remedies("exploding", cause="outlier")[0]
        'check the inputs and labels of the batches at this step for outliers or corruption'
    """
    traits = traits or ModelTraits()
    if kind == "vanishing":
        return _vanishing_remedies(traits, cause)
    if kind == "exploding":
        return _exploding_remedies(traits, cause)
    return [
        "look for NaN/Inf in the inputs, labels or loss of the batches at this step",
        "guard divisions, logs and square roots in the loss (add an epsilon)",
        'lower the learning rate and clip gradients (GradWatch(clip="adaptive"))',
        "with fp16, prefer bf16-mixed precision or keep the loss scaler enabled",
    ]


def _vanishing_remedies(traits: ModelTraits, cause: str | None) -> list[str]:
    hints: list[str] = []
    if cause == "dead":
        hints.append(
            "lower the learning rate: one too-high step can push every ReLU unit negative for all inputs, and a dead"
            " unit never recovers"
        )
        hints.append("use LeakyReLU or GELU, which keep a gradient for negative inputs")
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
    hints.append("add residual (skip) connections around deep stacks")
    hints.append("use He (Kaiming) initialisation for ReLU-family layers, Xavier (Glorot) for tanh/sigmoid")
    if not traits.saturating_activations and not traits.vanilla_rnn:
        hints.append("check for dead ReLUs (LeakyReLU or GELU avoid them) and for frozen or detached layers")
    return hints


def _exploding_remedies(traits: ModelTraits, cause: str | None) -> list[str]:
    clip = 'clip gradients: GradWatch(clip="adaptive"), or GradWatch(on_exploding="clip") for the spike steps only'
    hints: list[str] = []
    if cause == "startup":
        hints.append(
            "lower the learning rate, by 10x or more: a gradient norm that grows by orders of magnitude within the"
            " first steps means each update overshoots"
        )
        hints.append("add a learning-rate warm-up")
        hints.append(clip)
    elif cause == "growth":
        hints.append(
            "lower the learning rate: a gradient norm and a loss that climb together over many steps are the mark of"
            " a learning rate too high for the model (under Adam/AdamW such a run may never produce a NaN)"
        )
        hints.append("add a learning-rate warm-up, or lengthen it")
        hints.append(clip)
    else:
        hints.append("check the inputs and labels of the batches at this step for outliers or corruption")
        hints.append(clip)
        hints.append("lower the learning rate, or add a learning-rate warm-up")
    if traits.vanilla_rnn:
        hints.append("replace the vanilla nn.RNN with nn.LSTM or nn.GRU")
    if not traits.normalisation:
        hints.append("add normalisation layers (BatchNorm, LayerNorm)")
    return hints


REMEDIES_PLAIN = "\nRemedies:\n"
REMEDIES_MARKDOWN = "\n\nRemedies:\n\n"  # Markdown needs blank lines around a list


def alert_markdown(alert: GradientAlert) -> str:
    """An alert as Markdown for TensorBoard's Text tab."""
    layers = ", ".join(f"`{name}`" for name in alert.layers[:20])
    if len(alert.layers) > 20:
        layers += f" (+{len(alert.layers) - 20} more)"
    return (
        f"**{alert.kind}** at step {alert.step} (value {alert.value:.4g}, threshold {alert.threshold:.4g})  \n"
        f"layers: {layers or '(all)'}  \n\n{alert.message.replace(REMEDIES_PLAIN, REMEDIES_MARKDOWN)}"
    )


_ALERT_HEAD = re.compile(r"\*\*(\w+)\*\* at step (\d+) \(value ([^,]+), threshold ([^)]+)\)")


def parse_alert_markdown(text: str, step: int) -> dict[str, Any]:
    r"""Rebuild an alert (as plain values) from its :func:`alert_markdown` text.

    Example:
        >>> alert = GradientAlert("exploding", 7, ("fc1", "fc2"), 50.0, 9.0, "Exploding.\nRemedies:\n  - clip")
        >>> back = parse_alert_markdown(alert_markdown(alert), step=7)
        >>> back["kind"], back["step"], back["layers"], back["message"] == alert.message
        ('exploding', 7, ['fc1', 'fc2'], True)
    """
    head = _ALERT_HEAD.search(text)
    layers: list[str] = []
    match = re.search(r"layers: (.*?)  \n", text)
    if match:
        layers = re.findall(r"`([^`]+)`", match.group(1))
    message = text.split("\n\n", 1)[1] if "\n\n" in text else text
    message = message.replace(REMEDIES_MARKDOWN, REMEDIES_PLAIN)
    return {
        "kind": head.group(1) if head else "unknown",
        "step": int(head.group(2)) if head else step,
        "layers": layers,
        "value": _float_or_nan(head.group(3)) if head else math.nan,
        "threshold": _float_or_nan(head.group(4)) if head else math.nan,
        "message": message,
    }


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
