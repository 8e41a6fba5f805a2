"""Odd models never crash GradWatch and get correct numbers: frozen, unused, empty, complex, strided, huge."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.parametrizations import orthogonal, spectral_norm, weight_norm

from lightning_gradwatch import GradientWarning, GradWatch
from tests.helpers import events, flavour, reference_norms, regression_data, scalars, trainer_kwargs

pl = flavour("lightning.pytorch")


class Base(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.reference: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, optimizer):
        self.reference[self.global_step] = reference_norms(self)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return regression_data(128)


def _fit(tmp_path, model, **watch_kwargs):
    watch = GradWatch(**{"log_every_n_steps": 1, **watch_kwargs})
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model)
    ours = [str(w.message) for w in record if issubclass(w.category, GradientWarning)]
    return watch, trainer, ours


def test_all_parameters_frozen(tmp_path):
    class Frozen(Base):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(8, 1).requires_grad_(False)
            self.bias = torch.zeros((), requires_grad=True)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y) + self.bias

    watch, trainer, ours = _fit(tmp_path, Frozen())
    assert trainer.global_step == 8
    assert len(ours) == 1
    assert "found no gradient" in ours[0]
    assert watch.alerts == []
    assert watch.state_dict()["summary"]["measured_steps"] == 0


def test_lbfgs_line_search_is_one_step(tmp_path):
    """LBFGS evaluates its closure several times a step, and Lightning calls ``on_before_optimizer_step`` after each:
    GradWatch measures, judges and writes the step once, at its first evaluation (the step's starting weights)."""

    class Lbfgs(Base):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
            self.calls: dict[int, int] = {}

        def on_before_optimizer_step(self, optimizer):
            self.calls[self.global_step] = self.calls.get(self.global_step, 0) + 1
            if self.calls[self.global_step] == 1:
                self.reference[self.global_step] = reference_norms(self)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=6)

    model = Lbfgs()
    watch, trainer, ours = _fit(tmp_path, model, clip="adaptive")
    assert trainer.global_step == 8
    assert sum(model.calls.values()) > 8  # several evaluations a step
    assert watch.state_dict()["summary"]["measured_steps"] == 8
    logged = events(trainer.logger.log_dir)
    totals = scalars(logged, "gradwatch/total_norm")
    thresholds = scalars(logged, "gradwatch/clip_threshold")
    assert sorted(totals) == list(range(8))
    for step, total in totals.items():
        # the module's hook runs after GradWatch's: it sees the first evaluation's gradients, clipped if they were
        seen = min(total, thresholds.get(step, math.inf))  # (none at step 0: nothing learnt yet)
        assert seen == pytest.approx(model.reference[step]["__total__"], rel=1e-5)
    assert ours == []
    assert watch.alerts == []


def test_layer_unused_on_some_steps(tmp_path):
    class Branchy(Base):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Linear(8, 8)
            self.odd = nn.Linear(8, 8)
            self.head = nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            h = self.trunk(x)
            if self.global_step % 2:
                h = self.odd(h)
            return nn.functional.mse_loss(self.head(h), y)

    model = Branchy()
    _watch, trainer, ours = _fit(tmp_path, model)
    assert ours == []
    acc = events(trainer.logger.log_dir)
    assert sorted(scalars(acc, "grad_norm/odd")) == [1, 3, 5, 7]
    assert sorted(scalars(acc, "grad_norm/trunk")) == list(range(8))
    for step, value in scalars(acc, "gradwatch/total_norm").items():
        assert value == pytest.approx(model.reference[step]["__total__"], rel=1e-5)


class Parametrised(Base):
    """weight_norm, spectral_norm, orthogonal and pruning: each Linear's weight is made of other parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            weight_norm(nn.Linear(8, 16)),
            nn.Tanh(),
            spectral_norm(nn.Linear(16, 16)),
            nn.Tanh(),
            orthogonal(nn.Linear(16, 16)),
            nn.Tanh(),
            prune.l1_unstructured(nn.Linear(16, 1), "weight", amount=0.5),
        )
        self.grads: dict[int, dict[str, tuple[float, float]]] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def on_before_optimizer_step(self, optimizer):
        # float64, per Linear: every parameter it holds (bias, originals, weight_orig), its gradient and itself
        self.grads[self.global_step] = {
            f"net.{i}": tuple(
                sum(float(t.double().square().sum()) for t in tensors) ** 0.5
                for tensors in ([p.grad for p in m.parameters()], list(m.parameters()))
            )
            for i, m in enumerate(self.net)
            if isinstance(m, nn.Linear)
        }


def test_parametrised_weight_is_its_modules_layer(tmp_path):
    """A Linear under weight_norm keeps its weight in ``net.0.parametrizations.weight.original0``/``original1``:
    still one layer, ``net.0``, whose norm and gradient-to-weight ratio take its bias and weight together."""
    model = Parametrised()
    _watch, trainer, ours = _fit(tmp_path, model)
    assert ours == []
    layers = json.loads((Path(trainer.logger.log_dir) / "gradwatch.json").read_text())["layers"]
    sizes = {i: sum(p.numel() for p in model.net[i].parameters()) for i in (0, 2, 4, 6)}
    assert [(layer["name"], layer["numel"]) for layer in layers] == [(f"net.{i}", n) for i, n in sizes.items()]
    acc = events(trainer.logger.log_dir)
    assert not [tag for tag in acc.Tags()["scalars"] if "parametrizations" in tag or "orig" in tag]
    for name in ("net.0", "net.2", "net.4", "net.6"):
        norms, ratios = scalars(acc, f"grad_norm/{name}"), scalars(acc, f"grad_to_weight/{name}")
        assert sorted(norms) == sorted(ratios) == list(range(8))
        for step, (grad, weight) in ((s, model.grads[s][name]) for s in norms):
            assert norms[step] == pytest.approx(grad, rel=1e-5)
            assert ratios[step] == pytest.approx(grad / weight, rel=1e-5)

    _watch, trainer, ours = _fit(tmp_path / "per_parameter", Parametrised(), granularity="parameter")
    layers = json.loads((Path(trainer.logger.log_dir) / "gradwatch.json").read_text())["layers"]
    assert [layer["name"] for layer in layers] == [
        *("net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight", "net.4.bias", "net.4.weight"),
        *("net.6.bias", "net.6.weight_orig"),  # pruning's own parameter, on the module
    ]
    assert layers[1]["numel"] == 16 + 16 * 8  # weight_norm's magnitude and direction: the weight they make


def test_zero_size_complex_and_non_contiguous_parameters(tmp_path):
    class Odd(Base):
        def __init__(self) -> None:
            super().__init__()
            self.empty = nn.Parameter(torch.empty(0))
            self.phase = nn.Parameter(torch.randn(8, dtype=torch.cfloat))
            self.square = nn.Linear(8, 8)
            self.head = nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            h = self.square(x) * self.phase.abs() + self.empty.sum()
            return nn.functional.mse_loss(self.head(h), y)

        def on_after_backward(self):
            grad = self.square.weight.grad
            self.square.weight.grad = grad.t().contiguous().t()  # same values, transposed strides
            assert not self.square.weight.grad.is_contiguous()

    model = Odd()
    # no budget: on a model this small, timing noise alone can say that histograms every 2 steps break it
    _watch, trainer, ours = _fit(tmp_path, model, histogram_every_n_steps=2, overhead_budget=None)
    assert ours == []
    acc = events(trainer.logger.log_dir)
    for layer in ("phase", "square", "head", "empty"):
        for step, value in scalars(acc, f"grad_norm/{layer}").items():
            assert value == pytest.approx(model.reference[step][layer], rel=1e-5, abs=1e-12)
    assert scalars(acc, "grad_norm/empty") == dict.fromkeys(range(8), 0.0)
    assert "grad_hist/phase" in acc.Tags()["histograms"]
    assert all(math.isfinite(v) for v in scalars(acc, "grad_zero_fraction/phase").values())


def test_ten_thousand_parameter_tensors_stay_readable(tmp_path):
    class Huge(Base):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(
                nn.ModuleList(nn.Linear(2, 2) for _ in range(50)) for _ in range(100)
            )  # 100 blocks x 50 layers x (weight, bias) = 10 000 tensors

        def training_step(self, batch, batch_idx):
            x, y = batch
            params = torch.stack([p.sum() for p in self.parameters()])
            return nn.functional.mse_loss(x[:, :1] * params.mean(), y)

        def train_dataloader(self):
            return regression_data(48)

    model = Huge()
    assert len(list(model.parameters())) == 10_000
    _watch, trainer, ours = _fit(tmp_path, model)
    assert len(ours) == 1
    assert "merges the 5000 layers of optimizer 0 into 100, by their first 2 name components" in ours[0]
    tags = [t for t in events(trainer.logger.log_dir).Tags()["scalars"] if t.startswith("grad_norm/")]
    assert len(tags) == 100
    assert "grad_norm/blocks.7" in tags
    total = scalars(events(trainer.logger.log_dir), "gradwatch/total_norm")
    for step, value in total.items():
        assert value == pytest.approx(model.reference[step]["__total__"], rel=1e-5)


def _side_norm_model(wrap: Any) -> Base:
    class SideNorm(Base):
        """A LayerNorm on a side branch whose gradient is 1e-9 of the body's: tiny by design, never vanishing."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
            self.side = wrap(nn.Sequential(nn.LayerNorm(8)))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.body(x), y) + 1e-9 * self.side(x).square().mean()

    return SideNorm()


@pytest.mark.parametrize("wrapped", [False, True])
def test_normalisation_layer_exempt_under_activation_checkpointing(tmp_path, wrapped):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = _side_norm_model(checkpoint_wrapper if wrapped else (lambda m: m))
    if wrapped:  # the wrapper adds a name component that the layer names do not carry
        assert "side._checkpoint_wrapped_module.0" in dict(model.named_modules())
    watch, trainer, ours = _fit(tmp_path, model, vanishing_patience=3, log_every_n_steps=1)
    assert trainer.global_step == 8
    layers = scalars(events(trainer.logger.log_dir), "grad_norm/side.0")
    assert len(layers) == 8
    assert max(layers.values()) < 1e-6
    assert watch.alerts == []
    assert ours == []


def test_parametrised_normalisation_layer_is_exempt(tmp_path):
    def parametrise(side: nn.Sequential) -> nn.Sequential:
        weight_norm(side[0], dim=None)  # the LayerNorm's weight is now side.0.parametrizations.weight.original*
        return side

    watch, trainer, ours = _fit(tmp_path, _side_norm_model(parametrise), vanishing_patience=3)
    assert max(scalars(events(trainer.logger.log_dir), "grad_norm/side.0").values()) < 1e-6
    assert watch.alerts == []
    assert ours == []
