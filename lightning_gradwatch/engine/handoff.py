"""Internal. Alerts handed back from Lightning's spawned (or forked) workers to the ``GradWatch`` that launched them.

Under ``strategy="ddp_spawn"`` (and ``ddp_fork``, ``ddp_notebook``) the fit runs in child processes, each with its
own copy of the callback; Lightning sends back the weights and ``callback_metrics``, not callbacks, so the
``GradWatch`` object the user holds would keep no alerts. :class:`Handoff` closes that gap through one small file:
its path is drawn when the callback is made, local rank 0 of the workers writes the alerts there at the end of the
fit (atomically, by rename), and the launching process reads and removes it the first time it asks for its alerts.

Only a process other than the one that made the callback writes, and only under Lightning's multiprocessing launcher;
every rank decides alike (the statistics are reduced before anything judges them), so rank 0's alerts are every
rank's. A run of ``strategy="ddp"`` starts each rank as a new process running the user's script, which makes its own
callback: nothing is handed off, and nothing needs to be.

Example:
    >>> handoff = Handoff()
    >>> handoff.receive() is None  # nothing was handed back
    True
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from typing import Any

from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.write.progress import warn

__all__ = ["Handoff"]

_LAUNCHER = "_MultiProcessingLauncher"  # Lightning's launcher for spawn, fork and notebook DDP


class Handoff:
    """A file through which spawned workers hand their alerts back to the launching process."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        name = f"gradwatch-alerts-{self.owner}-{uuid.uuid4().hex}.json"
        self.path = os.path.join(tempfile.gettempdir(), name)

    def send(self, trainer: Any, alerts: list[GradientAlert]) -> None:
        """In a worker of Lightning's multiprocessing launcher (local rank 0): write ``alerts`` for the launcher."""
        launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
        if os.getpid() == self.owner or type(launcher).__name__ != _LAUNCHER:
            return
        if int(getattr(trainer, "local_rank", 0)) != 0:
            return
        partial = f"{self.path}.{os.getpid()}"
        try:
            with open(partial, "w") as f:
                json.dump([alert.to_dict() for alert in alerts], f)
            os.replace(partial, self.path)
        except OSError as error:  # an unwritable temporary directory: the alerts stay in gradwatch.json
            warn(
                f"GradWatch could not hand its alerts back to the process that launched the workers ({error}):"
                " `watch.alerts` there stays empty; gradwatch.json holds them."
            )

    def receive(self) -> list[GradientAlert] | None:
        """In the launching process: the alerts its workers handed back (once), or ``None``."""
        if os.getpid() != self.owner or not os.path.exists(self.path):
            return None
        try:
            with open(self.path) as f:
                data = json.load(f)
            os.remove(self.path)
        except (OSError, ValueError):
            return None
        return [GradientAlert.from_dict(a) for a in data]
