"""Module-level (picklable) models for multi-process tests. Each rank writes what it saw to ``out_dir/rank<N>.json``."""

from __future__ import annotations

import json
import os
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from tests.helpers import reference_norms


def dataset(n: int = 256, features: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = x @ torch.linspace(-1, 1, features).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class DistMLP(pl.LightningModule):
    """Regression MLP; ``nan_at`` = (step, rank) injects NaN into that rank's batch only.

    ``sigmoid_depth`` > 0 builds a deep sigmoid stack instead (vanishing gradients). ``loss_offset`` = (step, rank,
    offset) adds a constant to that rank's loss from that step on, multiplied by ``loss_growth`` at each step after
    it: its loss differs, its gradients do not.
    """

    def __init__(
        self,
        batch_size: int = 8,
        nan_at: tuple[int, int] | None = None,
        sigmoid_depth: int = 0,
        lr: float = 0.05,
        fail_at_step: int | None = None,
        loss_offset: tuple[int, int, float] | None = None,
        loss_growth: float = 1.0,
    ) -> None:
        super().__init__()
        self.batch_size, self.nan_at, self.lr, self.fail_at_step = batch_size, nan_at, lr, fail_at_step
        self.loss_offset, self.loss_growth = loss_offset, loss_growth
        if sigmoid_depth:
            layers: list[nn.Module] = []
            for i in range(sigmoid_depth):
                layers += [nn.Linear(8 if i == 0 else 32, 32), nn.Sigmoid()]
            self.net = nn.Sequential(*layers)
        else:
            self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 1)
        self.reference: dict[int, dict[str, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.fail_at_step is not None and self.global_step == self.fail_at_step:
            raise RuntimeError(f"boom at step {self.global_step} on rank {self.global_rank}")
        if self.nan_at is not None and (self.global_step, self.global_rank) == tuple(self.nan_at):
            x = x * float("nan")
        loss = nn.functional.mse_loss(self(x), y)
        if self.loss_offset is not None:
            step, rank, offset = self.loss_offset
            if self.global_step >= step and self.global_rank == rank:
                loss = loss + offset * self.loss_growth ** (self.global_step - step)
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.reference[self.global_step] = reference_norms(self)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        # Lightning's own distributed sampler shuffles training data: interleave instead, so two ranks with batch b
        # see exactly the global batch that one process with batch 2b sees
        data = dataset()
        world = self.trainer.world_size
        sampler = DistributedSampler(data, world, self.global_rank, shuffle=False) if world > 1 else None
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler)


class Recorder(pl.Callback):
    """Writes ``out_dir/rank<N>.json`` on every rank when training ends or dies: the parent process of
    ``ddp_spawn`` keeps no state of the ranks."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.finished = False  # this rank's fit reached on_train_end

    def _dump(self, trainer: Any, pl_module: Any, status: str) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        result = {
            "status": status,
            "global_step": trainer.global_step,
            "finite": all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()),
            "reference": {str(k): v for k, v in getattr(pl_module, "reference", {}).items()},
            "world_size": trainer.world_size,
            "alerts": [[a.kind, a.step, a.extra.get("rule")] for a in _watch(trainer).alerts],
            "losses": _watch(trainer).state_dict().get("detectors", {}).get("0", {}).get("recent_losses"),
        }
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as fh:
            json.dump(result, fh)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._dump(trainer, pl_module, "finished")
        self.finished = True

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # after a fit every rank finished: meet, and tear gloo down before the process exits. A rank that left while
        # its peer's gloo threads still ran aborted that peer at exit (SIGABRT, "terminate called without an active
        # exception", seen under load); ddp_spawn's workers exit without running atexit hooks
        if self.finished and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if type(exception).__name__ == "ProcessRaisedException":
            return  # the ddp_spawn parent relaying a rank's failure: the rank wrote its own record
        self._dump(trainer, pl_module, f"failed: {type(exception).__name__}: {exception}")


def _watch(trainer: Any) -> Any:
    """The Trainer's GradWatch (this rank's own copy)."""
    return next(cb for cb in trainer.callbacks if type(cb).__name__ == "GradWatch")


def read_ranks(out_dir: str, world_size: int = 2) -> list[dict[str, Any]]:
    out = []
    for rank in range(world_size):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as fh:
            out.append(json.load(fh))
    return out
