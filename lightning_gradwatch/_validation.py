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
from typing import Any, Literal, get_args

from lightning_gradwatch.kinds import ExplodingResponse, NonfiniteResponse, VanishingResponse

__all__ = [
    "DETECTION_ARGUMENTS",
    "ArgumentTypeError",
    "ExplodingResponse",
    "Granularity",
    "NonfiniteResponse",
    "VanishingResponse",
    "check_bool",
    "check_budget",
    "check_choice",
    "check_clip",
    "check_gradwatch_arguments",
    "check_int",
    "check_number",
    "check_pattern",
    "choices",
]

Granularity = Literal["module", "parameter"]


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


def check_clip(clip: Any) -> None:
    """``None``, ``"adaptive"`` or a positive, finite number."""
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
        raise ValueError(f"`{name}` is not a valid regular expression ({err}): {pattern!r}") from err


#: GradWatch's arguments that are fields of ``DetectionConfig`` (which checks them, with the same rule).
DETECTION_ARGUMENTS = (
    "warmup_steps",
    "exploding_patience",
    "exploding_growth_steps",
    "vanishing_patience",
    "exploding_zscore",
    "exploding_min_factor",
    "exploding_threshold",
    "exploding_jump_factor",
    "exploding_trend_loss_factor",
    "exploding_trend_norm_factor",
    "vanishing_ratio",
    "vanishing_floor",
)


def check_gradwatch_arguments(args: dict[str, Any]) -> None:
    """Check ``GradWatch``'s arguments, by name (the detection thresholds are checked by ``DetectionConfig``)."""
    check_choice("on_vanishing", args["on_vanishing"], VanishingResponse)
    check_choice("on_exploding", args["on_exploding"], ExplodingResponse)
    check_choice("on_nonfinite", args["on_nonfinite"], NonfiniteResponse)
    check_clip(args["clip"])
    check_number("clip_zscore", args["clip_zscore"])
    check_int("clip_warmup_steps", args["clip_warmup_steps"], minimum=0)
    check_number("clip_max_norm", args["clip_max_norm"], optional=True)
    check_int("log_every_n_steps", args["log_every_n_steps"], minimum=1, optional=True)
    check_int("histogram_every_n_steps", args["histogram_every_n_steps"], minimum=0, optional=True)
    check_choice("granularity", args["granularity"], Granularity)
    check_pattern("include", args["include"])
    check_pattern("exclude", args["exclude"])
    check_int("amp_overflow_patience", args["amp_overflow_patience"], minimum=1)
    check_int("histogram_bins", args["histogram_bins"], minimum=1)
    check_int("histogram_sample_size", args["histogram_sample_size"], minimum=1)
    check_int("max_layers", args["max_layers"], minimum=1, optional=True)
    check_bool("images", args["images"])
    check_budget("overhead_budget", args["overhead_budget"])
    check_bool("progress_bar", args["progress_bar"])
