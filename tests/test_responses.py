"""Responses to non-finite gradients with a real Trainer: stop, skip, raise, warn, ignore; fp16 overflow steps."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from lightning_gradwatch import GradientAlertError, GradientWarning, GradWatch
from tests.helpers import FLAVOURS, events, flavour, make_mlp_module, scalars, trainer_kwargs
from tests.test_cli import gradwatch

pl = flavour("lightning.pytorch")


def _finite(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def _gradient_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, GradientWarning)]


@pytest.mark.parametrize("name", FLAVOURS)
def test_nonfinite_default_stops_with_finite_weights(tmp_path, name):
    pl_ = flavour(name)
    model = make_mlp_module(pl_, nan_at_step=5, optimizer="adam")
    watch = GradWatch()
    trainer = pl_.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=3))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert trainer.global_step == 6  # step 5 was the last: training ended right after it
    assert _finite(model)
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 5)]
    assert set(watch.alerts[0].layers) == {"net.0", "net.2", "head"}
    messages = _gradient_warnings(record)
    assert len(messages) == 1
    assert "stops training" in messages[0]
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "gradwatch.json").read_text())
    assert report["alerts"][0]["kind"] == "nonfinite"
    assert report["events"]["skipped_steps"] == 1
    assert report["fits"][0]["stopped_at"] == 5  # the record says the run was cut short, and where
    checked = gradwatch("check", trainer.logger.log_dir, "--fail-on", "vanishing")
    assert checked.returncode == 0
    assert "stopped by GradWatch at step 5" in checked.stdout
    text = events(trainer.logger.log_dir).Tensors("gradwatch/alerts")
    assert [t.step for t in text] == [5]


def test_a_stop_that_min_steps_holds_back_drops_every_later_update_and_says_so(tmp_path):
    """Lightning ignores ``should_stop`` before ``min_steps``: the run trained 20 more steps on the weights the NaN
    step was stopped to spare, and nothing said so. Every later step's update is now dropped (counted as skipped),
    and a warning says why training goes on."""
    model = make_mlp_module(pl, nan_at_step=5, optimizer="adam")
    watch = GradWatch()
    weights_at_stop: list[torch.Tensor] = []

    class AtTheStop(pl.Callback):  # the weights as the NaN step 5 found them: after step 4's update
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                weights_at_stop.extend(p.detach().clone() for p in pl_module.parameters())

    trainer = pl.Trainer(callbacks=[watch, AtTheStop()], **trainer_kwargs(tmp_path, max_epochs=3, min_steps=12))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert trainer.global_step >= 12  # min_steps held training on (here to the epoch's end)
    assert any("does not stop training before min_steps=12" in m for m in _gradient_warnings(record))
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 5)]
    assert _finite(model)
    assert int(trainer.optimizers[0].state[next(iter(model.parameters()))]["step"]) == 5  # no update after step 4
    assert len(weights_at_stop) == len(list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(weights_at_stop, model.parameters()))
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "gradwatch.json").read_text())
    assert report["events"]["skipped_steps"] == trainer.global_step - 5  # step 5 and every step after it


def test_a_skipped_accumulated_step_names_all_its_micro_batches(tmp_path):
    """Under accumulate_grad_batches=4 the NaN in micro-batch 9 is skipped with optimizer step 2 (batches 8-11):
    bad_batches named batch 11 alone, a clean one."""

    class NanBatch(make_mlp_module(pl).__class__):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self(x * float("nan") if batch_idx == 9 else x), y)

    trainer = pl.Trainer(
        callbacks=[GradWatch(on_nonfinite="skip")], accumulate_grad_batches=4, **trainer_kwargs(tmp_path)
    )
    with pytest.warns(GradientWarning, match="at step 2"):
        trainer.fit(NanBatch())
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "gradwatch.json").read_text())
    [bad] = report["bad_batches"]
    assert (bad["step"], bad["epoch"], bad["first_batch_idx"], bad["batch_idx"]) == (2, 0, 8, 11)


def test_nonfinite_skip_completes_run_without_touching_optimizer_state(tmp_path):
    model = make_mlp_module(pl, nan_at_step={5, 6, 11}, optimizer="adam")
    watch = GradWatch(on_nonfinite="skip")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert trainer.global_step == 16
    assert _finite(model)
    adam_steps = {float(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert adam_steps == {13.0}  # 16 steps, 3 skipped: moments and step counts never saw a NaN
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 5), ("nonfinite", 11)]  # once per episode
    assert len(_gradient_warnings(record)) == 2
    assert watch.state_dict()["summary"]["events"]["skipped_steps"] == 3


def test_nonfinite_raise(tmp_path):
    model = make_mlp_module(pl, nan_at_step=4)
    watch = GradWatch(on_nonfinite="raise")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    with pytest.raises(GradientAlertError, match=r"Non-finite gradients .* at step 4") as info:
        trainer.fit(model)
    assert info.value.alert.kind == "nonfinite"
    assert info.value.alert.step == 4
    assert _finite(model)  # raised before the optimizer step
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "gradwatch.json").read_text())
    assert report["status"] == "failed"
    assert [a["step"] for a in report["alerts"]] == [4]


def test_nonfinite_warn_lets_the_update_through_and_warns_once_per_episode(tmp_path):
    model = make_mlp_module(pl, nan_at_step={3, 4})
    watch = GradWatch(on_nonfinite="warn", log_every_n_steps=50)  # weights are checked at log steps: none here
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_steps=6))
    with pytest.warns(GradientWarning, match="Non-finite gradients") as record:
        trainer.fit(model)
    assert len(_gradient_warnings(record)) == 1  # steps 3, 4 and on (the weights are NaN now): one episode
    assert not _finite(model)  # the user chose to let it through
    assert [a.step for a in watch.alerts] == [3]


def test_nonfinite_ignore_records_nothing(tmp_path):
    watch = GradWatch(on_nonfinite="ignore")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_steps=6))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(make_mlp_module(pl, nan_at_step=3))
    assert watch.alerts == []
    assert _gradient_warnings(record) == []


def test_healthy_run_is_silent(tmp_path):
    watch = GradWatch(on_vanishing="raise", on_exploding="raise", on_nonfinite="raise")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=4))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(make_mlp_module(pl, optimizer="adam", lr=0.01))
    assert watch.alerts == []
    assert _gradient_warnings(record) == []


def test_fp16_overflow_steps_are_not_alerts(tmp_path):
    from lightning.pytorch.plugins import MixedPrecision

    model = make_mlp_module(pl)
    watch = GradWatch(on_nonfinite="raise", log_every_n_steps=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**26)  # far too large: the first steps overflow
    trainer = pl.Trainer(
        callbacks=[watch], plugins=[MixedPrecision("16-mixed", "cpu", scaler)], **trainer_kwargs(tmp_path)
    )
    trainer.fit(model)
    overflow = watch.state_dict()["summary"]["events"]["amp_overflow_steps"]
    assert 5 <= overflow < 16  # the scaler halves its scale on each until fp16 holds the gradients
    assert watch.alerts == []
    assert _finite(model)
    acc = events(trainer.logger.log_dir)
    logged = {e.step: e.value for e in acc.Scalars("gradwatch/amp_overflow_steps")}
    assert max(logged.values()) == overflow
    assert all(math.isfinite(e.value) for e in acc.Scalars("gradwatch/total_norm"))  # overflow steps kept out


def test_fp16_scaler_starting_high_recovers_without_an_alert(tmp_path):
    from lightning.pytorch.plugins import MixedPrecision

    model = make_mlp_module(pl, batches=1024)  # 64 steps
    watch = GradWatch(log_every_n_steps=1)  # the defaults: 20 overflows in a row would be a failure
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # as some recipes start
    trainer = pl.Trainer(
        callbacks=[watch], plugins=[MixedPrecision("16-mixed", "cpu", scaler)], **trainer_kwargs(tmp_path)
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model)
    overflow = watch.state_dict()["summary"]["events"]["amp_overflow_steps"]
    assert overflow > 20  # more than the patience: the scaler halved its way down from 2**40
    assert watch.alerts == []
    assert _gradient_warnings(record) == []
    assert trainer.global_step == 64  # not stopped
    assert _finite(model)
    assert scaler.get_scale() < 2.0**30


def test_fp16_persistent_overflow_becomes_a_nonfinite_alert(tmp_path):
    from lightning.pytorch.plugins import MixedPrecision

    model = make_mlp_module(pl, nan_at_step=set(range(3, 64)))  # the loss itself is NaN from step 3 on
    watch = GradWatch(amp_overflow_patience=5)
    trainer = pl.Trainer(
        callbacks=[watch],
        plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**8))],
        **trainer_kwargs(tmp_path),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientWarning)  # the overflow alert is asserted from watch.alerts below
        trainer.fit(model)
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 7)]  # the 5th overflow step in a row
    assert trainer.global_step == 8  # the default response stops training


class _Poisoned(pl.LightningModule):
    """A weight, ``scale``, set to NaN at ``poison_at_step`` outside the optimizer's update; it enters the loss through
    a guard, so every gradient stays finite."""

    def __init__(self, poison_at_step: int, samples: int) -> None:
        super().__init__()
        self.poison_at_step, self.samples = poison_at_step, samples
        self.net = torch.nn.Linear(8, 1)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        scale = torch.where(torch.isfinite(self.scale), self.scale, torch.ones_like(self.scale))
        return torch.nn.functional.mse_loss(self.net(x) * scale, y)

    def on_train_batch_start(self, batch, batch_idx):
        if self.global_step == self.poison_at_step:
            with torch.no_grad():
                self.scale.fill_(float("nan"))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        from tests.helpers import regression_data

        return regression_data(self.samples)


def test_nonfinite_weights_are_reported_even_with_finite_gradients(tmp_path):
    watch = GradWatch(log_every_n_steps=2, on_nonfinite="warn")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    with pytest.warns(GradientWarning, match=r"Non-finite weights \(NaN/Inf\) at step 6 in scale"):
        trainer.fit(_Poisoned(poison_at_step=5, samples=256))
    assert [(a.kind, a.step, a.layers) for a in watch.alerts] == [("nonfinite", 6, ("scale",))]  # once per episode
    assert watch.alerts[0].extra == {"rule": "nonfinite", "what": "weights"}
    assert 'on_nonfinite="warn" lets such updates through' in watch.alerts[0].message


def test_nonfinite_weights_message_names_only_the_response_in_use(tmp_path):
    watch = GradWatch(log_every_n_steps=1, on_vanishing="ignore")  # on_nonfinite left at its default
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientWarning)  # asserted from watch.alerts, message included
        trainer.fit(_Poisoned(poison_at_step=2, samples=128))
    (alert,) = watch.alerts
    assert alert.extra == {"rule": "nonfinite", "what": "weights"}
    assert 'on_nonfinite="warn"' not in alert.message  # the user did not choose it
    assert 'on_nonfinite="stop"' in alert.message


def test_huge_finite_weights_are_not_called_nonfinite(tmp_path):
    class Huge(pl.LightningModule):
        """Weights of 1e23 are finite, yet the float32 square of their norm overflows."""

        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)
            self.big = torch.nn.Parameter(torch.full((4,), 1e23))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y) + 1e-30 * self.big.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            from tests.helpers import regression_data

            return regression_data(64)

    watch = GradWatch(log_every_n_steps=1, on_vanishing="ignore")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(Huge())
    assert watch.alerts == []
    norms = scalars(events(trainer.logger.log_dir), "param_norm/big")
    assert norms[0] == pytest.approx(2e23, rel=1e-6)  # sqrt(4) * 1e23, exact in float64


def test_report_records_the_batches_of_skipped_clipped_and_alerting_steps(tmp_path):
    model = make_mlp_module(pl, nan_at_step=20)  # 16 batches per epoch: the second epoch's batch 4
    watch = GradWatch(on_nonfinite="skip", clip=1e-3)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientWarning)  # the NaN step's alert; the report's batches are the point
        trainer.fit(model)
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "gradwatch.json").read_text())
    bad = {b["step"]: b for b in report["bad_batches"]}
    assert bad[20] == {"step": 20, "reasons": ["skipped", "alert"], "optimizer": 0, "epoch": 1, "batch_idx": 4}
    assert len(bad) == 1  # clipping every step of a run without spikes to a fixed norm notes no batch


@pytest.mark.parametrize("kwargs", [{"on_exploding": "clip"}, {"clip": "adaptive"}])
def test_report_records_spikes_clipped_by_the_exploding_response(tmp_path, kwargs):
    model = make_mlp_module(pl, lr=1e-6)
    plain_step = model.training_step

    def spiking_step(batch, batch_idx):
        loss = plain_step(batch, batch_idx)
        return loss * 1e4 if model.global_step == 12 else loss

    model.training_step = spiking_step
    watch = GradWatch(warmup_steps=5, **kwargs)  # clip="adaptive": an outlier batch, scaled down to the typical norm
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(model)
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "gradwatch.json").read_text())
    assert report["bad_batches"] == [
        {"step": 12, "reasons": ["clipped spike"], "optimizer": 0, "epoch": 0, "batch_idx": 12}
    ]


@pytest.mark.parametrize("response", ["clip", "skip", "warn"])
def test_the_clip_response_holds_an_explosion_in_the_first_steps_to_the_norms_before_it(tmp_path, response):
    """SGD at a learning rate of 50 on a 3-layer ReLU MLP: the norm grows 1000x at step 1, before the detector has a
    spike threshold (its warm-up would learn the explosion's norms as the run's own). With ``on_exploding="clip"``
    every step from the alert on is held to the largest norm before it, and the run stays finite; with ``"skip"``
    every step 10x beyond that norm is skipped (not only the alerted one), and the run stays finite; without, it is
    NaN within four steps."""
    from lightning_gradwatch.demos import DeepMLP

    pl = flavour("lightning.pytorch")
    torch.manual_seed(0)  # the weights' initialisation (the data and its order are the demo's own, seeded)
    model = DeepMLP(activation="relu", depth=3, lr=50.0, optimizer="sgd", seed=0)
    watch = GradWatch(on_exploding=response, on_nonfinite="warn", log_every_n_steps=1, images=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_steps=30, log_every_n_steps=1)).fit(model)
    exploding = [(a.step, a.extra["rule"]) for a in watch.alerts if a.kind == "exploding"]
    assert exploding == [(1, "jump")]  # alerted once
    acc = events(tmp_path / "lightning_logs" / "version_0")
    total = scalars(acc, "gradwatch/total_norm")
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    if response == "warn":
        assert not finite
        return
    if response == "skip":
        assert finite
        assert [a.kind for a in watch.alerts] == ["exploding"]  # no NaN reached the weights
        report = json.loads((tmp_path / "lightning_logs" / "version_0" / "gradwatch.json").read_text())
        skipped = {b["step"] for b in report["bad_batches"] if "skipped" in b["reasons"]}
        beyond = {s for s in range(1, 30) if total[s] >= 10 * total[0]}
        assert len(beyond) >= 10
        assert beyond <= skipped
        assert skipped - beyond <= {1}  # the alerted step, and no step under 10x the norm before it
        return
    clipped = scalars(acc, "gradwatch/clipped_norm")
    assert finite
    assert [a.kind for a in watch.alerts] == ["exploding"]
    above = [s for s in range(1, 30) if total[s] > total[0]]  # the explosion's steps (some have dead-unit zeros)
    assert len(above) >= 10
    assert [clipped[s] for s in above] == pytest.approx([total[0]] * len(above), rel=1e-3)  # held to step 0's
