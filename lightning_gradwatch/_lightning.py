"""Internal. The one place that imports Lightning.

``GradWatch`` derives from the ``Callback`` class of every installed flavour (``lightning.pytorch`` and
``pytorch_lightning``), so the same object is a callback to either Trainer and passes both flavours' type checks
(including LightningCLI's); with neither installed, it is a plain class, which still watches plain PyTorch loops
(``watch.loop``). Nothing else in the package touches Lightning's classes: the callback reads only public, duck-typed
Trainer attributes.
"""

from __future__ import annotations

from lightning_utilities.core.imports import RequirementCache

__all__ = ["CALLBACK_BASES", "callback_bases"]

_LIGHTNING = RequirementCache("lightning>=2.1", "lightning.pytorch")
_PYTORCH_LIGHTNING = RequirementCache("pytorch_lightning>=2.1", "pytorch_lightning")


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
