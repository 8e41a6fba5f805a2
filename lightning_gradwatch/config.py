"""One source of configuration: each setting's default and check, written once, in small frozen groups.

``GradWatch``'s flat, typed arguments (which LightningCLI reads from its signature) take their defaults from these
groups, and a test holds the signature against them: every argument is a field of one group, with the same default
and type. The groups:

- :class:`ResponseConfig`: ``on_vanishing``, ``on_exploding``, ``on_nonfinite`` (defaults from the table of kinds);
- :class:`ClipConfig`: ``clip`` and the adaptive threshold's ``clip_zscore``, ``clip_warmup_steps``,
  ``clip_max_norm``;
- :class:`MeasureConfig`: which parameters are watched and how they are measured (``granularity``, ``include``,
  ``exclude``, ``histogram_bins``, ``histogram_sample_size``, ``max_layers``), and ``amp_overflow_patience``;
- :class:`ScheduleConfig`: ``log_every_n_steps``, ``histogram_every_n_steps``;
- :class:`OutputConfig`: ``progress_bar``, ``images``, ``overhead_budget``;
- ``DetectionConfig`` (in ``detectors``): the detection rules' thresholds, some of them arguments.

Each field is declared with :func:`setting`: its default, its check (a wrong type raises ``TypeError``, a wrong value
``ValueError``), and whether ``GradWatch`` takes it as an argument (the documentation of each is ``GradWatch``'s).

Example:
    >>> ClipConfig(clip="adaptive").clip_zscore
    3.0
    >>> MeasureConfig(max_layers=0)
    Traceback (most recent call last):
    ...
    ValueError: `max_layers` must be >= 1, got 0
    >>> ResponseConfig(on_exploding="skip").response("exploding")
    <Response.SKIP: 'skip'>
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Literal, Union

from lightning_gradwatch._validation import (
    Check,
    Granularity,
    check_bool,
    check_budget,
    check_clip,
    check_pattern,
    choice,
    integer,
    number,
)
from lightning_gradwatch.kinds import (
    KINDS,
    AlertKind,
    ExplodingResponse,
    NonfiniteResponse,
    Response,
    VanishingResponse,
    kind_spec,
)

__all__ = [
    "ClipConfig",
    "ConfigGroup",
    "MeasureConfig",
    "OutputConfig",
    "ResponseConfig",
    "ScheduleConfig",
    "setting",
]


def setting(default: Any, check: Check, *, argument: bool = True) -> Any:
    """A configuration field: its default (the one place it is written), its check, and whether it is an argument.

    Args:
        default: the default value (an immutable one).
        check: ``check(name, value)`` raises ``TypeError`` or ``ValueError`` for a value it refuses.
        argument: ``GradWatch`` takes it as an argument of the same name (else it is a constant of the rules,
            documented and settable on the configuration object only).
    """
    return field(default=default, metadata={"check": check, "argument": argument})


class ConfigGroup:
    """Base of the configuration dataclasses: checks every field on construction; plain values; argument names."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            if check is not None:
                check(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        """Plain values, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def settings(cls) -> tuple[Field[Any], ...]:
        """The fields declared with :func:`setting`."""
        return tuple(f for f in fields(cls) if "check" in f.metadata)  # type: ignore[arg-type]

    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        """The fields ``GradWatch`` takes as arguments."""
        return tuple(f.name for f in cls.settings() if f.metadata["argument"])


def _default(kind: AlertKind) -> Any:
    return KINDS[kind].default.value


@dataclass(frozen=True)
class ResponseConfig(ConfigGroup):
    """What GradWatch does about each kind of alert (``GradWatch``'s ``on_<kind>`` arguments)."""

    on_vanishing: VanishingResponse = setting(_default(AlertKind.VANISHING), choice(VanishingResponse))
    on_exploding: ExplodingResponse = setting(_default(AlertKind.EXPLODING), choice(ExplodingResponse))
    on_nonfinite: NonfiniteResponse = setting(_default(AlertKind.NONFINITE), choice(NonfiniteResponse))

    def response(self, kind: AlertKind | str) -> Response:
        """The response chosen for ``kind``."""
        return Response(getattr(self, kind_spec(kind).argument))


@dataclass(frozen=True)
class ClipConfig(ConfigGroup):
    """Clipping: none, a fixed maximum norm, or the adaptive threshold and its settings."""

    clip: Union[float, Literal["adaptive"], None] = setting(None, check_clip)
    clip_zscore: float = setting(3.0, number())
    clip_warmup_steps: int = setting(25, integer(minimum=0))
    clip_max_norm: float | None = setting(None, number(optional=True))

    ADAPTIVE: ClassVar[str] = "adaptive"

    @property
    def adaptive(self) -> bool:
        """Whether the threshold is learnt (``clip="adaptive"``)."""
        return self.clip == self.ADAPTIVE

    @property
    def fixed(self) -> float | None:
        """The fixed maximum norm, when one is set."""
        return None if self.clip is None or self.adaptive else float(self.clip)


@dataclass(frozen=True)
class MeasureConfig(ConfigGroup):
    """Which parameters are watched, how layers are formed and histograms sampled, and fp16 overflow patience."""

    granularity: Granularity = setting("module", choice(Granularity))
    include: str | None = setting(None, check_pattern)
    exclude: str | None = setting(None, check_pattern)
    histogram_bins: int = setting(64, integer(minimum=1))
    histogram_sample_size: int = setting(4096, integer(minimum=1))
    max_layers: int | None = setting(256, integer(minimum=1, optional=True))
    amp_overflow_patience: int = setting(20, integer(minimum=1))


@dataclass(frozen=True)
class ScheduleConfig(ConfigGroup):
    """How often scalars and histograms are written (``None``: chosen from the Trainer and the run length)."""

    log_every_n_steps: int | None = setting(None, integer(minimum=1, optional=True))
    histogram_every_n_steps: int | None = setting(None, integer(minimum=0, optional=True))


@dataclass(frozen=True)
class OutputConfig(ConfigGroup):
    """The progress bar items, the pictures, and the overhead budget."""

    progress_bar: bool = setting(True, check_bool)
    images: bool = setting(True, check_bool)
    overhead_budget: float | None = setting(0.03, check_budget)
