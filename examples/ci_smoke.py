"""A training smoke test for CI, configured from YAML with LightningCLI.

The GradWatch alert policy lives in ``ci_smoke.yaml`` (``trainer.callbacks``): raise on non-finite gradients, stop
on exploding ones, warn on vanishing ones. A ``GradientAlertError`` ends the script with a non-zero exit code and
the alert in its message, so any CI runner fails the job; ``gradwatch check`` then reads the run's logs for a
readable summary (or for the alerts that only warned).

    python examples/ci_smoke.py fit --config examples/ci_smoke.yaml
    python examples/ci_smoke.py fit --config examples/ci_smoke.yaml --model.nan_at_step 20   # fails, exit 1
    gradwatch check runs/ci_smoke --format github
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SmokeModel(LightningModule):
    """A small classifier on synthetic data; ``nan_at_step`` injects a NaN batch to show a failing job.

    Args:
        hidden: width of the hidden layers.
        lr: learning rate of the Adam optimizer.
        nan_at_step: optimizer step whose batch is replaced by NaN (``None``: never).
    """

    def __init__(self, hidden: int = 64, lr: float = 1e-3, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3)
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.hparams.nan_at_step is not None and self.global_step == self.hparams.nan_at_step:
            x = torch.full_like(x, float("nan"))
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2048, 16, generator=g)
        y = (x[:, :3].argmax(1)).long()
        return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(SmokeModel, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
