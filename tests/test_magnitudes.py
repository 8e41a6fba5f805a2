"""Histograms of log10 |g| beside the raw ones: written with a real Trainer, read back from the event files."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import DeepMLP
from tests.helpers import events, flavour, make_mlp_module, regression_data, trainer_kwargs

pl = flavour("lightning.pytorch")


def _mean(hist) -> float:
    """The mean of a histogram event's values (``sum / num``)."""
    return hist.histogram_value.sum / hist.histogram_value.num


def test_sigmoid_first_layer_sits_decades_below_its_last(tmp_path):
    """The vanishing layer of an 11-layer sigmoid net is decades away on the log10 axis; the raw axis hides it."""
    torch.manual_seed(0)
    model = DeepMLP(activation="sigmoid", depth=11, lr=0.1, optimizer="momentum")
    watch = GradWatch(log_every_n_steps=5, histogram_every_n_steps=10, on_vanishing="ignore", images=False)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_steps=30))
    trainer.fit(model)
    acc = events(trainer.logger.log_dir)
    layers = [f"net.{i}" for i in range(0, 21, 2)]
    assert {f"grad_hist_log10/{layer}" for layer in layers} <= set(acc.Tags()["histograms"])
    firsts, lasts = acc.Histograms("grad_hist_log10/net.0"), acc.Histograms("grad_hist_log10/net.20")
    for first, last, raw in zip(firsts, lasts, acc.Histograms("grad_hist/net.0")):
        assert first.step == last.step == raw.step  # the same histogram steps as the raw values
        first_h, last_h = first.histogram_value, last.histogram_value
        assert _mean(last) - _mean(first) > 6  # typical magnitudes: more than 6 decades apart (8 when written)
        assert first_h.max < last_h.min  # the first layer's largest values lie below the last layer's smallest
        assert first_h.min <= first_h.bucket_limit[0]
        assert first_h.bucket_limit[-1] <= first_h.max + 1e-9
        assert raw.histogram_value.max < 1e-7  # the raw histogram: a bell curve a few 1e-9 wide
    means = [_mean(acc.Histograms(f"grad_hist_log10/{layer}")[-1]) for layer in layers]
    assert means[0] < means[5] < means[10]  # the ladder of decades, from the first layer to the last


class _WithZeros(pl.LightningModule):
    """An MLP whose first four inputs are always zero (their weights' gradients are exact zeros), and a layer whose
    output is multiplied by zero (every gradient value of it is an exact zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.head = nn.Linear(16, 1)
        self.muted = nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        x = torch.cat([torch.zeros_like(x[:, :4]), x[:, 4:]], dim=1)
        out = self.head(torch.tanh(self.body(x))) + 0.0 * self.muted(x)
        return nn.functional.mse_loss(out, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return regression_data()


def test_exact_zeros_are_left_out_of_the_magnitudes(tmp_path):
    """Exact zeros have no logarithm: the log10 histogram counts the other values; an all-zero layer has none."""
    watch = GradWatch(log_every_n_steps=2, histogram_every_n_steps=2, on_vanishing="ignore", images=False)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_steps=6))
    trainer.fit(_WithZeros())
    acc = events(trainer.logger.log_dir)
    tags = set(acc.Tags()["histograms"])
    assert {"grad_hist/body", "grad_hist/head", "grad_hist/muted"} <= tags
    assert "grad_hist_log10/muted" not in tags  # all zeros: a raw histogram, no magnitudes
    zero_fraction = {e.step: e.value for e in acc.Scalars("grad_zero_fraction/body")}
    for raw, magnitudes in zip(acc.Histograms("grad_hist/body"), acc.Histograms("grad_hist_log10/body")):
        assert raw.step == magnitudes.step
        h = magnitudes.histogram_value
        assert raw.histogram_value.num == 8 * 16 + 16  # the raw histogram counts every value, zeros included
        assert h.num == 4 * 16 + 16  # the 64 zero weights are left out
        assert sum(h.bucket) == h.num
        assert h.num == round(raw.histogram_value.num * (1 - zero_fraction[raw.step]))  # the zeros' share, written
        assert all(math.isfinite(v) for v in (h.min, h.max, h.sum, h.sum_squares, *h.bucket_limit))
        assert -4 < h.min < h.max < 1


def test_magnitudes_travel_with_every_histogram(tmp_path):
    """Wherever a raw histogram is written, its log10 twin is written at the same step."""
    watch = GradWatch(log_every_n_steps=2, histogram_every_n_steps=5, images=False, overhead_budget=None)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(make_mlp_module(pl))
    acc = events(trainer.logger.log_dir)
    tags = set(acc.Tags()["histograms"])
    for layer in ("net.0", "net.2", "head"):
        assert f"grad_hist_log10/{layer}" in tags
        raw, magnitudes = acc.Histograms(f"grad_hist/{layer}"), acc.Histograms(f"grad_hist_log10/{layer}")
        assert [h.step for h in magnitudes] == [h.step for h in raw] == [0, 5, 10, 15]
        for r, m in zip(raw, magnitudes):  # both count the same values, but for exact zeros (ReLU)
            assert 0 < m.histogram_value.num <= r.histogram_value.num
            largest = max(abs(r.histogram_value.min), abs(r.histogram_value.max))
            assert m.histogram_value.max == pytest.approx(math.log10(largest), abs=1e-5)
