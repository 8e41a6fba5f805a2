"""Internal. The training loops a :class:`~lightning_gradwatch.loop.WatchedLoop` runs in, as the engine's hosts.

A host tells the engine how the loop's processes agree on flags and how training stops
(:class:`~lightning_gradwatch.act.actor.Host`), and the loop what it needs besides: which process writes, where
output goes, the fp16 loss scaler, and how to unscale gradients before they are measured.

- :class:`LoopHost`: a plain PyTorch loop: one process, or each process of a ``torch.distributed`` job (flags are
  then summed over the world, and global rank 0 writes).
- :class:`FabricHost`: a Lightning Fabric loop: its ranks, loggers, strategy and precision plugin, read duck-typed
  (Lightning is not imported here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_gradwatch._environment import _plain_shard_group, _scaler_enabled, check_trainer, logger_directory
from lightning_gradwatch.act.actor import LocalHost, agree, averaged
from lightning_gradwatch.judge.decision import Flags

__all__ = ["FabricHost", "LoopHost", "check_fabric", "is_fabric", "unscale", "user_module"]


def unscale(unscale_: Callable[[Any], None], optimizer: Any, advice: str) -> None:
    """Unscale the optimizer's gradients in place; a scaler that already did says ``advice`` in its error.

    torch's ``GradScaler`` unscales once between two ``update()`` calls: a second ``unscale_`` means the loop
    unscaled first (its own clipping, measured after GradWatch) or skipped ``update()``, and then the gradients seen
    would be the wrong ones.
    """
    try:
        unscale_(optimizer)
    except RuntimeError as err:  # "unscale_() has already been called on this optimizer since the last update()."
        if "already been called" not in str(err):
            raise
        raise RuntimeError(
            f"The loss scaler had already unscaled this optimizer's gradients when `loop.step` was called. GradWatch"
            f" unscales them itself, before measuring: {advice}"
        ) from err


def user_module(model: nn.Module) -> nn.Module:
    """The user's module inside the wrappers of Fabric, DDP, ``DataParallel`` and ``torch.compile``.

    Layers are named after it, so charts say ``encoder.0``, not ``_forward_module.module.encoder.0``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> user_module(nn.DataParallel(net)) is net
        True
    """
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = model._modules.get("_original_module")  # Fabric's wrapper
        if inner is None and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        if inner is None:
            inner = model._modules.get("_orig_mod")  # torch.compile
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


class LoopHost(LocalHost):
    """A plain PyTorch loop: one process, or each process of a ``torch.distributed`` job.

    Under ``torch.distributed`` (initialized, more than one process) every process must call ``loop.step`` at each
    step: the flags are summed over the world so all of them drop, stop or raise together, and global rank 0 writes.

    Args:
        scaler: the loop's enabled fp16 loss scaler (``torch.amp.GradScaler``), or ``None``.
    """

    def __init__(self, scaler: Any = None) -> None:
        super().__init__()
        self.scaler = scaler
        self.loggers: list[Any] = []
        self.plain_group: Any = None
        self.log_name = "lightning_gradwatch"  # the Python logger of GradWatch's messages
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world_size = dist.get_world_size() if distributed else 1
        self.is_global_zero = dist.get_rank() == 0 if distributed else True

    def log_dir(self) -> str | None:
        """Where the loop's own loggers write (a plain loop has none)."""
        return None

    def reduce(self, flags: Flags) -> Flags:
        """The flags every process agrees on (one all-reduce of six numbers under ``torch.distributed``)."""
        if self.world_size <= 1:
            return flags
        return agree(flags, _summed, _device())

    def average(self, loss: Tensor | None) -> Tensor | None:
        """The loss averaged over the world (one all-reduce of one number under ``torch.distributed``)."""
        if self.world_size <= 1:
            return loss
        world = self.world_size
        return averaged(loss, lambda value: _summed(value) / world, _device())

    def unscale(self, optimizer: Any) -> None:
        """Unscale the optimizer's gradients in place when the loop scales its loss (``scaler.unscale_``)."""
        if self.scaler is not None:
            advice = (
                "call `loop.step(...)` before your own `scaler.unscale_(optimizer)` or clipping, and"
                " `scaler.update()` at every step, also when `loop.step` returned False."
            )
            unscale(self.scaler.unscale_, optimizer, advice)

    def dropped(self, optimizer: Any) -> None:
        """The step's update was dropped. A plain loop calls ``scaler.update()`` itself, every step."""


def _device() -> torch.device:
    """Where the world's collectives want their tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _summed(values: Tensor) -> Tensor:
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def is_fabric(obj: Any) -> bool:
    """Whether ``obj`` is a Lightning ``Fabric`` (from ``lightning.fabric`` or ``lightning_fabric``)."""
    return any(
        cls.__name__ == "Fabric" and cls.__module__.startswith(("lightning.fabric", "lightning_fabric"))
        for cls in type(obj).__mro__
    )


def check_fabric(fabric: Any, clip: Any, on_exploding: str) -> None:
    """Refuse what is not a Fabric, and what GradWatch cannot watch under one (DeepSpeed), as for a Trainer."""
    if not is_fabric(fabric):
        raise TypeError(
            f"`fabric` must be a `lightning.fabric.Fabric`, got {type(fabric).__name__}. For a plain PyTorch loop,"
            " leave it out: `watch.loop(model, log_dir=...)`."
        )
    check_trainer(fabric, clip=clip, on_exploding=on_exploding)  # reads `strategy` (and no gradient_clip_val)


class FabricHost(LoopHost):
    """A Lightning Fabric loop: Fabric's ranks, loggers and precision plugin.

    Flags are summed over Fabric's processes with its strategy's ``all_reduce``; fp16 gradients are unscaled
    through the precision plugin, and the scaler is updated on a dropped step (Fabric updates it in
    ``optimizer.step()``, which the loop then does not call).
    """

    def __init__(self, fabric: Any) -> None:
        LocalHost.__init__(self)
        self.fabric = fabric
        self.is_global_zero = bool(fabric.is_global_zero)
        self.world_size = int(fabric.world_size)
        self.loggers = list(fabric.loggers)
        root = "lightning.fabric" if type(fabric).__module__.startswith("lightning.fabric") else "lightning_fabric"
        self.log_name = f"{root}.gradwatch"  # under Fabric's logger, whose INFO messages are shown
        self.plain_group = _plain_shard_group(fabric)
        scaler = getattr(getattr(fabric.strategy, "precision", None), "scaler", None)
        self.scaler = scaler if scaler is not None and _scaler_enabled(scaler) else None

    def log_dir(self) -> str | None:
        """The first TensorBoard logger's ``log_dir``, else the first logger's that has one.

        Else, under a logger without one, ``<save_dir>/<name>/<version>`` (``None``: no logger, or no ``save_dir``).
        """
        return logger_directory(self.loggers, None)

    def reduce(self, flags: Flags) -> Flags:
        """The flags every process agrees on (one all-reduce of six numbers when there are several)."""
        if self.world_size <= 1:
            return flags
        strategy = self.fabric.strategy
        return agree(flags, lambda values: strategy.all_reduce(values, reduce_op="sum"), self.fabric.device)

    def average(self, loss: Tensor | None) -> Tensor | None:
        """The loss averaged over Fabric's processes (one all-reduce of one number when there are several)."""
        if self.world_size <= 1:
            return loss
        strategy = self.fabric.strategy
        return averaged(loss, lambda value: strategy.all_reduce(value, reduce_op="mean"), self.fabric.device)

    def unscale(self, optimizer: Any) -> None:
        """Unscale through the precision plugin (on the optimizer Fabric wraps, as ``fabric.clip_gradients``)."""
        if self.scaler is not None:
            inner = getattr(optimizer, "optimizer", optimizer)
            advice = "call `loop.step(...)` before `fabric.clip_gradients(...)`."
            unscale(self.fabric.strategy.precision.unscale_gradients, inner, advice)

    def dropped(self, optimizer: Any) -> None:
        """Update the scaler, as Fabric's ``optimizer.step()`` would have (its scale halves after an overflow)."""
        if self.scaler is not None:
            self.scaler.update()
