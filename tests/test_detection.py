"""Detection with real Trainers: healthy training stays silent, the classic failures are caught early.

How well detection does over many generated runs, judged by their outcome, is the bank's (``tests/test_bank.py``,
``benchmarks/bank.py``).
"""

from __future__ import annotations

import math
import tempfile
import warnings

import pytest
import torch

from examples.harness import single_thread
from lightning_gradwatch import GradientAlertError, GradientWarning, GradWatch
from lightning_gradwatch.demos import DeepMLP, Divergence, RingGan, SequenceMemory, SmallCNN, TinyTransformerLM
from tests.helpers import flavour

pl = flavour("lightning.pytorch")


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def fit(model, steps: int, **watch_kwargs):
    torch.manual_seed(0)
    root = tempfile.mkdtemp(prefix="gradwatch-scenario-")
    watch = GradWatch(histogram_every_n_steps=0, images=False, **watch_kwargs)
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        default_root_dir=root,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[watch],
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model)
    ours = [w for w in record if issubclass(w.category, GradientWarning)]
    return watch, trainer, ours


def finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize(
    ("make", "steps"),
    [
        (lambda: SmallCNN(), 200),
        (lambda: TinyTransformerLM(), 150),
        (lambda: DeepMLP("relu", batchnorm=True), 150),
        (lambda: DeepMLP("relu", residual=True, depth=22), 150),
        (lambda: Divergence(lr=0.05), 300),  # converges towards zero loss: gradients shrink with it
        (lambda: DeepMLP("relu", optimizer="adam", lr=1e-3), 150),  # norms rise while the loss falls
        (lambda: SequenceMemory("lstm"), 100),
    ],
    ids=["cnn", "transformer-lm", "relu-batchnorm-mlp", "residual-mlp-20", "to-zero-loss", "adam-takeoff", "lstm"],
)
def test_healthy_training_is_silent(make, steps):
    watch, trainer, ours = fit(make(), steps)
    assert trainer.global_step == steps
    assert watch.alerts == []
    assert ours == []


def test_deep_sigmoid_vanishes_at_its_first_layers_and_relu_batchnorm_does_not():
    watch, _, ours = fit(DeepMLP("sigmoid"), 120)
    (alert,) = watch.alerts
    assert alert.kind == "vanishing"
    assert alert.layers[:2] == ("net.0", "net.2")
    assert "net.20" not in alert.layers
    assert "ReLU-family" in alert.message
    assert len(ours) == 1
    silent, _, _ = fit(DeepMLP("relu", batchnorm=True), 120)
    assert silent.alerts == []


@pytest.mark.parametrize(
    ("make", "steps"),
    [(lambda: Divergence(corrupt_at_step=60, corrupt_scale=1e4), 80), (lambda: Divergence(lr_growth=1.05), 110)],
    ids=["corrupted-labels", "learning-rate-ramp"],
)
def test_divergence_is_warned_two_steps_ahead_and_stop_keeps_weights_finite(make, steps):
    watch, _, _ = fit(make(), steps, on_nonfinite="warn")  # "warn" leaves training as it would be without us
    kinds = [(a.kind, a.step) for a in watch.alerts]
    exploding = next(step for kind, step in kinds if kind == "exploding")
    first_nan = next(step for kind, step in kinds if kind == "nonfinite")
    assert first_nan - exploding >= 2
    model = make()
    stopped, trainer, _ = fit(model, steps, on_exploding="stop")
    assert [a.kind for a in stopped.alerts] == ["exploding"]
    assert trainer.global_step == exploding + 1  # stopped right after the alert
    assert finite(model)


def test_exploding_raise(tmp_path):
    with pytest.raises(GradientAlertError, match="Exploding gradients at step") as info:
        fit(Divergence(lr_growth=1.05), 110, on_exploding="raise")
    assert info.value.alert.kind == "exploding"


def test_a_single_transient_spike_is_counted_not_alerted():
    watch, _, ours = fit(Divergence(corrupt_at_step=60, corrupt_scale=100), 90)
    assert watch.alerts == []
    assert ours == []
    assert watch.state_dict()["summary"]["events"]["spike_steps"] >= 1


def test_skip_keeps_a_corrupted_batch_out_of_the_weights():
    model = Divergence(corrupt_at_step=60, corrupt_scale=1e4)
    watch, trainer, _ = fit(model, 90, on_exploding="skip")
    assert trainer.global_step == 90
    assert finite(model)
    assert watch.state_dict()["summary"]["events"]["skipped_steps"] >= 1
    assert math.isfinite(model.losses[-1])
    assert model.losses[-1] < 1.0  # the run carried on learning


@pytest.mark.parametrize("seed", [6, 9])
def test_a_gan_is_judged_by_the_games_loss(seed):
    """A GAN's generator loss rises by design as its discriminator catches up, and its gradient settles several times
    higher: judged on the generator's own loss, that read as an explosion (both seeds were alerted). With several
    optimizers the detector judges the game's loss, every player's latest loss summed."""
    watch, trainer, ours = fit(RingGan(seed), 600, on_vanishing="warn", on_exploding="warn")
    assert trainer.global_step == 600  # 300 batches, two optimizer steps each
    assert watch.alerts == []
    assert ours == []


def test_a_gan_at_fifty_times_its_learning_rate_is_still_alerted():
    watch, _, _ = fit(RingGan(0, lr=5e-2), 40, on_vanishing="warn", on_exploding="warn")
    assert [(a.kind, a.step) for a in watch.alerts][:1] == [("exploding", 2)]  # its first steps jump tenfold
