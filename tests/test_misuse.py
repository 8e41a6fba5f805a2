"""The misuse matrix: situations outside the fault matrix where a gate could pass a broken run or fail a healthy one.

Each case is a real Trainer run (and, where the gate is concerned, the real ``gradwatch`` command afterwards).
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_gradwatch import GradientAlertError, GradientWarning, GradWatch
from lightning_gradwatch.runs import load_run
from tests.helpers import events, flavour, make_mlp_module, regression_data, scalars, trainer_kwargs

pl = flavour("lightning.pytorch")


def gradwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_gradwatch", *args], capture_output=True, text=True, timeout=120
    )


def _report(log_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(log_dir) / "gradwatch.json").read_text())


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ---------------------------------------------------------------------------------------- several fits, one record
def test_second_fit_on_the_same_trainer_keeps_the_first_fits_alerts(tmp_path):
    """A NaN batch in the first fit; a second fit continues the run: the record, and the gate, keep the alert."""
    model = make_mlp_module(pl, nan_at_step=20, record=False)
    loader = regression_data(256, batch_size=16)  # 16 steps an epoch
    watch = GradWatch(on_nonfinite="skip", log_every_n_steps=4)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=2))
    with pytest.warns(GradientWarning, match="Non-finite gradients"):
        trainer.fit(model, loader)
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 20)]
    assert gradwatch("check", trainer.logger.log_dir).returncode == 1

    trainer.fit_loop.max_epochs = 4
    trainer.fit(model, loader)
    assert trainer.global_step == 64
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 20)]
    report = _report(trainer.logger.log_dir)
    assert [(a["kind"], a["step"]) for a in report["alerts"]] == [("nonfinite", 20)]
    assert [(f["first_step"], f["last_step"], f["status"]) for f in report["fits"]] == [
        (0, 31, "finished"),
        (32, 63, "finished"),
    ]
    result = gradwatch("check", trainer.logger.log_dir)
    assert result.returncode == 1, result.stdout
    assert "nonfinite" in result.stdout


class Tunable(pl.LightningModule):
    """A regression with the attributes Lightning's Tuner searches: ``lr`` and ``batch_size``."""

    def __init__(self) -> None:
        super().__init__()
        self.lr, self.batch_size = 0.01, 16
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def train_dataloader(self) -> DataLoader:
        return regression_data(256, batch_size=self.batch_size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def test_a_tuners_search_is_no_fit_of_the_run(tmp_path):
    """``Tuner.lr_find`` and ``Tuner.scale_batch_size`` run the fit loop with GradWatch swapped out: their searches
    are not measured, and they are no fits of the run (a search alone leaves no report: nothing was trained)."""
    Tuner = importlib.import_module(f"{pl.__name__}.tuner").Tuner

    torch.manual_seed(0)
    model, watch = Tunable(), GradWatch(images=False)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path / "fit", max_epochs=1))
    tuner = Tuner(trainer)
    tuner.lr_find(model, num_training=20)  # its last learning rates diverge: no alert of the run
    tuner.scale_batch_size(model, max_trials=2)
    model.lr, model.batch_size = 0.01, 16
    trainer.fit(model)
    report = _report(trainer.logger.log_dir)
    assert [(f["first_step"], f["last_step"], f["status"]) for f in report["fits"]] == [(0, 15, "finished")]
    assert watch.alerts == []
    assert report["alerts"] == []
    result = gradwatch("check", trainer.logger.log_dir)
    assert result.returncode == 0, result.stdout
    assert "fits" not in result.stdout

    alone = pl.Trainer(callbacks=[GradWatch(images=False)], **trainer_kwargs(tmp_path / "search", max_epochs=1))
    Tuner(alone).lr_find(Tunable(), num_training=20)
    assert not list((tmp_path / "search").rglob("gradwatch.json"))


def test_a_tuners_search_leaves_an_earlier_record_as_it_was(tmp_path):
    """A failed run, then a search alone in the same directory: the record still says the run failed."""
    Tuner = importlib.import_module(f"{pl.__name__}.tuner").Tuner

    failed = pl.Trainer(callbacks=[GradWatch(on_nonfinite="raise")], **trainer_kwargs(tmp_path, logger=False))
    model = make_mlp_module(pl, nan_at_step=5, record=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GradientAlertError):
            failed.fit(model, regression_data(256, batch_size=16))
    before = _report(tmp_path)
    searching = pl.Trainer(callbacks=[GradWatch(images=False)], **trainer_kwargs(tmp_path, logger=False))
    Tuner(searching).lr_find(Tunable(), num_training=20)
    after = _report(tmp_path)
    assert (after["status"], after["fits"], after["alerts"]) == (before["status"], before["fits"], before["alerts"])
    assert after["status"] == "failed"


def test_stochastic_weight_averagings_batch_norm_epoch_is_no_step_without_gradients(tmp_path):
    """``StochasticWeightAveraging`` ends with an epoch that only recomputes batch-norm statistics: Lightning skips its
    backward, yet steps the optimizer at its end. No gradient to watch there, and nothing to warn about."""
    StochasticWeightAveraging = pl.callbacks.StochasticWeightAveraging

    torch.manual_seed(0)
    model = Tunable()
    model.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
    model.validation_step = model.training_step
    model.val_dataloader = lambda: regression_data(64, batch_size=16)
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)
    trainer = pl.Trainer(callbacks=[GradWatch(images=False), swa], **trainer_kwargs(tmp_path, max_epochs=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert trainer.global_step == 4 * 16 + 1  # the batch-norm epoch's one optimizer step
    assert [str(w.message) for w in caught if issubclass(w.category, GradientWarning)] == []
    assert _report(trainer.logger.log_dir)["steps"]["last"] == 63


def test_resumed_run_does_not_count_the_alerts_from_before_the_resume_twice(tmp_path):
    """Run 1 alerts at step 5 and saves a checkpoint; run 2 resumes from it into a new log directory.

    Checking both runs together counts the alert once, in the run it happened in; run 2 still names it as earlier.
    """
    model = make_mlp_module(pl, nan_at_step=5, record=False)
    first = pl.Trainer(
        callbacks=[GradWatch(on_nonfinite="skip", log_every_n_steps=4)],
        **trainer_kwargs(tmp_path, max_epochs=1, enable_checkpointing=True),
    )
    with pytest.warns(GradientWarning):
        first.fit(model)
    ckpt = next(Path(first.logger.log_dir).rglob("*.ckpt"))

    second_watch = GradWatch(on_nonfinite="skip", log_every_n_steps=4)
    second = pl.Trainer(callbacks=[second_watch], **trainer_kwargs(tmp_path, max_epochs=2))
    second.fit(make_mlp_module(pl, record=False), ckpt_path=str(ckpt))
    assert Path(second.logger.log_dir) != Path(first.logger.log_dir)
    report = _report(second.logger.log_dir)
    assert report["alerts"] == []
    assert [(a["kind"], a["step"]) for a in report["earlier_alerts"]] == [("nonfinite", 5)]
    alone = gradwatch("check", second.logger.log_dir)
    assert alone.returncode == 0
    resumed_at = report["fits"][0]["first_step"]
    assert resumed_at == first.global_step > 0
    assert report["steps"]["first"] == 0  # the record is the whole run's
    assert f"resumed at step {resumed_at}: steps {resumed_at}-{second.global_step - 1} written here" in alone.stdout
    assert "skipped" not in alone.stdout  # the step skipped at 5 was the first run's
    # the per-layer report and the HTML page say it too
    said = gradwatch("report", second.logger.log_dir).stdout
    assert "resumed after 1 alert(s) of an earlier run, judged there: nonfinite@5" in said
    doc = json.loads(gradwatch("report", second.logger.log_dir, "--format", "json").stdout)
    assert [(a["kind"], a["step"]) for a in doc[0]["earlier_alerts"]] == [("nonfinite", 5)]
    page = tmp_path / "report.html"
    assert gradwatch("check", second.logger.log_dir, "--html", str(page)).returncode == 0
    assert "resumed after 1 alert(s) of an earlier run, judged there" in page.read_text()
    both = gradwatch("check", str(tmp_path), "--format", "json")
    doc = json.loads(both.stdout)
    assert sorted(r["verdict"] for r in doc["runs"]) == ["alerts", "healthy"]
    assert sum(len(r["alerts"]) for r in doc["runs"]) == 1


def test_a_job_rerun_in_place_from_a_checkpoint_before_its_alert_records_the_alert_once(tmp_path):
    """A job checkpointed at step 8, resumed in place and alerted at step 20, then pre-empted and re-run in place from
    the same checkpoint: the re-run replays step 20 and its alert. The record, and the gate, count it once."""
    from lightning.pytorch.loggers import TensorBoardLogger

    loader = regression_data(512, batch_size=16)  # 32 steps an epoch

    def fit(steps: int, ckpt: str | None) -> pl.Trainer:
        watch = GradWatch(on_nonfinite="skip", log_every_n_steps=4, images=False)
        logger = TensorBoardLogger(tmp_path, name="job", version=0)
        trainer = pl.Trainer(
            callbacks=[watch], logger=logger, **trainer_kwargs(tmp_path, max_steps=steps, max_epochs=-1)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(make_mlp_module(pl, nan_at_step=20, record=False), loader, ckpt_path=ckpt)
        return trainer

    first = fit(8, None)
    ckpt = str(tmp_path / "step8.ckpt")
    first.save_checkpoint(ckpt)
    fit(30, ckpt)
    again = fit(30, ckpt)
    report = _report(again.logger.log_dir)
    assert [(a["kind"], a["step"]) for a in report["alerts"]] == [("nonfinite", 20)]
    assert len(report["fits"]) == 3
    result = gradwatch("check", again.logger.log_dir, "--format", "json")
    assert result.returncode == 1
    assert len(json.loads(result.stdout)["runs"][0]["alerts"]) == 1


def test_a_new_run_from_step_0_in_an_old_directory_starts_a_new_record(tmp_path, caplog):
    """``logger=False``: every run writes to ``default_root_dir``. A run that hit a NaN, then a new healthy run from
    step 0 in the same directory (a new process, or a new Trainer): the new run's record is its own, and the gate
    passes it; the earlier record is kept beside it as ``gradwatch.previous.json`` and the run says so."""
    loader = regression_data(256, batch_size=16)

    def fit(nan_at_step: int) -> GradWatch:
        watch = GradWatch(on_nonfinite="skip", images=False)
        trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, logger=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(make_mlp_module(pl, nan_at_step=nan_at_step, record=False), loader)
        return watch

    assert [a.step for a in fit(5).alerts] == [5]
    assert gradwatch("check", str(tmp_path)).returncode == 1
    with caplog.at_level("INFO"):
        assert fit(10**6).alerts == []
    assert "held the record of an earlier run (1 fit(s), 1 alert(s))" in caplog.text
    report = _report(tmp_path)
    assert (report["alerts"], [f["first_step"] for f in report["fits"]]) == ([], [0])
    previous = json.loads((tmp_path / "gradwatch.previous.json").read_text())
    assert [(a["kind"], a["step"]) for a in previous["alerts"]] == [("nonfinite", 5)]
    result = gradwatch("check", str(tmp_path))
    assert result.returncode == 0, result.stdout


def test_a_job_rerun_in_place_from_step_0_is_read_without_the_earlier_runs_logs(tmp_path):
    """A logger with a fixed version: a run with a NaN at step 5, killed while writing, then the job re-run in place,
    healthy. Its record, its pictures' numbers and the gate leave the earlier run's event values out, and say so (the
    earlier file cut short is no error of this run's); from the event files alone, the latest run (steps counted
    from 0 again) is the one judged."""
    from lightning.pytorch.loggers import TensorBoardLogger

    def fit(nan_at_step: int) -> Path:
        logger = TensorBoardLogger(tmp_path, name="job", version="v1")
        watch = GradWatch(on_nonfinite="skip", log_every_n_steps=1, images=False)
        trainer = pl.Trainer(callbacks=[watch], logger=logger, **trainer_kwargs(tmp_path, max_steps=12))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(make_mlp_module(pl, nan_at_step=nan_at_step, record=False), regression_data(256, batch_size=16))
        return Path(trainer.logger.log_dir)

    first = fit(5)
    (killed,) = [p for p in first.iterdir() if "tfevents" in p.name]
    killed.write_bytes(killed.read_bytes()[:-5])  # as a run killed while writing leaves its file
    run = fit(10**6)
    assert len([p for p in run.iterdir() if "tfevents" in p.name]) == 2
    result = gradwatch("check", str(run))
    assert result.returncode == 0, result.stdout
    assert "an earlier run's logs in this directory left out" in result.stdout
    norms = load_run(run, series=True).series["gradwatch/total_norm"]
    assert sorted(step for step, _ in norms) == list(range(12))  # this run's steps, once each
    assert all(math.isfinite(value) for _, value in norms)  # not the earlier run's NaN at step 5

    (run / "gradwatch.json").unlink()
    (run / "gradwatch.previous.json").unlink()
    alone = gradwatch("check", str(run), "--allow-unfinished")  # no record: it may not have finished
    assert alone.returncode == 0, alone.stdout  # the earlier run's alert is not this run's
    assert "1 earlier run's event files here not read" in alone.stdout


# ---------------------------------------------------------------------------------------- selections that select
def test_include_matching_no_parameter_is_an_error_at_setup(tmp_path):
    model = make_mlp_module(pl, nan_at_step=5, record=False)
    trainer = pl.Trainer(callbacks=[GradWatch(include=r"^model\.", on_nonfinite="raise")], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match=r"`include=.*\^model.*` .*matches none of the model's .*parameters.*net\.0"):
        trainer.fit(model)
    assert trainer.global_step == 0  # no step was trained unwatched


def test_exclude_matching_every_parameter_is_an_error_at_setup(tmp_path):
    trainer = pl.Trainer(callbacks=[GradWatch(exclude=".*", clip="adaptive")], **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match=r"`exclude=.*` leaves none of the model's .*parameters"):
        trainer.fit(make_mlp_module(pl, record=False))


def test_include_of_one_part_still_watches_it(tmp_path):
    """A selection that matches part of the model watches that part, and its NaN is still caught."""
    model = make_mlp_module(pl, nan_at_step=5, record=False)
    watch = GradWatch(include=r"^head\.", on_nonfinite="raise")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    with pytest.raises(GradientAlertError, match="step 5"):
        trainer.fit(model)
    assert _finite(model)


# ---------------------------------------------------------------------------------------- parameters swapped
def _adapter_module(pl_: Any, nan_in_b_at: int | None = None) -> Any:
    class Adapters(pl_.LightningModule):
        """A trunk and two adapters; the optimizer's second group switches from ``ad_a`` to ``ad_b`` at step 30."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.trunk = nn.Linear(8, 16)
            self.ad_a = nn.Linear(16, 1)
            self.ad_b = nn.Linear(16, 1)
            self.use_b = False

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.global_step == 30 and not self.use_b:
                opt = self.trainer.optimizers[0]
                opt.param_groups[1]["params"] = list(self.ad_b.parameters())  # same count as before
                self.use_b = True
            x, y = batch
            if nan_in_b_at is not None and self.global_step == nan_in_b_at:
                x = x * float("nan")
            head = self.ad_b if self.use_b else self.ad_a
            return nn.functional.mse_loss(head(torch.relu(self.trunk(x))), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD([{"params": self.trunk.parameters()}, {"params": self.ad_a.parameters()}], lr=0.05)

        def train_dataloader(self) -> DataLoader:
            return regression_data(768, batch_size=16)  # 48 steps

    return Adapters()


def test_swapped_parameters_are_watched_from_the_step_they_join(tmp_path):
    watch = GradWatch(log_every_n_steps=2, on_nonfinite="skip")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    model = _adapter_module(pl, nan_in_b_at=40)
    with pytest.warns(GradientWarning, match="Non-finite"):
        trainer.fit(model)
    acc = events(trainer.logger.log_dir)
    b_steps = [e.step for e in acc.Scalars("grad_norm/ad_b")]
    assert b_steps
    assert min(b_steps) <= 32
    assert max(b_steps) >= 46
    assert max(e.step for e in acc.Scalars("grad_norm/ad_a")) < 30  # the stale adapter is not charted
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 40)]
    assert _finite(model)


# ---------------------------------------------------------------------------------------- the budget's truth
def test_budget_says_when_the_unthinnable_work_alone_exceeds_it(tmp_path):
    """3000 tiny layers on tiny batches: measuring every step costs far more than 3% and cannot be thinned."""

    class Many(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(3000))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x = batch[0][:, :2]
            return sum(layer(x).sum() for layer in self.layers[::300]) + 0 * sum(p.sum() for p in self.parameters())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=1e-3)

        def train_dataloader(self) -> DataLoader:
            return regression_data(64, batch_size=2)  # 32 steps

    watch = GradWatch(log_every_n_steps=50, histogram_every_n_steps=0, images=False, max_layers=None)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Many())
    said = [str(w.message) for w in caught if issubclass(w.category, GradientWarning) and "budget" in str(w.message)]
    assert len(said) == 1, said
    assert "log_every_n_steps" in said[0]
    assert "include" in said[0]
    assert "granularity" in said[0]
    budget = _report(trainer.logger.log_dir)["budget"]
    assert budget["exceeded_by_per_step_work"] is True
    assert budget["estimated_overhead"] > 0.03


# ---------------------------------------------------------------------------------------- messages that blame right
def test_fp16_weights_made_nonfinite_by_the_optimizer_blame_the_update(tmp_path):
    """``precision="16-true"`` with Adam: the update itself makes fp16 weights non-finite from finite gradients."""
    model = make_mlp_module(pl, optimizer="adam", lr=1e-3, record=False)
    watch = GradWatch(log_every_n_steps=1, on_nonfinite="stop")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, precision="16-true", max_steps=20))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")  # kept, not shown: the alert's message is read from watch.alerts below
        trainer.fit(model)
    weights = [a for a in watch.alerts if a.extra.get("what") == "weights"]
    assert weights, [a.message for a in watch.alerts]
    message = weights[0].message
    assert "optimizer" in message
    assert "update" in message
    assert "outside the optimizer" not in message
    assert "16-true" in message or "half precision" in message


# ---------------------------------------------------------------------------------------- smaller
def test_numpy_integers_are_accepted_as_intervals():
    watch = GradWatch(
        log_every_n_steps=np.int64(5), histogram_every_n_steps=np.int32(20), vanishing_patience=np.int64(7)
    )
    assert watch.config()["log_every_n_steps"] == 5
    assert type(watch.config()["log_every_n_steps"]) is int


# ---------------------------------------------------------------------------------------- a run nothing was seen of
class ManualRegression(pl.LightningModule):
    """Manual optimization on a small regression. ``raw``: step the torch optimizer inside ``self.optimizers()``;
    ``clip``: clip with Lightning's ``self.clip_gradients`` to this norm before stepping."""

    def __init__(self, raw: bool = False, clip: float | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.raw, self.clip = raw, clip

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        opt.zero_grad()
        self.manual_backward(nn.functional.mse_loss(self.net(x), y))
        if self.clip is not None:
            self.clip_gradients(opt, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
        (opt.optimizer if self.raw else opt).step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit_manual(root: Path, model: ManualRegression, steps: int) -> tuple[Any, list[str]]:
    """Fit ``model`` with ``GradWatch()``, every step logged; the Trainer and GradWatch's warnings."""
    trainer = pl.Trainer(callbacks=[GradWatch()], **trainer_kwargs(root, max_steps=steps, log_every_n_steps=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, regression_data(64, batch_size=8))
    return trainer, [str(w.message) for w in caught if issubclass(w.category, GradientWarning)]


def test_manual_optimization_stepping_the_raw_optimizer_is_no_silent_pass(tmp_path):
    """The torch optimizer inside ``self.optimizers()`` stepped directly: Lightning never calls
    ``on_before_optimizer_step``, GradWatch measures nothing. It says so, and the gate does not pass the run."""
    for raw in (True, False):
        trainer, said = _fit_manual(tmp_path / str(raw), ManualRegression(raw=raw), 8)
        result = gradwatch("check", trainer.logger.log_dir)
        if raw:
            assert any("measured no optimizer step" in m and "opt.optimizer.step()" in m for m in said), said
            assert _report(trainer.logger.log_dir)["steps"]["measured"] == 0
            assert result.returncode == 3, result.stdout
            assert "unmeasured: GradWatch measured no optimizer step" in result.stdout
            assert gradwatch("check", "--allow-unfinished", trainer.logger.log_dir).returncode == 0
        else:  # the LightningOptimizer's step: measured as usual
            assert not said
            assert _report(trainer.logger.log_dir)["steps"]["measured"] == 8
            assert result.returncode == 0, result.stdout


def test_manual_optimization_clipping_before_the_step_is_said(tmp_path):
    """``self.clip_gradients`` before ``opt.step()`` (Lightning's manual-optimization pattern) runs before GradWatch
    measures, so GradWatch would see clipped gradients: it says so once, naming its own clipping instead."""
    for clip in (1e-3, None):
        model = ManualRegression(clip=clip)
        trainer, said = _fit_manual(tmp_path / str(clip), model, 6)
        totals = list(scalars(events(trainer.logger.log_dir), "gradwatch/total_norm").values())
        assert "clip_gradients" not in vars(model)  # the module is left as it was
        if clip:
            assert len([m for m in said if "self.clip_gradients(...) ran before GradWatch measured" in m]) == 1, said
            assert max(totals) <= 1e-3 * (1 + 1e-5)  # what GradWatch saw: the clipped gradients
        else:
            assert not said
            assert min(totals) > 1e-2


def test_a_fit_without_training_batches_is_unmeasured_and_says_why(tmp_path):
    """``limit_train_batches=0``: no batch ran, so there is no step to measure. The gate does not pass the run as
    healthy, and its reason names the empty data before the manual-optimization mistake (no warning: nothing ran)."""
    model = ManualRegression(raw=False)
    model.automatic_optimization = True

    def training_step(batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(model.net(x), y)

    model.training_step = training_step
    trainer = pl.Trainer(callbacks=[GradWatch()], **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, regression_data(64, batch_size=8))
    assert not [w for w in caught if issubclass(w.category, GradientWarning)]
    result = gradwatch("check", trainer.logger.log_dir)
    assert result.returncode == 3, result.stdout
    assert "no training batch ran (an empty dataloader, limit_train_batches=0)" in result.stdout


class SkipsItsFirstBackward(ManualRegression):
    """Steps the optimizer without a backward at step 0 (as a loss scaler's overflow leaves a step unmeasured)."""

    def training_step(self, batch, batch_idx):
        if self.global_step == 0:
            opt = self.optimizers()
            opt.zero_grad()
            opt.step()
            return
        super().training_step(batch, batch_idx)


def test_a_new_run_whose_step_0_is_not_measured_still_starts_a_new_record(tmp_path):
    """Whether a fit in an old directory is a new run is decided at its first step, measured or not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = pl.Trainer(callbacks=[GradWatch(on_nonfinite="skip")], **trainer_kwargs(tmp_path, logger=False))
        first.fit(make_mlp_module(pl, nan_at_step=5, record=False), regression_data(256, batch_size=16))
        second = pl.Trainer(callbacks=[GradWatch()], **trainer_kwargs(tmp_path, logger=False, max_steps=10))
        second.fit(SkipsItsFirstBackward(), regression_data(256, batch_size=16))
    assert (tmp_path / "gradwatch.previous.json").exists()
    report = _report(tmp_path)
    assert (report["alerts"], [f["first_step"] for f in report["fits"]]) == ([], [1])
    assert gradwatch("check", str(tmp_path)).returncode == 0


def test_a_fault_of_the_detector_warns_once_and_training_and_its_charts_go_on(tmp_path, monkeypatch):
    """A bug of GradWatch's own must not end the user's training. A bug cannot be had on demand, so the judge is
    made to fail at step 5 (as the trend's message once divided by a first loss of 0): one warning naming the step
    and the error, no more judging, and the fit and its charts run to the end."""
    from lightning_gradwatch.judge.decision import StepJudge

    judge = StepJudge.judge

    def failing(self, step, *args, **kwargs):
        if step == 5:
            raise ZeroDivisionError("float division by zero")
        return judge(self, step, *args, **kwargs)

    monkeypatch.setattr(StepJudge, "judge", failing)
    watch = GradWatch(log_every_n_steps=2, images=False)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    failed = r"detector failed at step 5 \(ZeroDivisionError: float division by zero, at .*test_misuse.py:"
    with pytest.warns(GradientWarning, match=failed) as seen:
        trainer.fit(make_mlp_module(pl, nan_at_step=9))  # a NaN it no longer judges: no alert, no stop
    assert len([w for w in seen if "detector failed" in str(w.message)]) == 1
    assert trainer.global_step == 16
    assert watch.alerts == []
    total = scalars(events(trainer.logger.log_dir), "gradwatch/total_norm")
    # not judged, the NaN at step 9 reached the weights: every step from it is non-finite, and charted as such
    assert sorted(total) == [0, 2, 4, 6, 8, *range(9, 16)]


def test_a_record_keeps_the_counts_its_run_began_with_across_a_resume_in_place(tmp_path):
    """A run resumed into a new directory brings its checkpoint's counts (1 step skipped before it): the record
    keeps them as where it began; resumed in place later, from a checkpoint with 3, it still counts from there."""
    from lightning_gradwatch.engine.ledger import RunLedger
    from lightning_gradwatch.report import REPORT_FORMAT, write_report

    ledger = RunLedger()
    ledger.begin_fit(tmp_path, read_earlier=True)
    ledger.counts_at_start({"skipped_steps": 1})  # the checkpoint's, at the record's first step
    ledger.counts_at_start({"skipped_steps": 2})  # a later step: a skip of this directory's
    assert ledger.to_report()["events_restored"] == {"skipped_steps": 1}
    write_report(tmp_path, {"format": REPORT_FORMAT, **ledger.to_report()})

    again = RunLedger()  # the job resumed in place, from a checkpoint taken after two more skips
    again.begin_fit(tmp_path, read_earlier=True)
    again.counts_at_start({"skipped_steps": 3})
    assert again.to_report()["events_restored"] == {"skipped_steps": 1}
