"""Reading GradWatch's scalars back from a CSV logger's ``metrics.csv`` (Lightning's ``CSVLogger``).

The logger writes a header of every column ever logged and one row per logging call, with a ``step`` column. Its
rows reach the disk every ``flush_logs_every_n_steps`` (100) steps, so a run killed before GradWatch wrote
``gradwatch.json`` has this file alone; a kill while writing leaves its last row cut short.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning_gradwatch._names import numbered

__all__ = ["CSV_FILE", "CsvLogError", "read_metrics_csv"]

CSV_FILE = "metrics.csv"

Series = dict[str, list[tuple[int, float]]]


class CsvLogError(Exception):
    """A ``metrics.csv`` that cannot be read, or is damaged inside; the message names the file (and the line)."""


def read_metrics_csv(
    path: Path, prefixes: tuple[str, ...], layer_prefix: str
) -> tuple[Series, tuple[str, ...], str | None]:
    r"""The series of the columns whose names start with ``prefixes``: ``{column: [(step, value)]}``.

    Also the layers in the order of their ``layer_prefix`` columns (numbers in names by value), and a note when the
    last row is cut short (what a kill while writing leaves; a damaged row before it is an error).

    Raises:
        CsvLogError: the file cannot be read, or a row before the last is damaged (the message names the line).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / CSV_FILE
        >>> _ = path.write_text("epoch,grad_norm/fc,step,train_loss\n0,0.5,0,2.3\n0,,1,2.1\n0,0.4")
        >>> read_metrics_csv(path, ("grad_norm/",), "grad_norm/")
        ({'grad_norm/fc': [(0, 0.5)]}, ('fc',), 'metrics.csv ends in half a row (its run was killed while writing)')
    """
    header, rows, whole = _lines(path, prefixes)
    columns = [(i, c) for i, c in enumerate(header) if c.startswith(prefixes)]
    # Lightning's CSVLogger sorts its columns: numbered layers in number order comes nearer the model's
    order = tuple(sorted((c[len(layer_prefix) :] for _, c in columns if c.startswith(layer_prefix)), key=numbered))
    step_at = header.index("step") if "step" in header else None
    series: Series = {}
    for number, row in enumerate(rows, start=2):
        last = number == len(rows) + 1
        try:
            points = _row(row, len(header), step_at, columns, cut=last and not whole)
        except ValueError as err:
            if last:
                return series, order, f"{path.name} ends in half a row (its run was killed while writing)"
            raise CsvLogError(f"{path}: line {number}: {err}") from err
        for column, step, value in points:
            series.setdefault(column, []).append((step, value))
    return series, order, None


def _lines(path: Path, prefixes: tuple[str, ...]) -> tuple[list[str], list[list[str]], bool]:
    """The header, the rows, and whether the file ends with a line end (a kill did not cut it).

    The header is read first: a file without GradWatch's columns (another tool's ``metrics.csv``, damaged or not) is
    read no further, and has no rows.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = next(reader, [])
            except (ValueError, csv.Error):  # not text, or not CSV: not GradWatch's
                return [], [], True
            if not any(c.startswith(prefixes) for c in header):
                return header, [], True
            rows = list(reader)
        with path.open("rb") as raw:
            raw.seek(-1, os.SEEK_END)
            whole = raw.read(1) in (b"\n", b"\r")
    except (OSError, ValueError, csv.Error) as err:  # UnicodeDecodeError is a ValueError
        raise CsvLogError(f"{path}: {err}") from err
    return header, rows, whole


def _row(
    row: list[str], width: int, step_at: int | None, columns: list[tuple[int, str]], cut: bool
) -> list[tuple[str, int, float]]:
    """A row's ``(column, step, value)`` cells that hold a number (an empty cell: the row did not log that column).

    ``width``: the header's cells; ``step_at``: where its ``step`` column is (``None``: it has none, no cell is
    read); ``cut``: the file ends inside this row (no line end after it), whatever its cells parse as.
    """
    if cut:
        raise ValueError("cut short")
    if len(row) != width:
        raise ValueError(f"{len(row)} cells, the header has {width}")
    step = _number(row[step_at]) if step_at is not None else None
    cells = [(column, _number(row[i])) for i, column in columns]
    return [(c, int(step), v) for c, v in cells if v is not None] if step is not None else []


def _number(text: str) -> float | None:
    """A cell as a number (``None``: empty)."""
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number: {text[:40]!r}") from None
