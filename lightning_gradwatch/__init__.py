"""lightning-gradwatch: a gradient-health instrument for PyTorch Lightning.

``GradWatch`` (and ``WatchedLoop``, the loop ``watch.loop(model)`` watches) are imported lazily, so
``lightning_gradwatch.cli`` and the pure modules load without Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_gradwatch._version import __version__
from lightning_gradwatch.alerts import GradientAlert, GradientAlertError, GradientWarning

__all__ = ["GradWatch", "GradientAlert", "GradientAlertError", "GradientWarning", "WatchedLoop", "__version__"]

if TYPE_CHECKING:
    from lightning_gradwatch.callback import GradWatch
    from lightning_gradwatch.loop import WatchedLoop


def __getattr__(name: str) -> Any:
    if name == "GradWatch":
        from lightning_gradwatch.callback import GradWatch

        return GradWatch
    if name == "WatchedLoop":
        from lightning_gradwatch.loop import WatchedLoop

        return WatchedLoop
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
