"""Internal. One worker thread that runs jobs in order; their results are collected on the training thread.

GradWatch keeps two: one draws the gradient-flow pictures (a fraction of a second to seconds each), one bins
histograms (milliseconds). Neither ever writes: results come back to the training thread, which writes them at a
later step, so an event file is only ever touched from one thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["Worker"]

_SKIPPED = object()  # the result of a job that was dropped or failed


class Worker:
    """Runs ``job()`` calls on one daemon thread; results are collected with their step, in submission order.

    At most ``max_waiting`` jobs wait. When one more comes, ``overflow="drop"`` drops the oldest waiting job (counted
    in :attr:`dropped`); ``overflow="help"`` has the caller run the oldest waiting job itself, so nothing is lost and
    the caller never waits on a worker that is starved of CPU (by another thread holding the interpreter), only
    does one job's work. The first failure stops the worker and is kept in :attr:`error`, to be reported on the
    caller's thread.

    Example:
        >>> worker = Worker("example")
        >>> worker.submit(3, lambda: "done")
        >>> worker.close(timeout=10.0)
        [(3, 'done')]
    """

    def __init__(self, name: str, max_waiting: int = 8, overflow: Literal["drop", "help"] = "drop") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._waiting: deque[tuple[int, int, Callable[[], Any]]] = deque()  # (sequence number, step, job)
        self._max_waiting = max_waiting
        self._overflow = overflow
        self._done: dict[int, tuple[int, Any]] = {}  # by sequence number, until collected in order
        self._submitted = 0
        self._collected = 0
        self._running = 0  # jobs running, on the worker or on a helping caller
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.error: BaseException | None = None

    @property
    def idle(self) -> bool:
        """Whether no job runs or waits."""
        return not self._waiting and not self._running

    @property
    def ready(self) -> bool:
        """Whether the next result in order (or an error) waits to be collected: a cheap check for every step."""
        return self._collected in self._done or self.error is not None

    def submit(self, step: int, job: Callable[[], Any]) -> None:
        """Queue ``job`` for ``step``; when full, drop the oldest waiting job or run it here (see ``overflow``)."""
        helped = None
        with self._cond:
            if self._closed or self.error is not None:
                return
            if len(self._waiting) >= self._max_waiting:
                oldest = self._waiting.popleft()
                if self._overflow == "drop":
                    self._done[oldest[0]] = (oldest[1], _SKIPPED)
                    self.dropped += 1
                else:
                    helped = oldest
                    self._running += 1
            self._waiting.append((self._submitted, step, job))
            self._submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        if helped is not None:
            self._run(*helped)

    def collect(self) -> list[tuple[int, Any]]:
        """The results finished since the last call, as ``(step, result)`` in submission order."""
        out = []
        with self._cond:
            while self._collected in self._done:
                step, result = self._done.pop(self._collected)
                self._collected += 1
                if result is not _SKIPPED:
                    out.append((step, result))
        return out

    def close(self, timeout: float) -> list[tuple[int, Any]]:
        """Finish the waiting and running jobs (for at most ``timeout`` seconds), stop the worker, collect."""
        with self._cond:
            self._cond.wait_for(lambda: (not self._waiting and not self._running) or self.error is not None, timeout)
            self._closed = True
            self.dropped += len(self._waiting)
            for seq, step, _ in self._waiting:
                self._done[seq] = (step, _SKIPPED)
            self._waiting.clear()
            self._cond.notify_all()
        return self.collect()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._waiting) or self._closed or self.error is not None)
                if not self._waiting or self.error is not None:
                    return
                seq, step, job = self._waiting.popleft()
                self._running += 1
            if not self._run(seq, step, job):
                return

    def _run(self, seq: int, step: int, job: Callable[[], Any]) -> bool:
        """Run one job and keep its result (or its error, which stops the worker); whether it succeeded."""
        try:
            result, err = job(), None
        except Exception as caught:  # reported on the caller's thread
            result, err = _SKIPPED, caught
        with self._cond:
            self._done[seq] = (step, result)
            self.error = self.error or err
            self._running -= 1
            self._cond.notify_all()
        return err is None
