"""Internal. Argument checks with one rule: a wrong type raises ``TypeError``, a wrong value ``ValueError``.

Choices come from the ``Literal`` types themselves, so a new response is added in one place.

Example:
    >>> check_choice("on_exploding", "clip", ExplodingResponse)
    >>> check_choice("on_vanishing", "skip", VanishingResponse)
    Traceback (most recent call last):
    ...
    ValueError: `on_vanishing` must be one of ('warn', 'raise', 'stop', 'ignore'), got 'skip'
    >>> check_bool("images", "no")
    Traceback (most recent call last):
    ...
    TypeError: `images` must be True or False, got str 'no'
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import partial
from typing import Any, Literal, get_args

from lightning_gradwatch.kinds import ExplodingResponse, NonfiniteResponse, VanishingResponse

__all__ = [
    "ArgumentTypeError",
    "Check",
    "ExplodingResponse",
    "Granularity",
    "NonfiniteResponse",
    "VanishingResponse",
    "above_one",
    "at_least_one",
    "check_bool",
    "check_budget",
    "check_choice",
    "check_clip",
    "check_int",
    "check_number",
    "check_pattern",
    "choice",
    "choices",
    "fraction",
    "integer",
    "number",
]

Granularity = Literal["module", "parameter"]

#: a value check: ``check(name, value)`` raises ``TypeError`` or ``ValueError`` naming the argument
Check = Callable[[str, Any], None]


def choices(literal: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` type.

    Example:
        >>> choices(Granularity)
        ('module', 'parameter')
    """
    return tuple(get_args(literal))


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. A ``TypeError``; also a ``ValueError``, which such arguments raised before."""


def _type_error(name: str, expected: str, value: Any, was_value_error: bool = False) -> TypeError:
    cls = ArgumentTypeError if was_value_error else TypeError
    return cls(f"`{name}` must be {expected}, got {type(value).__name__} {value!r}")


def check_choice(name: str, value: Any, literal: Any) -> None:
    """``value`` is one of the ``literal``'s strings."""
    allowed = choices(literal)
    if not isinstance(value, str):
        raise _type_error(name, f"one of {allowed}", value, was_value_error=True)
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    """``value`` is ``True`` or ``False`` (not a truthy string or number)."""
    if not isinstance(value, bool):
        raise _type_error(name, "True or False", value)


def check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    """``value`` is an ``int`` (not a bool) of at least ``minimum``; ``None`` too when ``optional``."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an int", value)
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}")


def check_number(name: str, value: Any, optional: bool = False, zero: bool = False) -> None:
    """``value`` is a positive, finite ``int`` or ``float`` (0 too with ``zero``; ``None`` too when ``optional``).

    Example:
        >>> check_number("min_spread", 0.0, zero=True)
        >>> check_number("zscore", 0.0)
        Traceback (most recent call last):
        ...
        ValueError: `zscore` must be a positive, finite number, got 0.0
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(name, "a number", value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        kind = "non-negative" if zero else "positive"
        raise ValueError(f"`{name}` must be a {kind}, finite number, got {value!r}")


def check_budget(name: str, value: Any) -> None:
    """``None`` or a fraction in (0, 1].

    Example:
        >>> check_budget("overhead_budget", 0.03)
        >>> check_budget("overhead_budget", 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `overhead_budget` must be a fraction of the training time in (0, 1] (0.03 is 3%), ... got 3
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(name, "a number in (0, 1] or None", value)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(
            f"`{name}` must be a fraction of the training time in (0, 1] (0.03 is 3%), or None for no budget,"
            f" got {value!r}"
        )


def check_clip(name: str, clip: Any) -> None:
    """``None``, ``"adaptive"`` or a positive, finite number (``name`` is ``clip``, the one argument it checks)."""
    if clip is None or clip == "adaptive":
        return
    if isinstance(clip, str):
        raise ValueError(f"`clip` must be None, a positive number (fixed max norm) or 'adaptive', got {clip!r}")
    if isinstance(clip, bool) or not isinstance(clip, (int, float)):
        raise _type_error("clip", "None, a positive number (fixed max norm) or 'adaptive'", clip, was_value_error=True)
    if not math.isfinite(clip) or clip <= 0:
        raise ValueError(f"`clip` must be None, a positive number (fixed max norm) or 'adaptive', got {clip!r}")


def check_pattern(name: str, pattern: Any) -> None:
    """``None`` or a string that compiles as a regular expression."""
    if pattern is None:
        return
    if not isinstance(pattern, str):
        raise _type_error(name, "a regular expression string or None", pattern)
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"`{name}` must be a valid regular expression ({err}), got {pattern!r}") from err


def integer(minimum: int, optional: bool = False) -> Check:
    """A check: an ``int`` of at least ``minimum`` (``None`` too when ``optional``)."""
    return partial(check_int, minimum=minimum, optional=optional)


def number(optional: bool = False, zero: bool = False) -> Check:
    """A check: a positive, finite number (0 too with ``zero``; ``None`` too when ``optional``)."""
    return partial(check_number, optional=optional, zero=zero)


def choice(literal: Any) -> Check:
    """A check: one of the ``literal``'s strings."""
    return partial(check_choice, literal=literal)


def at_least_one(name: str, value: Any) -> None:
    """A finite number of at least 1.

    Example:
        >>> at_least_one("exploding_min_factor", 0.5)
        Traceback (most recent call last):
        ...
        ValueError: `exploding_min_factor` must be at least 1, got 0.5
    """
    check_number(name, value)
    if value < 1:
        raise ValueError(f"`{name}` must be at least 1, got {value!r}")


def above_one(name: str, value: Any) -> None:
    """A finite number greater than 1."""
    check_number(name, value)
    if value <= 1:
        raise ValueError(f"`{name}` must be greater than 1, got {value!r}")


def fraction(name: str, value: Any) -> None:
    """A number in (0, 1)."""
    check_number(name, value)
    if value >= 1:
        raise ValueError(f"`{name}` must be in (0, 1), got {value!r}")
