"""Fixed and adaptive clipping: the policy alone, then with a real Trainer."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from examples.harness import finite_weights
from lightning_gradwatch import GradWatch
from lightning_gradwatch.clipping import AdaptiveClipThreshold, clip_coefficient, scale_gradients_
from tests.helpers import events, flavour, make_mlp_module, reference_norms, scalars, trainer_kwargs

pl = flavour("lightning.pytorch")


class GradRecorder(pl.Callback):
    """Placed before GradWatch in the callback list: sees the gradients before GradWatch touches them."""

    def __init__(self) -> None:
        self.before: dict[int, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
        self.before[trainer.global_step] = torch.cat(grads).double().clone()


def test_clip_coefficient_matches_torch():
    grads = [torch.randn(10, 10) * 5 for _ in range(3)]
    params = [torch.nn.Parameter(torch.zeros(10, 10)) for _ in range(3)]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
    expected = [p.grad.clone() for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    scale_gradients_(params, clip_coefficient(total, 1.0))
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e)
    assert clip_coefficient(float("nan"), 1.0) == 1.0


def test_scale_gradients_sparse_and_missing():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 1, 2])).sum().backward()
    frozen = torch.nn.Parameter(torch.ones(2))
    before = emb.weight.grad.to_dense().clone()
    scale_gradients_([emb.weight, frozen], 0.5)
    torch.testing.assert_close(emb.weight.grad.to_dense(), 0.5 * before)


def test_adaptive_threshold_follows_history_and_ignores_a_single_spike():
    clip = AdaptiveClipThreshold(warmup_steps=10)
    g = torch.Generator().manual_seed(0)
    norms = (1.0 + 0.1 * torch.randn(200, generator=g)).abs().tolist()
    for norm in norms[:100]:
        clip.update(norm)
    before = clip.threshold()
    assert 1.0 < before < 2.0
    assert clip.update(1e6) == before  # the spike is clipped to the threshold in force
    assert clip.threshold() == pytest.approx(before, rel=0.05)  # and barely moves it
    for norm in norms[100:]:
        clip.update(10 * norm)  # a lasting change of scale is followed
    assert clip.threshold() > 8


def test_adaptive_threshold_warmup_and_cap():
    clip = AdaptiveClipThreshold(warmup_steps=5, max_norm=3.0)
    assert [clip.update(n) for n in (1.0, 2.0, 10.0)] == [3.0, 3.0, 3.0]
    uncapped = AdaptiveClipThreshold(warmup_steps=5)
    assert all(math.isinf(uncapped.update(n)) for n in (1.0, 2.0, 10.0, 1.0, 1.0))
    assert math.isfinite(uncapped.threshold())


def test_adaptive_threshold_state_round_trip():
    a = AdaptiveClipThreshold(warmup_steps=3)
    for n in (1.0, 1.2, 0.8, 1.1, 5.0):
        a.update(n)
    b = AdaptiveClipThreshold(warmup_steps=3)
    b.load_state_dict(a.state_dict())
    assert b.threshold() == a.threshold()
    AdaptiveClipThreshold().load_state_dict({})  # an empty (older) state loads with defaults


@pytest.mark.parametrize("accumulate", [1, 4])
def test_fixed_clip_bounds_norm_and_keeps_direction(tmp_path, accumulate):
    model = make_mlp_module(pl, lr=0.01)
    recorder = GradRecorder()
    trainer = pl.Trainer(
        callbacks=[recorder, GradWatch(clip=0.5, log_every_n_steps=1)],
        accumulate_grad_batches=accumulate,
        **trainer_kwargs(tmp_path),
    )
    trainer.fit(model)
    acc = events(trainer.logger.log_dir)
    before, after = scalars(acc, "gradwatch/total_norm"), scalars(acc, "gradwatch/clipped_norm")
    assert scalars(acc, "gradwatch/clip_threshold") == dict.fromkeys(before, 0.5)
    assert len(before) == 16 // accumulate
    clipped = 0
    for step, norm in before.items():
        post = model.reference[step]["__total__"]  # the module's hook runs after GradWatch: clipped gradients
        assert post <= 0.5 * (1 + 1e-6)
        assert after[step] == pytest.approx(post, rel=1e-5)
        assert norm == pytest.approx(recorder.before[step].norm().item(), rel=1e-5)
        if norm > 0.5:
            clipped += 1
            cosine = torch.nn.functional.cosine_similarity(recorder.before[step], model.post_grads[step], dim=0)
            assert cosine.item() == pytest.approx(1.0, abs=1e-6)
    assert clipped > 0


def test_adaptive_clip_in_training_learns_threshold_and_logs(tmp_path):
    model = make_mlp_module(pl, lr=0.01, batches=1024)
    watch = GradWatch(clip="adaptive", clip_warmup_steps=10, log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(model)
    acc = events(trainer.logger.log_dir)
    thresholds = scalars(acc, "gradwatch/clip_threshold")
    assert min(thresholds) == 10  # nothing before warm-up ends
    before, after = scalars(acc, "gradwatch/total_norm"), scalars(acc, "gradwatch/clipped_norm")
    for step, threshold in thresholds.items():
        assert after[step] <= threshold * (1 + 1e-6)
        assert after[step] == pytest.approx(min(before[step], threshold), rel=1e-6)
        assert model.reference[step]["__total__"] == pytest.approx(after[step], rel=1e-5)
    clipped = sum(before[s] > thresholds[s] for s in thresholds)
    assert watch.state_dict()["summary"]["events"].get("clipped_steps", 0) == clipped
    assert clipped < 0.25 * len(thresholds)  # a healthy run is rarely clipped


def test_clip_under_bf16_mixed_and_fp16_scaler(tmp_path):
    from lightning.pytorch.plugins import MixedPrecision

    model = make_mlp_module(pl, lr=0.01)
    trainer = pl.Trainer(
        callbacks=[GradWatch(clip=0.3, log_every_n_steps=1)], precision="bf16-mixed", **trainer_kwargs(tmp_path)
    )
    trainer.fit(model)
    assert all(model.reference[s]["__total__"] <= 0.3 * (1 + 1e-6) for s in model.reference)

    model = make_mlp_module(pl, lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**26)  # the first steps overflow fp16
    watch = GradWatch(clip=0.3, log_every_n_steps=1)
    trainer = pl.Trainer(
        callbacks=[watch],
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
        **trainer_kwargs(tmp_path / "fp16"),
    )
    trainer.fit(model)
    events_ = watch.state_dict()["summary"]["events"]
    assert 1 <= events_["amp_overflow_steps"] < 16
    finite = [s for s in model.reference if math.isfinite(model.reference[s]["__total__"])]
    assert len(finite) == 16 - events_["amp_overflow_steps"]
    assert events_["clipped_steps"] >= 1
    assert all(model.reference[s]["__total__"] <= 0.3 * (1 + 1e-6) for s in finite)
    assert watch.alerts == []
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_clip_refuses_trainer_gradient_clip_val(tmp_path):
    trainer = pl.Trainer(callbacks=[GradWatch(clip=1.0)], gradient_clip_val=0.5, **trainer_kwargs(tmp_path))
    with pytest.raises(ValueError, match=r"Trainer\(gradient_clip_val=0.5\): use one of them"):
        trainer.fit(make_mlp_module(pl))


def test_clip_two_optimizers_manual_optimization(tmp_path):
    class TwoOptimizers(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.a = torch.nn.Linear(8, 8)
            self.b = torch.nn.Linear(8, 1)
            self.post: list[tuple[str, float]] = []

        def training_step(self, batch, batch_idx):
            opt_a, opt_b = self.optimizers()
            x, _ = batch
            loss = 100 * self.b(self.a(x)).pow(2).mean()
            opt_a.zero_grad()
            opt_b.zero_grad()
            self.manual_backward(loss)
            opt_a.step()
            opt_b.step()

        def on_before_optimizer_step(self, optimizer):
            owner = "a" if optimizer.param_groups[0]["params"][0] is self.a.weight else "b"
            module = self.a if owner == "a" else self.b
            self.post.append((owner, reference_norms(module)["__total__"]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.a.parameters(), lr=1e-3), torch.optim.SGD(self.b.parameters(), lr=1e-3)

        def train_dataloader(self):
            from tests.helpers import regression_data

            return regression_data(64)

    model = TwoOptimizers()
    trainer = pl.Trainer(callbacks=[GradWatch(clip=0.1, log_every_n_steps=1)], **trainer_kwargs(tmp_path))
    trainer.fit(model)
    assert {owner for owner, _ in model.post} == {"a", "b"}
    assert all(norm <= 0.1 * (1 + 1e-6) for _, norm in model.post)
    tags = set(events(trainer.logger.log_dir).Tags()["scalars"])
    assert {"gradwatch/clipped_norm/optimizer_0", "gradwatch/clipped_norm/optimizer_1"} <= tags


def test_adaptive_clip_state_resumes(tmp_path):
    watch = GradWatch(clip="adaptive", clip_warmup_steps=4, log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, enable_checkpointing=True))
    trainer.fit(make_mlp_module(pl, lr=0.01))
    expected = AdaptiveClipThreshold(warmup_steps=4)
    expected.load_state_dict(watch.state_dict()["clippers"]["0"])
    resumed = GradWatch(clip="adaptive", clip_warmup_steps=4, log_every_n_steps=1)
    trainer2 = pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path / "resumed", max_epochs=2))
    trainer2.fit(make_mlp_module(pl, lr=0.01), ckpt_path=trainer.checkpoint_callback.best_model_path)
    thresholds = scalars(events(trainer2.logger.log_dir), "gradwatch/clip_threshold")
    assert min(thresholds) == 16  # the run continues at step 16, with no second warm-up
    assert thresholds[16] == pytest.approx(expected.threshold(), rel=1e-6)  # TensorBoard keeps float32


def _fit_divergence(tmp_path, name: str, steps: int, **watch_kwargs):
    """Train the demo regression under plain SGD; every response not under test only warns."""
    from lightning_gradwatch.demos import Divergence

    corrupt = watch_kwargs.pop("corrupt", True)
    torch.manual_seed(0)
    model = Divergence(corrupt_at_step=60, corrupt_scale=1e4) if corrupt else Divergence(lr=0.05)
    responses = {"on_vanishing": "warn", "on_exploding": "warn", "on_nonfinite": "warn"}
    watch = GradWatch(**{**responses, **watch_kwargs})
    kwargs = {**trainer_kwargs(tmp_path / name), "max_steps": steps, "max_epochs": -1}
    trainer = pl.Trainer(callbacks=[watch], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    return model, watch, trainer


def test_corrupted_labels_diverge_to_nan_without_clipping(tmp_path):
    """The reference for the rescue tests below: the same run, unclipped, ends with NaN weights."""
    model, watch, trainer = _fit_divergence(tmp_path, "none", 100)
    assert trainer.global_step == 100
    assert not finite_weights(model)
    assert not math.isfinite(model.losses[-1])
    assert {a.kind for a in watch.alerts} >= {"exploding", "nonfinite"}


@pytest.mark.parametrize("clip_kwargs", [{"clip": "adaptive"}, {"on_exploding": "clip"}], ids=["adaptive", "spikes"])
def test_clipping_rescues_corrupted_labels_without_a_tuned_number(tmp_path, clip_kwargs):
    model, watch, trainer = _fit_divergence(tmp_path, "clipped", 100, **clip_kwargs)
    assert trainer.global_step == 100
    assert finite_weights(model)
    assert all(math.isfinite(loss) for loss in model.losses)
    assert sum(model.losses[-10:]) / 10 < 1.0  # back to ordinary regression loss, not merely finite
    clipped = watch.state_dict()["summary"]["events"].get("clipped_steps", 0)
    assert 1 <= clipped <= 10  # the corrupted step and its aftermath, not the whole run
    assert not [a for a in watch.alerts if a.kind == "nonfinite"]


def test_spike_clipping_leaves_a_healthy_run_untouched(tmp_path):
    reference, _, _ = _fit_divergence(tmp_path, "reference", 150, corrupt=False)
    model, watch, _ = _fit_divergence(tmp_path, "spikes", 150, corrupt=False, on_exploding="clip")
    assert watch.state_dict()["summary"]["events"].get("clipped_steps", 0) == 0
    assert not watch.alerts
    for p, q in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
