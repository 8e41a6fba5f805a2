"""GradWatch with a real Trainer: what reaches TensorBoard and other loggers, read back from disk."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_gradwatch import GradientWarning, GradWatch
from lightning_gradwatch.pictures import BackgroundDrawing
from tests.helpers import FLAVOURS, events, flavour, make_mlp_module, regression_data, scalars, trainer_kwargs

LAYERS = ("net.0", "net.2", "head")


@pytest.mark.parametrize("name", FLAVOURS)
def test_gradwatch_writes_every_layer_and_exact_total_norm(tmp_path, name):
    pl = flavour(name)
    model = make_mlp_module(pl)
    watch = GradWatch(log_every_n_steps=3)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(model)
    acc = events(trainer.logger.log_dir)
    tags = set(acc.Tags()["scalars"])
    for family in ("grad_norm", "grad_to_weight", "param_norm", "grad_max_abs", "grad_zero_fraction"):
        assert {f"{family}/{layer}" for layer in LAYERS} <= tags
    assert not any(t.endswith((".weight", ".bias")) for t in tags)  # one tag per layer, not per parameter
    total = scalars(acc, "gradwatch/total_norm")
    assert sorted(total) == list(range(0, 16, 3))  # 16 optimizer steps, logged at 0, 3, ..., 15
    for step, value in total.items():
        assert value == pytest.approx(model.reference[step]["__total__"], rel=1e-5)
    for layer in LAYERS:
        for step, value in scalars(acc, f"grad_norm/{layer}").items():
            assert value == pytest.approx(model.reference[step][layer], rel=1e-5)
    assert watch.alerts == []


def test_gradwatch_histograms_at_their_interval(tmp_path):
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=2, histogram_every_n_steps=5)], **trainer_kwargs(tmp_path)
    )
    trainer.fit(make_mlp_module(pl))
    acc = events(trainer.logger.log_dir)
    families = ("grad_hist", "grad_hist_log10")  # the values, and their log10 magnitudes
    assert set(acc.Tags()["histograms"]) == {f"{family}/{layer}" for family in families for layer in LAYERS}
    for layer in LAYERS:
        hist = acc.Histograms(f"grad_hist/{layer}")
        assert [h.step for h in hist] == [0, 5, 10, 15]
        assert all(h.histogram_value.num > 0 for h in hist)


def test_gradwatch_default_schedule_follows_trainer_and_no_histograms_when_zero(tmp_path):
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(
        callbacks=[GradWatch(histogram_every_n_steps=0)], log_every_n_steps=4, **trainer_kwargs(tmp_path)
    )
    trainer.fit(make_mlp_module(pl))
    acc = events(trainer.logger.log_dir)
    assert sorted(scalars(acc, "gradwatch/total_norm")) == [0, 4, 8, 12]
    assert acc.Tags()["histograms"] == []


def test_gradwatch_custom_scalars_layout_and_alert_text_tags(tmp_path):
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(callbacks=[GradWatch(log_every_n_steps=4)], **trainer_kwargs(tmp_path))
    trainer.fit(make_mlp_module(pl))
    acc = events(trainer.logger.log_dir)
    from tensorboard.plugins.custom_scalar import layout_pb2

    tensor_tags = acc.Tags()["tensors"]
    assert "custom_scalars__config__" in tensor_tags
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["gradient L2 norm"] == ["grad_norm/.*"]
    assert charts["log10 gradient L2 norm"] == ["grad_norm_log10/.*"]
    assert charts["gradient-to-weight ratio"] == ["grad_to_weight/.*"]


def test_gradwatch_log10_norms_make_vanishing_layers_readable(tmp_path):
    """A sigmoid stack whose layers' norms span many decades: grad_norm_log10 is log10 of grad_norm, layer by layer."""
    from lightning_gradwatch.demos import DeepMLP

    pl = flavour("lightning.pytorch")
    torch.manual_seed(0)
    watch = GradWatch(log_every_n_steps=5, histogram_every_n_steps=0, on_vanishing="ignore")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=-1, max_steps=11))
    trainer.fit(DeepMLP("sigmoid", depth=24))
    acc = events(trainer.logger.log_dir)
    tags = set(acc.Tags()["scalars"])
    layers = [t.split("/", 1)[1] for t in tags if t.startswith("grad_norm/")]
    assert len(layers) == 24
    assert {f"grad_norm_log10/{layer}" for layer in layers} <= tags
    logs = {}
    for layer in layers:
        norms, log10s = scalars(acc, f"grad_norm/{layer}"), scalars(acc, f"grad_norm_log10/{layer}")
        assert sorted(log10s) == sorted(norms) == [0, 5, 10]
        for step, norm in norms.items():
            # the event file keeps float32: compare in log space, where float32 rounding is far below 1e-5
            assert log10s[step] == pytest.approx(math.log10(norm), abs=1e-5)
        logs[layer] = log10s[10]
    assert max(logs.values()) - min(logs.values()) > 5  # the vanishing stack spans many decades: a linear axis hides it


@pytest.mark.parametrize("name", FLAVOURS)
def test_gradwatch_once_per_optimizer_step_under_accumulation(tmp_path, name):
    pl = flavour(name)
    model = make_mlp_module(pl)
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=1)], accumulate_grad_batches=4, **trainer_kwargs(tmp_path)
    )
    trainer.fit(model)
    total = scalars(events(trainer.logger.log_dir), "gradwatch/total_norm")
    assert sorted(total) == [0, 1, 2, 3]  # 16 batches / 4 = 4 optimizer steps
    for step, value in total.items():  # the accumulated gradient, not a micro-batch's
        assert value == pytest.approx(model.reference[step]["__total__"], rel=1e-5)


def test_gradwatch_bf16_mixed(tmp_path):
    pl = flavour("lightning.pytorch")
    model = make_mlp_module(pl)
    trainer = pl.Trainer(callbacks=[GradWatch(log_every_n_steps=1)], precision="bf16-mixed", **trainer_kwargs(tmp_path))
    trainer.fit(model)
    total = scalars(events(trainer.logger.log_dir), "gradwatch/total_norm")
    assert len(total) == 16
    for step, value in total.items():
        assert value == pytest.approx(model.reference[step]["__total__"], rel=1e-5)


def test_gradwatch_bf16_true_parameters(tmp_path):
    pl = flavour("lightning.pytorch")
    model = make_mlp_module(pl)
    trainer = pl.Trainer(callbacks=[GradWatch(log_every_n_steps=1)], precision="bf16-true", **trainer_kwargs(tmp_path))
    trainer.fit(model)
    assert next(model.parameters()).dtype == torch.bfloat16
    total = scalars(events(trainer.logger.log_dir), "gradwatch/total_norm")
    for step, value in total.items():
        assert value == pytest.approx(model.reference[step]["__total__"], rel=1e-5)


def test_gradwatch_fp16_gradscaler_sees_unscaled_gradients(tmp_path):
    pl = flavour("lightning.pytorch")
    from lightning.pytorch.plugins import MixedPrecision

    model = make_mlp_module(pl)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=1)],
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
        **trainer_kwargs(tmp_path),
    )
    trainer.fit(model)
    total = scalars(events(trainer.logger.log_dir), "gradwatch/total_norm")
    assert len(total) == 16
    for step, value in total.items():
        ref = model.reference[step]["__total__"]
        assert value == pytest.approx(ref, rel=1e-5)
        assert value < 2.0**8  # a scaled gradient would be ~1000x larger


def test_gradwatch_csv_logger_gets_scalars(tmp_path):
    pl = flavour("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path)
    trainer = pl.Trainer(callbacks=[GradWatch(log_every_n_steps=5)], logger=logger, **trainer_kwargs(tmp_path))
    trainer.fit(make_mlp_module(pl))
    with open(os.path.join(logger.log_dir, "metrics.csv")) as fh:
        rows = list(csv.DictReader(fh))
    logged = [r for r in rows if r.get("gradwatch/total_norm")]
    assert [int(r["step"]) for r in logged] == [0, 5, 10, 15]
    assert all(float(r["grad_norm/net.0"]) > 0 for r in logged)
    assert os.path.isfile(os.path.join(logger.log_dir, "gradwatch.json"))


def test_gradwatch_tensorboard_and_csv_together(tmp_path):
    pl = flavour("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    tb, csv_logger = TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=5)], logger=[csv_logger, tb], **trainer_kwargs(tmp_path)
    )
    trainer.fit(make_mlp_module(pl))
    assert sorted(scalars(events(tb.log_dir), "gradwatch/total_norm")) == [0, 5, 10, 15]
    with open(os.path.join(csv_logger.log_dir, "metrics.csv")) as fh:
        assert "grad_norm/head" in fh.readline()
    assert os.path.isfile(os.path.join(tb.log_dir, "gradwatch.json"))  # beside the event files


@pytest.mark.parametrize(("response", "steps"), [("stop", [0, 5, 7]), ("skip", [0, 5, 7, 10, 15])])
def test_a_nonfinite_step_between_log_steps_is_charted_at_its_own_step(tmp_path, response, steps):
    """The step that alerts (and stops the run, or is skipped) is written whenever it falls: the charts never end at
    the log step before it looking healthy, nor hide the NaN until the next log step."""
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=5, on_nonfinite=response, images=False)], **trainer_kwargs(tmp_path)
    )
    with pytest.warns(GradientWarning, match="Non-finite gradients .* at step 7"):
        trainer.fit(make_mlp_module(pl, nan_at_step=7))
    acc = events(trainer.logger.log_dir)
    total = scalars(acc, "gradwatch/total_norm")
    assert sorted(total) == steps
    assert math.isnan(total[7])
    assert scalars(acc, "gradwatch/nonfinite_values")[7] > 0
    assert scalars(acc, "gradwatch/skipped_steps")[7] == 1.0
    assert {f"grad_nonfinite/{layer}" for layer in LAYERS} & set(acc.Tags()["scalars"])
    assert all(scalars(acc, "gradwatch/nonfinite_values")[step] == 0 for step in steps if step != 7)


def _shared_root_logger(pl, save_dir, run_id):
    """A logger like MLflow's or W&B's: no ``log_dir``; a ``save_dir`` every run shares (``None``: a database or a
    server), the experiment as its ``name`` and the run as its ``version``."""
    from lightning.pytorch.loggers.logger import Logger

    class SharedRoot(Logger):
        def __init__(self) -> None:
            super().__init__()
            self.metrics: list[tuple[int | None, dict]] = []

        name = property(lambda self: "17")
        version = property(lambda self: run_id)
        save_dir = property(lambda self: None if save_dir is None else os.fspath(save_dir))

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass

        def log_metrics(self, metrics, step=None) -> None:
            self.metrics.append((step, dict(metrics)))

    return SharedRoot()


def test_runs_under_a_logger_without_a_run_directory_keep_a_record_each(tmp_path):
    """MLflow's file store and W&B give every run one ``save_dir`` and no ``log_dir``: each run's record went there,
    the next run's moved it aside and the one after lost it, so ``gradwatch check`` passed a NaN run. On a database
    (``save_dir`` None) no record was written at all. Each run's record now goes where Lightning puts the run's
    checkpoints: ``<save_dir or default_root_dir>/<name>/<version>``."""
    from tests.test_cli import gradwatch

    pl = flavour("lightning.pytorch")
    root = tmp_path / "mlruns"
    for run_id, nan_at in (("run-a", 5), ("run-b", None), ("run-c", None)):
        logger = _shared_root_logger(pl, root, run_id)
        trainer = pl.Trainer(callbacks=[GradWatch(on_nonfinite="skip")], logger=logger, **trainer_kwargs(tmp_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GradientWarning)
            trainer.fit(make_mlp_module(pl, nan_at_step=nan_at))
        assert any("gradwatch/total_norm" in m for _, m in logger.metrics)
    records = sorted(p.relative_to(root).as_posix() for p in root.rglob("gradwatch*.json"))
    assert records == ["17/run-a/gradwatch.json", "17/run-b/gradwatch.json", "17/run-c/gradwatch.json"]
    checked = gradwatch("check", str(root))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "17/run-a: 1 alert(s): nonfinite" in checked.stdout.replace(os.sep, "/")
    # a database or a server: no save_dir, the run's directory under default_root_dir
    logger = _shared_root_logger(pl, None, "run-d")
    trainer = pl.Trainer(callbacks=[GradWatch()], logger=logger, **trainer_kwargs(tmp_path / "root"))
    trainer.fit(make_mlp_module(pl))
    assert (tmp_path / "root" / "17" / "run-d" / "gradwatch.json").is_file()


def test_gradwatch_without_logger_still_measures(tmp_path):
    pl = flavour("lightning.pytorch")
    model = make_mlp_module(pl, nan_at_step=5)
    watch = GradWatch(on_nonfinite="skip")
    trainer = pl.Trainer(callbacks=[watch], logger=False, **trainer_kwargs(tmp_path))
    with pytest.warns(GradientWarning, match="Non-finite gradients .* at step 5"):  # said without a logger too
        trainer.fit(model)
    assert [a.kind for a in watch.alerts] == ["nonfinite"]
    report = json.loads((tmp_path / "gradwatch.json").read_text())
    assert report["steps"]["measured"] == 16
    assert report["alerts"][0]["step"] == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gradwatch_report_contents(tmp_path):
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(callbacks=[GradWatch(log_every_n_steps=5)], **trainer_kwargs(tmp_path))
    trainer.fit(make_mlp_module(pl))
    report = json.loads((tmp_path / "lightning_logs" / "version_0" / "gradwatch.json").read_text())
    assert report["format"] == "gradwatch-report"
    assert report["status"] == "finished"
    assert report["config"]["log_every_n_steps"] == 5
    assert [layer["name"] for layer in report["layers"]] == list(LAYERS)
    first = report["layers"][0]
    assert first["numel"] == 8 * 32 + 32
    assert first["grad_norm"]["count"] == 16  # every measured step, not only the 4 logged ones
    assert first["grad_norm"]["min"] <= first["grad_norm"]["median"] <= first["grad_norm"]["max"]
    assert report["steps"] == {"first": 0, "last": 15, "measured": 16, "logged": 4}
    assert report["alerts"] == []


def test_report_layer_summaries_cover_the_steps_between_log_steps(tmp_path):
    pl = flavour("lightning.pytorch")
    model = make_mlp_module(pl, lr=1e-6)  # small steps: the spike leaves the weights as they were
    plain_step = model.training_step

    def spiking_step(batch, batch_idx):
        loss = plain_step(batch, batch_idx)
        return loss * 1e4 if model.global_step == 3 else loss  # a spike between the log steps 0 and 5

    model.training_step = spiking_step
    watch = GradWatch(log_every_n_steps=5, on_exploding="ignore", images=False)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(model)
    report = json.loads((Path(trainer.logger.log_dir) / "gradwatch.json").read_text())
    head = next(layer for layer in report["layers"] if layer["name"] == "head")
    assert head["grad_norm"]["max"] == pytest.approx(model.reference[3]["head"], rel=1e-5)
    assert head["grad_norm"]["max"] > 100 * head["grad_norm"]["median"]
    assert head["grad_to_weight"]["count"] == 4  # ratios need parameter norms: measured on the log steps


def test_gradwatch_crash_mid_fit_keeps_logs_and_report(tmp_path):
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(callbacks=[GradWatch(log_every_n_steps=2)], **trainer_kwargs(tmp_path))
    with pytest.raises(RuntimeError, match="boom at step 7"):
        trainer.fit(make_mlp_module(pl, fail_at_step=7))
    log_dir = trainer.logger.log_dir
    assert sorted(scalars(events(log_dir), "gradwatch/total_norm")) == [0, 2, 4, 6]
    with open(os.path.join(log_dir, "gradwatch.json")) as fh:
        report = json.load(fh)
    assert report["status"] == "failed"
    assert "boom at step 7" in report["error"]
    assert report["steps"]["last"] == 6


def test_gradwatch_frozen_layers_are_skipped(tmp_path):
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(callbacks=[GradWatch(log_every_n_steps=5)], **trainer_kwargs(tmp_path))
    trainer.fit(make_mlp_module(pl, freeze_first=True))
    tags = set(events(trainer.logger.log_dir).Tags()["scalars"])
    assert "grad_norm/net.2" in tags
    assert "grad_norm/net.0" not in tags


def test_gradwatch_parameter_granularity_and_filters(tmp_path):
    pl = flavour("lightning.pytorch")
    watch = GradWatch(log_every_n_steps=5, granularity="parameter", exclude=r"\.bias$")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(make_mlp_module(pl))
    tags = {t for t in events(trainer.logger.log_dir).Tags()["scalars"] if t.startswith("grad_norm/")}
    assert tags == {"grad_norm/net.0.weight", "grad_norm/net.2.weight", "grad_norm/head.weight"}


def _gan(pl):
    """Manual optimization as a GAN does it: D (optimizer 0), then G (optimizer 1), each stepped once per batch, so
    ``global_step`` puts D on even steps and G on odd ones. 4 batches: 8 optimizer steps."""

    class Gan(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.gen = torch.nn.Linear(8, 8)
            self.disc = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            opt_d, opt_g = self.optimizers()
            x, _ = batch
            for opt, loss in (
                (opt_d, lambda: self.disc(x).pow(2).mean()),
                (opt_g, lambda: self.disc(self.gen(x)).mean()),
            ):
                opt.zero_grad()
                self.manual_backward(loss())
                opt.step()

        def configure_optimizers(self):
            return torch.optim.SGD(self.disc.parameters(), lr=0.01), torch.optim.SGD(self.gen.parameters(), lr=0.01)

        def train_dataloader(self):
            from tests.helpers import regression_data

            return regression_data(64)

    return Gan()


def test_gradwatch_manual_optimization_two_optimizers(tmp_path):
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(callbacks=[GradWatch(log_every_n_steps=1)], **trainer_kwargs(tmp_path))
    trainer.fit(_gan(pl))
    tags = set(events(trainer.logger.log_dir).Tags()["scalars"])
    assert {"grad_norm/gen", "grad_norm/disc"} <= tags
    assert {"gradwatch/total_norm/optimizer_0", "gradwatch/total_norm/optimizer_1"} <= tags


def test_gradwatch_charts_each_of_two_alternating_optimizers_at_its_own_cadence(tmp_path):
    """A GAN steps D then G: global_step puts D on even steps and G on odd ones; each is charted all the same."""
    pl = flavour("lightning.pytorch")
    # no budget: on steps of a few milliseconds, histograms every 2 steps may be found to break one (a warning that
    # depends on the machine's load); the cadence is the point here, and it is the same either way
    watch = GradWatch(log_every_n_steps=2, histogram_every_n_steps=2, images=False, overhead_budget=None)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(_gan(pl))
    assert trainer.global_step == 8
    acc = events(trainer.logger.log_dir)
    assert sorted(scalars(acc, "grad_norm/disc")) == [0, 4]  # D's own steps 0 and 2
    assert sorted(scalars(acc, "grad_norm/gen")) == [1, 5]  # G's own steps 0 and 2, on odd global steps
    assert sorted(scalars(acc, "gradwatch/total_norm/optimizer_1")) == [1, 5]
    assert [e.step for e in acc.Histograms("grad_hist/gen")] == [1, 5]
    report = json.loads((Path(trainer.logger.log_dir) / "gradwatch.json").read_text())
    assert {layer["name"] for layer in report["layers"]} == {"disc", "gen"}


def test_fast_dev_run_dummy_logger_is_not_taken_for_tensorboard(tmp_path):
    pl = flavour("lightning.pytorch")
    watch = GradWatch(log_every_n_steps=1, histogram_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, fast_dev_run=True))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(make_mlp_module(pl))
    assert type(trainer.logger).__name__ == "DummyLogger"
    assert [str(w.message) for w in record if issubclass(w.category, GradientWarning)] == []
    assert watch.state_dict()["summary"]["measured_steps"] == 1


def test_two_instances_in_one_trainer_write_their_own_runs(tmp_path):
    pl = flavour("lightning.pytorch")
    whole = GradWatch(log_every_n_steps=1, images=False)
    head = GradWatch(log_every_n_steps=1, include=r"^head\.", images=False, progress_bar=False)
    trainer = pl.Trainer(callbacks=[whole, head], **trainer_kwargs(tmp_path))
    model = make_mlp_module(pl)
    trainer.fit(model)
    root = Path(trainer.logger.log_dir)
    first, second = (json.loads((d / "gradwatch.json").read_text()) for d in (root, root / "gradwatch-2"))
    assert (first["config"]["include"], second["config"]["include"]) == (None, r"^head\.")
    assert not (root / "gradwatch.elsewhere").exists()  # the second's record is below the run's: no pointer needed
    assert [layer["name"] for layer in second["layers"]] == ["head"]
    total, head_total = (
        scalars(events(root), "gradwatch/total_norm"),
        scalars(events(root / "gradwatch-2"), "gradwatch/total_norm"),
    )
    assert sorted(total) == sorted(head_total) == list(range(16))  # one value per step and tag: no collision
    for step in (0, 7, 15):
        assert total[step] == pytest.approx(model.reference[step]["__total__"], rel=1e-5)
        assert head_total[step] == pytest.approx(model.reference[step]["head"], rel=1e-5)


def test_failed_writes_leave_the_loggers_own_writer_working(tmp_path):
    """From step 4 no file may grow past 40 kB: GradWatch's writes fail, it warns once, and fit ends normally, the
    logger's own writer starting a fresh event file instead of inheriting GradWatch's failure."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "tests" / "fault_script.py"), str(tmp_path), "disk_full"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stderr[-3000:]
    out = json.loads(lines[-1])
    assert out["ended"] == "returned", result.stderr[-3000:]
    assert out["global_step"] == 32
    assert sum("could not write to TensorBoardLogger" in w for w in out["warnings"]) == 1
    assert sorted(scalars(events(out["log_dir"]), "gradwatch/total_norm"))[:4] == [0, 1, 2, 3]  # flushed, kept


def test_report_file_mode_follows_the_umask_like_the_event_files(tmp_path):
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(callbacks=[GradWatch(images=False)], **trainer_kwargs(tmp_path, max_steps=2))
    trainer.fit(make_mlp_module(pl))
    log_dir = Path(trainer.logger.log_dir)
    event_file = next(log_dir.glob("events.out.tfevents.*"))
    report_mode = (log_dir / "gradwatch.json").stat().st_mode & 0o777
    assert report_mode == event_file.stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    assert report_mode == 0o666 & ~mask


def test_gradwatch_pickles_and_deep_copies(tmp_path):
    pl = flavour("lightning.pytorch")
    watch = GradWatch(on_exploding="skip", log_every_n_steps=4)
    clone = pickle.loads(pickle.dumps(watch))
    assert clone.on_exploding == "skip"
    assert clone.state_key == watch.state_key
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(make_mlp_module(pl))
    after = pickle.loads(pickle.dumps(watch))
    assert after.state_dict()["summary"]["measured_steps"] == 16
    assert copy.deepcopy(watch).log_every_n_steps == 4


def test_progress_bar_shows_grad_norm_and_health(tmp_path):
    pl = flavour("lightning.pytorch")
    seen: list[dict] = []

    class Peek(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(trainer.progress_bar_callback.get_metrics(trainer, pl_module))

    model = make_mlp_module(pl, nan_at_step={5, 6})
    trainer = pl.Trainer(
        callbacks=[GradWatch(on_nonfinite="skip"), Peek()], **trainer_kwargs(tmp_path, enable_progress_bar=True)
    )
    with pytest.warns(UserWarning, match="Non-finite"):
        trainer.fit(model)
    assert seen[0]["grad_norm"] == f"{model.reference[0]['__total__']:.3g}"
    assert [m.get("grad_health") for m in seen[4:8]] == [None, "non-finite", "non-finite", None]
    assert "get_metrics" not in vars(trainer.progress_bar_callback)  # the bar is handed back at the end


def test_gradient_flow_images_at_histogram_steps(tmp_path):
    pl = flavour("lightning.pytorch")
    trainer = pl.Trainer(
        # no overhead budget: it would space out the pictures, which take far longer than this model's steps
        callbacks=[GradWatch(log_every_n_steps=2, histogram_every_n_steps=5, overhead_budget=None)],
        **trainer_kwargs(tmp_path),
    )
    trainer.fit(make_mlp_module(pl))
    acc = events(trainer.logger.log_dir)
    assert set(acc.Tags()["images"]) == {"gradwatch/gradient_flow", "gradwatch/gradient_heatmap"}
    flow = acc.Images("gradwatch/gradient_flow")
    assert [i.step for i in flow] == [0, 5, 10, 15]
    assert [i.step for i in acc.Images("gradwatch/gradient_heatmap")] == [5, 10, 15]  # needs two logged steps
    from PIL import Image

    image = Image.open(io.BytesIO(flow[-1].encoded_image_string))
    assert image.size == (flow[-1].width, flow[-1].height)
    assert image.size[0] >= 600


def test_no_matplotlib_one_warning_and_no_images(tmp_path):
    code = f"""
import sys, warnings
import lightning.pytorch as pl
sys.modules["matplotlib"] = None  # from here on, `import matplotlib` fails as if it were not installed
from lightning_gradwatch import GradWatch, GradientWarning
from tests.helpers import make_mlp_module, trainer_kwargs
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as record:
    # no overhead budget: on a loaded machine, an explicit histogram interval over it is a warning of its own
    watch = GradWatch(log_every_n_steps=2, histogram_every_n_steps=5, overhead_budget=None)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs({str(tmp_path)!r}))
    trainer.fit(make_mlp_module(pl))
ours = [str(w.message) for w in record if issubclass(w.category, GradientWarning)]
print(len(ours), ours[0][:60] if ours else "")
print(trainer.logger.log_dir)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    count, log_dir = result.stdout.strip().splitlines()[-2:]
    assert count.startswith("1 GradWatch draws its gradient-flow images with matplotlib")
    acc = events(log_dir)
    assert acc.Tags()["images"] == []
    assert "grad_hist/head" in acc.Tags()["histograms"]  # everything else is unchanged


def test_background_drawing_never_blocks_and_keeps_order():
    started, release = threading.Event(), threading.Event()

    def slow() -> dict[str, bytes]:
        started.set()
        release.wait(10)
        return {"a": b"0"}

    drawing = BackgroundDrawing(max_waiting=2)
    start = time.perf_counter()
    drawing.submit(0, slow)
    assert started.wait(10)
    for step in (1, 2, 3):  # three wait behind the slow one; only two may
        drawing.submit(step, lambda step=step: {"a": str(step).encode()})
    assert time.perf_counter() - start < 1.0
    assert not drawing.ready
    release.set()
    assert drawing.close(timeout=10) == [(0, {"a": b"0"}), (2, {"a": b"2"}), (3, {"a": b"3"})]
    assert drawing.dropped == 1
    drawing.submit(4, lambda: {"a": b"4"})  # closed: ignored
    assert drawing.collect() == []


def test_background_drawing_keeps_its_first_error():
    drawing = BackgroundDrawing()

    def broken() -> dict[str, bytes]:
        raise ValueError("bad picture")

    drawing.submit(0, broken)
    assert drawing.close(timeout=10) == []
    assert isinstance(drawing.error, ValueError)
    assert drawing.ready  # so the training thread reports it


def test_layer_names_with_dollar_signs_are_drawn_literally(tmp_path):
    pl = flavour("lightning.pytorch")

    class Dollars(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleDict({"in$x$": nn.Linear(8, 8), "out$\\undefined$": nn.Linear(8, 1)})

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self.layers["out$\\undefined$"](self.layers["in$x$"](x)), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self):
            return regression_data()

    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=1, histogram_every_n_steps=2, overhead_budget=None)],
        **trainer_kwargs(tmp_path, max_steps=4),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientWarning)  # a drawing failure would warn
        trainer.fit(Dollars())
    acc = events(trainer.logger.log_dir)
    assert [i.step for i in acc.Images("gradwatch/gradient_flow")] == [0, 2]
    assert [i.step for i in acc.Images("gradwatch/gradient_heatmap")] == [2]


TWO_DRAWING_INSTANCES = """
import warnings
import lightning.pytorch as pl
from lightning_gradwatch import GradWatch
from tests.helpers import make_mlp_module, trainer_kwargs

warnings.filterwarnings("error", ".*could not draw.*")
watches = [
    GradWatch(histogram_every_n_steps=4, overhead_budget=None),
    GradWatch(histogram_every_n_steps=4, granularity="parameter", overhead_budget=None),
]
trainer = pl.Trainer(callbacks=watches, **trainer_kwargs({root!r}, max_epochs=2))
trainer.fit(make_mlp_module(pl))
"""


def test_two_instances_draw_at_the_same_time_without_failing(tmp_path):
    """Two GradWatch instances, two drawing threads, a fresh process (matplotlib's parsers built while both draw)."""
    code = TWO_DRAWING_INSTANCES.format(root=str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not draw" not in result.stderr
    runs = sorted({path.parent for path in tmp_path.rglob("events.out.tfevents.*")})  # the second in gradwatch-2/
    assert "left out" not in result.stderr  # every picture drawn: nothing hides a failure
    pictures = [len(events(run).Images("gradwatch/gradient_flow")) for run in runs if (run / "gradwatch.json").exists()]
    assert sum(pictures) == 2 * 8  # both instances, every 4th of 32 steps
