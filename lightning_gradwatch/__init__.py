"""lightning-gradwatch: a gradient-health instrument for PyTorch Lightning.

``GradWatch`` is imported lazily, so ``lightning_gradwatch.cli`` and the pure modules load without Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_gradwatch._version import __version__
from lightning_gradwatch.alerts import GradientAlert, GradientAlertError, GradientWarning

__all__ = ["GradWatch", "GradientAlert", "GradientAlertError", "GradientWarning", "__version__"]

if TYPE_CHECKING:
    from lightning_gradwatch.callback import GradWatch


def __getattr__(name: str) -> Any:
    if name == "GradWatch":
        from lightning_gradwatch.callback import GradWatch

        return GradWatch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
