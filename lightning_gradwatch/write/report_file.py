"""The run report as a sink: ``gradwatch.json``, written atomically beside the event files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from lightning_gradwatch.report import REPORT_FILE, write_report
from lightning_gradwatch.write.sinks import BaseSink

__all__ = ["ReportFile"]


class ReportFile(BaseSink):
    """Keeps the run report in ``directory/gradwatch.json`` (a reader never sees half a file).

    Only an ``OSError`` (an unwritable directory, a full disk) is a failed write: the report is then given up for the
    run, and the alerts stay in ``GradWatch.alerts`` and the logs.
    """

    name = REPORT_FILE
    report = True
    failures = (OSError,)

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = directory

    @override
    def write_report(self, doc: Mapping[str, Any]) -> None:
        write_report(self.directory, doc)

    @override
    def failure_message(self, err: BaseException) -> str:
        return (
            f"GradWatch could not write gradwatch.json to {self.directory} ({err}). Training continues; the alerts"
            " are still in `GradWatch.alerts`, and in the event files wherever those can be written."
        )
