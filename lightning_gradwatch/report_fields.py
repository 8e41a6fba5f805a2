"""A ``gradwatch.json`` document's fields of :class:`~lightning_gradwatch.runs.RunRecord`, each checked for its type.

A report is read as untrusted input: a field of the wrong type is a ``TypeError`` (the caller names the file), never
a wrong number.
"""

from __future__ import annotations

import math
from typing import Any

from lightning_gradwatch._names import numbered
from lightning_gradwatch.report import wall_time

__all__ = ["alert_entry", "by_number", "report_fields"]


def report_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """A ``gradwatch.json`` document's fields of :class:`RunRecord`, each checked for its type."""
    layers, history = _layers(_as_list(doc.get("layers")))
    raw_total = sorted(_as_dict(doc.get("total_norm")).items(), key=by_number)
    return {
        "status": _text(doc, "status"),
        "steps": {str(k): v for k, v in _as_dict(doc.get("steps")).items() if v is None or isinstance(v, int)},
        "layers": layers,
        "events": {str(k): int(v) for k, v in _as_dict(doc.get("events")).items()},
        "events_restored": {str(k): int(v) for k, v in _as_dict(doc.get("events_restored")).items()},
        "total_norm": {str(k): _summary(v) for k, v in raw_total},
        "error": _text(doc, "error"),
        "history": history,
        "total_history": {str(k): _history({"grad_norm": v}) for k, v in raw_total},
        "config": _as_dict(doc.get("config")),
        "fits": [_fit_entry(f) for f in _as_list(doc.get("fits"))],
        "logs_since": wall_time(doc.get("logs_since")),
        **_said(doc),
    }


def _layers(raw_layers: list[Any]) -> tuple[list[dict[str, Any]], dict[str, list[tuple[int, float]]]]:
    """The report's layers (written in the model's order) and each one's history."""
    layers = [_layer_entry(entry) for entry in raw_layers]
    history = {layer["name"]: _history(entry) for layer, entry in zip(layers, raw_layers)}
    for layer in layers:  # a report written before the last step was recorded: its history's last point
        if layer["last_step"] is None and history[layer["name"]]:
            layer["last_step"] = history[layer["name"]][-1][0]
    return layers, history


def _said(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """What the run said: ``alerts``, ``earlier_alerts`` (of a resumed run) and ``notices``."""
    return {
        "alerts": [alert_entry(a) for a in _as_list(doc.get("alerts"))],
        "earlier_alerts": [alert_entry(a) for a in _as_list(doc.get("earlier_alerts"))],
        "notices": [_notice_entry(n) for n in _as_list(doc.get("notices"))],
    }


def _fit_entry(entry: Any) -> dict[str, Any]:
    """One fit of a run: its first and last step (``None`` when it measured none) and its status."""
    fit = _as_dict(entry)
    steps = {k: fit.get(k) for k in ("first_step", "last_step")}
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in steps.values()):
        raise TypeError("a fit's steps are not integers")
    stopped = fit.get("stopped_at")
    if stopped is not None and (isinstance(stopped, bool) or not isinstance(stopped, int)):
        raise TypeError("a fit's stopped_at is not an integer")
    return {**steps, "status": _text(fit, "status"), "error": _text(fit, "error"), "stopped_at": stopped}


def _history(entry: dict[str, Any]) -> list[tuple[int, float]]:
    """A layer's (or total's) ``grad_norm.history``, as ``(step, norm)`` points in step order."""
    points = _as_list(_as_dict(_as_dict(entry).get("grad_norm")).get("history"))
    return sorted((int(step), _float(value)) for step, value in (_as_list(point) for point in points))


def _text(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} is {type(value).__name__}")
    return value


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
    last_step = _as_dict(entry.get("grad_norm")).get("last_step")
    if last_step is not None and (isinstance(last_step, bool) or not isinstance(last_step, int)):
        raise TypeError(f"last_step is {type(last_step).__name__}")
    return {
        "name": str(entry["name"]),
        "grad_norm": _summary(entry.get("grad_norm")),
        "grad_to_weight": _summary(entry.get("grad_to_weight")),
        "nonfinite_steps": int(entry.get("nonfinite_steps") or 0),
        "last_step": last_step,
    }


def _summary(series: Any) -> dict[str, float]:
    series = _as_dict(series)
    out = {k: _float(series.get(k)) for k in ("last", "median", "min", "max")}
    count = series.get("count")
    out["count"] = math.nan if count is None else float(int(count))
    return out


def _float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)  # a string is "inf" or "nan", as written for non-finite values


def _notice_entry(notice: Any) -> dict[str, Any]:
    """What GradWatch said once that is no alert (clipping hiding a failing run)."""
    notice = _as_dict(notice)
    return {
        "kind": str(notice.get("kind", "")),
        "step": int(notice["step"]),
        "message": str(notice.get("message", "")),
        "optimizer": int(notice.get("optimizer") or 0),
    }


def alert_entry(alert: dict[str, Any]) -> dict[str, Any]:
    """One alert of a report (or of an event file's alert text), its fields checked."""
    alert = _as_dict(alert)
    return {
        "kind": str(alert["kind"]),
        "step": int(alert["step"]),
        "layers": [str(n) for n in _as_list(alert.get("layers"))],
        "value": _float(alert.get("value")),
        "threshold": _float(alert.get("threshold")),
        "message": str(alert.get("message", "")),
        "optimizer": int(alert.get("optimizer") or 0),
    }


def by_number(item: tuple[str, Any]) -> tuple[tuple[int, int | str], ...]:
    """Sort key of ``total_norm`` entries: ``all``, then ``optimizer_0``, ``optimizer_1``, ..., ``optimizer_10``."""
    return numbered(item[0])
