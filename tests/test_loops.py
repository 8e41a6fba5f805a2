"""GradWatch in loops without a Trainer: a plain PyTorch loop and a Lightning Fabric loop.

The same charts, alerts, responses, ``gradwatch.json`` and ``gradwatch check`` verdict as a Trainer run.
"""

from __future__ import annotations

import faulthandler
import json
import math
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gradwatch import GradientAlertError, GradientWarning, GradWatch
from tests.helpers import events, flavour, scalars, trainer_kwargs

pl = flavour("lightning.pytorch")


def gradwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_gradwatch", *args], capture_output=True, text=True, timeout=120
    )


def _data(seed: int = 0, n: int = 512, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))


def _plain_loop(
    watch: GradWatch,
    log_dir: Path | None,
    *,
    nan_at: int | None = None,
    lr: float = 0.05,
    epochs: int = 1,
    model: nn.Module | None = None,
) -> tuple[nn.Module, Any, list[float]]:
    """The loop a user writes: forward, backward, ``loop.step``, ``optimizer.step``, ``zero_grad``."""
    model = model or _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses: list[float] = []
    with watch.loop(model, log_dir=log_dir) as loop:
        step = 0
        for _ in range(epochs):
            for x, y in _data():
                if step == nan_at:
                    x = x * float("nan")
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                if loop.step(optimizer, loss):
                    optimizer.step()
                optimizer.zero_grad()
                losses.append(float(loss.detach()))
                step += 1
                if loop.should_stop:
                    break
            if loop.should_stop:
                break
    return model, loop, losses


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_plain_loop_charts_every_layer_and_writes_the_report(tmp_path):
    watch = GradWatch(log_every_n_steps=4, histogram_every_n_steps=8, images=False)
    _, loop, _ = _plain_loop(watch, tmp_path)
    acc = events(tmp_path)
    assert sorted(scalars(acc, "grad_norm/0")) == list(range(0, 32, 4))
    for tag in ("grad_norm/2", "grad_norm/4", "grad_to_weight/4", "gradwatch/total_norm"):
        assert len(scalars(acc, tag)) == 8
    assert "grad_hist/0" in acc.Tags()["histograms"]
    report = json.loads((tmp_path / "gradwatch.json").read_text())
    assert report["status"] == "finished"
    assert [layer["name"] for layer in report["layers"]] == ["0", "2", "4"]
    assert watch.alerts == []
    assert loop.alerts == []
    assert gradwatch("check", str(tmp_path)).returncode == 0


def test_plain_loop_skips_a_nan_step_and_the_gate_fails(tmp_path):
    watch = GradWatch(on_nonfinite="skip", log_every_n_steps=4)
    with pytest.warns(GradientWarning, match="Non-finite gradients"):
        model, _, _ = _plain_loop(watch, tmp_path, nan_at=10)
    assert _finite(model)
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 10)]
    # the layers of a bare nn.Sequential keep their names ("0", "2", "4") and read as Python reaches them
    assert watch.alerts[0].layers == ("0", "2", "4")
    assert "in model[0], model[2], model[4]." in watch.alerts[0].message
    assert [t.step for t in events(tmp_path).Tensors("gradwatch/alerts")] == [10]
    result = gradwatch("check", str(tmp_path))
    assert result.returncode == 1
    assert "nonfinite" in result.stdout


def test_plain_loop_gives_the_trainers_numbers_and_alerts(tmp_path):
    """The same model, data and seed through a Trainer and through a plain loop: same charts, same alert."""

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            if self.global_step == 10:
                x = x * float("nan")
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

        def train_dataloader(self) -> DataLoader:
            return _data()

    trainer_watch = GradWatch(on_nonfinite="skip", log_every_n_steps=1, images=False)
    trainer = pl.Trainer(callbacks=[trainer_watch], **trainer_kwargs(tmp_path / "trainer", log_every_n_steps=1))
    with pytest.warns(GradientWarning):
        trainer.fit(Module())
    loop_watch = GradWatch(on_nonfinite="skip", log_every_n_steps=1, images=False)
    with pytest.warns(GradientWarning):
        _plain_loop(loop_watch, tmp_path / "loop", nan_at=10)
    assert [(a.kind, a.step, a.layers) for a in loop_watch.alerts] == [
        (a.kind, a.step, tuple(n.removeprefix("net.") for n in a.layers)) for a in trainer_watch.alerts
    ]
    by_trainer = scalars(events(trainer.logger.log_dir), "gradwatch/total_norm")
    by_loop = scalars(events(tmp_path / "loop"), "gradwatch/total_norm")
    assert sorted(by_loop) == sorted(by_trainer)
    for step, value in by_trainer.items():
        assert by_loop[step] == pytest.approx(value, rel=1e-6, nan_ok=True)  # step 10: NaN in both


def test_plain_loop_stop_ends_the_loop_with_finite_weights(tmp_path):
    watch = GradWatch(on_exploding="stop", log_every_n_steps=1)
    with pytest.warns(GradientWarning, match="Exploding"):
        model, loop, losses = _plain_loop(watch, tmp_path, lr=5.0, epochs=3)
    assert loop.should_stop
    assert len(losses) < 96
    assert _finite(model)
    assert [a.kind for a in watch.alerts][:1] == ["exploding"]
    assert json.loads((tmp_path / "gradwatch.json").read_text())["status"] == "finished"
    assert gradwatch("check", str(tmp_path)).returncode == 1


def test_plain_loop_raise_fails_the_run_and_records_it(tmp_path):
    watch = GradWatch(on_nonfinite="raise")
    with pytest.raises(GradientAlertError, match="step 7"):
        _plain_loop(watch, tmp_path, nan_at=7)
    report = json.loads((tmp_path / "gradwatch.json").read_text())
    assert report["status"] == "failed"
    assert gradwatch("check", str(tmp_path)).returncode == 1


def test_plain_loop_that_catches_the_raise_and_goes_on_ends_finished(tmp_path):
    """``"raise"`` finishes the fit at its step; a loop that catches the exception and trains on to its end leaves a
    report that says so (status finished, the steps after it, both alerts), not the failure nor "running"."""
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    watch = GradWatch(on_nonfinite="raise", images=False)
    caught = []
    with watch.loop(model, log_dir=tmp_path) as loop:
        for step, (x, y) in enumerate(_data()):
            loss = nn.functional.mse_loss(model(x * float("nan") if step in (5, 12) else x), y)
            loss.backward()
            try:
                if loop.step(optimizer, loss):
                    optimizer.step()
            except GradientAlertError:
                caught.append(step)
            optimizer.zero_grad()
    assert caught == [5, 12]
    report = json.loads((tmp_path / "gradwatch.json").read_text())
    assert report["status"] == "finished"
    assert [(f["first_step"], f["last_step"], f["status"], f.get("error")) for f in report["fits"]] == [
        (0, step, "finished", None)
    ]
    assert [(a["kind"], a["step"]) for a in report["alerts"]] == [("nonfinite", 5), ("nonfinite", 12)]
    assert gradwatch("check", str(tmp_path)).returncode == 1  # its alerts fail the gate, as any run's


def test_plain_loop_adaptive_clipping_scales_the_gradients(tmp_path):
    """One batch with labels x1e4 at step 20: the adaptive threshold clips it, the run stays healthy."""
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    watch = GradWatch(clip="adaptive", log_every_n_steps=1, images=False)
    with watch.loop(model, log_dir=tmp_path) as loop:
        for step, (x, y) in enumerate(_data()):
            if step == 20:
                y = y * 1e4
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            total = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
            if loop.step(optimizer, loss):
                after = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
                if step == 20:
                    assert after < 1e-2 * total
                optimizer.step()
            optimizer.zero_grad()
    acc = events(tmp_path)
    clipped = scalars(acc, "gradwatch/clipped_norm")
    assert clipped[20] < 1e-2 * scalars(acc, "gradwatch/total_norm")[20]
    assert _finite(model)


def test_plain_loop_with_a_loss_scaler_unscales_and_keeps_overflow_steps_out(tmp_path):
    """fp16 autocast on CPU with a GradScaler starting high: the loop unscales, overflow steps are not alerts."""
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    watch = GradWatch(log_every_n_steps=1, images=False)
    reference: dict[int, float] = {}
    with watch.loop(model, log_dir=tmp_path, scaler=scaler) as loop:
        for step, (x, y) in enumerate(_data()):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            if loop.step(optimizer, loss):
                grads = [p.grad for p in model.parameters()]
                if all(bool(torch.isfinite(g).all()) for g in grads):
                    reference[step] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
                scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
    assert watch.alerts == []
    totals = scalars(events(tmp_path), "gradwatch/total_norm")
    assert reference
    assert set(reference) <= set(totals)
    for step, value in reference.items():
        assert totals[step] == pytest.approx(value, rel=1e-3)  # the unscaled norm
    assert json.loads((tmp_path / "gradwatch.json").read_text())["events"]["amp_overflow_steps"] > 10


def test_plain_loop_without_a_log_dir_still_detects_and_responds():
    watch = GradWatch(on_nonfinite="skip")
    with pytest.warns(GradientWarning, match="Non-finite"):
        model, _, _ = _plain_loop(watch, None, nan_at=3)
    assert _finite(model)
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 3)]


def test_loop_rejects_a_step_before_entering_and_a_bad_log_dir(tmp_path):
    watch = GradWatch()
    loop = watch.loop(_net(), log_dir=tmp_path)
    with pytest.raises(RuntimeError, match=r"with watch\.loop"):
        loop.step(torch.optim.SGD(_net().parameters(), lr=0.1))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="log_dir"):
        watch.loop(_net(), log_dir=tmp_path / "file")


def _gan_loop(watch: GradWatch, log_dir: Path, *, name_them: bool, steps: int = 30) -> None:
    """A 2-D GAN in a plain loop: a discriminator step, then a generator step, each with its own optimizer."""
    torch.manual_seed(0)
    gan = nn.ModuleDict(
        {
            "g": nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2)),
            "d": nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1)),
        }
    )
    opt_d = torch.optim.Adam(gan["d"].parameters(), lr=1e-3)
    opt_g = torch.optim.Adam(gan["g"].parameters(), lr=1e-3)
    bce = nn.functional.binary_cross_entropy_with_logits
    with watch.loop(gan, log_dir=log_dir, optimizers=[opt_d, opt_g] if name_them else None) as loop:
        for _ in range(steps):
            real, fake = torch.randn(32, 2) + 3.0, gan["g"](torch.randn(32, 2))
            d_loss = bce(gan["d"](real), torch.ones(32, 1)) + bce(gan["d"](fake.detach()), torch.zeros(32, 1))
            d_loss.backward()
            if loop.step(opt_d, d_loss):
                opt_d.step()
            opt_d.zero_grad()
            g_loss = bce(gan["d"](gan["g"](torch.randn(32, 2))), torch.ones(32, 1))
            g_loss.backward()
            if loop.step(opt_g, g_loss):
                opt_g.step()
            opt_g.zero_grad()
            opt_d.zero_grad()


def test_a_loop_that_names_its_optimizers_charts_them_as_a_trainer_does(tmp_path):
    """Named up front, two optimizers' run-level charts are ``/optimizer_0`` and ``/optimizer_1`` from the first
    step, as under a Trainer; met one after the other, the first one's were already written plain."""
    _gan_loop(GradWatch(log_every_n_steps=1, images=False), tmp_path / "named", name_them=True)
    tags = set(events(tmp_path / "named").Tags()["scalars"])
    assert {"gradwatch/total_norm/optimizer_0", "gradwatch/total_norm/optimizer_1"} <= tags
    assert "gradwatch/total_norm" not in tags
    assert {t for t in tags if t.startswith("grad_norm/")} >= {"grad_norm/d.0", "grad_norm/g.0"}
    (report,) = json.loads(gradwatch("report", str(tmp_path / "named"), "--format", "json").stdout)
    assert set(report["total_norm"]) == {"optimizer_0", "optimizer_1"}

    _gan_loop(GradWatch(log_every_n_steps=1, images=False), tmp_path / "met", name_them=False)
    tags = set(events(tmp_path / "met").Tags()["scalars"])
    assert {"gradwatch/total_norm", "gradwatch/total_norm/optimizer_1"} <= tags
    assert "gradwatch/total_norm/optimizer_0" not in tags


def test_a_loop_refuses_optimizers_it_was_not_given(tmp_path):
    net = _net()
    optimizer, other = torch.optim.SGD(net.parameters(), lr=0.1), torch.optim.SGD(net.parameters(), lr=0.1)
    watch = GradWatch()
    with pytest.raises(TypeError, match="must be a list"):
        watch.loop(net, optimizers=optimizer)
    with pytest.raises(ValueError, match="is empty"):
        watch.loop(net, optimizers=[])
    with pytest.raises(TypeError, match=r"`optimizers\[1\]` must be a torch optimizer"):
        watch.loop(net, optimizers=[optimizer, net])
    with pytest.raises(ValueError, match=r"`optimizers\[1\]` is listed twice"):
        watch.loop(net, optimizers=[optimizer, optimizer])
    with pytest.raises(ValueError, match="none of them the model's"):
        watch.loop(net, optimizers=[torch.optim.SGD(_net().parameters(), lr=0.1)])
    with watch.loop(net, optimizers=[optimizer]) as loop:
        net(torch.randn(4, 8)).pow(2).mean().backward()
        with pytest.raises(ValueError, match="none of the 1 given"):
            loop.step(other)
        with pytest.raises(TypeError, match="must be a torch optimizer"):
            loop.step(net)
        assert loop.step(optimizer)


# ---------------------------------------------------------------------------------------- Lightning Fabric
def _fabric_loop(fabric: Any, watch: GradWatch, nan_at: int | None = None) -> tuple[nn.Module, list[int]]:
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.05))
    loader = fabric.setup_dataloaders(_data())
    stepped: list[int] = []
    with watch.loop(model, fabric=fabric) as loop:
        for step, (x, y) in enumerate(loader):
            if step == nan_at:
                x = x * float("nan")
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            if loop.step(optimizer, loss):
                optimizer.step()
                stepped.append(step)
            optimizer.zero_grad()
            if loop.should_stop:
                break
    return model, stepped


def test_fabric_loop_writes_through_fabrics_logger(tmp_path):
    from lightning.fabric import Fabric
    from lightning.fabric.loggers import TensorBoardLogger

    fabric = Fabric(accelerator="cpu", devices=1, loggers=TensorBoardLogger(str(tmp_path)))
    watch = GradWatch(on_nonfinite="skip", log_every_n_steps=2, images=False)
    with pytest.warns(GradientWarning, match="Non-finite"):
        model, stepped = _fabric_loop(fabric, watch, nan_at=6)
    log_dir = Path(fabric.logger.log_dir)
    assert 6 not in stepped
    assert len(stepped) == 31
    assert _finite(model)
    acc = events(log_dir)
    assert sorted(scalars(acc, "grad_norm/0")) == list(range(0, 32, 2))  # names without Fabric's wrapper prefix
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 6)]
    assert json.loads((log_dir / "gradwatch.json").read_text())["status"] == "finished"
    assert gradwatch("check", str(log_dir)).returncode == 1


def test_a_fabric_loop_names_its_wrapped_optimizers(tmp_path):
    """``fabric.setup`` returns wrappers: listing those, or the optimizers they wrap, names the same two."""
    from lightning.fabric import Fabric

    for listed in ("wrapped", "plain"):
        fabric = Fabric(accelerator="cpu", devices=1)
        torch.manual_seed(0)
        net = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 1)})
        plain = [torch.optim.SGD(net["a"].parameters(), lr=0.01), torch.optim.SGD(net["b"].parameters(), lr=0.01)]
        model, *wrapped = fabric.setup(net, *plain)
        log_dir = tmp_path / listed
        names = wrapped if listed == "wrapped" else plain
        with GradWatch(log_every_n_steps=1, images=False).loop(model, log_dir=log_dir, optimizers=names) as loop:
            for x, y in _data():
                for optimizer in wrapped:
                    fabric.backward(nn.functional.mse_loss(net["b"](net["a"](x)), y))
                    if loop.step(optimizer):
                        optimizer.step()
                    for o in wrapped:
                        o.zero_grad()
        tags = set(events(log_dir).Tags()["scalars"])
        assert {"gradwatch/total_norm/optimizer_0", "gradwatch/total_norm/optimizer_1"} <= tags, listed


def _fabric_ddp_worker(fabric: Any, root: str) -> None:
    """Rank 1 alone meets a NaN at step 5: both ranks stop together after it."""
    # a rank still alive after 120 s (stuck in training, or at its exit) prints where it is to the captured output and
    # exits: the test fails with its stack, not at the test's timeout
    faulthandler.dump_traceback_later(120, exit=True)
    watch = GradWatch(on_nonfinite="stop", log_every_n_steps=1, images=False)
    net = _net()
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.05))
    steps = 0
    with watch.loop(model, fabric=fabric) as loop, warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientWarning)  # a spawned rank: its alert is read back from its logs
        for step, (x, y) in enumerate(_data(seed=fabric.global_rank)):
            if step == 5 and fabric.global_rank == 1:
                x = x * float("nan")
            loss = nn.functional.mse_loss(model(x), y)
            fabric.backward(loss)
            if loop.step(optimizer, loss):
                optimizer.step()
            optimizer.zero_grad()
            steps += 1
            if loop.should_stop:
                break
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    Path(root, f"rank{fabric.global_rank}.json").write_text(json.dumps({"steps": steps, "finite": finite}))
    # both ranks done before either tears gloo down, and torn down before the process exits: a rank leaving early, or
    # a process exiting with gloo's threads still running, aborted a rank at exit (SIGABRT, seen under load)
    fabric.barrier()
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_fabric_ddp_stops_every_rank_together(tmp_path):
    from lightning.fabric import Fabric
    from lightning.fabric.loggers import TensorBoardLogger
    from lightning.fabric.strategies import DDPStrategy

    fabric = Fabric(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60)),
        loggers=TensorBoardLogger(str(tmp_path / "logs")),
    )
    fabric.launch(_fabric_ddp_worker, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["steps"] for r in ranks] == [6, 6]  # step 5 was the last on both ranks
    assert all(r["finite"] for r in ranks)
    reports = list((tmp_path / "logs").rglob("gradwatch.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert [(a["kind"], a["step"]) for a in report["alerts"]] == [("nonfinite", 5)]  # DDP averaged the NaN in
    assert report["events"]["skipped_steps"] == 1


# ---------------------------------------------------------------------------------------- the examples
def _run_example(name: str, *argv: str) -> Any:
    import runpy

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    return runpy.run_path(str(path))["main"](list(argv))


def test_plain_loop_example(tmp_path):
    with pytest.warns(GradientWarning, match="Exploding"):
        outcome = _run_example("plain_loop", "--quick", "--out", str(tmp_path))
    watched, clipped = outcome["watched"], outcome["clipped"]
    assert watched["alerts"][:1] == [("exploding", 61)]
    assert watched["steps"] <= 63
    assert watched["finite_weights"]
    assert clipped["alerts"] == []
    assert clipped["steps"] == 100
    assert clipped["last_loss"] < 0.5
    assert gradwatch("check", str(tmp_path / "watched")).returncode == 1
    assert gradwatch("check", str(tmp_path / "clipped")).returncode == 0


def test_fabric_loop_example(tmp_path):
    with pytest.warns(GradientWarning, match="Non-finite"):
        outcome = _run_example("fabric_loop", "--quick", "--out", str(tmp_path))
    assert outcome["steps"] == 60
    assert outcome["finite_weights"]
    assert outcome["alerts"] == [("nonfinite", 30)]
    assert gradwatch("check", str(tmp_path)).returncode == 1


@pytest.mark.parametrize("where", ["plain", "fabric"])
def test_a_loop_caps_an_sgd_step_as_the_callback_does(tmp_path, where):
    """``clip="adaptive"`` under SGD (lr 0.05) holds the first step to a tenth of the weights' norm over the learning
    rate, read through Fabric's optimizer wrapper too."""
    watch = GradWatch(clip="adaptive", log_every_n_steps=1, images=False)
    weights = math.sqrt(sum(float(p.detach().norm()) ** 2 for p in _net().parameters()))
    if where == "plain":
        _plain_loop(watch, tmp_path)
        log_dir = tmp_path
    else:
        from lightning.fabric import Fabric
        from lightning.fabric.loggers import TensorBoardLogger

        fabric = Fabric(accelerator="cpu", devices=1, loggers=TensorBoardLogger(str(tmp_path)))
        _fabric_loop(fabric, watch)
        log_dir = Path(fabric.logger.log_dir)
    thresholds = scalars(events(log_dir), "gradwatch/clip_threshold")
    assert thresholds[0] == pytest.approx(0.1 * weights / 0.05, rel=1e-5)
