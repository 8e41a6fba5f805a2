"""The sink protocol: one output of a run, and what it can show.

A sink says what it shows through capability attributes (``scalars``, ``histograms``, ``images``, ``text``,
``layout``, ``report``), not through its class: the run's :class:`~lightning_gradwatch.write.writers.Writers` hands
each write to the sinks that show it, and draws pictures only when some sink shows images. A write that raises one of
the sink's ``failures`` is reported once with :meth:`Sink.failure_message`, and that sink is left alone for the rest
of the run: a monitoring failure never ends training.

A new output (an MLflow artifact, a JSON-lines stream) is one subclass of :class:`BaseSink` in one file, which sets
its capabilities and implements the writes it shows (``write/tensorboard.py``, ``write/logger.py`` and
``write/report_file.py`` are the package's own).

Example:
    >>> class Lines(BaseSink):
    ...     name, scalars = "lines", True
    ...     def __init__(self):
    ...         self.lines = []
    ...     def write(self, step, scalars, histograms):
    ...         self.lines += [f"{step} {tag} {value}" for tag, value in scalars.items()]
    >>> sink = Lines()
    >>> sink.write(3, {"gradwatch/total_norm": 0.5}, {})
    >>> sink.lines, sink.images
    (['3 gradwatch/total_norm 0.5'], False)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from lightning_gradwatch.measure.records import LayerHistogram

__all__ = ["BaseSink", "Sink", "failure_message", "logger_name"]


class Sink(Protocol):
    """One output of a run: what it shows, how it writes, what a failed write raises.

    Attributes:
        name: what a failure message calls it.
        scalars: shows step scalars (:meth:`write`); ``histograms``: and their histograms.
        images: shows PNG images (:meth:`write_images`).
        text: shows alert text (:meth:`write_text`).
        layout: shows the custom-scalars layout (:meth:`write_layout`).
        report: keeps the run report, ``gradwatch.json`` (:meth:`write_report`).
        failures: the exceptions a failed write raises (any other one propagates).
    """

    name: str
    scalars: bool
    histograms: bool
    images: bool
    text: bool
    layout: bool
    report: bool
    failures: tuple[type[BaseException], ...]

    def write(self, step: int, scalars: Mapping[str, float], histograms: Mapping[str, LayerHistogram]) -> None:
        """A step's scalars and histograms."""
        ...

    def write_layout(self, layout: dict[str, Any]) -> None:
        """The custom-scalars layout (once, with the first step)."""
        ...

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        """PNG images of a step, by tag."""
        ...

    def write_text(self, tag: str, text: str, step: int) -> None:
        """A text entry (an alert) at a step."""
        ...

    def write_report(self, doc: Mapping[str, Any]) -> None:
        """The whole run report."""
        ...

    def flush(self) -> None:
        """Make what was written reach its destination."""
        ...

    def close(self) -> None:
        """Flush, and close what the sink opened itself."""
        ...

    def release(self) -> None:
        """After a failed write: leave its destination in a state its owner can go on with."""
        ...

    def failure_message(self, err: BaseException) -> str:
        """The warning that says a write failed and the sink stops."""
        ...


class BaseSink:
    """A sink that shows nothing and does nothing: subclasses set their capabilities and write what they show."""

    name: str = "sink"
    scalars: ClassVar[bool] = False
    histograms: ClassVar[bool] = False
    images: ClassVar[bool] = False
    text: ClassVar[bool] = False
    layout: ClassVar[bool] = False
    report: ClassVar[bool] = False
    failures: ClassVar[tuple[type[BaseException], ...]] = (Exception,)

    def write(self, step: int, scalars: Mapping[str, float], histograms: Mapping[str, LayerHistogram]) -> None:
        """A step's scalars and histograms (nothing, unless shown)."""

    def write_layout(self, layout: dict[str, Any]) -> None:
        """The custom-scalars layout (nothing, unless shown)."""

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        """PNG images (nothing, unless shown)."""

    def write_text(self, tag: str, text: str, step: int) -> None:
        """A text entry (nothing, unless shown)."""

    def write_report(self, doc: Mapping[str, Any]) -> None:
        """The run report (nothing, unless kept)."""

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self) -> None:
        """Flush; nothing else to close."""
        self.flush()

    def release(self) -> None:
        """Nothing to release."""

    def failure_message(self, err: BaseException) -> str:
        """The warning that says a write to this sink failed."""
        return failure_message(self.name, err)


def logger_name(logger: Any) -> str:
    """How a warning names a logger: its class and directory, or what it says it is (a plain loop's directory).

    Example:
        >>> from lightning_gradwatch.loop import TensorBoardDirectory
        >>> logger_name(TensorBoardDirectory("runs/x")), logger_name(object())
        ('the log directory runs/x', 'object')
    """
    said = getattr(logger, "description", None)
    if isinstance(said, str):
        return said
    try:
        where = getattr(logger, "log_dir", None)
    except Exception:  # a logger whose directory cannot be worked out is still named
        where = None
    name = type(logger).__name__
    return f"{name} at {os.fspath(where)}" if isinstance(where, (str, os.PathLike)) else name


def failure_message(name: str, err: BaseException) -> str:
    """The warning that says a write to the output ``name`` failed (or it could not be opened), and it stops."""
    return (
        f"GradWatch could not write to {name} ({type(err).__name__}: {err}); it stops writing there for this run."
        " Training, detection and responses continue."
    )
