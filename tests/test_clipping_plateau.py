"""Clipping that sets most steps' size while the loss does not fall lowers its threshold (``clip_plateau_cut``)."""

from __future__ import annotations

import itertools
import math
import warnings

import torch

from examples.harness import single_thread
from lightning_gradwatch import GradWatch
from lightning_gradwatch.clipping import AdaptiveClipThreshold
from tests.helpers import flavour, trainer_kwargs

pl = flavour("lightning.pytorch")

PLATEAU = {"plateau_cut": 0.3}  # the default


def _noisy(step: int) -> float:
    """A training loss that does not fall but scatters: batches 4x apart (heavy-tailed noise in the labels)."""
    return 2.0 if step % 2 else 0.5


def _most_steps_clipped(clip: AdaptiveClipThreshold, steps: int, loss=_noisy) -> list[float]:
    """Thresholds of a run whose norm is 5x its early level on two steps in three from step 60."""
    out = []
    for step in range(steps):
        norm = 1.0 if step < 60 else (5.0 if step % 3 else 1.0)
        out.append(clip.update(norm, loss=loss(step)))
    return out


def test_clipping_on_most_steps_of_a_loss_that_does_not_fall_lowers_the_threshold_each_window():
    clip = AdaptiveClipThreshold(**PLATEAU)
    thresholds = _most_steps_clipped(clip, 60)
    before = clip.threshold()
    cuts = []
    for step in range(60, 260):
        norm = 5.0 if step % 3 else 1.0
        clip.update(norm, loss=_noisy(step))
        if not cuts or clip.plateau > cuts[-1][1]:
            cuts.append((step, clip.plateau))
    assert thresholds[-1] == before
    steps = [step for step, _ in cuts[1:]]
    # half of the last 50 steps are clipped from about step 97 on (two in three from step 60); then one cut per window
    assert 95 <= steps[0] <= 110
    assert len(steps) == 4  # one cut per window: about 97, 147, 197, 247
    assert all(b - a == 50 for a, b in itertools.pairwise(steps))
    assert math.isclose(clip.plateau, 0.3 * len(steps))
    assert math.isclose(clip.threshold(), before * 10**-clip.plateau, rel_tol=0.05)


def test_a_flat_quiet_loss_is_a_plateau_of_the_model_and_keeps_the_threshold():
    """Clipping on most steps of a loss that neither falls nor scatters (a task learnt after a long flat stretch):
    smaller steps would only prolong it. Sparse parity at 10-30x its learning rate lost 2-5x with the cut."""
    clip = AdaptiveClipThreshold(**PLATEAU)
    _most_steps_clipped(clip, 300, loss=lambda step: 0.69 * (1 + 0.01 * (step % 2)))
    assert clip.plateau == 0.0
    assert clip.noticed  # the notice is still said: clipping is doing the learning rate's work


def test_a_loss_that_falls_keeps_the_threshold_however_much_is_clipped():
    clip = AdaptiveClipThreshold(**PLATEAU)
    _most_steps_clipped(clip, 300, loss=lambda step: 1.0 / (1 + step))
    assert clip.plateau == 0.0


def test_the_plateau_cut_is_off_without_a_loss_without_use_loss_and_beside_a_max_norm():
    """``clip_use_loss=False`` says the loss is no measure of progress (a curriculum): it cannot show a plateau. A
    ``clip_max_norm`` is a scale the user knows for the model, which the cut would lower too."""
    for clip, loss in (
        (AdaptiveClipThreshold(**PLATEAU), None),
        (AdaptiveClipThreshold(use_loss=False, **PLATEAU), 1.0),
        (AdaptiveClipThreshold(max_norm=3.0, **PLATEAU), 1.0),
    ):
        for step in range(300):
            clip.update(1.0 if step < 60 else (5.0 if step % 3 else 1.0), loss=None if loss is None else _noisy(step))
        assert clip.plateau == 0.0


def test_the_plateau_cut_survives_a_checkpoint():
    clip = AdaptiveClipThreshold(**PLATEAU)
    _most_steps_clipped(clip, 130)
    assert clip.plateau > 0
    resumed = AdaptiveClipThreshold(**PLATEAU)
    resumed.load_state_dict(clip.state_dict())
    assert resumed.state_dict() == clip.state_dict()
    for step in range(130, 300):
        norm = 5.0 if step % 3 else 1.0
        assert resumed.update(norm, loss=_noisy(step)) == clip.update(norm, loss=_noisy(step))
    assert resumed.plateau == clip.plateau > 0.3


def test_the_plateau_cut_is_bounded_and_said_in_the_notice():
    from lightning_gradwatch.judge.clipping import NOTICE_CLIPPING

    clip, said = AdaptiveClipThreshold(plateau_cut=0.3, plateau_max=0.5), []
    for step in range(400):
        clip.update(1.0 if step < 60 else (5.0 if step % 3 else 1.0), loss=_noisy(step))
        if clip.notice_due:
            said.append((clip.notice_reason, clip.notice(step)))
    assert clip.plateau == 0.5
    [(reason, text)] = said
    assert reason == NOTICE_CLIPPING
    said = 'clip="adaptive" lowers its threshold 2x for every 50 steps it clips most of while the loss does not fall'
    assert f"{said} (at most 3.16x)" in text


class _CauchyRegression(pl.LightningModule):
    """Linear regression on 32 Gaussian features whose every label carries standard Cauchy noise (about 3% of them
    beyond 10), SGD lr 0.05 momentum 0.9, batch 64, 200 steps, the learning rate decayed to 0 over the last 40.
    Judged on clean held-out targets. Every step's gradient is heavy-tailed: the best fixed thresholds (0.3-1) clip
    every step, 10-100x below the typical norm."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(9500 + seed)
        x = torch.randn(4096 + 1024, 32, generator=g)
        y = x @ (2.0 * torch.randn(32, 1, generator=g)) + 0.1 * torch.randn(4096 + 1024, 1, generator=g)
        self.x, self.x_val, self.y_val = x[:4096], x[4096:], y[4096:]
        self.y = y[:4096] + torch.tan(math.pi * (torch.rand(4096, 1, generator=g) - 0.5))
        with torch.random.fork_rng():
            torch.manual_seed(3000 + seed)
            self.net = torch.nn.Linear(32, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (200 - step) / 40))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(self.x, self.y)
        order = torch.Generator().manual_seed(1)
        return torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, generator=order)

    def val_mse(self) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(self.net(self.x_val), self.y_val))


@single_thread()
def test_adaptive_clip_under_heavy_tailed_label_noise_is_near_the_best_fixed_threshold(tmp_path):
    """Through a real Trainer: clipping scales down every step and the noisy training loss cannot show progress, so
    the rule lowers its threshold (2.9x the best fixed threshold's held-out MSE without the plateau cut, 1.3x with it
    in ``benchmarks/clipping_suite.py``; here within 2x), and says so once."""
    results = {}
    for clip in ("adaptive", 0.1, 0.3, 1.0, None):
        model = _CauchyRegression()
        watch = GradWatch(clip=clip, on_exploding="warn", images=False)
        trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path / str(clip), max_steps=200, max_epochs=-1))
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            trainer.fit(model)
        results[clip] = model.val_mse()
        if clip == "adaptive":
            notices = [str(w.message) for w in said if "lowers its threshold" in str(w.message)]
    best = min(results[v] for v in (0.1, 0.3, 1.0))
    assert results["adaptive"] <= 2 * best, results
    assert results[None] > 10 * best, results  # the noise does hurt
    assert len(notices) == 1
