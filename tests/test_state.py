"""Checkpointed state: a resumed run continues its statistics; old and partial states load; instances stay apart."""

from __future__ import annotations

import pytest
import torch

from lightning_gradwatch import GradientWarning, GradWatch
from lightning_gradwatch.detectors import GradientDetector
from tests.helpers import events, flavour, heatmap_cells, make_mlp_module, scalars, trainer_kwargs

pl = flavour("lightning.pytorch")


@pytest.fixture(autouse=True)
def seeded():
    """The same weights whichever tests ran before (the random state is left as it was found): with some, the
    resumed Adam runs' loss and gradient norm climb together for a few steps, an alert these tests do not expect."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def _first_fit(tmp_path, watch):
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, enable_checkpointing=True))
    with pytest.warns(GradientWarning, match="Non-finite gradients .* at step 2"):  # the alert the checkpoint keeps
        trainer.fit(make_mlp_module(pl, nan_at_step=2, optimizer="adam", lr=0.01))
    return trainer.checkpoint_callback.best_model_path


def test_resume_continues_detector_summary_and_alerts(tmp_path):
    watch = GradWatch(on_nonfinite="skip", warmup_steps=20, log_every_n_steps=1)
    ckpt = _first_fit(tmp_path / "first", watch)
    saved = watch.state_dict()
    assert saved["detectors"]["0"]["steps"] == 15  # 16 steps, one of them NaN
    resumed = GradWatch(on_nonfinite="skip", warmup_steps=20, log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "second", max_epochs=2))
    trainer.fit(make_mlp_module(pl, optimizer="adam", lr=0.01), ckpt_path=ckpt)
    state = resumed.state_dict()
    assert state["detectors"]["0"]["steps"] == 31  # continued, not restarted
    assert state["summary"]["measured_steps"] == 32
    assert [(a.kind, a.step) for a in resumed.alerts] == [("nonfinite", 2)]  # the run's history is kept
    thresholds = scalars(events(trainer.logger.log_dir), "gradwatch/spike_threshold")
    # the warm-up of 20 finite steps had 15 behind it: it ends at step 20, not 20 steps after resuming (36)
    assert min(thresholds) == 20


def test_changing_a_response_when_resuming_keeps_the_detector_state(tmp_path):
    watch = GradWatch(on_nonfinite="skip", on_exploding="warn")
    ckpt = _first_fit(tmp_path / "first", watch)
    resumed = GradWatch(on_nonfinite="stop", on_exploding="skip", clip=1.0)  # only the responses differ
    assert resumed.state_key == watch.state_key
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "second", max_epochs=2))
    trainer.fit(make_mlp_module(pl, optimizer="adam", lr=0.01), ckpt_path=ckpt)
    assert resumed.state_dict()["detectors"]["0"]["steps"] == 15 + 16
    assert [(a.kind, a.step) for a in resumed.alerts] == [("nonfinite", 2)]


def test_checkpoint_keyed_with_the_responses_still_loads(tmp_path):
    watch = GradWatch(on_nonfinite="skip")
    ckpt = _first_fit(tmp_path / "first", watch)
    checkpoint = torch.load(ckpt, weights_only=False)
    state = checkpoint["callbacks"].pop(watch.state_key)
    older = "GradWatch{'granularity': 'module', 'include': None, 'exclude': None, 'on_vanishing': 'warn',"
    older += " 'on_exploding': 'warn', 'on_nonfinite': 'skip', 'clip': None}"  # the key as earlier versions wrote it
    checkpoint["callbacks"][older] = state
    torch.save(checkpoint, tmp_path / "older.ckpt")
    resumed = GradWatch(on_nonfinite="skip")
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "second", max_epochs=2))
    trainer.fit(make_mlp_module(pl, optimizer="adam", lr=0.01), ckpt_path=tmp_path / "older.ckpt")
    assert resumed.state_dict()["detectors"]["0"]["steps"] == 15 + 16


def test_checkpoint_from_an_older_version_loads_with_defaults(tmp_path):
    watch = GradWatch()
    ckpt = _first_fit(tmp_path / "first", watch)
    checkpoint = torch.load(ckpt, weights_only=False)
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith("GradWatch")]
    checkpoint["callbacks"][key] = {"detectors": {"0": {"steps": 7, "mean": -0.5}}}  # keys since added are missing
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    resumed = GradWatch()
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "second", max_epochs=2))
    trainer.fit(make_mlp_module(pl, optimizer="adam", lr=0.01), ckpt_path=old)
    state = resumed.state_dict()
    assert state["detectors"]["0"]["steps"] == 7 + 16
    assert state["summary"]["measured_steps"] == 16
    detector = GradientDetector()
    detector.load_state_dict({})  # nothing at all: defaults
    assert detector.state_dict()["steps"] == 0


@pytest.mark.parametrize("older", [False, True], ids=["checkpoint", "checkpoint-without-heatmap-grid"])
def test_resumed_heatmap_keeps_the_steps_before_the_resume(tmp_path, older):
    """A resumed run's heat map starts at the run's first step: from the checkpointed grid, or, in a checkpoint of
    an older version without one, rebuilt from the layers' histories."""
    settings = {"on_nonfinite": "skip", "log_every_n_steps": 1, "histogram_every_n_steps": 8, "overhead_budget": None}
    watch = GradWatch(**settings)
    ckpt = _first_fit(tmp_path / "first", watch)
    if older:
        checkpoint = torch.load(ckpt, weights_only=False)
        del checkpoint["callbacks"][watch.state_key]["summary"]["grids"]
        ckpt = tmp_path / "older.ckpt"
        torch.save(checkpoint, ckpt)
    resumed = GradWatch(**settings)
    trainer = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "second", max_epochs=2))
    trainer.fit(make_mlp_module(pl, optimizer="adam", lr=0.01), ckpt_path=ckpt)
    last = events(trainer.logger.log_dir).Images("gradwatch/gradient_heatmap")[-1]
    assert last.step == 24
    cells = heatmap_cells(last.encoded_image_string)
    assert len(cells) == 3  # net.0, net.2, head
    # steps 0 to 24, blank at step 2 (its NaN gradients were skipped); a layer's history kept no NaN: no column
    steps = [step for step in range(25) if not (older and step == 2)]
    assert all(row == [step == 2 for step in steps] for row in cells)


def test_two_instances_keep_separate_state(tmp_path):
    clipping = GradWatch(clip="adaptive", clip_warmup_steps=3, on_nonfinite="skip")
    watching = GradWatch(granularity="parameter", on_nonfinite="skip")
    assert clipping.state_key != watching.state_key
    trainer = pl.Trainer(
        callbacks=[clipping, watching], **trainer_kwargs(tmp_path / "first", enable_checkpointing=True)
    )
    with pytest.warns(GradientWarning) as caught:
        trainer.fit(make_mlp_module(pl, nan_at_step=2))
    said = [str(w.message).split(":")[0] for w in caught if w.category is GradientWarning]
    # the first instance alerts and skips the step, so the second finds no gradient there
    assert said == [
        "Non-finite gradients (NaN/Inf) at step 2",
        "GradWatch found no gradient on the watched parameters of optimizer 0 at step 2 (all frozen or unused, or the"
        " step skipped its backward). Such steps are not measured.",
    ]
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert checkpoint["callbacks"][clipping.state_key]["clippers"]
    assert not checkpoint["callbacks"][watching.state_key]["clippers"]
    a, b = (
        GradWatch(clip="adaptive", clip_warmup_steps=3, on_nonfinite="skip"),
        GradWatch(granularity="parameter", on_nonfinite="skip"),
    )
    trainer2 = pl.Trainer(callbacks=[a, b], **trainer_kwargs(tmp_path / "second", max_epochs=2))
    trainer2.fit(make_mlp_module(pl), ckpt_path=trainer.checkpoint_callback.best_model_path)
    assert a.state_dict()["clippers"]["0"]["steps"] > 3
    assert b.state_dict()["clippers"] == {}
    assert [x.kind for x in a.alerts] == ["nonfinite"]
    assert b.alerts == []  # the first instance skipped the NaN step: the second never saw its gradients
    assert b.state_dict()["summary"]["measured_steps"] == 15 + 16  # its own count, restored and continued


@pytest.mark.parametrize("kwargs", [{}, {"on_exploding": "skip"}, {"clip": 1.0}])
def test_state_key_is_stable_for_the_same_configuration(kwargs):
    assert GradWatch(**kwargs).state_key == GradWatch(**kwargs, log_every_n_steps=7, images=False).state_key
