"""Gradient-flow pictures as PNG bytes: a per-layer bar chart and a layer-by-step heatmap.

Matplotlib is optional (``pip install lightning-gradwatch[images]``); :func:`matplotlib_available` tells whether the
pictures can be drawn. Rendering uses the non-interactive Agg canvas and never touches pyplot's global state.
:class:`BackgroundDrawing` draws them on a worker thread, so a training step never waits for matplotlib.
"""

from __future__ import annotations

import functools
import io
import math
import threading
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

from lightning_gradwatch.kinds import Health, health_colours

__all__ = [
    "HEALTH_COLOURS",
    "PNG_SIGNATURE",
    "BackgroundDrawing",
    "gradient_flow_png",
    "gradient_heatmap_png",
    "matplotlib_available",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: each health word's colour in the gradient-flow picture, from the table of kinds
HEALTH_COLOURS: dict[Health, str] = health_colours()
# Matplotlib is not thread-safe (its text parser and font caches are shared): two GradWatch instances, each with its
# own drawing thread, once failed to parse a tick label while drawing at the same time. One picture at a time.
_DRAWING_LOCK = threading.Lock()
_NO_GRADIENT = "#9a9a9a"  # the name of a layer without a gradient at the step drawn


@functools.lru_cache(maxsize=1)
def matplotlib_available() -> bool:
    """Whether matplotlib (3.6 or newer) can be imported."""
    try:
        import matplotlib
    except ImportError:
        return False
    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return (major, minor) >= (3, 6)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _one_at_a_time(draw: Callable[..., bytes]) -> Callable[..., bytes]:
    @functools.wraps(draw)
    def serialized(*args: Any, **kwargs: Any) -> bytes:
        with _DRAWING_LOCK:
            return draw(*args, **kwargs)

    return serialized


def _labels(layers: Sequence[str]) -> list[str]:
    """Layer names as literal text: a ``$`` would otherwise start matplotlib's math mode."""
    return [name.replace("$", r"\$") for name in layers]


def _positive(values: Sequence[float]) -> list[float]:
    return [v if math.isfinite(v) and v > 0 else math.nan for v in values]


@_one_at_a_time
def gradient_flow_png(
    layers: Sequence[str],
    mean_abs: Sequence[float],
    max_abs: Sequence[float],
    health: Sequence[str],
    step: int,
    no_gradient: Collection[str] = (),
) -> bytes:
    """Bar chart of mean and max ``|gradient|`` per layer (log scale, forward order), unhealthy layers coloured.

    Args:
        layers: layer names in forward order.
        mean_abs: mean ``|g|`` per layer.
        max_abs: max ``|g|`` per layer.
        health: ``"ok"``, ``"vanishing"``, ``"exploding"`` or ``"non-finite"`` per layer.
        step: the optimizer step shown in the title.
        no_gradient: layers (of ``layers``) without a gradient at this step: they keep their place, with no bars and
            their names in grey.

    Example:
        >>> png = gradient_flow_png(["fc1", "fc2"], [1e-6, 1e-2], [1e-5, 1e-1], ["vanishing", "ok"], step=10)
        >>> png.startswith(PNG_SIGNATURE)
        True
    """
    n = len(layers)
    fig = _figure(max(6.0, min(0.35 * n + 2.5, 24.0)), 4.8)
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(n))
    colours = [HEALTH_COLOURS.get(h, HEALTH_COLOURS[Health.OK]) for h in health]
    ax.bar(xs, _positive(max_abs), color=colours, alpha=0.35, width=0.8)
    ax.bar(xs, _positive(mean_abs), color=colours, alpha=0.95, width=0.5)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(_labels(layers), rotation=90, fontsize=7 if n > 20 else 8)
    for label, name in zip(ax.get_xticklabels(), layers):
        if name in no_gradient:
            label.set_color(_NO_GRADIENT)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("|gradient| (log scale)")
    ax.set_title(f"Gradient flow at step {step} (layers in forward order)")
    ax.grid(axis="y", which="major", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [Patch(color="#777777", alpha=0.35), Patch(color="#777777", alpha=0.95)]
    labels = ["max |grad| (light)", "mean |grad| (dark)"]
    for name in Health:
        if name in health:
            handles.append(Patch(color=HEALTH_COLOURS[name]))
            labels.append(str(name))
    if any(name in no_gradient for name in layers):
        handles.append(Patch(color=_NO_GRADIENT))
        labels.append("no gradient at this step (grey name)")
    ax.legend(handles, labels, loc="upper left", fontsize=8)
    fig.tight_layout()
    return _png(fig)


@_one_at_a_time
def gradient_heatmap_png(
    layers: Sequence[str], steps: Sequence[int], norms: Sequence[Sequence[float]], step: int
) -> bytes:
    """Heatmap of ``log10(gradient norm)``: one row per layer (forward order), one column per logged step.

    Args:
        layers: layer names in forward order (rows).
        steps: the step of each column (on a long run, the first of the steps a column stands for).
        norms: ``norms[i][j]`` is layer ``i``'s gradient norm at ``steps[j]`` (``nan`` where absent: blank; ``0``,
            a zero gradient: black, as on the HTML page).
        step: the optimizer step shown in the title.

    Example:
        >>> png = gradient_heatmap_png(["fc1", "fc2"], [0, 10], [[1e-6, 1e-7], [0.1, 0.2]], step=10)
        >>> png.startswith(PNG_SIGNATURE)
        True
    """
    import numpy as np

    grid = np.array([[math.log10(v) if math.isfinite(v) and v > 0 else np.nan for v in row] for row in norms])
    n_layers = len(layers)
    fig = _figure(9.0, max(3.0, min(0.25 * n_layers + 1.8, 20.0)))
    ax = fig.add_subplot(1, 1, 1)
    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(
        np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest", cmap="viridis", vmin=vmin, vmax=vmax
    )
    _zeros_black(ax, norms, grid.shape)
    ax.set_yticks(range(n_layers))
    ax.set_yticklabels(_labels(layers), fontsize=7 if n_layers > 20 else 8)
    if steps:
        spacing, last = max(1, len(steps) // 8), len(steps) - 1
        # every eighth column and the last, without a label crowding the last one
        ticks = sorted({0, last, *(t for t in range(0, last, spacing) if last - t >= spacing / 2)})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(steps[t]) for t in ticks], fontsize=8)
    ax.set_xlabel("step")
    ax.set_title(f"log10 gradient norm per layer, up to step {step}")
    fig.colorbar(image, ax=ax, label="log10 |grad|")
    fig.tight_layout()
    return _png(fig)


def _zeros_black(ax: Any, norms: Sequence[Sequence[float]], shape: tuple[int, ...]) -> None:
    """Draw the cells of a gradient of exactly zero (dead units) black, not blank like a step without a gradient."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    zeros = np.array([[v == 0.0 for v in row] for row in norms], dtype=bool).reshape(shape)
    if zeros.any():
        black = np.ma.masked_where(~zeros, np.zeros(shape))
        ax.imshow(black, aspect="auto", interpolation="nearest", cmap=ListedColormap(["black"]), vmin=0.0, vmax=1.0)


class BackgroundDrawing:
    """Draws pictures on one worker thread; the finished ones are collected on the caller's thread.

    Drawing a picture takes matplotlib a fraction of a second to a few seconds (hundreds of layers), far longer
    than a training step. Here the training thread only hands over the data; the worker draws, and the caller picks
    up finished pictures (with their step) on a later step and writes them itself, so writing never leaves the
    training thread. Jobs are drawn one at a time, in order; should more than ``max_waiting`` pile up (pictures asked
    for faster than they can be drawn), the oldest waiting one is dropped and counted in :attr:`dropped`. The first
    failure stops the drawing and is kept in :attr:`error`.

    Example:
        >>> drawing = BackgroundDrawing()
        >>> drawing.submit(10, lambda: {"gradwatch/gradient_flow": b"png bytes"})
        >>> drawing.close(timeout=10.0)
        [(10, {'gradwatch/gradient_flow': b'png bytes'})]
    """

    def __init__(self, max_waiting: int = 8) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[tuple[int, Callable[[], dict[str, bytes]]]] = deque()
        self._max_waiting = max_waiting
        self._finished: list[tuple[int, dict[str, bytes]]] = []
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.error: BaseException | None = None

    @property
    def idle(self) -> bool:
        """Whether no picture is being drawn or waits to be."""
        return not self._waiting and not self._busy

    @property
    def ready(self) -> bool:
        """Whether finished pictures (or an error) wait to be collected: a cheap check for every step."""
        return bool(self._finished) or self.error is not None

    def submit(self, step: int, draw: Callable[[], dict[str, bytes]]) -> None:
        """Queue ``draw`` (returning ``{tag: png}``) for the pictures of ``step``; never blocks."""
        with self._cond:
            if self._closed or self.error is not None:
                return
            if len(self._waiting) >= self._max_waiting:
                self._waiting.popleft()
                self.dropped += 1
            self._waiting.append((step, draw))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="gradwatch-pictures", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until nothing is being drawn or waits to be; whether that came."""
        with self._cond:
            return self._cond.wait_for(lambda: self.idle or self.error is not None, timeout)

    def collect(self) -> list[tuple[int, dict[str, bytes]]]:
        """The pictures finished since the last call, as ``(step, {tag: png})`` in step order."""
        with self._cond:
            finished, self._finished = self._finished, []
        return finished

    def close(self, timeout: float) -> list[tuple[int, dict[str, bytes]]]:
        """Finish the waiting and running jobs (for at most ``timeout`` seconds), stop the worker, collect."""
        with self._cond:
            self._cond.wait_for(lambda: (not self._waiting and not self._busy) or self.error is not None, timeout)
            self._closed = True
            self.dropped += len(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        return self.collect()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._waiting) or self._closed)
                if not self._waiting:
                    return
                step, draw = self._waiting.popleft()
                self._busy = True
            try:
                images = draw()
            except Exception as err:  # reported on the caller's thread
                with self._cond:
                    self.error = err
                    self._busy = False
                    self._cond.notify_all()
                return
            with self._cond:
                self._finished.append((step, images))
                self._busy = False
                self._cond.notify_all()
