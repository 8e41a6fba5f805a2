"""Reading GradWatch's scalars back from a CSV logger's ``metrics.csv`` (Lightning's ``CSVLogger``).

The logger writes a header of every column ever logged and one row per logging call, with a ``step`` column. Its
rows reach the disk every ``flush_logs_every_n_steps`` (100) steps, so a run killed before GradWatch wrote
``gradwatch.json`` has this file alone; a kill while writing leaves its last row cut short.
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["CSV_FILE", "CsvLogError", "read_metrics_csv"]

CSV_FILE = "metrics.csv"

Series = dict[str, list[tuple[int, float]]]


class CsvLogError(Exception):
    """A ``metrics.csv`` that cannot be read, or is damaged inside; the message is one line and names the file."""


def read_metrics_csv(
    path: Path, prefixes: tuple[str, ...], layer_prefix: str
) -> tuple[Series, tuple[str, ...], str | None]:
    r"""The series of the columns whose names start with ``prefixes``: ``{column: [(step, value)]}``.

    Also the layers in the order of their ``layer_prefix`` columns, and a note when the last row is cut short (what a
    kill while writing leaves; a damaged row before it is an error).

    Raises:
        CsvLogError: the file cannot be read, or a row before the last is damaged (the message names the line).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / CSV_FILE
        >>> _ = path.write_text("epoch,grad_norm/fc,step,train_loss\n0,0.5,0,2.3\n0,,1,2.1\n0,0.4")
        >>> read_metrics_csv(path, ("grad_norm/",), "grad_norm/")
        ({'grad_norm/fc': [(0, 0.5)]}, ('fc',), 'metrics.csv ends in half a row (its run was killed while writing)')
    """
    header, rows = _lines(path)
    columns = [(i, c) for i, c in enumerate(header) if c.startswith(prefixes)]
    order = tuple(c[len(layer_prefix) :] for _, c in columns if c.startswith(layer_prefix))
    series: Series = {}
    for number, row in enumerate(rows, start=2):
        try:
            step, points = _row(row, header, columns)
        except ValueError as err:
            if number == len(rows) + 1:
                return series, order, f"{path.name} ends in half a row (its run was killed while writing)"
            raise CsvLogError(f"{path}: line {number}: {err}") from err
        for column, value in points:
            if step is not None and value is not None:
                series.setdefault(column, []).append((int(step), value))
    return series, order, None


def _lines(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (an empty file: none)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (OSError, ValueError, csv.Error) as err:  # UnicodeDecodeError is a ValueError
        raise CsvLogError(f"{path}: {' '.join(str(err).split()) or type(err).__name__}") from err
    return (lines[0], lines[1:]) if lines else ([], [])


def _row(row: list[str], header: list[str], columns: list[tuple[int, str]]) -> tuple[float | None, list]:
    """A row's step and its ``(column, value)`` cells (``None``: empty, the row did not log that column)."""
    if len(row) != len(header):
        raise ValueError(f"{len(row)} cells, the header has {len(header)}")
    step = _number(row[header.index("step")]) if "step" in header else None
    return step, [(column, _number(row[i])) for i, column in columns]


def _number(text: str) -> float | None:
    """A cell as a number (``None``: empty)."""
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number: {text[:40]!r}") from None
