"""Training runs that hit faults, run in a subprocess so the fault stays there.

    python tests/fault_script.py OUT_DIR disk_full|report_unwritable|keyboard_interrupt

Prints one JSON line: the global step reached, the alerts, GradWatch's warnings, and how ``fit`` ended.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import warnings

import lightning.pytorch as pl

from lightning_gradwatch import GradientWarning, GradWatch
from tests.helpers import make_mlp_module, trainer_kwargs


class Fault(pl.Callback):
    """From step 4 on, no file may grow past ``limit`` bytes (writes fail as on a full disk); or Ctrl+C at step 7."""

    def __init__(self, scenario: str) -> None:
        self.scenario = scenario

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.scenario == "keyboard_interrupt" and trainer.global_step == 7:
            raise KeyboardInterrupt
        if trainer.global_step == 4 and self.scenario in ("disk_full", "report_unwritable"):
            limit = 20_000 if self.scenario == "disk_full" else 1_000
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def main(out_dir: str, scenario: str) -> None:
    watch = GradWatch(log_every_n_steps=1, histogram_every_n_steps=1, on_nonfinite="skip")
    model = make_mlp_module(pl, nan_at_step=3 if scenario == "keyboard_interrupt" else 10, batches=512)
    trainer = pl.Trainer(callbacks=[Fault(scenario), watch], **trainer_kwargs(out_dir))
    ended = "returned"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            trainer.fit(model)
        except BaseException as err:  # Lightning's own logger may fail at its finalize, and Ctrl+C exits
            ended = f"{type(err).__name__}"
    result = {
        "ended": ended,
        "global_step": trainer.global_step,
        "alerts": [[a.kind, a.step] for a in watch.alerts],
        "warnings": [str(w.message) for w in record if issubclass(w.category, GradientWarning)],
        "log_dir": trainer.logger.log_dir,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
