"""Any other Lightning logger: the scalars, through ``logger.log_metrics``.

Text, histograms and images are TensorBoard's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lightning_gradwatch.measure.records import LayerHistogram
from lightning_gradwatch.write.sinks import BaseSink, logger_name

__all__ = ["LoggerSink"]


class LoggerSink(BaseSink):
    """Scalars through ``logger.log_metrics``.

    Args:
        logger: the logger.
        namespace: for a second GradWatch in one run: the prefix of its scalars (``gradwatch-2/``).
    """

    scalars = True

    def __init__(self, logger: Any, namespace: str = "") -> None:
        self._logger = logger
        self._prefix = f"{namespace}/" if namespace else ""

    @property
    def name(self) -> str:  # type: ignore[override]
        """What a failure message calls it: the logger and its directory, worked out when a failure is reported."""
        return logger_name(self._logger)

    @override
    def write(self, step: int, scalars: Mapping[str, float], histograms: Mapping[str, LayerHistogram]) -> None:
        if scalars:
            self._logger.log_metrics({self._prefix + k: v for k, v in scalars.items()}, step=step)

    @override
    def flush(self) -> None:
        save = getattr(self._logger, "save", None)
        if callable(save):
            save()
