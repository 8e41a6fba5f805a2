"""FSDP2 through Lightning: ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)`` with
``fully_shard`` in ``configure_model``, on CPU with gloo, with GradWatch.

    python tests/fsdp_script.py OUT_DIR

The strategy re-launches this script for rank 1. Each rank writes ``OUT_DIR/ranks/rank<N>.json``: per step, the
unsharded reference norm of every layer (``full_tensor()``, gathered only here, for the check) and GradWatch's own
summary of the run.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard

from lightning_gradwatch import GradWatch


def make_net() -> torch.nn.Sequential:
    # even shards (16x8), uneven ones (3x16, 3) and one smaller than the world: Linear(3, 1) leaves rank 1 empty
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Linear(3, 1))


class Sharded(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for module in self.net:
            if isinstance(module, torch.nn.Linear):
                fully_shard(module, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Reference(pl.Callback):
    """Runs before GradWatch: gathers every gradient and weight (test only) for the unsharded norms."""

    def __init__(self, out_dir: str, watch: GradWatch) -> None:
        self.out_dir, self.watch, self.steps = out_dir, watch, {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        norms: dict[str, float] = {}
        numel: dict[str, int] = {}
        local: dict[str, int] = {}
        for name, p in pl_module.named_parameters():
            layer = name.rpartition(".")[0]
            full = p.grad.full_tensor().double()
            norms[layer] = norms.get(layer, 0.0) + float(full.pow(2).sum())
            numel[layer] = numel.get(layer, 0) + full.numel()
            local[layer] = local.get(layer, 0) + p.grad.to_local().numel()
        weights = sum(float(p.detach().full_tensor().double().pow(2).sum()) for p in pl_module.parameters())
        self.steps[trainer.global_step] = {
            "weights": weights**0.5,
            "norms": {k: v**0.5 for k, v in norms.items()},
            "numel": numel,
            "local_numel": local,
        }

    def on_train_end(self, trainer, pl_module):
        os.makedirs(f"{self.out_dir}/ranks", exist_ok=True)
        summary = self.watch.state_dict()["summary"]
        with open(f"{self.out_dir}/ranks/rank{trainer.global_rank}.json", "w") as fh:
            json.dump(
                {
                    "steps": self.steps,
                    "summary_total": summary["total_norm"],
                    "clipped": summary["events"].get("clipped_steps", 0),
                    "alerts": len(self.watch.alerts),
                },
                fh,
            )


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    # clip="adaptive" under SGD: its step-size cap reads the weights' norm, combined over the shards
    watch = GradWatch(log_every_n_steps=1, histogram_every_n_steps=2, clip="adaptive")
    trainer = pl.Trainer(
        default_root_dir=out_dir,
        accelerator="cpu",
        devices=2,
        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=60)),
        max_steps=6,
        callbacks=[Reference(out_dir, watch), watch],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Sharded(), data)


if __name__ == "__main__":
    main(sys.argv[1])
