"""Internal. The one place that imports Lightning.

``GradWatch`` derives from the ``Callback`` class of every installed flavour (``lightning.pytorch`` and
``pytorch_lightning``), so the same object is a callback to either Trainer and passes both flavours' type checks
(including LightningCLI's). Nothing else in the package touches Lightning's classes: the callback reads only public,
duck-typed Trainer attributes.
"""

from __future__ import annotations

from lightning_utilities.core.imports import RequirementCache

__all__ = ["CALLBACK_BASES", "MISSING_LIGHTNING", "callback_bases"]

_LIGHTNING = RequirementCache("lightning>=2.1", "lightning.pytorch")
_PYTORCH_LIGHTNING = RequirementCache("pytorch_lightning>=2.1", "pytorch_lightning")

MISSING_LIGHTNING = (
    "GradWatch needs PyTorch Lightning. Install one of the two packages it ships as:"
    " `pip install lightning` or `pip install pytorch-lightning`"
    " (install `torch` first, so pip does not pull a CUDA build you may not want)."
)


def callback_bases() -> tuple[type, ...]:
    """The ``Callback`` classes of the installed Lightning flavours (empty when neither is installed)."""
    bases: list[type] = []
    if _LIGHTNING:
        from lightning.pytorch import Callback

        bases.append(Callback)
    if _PYTORCH_LIGHTNING:
        from pytorch_lightning import Callback as LegacyCallback

        bases.append(LegacyCallback)
    return tuple(bases)


CALLBACK_BASES: tuple[type, ...] = callback_bases()
