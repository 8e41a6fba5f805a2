"""Long runs: the statistics history stays bounded, and host memory stays flat over thousands of real steps."""

from __future__ import annotations

import gc
import math
import tracemalloc

import pytest
import torch

from lightning_gradwatch import GradWatch
from lightning_gradwatch.detectors import GradientDetector
from lightning_gradwatch.report import RunSummary
from lightning_gradwatch.stats import StepStats
from tests.helpers import flavour, make_mlp_module, trainer_kwargs

pl = flavour("lightning.pytorch")


def _stats(step: int, n_layers: int = 12) -> StepStats:
    norms = tuple(1.0 + 0.1 * math.sin(step + i) for i in range(n_layers))
    return StepStats(
        layers=tuple(f"layer.{i}" for i in range(n_layers)),
        grad_norm=norms,
        total_norm=math.sqrt(sum(v * v for v in norms)),
        numel=(100,) * n_layers,
        nonfinite_count=(0,) * n_layers,
        param_norm=(10.0,) * n_layers,
    )


def test_history_is_bounded_over_100k_steps():
    summary, detector = RunSummary(), GradientDetector()
    samples = [_stats(s) for s in range(64)]

    def feed(start: int, stop: int) -> None:
        for step in range(start, stop):
            stats = samples[step % 64]
            detector.update(step, stats)
            summary.add_step(step, stats, logged=step % 10 == 0)

    # traced from the first step: a bounded state's values replaced after the snapshot (allocated before tracing, they
    # would be invisible, their replacements not) are no growth; its whole size, about 60 KB, read as growth before
    tracemalloc.start()
    feed(0, 10_000)
    gc.collect()
    before = tracemalloc.take_snapshot()
    feed(10_000, 100_000)
    gc.collect()
    growth = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert growth < 32_000, f"{growth} bytes more after 90 000 more steps"
    assert summary.measured_steps == 100_000
    assert len(summary.layers["layer.0"]["grad_norm"].history) <= 128
    assert len(str(summary.to_dict())) < 200_000


def _rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4


@pytest.mark.timeout(300)
def test_soak_thousands_of_steps_host_memory_flat(tmp_path):
    samples: dict[int, int] = {}

    class Sample(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step in (1000, 4000):
                gc.collect()
                samples[trainer.global_step] = _rss_kib()

    torch.manual_seed(0)
    watch = GradWatch(log_every_n_steps=10, histogram_every_n_steps=100, images=False)
    trainer = pl.Trainer(
        callbacks=[watch, Sample()], **trainer_kwargs(tmp_path, max_steps=4000, max_epochs=-1, log_every_n_steps=10)
    )
    trainer.fit(make_mlp_module(pl, batches=1024, batch_size=4, optimizer="adam", lr=1e-3, record=False))
    assert trainer.global_step == 4000
    assert watch.state_dict()["summary"]["measured_steps"] == 4000
    growth = samples[4000] - samples[1000]
    assert growth < 8 * 1024, f"resident memory grew by {growth} KiB over 3000 steps"


def test_bad_batches_stay_bounded_and_always_keep_an_alerted_step():
    """A run whose batches are mostly outliers, each clipped as a spike, fills the bad-batch list long before an
    explosion is found: the alerted step still goes in, in the place of the latest step that was not alerted."""
    summary = RunSummary()
    for step in range(1500):
        summary.note_batch(step, ["clipped spike"], optimizer=0)
    summary.note_batch(1600, ["alert"], optimizer=0)
    kept = summary.bad_batches
    assert len(kept) == 1000
    assert [b["step"] for b in kept[-2:]] == [998, 1600]
    assert summary.events["bad_batches_not_kept"] == 501
