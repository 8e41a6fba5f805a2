"""Divergences as new users meet them, each a real Trainer run: an AdamW transformer LM at a learning rate 100x too high
(no NaN, ever), and MLPs on scikit-learn's digits at learning rate 50, which blow up within the first steps."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from examples.harness import single_thread
from lightning_gradwatch import GradientWarning, GradWatch
from tests.helpers import flavour

pl = flavour("lightning.pytorch")


class Trained(pl.LightningModule):
    """A network, its data, and an optimizer; records the loss of every step."""

    def __init__(self, net: nn.Module, data: TensorDataset, optimizer, batch_size: int, schedule=None) -> None:
        super().__init__()
        self.net, self.data, self.make_optimizer = net, data, optimizer
        self.batch_size, self.schedule = batch_size, schedule
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self.parameters())
        if self.schedule is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self):
        return DataLoader(
            self.data, batch_size=self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
        )


class LanguageModel(nn.Module):
    """A pre-norm decoder-only transformer LM with no LayerNorm before its head: the residual stream reaches the
    logits unnormalised."""

    def __init__(self, layers: int = 6, d_model: int = 128, vocab: int = 64, seq_len: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.head(self.encoder(self.embed(x) + self.pos[: x.shape[1]], mask=mask, is_causal=True))


def progressions(n: int = 512, vocab: int = 64, seq_len: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    start = torch.randint(vocab, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    seq = (start + stride * torch.arange(seq_len + 1)) % vocab
    return TensorDataset(seq[:, :-1], seq[:, 1:])


def digits() -> TensorDataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    return TensorDataset(torch.tensor(data.data, dtype=torch.float32) / 16.0, torch.tensor(data.target))


def transformer_lm(lr: float) -> Trained:
    torch.manual_seed(0)
    adamw = lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))  # noqa: E731
    return Trained(LanguageModel(), progressions(), adamw, 16, schedule=lambda s: min(1.0, (s + 1) / 50))


def digits_mlp(activation: type[nn.Module]) -> Trained:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), activation(), nn.Linear(128, 128), activation(), nn.Linear(128, 10))
    return Trained(net, digits(), lambda params: torch.optim.SGD(params, lr=50.0), 64)


def fit(model: Trained, steps: int, root: Path, **watch_kwargs):
    watch = GradWatch(histogram_every_n_steps=0, images=False, progress_bar=False, **watch_kwargs)
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        default_root_dir=str(root),
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[watch],
    )
    with single_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientWarning)  # the alerts are asserted from watch.alerts by each test
        trainer.fit(model)
    return watch, trainer


def first_tenfold(losses: list[float]) -> int:
    """The first step whose loss is 10x the lowest loss before it."""
    return next(t for t in range(1, len(losses)) if losses[t] >= 10 * min(losses[:t]))


def check(path: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path])}
    cmd = [sys.executable, "-m", "lightning_gradwatch", "check", str(path), "--fail-on", "exploding,nonfinite"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120).returncode


def test_adamw_transformer_at_a_too_high_learning_rate_is_exploding_before_its_loss_is_10x(tmp_path):
    model = transformer_lm(lr=0.1)
    watch, _ = fit(model, 40, tmp_path, on_exploding="warn")
    assert all(torch.isfinite(torch.tensor(model.losses)))  # no NaN: the divergence the old detector missed
    tenfold = first_tenfold(model.losses)
    kinds = [(a.kind, a.step) for a in watch.alerts]
    exploding = next(step for kind, step in kinds if kind == "exploding")
    assert exploding < tenfold, (kinds, model.losses)
    assert "vanishing" not in {kind for kind, _ in kinds}
    alert = next(a for a in watch.alerts if a.kind == "exploding")
    assert "lower the learning rate" in alert.message
    assert "warm-up" in alert.message
    assert check(tmp_path) == 1


def test_the_same_transformer_at_a_sound_learning_rate_is_silent(tmp_path):
    watch, _ = fit(transformer_lm(lr=1e-3), 40, tmp_path)
    assert watch.alerts == []
    assert check(tmp_path) == 0


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
def test_a_learning_rate_of_50_is_exploding_from_step_0_and_stop_stops_it(tmp_path, activation):
    watched = digits_mlp(activation)
    watch, _ = fit(watched, 30, tmp_path / "warn", on_exploding="warn")
    first = watch.alerts[0]
    assert first.kind == "exploding"
    assert first.step <= 5
    assert first.step < first_tenfold(watched.losses)
    assert "vanishing" not in {a.kind for a in watch.alerts}
    assert "lower the learning rate, by 10x or more" in first.message
    stopped, trainer = fit(digits_mlp(activation), 30, tmp_path / "stop", on_exploding="stop")
    assert [a.kind for a in stopped.alerts] == ["exploding"]
    assert trainer.global_step == first.step + 1  # stopped right after the alert
    assert check(tmp_path / "stop") == 1
