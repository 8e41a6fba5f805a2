"""Small real models and readers shared by the tests."""

from __future__ import annotations

import glob
import importlib
import os
from collections.abc import Collection
from typing import Any

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FLAVOURS = ("lightning.pytorch", "pytorch_lightning")


def flavour(name: str) -> Any:
    """The Lightning flavour module (``lightning.pytorch`` or ``pytorch_lightning``)."""
    return importlib.import_module(name)


def regression_data(n: int = 256, features: int = 8, seed: int = 0, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = x @ torch.linspace(-1, 1, features).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def make_mlp_module(pl: Any, **kwargs: Any) -> Any:
    """A LightningModule subclass of the given flavour (built per flavour so the Trainer accepts it)."""

    class MLP(pl.LightningModule):
        """``net.0 -> ReLU -> net.2 -> ReLU -> head`` regression model that records float64 reference norms."""

        def __init__(
            self,
            hidden: int = 32,
            lr: float = 0.05,
            optimizer: str = "sgd",
            fail_at_step: int | None = None,
            nan_at_step: int | Collection[int] | None = None,
            batches: int = 256,
            batch_size: int = 16,
            freeze_first: bool = False,
            record: bool = True,
        ) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
            self.head = nn.Linear(hidden, 1)
            if freeze_first:
                self.net[0].requires_grad_(False)
            self.lr, self.optimizer_name = lr, optimizer
            self.fail_at_step, self.nan_at_step = fail_at_step, nan_at_step
            self.n, self.batch_size, self.record = batches, batch_size, record
            self.reference: dict[int, dict[str, float]] = {}
            self.post_grads: dict[int, torch.Tensor] = {}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.net(x))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.fail_at_step is not None and self.global_step == self.fail_at_step:
                raise RuntimeError(f"boom at step {self.global_step}")
            x, y = batch
            nan_steps = {self.nan_at_step} if isinstance(self.nan_at_step, int) else set(self.nan_at_step or ())
            if self.global_step in nan_steps:
                x = x * float("nan")
            return nn.functional.mse_loss(self(x), y)

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            # runs right after the callbacks' hook, before Lightning's own clipping: same gradients
            if not self.record:
                return
            self.reference[self.global_step] = reference_norms(self)
            grads = [p.grad.flatten() for p in self.parameters() if p.grad is not None]
            if grads:
                self.post_grads[self.global_step] = torch.cat(grads).double()

        def configure_optimizers(self) -> Any:
            params = [p for p in self.parameters() if p.requires_grad]
            if self.optimizer_name == "adam":
                return torch.optim.Adam(params, lr=self.lr)
            return torch.optim.SGD(params, lr=self.lr)

        def train_dataloader(self) -> DataLoader:
            return regression_data(self.n, batch_size=self.batch_size)

    return MLP(**kwargs)


def reference_norms(module: nn.Module, granularity: str = "module") -> dict[str, float]:
    """Independent float64 per-layer and total gradient norms (``"__total__"``)."""
    sq: dict[str, float] = {}
    for name, p in module.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.to_dense() if p.grad.is_sparse else p.grad
        layer = name if granularity == "parameter" else (name.rpartition(".")[0] or name)
        magnitude = g.abs() if g.is_complex() else g
        sq[layer] = sq.get(layer, 0.0) + float(magnitude.double().pow(2).sum())
    out = {k: v**0.5 for k, v in sq.items()}
    out["__total__"] = sum(sq.values()) ** 0.5
    return out


def trainer_kwargs(tmp_path: os.PathLike[str], **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "default_root_dir": os.fspath(tmp_path),
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    kwargs.update(overrides)
    return kwargs


def events(log_dir: os.PathLike[str] | str) -> EventAccumulator:
    """Every scalar, histogram, text and tensor event of a run directory, read back from disk."""
    files = glob.glob(os.path.join(os.fspath(log_dir), "events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    acc = EventAccumulator(os.fspath(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}
