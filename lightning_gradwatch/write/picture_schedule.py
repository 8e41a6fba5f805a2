"""Internal. Which histogram steps get gradient-flow pictures: the overhead budget's spacing and a short run's floor.

Pictures are offered at every histogram step and drawn on the worker thread. Without a budget, every offer is drawn.
Under one (:class:`~lightning_gradwatch.write.budget.OverheadBudget`):

- the first histogram step's pictures are drawn, and then every ``pictures_every`` steps, never while another is
  being drawn (the budget's own spacing, within its fraction of the training time);
- a run of known length also gets its floor: about :data:`~lightning_gradwatch.write.budget.MIN_PICTURES` sets
  spread over it, queued even while one is being drawn, as long as all of them take at most
  :data:`~lightning_gradwatch.write.budget.PICTURES_FLOOR_SECONDS` to draw. Until the first picture's drawing time
  is known, the steps on the floor's grid are held (their data taken then), and drawn once that time says how many
  of them the floor pays for;
- the last histogram step's pictures, when they were not drawn, are drawn at the end of the fit: the run's last
  state and its whole heat map.
"""

from __future__ import annotations

from collections.abc import Callable

from lightning_gradwatch.write.budget import OverheadBudget
from lightning_gradwatch.write.pictures import BackgroundDrawing

__all__ = ["Draw", "PictureSchedule"]

#: draws one step's pictures on the worker thread: ``{tag: png}``
Draw = Callable[[], dict[str, bytes]]


class PictureSchedule:
    """When one fit's pictures are handed to the drawing thread, per optimizer (``suffix``).

    Args:
        drawing: the worker thread.
        budget: the overhead budget (``None``: every offer is drawn).

    Example:
        >>> drawing = BackgroundDrawing()
        >>> schedule = PictureSchedule(drawing, budget=None)
        >>> schedule.offer("", tick=0, step=0, make=lambda: lambda: {"flow": b"png"})
        >>> schedule.finish(timeout=10.0)
        [(0, {'flow': b'png'})]
    """

    def __init__(self, drawing: BackgroundDrawing, budget: OverheadBudget | None) -> None:
        self.drawing = drawing
        self.budget = budget
        self._last: dict[str, int] = {}  # the tick of the last pictures handed over
        self._held: dict[str, list[tuple[int, int, Draw]]] = {}  # (tick, step, draw) on the floor's grid
        self._latest: dict[str, tuple[int, int, Callable[[], Draw | None]]] = {}  # the last offer not drawn

    def offer(self, suffix: str, tick: int, step: int, make: Callable[[], Draw | None]) -> None:
        """A histogram step's pictures: drawn now, held for the floor, or left out.

        ``make`` takes the step's data (called at once, or at the end of the fit for the last step's pictures) and
        returns what draws them (``None``: nothing to draw).
        """
        budget = self.budget
        if budget is not None:
            budget.take_drawn()
            self._release(suffix)
        if self._due(suffix, tick):
            self._submit(suffix, tick, step, make())
            return
        assert budget is not None
        budget.pictures_left_out += 1
        self._latest[suffix] = (tick, step, make)
        if self._on_floor(suffix, tick):
            draw = make()
            if draw is not None:
                self._held.setdefault(suffix, []).append((tick, step, draw))

    def finish(self, timeout: float) -> list[tuple[int, dict[str, bytes]]]:
        """Draw what is held and the last step's pictures (within ``timeout`` seconds), stop the worker, collect."""
        budget = self.budget
        if budget is not None and self._held:
            self.drawing.wait_idle(timeout)  # the first picture's time tells how many held ones the floor pays for
            budget.take_drawn()
            for suffix in list(self._held):
                self._release(suffix, final=True)
        for suffix, (tick, step, make) in list(self._latest.items()):  # the run's last state, its whole heat map
            if tick > self._last.get(suffix, -1):
                self._submit(suffix, tick, step, make())
                if budget is not None:
                    budget.pictures_left_out -= 1
        self._latest.clear()
        return self.drawing.close(timeout=timeout)

    # ------------------------------------------------------------------ deciding
    def _due(self, suffix: str, tick: int) -> bool:
        """The first offer; the floor's interval since the last pictures; or, when idle, the budget's interval."""
        budget, last = self.budget, self._last.get(suffix)
        if budget is None or last is None:
            return True
        if budget.picture_seconds is None and budget.floor_spread:  # the floor is not known yet: hold, see below
            return False
        floor = budget.floor_every
        if floor and tick - last >= floor:  # the floor's few pictures queue up even while one is drawn
            return True
        return self.drawing.idle and tick - last >= budget.pictures_every

    def _on_floor(self, suffix: str, tick: int) -> bool:
        """Whether to hold this offer: the picture time is not known yet, and ``tick`` is on the floor's grid."""
        budget = self.budget
        if budget is None or budget.picture_seconds is not None or not budget.floor_spread:
            return False
        held = self._held.get(suffix)
        since = held[-1][0] if held else self._last.get(suffix, 0)
        return tick - since >= budget.floor_spread

    def _release(self, suffix: str, final: bool = False) -> None:
        """Once the picture time is known: draw the held pictures the floor pays for; the others are left out."""
        held = self._held.get(suffix)
        budget = self.budget
        if not held or budget is None or (budget.picture_seconds is None and not final):
            return
        del self._held[suffix]
        floor = budget.floor_every
        for tick, step, draw in held:
            if floor and tick - self._last.get(suffix, 0) >= floor:
                self._submit(suffix, tick, step, draw)
                budget.pictures_left_out -= 1

    def _submit(self, suffix: str, tick: int, step: int, draw: Draw | None) -> None:
        self._last[suffix] = tick
        if self._latest.get(suffix, (tick + 1,))[0] <= tick:
            del self._latest[suffix]
        if draw is not None:
            self.drawing.submit(step, draw)
