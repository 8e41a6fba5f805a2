"""What a person sees in the terminal: GradWatch's warnings never land in the middle of Lightning's progress bar."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys, warnings
import lightning.pytorch as pl
from lightning_gradwatch import GradWatch
from tests.helpers import make_mlp_module, trainer_kwargs

warnings.simplefilter("always")
kwargs = {**trainer_kwargs(sys.argv[1]), "enable_progress_bar": True}
trainer = pl.Trainer(callbacks=[GradWatch(on_nonfinite="skip", images=False)], **kwargs)
trainer.fit(make_mlp_module(pl, nan_at_step=6))
"""


def test_warning_is_printed_on_its_own_line_beside_the_progress_bar(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, as a terminal shows them
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    lines = [line for line in result.stdout.split("\n") if "Non-finite gradients (NaN/Inf) at step" in line]
    assert lines, result.stdout[-3000:]
    for line in lines:
        shown = line.rsplit("\r", 1)[-1]  # what stays visible on that terminal line
        assert "Non-finite gradients (NaN/Inf) at step 6" in shown
        assert "it/s" not in shown, repr(line[-300:])
        assert "Epoch" not in shown, repr(line[-300:])


SPAWNED = """
import multiprocessing
from lightning_gradwatch.write.progress import warn

if __name__ == "__main__":  # as Lightning's ddp_spawn runs its workers: GradWatch's code called from a new process
    worker = multiprocessing.get_context("spawn").Process(target=warn, args=("Vanishing gradients at step 3",))
    worker.start()
    worker.join(timeout=120)
    raise SystemExit(1 if worker.exitcode is None else worker.exitcode)
"""


def test_a_warning_in_a_spawned_worker_points_at_gradwatch_not_at_multiprocessing(tmp_path):
    script = tmp_path / "spawned.py"
    script.write_text(SPAWNED)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.split("\n") if "GradientWarning: Vanishing gradients at step 3" in line]
    location = line.split(": GradientWarning")[0]
    assert "multiprocessing" not in location, line
    assert "lightning_gradwatch" in location, line  # GradWatch's own line: no GradWatch caller raised it here
