"""DDP on CPU with gloo, two real processes: same numbers as one process, one writer, decisions taken together."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.strategies import DDPStrategy

from lightning_gradwatch import GradWatch
from tests.dist_models import DistMLP, Recorder, read_ranks
from tests.helpers import events, scalars

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]


def _trainer(root: Path, watch: GradWatch, devices: int = 2, **overrides) -> pl.Trainer:
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=60)) if devices > 1 else "auto"
    kwargs = {
        "default_root_dir": str(root),
        "accelerator": "cpu",
        "devices": devices,
        "strategy": strategy,
        "callbacks": [watch, Recorder(str(root / "ranks"))],
        "max_epochs": 1,
        "use_distributed_sampler": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    return pl.Trainer(**{**kwargs, **overrides})


def test_ddp_norms_equal_single_process_and_rank_zero_writes_once(tmp_path):
    # 2 ranks x batch 8 see the same global batch of 16 as one process with batch 16
    single = _trainer(tmp_path / "single", GradWatch(log_every_n_steps=1), devices=1)
    pl.seed_everything(0)
    single.fit(DistMLP(batch_size=16))
    ddp = _trainer(tmp_path / "ddp", GradWatch(log_every_n_steps=1))
    pl.seed_everything(0)
    ddp.fit(DistMLP(batch_size=8))
    run_dirs = glob.glob(str(tmp_path / "ddp" / "lightning_logs" / "*"))
    assert len(run_dirs) == 1
    assert len(glob.glob(os.path.join(run_dirs[0], "events.out.tfevents.*"))) == 1
    assert os.path.isfile(os.path.join(run_dirs[0], "gradwatch.json"))
    ddp_total = scalars(events(run_dirs[0]), "gradwatch/total_norm")
    single_total = scalars(events(single.logger.log_dir), "gradwatch/total_norm")
    assert sorted(ddp_total) == sorted(single_total) == list(range(16))
    for step in ddp_total:
        assert ddp_total[step] == pytest.approx(single_total[step], rel=1e-5)
    ranks = read_ranks(str(tmp_path / "ddp" / "ranks"))
    for step in range(16):  # every rank measured the same (all-reduced) gradients
        assert ranks[0]["reference"][str(step)] == ranks[1]["reference"][str(step)]
        assert ranks[0]["reference"][str(step)]["__total__"] == pytest.approx(ddp_total[step], rel=1e-5)


def test_ddp_nan_on_one_rank_stops_both_with_finite_weights(tmp_path):
    trainer = _trainer(tmp_path, GradWatch(), max_epochs=3)
    trainer.fit(DistMLP(nan_at=(5, 1)))  # only rank 1's batch is NaN at step 5
    ranks = read_ranks(str(tmp_path / "ranks"))
    assert [r["status"] for r in ranks] == ["finished", "finished"]
    assert [r["global_step"] for r in ranks] == [6, 6]
    assert all(r["finite"] for r in ranks)
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "*"))
    report = json.loads(Path(run_dir, "gradwatch.json").read_text())
    assert [(a["kind"], a["step"]) for a in report["alerts"]] == [("nonfinite", 5)]


def test_ddp_ranks_with_different_losses_judge_the_same_loss_and_stop_together(tmp_path):
    """Rank 1's loss is higher from step 30, by 0.5 doubling every step (the gradients are the same: a constant at
    each step): each detector reads the losses averaged over the ranks, so both see the same climb at the same
    step, keep the same history, and the report of rank 0 holds the alert."""
    trainer = _trainer(tmp_path, GradWatch(on_exploding="stop"), max_epochs=8)
    trainer.fit(DistMLP(loss_offset=(30, 1, 0.5), loss_growth=2.0))
    ranks = read_ranks(str(tmp_path / "ranks"))
    assert ranks[0]["alerts"] == ranks[1]["alerts"]
    [(kind, step, _)] = ranks[0]["alerts"]
    assert kind == "exploding"
    assert 30 < step < 60
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert [r["global_step"] for r in ranks] == [step + 1, step + 1]
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "*"))
    report = json.loads(Path(run_dir, "gradwatch.json").read_text())
    assert [(a["kind"], a["step"]) for a in report["alerts"]] == [("exploding", step)]


def test_ddp_spawn_vanishing_raise_fails_cleanly(tmp_path):
    watch = GradWatch(on_vanishing="raise", vanishing_patience=5, warmup_steps=2)
    trainer = _trainer(tmp_path, watch)
    with pytest.raises(Exception, match="GradientAlertError: Vanishing gradients at step"):
        trainer.fit(DistMLP(sigmoid_depth=10, lr=0.01))
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "*"))
    report = json.loads(Path(run_dir, "gradwatch.json").read_text())  # written by rank 0 before it raised
    assert report["status"] == "failed"
    assert report["error"].startswith("GradientAlertError: Vanishing gradients at step")  # not "the process exited"
    assert [a["kind"] for a in report["alerts"]] == ["vanishing"]
    assert report["alerts"][0]["layers"][0] == "net.0"
    assert [a.to_dict() for a in watch.alerts] == report["alerts"]  # handed back to the launching process


def test_ddp_spawn_hands_the_workers_alerts_back_to_the_callback_the_user_holds(tmp_path):
    """Lightning sends back weights and ``callback_metrics`` from spawned workers, not callbacks: the alerts come
    back through GradWatch's own handoff, once, and a second fit of the same object hands back its own."""
    watch = GradWatch(on_vanishing="warn", vanishing_patience=5, warmup_steps=2)
    trainer = _trainer(tmp_path / "first", watch)
    trainer.fit(DistMLP(sigmoid_depth=10, lr=0.01))
    (run_dir,) = glob.glob(str(tmp_path / "first" / "lightning_logs" / "*"))
    report = json.loads(Path(run_dir, "gradwatch.json").read_text())
    assert [a["kind"] for a in report["alerts"]] == ["vanishing"]
    assert [a.to_dict() for a in watch.alerts] == report["alerts"]
    assert watch.alerts[0].layers[0] == "net.0"
    assert not os.path.exists(watch._handoff.path)  # read once, removed
    assert [a.kind for a in watch.alerts] == ["vanishing"]
    trainer = _trainer(tmp_path / "second", watch)
    trainer.fit(DistMLP())
    assert watch.alerts == []  # the healthy second fit's, not the first's


def test_ddp_spawn_workers_that_cannot_hand_the_alerts_back_say_so(tmp_path, capfd):
    watch = GradWatch()
    watch._handoff.path = str(tmp_path / "missing" / "alerts.json")  # a directory that does not exist
    _trainer(tmp_path, watch).fit(DistMLP())
    assert "GradWatch could not hand its alerts back" in capfd.readouterr().err  # a worker's warning, on its stderr
    assert watch.alerts == []


def test_ddp_spawn_crash_still_leaves_logs_and_report(tmp_path):
    trainer = _trainer(tmp_path, GradWatch(log_every_n_steps=2))
    with pytest.raises(Exception, match="boom at step 7"):
        trainer.fit(DistMLP(fail_at_step=7))
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "*"))
    assert sorted(scalars(events(run_dir), "gradwatch/total_norm")) == [0, 2, 4, 6]
    report = json.loads(Path(run_dir, "gradwatch.json").read_text())
    assert report["status"] == "failed"
    assert report["steps"]["last"] == 6


def _script(tmp_path: Path, scenario: str) -> subprocess.CompletedProcess:
    """`strategy="ddp"` re-launches the command: run it as a script under a timeout, never inside pytest."""
    script = Path(__file__).with_name("ddp_script.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path), scenario], capture_output=True, text=True, timeout=180, env=env
    )


def test_ddp_script_nan_on_one_rank_stops_both(tmp_path):
    result = _script(tmp_path, "nan")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = read_ranks(str(tmp_path / "ranks"))
    assert [r["status"] for r in ranks] == ["finished", "finished"]
    assert [r["global_step"] for r in ranks] == [6, 6]  # NaN at step 5 on rank 0 stops both
    assert all(r["finite"] for r in ranks)
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "*"))
    assert len(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))) == 1
    report = json.loads(Path(run_dir, "gradwatch.json").read_text())
    assert [(a["kind"], a["step"]) for a in report["alerts"]] == [("nonfinite", 5)]
    total = scalars(events(run_dir), "gradwatch/total_norm")
    assert total[0] == pytest.approx(ranks[0]["reference"]["0"]["__total__"], rel=1e-5)


def test_ddp_script_vanishing_raise_fails_both_ranks(tmp_path):
    result = _script(tmp_path, "vanishing_raise")
    assert result.returncode != 0
    assert "GradientAlertError" in result.stderr
    ranks = read_ranks(str(tmp_path / "ranks"))
    assert all(r["status"].startswith("failed: GradientAlertError: Vanishing gradients") for r in ranks)
    assert ranks[0]["global_step"] == ranks[1]["global_step"]
    assert all(r["finite"] for r in ranks)
