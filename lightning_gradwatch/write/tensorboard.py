"""TensorBoard: scalars, histograms, the custom-scalars layout, alert text and images, through one SummaryWriter.

The writer is the logger's own (or, for a second GradWatch, one of its own in a subdirectory of the run).
A logger whose ``experiment`` is a ``torch.utils.tensorboard.SummaryWriter`` gets the fast path: all of a step's
values in ONE ``Summary`` event through its event file (histograms included), where one ``add_scalar`` per value
would cost ten times as much.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lightning_gradwatch.measure.records import LayerHistogram
from lightning_gradwatch.write.content import png_size
from lightning_gradwatch.write.sinks import BaseSink

__all__ = ["TensorBoardSink", "is_tensorboard_writer", "tensorboard_experiment", "tensorboard_sink"]


class TensorBoardSink(BaseSink):
    """Writes through a ``SummaryWriter``'s own event file: one ``Summary`` event per step.

    Args:
        writer: the ``SummaryWriter``.
        owned: GradWatch opened it (a second instance's run): closing the sink closes it.
        name: what a failure message calls it (the logger's class).
    """

    scalars = histograms = images = text = layout = True

    def __init__(self, writer: Any, owned: bool = False, name: str = "TensorBoardLogger") -> None:
        from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary, SummaryMetadata

        self.name = name
        self._writer = writer
        self._summary_metadata = SummaryMetadata
        self._owned = owned
        self._summary = Summary
        self._histogram = HistogramProto
        self._fast = type(writer).__module__.startswith("torch.utils.tensorboard") and hasattr(
            writer, "_get_file_writer"
        )
        if self._fast:
            quiet_writer_thread(writer)

    @override
    def write(self, step: int, scalars: Mapping[str, float], histograms: Mapping[str, LayerHistogram]) -> None:
        if not self._fast:
            for tag, value in scalars.items():
                self._writer.add_scalar(tag, value, step)
            for tag, h in histograms.items():
                self._writer.add_histogram_raw(
                    tag, h.min, h.max, h.num, h.sum, h.sum_squares, list(h.bucket_limits), list(h.bucket_counts), step
                )
            return
        values = [self._summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        for tag, h in histograms.items():
            proto = self._histogram(
                min=h.min,
                max=h.max,
                num=h.num,
                sum=h.sum,
                sum_squares=h.sum_squares,
                bucket_limit=list(h.bucket_limits),
                bucket=list(h.bucket_counts),
            )
            values.append(self._summary.Value(tag=tag, histo=proto))
        if values:
            self._writer._get_file_writer().add_summary(self._summary(value=values), step)

    @override
    def write_layout(self, layout: dict[str, Any]) -> None:
        self._writer.add_custom_scalars(layout)

    @override
    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        values = []
        for tag, png in images.items():
            width, height = png_size(png)
            image = self._summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
            values.append(self._summary.Value(tag=tag, image=image))
        if values:
            self._writer._get_file_writer().add_summary(self._summary(value=values), step)

    @override
    def write_text(self, tag: str, text: str, step: int) -> None:
        if not self._fast:
            self._writer.add_text(tag, text, step)
            return
        # the tag exactly as given (``add_text`` would append ``/text_summary``), shown by the Text plugin
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

        plugin = self._summary_metadata.PluginData(plugin_name="text", content=TextPluginData().SerializeToString())
        tensor = TensorProto(
            dtype="DT_STRING",
            string_val=[text.encode("utf-8")],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        value = self._summary.Value(tag=tag, metadata=self._summary_metadata(plugin_data=plugin), tensor=tensor)
        self._writer._get_file_writer().add_summary(self._summary(value=[value]), step)

    @override
    def flush(self) -> None:
        self._writer.flush()

    @override
    def close(self) -> None:
        self._writer.flush()
        if self._owned:
            self._writer.close()

    @override
    def release(self) -> None:
        """After a failed write, leave the logger a writer that works: its failed event file is closed and dropped.

        A failed write is remembered by the event file's writer and raised again at its next write or flush, which
        may be the logger's own. torch's ``SummaryWriter`` opens a new event file when its file writer is gone (as
        after ``close()``), so the logger's next write starts a fresh file instead of inheriting GradWatch's error.
        """
        if self._owned or not hasattr(self._writer, "all_writers"):
            return
        for file_writer in list((self._writer.all_writers or {}).values()):
            with contextlib.suppress(Exception):  # the failure itself, raised again: the file is given up anyway
                file_writer.close()
        self._writer.file_writer = self._writer.all_writers = None


def tensorboard_sink(experiment: Any, namespace: str, name: str = "TensorBoardLogger") -> TensorBoardSink:
    """A sink writing through the logger's own ``SummaryWriter``, or, for a second GradWatch, its own run.

    The first GradWatch shares the logger's event file: TensorBoard polls only the newest event file of a run
    directory while a run is live, so a second file in the same directory would freeze one set of charts. A second
    GradWatch writes its own run, in the ``namespace`` subdirectory.
    """
    get_logdir = getattr(experiment, "get_logdir", None)
    if (
        not namespace
        or not type(experiment).__module__.startswith("torch.utils.tensorboard")
        or not callable(get_logdir)
    ):
        return TensorBoardSink(experiment, name=name)
    from torch.utils.tensorboard import SummaryWriter

    return TensorBoardSink(SummaryWriter(log_dir=os.path.join(get_logdir(), namespace)), owned=True, name=name)


class _QuietRecords:
    """An event file's record writer whose failures (a full disk) its writer thread keeps instead of dying loudly.

    TensorBoard's writer thread re-raises a failed write after storing it, so Python prints its traceback; the
    stored error is raised again at the next write on the training thread, where the sink reports it once. Kept
    this way, the thread stores the error and goes on, writing nothing more to that file, and the one warning is
    all a full disk shows.
    """

    def __init__(self, records: Any, thread: Any) -> None:
        self._records = records
        self._thread = thread

    def _guarded(self, call: Any, *args: Any) -> None:
        if getattr(self._thread, "exception", None) is not None:
            return  # nothing after a failed write: the file ends where it failed, as a killed run's does
        try:
            call(*args)
        except OSError as err:
            self._thread.exception = err

    def write(self, data: bytes) -> None:
        self._guarded(self._records.write, data)

    def flush(self) -> None:
        self._guarded(self._records.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


def quiet_writer_thread(writer: Any) -> None:
    """Have the writer thread of ``writer``'s event file keep a failed write for the training thread.

    See :class:`_QuietRecords`; a writer built otherwise is left as it is.
    """
    try:
        thread = writer._get_file_writer().event_writer._async_writer._worker
        records = thread._record_writer
    except AttributeError:
        return
    if not isinstance(records, _QuietRecords) and hasattr(thread, "exception"):
        thread._record_writer = _QuietRecords(records, thread)


def is_tensorboard_writer(experiment: Any) -> bool:
    """Whether ``experiment``'s class has a ``SummaryWriter``'s methods.

    An object that answers every attribute, such as Lightning's ``DummyExperiment`` under ``fast_dev_run``, does not.
    """
    methods = ("add_custom_scalars", "add_text", "flush", "add_histogram_raw")
    return all(callable(getattr(type(experiment), attr, None)) for attr in methods)


def tensorboard_experiment(logger: Any) -> Any:
    """The logger's ``SummaryWriter`` when it writes TensorBoard event files, else ``None``."""
    try:
        experiment = getattr(logger, "experiment", None)
    except Exception:
        return None
    return experiment if experiment is not None and is_tensorboard_writer(experiment) else None
