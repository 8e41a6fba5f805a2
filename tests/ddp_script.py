"""Two-process DDP (``strategy="ddp"``, which re-launches this script per rank) with GradWatch.

    python tests/ddp_script.py OUT_DIR nan|vanishing_raise

``nan``: rank 0's batch is NaN at step 5, and both ranks must stop together with finite weights.
``vanishing_raise``: a deep sigmoid net with ``on_vanishing="raise"``: both ranks must fail with the alert.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy

from lightning_gradwatch import GradWatch
from tests.dist_models import DistMLP, Recorder


def main(out_dir: str, scenario: str) -> None:
    if scenario == "nan":
        watch, model = GradWatch(log_every_n_steps=1), DistMLP(nan_at=(5, 0))
    else:
        watch = GradWatch(on_vanishing="raise", vanishing_patience=5, warmup_steps=2)
        model = DistMLP(sigmoid_depth=10, lr=0.01)
    trainer = pl.Trainer(
        default_root_dir=out_dir,
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(timeout=timedelta(seconds=60)),
        callbacks=[watch, Recorder(f"{out_dir}/ranks")],
        max_epochs=2,
        use_distributed_sampler=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
