"""Alert records, the warning and error they travel in, and remedy hints."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from lightning_gradwatch.kinds import AlertKind, Cause, kind_spec
from lightning_gradwatch.remedies import ModelTraits

__all__ = [
    "ALERT_KINDS",
    "CLIPPING_NOTICE",
    "MARKDOWN_LAYERS",
    "NEW_DATA_NOTICE",
    "REMEDIES_MARKDOWN",
    "REMEDIES_PLAIN",
    "AlertKind",
    "GradientAlert",
    "GradientAlertError",
    "GradientWarning",
    "ModelTraits",
    "RemedyCause",
    "alert_markdown",
    "display_layer",
    "format_layers",
    "parse_alert_markdown",
    "remedies",
]

#: the alert kinds' values, in the order of ``GradWatch``'s ``on_<kind>`` arguments
ALERT_KINDS: tuple[str, ...] = tuple(kind.value for kind in AlertKind)
#: the kind of the notice said once when clipping hides a failing run (``notices`` in ``gradwatch.json``; no alert)
CLIPPING_NOTICE = "clipping"
#: the kind of the notice said once when the loss jumped at once and stayed up with new data (no alert)
NEW_DATA_NOTICE = "new_data"
#: what a detection rule saw, which chooses the remedy hints (the enum :class:`~lightning_gradwatch.kinds.Cause`)
RemedyCause = Cause


@dataclass(frozen=True)
class GradientAlert:
    """One gradient-health finding at one optimizer step.

    Args:
        kind: ``"vanishing"``, ``"exploding"`` or ``"nonfinite"`` (an :class:`~lightning_gradwatch.kinds.AlertKind`
            is kept as its value).
        step: the trainer's ``global_step`` when the alert fired.
        layers: names of the layers at fault, in the model's order (the order its parameters are registered: the
            forward order of a sequential stack, not necessarily of a model that defines its modules out of order).
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

    kind: str
    step: int
    layers: tuple[str, ...]
    value: float
    threshold: float
    message: str
    optimizer: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.kind, Enum):  # stored by value: plain in checkpoints, JSON and repr
            object.__setattr__(self, "kind", self.kind.value)

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


def display_layer(name: str) -> str:
    """A layer's name as a message shows it: a child of a bare container by its index (``model[0]``), else as is.

    A model that is itself an ``nn.Sequential`` names its layers ``0``, ``2``, ...; in a sentence those read as
    numbers, so they are shown the way the layer is reached in Python.

    Example:
        >>> display_layer("0"), display_layer("3.conv"), display_layer("net.0")
        ('model[0]', 'model[3].conv', 'net.0')
    """
    head, dot, rest = name.partition(".")
    return f"model[{head}]{dot}{rest}" if head.isdigit() else name


def format_layers(layers: tuple[str, ...] | list[str], limit: int = 6) -> str:
    """``a, b, c`` with a count of the rest when there are many (names as :func:`display_layer` shows them).

    Example:
        >>> format_layers(["l0", "l1", "l2"], limit=2)
        'l0, l1 (+1 more)'
        >>> format_layers(["0", "2"])
        'model[0], model[2]'
    """
    shown = ", ".join(display_layer(layer) for layer in layers[:limit])
    return shown if len(layers) <= limit else f"{shown} (+{len(layers) - limit} more)"


def remedies(kind: AlertKind | str, traits: ModelTraits | None = None, cause: Cause | str | None = None) -> list[str]:
    """Remedy hints that fit ``kind``, what was seen (``cause``) and the model's traits, most specific first.

    Args:
        kind: the alert kind.
        traits: what the model looks like.
        cause: what the detector saw. Exploding: ``"startup"`` (orders of magnitude within the first steps),
            ``"growth"`` (norm and loss climbing together over many steps), ``"outlier"`` (spikes far beyond the
            run's history, as bad batches give). Vanishing: ``"dead"`` (gradients exactly zero).

    Raises:
        ValueError: for a kind the table of kinds does not know.

    Example:
        >>> remedies("vanishing", ModelTraits(vanilla_rnn=True))[0]
        'replace the vanilla nn.RNN with nn.LSTM or nn.GRU (gated cells keep gradients alive over long sequences)'
        >>> remedies("exploding", cause="outlier")[0]
        'check the inputs and labels of the batches at this step for outliers or corruption'
    """
    return kind_spec(kind).remedies(traits or ModelTraits(), cause)


#: an alert's Markdown names at most this many layers, and counts the rest
MARKDOWN_LAYERS = 20
REMEDIES_PLAIN = "\nRemedies:\n"
REMEDIES_MARKDOWN = "\n\nRemedies:\n\n"  # Markdown needs blank lines around a list


def alert_markdown(alert: GradientAlert) -> str:
    """An alert as Markdown for TensorBoard's Text tab."""
    layers = ", ".join(f"`{name}`" for name in alert.layers[:MARKDOWN_LAYERS])
    if len(alert.layers) > MARKDOWN_LAYERS:
        layers += f" (+{len(alert.layers) - MARKDOWN_LAYERS} more)"
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
