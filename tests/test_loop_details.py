"""GradWatch in loops without a Trainer, beyond the basics of ``test_loops.py``.

The loss-aware rules alert as under a Trainer, fp16 under Fabric, other Fabric loggers, resuming, the end of a run
by an exception, bad arguments, ``torch.distributed`` without Fabric, and plain loops without Lightning installed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from lightning_gradwatch import GradientAlertError, GradientWarning, GradWatch, WatchedLoop
from tests.helpers import events, flavour, scalars, trainer_kwargs
from tests.test_loops import _data, _finite, _net

pl = flavour("lightning.pytorch")


def _growing_lr(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """SGD's learning rate x1.05 a step: a divergence whose loss climbs with its norm (the trend rule's case)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.05**step)


def _diverging_loop(watch: GradWatch, epochs: int = 4) -> None:
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    schedule = _growing_lr(optimizer)
    with watch.loop(model) as loop:
        for _ in range(epochs):
            for x, y in _data():
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                if loop.step(optimizer, loss):
                    optimizer.step()
                optimizer.zero_grad()
                schedule.step()


def test_plain_loop_and_trainer_give_the_same_alerts_when_the_loss_tells_a_divergence(tmp_path):
    """The trend rule reads the loss: a loop hands it over as a Trainer does (a step late), so both alert alike."""

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": _growing_lr(optimizer), "interval": "step"}}

        def train_dataloader(self) -> Any:
            return _data()

    trainer_watch = GradWatch(log_every_n_steps=1, images=False)
    trainer = pl.Trainer(callbacks=[trainer_watch], **trainer_kwargs(tmp_path, max_epochs=4, logger=False))
    with pytest.warns(GradientWarning):
        trainer.fit(Module())

    loop_watch = GradWatch(log_every_n_steps=1, images=False)
    with pytest.warns(GradientWarning):
        _diverging_loop(loop_watch)
    by_trainer = [(a.kind, a.step, tuple(n.removeprefix("net.") for n in a.layers)) for a in trainer_watch.alerts]
    assert [(a.kind, a.step, a.layers) for a in loop_watch.alerts] == by_trainer
    assert [a.extra.get("rule") for a in loop_watch.alerts][:1] == ["trend"]


def _fabric_fp16_loop(fabric: Any, watch: GradWatch, net: nn.Module) -> tuple[WatchedLoop, dict[int, float], list[int]]:
    """64 steps with a NaN pair at steps 50-51; returns the loop, the unscaled finite norms, the steps taken."""
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.05))
    reference: dict[int, float] = {}
    stepped: list[int] = []
    with watch.loop(model, fabric=fabric) as loop:
        for step, (x, y) in enumerate(_data(n=1024)):
            if step in (50, 51):
                x = x * float("nan")
            loss = nn.functional.mse_loss(model(x).float(), y)
            fabric.backward(loss)
            if loop.step(optimizer, loss):
                grads = [p.grad for p in net.parameters()]
                if all(bool(torch.isfinite(g).all()) for g in grads):
                    reference[step] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
                optimizer.step()
                stepped.append(step)
            optimizer.zero_grad()
    return loop, reference, stepped


def test_fabric_fp16_unscales_through_the_precision_plugin_and_keeps_its_scaler_going(tmp_path):
    """fp16 under Fabric on CPU, scaler starting at 2**40; a NaN pair at steps 50-51 is dropped, training goes on.

    With ``amp_overflow_patience=2`` the first NaN step is an overflow the scaler skips, the second an alert whose
    update GradWatch drops: Fabric's ``optimizer.step()`` is then not called, so GradWatch updates the scaler itself
    (else the next step's unscaling would fail). Scalars go to Fabric's CSV logger.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.loggers import CSVLogger
    from lightning.fabric.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    precision = MixedPrecision("16-mixed", "cpu", scaler)
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[precision], loggers=CSVLogger(str(tmp_path)))
    net = _net()
    watch = GradWatch(on_nonfinite="skip", amp_overflow_patience=2, log_every_n_steps=1, images=False)
    with pytest.warns(GradientWarning, match="Non-finite"):
        loop, reference, stepped = _fabric_fp16_loop(fabric, watch, net)
    assert [(a.kind, a.step) for a in watch.alerts] == [("nonfinite", 51)]
    assert set(range(64)) - set(stepped) == {51}
    assert _finite(net)
    report = json.loads(Path(loop.log_dir, "gradwatch.json").read_text())
    assert report["events"]["amp_overflow_steps"] > 10
    assert report["events"]["skipped_steps"] == 1
    header, *rows = Path(loop.log_dir, "metrics.csv").read_text().splitlines()
    columns = header.split(",")
    step_at, total_at = columns.index("step"), columns.index("gradwatch/total_norm")
    measured = {int(r.split(",")[step_at]): float(r.split(",")[total_at]) for r in rows if r.split(",")[total_at]}
    assert reference
    assert set(reference) <= set(measured)
    for step, value in reference.items():
        assert measured[step] == pytest.approx(value, rel=1e-3)  # the unscaled norm


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = list(_data()) * 2
    x, y = batches[30]
    batches[30] = (x * float("nan"), y)
    return batches


def _train(loop: WatchedLoop, model: nn.Module, optimizer: torch.optim.Optimizer, stop: int) -> None:
    """Enter the loop and train up to step ``stop``, from the step it is at."""
    with loop:
        for x, y in _batches()[loop.global_step : stop]:
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if loop.step(optimizer, loss):
                optimizer.step()
            optimizer.zero_grad()


def test_a_resumed_loop_continues_its_steps_and_detectors(tmp_path):
    """40 steps in one go, and 20 + a checkpoint + 20 in a new process's objects: the same GradWatch state."""
    whole = GradWatch(on_nonfinite="skip", log_every_n_steps=1, images=False)
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    whole_loop = whole.loop(model, log_dir=tmp_path / "whole")
    with pytest.warns(GradientWarning):
        _train(whole_loop, model, optimizer, 40)
    preview = GradWatch().loop(_net())
    preview.load_state_dict(whole_loop.state_dict())  # read before the `with`, as after it
    assert (preview.global_step, [(a.kind, a.step) for a in preview.alerts]) == (40, [("nonfinite", 30)])

    first = GradWatch(on_nonfinite="skip", log_every_n_steps=1, images=False)
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loop = first.loop(model, log_dir=tmp_path / "first")
    _train(loop, model, optimizer, 20)
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "gradwatch": loop.state_dict()}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)

    resumed = GradWatch(on_nonfinite="skip", log_every_n_steps=1, images=False)
    model = _net(seed=1)
    model.load_state_dict(checkpoint["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    optimizer.load_state_dict(checkpoint["optimizer"])
    loop = resumed.loop(model, log_dir=tmp_path / "resumed")
    loop.load_state_dict(checkpoint["gradwatch"])
    assert (loop.global_step, loop.alerts) == (20, [])
    with pytest.warns(GradientWarning):
        _train(loop, model, optimizer, 40)
    assert loop.global_step == 40
    assert [(a.kind, a.step) for a in resumed.alerts] == [("nonfinite", 30)]
    assert [(a.kind, a.step) for a in whole.alerts] == [("nonfinite", 30)]
    assert resumed.state_dict() == whole.state_dict()
    assert sorted(scalars(events(tmp_path / "resumed"), "gradwatch/total_norm")) == list(range(20, 40))


def _loop_failing_at(stop: int, error: BaseException, log_dir: Path) -> None:
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with GradWatch(log_every_n_steps=1).loop(model, log_dir=log_dir) as loop:
        for step, (x, y) in enumerate(_data()):
            nn.functional.mse_loss(model(x), y).backward()
            loop.step(optimizer)
            if step == stop:
                raise error


@pytest.mark.parametrize(
    ("error", "status"), [(KeyboardInterrupt(), "interrupted"), (ValueError("bad batch"), "failed")]
)
def test_an_exception_leaving_the_loop_ends_the_report_with_it(tmp_path, error, status):
    with pytest.raises(type(error)):
        _loop_failing_at(3, error, tmp_path)
    report = json.loads((tmp_path / "gradwatch.json").read_text())
    assert report["status"] == status
    assert report["error"].startswith(type(error).__name__)
    assert sorted(scalars(events(tmp_path), "gradwatch/total_norm")) == [0, 1, 2, 3]  # flushed


def test_loop_refuses_what_it_cannot_watch(tmp_path):
    watch = GradWatch()
    model = _net()
    with pytest.raises(TypeError, match="Fabric"):
        watch.loop(model, fabric=object())
    with pytest.raises(TypeError, match=r"nn\.Module"):
        watch.loop(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="GradScaler"):
        watch.loop(model, scaler=object())
    with pytest.raises(TypeError, match="log_dir"):
        watch.loop(model, log_dir=3)  # type: ignore[arg-type]
    with watch.loop(model) as loop:
        with pytest.raises(RuntimeError, match="already watching"), watch.loop(_net()):
            pass
        with pytest.raises(ValueError, match="none of them the model's"):
            loop.step(torch.optim.SGD(_net().parameters(), lr=0.1))
        with pytest.raises(TypeError, match="optimizer"):
            loop.step(model)
        nn.functional.mse_loss(model(torch.randn(4, 8)), torch.zeros(4, 1)).backward()
        with pytest.raises(ValueError, match="one number"):
            loop.step(torch.optim.SGD(model.parameters(), lr=0.1), torch.ones(3))
    with pytest.raises(RuntimeError, match="has ended"):
        loop.step(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="runs once"), loop:
        pass


def _unscaled_first() -> None:
    """One step of a plain fp16 loop that unscales before ``loop.step``."""
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    with GradWatch().loop(model, scaler=scaler) as loop:
        x, y = next(iter(_data()))
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        scaler.unscale_(optimizer)
        loop.step(optimizer)


def test_a_scaler_unscaled_before_the_step_is_an_error_that_says_the_order():
    with pytest.raises(RuntimeError, match=r"call `loop.step\(...\)` before your own"):
        _unscaled_first()


def _nan_loop(watch: GradWatch, nan_at: int) -> WatchedLoop:
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with watch.loop(model) as loop:
        for step, (x, y) in enumerate(_data()):
            loss = nn.functional.mse_loss(model(x * (float("nan") if step == nan_at else 1.0)), y)
            loss.backward()
            if loop.step(optimizer, loss):
                optimizer.step()
            optimizer.zero_grad()
    return loop


def test_each_loop_keeps_its_own_alerts():
    watch = GradWatch(on_nonfinite="skip")
    alerts = []
    for nan_at in (2, 5):
        with pytest.warns(GradientWarning):
            loop = _nan_loop(watch, nan_at)
        alerts.append(loop.alerts)
    assert [[a.step for a in found] for found in alerts] == [[2], [5]]
    assert watch.alerts is alerts[-1]


def test_a_raise_under_a_loop_names_the_step_and_the_layers():
    with pytest.raises(GradientAlertError) as caught:
        _nan_loop(GradWatch(on_nonfinite="raise"), nan_at=0)
    assert (caught.value.alert.step, caught.value.alert.layers) == (0, ("0", "2", "4"))


# ---------------------------------------------------------------------------------------- torch.distributed
def _plain_distributed_worker(rank: int, root: str, port: int) -> None:
    """No DDP wrapper: each rank keeps its own gradients, and only rank 1's are NaN at step 5."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        model = _net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        watch = GradWatch(on_nonfinite="stop", log_every_n_steps=1, images=False)
        steps = 0
        with watch.loop(model, log_dir=Path(root, "logs")) as loop, warnings.catch_warnings():
            warnings.simplefilter("ignore", GradientWarning)  # a spawned rank: its alert is read back from its logs
            for step, (x, y) in enumerate(_data(seed=rank)):
                if step == 5 and rank == 1:
                    x = x * float("nan")
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                if loop.step(optimizer, loss):
                    optimizer.step()
                optimizer.zero_grad()
                steps += 1
                if loop.should_stop:
                    break
        outcome = {"steps": steps, "finite": _finite(model), "alerts": [(a.kind, a.step) for a in watch.alerts]}
        Path(root, f"rank{rank}.json").write_text(json.dumps(outcome))
        dist.barrier()  # both ranks done before either tears gloo down (a rank leaving early can abort the other)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(240)
def test_plain_loop_under_torch_distributed_decides_on_every_rank_together(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_plain_distributed_worker, args=(str(tmp_path), port), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["steps"] for r in ranks] == [6, 6]  # rank 0 stops at rank 1's NaN step
    assert all(r["finite"] for r in ranks)
    # rank 0's own gradients had no NaN (no DDP averages them): it records rank 1's alert as a stand-in of its kind
    assert [r["alerts"] for r in ranks] == [[["nonfinite", 5]], [["nonfinite", 5]]]
    assert len(list((tmp_path / "logs").glob("events.out.tfevents.*"))) == 1  # global rank 0 writes
    report = json.loads((tmp_path / "logs" / "gradwatch.json").read_text())
    assert report["events"]["skipped_steps"] == 1
    assert [(a["kind"], a["step"]) for a in report["alerts"]] == [("nonfinite", 5)]
    assert report["alerts"][0]["message"].startswith("Non-finite gradients on another process at step 5")
    from tests.test_cli import gradwatch

    checked = gradwatch("check", str(tmp_path / "logs"))  # it passed a run stopped for rank 1's NaN
    assert checked.returncode == 1, checked.stdout + checked.stderr


# ---------------------------------------------------------------------------------------- without Lightning
_WITHOUT_LIGHTNING = """
import sys, warnings
for name in ("lightning", "pytorch_lightning", "lightning_fabric"):
    sys.modules[name] = None  # as if not installed: importing them raises ImportError
import torch
from lightning_gradwatch import GradWatch, GradientWarning
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
watch = GradWatch(on_nonfinite="skip", log_every_n_steps=1)
with watch.loop(model, log_dir=sys.argv[1]) as loop, warnings.catch_warnings():
    warnings.simplefilter("ignore", GradientWarning)  # its own process; the test reads its logs
    for step in range(6):
        loss = model(torch.randn(8, 4) * (float("nan") if step == 2 else 1.0)).pow(2).mean()
        loss.backward()
        if loop.step(optimizer, loss):
            optimizer.step()
        optimizer.zero_grad()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning") and sys.modules[m])
print([(a.kind, a.step) for a in watch.alerts], loaded)
"""


def test_a_plain_loop_needs_no_lightning(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LIGHTNING, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[('nonfinite', 2)] []"
    assert json.loads((tmp_path / "gradwatch.json").read_text())["status"] == "finished"
    assert sorted(scalars(events(tmp_path), "gradwatch/total_norm")) == list(range(6))


def test_a_loop_of_known_length_charts_as_a_trainer_run_of_that_length(tmp_path):
    """145 steps told to GradWatch: a point every step, as a Trainer run of 145 steps gets (else one every 50).

    Without the overhead budget: a step of this 4-input linear model takes well under a millisecond, and on a loaded
    machine the budget thins the charts (every second step from step 5, seen once in a full run).
    """
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for steps, where in ((145, tmp_path / "known"), (None, tmp_path / "unknown")):
        with GradWatch(images=False, overhead_budget=None).loop(model, log_dir=where, steps=steps) as loop:
            for _ in range(145):
                model(torch.randn(8, 4)).pow(2).mean().backward()
                if loop.step(optimizer):
                    optimizer.step()
                optimizer.zero_grad()
    assert sorted(scalars(events(tmp_path / "known"), "gradwatch/total_norm")) == list(range(145))
    assert sorted(scalars(events(tmp_path / "unknown"), "gradwatch/total_norm")) == [0, 50, 100]
    with pytest.raises(ValueError, match="`steps` must be >= 1"):
        GradWatch().loop(model, steps=0)
