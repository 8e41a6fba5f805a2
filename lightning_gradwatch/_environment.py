"""Internal. What GradWatch needs to know about a Lightning Trainer, read once per fit into a plain record.

Only public, duck-typed Trainer attributes are read, and Lightning is not imported: the record
(:class:`~lightning_gradwatch.engine.environment.Environment`) is all the engine sees of the Trainer. Besides the
record: the Trainer's own checks, the optimizer's index, agreeing on flags across its processes, its logger's name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lightning_gradwatch.act.actor import agree, averaged
from lightning_gradwatch.engine.environment import (
    LIGHTNING_LOG_EVERY,
    Environment,
    cadence_for_length,
    histogram_interval,
)
from lightning_gradwatch.judge.decision import Flags
from lightning_gradwatch.remedies import ModelTraits

__all__ = [
    "Environment",
    "TrainerHost",
    "check_trainer",
    "instance_namespace",
    "log_name",
    "logger_directory",
    "optimizer_index",
    "probe",
    "reduce_flags",
    "run_cadence",
    "run_directory",
]


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
        hist_every=histogram_interval(log_every, histogram_every_n_steps),
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
    ``trainer.estimated_stepping_batches``, kept as ``run_steps`` whatever the intervals); a run of unknown length
    keeps the Trainer's interval.
    """
    try:
        total = float(trainer.estimated_stepping_batches)
    except Exception:  # an iterable dataset of unknown length, or a Trainer stand-in
        return env
    chosen = log_every_n_steps is not None or env.log_every != LIGHTNING_LOG_EVERY
    return cadence_for_length(env, total, histogram_every_n_steps, keep_interval=chosen)


def optimizer_index(trainer: Any, optimizer: Any) -> tuple[int, int]:
    """``(index of optimizer among the trainer's, number of optimizers)``; a wrapped optimizer is found too."""
    optimizers: Iterable[Any] = getattr(trainer, "optimizers", ()) or ()
    optimizers = list(optimizers)
    for i, opt in enumerate(optimizers):
        if opt is optimizer or getattr(opt, "optimizer", None) is optimizer:
            return i, len(optimizers)
    return 0, max(len(optimizers), 1)


def _log_dir(trainer: Any) -> str | None:
    """Where ``gradwatch.json`` goes: the run's own directory (called on every rank: the answer is rank 0's).

    The first TensorBoard logger's ``log_dir``, else the first logger's that has one (CSV). A logger without one
    (MLflow, W&B: their ``save_dir`` is shared by every run, or ``None`` for a database or a server) gets the
    directory Lightning gives the run's checkpoints: ``<save_dir or default_root_dir>/<name>/<version>``. No
    logger: ``default_root_dir``.
    """
    path = trainer.strategy.broadcast(logger_directory(list(trainer.loggers), trainer.default_root_dir))
    return None if path is None else os.fspath(path)


def logger_directory(loggers: Sequence[Any], root: Any) -> str | None:
    """The run's own directory among ``loggers`` (a Trainer's or Fabric's); ``root`` stands in where they have none.

    The first TensorBoard logger's ``log_dir``, else the first logger's that has one, else :func:`run_directory` of
    the first logger; no logger: ``root`` (``None``: nowhere).
    """
    tensorboard = [lg for lg in loggers if type(lg).__name__ == "TensorBoardLogger"]
    for logger in [*tensorboard, *loggers]:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir is not None:
            return os.fspath(log_dir)
    if loggers:
        return run_directory(loggers[0], root)
    return None if root is None else os.fspath(root)


def run_directory(logger: Any, root: Any) -> str | None:
    """A run's own directory under a logger without one: where Lightning puts the run's checkpoints.

    ``<save_dir>/<name>/<version>`` (``version_<n>`` for a number), under ``root`` when the logger has no
    ``save_dir`` (``None``: neither). MLflow: ``mlruns/<experiment id>/<run id>``; W&B: ``<save_dir>/<project>/<run
    id>``.
    """
    base = getattr(logger, "save_dir", None) or root
    if base is None:
        return None
    version = getattr(logger, "version", None)
    version = version if isinstance(version, str) else f"version_{version if version is not None else 0}"
    return os.path.join(os.fspath(base), str(getattr(logger, "name", None) or "default"), version)


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
    return agree(flags, lambda values: trainer.strategy.reduce(values, reduce_op="sum"), device)


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


class TrainerHost:
    """The engine's :class:`~lightning_gradwatch.act.actor.Host` for a Trainer.

    Flags are reduced over the Trainer's processes, and a stop goes through ``trainer.should_stop``.
    """

    def __init__(self, trainer: Any, env: Environment) -> None:
        self.trainer = trainer
        self.env = env

    def reduce(self, flags: Flags) -> Flags:
        """Every rank takes the same decision."""
        return reduce_flags(self.trainer, self.env, flags)

    def average(self, loss: torch.Tensor | None) -> torch.Tensor | None:
        """The loss averaged over the Trainer's processes (one collective of one number when there are several)."""
        if self.env.world_size <= 1:
            return loss
        strategy = self.trainer.strategy
        device = getattr(strategy, "root_device", torch.device("cpu"))
        return averaged(loss, lambda value: strategy.reduce(value, reduce_op="mean"), device)

    def stop(self) -> None:
        """Training ends after this step (on every rank: the flag was reduced)."""
        self.trainer.should_stop = True

    def held(self) -> str:
        """The Trainer's ``min_steps`` or ``min_epochs`` not yet met after this step (``""``: none).

        Lightning ignores ``should_stop`` until they are.
        """
        loop = self.trainer.fit_loop
        min_steps, min_epochs = getattr(loop, "min_steps", None), getattr(loop, "min_epochs", None)
        held = []
        if min_steps and int(self.trainer.global_step) + 1 < min_steps:
            held.append(f"min_steps={min_steps}")
        if min_epochs and int(loop.epoch_progress.current.processed) < min_epochs:
            held.append(f"min_epochs={min_epochs}")
        return " and ".join(held)
