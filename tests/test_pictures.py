"""The gradient-flow pictures with a real Trainer, read back from the event file and decoded."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lightning_gradwatch import GradWatch
from tests.helpers import events, flavour, flow_bars, heatmap_cells, regression_data, scalars, trainer_kwargs

pl = flavour("lightning.pytorch")

FROZEN_AT, UNFROZEN_AT, STEPS = 20, 40, 64


class Changing(pl.LightningModule):
    """``trunk -> late -> branch -> frozen -> head``: ``branch`` is used on odd steps only, ``frozen`` is frozen at
    step 20, ``late`` is frozen until step 40 (all of them in the optimizer from the start)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(8, 8)
        self.late = nn.Linear(8, 8)
        self.branch = nn.Linear(8, 8)
        self.frozen = nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)
        self.late.requires_grad_(False)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.global_step == FROZEN_AT:
            self.frozen.requires_grad_(False)
        if self.global_step == UNFROZEN_AT:
            self.late.requires_grad_(True)

    def training_step(self, batch, batch_idx):
        x, y = batch
        h = torch.relu(self.late(torch.relu(self.trunk(x))))
        if self.global_step % 2 == 1:
            h = h + self.branch(h)
        return nn.functional.mse_loss(self.head(self.frozen(h)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return regression_data(n=8 * STEPS, batch_size=8)


@pytest.fixture(scope="module")
def changing_run(tmp_path_factory):
    """A fit of :class:`Changing` with pictures every 8 steps, read back from its event file."""
    watch = GradWatch(log_every_n_steps=1, histogram_every_n_steps=8, overhead_budget=None)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path_factory.mktemp("changing")))
    trainer.fit(Changing())
    assert trainer.global_step == STEPS
    return events(trainer.logger.log_dir)


def test_heatmap_keeps_every_layer_of_the_run_with_its_missing_steps_blank(changing_run):
    """The last heat map (step 56) has a row for every layer that had a gradient in the run, in the model's order,
    each blank exactly at the steps it had none: the branch at even steps, the frozen layer from step 20, the late
    one before step 40."""
    assert len(scalars(changing_run, "grad_norm/branch")) == STEPS // 2
    heatmaps = changing_run.Images("gradwatch/gradient_heatmap")
    assert heatmaps[-1].step == 56  # the last histogram step's
    blank = heatmap_cells(heatmaps[-1].encoded_image_string)
    assert len(blank) == 5  # trunk, late, branch, frozen, head: none left out
    steps = range(57)
    assert all(len(row) == len(steps) for row in blank)  # a column per step
    trunk, late, branch, frozen, head = blank
    assert not any(trunk)
    assert not any(head)
    assert late == [step < UNFROZEN_AT for step in steps]
    assert branch == [step % 2 == 0 for step in steps]
    assert frozen == [step >= FROZEN_AT for step in steps]
    # a heat map drawn while the branch had no gradient (histogram steps are even) has its row all the same
    earlier = heatmap_cells(heatmaps[0].encoded_image_string)
    assert len(earlier) == 4  # step 8: the late layer has had no gradient yet
    assert earlier[1] == [step % 2 == 0 for step in range(9)]


def test_gradient_flow_keeps_a_place_for_every_layer_of_the_run(changing_run):
    """The bar chart of a step shows every layer that had a gradient in the run so far, in the model's order; those
    without one at the step keep their place, with no bar (the x axis does not shift from one picture to the next)."""
    flows = {i.step: flow_bars(i.encoded_image_string) for i in changing_run.Images("gradwatch/gradient_flow")}
    assert list(flows) == list(range(0, STEPS, 8))
    assert flows[0] == [True, True, True]  # trunk, frozen, head: the branch has had no gradient yet
    assert flows[8] == [True, False, True, True]  # trunk, branch (on odd steps), frozen, head
    assert flows[56] == [True, True, False, False, True]  # trunk, late (from step 40), branch, frozen, head


class _DeadFirstLayer(pl.LightningModule):
    """A ReLU MLP whose first layer's units are dead from the start (bias -100): that layer's gradient is exactly 0
    at every step, while the head learns."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 1)
        with torch.no_grad():
            self.net[0].bias.fill_(-100.0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.net(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return regression_data(128, batch_size=16)


def test_a_layer_whose_gradient_is_zero_is_black_in_the_heat_map_not_blank(tmp_path):
    """Blank is a step without a gradient (a frozen layer, an unused branch); a dead layer's gradient is there and
    exactly zero: the HTML page drew it black, the TensorBoard heat map blank."""
    from matplotlib import image

    torch.manual_seed(0)
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=1, histogram_every_n_steps=4, on_vanishing="warn")],
        **trainer_kwargs(tmp_path),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dead layer may be alerted: the picture is what is tested
        trainer.fit(_DeadFirstLayer())
    png = events(trainer.logger.log_dir).Images("gradwatch/gradient_heatmap")[-1].encoded_image_string
    img = image.imread(__import__("io").BytesIO(png), format="png")[..., :3]
    black = (img.max(-1) < 0.05).sum(1)  # per pixel row: how many pixels are black
    rows = black > img.shape[1] * 0.3  # the net.0 row: black across the heat map's width
    assert rows.sum() > 10
