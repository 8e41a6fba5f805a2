"""Finding GradWatch runs on disk and loading them, from ``gradwatch.json`` or from the event files alone.

Event files are read record by record with their checksums verified (TensorBoard's own reader stops quietly at a
corrupt record), so a damaged file is reported instead of read as a shorter, healthy-looking run.
"""

from __future__ import annotations

import math
import os
import statistics
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_gradwatch.alerts import parse_alert_markdown
from lightning_gradwatch.report import REPORT_FILE, read_report

EVENT_FILE_MARK = "tfevents"
ALERT_TEXT_TAG = "gradwatch/alerts/text_summary"


class RunReadError(Exception):
    """A run directory, report or event file that cannot be read; the message is one line."""


@dataclass
class RunRecord:
    """What the ``gradwatch`` command needs to know about one run.

    ``layers`` entries hold ``name``, ``grad_norm`` and ``grad_to_weight`` summaries (``last``, ``median``, ``min``,
    ``max``) and ``nonfinite_steps``; ``alerts`` entries hold ``kind``, ``step``, ``layers``, ``value``,
    ``threshold`` and ``message``.
    """

    path: Path
    source: str  # "json" or "events"
    status: str | None = None
    steps: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories under ``paths`` (each a run directory or any parent of runs), in a stable order.

    Raises:
        RunReadError: a path does not exist.
    """
    found: list[Path] = []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise RunReadError(f"{raw}: no such file or directory")
        if root.is_file():
            root = root.parent
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if REPORT_FILE in filenames or any(EVENT_FILE_MARK in f for f in filenames):
                found.append(Path(dirpath))
    unique = list(dict.fromkeys(found))
    return unique


def load_run(directory: Path) -> RunRecord | None:
    """Load one run; ``None`` for a directory of event files that GradWatch did not write.

    Raises:
        RunReadError: the report or an event file is corrupt or unreadable.
    """
    report_path = directory / REPORT_FILE
    event_files = sorted(p for p in directory.iterdir() if p.is_file() and EVENT_FILE_MARK in p.name)
    if report_path.exists():
        try:
            doc = read_report(report_path)
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise RunReadError(_one_line(err)) from err
        for path in event_files:
            for _ in _records(path):  # verify every checksum; the report is the source of the numbers
                pass
        return _from_report(directory, doc)
    return _from_events(directory, event_files)


def _from_report(directory: Path, doc: dict[str, Any]) -> RunRecord:
    try:
        layers = [_layer_entry(entry) for entry in _as_list(doc.get("layers"))]
        alerts = [_alert_entry(a) for a in _as_list(doc.get("alerts"))]
        events = {str(k): int(v) for k, v in _as_dict(doc.get("events")).items()}
        steps = {str(k): v for k, v in _as_dict(doc.get("steps")).items() if v is None or isinstance(v, int)}
        status = doc.get("status")
        if status is not None and not isinstance(status, str):
            raise TypeError(f"status is {type(status).__name__}")
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
        raise RunReadError(f"{directory / REPORT_FILE}: unexpected content ({_one_line(err)})") from err
    return RunRecord(directory, "json", status, steps, layers, alerts, events)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _layer_entry(entry: dict[str, Any]) -> dict[str, Any]:
    entry = _as_dict(entry)
    return {
        "name": str(entry["name"]),
        "grad_norm": _summary(entry.get("grad_norm")),
        "grad_to_weight": _summary(entry.get("grad_to_weight")),
        "nonfinite_steps": int(entry.get("nonfinite_steps") or 0),
    }


def _summary(series: Any) -> dict[str, float]:
    series = _as_dict(series)
    return {k: _float(series.get(k)) for k in ("last", "median", "min", "max")}


def _float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)  # a string is "inf" or "nan", as written for non-finite values


def _alert_entry(alert: dict[str, Any]) -> dict[str, Any]:
    alert = _as_dict(alert)
    return {
        "kind": str(alert["kind"]),
        "step": int(alert["step"]),
        "layers": [str(n) for n in _as_list(alert.get("layers"))],
        "value": _float(alert.get("value")),
        "threshold": _float(alert.get("threshold")),
        "message": str(alert.get("message", "")),
    }


# ---------------------------------------------------------------------- event files
_HEADER = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def _crc32c_function() -> Any:
    try:
        import google_crc32c  # type: ignore[import-not-found]

        return google_crc32c.value
    except ImportError:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import crc32c

        return crc32c


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord event file, each checked against its CRC32C.

    Raises:
        RunReadError: on a truncated record or a checksum mismatch.
    """
    crc32c = _crc32c_function()
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RunReadError(f"{path}: cannot read ({_one_line(err)})") from err
    offset, n = 0, 0
    while offset < len(data):
        if offset + 12 > len(data):
            raise RunReadError(f"{path}: truncated event file (record {n} header is incomplete)")
        header = data[offset : offset + 8]
        (length,) = _HEADER.unpack(header)
        (length_crc,) = _CRC.unpack(data[offset + 8 : offset + 12])
        if _masked(crc32c(header)) != length_crc:
            raise RunReadError(f"{path}: corrupt event file (record {n} length checksum mismatch)")
        end = offset + 12 + length
        if end + 4 > len(data):
            raise RunReadError(f"{path}: truncated event file (record {n} is incomplete)")
        payload = data[offset + 12 : end]
        (payload_crc,) = _CRC.unpack(data[end : end + 4])
        if _masked(crc32c(payload)) != payload_crc:
            raise RunReadError(f"{path}: corrupt event file (record {n} data checksum mismatch)")
        yield payload
        offset, n = end + 4, n + 1


def _from_events(directory: Path, event_files: list[Path]) -> RunRecord | None:
    from tensorboard.compat.proto import event_pb2

    series: dict[str, list[tuple[int, float]]] = {}
    alerts: list[dict[str, Any]] = []
    for path in event_files:
        for payload in _records(path):
            try:
                event = event_pb2.Event.FromString(payload)
            except Exception as err:
                raise RunReadError(f"{path}: corrupt event record ({_one_line(err)})") from err
            for value in event.summary.value:
                if value.tag == ALERT_TEXT_TAG and value.HasField("tensor") and value.tensor.string_val:
                    text = value.tensor.string_val[0].decode("utf-8", "replace")
                    alerts.append(parse_alert_markdown(text, event.step))
                elif value.HasField("simple_value") and (
                    value.tag.startswith(("grad_norm/", "grad_to_weight/", "gradwatch/"))
                ):
                    series.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.HasField("tensor") and value.tag.startswith(("grad_norm/", "grad_to_weight/")):
                    floats = list(value.tensor.float_val)
                    if floats:
                        series.setdefault(value.tag, []).append((event.step, floats[0]))
    if not any(tag.startswith("grad_norm/") for tag in series) and not alerts:
        return None
    layers = []
    for tag in series:
        if not tag.startswith("grad_norm/"):
            continue
        name = tag[len("grad_norm/") :]
        norms = sorted(series[tag])
        ratios = sorted(series.get(f"grad_to_weight/{name}", []))
        layers.append(
            {
                "name": name,
                "grad_norm": _summarise(norms),
                "grad_to_weight": _summarise(ratios),
                "nonfinite_steps": sum(1 for _, v in norms if not math.isfinite(v)),
            }
        )
    total = sorted(series.get("gradwatch/total_norm", []))
    steps = {"first": total[0][0], "last": total[-1][0], "logged": len(total)} if total else {}
    events = {}
    for name in ("amp_overflow_steps", "skipped_steps", "spike_steps", "clipped_steps"):
        values = series.get(f"gradwatch/{name}")
        if values:
            events[name] = int(max(v for _, v in values))
    alerts.sort(key=lambda a: a["step"])
    return RunRecord(directory, "events", None, steps, layers, alerts, events)


def _summarise(points: list[tuple[int, float]]) -> dict[str, float]:
    finite = [v for _, v in points if math.isfinite(v)]
    if not points:
        return dict.fromkeys(("last", "median", "min", "max"), math.nan)
    return {
        "last": points[-1][1],
        "median": statistics.median(finite) if finite else math.nan,
        "min": min(finite) if finite else math.nan,
        "max": max(finite) if finite else math.nan,
    }


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
