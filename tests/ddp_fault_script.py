"""Two-process DDP (``strategy="ddp"``, gloo) runs that hit a fault at step 5, for the fault matrix.

    python tests/ddp_fault_script.py OUT_DIR ddp_sigkill|ddp_exception|ddp_sigterm

``ddp_sigkill``: rank 1 SIGKILLs itself; ``ddp_exception``: rank 1 raises ``RuntimeError``; ``ddp_sigterm``: rank 0
sends SIGTERM to the job's whole process group (as a scheduler does). Rank 0's logs are flushed just before.
The process-group timeout is 10 s, so a rank left waiting for a dead peer fails instead of hanging.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy

from lightning_gradwatch import GradWatch
from tests.dist_models import DistMLP


class Fault(pl.Callback):
    def __init__(self, scenario: str) -> None:
        self.scenario = scenario

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != 5:
            return
        if trainer.is_global_zero:
            trainer.logger.experiment.flush()
        if self.scenario == "ddp_sigkill" and trainer.global_rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.scenario == "ddp_exception" and trainer.global_rank == 1:
            raise RuntimeError("boom at step 5 on rank 1")
        if self.scenario == "ddp_sigterm" and trainer.is_global_zero:
            os.killpg(os.getpgid(0), signal.SIGTERM)


def main(out_dir: str, scenario: str) -> None:
    trainer = pl.Trainer(
        default_root_dir=out_dir,
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(timeout=timedelta(seconds=10)),
        callbacks=[Fault(scenario), GradWatch(log_every_n_steps=1)],
        max_epochs=1,
        use_distributed_sampler=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(DistMLP())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
