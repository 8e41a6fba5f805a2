"""Internal. What GradWatch needs to know about the Trainer, read once per fit into a plain record.

Only public, duck-typed Trainer attributes are read, and Lightning is not imported: the record is all the rest of
the package sees of the Trainer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_gradwatch.alerts import ModelTraits

if TYPE_CHECKING:
    from lightning_gradwatch._engine import Flags

__all__ = [
    "HISTOGRAMS_PER_LOG",
    "LIGHTNING_LOG_EVERY",
    "MIN_POINTS",
    "MIN_POINTS_UNDER_BUDGET",
    "Environment",
    "check_trainer",
    "clean_name",
    "exempt_parameters",
    "instance_namespace",
    "log_name",
    "named_parameters",
    "optimizer_index",
    "probe",
    "reduce_flags",
    "run_cadence",
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
    log_dir: str | None = None
    plain_group: Any = None
    scaler: Any = None
    traits: ModelTraits = field(default_factory=ModelTraits)


def probe(
    trainer: Any, pl_module: Any, log_every_n_steps: int | None, histogram_every_n_steps: int | None
) -> Environment:
    """Read the environment of a fit from its Trainer (every rank calls this: the log directory may broadcast)."""
    trainer_every = int(getattr(trainer, "log_every_n_steps", LIGHTNING_LOG_EVERY) or LIGHTNING_LOG_EVERY)
    log_every = log_every_n_steps or max(trainer_every, 1)
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return Environment(
        is_global_zero=bool(trainer.is_global_zero),
        world_size=int(trainer.world_size),
        log_every=log_every,
        hist_every=_histogram_interval(log_every, histogram_every_n_steps),
        log_dir=_log_dir(trainer),
        plain_group=_plain_shard_group(trainer),
        scaler=scaler if scaler is not None and _scaler_enabled(scaler) else None,
        traits=ModelTraits.from_module(pl_module),
    )


def run_cadence(
    env: Environment, trainer: Any, log_every_n_steps: int | None, histogram_every_n_steps: int | None
) -> Environment:
    """The schedule for a run of known length, when the scalar interval was left to GradWatch.

    A Trainer left at Lightning's default interval (50) gives the widest interval; a shorter run gets a closer one,
    so that it has at least :data:`MIN_POINTS` points on its charts (a 145-step run: every step, where 50 would give
    it 3). Any other Trainer ``log_every_n_steps`` is taken as chosen, and kept. Histograms follow at four times
    the scalar interval unless set. An overhead budget may spread such a chosen interval out again, up to
    ``log_widest``: never past the Trainer's, nor so far that the run has fewer than
    :data:`MIN_POINTS_UNDER_BUDGET` points. Called once the training data is loaded (the run's length is
    ``trainer.estimated_stepping_batches``); a run of unknown length keeps the Trainer's interval.
    """
    if log_every_n_steps is not None or env.log_every != LIGHTNING_LOG_EVERY:
        return env
    try:
        total = float(trainer.estimated_stepping_batches)
    except Exception:  # an iterable dataset of unknown length, or a Trainer stand-in
        return env
    if not math.isfinite(total) or total <= 0:
        return env
    log_every = max(1, min(env.log_every, int(total // MIN_POINTS)))
    if log_every == env.log_every:
        return env
    hist_every = _histogram_interval(log_every, histogram_every_n_steps)
    widest = max(log_every, min(env.log_every, int(total // MIN_POINTS_UNDER_BUDGET)))
    return replace(env, log_every=log_every, hist_every=hist_every, log_widest=widest)


def _histogram_interval(log_every: int, histogram_every_n_steps: int | None) -> int:
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


def exempt_parameters(module: Any, granularity: str) -> set[int]:
    """Ids of the parameters whose gradients are naturally small: normalisation layers' (and biases, per parameter).

    Identified by object, not by name, so wrapper prefixes cannot make the names disagree with the layers'.
    """
    exempt = {id(p) for m in module.modules() if "Norm" in type(m).__name__ for p in m.parameters(recurse=False)}
    if granularity == "parameter":
        exempt.update(id(p) for n, p in module.named_parameters() if n.rsplit(".", 1)[-1] == "bias")
    return exempt


def optimizer_index(trainer: Any, optimizer: Any) -> tuple[int, int]:
    """``(index of optimizer among the trainer's, number of optimizers)``; a wrapped optimizer is found too."""
    optimizers: Iterable[Any] = getattr(trainer, "optimizers", ()) or ()
    optimizers = list(optimizers)
    for i, opt in enumerate(optimizers):
        if opt is optimizer or getattr(opt, "optimizer", None) is optimizer:
            return i, len(optimizers)
    return 0, max(len(optimizers), 1)


def _log_dir(trainer: Any) -> str | None:
    """Where ``gradwatch.json`` goes: the first TensorBoard logger's ``log_dir``, else ``trainer.log_dir``."""
    fallback = trainer.log_dir  # broadcasts: called on every rank
    for logger in trainer.loggers:
        if type(logger).__name__ == "TensorBoardLogger":
            return os.fspath(logger.log_dir)
    return os.fspath(fallback) if fallback is not None else None


def _plain_shard_group(trainer: Any) -> Any:
    """The process group of plain-tensor gradient shards: the world under Lightning's FSDPStrategy (FSDP1).

    FSDP1 with ``use_orig_params=True`` leaves plain tensors holding each rank's slice; everything else needs no
    group (DTensors carry their own, and DDP gradients are whole).
    """
    if not any(cls.__name__ == "FSDPStrategy" for cls in type(trainer.strategy).__mro__):
        return None
    import torch.distributed as dist

    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None


def _scaler_enabled(scaler: Any) -> bool:
    is_enabled = getattr(scaler, "is_enabled", None)
    return bool(is_enabled()) if callable(is_enabled) else True


def check_trainer(trainer: Any, clip: Any, on_exploding: str) -> None:
    """Refuse what GradWatch cannot watch (DeepSpeed) or would do twice (clipping with ``gradient_clip_val``)."""
    strategy_name = type(trainer.strategy).__name__
    if "DeepSpeed" in strategy_name:
        raise RuntimeError(
            f"GradWatch does not support {strategy_name}: DeepSpeed ZeRO keeps gradients in its own partitioned"
            " buffers and leaves `param.grad` empty, so every norm would read as zero. Use DDP, FSDP"
            " (`FSDPStrategy`) or `ModelParallelStrategy` (FSDP2), or remove GradWatch from this run."
        )
    if (clip is not None or on_exploding == "clip") and getattr(trainer, "gradient_clip_val", None):
        raise ValueError(
            f"GradWatch(clip={clip!r}, on_exploding={on_exploding!r}) clips gradients, and so does"
            f" Trainer(gradient_clip_val={trainer.gradient_clip_val!r}): use one of them. GradWatch's clipping"
            ' logs the norm before and after and can learn its threshold (clip="adaptive").'
        )


def reduce_flags(trainer: Any, env: Environment, flags: Flags) -> Flags:
    """Every rank takes the same decision: a flag raised on any rank holds on all of them."""
    if env.world_size <= 1:
        return flags
    device = getattr(trainer.strategy, "root_device", torch.device("cpu"))
    values = torch.tensor([float(flags.skip), float(flags.stop), float(flags.fail)], device=device)
    skip, stop, fail = (v > 0 for v in trainer.strategy.reduce(values, reduce_op="sum").tolist())
    return replace(flags, skip=skip, stop=stop, fail=fail)


def log_name(trainer: Any) -> str:
    """The logger GradWatch's messages go to: under the Trainer's own package, whose INFO messages are shown."""
    module = type(trainer).__module__
    root = "lightning.pytorch" if module.startswith("lightning.pytorch") else module.split(".")[0]
    known = root in ("lightning.pytorch", "pytorch_lightning")
    return f"{root}.callbacks.gradwatch" if known else "lightning_gradwatch"


def instance_namespace(callback: Any, callbacks: Any) -> str:
    """``""`` for the first callback of its class in the Trainer, ``"gradwatch-N"`` for the N-th: its own run."""
    peers = [cb for cb in callbacks if isinstance(cb, type(callback))]
    index = next(i for i, p in enumerate(peers) if p is callback)
    return "" if index == 0 else f"gradwatch-{index + 1}"
