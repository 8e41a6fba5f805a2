"""One fit's environment as a plain record, and reading a model's parameters: nothing here knows Lightning.

An adapter (the Lightning callback, or a plain loop) fills an :class:`Environment` once per fit; the engine reads
only that record. The helpers name an optimizer's parameters after the module that owns them (without the parts
wrappers add) and find the parameters exempt from the per-layer vanishing test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor
from torch.nn.utils.parametrize import is_parametrized

from lightning_gradwatch.measure.layers import tensor_name, watched_parameters
from lightning_gradwatch.remedies import ModelTraits

__all__ = [
    "HISTOGRAMS_PER_LOG",
    "LIGHTNING_LOG_EVERY",
    "MIN_POINTS",
    "MIN_POINTS_UNDER_BUDGET",
    "Environment",
    "cadence_for_length",
    "check_selection",
    "clean_name",
    "exempt_parameters",
    "histogram_interval",
    "inner_optimizer",
    "named_parameters",
    "optimizer_class_name",
    "scale_of",
]

_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

#: a run of known length gets at least this many scalar points when the scalar interval is left to GradWatch
MIN_POINTS = 100
#: however tight the overhead budget, such a run keeps at least this many scalar points
MIN_POINTS_UNDER_BUDGET = 25
#: the Trainer's ``log_every_n_steps`` when none is given: taken as "not chosen", and shortened on short runs
LIGHTNING_LOG_EVERY = 50
#: histograms, when their interval is not given, come at this many times the scalar interval
HISTOGRAMS_PER_LOG = 4


@dataclass(frozen=True)
class Environment:
    """One fit's environment: ranks, schedule, output directory, shard group, loss scaler, model traits.

    Attributes:
        is_global_zero: this process writes the logs and the report.
        world_size: processes taking part (decisions are reduced across them when more than one).
        log_every: scalar interval, in optimizer steps.
        hist_every: histogram interval, in optimizer steps (0: none).
        log_widest: the widest an overhead budget may spread ``log_every`` to (0: ``log_every`` is fixed).
        run_steps: the run's length in optimizer steps, when known (0: unknown).
        log_dir: where ``gradwatch.json`` goes (``None``: nowhere).
        plain_group: the process group plain-tensor gradients are sharded over (FSDP1), else ``None``.
        scaler: the fp16 loss scaler, when one is enabled.
        traits: what the model looks like, for remedy hints.
    """

    is_global_zero: bool = True
    world_size: int = 1
    log_every: int = LIGHTNING_LOG_EVERY
    hist_every: int = HISTOGRAMS_PER_LOG * LIGHTNING_LOG_EVERY
    log_widest: int = 0
    run_steps: int = 0
    log_dir: str | None = None
    plain_group: Any = None
    scaler: Any = None
    traits: ModelTraits = field(default_factory=ModelTraits)


def histogram_interval(log_every: int, histogram_every_n_steps: int | None) -> int:
    """The histogram interval: as given, else :data:`HISTOGRAMS_PER_LOG` times the scalar interval."""
    return HISTOGRAMS_PER_LOG * log_every if histogram_every_n_steps is None else histogram_every_n_steps


def clean_name(name: str) -> str:
    """A parameter or module name without the parts wrappers add (FSDP1, activation checkpointing, compile).

    Example:
        >>> clean_name("1._checkpoint_wrapped_module.0.weight")
        '1.0.weight'
        >>> clean_name("_orig_mod.encoder._fsdp_wrapped_module.fc.bias")
        'encoder.fc.bias'
    """
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def named_parameters(module: Any, optimizer: Any, index: int) -> list[tuple[str, Tensor]]:
    """The optimizer's parameters with the module's cleaned names, in the module's order.

    Parameters the module does not own (an optimizer built over extra tensors) are named
    ``optimizer_<index>.param_<k>``.
    """
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    named = [(clean_name(n), p) for n, p in module.named_parameters() if id(p) in in_optimizer]
    known = {id(p) for _, p in named}
    extra = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in known]
    return named + [(f"optimizer_{index}.param_{i}", p) for i, p in enumerate(extra)]


def inner_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside Lightning's (``_optimizer``) and Fabric's (``optimizer``) wrappers, or itself."""
    for _ in range(4):
        inner = getattr(optimizer, "_optimizer", None) or getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer or not hasattr(inner, "param_groups"):
            break
        optimizer = inner
    return optimizer


#: where optimizers that step another one keep it (``ZeroRedundancyOptimizer.optim``, timm's ``Lookahead``): the
#: inner one decides how each step is sized
_STEPPED_BY = ("optim", "base_optimizer", "_base_optimizer")


def optimizer_class_name(optimizer: Any) -> str:
    """The class name of the optimizer that sizes the steps, inside Lightning's and Fabric's wrappers (``"AdamW"``).

    An optimizer that steps another one (``ZeroRedundancyOptimizer(optimizer_class=Adam)``, timm's ``Lookahead``) is
    named by the one it steps.

    Example:
        >>> import torch
        >>> optimizer_class_name(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
        'SGD'
    """
    optimizer = inner_optimizer(optimizer)
    for _ in range(4):
        inner = next((getattr(optimizer, a) for a in _STEPPED_BY if hasattr(getattr(optimizer, a, None), "step")), None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner_optimizer(inner)
    return type(optimizer).__name__


def cadence_for_length(
    env: Environment, total: float, histogram_every_n_steps: int | None, keep_interval: bool = False
) -> Environment:
    """The schedule of a run of ``total`` optimizer steps: its length, and its intervals when left to GradWatch.

    The length is kept as ``run_steps`` (a short run's floor of pictures spreads over it). ``env.log_every`` is the
    widest interval (Lightning's default, 50); unless ``keep_interval`` (the user chose the interval), a run too
    short to get :data:`MIN_POINTS` points from it gets a closer one (a 145-step run: every step). An overhead
    budget may spread it out again up to ``log_widest``: never past ``env.log_every``, nor below
    :data:`MIN_POINTS_UNDER_BUDGET` points a run. Histograms follow at four times the scalar interval unless
    ``histogram_every_n_steps`` is given. A length that is not a positive, finite number keeps ``env``.

    Example:
        >>> env = Environment(log_every=50, hist_every=200)
        >>> short = cadence_for_length(env, 145, None)
        >>> short.log_every, short.hist_every, short.log_widest, short.run_steps
        (1, 4, 5, 145)
        >>> long = cadence_for_length(env, 10_000, None)
        >>> long.log_every, long.hist_every, long.log_widest, long.run_steps
        (50, 200, 0, 10000)
        >>> cadence_for_length(env, float("inf"), None) is env
        True
    """
    if not math.isfinite(total) or total <= 0:
        return env
    env = replace(env, run_steps=int(total))
    log_every = max(1, min(env.log_every, int(total // MIN_POINTS)))
    if keep_interval or log_every == env.log_every:
        return env
    hist_every = histogram_interval(log_every, histogram_every_n_steps)
    widest = max(log_every, min(env.log_every, int(total // MIN_POINTS_UNDER_BUDGET)))
    return replace(env, log_every=log_every, hist_every=hist_every, log_widest=widest)


def check_selection(module: Any, include: str | None, exclude: str | None) -> None:
    """Refuse an ``include``/``exclude`` that leaves none of the model's parameters: a watch that watches nothing.

    Such a watch would chart nothing and catch no NaN, and a gate reading its logs would call the run healthy.
    Checked once the model is built (a model with no parameters at all is left to the per-step warning).

    Example:
        >>> import torch
        >>> check_selection(torch.nn.Linear(2, 1), include="weight", exclude=None)
        >>> check_selection(torch.nn.Linear(2, 1), include="^model", exclude=None)
        Traceback (most recent call last):
        ...
        ValueError: `include='^model'` matches none of the model's 2 parameters (weight, bias): ...
    """
    if include is None and exclude is None:
        return
    names = [clean_name(n) for n, _ in module.named_parameters()]
    if not names or watched_parameters(module.named_parameters(), include, exclude)[0]:
        return
    shown = ", ".join(names[:6]) + (f", ... (+{len(names) - 6} more)" if len(names) > 6 else "")
    if include is not None and not watched_parameters(module.named_parameters(), include, None)[0]:
        what = f"`include={include!r}` matches none of the model's {len(names)} parameters ({shown})"
    else:
        given = f"`include={include!r}` and `exclude={exclude!r}`" if include is not None else f"`exclude={exclude!r}`"
        what = f"{given} leaves none of the model's {len(names)} parameters ({shown})"
    raise ValueError(
        f"{what}: GradWatch would watch nothing, chart nothing and catch no NaN/Inf. The patterns are matched with"
        " re.search against the full parameter names above; fix them, or leave both None to watch every parameter."
    )


def exempt_parameters(module: Any, granularity: str) -> set[int]:
    """Ids of the parameters whose gradients are naturally small: normalisation layers' (and biases, per parameter).

    Identified by object, not by name, so wrapper prefixes cannot make the names disagree with the layers'.
    """
    exempt = {id(p) for m in module.modules() if "Norm" in type(m).__name__ for p in _own_parameters(m)}
    if granularity == "parameter":
        exempt.update(id(p) for n, p in module.named_parameters() if tensor_name(n).rsplit(".", 1)[-1] == "bias")
    return exempt


def _own_parameters(module: Any) -> list[Tensor]:
    """A module's own parameters, with those its parametrised tensors are made of (``torch.nn.utils.parametrize``)."""
    own = list(module.parameters(recurse=False))
    if is_parametrized(module):
        own += list(module.parametrizations.parameters())
    return own


def scale_of(scaler: Any) -> float:
    """The loss scaler's current scale (0 when it cannot tell: then only the patience rule applies)."""
    get_scale = getattr(scaler, "get_scale", None)
    try:
        return float(get_scale()) if callable(get_scale) else 0.0
    except (RuntimeError, TypeError, ValueError):
        return 0.0
