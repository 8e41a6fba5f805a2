"""All of one run's sinks: each write goes to the sinks that show it, and a failed sink is reported once and left.

Loggers are duck-typed: a logger whose ``experiment`` is a ``torch.utils.tensorboard.SummaryWriter`` gets a
:class:`~lightning_gradwatch.write.tensorboard.TensorBoardSink` (all of a step's values in ONE ``Summary`` event); any
other logger a :class:`~lightning_gradwatch.write.logger.LoggerSink` (``log_metrics(metrics, step)``); a log
directory the :class:`~lightning_gradwatch.write.report_file.ReportFile`. More sinks (any
:class:`~lightning_gradwatch.write.sinks.Sink`) may be given as they are. A writer that fails (unwritable directory,
full disk) is reported once and then left alone, so a monitoring problem never ends a training run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from lightning_gradwatch._names import ALERTS_TAG, HISTOGRAM_PREFIX, LAYER_SCALARS, TOTAL_NORM
from lightning_gradwatch.alerts import GradientAlert
from lightning_gradwatch.measure.records import LayerHistogram
from lightning_gradwatch.write.content import (
    alert_text,
    custom_scalars_layout,
    histogram_tags,
    png_size,
    step_scalars,
)
from lightning_gradwatch.write.logger import LoggerSink
from lightning_gradwatch.write.progress import warn
from lightning_gradwatch.write.report_file import ReportFile
from lightning_gradwatch.write.sinks import Sink, failure_message, logger_name
from lightning_gradwatch.write.tensorboard import tensorboard_experiment, tensorboard_sink

__all__ = [
    "ALERTS_TAG",
    "HISTOGRAM_PREFIX",
    "LAYER_SCALARS",
    "TOTAL_NORM",
    "Writers",
    "alert_text",
    "custom_scalars_layout",
    "histogram_tags",
    "png_size",
    "sink_for",
    "step_scalars",
]


def sink_for(logger: Any, namespace: str = "") -> Sink:
    """The sink of a Lightning logger: TensorBoard's own event file when it has one, else its ``log_metrics``."""
    experiment = tensorboard_experiment(logger)
    sink = tensorboard_sink(experiment, namespace, logger_name(logger)) if experiment is not None else None
    return sink or LoggerSink(logger, namespace)


class Writers:
    """All output sinks of one run. Only global rank 0 builds one.

    A TensorBoard logger is written through its own ``SummaryWriter`` (one event file per run directory: TensorBoard
    polls only the newest file of a live run). A write that fails (a full disk) is reported once and that sink is
    left alone for the rest of the run.

    Args:
        loggers: the trainer's loggers, in order.
        namespace: for a second GradWatch in one Trainer: its TensorBoard output goes to the ``namespace``
            subdirectory of each TensorBoard logger's directory, and its scalars to other loggers are prefixed with
            ``namespace/``. ``""``: none.
        report_dir: where ``gradwatch.json`` goes (``None``: no report).
        sinks: more sinks, written like the loggers'.
    """

    def __init__(
        self,
        loggers: Iterable[Any],
        namespace: str = "",
        report_dir: str | os.PathLike[str] | None = None,
        sinks: Iterable[Sink] = (),
    ) -> None:
        self._sinks: list[Sink] = []
        self._failed: set[int] = set()
        self._loggers = 0  # the loggers and given sinks written to (also loggers whose sink could not be made)
        self._layout_written = False
        for logger in loggers:
            if type(logger).__name__ == "DummyLogger":  # fast_dev_run's stand-in: writes nothing
                continue
            self._loggers += 1
            try:
                sink = sink_for(logger, namespace)
            except Exception as err:  # an unwritable directory: reported like any failed write
                warn(failure_message(logger_name(logger), err))
                continue
            self._sinks.append(sink)
        for sink in sinks:
            self._loggers += sink.scalars
            self._sinks.append(sink)
        if report_dir is not None:
            self._sinks.append(ReportFile(report_dir))

    def __bool__(self) -> bool:
        """Whether steps are written anywhere: a logger, or a given sink of scalars (the report does not count)."""
        return self._loggers > 0

    def _live(self, capability: str) -> list[tuple[int, Sink]]:
        return [(i, s) for i, s in enumerate(self._sinks) if i not in self._failed and getattr(s, capability)]

    def _each(self, capability: str, method: str, *args: Any) -> None:
        """Call ``method`` on every live sink that has ``capability``; a failure stops that sink."""
        for i, sink in self._live(capability):
            try:
                getattr(sink, method)(*args)
            except sink.failures as err:  # a monitoring failure must not end training
                self._fail(i, err)

    def _fail(self, i: int, err: BaseException) -> None:
        self._failed.add(i)
        sink = self._sinks[i]
        sink.release()
        warn(sink.failure_message(err))

    def write_step(self, step: int, scalars: Mapping[str, float], histograms: Mapping[str, LayerHistogram]) -> None:
        """Write a step's scalars and histograms (the layout goes out with the first write)."""
        if not self._layout_written:
            self._layout_written = True
            self._each("layout", "write_layout", custom_scalars_layout())
        self._each("scalars", "write", step, {k: float(v) for k, v in scalars.items()}, histograms)

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        """Write PNG images (TensorBoard's Images tab)."""
        self._each("images", "write_images", step, images)

    @property
    def wants_images(self) -> bool:
        """Whether any sink shows images (so they are worth drawing)."""
        return bool(self._live("images"))

    @property
    def reports(self) -> bool:
        """Whether any sink keeps the run report."""
        return bool(self._live("report"))

    def write_alert(self, alert: GradientAlert) -> None:
        """Write an alert as a ``gradwatch/alerts`` text entry at its step.

        The entry is the alert as Markdown (what TensorBoard's Text tab shows), followed by its plain values (every
        layer, the optimizer index) as JSON on one line in a fenced block, which ``gradwatch check`` reads back.
        """
        self._each("text", "write_text", ALERTS_TAG, alert_text(alert), alert.step)

    def write_report(self, doc: Mapping[str, Any]) -> None:
        """Write the run report (``gradwatch.json``)."""
        self._each("report", "write_report", doc)

    def flush(self) -> None:
        """Flush every sink (event files reach the disk)."""
        for i, sink in enumerate(self._sinks):
            if i not in self._failed:
                self._call(i, sink, "flush")

    def close(self) -> None:
        """Flush every sink and close the event files GradWatch opened itself (a second instance's)."""
        for i, sink in enumerate(self._sinks):
            if i not in self._failed:
                self._call(i, sink, "close")

    def _call(self, i: int, sink: Sink, method: str) -> None:
        try:
            getattr(sink, method)()
        except sink.failures as err:
            self._fail(i, err)
