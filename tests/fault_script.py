"""Training runs that hit faults, run in a subprocess so the fault stays there.

    python tests/fault_script.py OUT_DIR SCENARIO

Scenarios (a 16-step MLP run, or 32 steps for the first three; GradWatch logs every step):

- ``disk_full``: at step 4 the logs are flushed, then no file may grow past 40 kB (``RLIMIT_FSIZE``: writes fail
  with "File too large");
- ``report_unwritable``: the same with 1 kB, so ``gradwatch.json`` cannot be written;
- ``keyboard_interrupt``: ``KeyboardInterrupt`` raised at step 7 (NaN at step 3);
- ``sigkill_before_alert``: the logs are flushed, then the process SIGKILLs itself at step 6;
- ``sigkill_after_alert``: NaN at step 3 (an alert, so ``gradwatch.json`` says "running"), SIGKILL at step 8;
- ``sigkill_second_fit``: a first fit of 16 steps ends ("finished"), a second ``trainer.fit`` on the same Trainer
  SIGKILLs itself at step 20 (no NaN);
- ``sigkill_csv``: ``sigkill_before_alert`` under Lightning's ``CSVLogger`` alone (no event file);
- ``sigterm``: the process sends itself SIGTERM at step 6 (Lightning stops at the next batch);
- ``sigint``: the process sends itself SIGINT (Ctrl+C) at step 7;
- ``exception``: the model raises ``RuntimeError`` at step 5;
- ``disk_full_tmpfs``: OUT_DIR is a small tmpfs; at step 4 the logs are flushed, then a filler file takes all its
  free space (ENOSPC);
- ``unwritable_dir``: at step 4 the log directory is bind-mounted read-only over itself (new files fail with EROFS;
  the open event file keeps writing), and NaN at step 10 makes an alert that wants to write ``gradwatch.json``.

Prints one JSON line (unless killed): the global step reached, the alerts, GradWatch's warnings, how ``fit`` ended.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import warnings

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger

from lightning_gradwatch import GradientWarning, GradWatch
from tests.helpers import make_mlp_module, trainer_kwargs

NAN_AT = {"keyboard_interrupt": 3, "sigkill_after_alert": 3, "unwritable_dir": 10, "sigkill_second_fit": 10**6}
SHORT = {
    "sigkill_before_alert",
    "sigkill_csv",
    "sigkill_after_alert",
    "sigkill_second_fit",
    "sigterm",
    "sigint",
    "exception",
    "unwritable_dir",
}


class Fault(pl.Callback):
    """Brings the scenario's fault at its step."""

    def __init__(self, scenario: str, out_dir: str) -> None:
        self.scenario = scenario
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step, scenario = trainer.global_step, self.scenario
        if scenario == "keyboard_interrupt" and step == 7:
            raise KeyboardInterrupt
        if step == 4 and scenario in ("disk_full", "report_unwritable"):
            limit = 40_000 if scenario == "disk_full" else 1_000  # room for the first 4 steps' histograms
            trainer.logger.experiment.flush()  # steps 0-3 on disk before the fault, whatever the writer's timing
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        if (scenario, step) in (("sigkill_before_alert", 6), ("sigkill_after_alert", 8), ("sigkill_second_fit", 20)):
            trainer.logger.experiment.flush()  # what reached the disk before the kill must stay readable
            os.kill(os.getpid(), signal.SIGKILL)
        if (scenario, step) == ("sigkill_csv", 6):
            trainer.logger.save()  # the CSV logger writes its rows every 100 steps: steps 0-5 on disk
            os.kill(os.getpid(), signal.SIGKILL)
        if (scenario, step) in (("sigterm", 6), ("sigint", 7)):
            os.kill(os.getpid(), signal.SIGTERM if scenario == "sigterm" else signal.SIGINT)
        if scenario == "disk_full_tmpfs" and step == 4:
            trainer.logger.experiment.flush()
            _fill(os.path.join(self.out_dir, "filler"))
        if scenario == "unwritable_dir" and step == 4:
            log_dir = trainer.logger.log_dir
            subprocess.run(["mount", "--bind", log_dir, log_dir], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", log_dir], check=True)


def _fill(path: str) -> None:
    """Write until the file system is full."""
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError:
            pass
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError:
            pass


def main(out_dir: str, scenario: str) -> None:
    # Ctrl+C as a terminal delivers it: a parent that ignores SIGINT (Lightning sets SIG_IGN after a KeyboardInterrupt
    # in the test process, and an ignored signal is inherited) would otherwise make this run deaf to it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    histograms = 0 if scenario in SHORT else 1  # the matrix's runs stay quick: no histograms, no pictures
    watch = GradWatch(log_every_n_steps=1, histogram_every_n_steps=histograms, on_nonfinite="skip")
    model = make_mlp_module(
        pl,
        nan_at_step=NAN_AT.get(scenario, 10),
        fail_at_step=5 if scenario == "exception" else None,
        batches=256 if scenario in SHORT else 512,
    )
    logger = CSVLogger(out_dir) if scenario == "sigkill_csv" else True
    trainer = pl.Trainer(callbacks=[Fault(scenario, out_dir), watch], logger=logger, **trainer_kwargs(out_dir))
    ended = "returned"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            if scenario == "sigkill_second_fit":
                trainer.fit(model)  # steps 0-15: the report says "finished"
                trainer.fit_loop.max_epochs = 2
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
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
