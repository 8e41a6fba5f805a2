"""GradWatch in one minute: a healthy deep net and a vanishing one, side by side in TensorBoard.

Trains two 11-layer MLPs on the same synthetic classification task: one with sigmoid activations (its first layers'
gradients vanish) and one with ReLU + BatchNorm (healthy). Each run writes TensorBoard logs and a ``gradwatch.json``
report; the alerts are printed at the end.

    python examples/demo.py [--out runs/demo] [--steps 300]
    tensorboard --logdir runs/demo
"""

from __future__ import annotations

import argparse
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gradwatch import GradientWarning, GradWatch


def blobs(n: int = 4096, features: int = 32, classes: int = 4, seed: int = 0) -> TensorDataset:
    """Gaussian clusters: an easy task, so any trouble comes from the network, not the data."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, features, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, features, generator=g)
    return TensorDataset(x, y)


class DeepMLP(pl.LightningModule):
    """``depth`` linear layers with the given activation, optionally with BatchNorm after each hidden layer."""

    def __init__(self, activation: str = "sigmoid", batchnorm: bool = False, depth: int = 11, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        features = 32
        for _ in range(depth - 1):
            layers.append(nn.Linear(features, width))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.Sigmoid() if activation == "sigmoid" else nn.ReLU())
            features = width
        layers.append(nn.Linear(features, 4))
        self.net = nn.Sequential(*layers)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train/loss", loss)
        self.log("train/acc", (logits.argmax(1) == y).float().mean())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def run(name: str, model: pl.LightningModule, out: str, steps: int) -> GradWatch:
    torch.manual_seed(0)
    watch = GradWatch(log_every_n_steps=5, histogram_every_n_steps=25)
    trainer = pl.Trainer(
        max_steps=steps,
        logger=TensorBoardLogger(out, name=name, version=""),
        callbacks=[watch],
        accelerator="cpu",
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=5,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientWarning)  # printed below instead
        trainer.fit(model, DataLoader(blobs(), batch_size=64, shuffle=True))
    return watch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="TensorBoard log directory")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    args = parser.parse_args()
    for name, model in (
        ("sigmoid", DeepMLP("sigmoid")),
        ("relu_batchnorm", DeepMLP("relu", batchnorm=True)),
    ):
        watch = run(name, model, args.out, args.steps)
        print(f"\n== {name}: {len(watch.alerts)} alert(s)")
        for alert in watch.alerts:
            print(alert.message)
    print(f"\nTensorBoard logs and gradwatch.json reports are in {args.out}/. Open them with:")
    print(f"  tensorboard --logdir {args.out}")


if __name__ == "__main__":
    main()
