"""The names the package decides by, as enums, and the one table of alert kinds.

Every enum mixes in ``str`` and is stored by its value (as Lightning's ``EarlyStoppingReason``): an alert's ``kind``
is the plain string ``"exploding"``, ``gradwatch.json`` and checkpoints hold plain strings, and a member compares
equal to its value (``AlertKind.EXPLODING == "exploding"``), so code decides by members and data stays plain.

:data:`KINDS` says, for each alert kind, everything the rest of the package needs to know about it: the responses
its ``on_<kind>`` argument allows and its default, which responses keep an affected step's update out, what an
alert's warning says each response does, its health word and colour, how it ranks against the others, and its remedy
hints. A new alert kind is one member of
:class:`AlertKind` and one entry here (its detection rules are listed in ``detectors``).

Example:
    >>> KINDS[AlertKind.NONFINITE].health
    <Health.NONFINITE: 'non-finite'>
    >>> str(KINDS[AlertKind.NONFINITE].health), AlertKind.EXPLODING == "exploding"
    ('non-finite', True)
    >>> [str(k) for k in by_severity()]
    ['nonfinite', 'exploding', 'vanishing']
    >>> kind_spec("exploding").argument
    'on_exploding'
    >>> kind_spec("vanishing").says(Response.STOP)[:33]
    'GradWatch stops training after th'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from lightning_gradwatch._enum import StrEnum
from lightning_gradwatch.remedies import Cause, ModelTraits, exploding_remedies, nonfinite_remedies, vanishing_remedies

__all__ = [
    "KINDS",
    "OK_COLOUR",
    "AlertKind",
    "Cause",
    "ExplodingResponse",
    "Health",
    "KindSpec",
    "NonfiniteResponse",
    "Response",
    "Rule",
    "RunStatus",
    "StrEnum",
    "VanishingResponse",
    "by_severity",
    "health_colours",
    "kind_spec",
]


class AlertKind(StrEnum):
    """What an alert is about; ``GradientAlert.kind`` holds the value."""

    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "nonfinite"


class Response(StrEnum):
    """What GradWatch does about an alert (the values of the ``on_<kind>`` arguments)."""

    WARN = "warn"
    RAISE = "raise"
    STOP = "stop"
    SKIP = "skip"
    CLIP = "clip"
    IGNORE = "ignore"


class Health(StrEnum):
    """A step's (or a layer's) health word: the progress bar's ``grad_health``, the pictures' and report's status."""

    OK = "ok"
    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "non-finite"


class Rule(StrEnum):
    """The detection rules; an alert names the rule that found it in ``extra["rule"]``."""

    NONFINITE = "nonfinite"
    JUMP = "jump"
    SPIKES = "spikes"
    GROWTH = "growth"
    TREND = "trend"
    CLIMB = "climb"
    KILL = "kill"
    COLLAPSE = "collapse"
    STALL = "stall"
    LAYERS = "layers"


class RunStatus(StrEnum):
    """A run's ``status`` in ``gradwatch.json``."""

    RUNNING = "running"  # written while training; a report that still says so: the process was killed
    FINISHED = "finished"  # `fit` returned (also when a "stop" response ended it early)
    INTERRUPTED = "interrupted"  # Ctrl+C or SIGTERM
    FAILED = "failed"  # an exception ended training


VanishingResponse = Literal["warn", "raise", "stop", "ignore"]
ExplodingResponse = Literal["warn", "raise", "stop", "skip", "clip", "ignore"]
NonfiniteResponse = Literal["warn", "raise", "stop", "skip", "ignore"]

#: the colour of a healthy layer in the gradient-flow picture
OK_COLOUR = "#4C72B0"

#: what an alert's warning adds about its response ({argument}: the kind's ``on_<kind>``); a kind may say more
ACTIONS: Mapping[Response, str] = {
    Response.STOP: 'GradWatch stops training after this step ({argument}="stop"); this step\'s update is skipped.',
    Response.SKIP: 'GradWatch skips the updates of such steps ({argument}="skip").',
}
#: ... an explosion's: which of its steps "skip" drops (``Verdict.beyond``), and what "clip" holds them to
EXPLODING_ACTIONS: Mapping[Response, str] = {
    Response.SKIP: (
        "GradWatch skips this step's update, and those of the steps after it that are spikes or, while the explosion"
        " lasts, `exploding_jump_factor` times beyond the largest ordinary norm before it"
        ' ({argument}="skip").'
    ),
    Response.CLIP: (
        "GradWatch clips spike steps to the spike threshold, and the steps of this episode to the largest ordinary"
        ' norm before it ({argument}="clip").'
    ),
}


@dataclass(frozen=True)
class KindSpec:
    """Everything the package knows about one alert kind.

    Attributes:
        kind: the kind.
        responses: the ``Literal`` type of its ``on_<kind>`` argument (its values, in order, are the allowed
            responses).
        default: the argument's default response.
        drops: responses that keep the update of every affected step out of the weights (not only the alerted one).
        health: its health word.
        colour: its colour in the gradient-flow picture.
        severity: its rank when several hold at once (0 first): a step both non-finite and exploding is non-finite.
        remedies: the hints for ``(traits, cause)``, most specific first.
        actions: what an alert's warning says a response does, where the kind says more than :data:`ACTIONS`.
    """

    kind: AlertKind
    responses: Any
    default: Response
    drops: frozenset[Response]
    health: Health
    colour: str
    severity: int
    remedies: Callable[[ModelTraits, Cause | str | None], list[str]]
    actions: Mapping[Response, str] = field(default_factory=dict)

    @property
    def argument(self) -> str:
        """The ``GradWatch`` argument choosing its response (``on_exploding``)."""
        return f"on_{self.kind.value}"

    @property
    def choices(self) -> tuple[Response, ...]:
        """The responses its argument allows, in the order of its ``Literal`` type."""
        return tuple(Response(r) for r in get_args(self.responses))

    def says(self, response: Response) -> str | None:
        """What an alert's warning adds about ``response`` (``None``: nothing, as for "warn"), its argument named."""
        action = self.actions.get(response, ACTIONS.get(response))
        return None if action is None else action.format(argument=self.argument)


#: The table of alert kinds, in the order of ``GradWatch``'s ``on_<kind>`` arguments.
KINDS: Mapping[AlertKind, KindSpec] = {
    AlertKind.VANISHING: KindSpec(
        AlertKind.VANISHING,
        VanishingResponse,
        default=Response.WARN,
        drops=frozenset(),
        health=Health.VANISHING,
        colour="#DD8452",
        severity=2,
        remedies=vanishing_remedies,
    ),
    AlertKind.EXPLODING: KindSpec(
        AlertKind.EXPLODING,
        ExplodingResponse,
        default=Response.WARN,
        drops=frozenset({Response.SKIP}),
        health=Health.EXPLODING,
        colour="#C44E52",
        severity=1,
        remedies=exploding_remedies,
        actions=EXPLODING_ACTIONS,
    ),
    AlertKind.NONFINITE: KindSpec(
        AlertKind.NONFINITE,
        NonfiniteResponse,
        default=Response.STOP,
        drops=frozenset({Response.SKIP, Response.STOP, Response.RAISE}),
        health=Health.NONFINITE,
        colour="#8172B3",
        severity=0,
        remedies=nonfinite_remedies,
    ),
}


def kind_spec(kind: AlertKind | str) -> KindSpec:
    """The table's entry for ``kind`` (a member or its value).

    Raises:
        ValueError: for a kind the table does not know.
    """
    return KINDS[AlertKind(kind)]


def by_severity() -> tuple[AlertKind, ...]:
    """The kinds, most severe first."""
    return tuple(sorted(KINDS, key=lambda k: KINDS[k].severity))


def health_colours() -> dict[Health, str]:
    """Each health word's colour: healthy, then each kind's, in the order of :class:`Health`."""
    colours = {spec.health: spec.colour for spec in KINDS.values()}
    return {health: colours.get(health, OK_COLOUR) for health in Health}
