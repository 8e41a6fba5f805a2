"""Internal. Lightning's progress bar: the gradient norm and health word in it, and messages kept off its line.

The items are read at the bar's refresh, so they cost nothing per step.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from lightning_gradwatch.alerts import GradientWarning

__all__ = ["ProgressItems", "beside_progress_bars", "warn"]


class ProgressItems:
    """Adds ``grad_norm`` and ``grad_health`` to the progress bar's items while attached.

    Example:
        >>> items = ProgressItems()
        >>> items.update(0.123456, "exploding")
        >>> items.extend({"loss": "1.0"})
        {'loss': '1.0', 'grad_norm': '0.123', 'grad_health': 'exploding'}
    """

    def __init__(self) -> None:
        self.total_norm = math.nan
        self.health = "ok"
        self._bar: Any = None

    def update(self, total_norm: float, health: str) -> None:
        """The latest step's total norm and health."""
        self.total_norm = total_norm
        self.health = health

    def extend(self, items: dict[str, Any]) -> dict[str, Any]:
        """``items`` with the gradient items added."""
        items = dict(items)
        if math.isfinite(self.total_norm):
            items["grad_norm"] = f"{self.total_norm:.3g}"
        if self.health != "ok":
            items["grad_health"] = self.health
        return items

    def attach(self, trainer: Any) -> None:
        """Wrap the trainer's progress bar's ``get_metrics`` (an instance attribute, removed by :meth:`detach`)."""
        bar = getattr(trainer, "progress_bar_callback", None)
        original = getattr(bar, "get_metrics", None)
        if bar is None or not callable(original):
            return

        def get_metrics(trainer: Any, pl_module: Any) -> dict[str, Any]:
            return self.extend(original(trainer, pl_module))

        bar.get_metrics = get_metrics
        self._bar = bar

    def detach(self) -> None:
        """Give the progress bar back its own ``get_metrics``."""
        if self._bar is not None:
            self._bar.__dict__.pop("get_metrics", None)
            self._bar = None


@contextlib.contextmanager
def beside_progress_bars() -> Iterator[None]:
    """Clear the progress bars on the terminal while a message prints, and redraw them after it.

    Lightning's progress bar is a tqdm bar without a newline: a warning printed while it is shown would start in the
    middle of the bar's line. tqdm's external write mode clears every bar on the standard streams, so the message
    gets lines of its own. Without tqdm, nothing to do.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        yield
        return
    with tqdm.external_write_mode():
        yield


#: modules whose frames a warning skips to point at the line of the user's code that led to it
_LIBRARY_PREFIXES = ("lightning_gradwatch", "lightning", "pytorch_lightning", "torch", "contextlib")
#: modules that start a process or thread: reached first, there is no user code on the stack
_STARTERS = ("multiprocessing", "threading", "concurrent")


def warn(message: str) -> None:
    """Emit a :class:`GradientWarning` on its own lines beside the progress bars, pointing at the user's code.

    The warning's location is the first frame outside GradWatch, Lightning and torch: the ``loop.step(...)`` of a
    plain loop, the ``trainer.fit(...)`` of a Trainer run, instead of a line of GradWatch's own. In a process or
    thread Lightning started (``strategy="ddp_spawn"``), no user code is on the stack: the warning points at the
    GradWatch code that raised it (the hook that judged the step), not at ``multiprocessing/process.py``.
    """
    level, frame, user = 1, sys._getframe(1), False
    raiser = 0  # the level of the innermost GradWatch frame outside this module (0: none)
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        root = name.split(".")[0]
        if root in _STARTERS:  # a process or thread began here: no user code on this stack
            break
        if root not in _LIBRARY_PREFIXES:
            user = True
            break
        if not raiser and root == "lightning_gradwatch" and name != __name__:
            raiser = level
        level, frame = level + 1, frame.f_back
    if not user:
        level = raiser  # 0: this function's own line
    with beside_progress_bars():
        warnings.warn(message, GradientWarning, stacklevel=level + 1)
