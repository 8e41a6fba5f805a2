"""Output: TensorBoard (scalars, histograms, custom-scalars layout, text) and scalars to any other logger.

Loggers are duck-typed: a logger whose ``experiment`` is a ``torch.utils.tensorboard.SummaryWriter`` gets the fast
path (all of a step's values in ONE ``Summary`` event, histograms included); any other logger gets
``log_metrics(metrics, step)``. A writer that fails (unwritable directory, full disk) is reported once and then
left alone, so a monitoring problem never ends a training run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightning_gradwatch import _names as names
from lightning_gradwatch._names import ALERT_DATA_FENCE, ALERTS_TAG, HISTOGRAM_PREFIX, LAYER_SCALARS, TOTAL_NORM
from lightning_gradwatch._progress import beside_progress_bars
from lightning_gradwatch.alerts import GradientAlert, GradientWarning, alert_markdown
from lightning_gradwatch.measure.records import LayerHistogram, StepStats

__all__ = [
    "ALERTS_TAG",
    "HISTOGRAM_PREFIX",
    "LAYER_SCALARS",
    "TOTAL_NORM",
    "Writers",
    "custom_scalars_layout",
    "histogram_tags",
    "png_size",
    "step_scalars",
]


def step_scalars(stats: StepStats, suffix: str = "") -> dict[str, float]:
    """The scalars of one step as ``{tag: value}``: per-layer families plus run-level ``gradwatch/...`` values.

    ``grad_norm_log10/<layer>`` is ``log10`` of the layer's gradient norm, for the layers whose norm is positive and
    finite (TensorBoard's linear axes show a norm of 1e-8 beside one of 1 as a flat line at 0).

    ``suffix`` (such as ``"/optimizer_1"``) tells apart the run-level values of several optimizers.

    Example:
        >>> from lightning_gradwatch.measure.records import StepStats
        >>> s = StepStats(("fc",), (0.5,), 0.5, (10,), (0,), (2.0,), (0.1,), (0.0,))
        >>> out = step_scalars(s)
        >>> sorted(out)  # doctest: +NORMALIZE_WHITESPACE
        ['grad_max_abs/fc', 'grad_norm/fc', 'grad_norm_log10/fc', 'grad_to_weight/fc', 'grad_zero_fraction/fc',
         'gradwatch/nonfinite_values', 'gradwatch/total_norm', 'param_norm/fc']
        >>> round(out['grad_norm_log10/fc'], 4)
        -0.301
    """
    out: dict[str, float] = {}
    values_of: list[Sequence[float] | None] = [
        stats.grad_norm,
        stats.grad_to_weight,
        stats.param_norm,
        stats.max_abs,
        stats.zero_fraction,
    ]
    for family, values in zip(LAYER_SCALARS, values_of):
        for layer, value in zip(stats.layers, values or ()):
            out[names.layer_tag(family, layer)] = value
    for layer, norm in zip(stats.layers, stats.grad_norm):
        if 0 < norm < math.inf:
            out[names.layer_tag(names.GRAD_NORM_LOG10, layer)] = math.log10(norm)
    out[names.run_tag(TOTAL_NORM, suffix)] = stats.total_norm
    out[names.run_tag(names.NONFINITE_VALUES, suffix)] = float(sum(stats.nonfinite_count))
    for layer, count in zip(stats.layers, stats.nonfinite_count):
        if count:
            out[names.layer_tag(names.GRAD_NONFINITE, layer)] = float(count)
    return out


def custom_scalars_layout() -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: one multi-line chart per per-layer metric, one for the run's norms.

    Example:
        >>> layout = custom_scalars_layout()
        >>> layout["gradwatch: per layer"]["gradient L2 norm"]
        ['Multiline', ['grad_norm/.*']]
    """
    return {
        "gradwatch: per layer": {
            "gradient L2 norm": ["Multiline", ["grad_norm/.*"]],
            "log10 gradient L2 norm": ["Multiline", ["grad_norm_log10/.*"]],
            "gradient-to-weight ratio": ["Multiline", ["grad_to_weight/.*"]],
            "parameter L2 norm": ["Multiline", ["param_norm/.*"]],
            "max |gradient|": ["Multiline", ["grad_max_abs/.*"]],
            "fraction of zero gradients": ["Multiline", ["grad_zero_fraction/.*"]],
        },
        "gradwatch: run": {
            "total gradient norm": [
                "Multiline",
                ["gradwatch/total_norm.*", "gradwatch/clipped_norm.*", "gradwatch/clip_threshold.*"],
            ],
            "events": ["Multiline", ["gradwatch/.*_steps.*", "gradwatch/nonfinite_values.*"]],
        },
    }


class _TensorBoardSink:
    """Writes through a ``SummaryWriter``'s own event file: one ``Summary`` event per step."""

    def __init__(self, writer: Any, owned: bool = False) -> None:
        from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary, SummaryMetadata

        self._writer = writer
        self._summary_metadata = SummaryMetadata
        self._owned = owned
        self._summary = Summary
        self._histogram = HistogramProto
        self._fast = type(writer).__module__.startswith("torch.utils.tensorboard") and hasattr(
            writer, "_get_file_writer"
        )

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

    def write_layout(self, layout: dict[str, Any]) -> None:
        self._writer.add_custom_scalars(layout)

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        values = []
        for tag, png in images.items():
            width, height = png_size(png)
            image = self._summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
            values.append(self._summary.Value(tag=tag, image=image))
        if values:
            self._writer._get_file_writer().add_summary(self._summary(value=values), step)

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

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.flush()
        if self._owned:
            self._writer.close()

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


class _LoggerSink:
    """Scalars through ``logger.log_metrics``; text and histograms are TensorBoard-only."""

    def __init__(self, logger: Any, namespace: str = "") -> None:
        self._logger = logger
        self._prefix = f"{namespace}/" if namespace else ""

    def write(self, step: int, scalars: Mapping[str, float], histograms: Mapping[str, LayerHistogram]) -> None:
        if scalars:
            self._logger.log_metrics({self._prefix + k: v for k, v in scalars.items()}, step=step)

    def write_layout(self, layout: dict[str, Any]) -> None:
        pass

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        pass

    def write_text(self, tag: str, text: str, step: int) -> None:
        pass

    def flush(self) -> None:
        save = getattr(self._logger, "save", None)
        if callable(save):
            save()

    def close(self) -> None:
        self.flush()


def _tensorboard_sink(experiment: Any, namespace: str) -> _TensorBoardSink:
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
        return _TensorBoardSink(experiment)
    from torch.utils.tensorboard import SummaryWriter

    return _TensorBoardSink(SummaryWriter(log_dir=os.path.join(get_logdir(), namespace)), owned=True)


def _is_tensorboard_writer(experiment: Any) -> bool:
    """Whether ``experiment``'s class has a ``SummaryWriter``'s methods.

    An object that answers every attribute, such as Lightning's ``DummyExperiment`` under ``fast_dev_run``, does not.
    """
    methods = ("add_custom_scalars", "add_text", "flush", "add_histogram_raw")
    return all(callable(getattr(type(experiment), attr, None)) for attr in methods)


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
    """

    def __init__(self, loggers: Iterable[Any], namespace: str = "") -> None:
        self._sinks: list[Any] = []
        self._names: list[str] = []
        self._failed: set[int] = set()
        self._layout_written = False
        for logger in loggers:
            if type(logger).__name__ == "DummyLogger":  # fast_dev_run's stand-in: writes nothing
                continue
            experiment = _tensorboard_experiment(logger)
            self._names.append(type(logger).__name__)
            try:
                sink = _tensorboard_sink(experiment, namespace) if experiment is not None else None
                sink = sink or _LoggerSink(logger, namespace)
            except Exception as err:  # an unwritable directory: reported like any failed write
                self._sinks.append(None)
                self._fail(len(self._sinks) - 1, err)
                continue
            self._sinks.append(sink)

    def __bool__(self) -> bool:
        return bool(self._sinks)

    def _each(self, method: str, *args: Any) -> None:
        for i, sink in enumerate(self._sinks):
            if i in self._failed:
                continue
            try:
                getattr(sink, method)(*args)
            except Exception as err:  # a monitoring failure must not end training
                self._fail(i, err)

    def _fail(self, i: int, err: BaseException) -> None:
        self._failed.add(i)
        release = getattr(self._sinks[i], "release", None)
        if callable(release):
            release()
        with beside_progress_bars():
            warnings.warn(
                f"GradWatch could not write to {self._names[i]} ({type(err).__name__}: {err}); it stops writing"
                " there for this run. Training, detection and responses continue.",
                GradientWarning,
                stacklevel=4,
            )

    def write_step(self, step: int, scalars: Mapping[str, float], histograms: Mapping[str, LayerHistogram]) -> None:
        """Write a step's scalars and histograms (the layout goes out with the first write)."""
        if not self._layout_written:
            self._layout_written = True
            self._each("write_layout", custom_scalars_layout())
        self._each("write", step, {k: float(v) for k, v in scalars.items()}, histograms)

    def write_images(self, step: int, images: Mapping[str, bytes]) -> None:
        """Write PNG images (TensorBoard's Images tab)."""
        self._each("write_images", step, images)

    @property
    def wants_images(self) -> bool:
        """Whether any sink shows images (so they are worth drawing)."""
        return any(isinstance(sink, _TensorBoardSink) for i, sink in enumerate(self._sinks) if i not in self._failed)

    def write_alert(self, alert: GradientAlert) -> None:
        """Write an alert as a ``gradwatch/alerts`` text entry at its step.

        The entry is the alert as Markdown (what TensorBoard's Text tab shows), followed by its plain values (every
        layer, the optimizer index) as JSON on one line in a fenced block, which ``gradwatch check`` reads back.
        """
        self._each("write_text", ALERTS_TAG, alert_text(alert), alert.step)

    def flush(self) -> None:
        """Flush every sink (event files reach the disk)."""
        self._each("flush")

    def close(self) -> None:
        """Flush every sink and close the event files GradWatch opened itself (a second instance's)."""
        self._each("close")


def alert_text(alert: GradientAlert) -> str:
    """An alert's Text entry: its Markdown, then its values as JSON on one line in a fenced block.

    ``gradwatch check`` reads the block back; non-finite numbers are written as strings (``"inf"``, ``"nan"``).

    Example:
        >>> alert = GradientAlert("exploding", 7, ("fc1",), float("inf"), 9.0, "Exploding.", optimizer=1)
        >>> text = alert_text(alert)
        >>> text.startswith("**exploding** at step 7"), text.splitlines()[-3:-1]
        (True, ['```json', '{"kind": "exploding", "step": 7, "layers": ["fc1"], "value": "inf", "threshold": 9.0, \
"message": "Exploding.", "optimizer": 1, "extra": {}}'])
    """

    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return repr(value)
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    data = json.dumps(plain(alert.to_dict()), allow_nan=False, default=str)  # one line: newlines are escaped
    return f"{alert_markdown(alert)}{ALERT_DATA_FENCE}{data}\n```"


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's header (the IHDR chunk that always comes first)."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _tensorboard_experiment(logger: Any) -> Any:
    """The logger's ``SummaryWriter`` when it writes TensorBoard event files, else ``None``."""
    try:
        experiment = getattr(logger, "experiment", None)
    except Exception:
        return None
    return experiment if experiment is not None and _is_tensorboard_writer(experiment) else None


def histogram_tags(stats: StepStats) -> dict[str, LayerHistogram]:
    """``{grad_hist/<layer>: histogram}`` for the layers that have one this step."""
    if stats.histograms is None:
        return {}
    return {
        names.layer_tag(HISTOGRAM_PREFIX, layer): h
        for layer, h in zip(stats.layers, stats.histograms)
        if h is not None and math.isfinite(h.min) and math.isfinite(h.max)
    }
