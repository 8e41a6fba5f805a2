"""Checkpointed state, declared once per part of the detector.

A part of the detector (a rule, a shared history) is a dataclass; the fields it declares with :func:`state` are its
checkpoint, each with how a checkpoint's plain value is read back. :class:`Stateful` turns that one list into
``reset``, ``state_dict`` and ``load_state_dict``: a new piece of state is one line, and a checkpoint written before
it existed loads with its default. The detector's ``state_dict`` is the union of its parts' (the keys are unique).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(eq=False)
    ... class Counter(Stateful):
    ...     runs: int = state(0, load=int)
    >>> counter = Counter(runs=3)
    >>> counter.state_dict()
    {'runs': 3}
    >>> counter.load_state_dict({})  # a checkpoint from before `runs` existed
    >>> counter.runs
    0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any

from lightning_gradwatch.history import Window

__all__ = [
    "Stateful",
    "as_counts",
    "as_float_list",
    "as_float_map",
    "as_int_map",
    "as_optional_float",
    "as_optional_int",
    "plain",
    "state",
]


def state(default: Any = None, *, load: Callable[[Any], Any], factory: Callable[[], Any] | None = None) -> Any:
    """Declare a checkpointed field: its default (or ``factory`` for a container) and how to ``load`` it back."""
    if factory is not None:
        return field(default_factory=factory, metadata={"load": load})
    return field(default=default, metadata={"load": load})


def plain(value: Any) -> Any:
    """A state value as a checkpoint keeps it: plain copies of containers, a set sorted, a window as a list."""
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, Window):
        return list(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def as_optional_float(value: Any) -> float | None:
    """``None`` stays ``None``; anything else becomes a float."""
    return None if value is None else float(value)


def as_optional_int(value: Any) -> int | None:
    """``None`` stays ``None``; anything else becomes an int."""
    return None if value is None else int(value)


def as_int_map(value: Mapping[Any, Any]) -> dict[str, int]:
    """A mapping of names to counts."""
    return {str(k): int(v) for k, v in value.items()}


def as_float_map(value: Mapping[Any, Any]) -> dict[str, float]:
    """A mapping of names to floats."""
    return {str(k): float(v) for k, v in value.items()}


def as_float_list(value: Any) -> list[float]:
    """A list of floats."""
    return [float(v) for v in value]


def as_counts(value: Mapping[Any, Any] | None = None) -> dict[str, int]:
    """The detector's event counts: every known count (0 when missing), and any other in the checkpoint."""
    return {"spikes": 0, "nonfinite_steps": 0, **as_int_map(value or {})}


class Stateful:
    """Base of the detector's parts: the fields declared with :func:`state` are the part's checkpoint."""

    def _state_fields(self) -> tuple[Field[Any], ...]:
        return tuple(f for f in fields(self) if "load" in f.metadata)  # type: ignore[arg-type]

    def reset(self) -> None:
        """Forget: every state field back to its default."""
        for f in self._state_fields():
            setattr(self, f.name, f.default if f.default_factory is MISSING else f.default_factory())

    def state_dict(self) -> dict[str, Any]:
        """Plain values that let a resumed run continue where it stopped."""
        return {f.name: plain(getattr(self, f.name)) for f in self._state_fields()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; keys missing from older checkpoints keep their defaults."""
        self.reset()
        for f in self._state_fields():
            if f.name in state:
                setattr(self, f.name, f.metadata["load"](state[f.name]))
