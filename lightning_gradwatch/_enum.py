"""Internal. The base of the package's enums: strings, stored and shown by their value."""

from __future__ import annotations

from enum import Enum

__all__ = ["StrEnum"]


class StrEnum(str, Enum):
    """An enum of strings whose ``str()`` and formatting give the value (``enum.StrEnum`` needs Python 3.11).

    A member equals its value (``"skip" == Color.SKIP``) and hashes like it, so plain strings read from a file or a
    checkpoint find their members in sets and dicts.

    Example:
        >>> class Colour(StrEnum):
        ...     RED = "red"
        >>> f"{Colour.RED}", str(Colour.RED), Colour("red") is Colour.RED, Colour.RED == "red"
        ('red', 'red', True, True)
    """

    __hash__ = str.__hash__  # as its value's, whatever the Python version's Enum defines

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
