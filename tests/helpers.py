"""Small real models and readers shared by the tests."""

from __future__ import annotations

import glob
import importlib
import io
import os
from collections.abc import Collection
from typing import Any

import numpy as np
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


def _run_starts(changes: np.ndarray, length: int) -> list[int]:
    """Where runs of equal pixels start, ignoring the one-pixel seams of antialiased edges."""
    starts = [0]
    for i in np.flatnonzero(changes) + 1:
        if i - starts[-1] >= 2 and length - i >= 2:
            starts.append(int(i))
    return starts


def _lines(dark: np.ndarray) -> list[int]:
    """The positions of the long dark lines along an axis of ``dark`` (one per group of neighbouring pixels)."""
    long = np.flatnonzero(dark >= 0.6 * dark.max())
    return [int(g[0]) for g in np.split(long, np.flatnonzero(np.diff(long) > 1) + 1)]


def heatmap_cells(png: bytes) -> list[list[bool]]:
    """The cells of a ``gradwatch/gradient_heatmap`` picture, decoded: per row (top first), per column, whether the
    cell is blank (no value), found from the pixels of the image itself.

    The heat map is framed by the first two long vertical dark lines from the left (its axes; the colour bar's
    frame comes next) and the first and last long horizontal ones between them. Rows and columns are where the
    colour changes (adjacent cells of exactly the same colour in every row, or column, would count as one: real
    gradient norms do not do that).
    """
    from matplotlib import image

    img = image.imread(io.BytesIO(png), format="png")[..., :3]
    dark = img.max(-1) < 0.35
    left, right = _lines(dark.sum(0))[:2]
    rows = _lines(dark[:, left : right + 1].sum(1))
    area = img[rows[0] + 3 : rows[-1] - 1, left + 3 : right - 1]  # inside the frame and its antialiased edges
    ys = _run_starts(np.abs(np.diff(area, axis=0)).max(axis=(1, 2)) > 1e-3, area.shape[0])
    xs = _run_starts(np.abs(np.diff(area, axis=1)).max(axis=(0, 2)) > 1e-3, area.shape[1])
    return [[bool(area[y + 1, x + 1].min() > 0.99) for x in xs] for y in ys]


def flow_bars(png: bytes) -> list[bool]:
    """The layers' places in a ``gradwatch/gradient_flow`` picture, decoded: per tick of the x axis (left to right),
    whether a bar stands on it.

    The axes are framed by the first two long vertical dark lines from the left and, between them, the last long
    horizontal one (the x axis); its tick marks hang below it, and a bar is coloured pixels right above it.
    """
    from matplotlib import image

    img = image.imread(io.BytesIO(png), format="png")[..., :3]
    dark = img.max(-1) < 0.35
    left, right = _lines(dark.sum(0))[:2]
    bottom = _lines(dark[:, left : right + 1].sum(1))[-1]
    below = np.flatnonzero(dark[bottom + 3, left + 2 : right - 1]) + left + 2
    ticks = [int(g.mean()) for g in np.split(below, np.flatnonzero(np.diff(below) > 1) + 1) if len(g)]
    coloured = (img.max(-1) - img.min(-1)) > 0.08
    return [bool(coloured[bottom - 3, x]) for x in ticks]
