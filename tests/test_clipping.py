"""Fixed and adaptive clipping: the policy alone, then with a real Trainer."""

from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.harness import finite_weights, single_thread
from lightning_gradwatch import GradientWarning, GradWatch
from lightning_gradwatch.clipping import AdaptiveClipThreshold, clip_coefficient, scale_gradients_
from lightning_gradwatch.demos import RingGan
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
    clip = AdaptiveClipThreshold(use_loss=True)
    g = torch.Generator().manual_seed(0)
    norms = (1.0 + 0.1 * torch.randn(200, generator=g)).abs().tolist()
    for norm in norms[:100]:
        clip.update(norm)
    before = clip.threshold()
    assert 1.2 < before < 2.5
    assert clip.update(1e6) < 1.0  # the spike is scaled down to the typical norm
    assert clip.threshold() == pytest.approx(before, rel=0.05)  # and barely moves the threshold
    for norm in norms[100:]:
        clip.update(10 * norm)  # a lasting change of scale is followed
    assert clip.threshold() > 12


def test_adaptive_threshold_leaves_a_healthy_stream_alone_after_the_first_steps():
    """A decaying norm with batch noise (+-10%), as in a healthy run: nothing clipped, warm-up included."""
    clip = AdaptiveClipThreshold(use_loss=True)
    g = torch.Generator().manual_seed(1)
    noise = (0.2 * torch.rand(1000, generator=g) - 0.1).tolist()
    norms = [5.0 * math.exp(-i / 300) * (1 + e) for i, e in enumerate(noise)]
    clipped = [i for i, n in enumerate(norms) if n > clip.update(n)]
    assert clipped == []
    # log-normal noise of 0.15 decade: only its upper tail (3.5% here) is clipped
    clip = AdaptiveClipThreshold(use_loss=True)
    norms = (10 ** (0.15 * torch.randn(2000, generator=g))).tolist()
    share = sum(n > clip.update(n) for n in norms) / len(norms)
    assert 0 < share < 0.05


@pytest.mark.parametrize("batch_share", [0.12, 0.47])
def test_adaptive_threshold_clips_frequent_outliers(batch_share):
    """Outliers in 12% or 47% of the steps: they do not inflate the threshold, and are scaled to the typical norm."""
    g = torch.Generator().manual_seed(2)
    clean = (10 ** (0.1 * torch.randn(1000, generator=g))).tolist()
    outlier = (torch.rand(1000, generator=g) < batch_share).tolist()
    norms = [n * 30 if o else n for n, o in zip(clean, outlier)]
    rule, previous = AdaptiveClipThreshold(use_loss=True), _MeanStdLog()
    kept, kept_before = [], []
    for n, o in zip(norms, outlier):
        applied, old = rule.update(n), previous.update(n)
        if o:
            kept.append(min(n, applied) / n * 30)  # the outlier's norm after clipping, in clean units
            kept_before.append(min(n, old) / n * 30)
    assert max(kept[5:]) < 2.0  # every outlier after the first steps ends at a clean norm's size
    assert statistics.median(kept) < 1.2
    assert max(kept_before[30:]) > 5 * max(kept[5:])  # z-score clipping in log space lets them through


class _MeanStdLog:
    """The previous rule, 10 ** (mean + 2.5 std) of log10 norm after a 25-step warm-up, for comparison."""

    def __init__(self) -> None:
        self.steps, self.mean, self.var = 0, 0.0, 0.0

    def update(self, norm: float) -> float:
        threshold = math.inf
        if self.steps >= 25:
            threshold = 10 ** (self.mean + 2.5 * max(math.sqrt(self.var), 0.02))
        x = math.log10(min(norm, threshold))
        self.steps += 1
        delta = x - self.mean
        if self.steps <= 25:
            self.mean += delta / self.steps
            self.var += (delta * (x - self.mean) - self.var) / self.steps
        else:
            self.mean += 0.03 * delta
            self.var = 0.97 * (self.var + 0.03 * delta * delta)
        return threshold


def test_adaptive_threshold_clips_from_the_second_step_and_caps():
    clip = AdaptiveClipThreshold(max_norm=0.5)
    assert [clip.update(n) for n in (1.0, 2.0, 10.0)] == [0.5, 0.5, 0.5]
    uncapped = AdaptiveClipThreshold(use_loss=True)
    assert math.isinf(uncapped.update(1.0))  # nothing known yet
    assert uncapped.update(1.0) == pytest.approx(10**0.3)  # warm-up: only twice the typical norm is clipped
    assert uncapped.update(1000.0) == pytest.approx(1.0)  # a gross outlier is scaled down to the typical norm
    assert uncapped.update(1.5) > 1.5  # a warm-up step 1.5 times the typical one is not


def test_adaptive_threshold_state_round_trip():
    a = AdaptiveClipThreshold(use_loss=True)
    for n in (1.0, 1.2, 0.8, 1.1, 5.0) * 30:
        a.update(n)
    b = AdaptiveClipThreshold(use_loss=True)
    b.load_state_dict(a.state_dict())
    assert b.threshold() == a.threshold()
    assert [b.update(n) for n in (1.0, 50.0, 2.0)] == [a.update(n) for n in (1.0, 50.0, 2.0)]
    assert len(a.state_dict()["log_norms"]) == 100  # the window, not the whole history
    empty = AdaptiveClipThreshold(use_loss=True)
    empty.load_state_dict({})  # an empty (older) state loads with defaults
    assert math.isinf(empty.threshold())


def test_adaptive_threshold_loads_the_previous_rules_state():
    """A checkpoint of the mean + z std rule resumes near its typical level, clipping the same spikes."""
    clip = AdaptiveClipThreshold(use_loss=True)
    clip.load_state_dict({"steps": 500, "mean": 0.0, "var": 0.01})  # log10 norm ~ N(0, 0.1)
    assert 1.5 < clip.threshold() < 3.0
    assert clip.update(100.0) < 1.0
    assert clip.state_dict()["steps"] == 501


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
    # the outlier threshold alone: on this slow, noisy regression the loss-driven ceiling would be cut (see
    # test_the_ceiling_is_cut_on_a_noisy_slow_regression)
    model = make_mlp_module(pl, lr=0.01, batches=1024)
    watch = GradWatch(clip="adaptive", clip_warmup_steps=10, clip_use_loss=False, log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(model)
    acc = events(trainer.logger.log_dir)
    thresholds = scalars(acc, "gradwatch/clip_threshold")
    # the step-size cap holds from the first step (SGD at lr 0.01: a tenth of the weights' size / 0.01); the outlier
    # threshold, from the second (the first has no history)
    weight_tags = [tag for tag in acc.Tags()["scalars"] if tag.startswith("param_norm/")]
    weights = math.sqrt(sum(scalars(acc, tag)[0] ** 2 for tag in weight_tags))
    assert len(weight_tags) == 3
    # the weights' size is at least the norm PyTorch's default init gives them (sqrt(out_features / 3) per weight),
    # which a draw of this net's init falls below about once in a hundred
    init_norm = math.sqrt(sum(m.weight.shape[0] / 3 for m in model.modules() if isinstance(m, torch.nn.Linear)))
    assert thresholds[0] == pytest.approx(0.1 * max(weights, init_norm) / 0.01, rel=1e-5)
    before, after = scalars(acc, "gradwatch/total_norm"), scalars(acc, "gradwatch/clipped_norm")
    for step, threshold in thresholds.items():
        assert after[step] <= threshold * (1 + 1e-6)
        assert after[step] == pytest.approx(min(before[step], threshold), rel=1e-5)  # float32, eps 1e-6
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
        warnings.simplefilter("ignore")  # responses not under test only warn; judged on the weights
        trainer.fit(model)
    return model, watch, trainer


def test_corrupted_labels_diverge_to_nan_without_clipping(tmp_path):
    """The reference for the rescue tests below: the same run, unclipped, ends with NaN weights."""
    model, watch, trainer = _fit_divergence(tmp_path, "none", 100)
    assert trainer.global_step == 100
    assert not finite_weights(model)
    assert not math.isfinite(model.losses[-1])
    assert {a.kind for a in watch.alerts} >= {"exploding", "nonfinite"}


@pytest.mark.parametrize(
    "clip_kwargs",
    [
        {"clip": "adaptive"},
        {"clip": "adaptive", "clip_use_loss": True},
        {"on_exploding": "clip"},
    ],
    ids=["adaptive", "adaptive-use-loss", "spikes"],
)
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


def _outlier_regression(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """8192 x 32 regression with 0.2% of the labels x300 (about one batch in eight), and clean validation data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8192 + 2048, 32, generator=g)
    y = ((x[:, :4].sum(1) + 0.5 * torch.sin(3 * x[:, 4])) / 2).unsqueeze(1)
    x, x_val, y, y_val = x[:8192], x[8192:], y[:8192].clone(), y[8192:]
    y[torch.randperm(8192, generator=g)[:16]] *= 300
    order = torch.cat([torch.randperm(8192, generator=g) for _ in range(2)]).split(64)  # 2 epochs of batches
    return x, y, x_val, y_val, order


def _mlp(inputs: int = 32, hidden: int = 128, outputs: int = 1, seed: int = 0) -> torch.nn.Module:
    """A ReLU MLP ``inputs-hidden-hidden-outputs``, drawn after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs)
    )


def test_adaptive_clip_on_frequent_label_outliers_is_near_the_best_fixed_threshold(tmp_path):
    """The regime where mean + z std clipping failed: MLP 32-128-128-1, SGD lr 0.01 momentum 0.9, batch 64.

    The fixed thresholds run in a plain loop with ``torch.nn.utils.clip_grad_norm_`` on the same initial weights and
    batches; ``clip="adaptive"`` runs through a real Trainer. One torch thread: for a model this small, more only
    add synchronisation (20x slower on a loaded 2-core machine).
    """
    with single_thread():
        _check_frequent_label_outliers(tmp_path)


def _check_frequent_label_outliers(tmp_path) -> None:
    x, y, x_val, y_val, order = _outlier_regression()

    def plain(max_norm: float | None) -> float:
        net = _mlp()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        for idx in order:
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x[idx]), y[idx]).backward()
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
            opt.step()
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(net(x_val), y_val))

    class Regression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def training_step(self, idx, batch_idx):
            return torch.nn.functional.mse_loss(self.net(x[idx]), y[idx])

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(order, batch_size=None)

    model = Regression()
    watch = GradWatch(clip="adaptive", on_exploding="ignore", log_every_n_steps=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # with on_exploding="ignore", whatever else is said; the weights are the point
        pl.Trainer(callbacks=[watch], logger=False, **trainer_kwargs(tmp_path)).fit(model)
    assert finite_weights(model)
    with torch.no_grad():
        adaptive = float(torch.nn.functional.mse_loss(model.net(x_val), y_val))
    fixed = {c: plain(c) for c in (0.3, 1.0, 3.0, 10.0)}
    best = min(fixed.values())
    assert plain(None) > 5 * best  # the outliers matter: unclipped, the run is far off
    assert adaptive < 2 * best, (adaptive, fixed)
    clipped = watch.state_dict()["summary"]["events"]["clipped_steps"]
    assert 20 <= clipped <= 60  # the ~32 outlier batches, not the whole run


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"zscore": 0}, ValueError, r"`zscore` must be a positive, finite number, got 0"),
        ({"zscore": "3"}, TypeError, r"`zscore` must be a number, got str '3'"),
        ({"warmup_steps": -1}, ValueError, r"`warmup_steps` must be >= 0, got -1"),
        ({"max_norm": math.inf}, ValueError, r"`max_norm` must be a positive, finite number, got inf"),
        ({"window": 2.5}, TypeError, r"`window` must be an int, got float 2.5"),
        ({"window": 0}, ValueError, r"`window` must be >= 1, got 0"),
        ({"min_spread": -0.1}, ValueError, r"`min_spread` must be a non-negative, finite number, got -0.1"),
        ({"warmup_margin": None}, TypeError, r"`warmup_margin` must be a number, got NoneType None"),
    ],
)
def test_adaptive_threshold_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdaptiveClipThreshold(**kwargs)


def test_adaptive_threshold_accepts_zero_margins():
    clip = AdaptiveClipThreshold(min_spread=0.0, warmup_margin=0)
    assert clip.update(1.0) == math.inf  # nothing known before the first step
    assert clip.threshold() == 1.0  # no margin at all above the typical norm


# ---------------------------------------------------------------------------------------------------------- the loss
def _steady(clip: AdaptiveClipThreshold, steps: int, loss: float = 1.0) -> None:
    g = torch.Generator().manual_seed(3)
    for norm in (1.0 + 0.05 * torch.randn(steps, generator=g)).tolist():
        clip.update(norm, loss)


RISING = [1.2**k for k in range(1, 16)]  # a loss that gets worse, step after step
RISEN = 2.5  # a norm risen with it: 0.4 decade above the steady norm of about 1


def test_a_worsening_loss_lowers_the_ceiling_below_the_norm():
    clip = AdaptiveClipThreshold(use_loss=True)
    _steady(clip, 40)
    before = clip.threshold()
    assert math.isinf(clip.ceiling)
    assert before > 1.5
    applied = [clip.update(RISEN, loss) for loss in RISING]
    # a risen norm over a loss not yet twice its level is no outlier: held to the outlier threshold
    assert applied[:3] == pytest.approx([before] * 3, rel=0.01)
    # then, with its loss, an outlier, scaled to the typical norm, until the level (20th percentile) rises too
    assert applied[3:7] == pytest.approx([applied[3]] * 4, rel=0.01)
    assert applied[3] < 1.0
    assert applied[7] == pytest.approx(before / 3, rel=0.01)  # then cut below the outlier threshold, by 3x
    assert applied[-1] == pytest.approx(before / 9, rel=0.02)  # deeper while the loss keeps rising
    without = AdaptiveClipThreshold(use_loss=False)  # the loss not consulted: every risen norm is an outlier
    _steady(without, 40)
    assert [without.update(RISEN, loss) for loss in RISING] == pytest.approx([applied[3]] * len(RISING), rel=0.02)


def test_a_worsening_loss_over_a_flat_norm_leaves_the_ceiling_alone():
    """Noisy mini-batch losses rise and fall over a flat norm: a divergence raises the loss and the norm together."""
    clip = AdaptiveClipThreshold(use_loss=True)
    _steady(clip, 40)
    before = clip.threshold()
    assert [clip.update(1.0, loss) for loss in RISING] == pytest.approx([before] * len(RISING), rel=0.01)
    assert math.isinf(clip.ceiling)


def _cut(clip: AdaptiveClipThreshold) -> float:
    _steady(clip, 40)
    for loss in RISING:
        clip.update(RISEN, loss)
    return clip.ceiling


def test_the_ceiling_rises_back_while_the_run_is_not_getting_worse():
    """Additive increase after the multiplicative cut: the run need not beat its best to get its step size back.

    The ceiling alone: its rise-back holds a flat loss under clipping for 50 steps, which the plateau cut would read
    as clipping that makes no progress (``tests/test_clipping_plateau.py``)."""
    alone = {"use_loss": True, "plateau_cut": 0.0}
    clip, stuck = AdaptiveClipThreshold(**alone), AdaptiveClipThreshold(**alone, relax=0.0)
    cut = _cut(clip)
    assert _cut(stuck) == cut
    for _ in range(20):  # the loss back at its start and flat: not worse, and no new best
        clip.update(1.0, 1.0)
        stuck.update(1.0, 1.0)
    assert clip.ceiling == pytest.approx(cut + 20 * 0.02)  # 0.02 decade a step
    assert stuck.ceiling == cut  # without it the ceiling waits for new bests of the loss: a run it holds back
    for _ in range(200):  # may never make them
        clip.update(1.0, 1.0)
    assert math.isinf(clip.ceiling)  # lifted once a decade above the outlier threshold
    assert clip.update(1.0, 1.0) > 1.5


def test_new_bests_of_the_loss_lift_the_ceiling_faster():
    falling, flat = AdaptiveClipThreshold(use_loss=True), AdaptiveClipThreshold(use_loss=True)
    cut = _cut(falling)
    _cut(flat)
    for loss in [0.9 * 0.99**i for i in range(30)]:  # once the level is back below 1: a new best on each step
        falling.update(1.0, loss)
        flat.update(1.0, 1.0)
    assert cut < flat.ceiling < falling.ceiling < math.inf
    assert 0.1 < falling.ceiling - flat.ceiling < 0.3 + 1e-9  # 0.01 decade more per new best (at most 30 of them)


def test_the_ceiling_counts_as_in_force_only_below_the_outlier_threshold():
    """A ceiling rising back above the outlier threshold holds nothing: those steps do not count for the notice."""
    clip = AdaptiveClipThreshold(use_loss=True, plateau_cut=0.0)  # the ceiling alone
    _cut(clip)
    counts, above = [], 0
    while math.isfinite(clip.ceiling):
        clip.update(1.0, 1.0)
        counts.append(clip.ceiling_steps)
        above += clip.ceiling > math.log10(clip.threshold()) + 1e-9
    assert max(counts) > 10  # counted while it held the steps below the outlier threshold
    assert above > 10
    assert counts[-above:] == [0] * above  # not once it rose above it, still in place


def test_a_norm_growing_with_the_loss_from_the_first_step_is_not_learnt():
    """A recurrent net whose gradients explode: norm x1.2 and loss x1.1 per step, from step 1."""
    norms = [1.2**i for i in range(60)]
    losses = [1.1**i for i in range(60)]
    # the outlier threshold and the ceiling alone (the plateau cut, which lowers both, is tested on its own)
    guarded = AdaptiveClipThreshold(use_loss=True, plateau_cut=0.0)
    outliers_only = AdaptiveClipThreshold(use_loss=False, plateau_cut=0.0)
    kept = [min(n, guarded.update(n, loss)) for n, loss in zip(norms, losses)]
    followed = [min(n, outliers_only.update(n, loss)) for n, loss in zip(norms, losses)]
    assert max(kept) < 3.0  # held to the outlier threshold until the loss doubles, then as an outlier and a worse run
    assert kept[-1] < 0.2
    assert followed[-1] > 1e3  # the outlier threshold alone follows (the short window): a norm up 1.2x a step
    assert len(guarded.state_dict()["log_norms"]) < 10  # only the first steps, before the loss rose, were learnt


DIVERGING = [1.5**k for k in range(1, 16)]  # a loss that diverges: up 400x in 15 steps


def _diverge(clip: AdaptiveClipThreshold) -> None:
    _steady(clip, 40)
    for loss in DIVERGING:
        clip.update(RISEN, loss)


def test_a_run_that_diverged_gets_back_half_its_step_size_then_waits_for_progress():
    """Additive increase up to half the step size the run diverged at, then ten times slower: the ceiling does not
    climb straight back to the step size that made the run diverge (how a recurrent net oscillates between blowing
    up and recovering)."""
    alone = {"plateau_cut": 0.0}  # the ceiling and its memory alone (clipping on most steps of a flat loss would
    # also lower the threshold: tests/test_clipping_plateau.py)
    memory, forgetful = AdaptiveClipThreshold(**alone), AdaptiveClipThreshold(trouble_relax=1.0, **alone)
    _diverge(memory)
    _diverge(forgetful)
    assert memory.ceiling == forgetful.ceiling
    assert memory.trouble == pytest.approx(0.0, abs=0.05)  # the steps' size before: norms of about 1, not clipped
    below = memory.trouble - 0.3
    ceilings = []
    for _ in range(100):  # the loss back where it was, flat: not worse, no new best
        memory.update(1.0, 1.0)
        forgetful.update(1.0, 1.0)
        ceilings.append(memory.ceiling)
    reached = next(i for i, c in enumerate(ceilings) if c >= below - 1e-9)
    assert ceilings[reached] == pytest.approx(below)  # 0.02 decade a step up to half the step size ...
    assert ceilings[-1] == pytest.approx(below + 0.002 * (99 - reached))  # ... then 0.002 a step
    assert forgetful.update(1.0, 1.0) > 1.5  # rose back 0.02 a step: steps of 1 pass again, and diverge again ...
    assert memory.update(1.0, 1.0) < 0.7  # ... where the memory holds them at about half


def test_a_noisy_rise_of_the_loss_leaves_no_memory():
    """A loss level up less than 3x is no divergence: the ceiling rises back at the full rate."""
    clip = AdaptiveClipThreshold()
    _cut(clip)
    assert math.isfinite(clip.ceiling)
    assert math.isinf(clip.trouble)


def test_new_bests_of_the_loss_lift_the_memory_of_a_divergence():
    clip = AdaptiveClipThreshold(plateau_cut=0.0)  # the memory alone
    _diverge(clip)
    trouble = clip.trouble
    for loss in [0.9 * 0.98**i for i in range(150)]:  # the run learns: a new best of the loss level on most steps
        clip.update(1.0, loss)
    assert clip.trouble > trouble + 0.5
    assert clip.update(1.0, 0.01) > 1.5  # steps of 1 pass again


def test_the_memory_of_a_divergence_survives_a_checkpoint():
    a = AdaptiveClipThreshold()
    _diverge(a)
    for _ in range(30):
        a.update(1.0, 1.0)
    state = a.state_dict()
    assert math.isfinite(state["trouble"])
    b = AdaptiveClipThreshold()
    b.load_state_dict(state)
    assert b.state_dict() == state
    steps = [(1.0, 1.0)] * 40 + [(3.0, 50.0)] * 12
    assert [b.update(n, loss) for n, loss in steps] == [a.update(n, loss) for n, loss in steps]


def test_adaptive_state_round_trip_with_a_ceiling_and_older_states():
    a = AdaptiveClipThreshold(use_loss=True)
    _steady(a, 40)
    for loss in RISING:
        a.update(RISEN, loss)
    state = a.state_dict()
    assert math.isfinite(state["ceiling"])
    assert len(state["losses"]) == 10
    b = AdaptiveClipThreshold(use_loss=True)
    b.load_state_dict(state)
    assert b.state_dict() == state
    more = [(1.0, 30.0), (5.0, 2.0), (1.1, 0.5), (0.9, 0.4)]
    assert [b.update(n, loss) for n, loss in more] == [a.update(n, loss) for n, loss in more]
    fresh = AdaptiveClipThreshold(use_loss=True)
    _steady(fresh, 40)
    older = AdaptiveClipThreshold(use_loss=True)  # the previous adaptive rule's state: no losses, no ceiling
    older.load_state_dict({"steps": 40, "log_norms": fresh.state_dict()["log_norms"]})
    assert math.isinf(older.ceiling)
    assert older.threshold() == pytest.approx(fresh.threshold())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"use_loss": "yes"}, TypeError, r"`use_loss` must be"),
        ({"quantile": 1.5}, ValueError, r"`quantile`"),
        ({"cut": 1.0}, ValueError, r"`cut`"),
        ({"no_such_constant": 1}, TypeError, r"has no constant no_such_constant"),
    ],
)
def test_adaptive_threshold_rejects_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdaptiveClipThreshold(**kwargs)


def test_gradwatch_rejects_a_bad_clip_use_loss():
    with pytest.raises(TypeError, match=r"`clip_use_loss` must be"):
        GradWatch(clip="adaptive", clip_use_loss="no")


def test_the_ceiling_is_not_cut_on_a_noisy_slow_regression():
    """A slowly learning regression (batch 16, its batch losses +-40%): its loss level rises 10% above its noisy
    start, but its gradient norm stays flat, so the run is not worse and the ceiling is never cut."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    clip, previous, held = AdaptiveClipThreshold(use_loss=True), None, 0
    from tests.helpers import regression_data

    for x, y in regression_data(1024):
        loss = torch.nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()]).item()
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip.update(norm, previous))
        opt.step()
        previous, held = loss.item(), held + math.isfinite(clip.ceiling)
    assert held == 0


# ---------------------------------------------------------------------------------------------------------- Trainer
def _tanh_rnn_module(steps: int = 150, seed: int = 0):
    """A vanilla tanh RNN, recurrent weights orthogonal x1.3, SGD momentum 0.9 at lr 0.1 on the adding problem (length
    100), the learning rate decayed linearly to zero over the last fifth of the steps (the families benchmark's
    recipe for this run, ``issue/tanh rnn gain 1.3``)."""

    class TanhRNN(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.RNN(2, 32, batch_first=True)
            torch.nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=1.3)
            self.head = torch.nn.Linear(32, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            out, _ = self.rnn(x)
            return torch.nn.functional.mse_loss(self.head(out[:, -1]), y)

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            decay = int(0.8 * steps)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: min(1.0, (steps - step) / (steps - decay))
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

        def train_dataloader(self):
            x, y = _adding_problem(32 * steps, seed=seed)
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)

        def validation_mse(self) -> float:
            x, y = _adding_problem(512, seed=seed + 1)
            with torch.no_grad():
                out, _ = self.rnn(x)
                return torch.nn.functional.mse_loss(self.head(out[:, -1]), y).item()

    torch.manual_seed(seed)
    return TanhRNN()


def _adding_problem(n: int, seed: int, length: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Hochreiter's adding problem: values and two markers; the target is the sum of the two marked values."""
    g = torch.Generator().manual_seed(seed)
    values, marks = torch.rand(n, length, generator=g), torch.zeros(n, length)
    marks[torch.arange(n), torch.randint(length // 2, (n,), generator=g)] = 1.0
    marks[torch.arange(n), torch.randint(length // 2, length, (n,), generator=g)] = 1.0
    return torch.stack([values, marks], dim=2), (values * marks).sum(1, keepdim=True)


def _fit_rnn(tmp_path, seed: int = 0, **watch_kwargs):
    responses = {"on_vanishing": "warn", "on_exploding": "warn", "on_nonfinite": "warn"}
    model = _tanh_rnn_module(seed=seed)
    watch = GradWatch(**{**responses, **watch_kwargs})
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(model)
    return model, watch, trainer


def _gradwatch_warnings(record, text: str) -> list[str]:
    from lightning_gradwatch import GradientWarning

    return [str(w.message) for w in record if issubclass(w.category, GradientWarning) and text in str(w.message)]


@single_thread()
def test_adaptive_clip_holds_a_recurrent_net_whose_gradients_explode_from_the_start(tmp_path, capsys):
    import json

    from lightning_gradwatch import GradientWarning
    from lightning_gradwatch.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unclipped, _, _ = _fit_rnn(tmp_path / "none")
    assert not finite_weights(unclipped)
    with pytest.warns(GradientWarning) as record:
        model, _watch, _trainer = _fit_rnn(tmp_path / "adaptive", clip="adaptive")  # the loss ceiling: default
    assert finite_weights(model)
    # within 2x of the best fixed threshold (0.3 or 1: 0.1 is never the best here) on 4 seeds of 5 or more. The run
    # is chaotic: held at the step-size cap, a seed that ends at 1.01x on one CPU ends at 11.5x on another, where a
    # late blow-up comes before the ceiling (README, "A run's chaos"); no single draw is the rule's measure
    ratios = []
    for seed in range(5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adaptive = model if seed == 0 else _fit_rnn(tmp_path / f"adaptive {seed}", seed, clip="adaptive")[0]
            fixed = [_fit_rnn(tmp_path / f"fixed {t} {seed}", seed, clip=t)[0].validation_mse() for t in (0.3, 1.0)]
        assert finite_weights(adaptive)
        ratios.append(adaptive.validation_mse() / min(fixed))
    assert sum(r <= 2 for r in ratios) >= 4, ratios
    said = _gradwatch_warnings(record, "Clipping hides such a failure")
    assert len(said) == 1
    assert "gated cell (nn.LSTM or nn.GRU" in said[0]
    path = tmp_path / "adaptive" / "lightning_logs" / "version_0" / "gradwatch.json"
    report = json.loads(path.read_text())
    assert [n["kind"] for n in report["notices"]] == ["clipping"]
    # the step-size cap holds the steps from the first one: the norm before clipping (which the exploding detector
    # judges) never explodes, so no alert; the notice says what clipping is hiding, and the check passes saying it
    assert report["alerts"] == []
    capsys.readouterr()
    assert main(["check", str(path.parent)]) == 0
    out = capsys.readouterr().out
    assert "  [info] Clipping" in out  # ... and says it, and how to fail on it
    assert "(a clipping notice does not fail the check; --fail-on vanishing,exploding,nonfinite,clipping" in out
    # a CI gate that asks for it fails on the notice, in every format
    assert main(["check", str(path.parent), "--fail-on", "exploding,nonfinite,clipping"]) == 1
    out = capsys.readouterr().out
    assert ": 1 alert(s): clipping notice (" in out
    assert "  [FAIL] Clipping" in out
    assert "does not fail the check" not in out
    page = tmp_path / "report.html"
    assert main(["check", str(path.parent), "--fail-on", "clipping", "--format", "json", "--html", str(page)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["result"], doc["runs"][0]["verdict"], doc["fail_on"]) == ("fail", "alerts", ["clipping"])
    html = page.read_text()
    assert "1 alert(s): clipping notice; the first at step" in html
    assert "<b>clipping notice</b>" in html
    assert "Clipping hides such a failure" in html
    gate_summary = tmp_path / "gate.md"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GITHUB_STEP_SUMMARY", str(gate_summary))
        assert main(["check", str(path.parent), "--fail-on", "clipping", "--format", "github"]) == 1
    assert "::error title=GradWatch clipping notice at step " in capsys.readouterr().out
    row = next(line for line in gate_summary.read_text().splitlines() if line.startswith("| `"))
    assert "| alerts | 1 | clipping notice at step " in row  # the job summary counts and names the failing notice
    summary = tmp_path / "summary.md"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GITHUB_STEP_SUMMARY", str(summary))
        assert main(["check", str(path.parent), "--format", "github"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "clipping notice" in line]
    assert len(said) == 1
    assert said[0].startswith("::notice title=GradWatch clipping notice at step ")
    assert "Clipping hides such a failure" in said[0]
    assert "| clipping at step " in summary.read_text()  # the job summary's notices column


@single_thread()
def test_adaptive_clip_does_not_climb_back_to_the_step_size_a_recurrent_net_blew_up_at(tmp_path):
    """The same recurrent net, seed 7: without the memory of a divergence the ceiling rose back to the step size that
    had blown the run up, it blew up again near the end and ended at 136x the best fixed threshold (one of 10 seeds
    the memory was measured on, chosen for that); with it, within 2x."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # judged on the validation loss; the alerts are the other test's
        fixed = [_fit_rnn(tmp_path / f"fixed {t}", seed=7, clip=t)[0].validation_mse() for t in (0.1, 0.3, 1.0)]
        model = _fit_rnn(tmp_path / "adaptive", seed=7, clip="adaptive")[0]
    assert finite_weights(model)
    assert model.validation_mse() <= 2 * min(fixed), (model.validation_mse(), fixed)


def test_the_notice_says_clipping_on_most_steps_of_a_run_that_does_not_learn():
    """The default rule (no loss ceiling) says once when it scales down most steps while the loss does not fall."""
    from lightning_gradwatch.judge.clipping import NOTICE_CLIPPING

    clip, said = AdaptiveClipThreshold(), []
    for step in range(200):
        norm = 1.0 if step < 60 else (5.0 if step % 3 else 1.0)  # from step 60, two steps in three far above
        clip.update(norm, loss=1.0)
        if clip.notice_due:
            said.append((step, clip.notice_reason, clip.notice(step)))
    assert len(said) == 1
    step, reason, text = said[0]
    assert reason == NOTICE_CLIPPING
    assert 90 <= step < 130
    assert text.startswith("Clipping scaled down")
    assert "of the last 50 steps" in text


def test_the_notice_says_a_clipped_norm_that_keeps_rising():
    from lightning_gradwatch.judge.clipping import NOTICE_RISING

    clip, said = AdaptiveClipThreshold(), []
    for step in range(200):
        norm = 10 ** (0.04 * max(step - 40, 0))  # flat, then up 0.04 decade a step (clipped steps follow it up)
        clip.update(norm, loss=1.0 / (1 + step))  # a falling loss: not "does not learn"
        if clip.notice_due:
            said.append((step, clip.notice_reason))
    assert [reason for _, reason in said] == [NOTICE_RISING]


def test_the_notice_stays_silent_on_a_learning_run_with_outliers():
    clip = AdaptiveClipThreshold()
    for step in range(400):
        clip.update(100.0 if step % 4 == 0 else 1.0, loss=1.0 / (1 + step))  # an outlier in one step of four
        assert not clip.notice_due
    assert not clip.noticed


def test_the_notice_survives_a_checkpoint():
    clip = AdaptiveClipThreshold()
    for step in range(80):
        clip.update(1.0 if step < 40 else 5.0 if step % 3 else 1.0, loss=1.0)
    resumed = AdaptiveClipThreshold()
    resumed.load_state_dict(clip.state_dict())
    assert resumed.state_dict() == clip.state_dict()
    for step in range(80, 160):
        norm = 5.0 if step % 3 else 1.0
        clip.update(norm, loss=1.0)
        resumed.update(norm, loss=1.0)
        assert resumed.notice_due == clip.notice_due


@single_thread()
def test_adaptive_clip_says_nothing_on_a_healthy_run(tmp_path):
    import json

    model = make_mlp_module(pl, lr=0.05, batches=1024, batch_size=256)
    watch = GradWatch(clip="adaptive", clip_use_loss=True, log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=12))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert _gradwatch_warnings(record, "Clipping has held") == []
    assert json.loads((tmp_path / "lightning_logs" / "version_0" / "gradwatch.json").read_text())["notices"] == []
    assert watch.state_dict()["clippers"]["0"]["ceiling"] == math.inf
    from lightning_gradwatch.cli import main

    assert main(["check", str(tmp_path), "--fail-on", "vanishing,exploding,nonfinite,clipping"]) == 0  # a CI gate


def _digits_with_outliers_module(seed: int = 0):
    """scikit-learn's digits, an MLP 64-128-128-10 under SGD (lr 0.05, momentum 0.9, batch 32); 5% of the training
    images multiplied by 50, so about four batches in five carry one (the issue's reported classifier)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).reshape(-1, 64) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    val, train = perm[:400], perm[400:]
    x_train = x[train].clone()
    x_train[torch.randperm(len(train), generator=g)[: len(train) // 20]] *= 50.0

    class Digits(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp(64, 128, 10, seed)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

        def train_dataloader(self):
            data = torch.utils.data.TensorDataset(x_train, y[train])
            return torch.utils.data.DataLoader(
                data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
            )

        def validation_loss(self) -> float:
            with torch.no_grad():
                return torch.nn.functional.cross_entropy(self.net(x[val]), y[val]).item()

    return Digits()


@single_thread()
def test_adaptive_clip_on_a_classifier_whose_batches_mostly_carry_outliers(tmp_path):
    """Four batches in five carry an image x50: learnt, those outliers widened the spread until the threshold stood
    20x above the typical norm (2.6x fixed 1 here; 1.03x now); not learnt, they are scaled down to the ordinary
    steps' level."""
    losses = {}
    for name, clip in (("fixed 1", 1.0), ("adaptive", "adaptive")):
        model = _digits_with_outliers_module()
        watch = GradWatch(clip=clip, on_exploding="ignore", on_vanishing="ignore", on_nonfinite="ignore")
        trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path / name, max_epochs=3))
        trainer.fit(model)
        assert finite_weights(model)
        losses[name] = model.validation_loss()
    assert losses["adaptive"] <= 2 * losses["fixed 1"], losses


def _outlier_target_regression_module(loss: str) -> Any:
    """An MLP regression whose targets are x1000 in 4% of the samples: 93% of its batches of 64 carry one."""

    class OutlierTargets(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp(8, 64, 1)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(3072, 8, generator=g)
            y = x[:, :4].sum(1, keepdim=True) / 2
            self.x_val, self.y_val, self.x, self.y = x[2048:], y[2048:], x[:2048], y[:2048].clone()
            self.y[torch.randperm(2048, generator=g)[:82]] *= 1000.0
            self.loss = torch.nn.functional.huber_loss if loss == "huber" else torch.nn.functional.mse_loss

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return self.loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

        def train_dataloader(self) -> Any:
            data = torch.utils.data.TensorDataset(self.x, self.y)
            return torch.utils.data.DataLoader(
                data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
            )

        def validation_mse(self) -> float:
            with torch.no_grad():
                return torch.nn.functional.mse_loss(self.net(self.x_val), self.y_val).item()

    return OutlierTargets()


@single_thread()
def test_outlier_targets_in_most_batches_get_the_notice_naming_a_robust_loss_which_trains(tmp_path):
    """No threshold trains a squared loss whose batches nearly all carry an outlier target (the outliers are the
    objective); clipping says so once, naming the remedy, and under ``nn.HuberLoss`` the same run learns."""
    mse = {}
    for loss in ("mse", "huber"):
        model = _outlier_target_regression_module(loss)
        watch = GradWatch(clip="adaptive", on_exploding="ignore", on_vanishing="ignore", on_nonfinite="ignore")
        trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path / loss, max_epochs=4))
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trainer.fit(model)
        said = _gradwatch_warnings(record, "Clipping hides such a failure")
        mse[loss] = model.validation_mse()
        if loss == "mse":
            assert len(said) == 1
            assert "a robust loss such as nn.HuberLoss for outlier targets" in said[0]
    assert mse["huber"] < 0.1 < mse["mse"], mse  # predicting zero: an MSE of 1


def test_steps_the_size_of_the_runs_first_ones_are_never_clipped():
    """Near zero loss the easy batches' norms fall by decades; a hard batch as large as the run's first steps is no
    outlier, and a real outlier is scaled down to the start, not to the easy batches' typical norm."""
    clip = AdaptiveClipThreshold()
    for step in range(10):
        clip.update(1.0 + 0.1 * step, loss=1.0)  # the start: the lowest of the first 10 norms, 1.0
    for step in range(200):
        clip.update(10 ** (-3 - (step % 5) * 0.05), loss=1e-4)  # then the easy batches, 3 decades lower
    typical, limit = clip._levels()
    assert 10**typical < 1.5e-3  # the typical norm follows the easy batches...
    assert limit == pytest.approx(0.0)  # ... the threshold does not go below the start (10 ** 0)
    assert clip.update(0.8, loss=1e-4) >= 1.0  # a hard batch no larger than the start is left alone
    assert clip.update(500.0, loss=1e-4) == pytest.approx(1.0)  # an outlier is scaled to the start, not to 1e-3


def test_the_start_is_kept_in_the_checkpoint_and_unknown_in_an_older_one():
    clip = AdaptiveClipThreshold()
    for step in range(30):
        clip.update(2.0 + step, loss=1.0)
    state = clip.state_dict()
    assert state["first_norms"] == pytest.approx([math.log10(2.0 + s) for s in range(10)])
    resumed = AdaptiveClipThreshold()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    older = AdaptiveClipThreshold()
    older.load_state_dict({k: v for k, v in state.items() if k != "first_norms"})
    assert older.state_dict()["first_norms"] is None  # not guessed from later norms: no start, as before


@single_thread()
@pytest.mark.parametrize("seed", [0, 1])
def test_adaptive_clip_leaves_a_classifier_near_zero_loss_alone(tmp_path, seed):
    """A deep ReLU + BatchNorm classifier trained to near-zero loss (the issue's healthy case): its rare hard batches
    carry the gradient; clip="adaptive" must not end above 1.1x the training loss of no clipping."""
    from examples.harness import train_demo
    from lightning_gradwatch.demos import DeepMLP

    final = {}
    for name, clip in (("none", None), ("adaptive", "adaptive")):
        model = DeepMLP("relu", batchnorm=True, seed=seed)
        watch = GradWatch(clip=clip, on_exploding="warn", on_vanishing="warn", on_nonfinite="warn")
        train_demo(model, watch, str(tmp_path), name, 400, log_every_n_steps=50)
        assert watch.alerts == []
        final[name] = statistics.fmean(model.losses[-20:])
    assert final["adaptive"] <= 1.1 * final["none"], final


def test_the_notice_ignores_shallow_clipping_and_a_loss_that_falls_slowly():
    """Most steps held a little below their norm (under 2x) is no sign of a failure, nor is heavy clipping on a run
    whose loss still falls, however slowly (a healthy CNN taking off lost 9% in 50 steps)."""
    shallow, slow = AdaptiveClipThreshold(), AdaptiveClipThreshold()
    for step in range(300):
        rising = 10 ** (0.004 * step)  # a norm rising for good: the threshold lags it a little
        shallow.update(rising, loss=1.0)
        slow.update(1.0 if step < 60 else (5.0 if step % 3 else 1.0), loss=1.0 - 0.002 * step)  # -0.2% a step
    assert not shallow.noticed
    assert not slow.noticed


class _NoisyRegression(pl.LightningModule):
    """A slowly learning regression with batches of 16 (batch losses +-60%), SGD lr 0.01: its loss level and its
    gradient norm both rise in the first 50 steps, by noise, and the loss ceiling is cut."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.seed, self.losses = seed, []
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        from tests.helpers import regression_data

        return regression_data(1024, seed=self.seed, batch_size=16)


class _CeilingLook(pl.Callback):
    """Records the first step after which the adaptive rule's loss ceiling is in place (read from GradWatch's state)."""

    def __init__(self, watch: GradWatch, name: str, cut_at: dict[str, int]) -> None:
        self.watch, self.name, self.cut_at = watch, name, cut_at

    def on_train_batch_end(self, trainer, *args) -> None:
        (clipper,) = self.watch.state_dict()["clippers"].values()
        if math.isfinite(clipper["ceiling"]):
            self.cut_at.setdefault(self.name, trainer.global_step)


@single_thread()
def test_a_noisy_run_the_loss_ceiling_was_cut_on_gets_its_step_size_back(tmp_path):
    """The ceiling rises back while the run is not getting worse: cut by noise, this run ended at 16x the training
    loss of clipping without the ceiling (3.6 vs 0.22) when only new bests of the loss could lift it."""
    final, cut_at = {}, {}
    for name, use_loss in (("ceiling", True), ("outliers only", False)):
        model = _NoisyRegression(seed=5)
        watch = GradWatch(clip="adaptive", clip_use_loss=use_loss, on_exploding="warn", log_every_n_steps=50)

        trainer = pl.Trainer(
            callbacks=[watch, _CeilingLook(watch, name, cut_at)], **trainer_kwargs(tmp_path / name, max_epochs=3)
        )
        trainer.fit(model)
        assert watch.alerts == []
        final[name] = statistics.fmean(model.losses[-32:])
    assert list(cut_at) == ["ceiling"]
    assert cut_at["ceiling"] < 100  # the path under test: cut early
    assert final["ceiling"] <= 1.5 * final["outliers only"], final


def test_adaptive_threshold_judges_the_chained_norm():
    # a head alone at norm ~1, then a backbone joins: the total norm triples at once, the layers the two steps share
    # do not grow (offset -log10(3)); the chained norm is the one judged, the threshold is a total norm again
    steady = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95] * 5
    chained, unchained = AdaptiveClipThreshold(), AdaptiveClipThreshold()
    for norm in steady:
        assert chained.update(norm, loss=1.0) == unchained.update(norm, loss=1.0)  # offset 0: the same rule
    offset = -math.log10(3.0)
    # without the chain: an outlier (its loss up 10x with it), scaled to the typical norm
    assert unchained.update(3.0, loss=10.0) < 1.0
    threshold = chained.update(3.0, loss=10.0, offset=offset)
    assert threshold == pytest.approx(3 * unchained.threshold())  # the outlier threshold over the grown set
    assert threshold > 3.0  # not clipped
    for norm in steady:  # the grown set keeps its own level
        assert chained.update(3 * norm, loss=1.0, offset=offset) >= 3 * norm


def test_a_norm_above_the_outlier_threshold_is_an_outlier_only_with_its_loss():
    """An outlier batch's loss rises with its norm (scaled down to the typical norm); a norm as high over an ordinary
    loss (a model leaving a plateau) is held to the outlier threshold; neither is learnt; without a loss, the norm
    decides alone."""
    steady = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95] * 5
    with_loss, ordinary, unknown = AdaptiveClipThreshold(), AdaptiveClipThreshold(), AdaptiveClipThreshold()
    for norm in steady:
        for clip in (with_loss, ordinary, unknown):
            clip.update(norm, loss=1.0)
    limit, learnt = with_loss.threshold(), len(steady)
    assert with_loss.update(10.0, loss=2.5) == pytest.approx(0.95)  # loss 2.5x its level: an outlier
    assert len(with_loss.state_dict()["log_norms"]) == learnt  # ... not learnt
    assert ordinary.update(10.0, loss=1.5) == pytest.approx(limit)  # loss 1.5x: held to the outlier threshold ...
    assert len(ordinary.state_dict()["log_norms"]) == learnt  # ... not learnt either
    assert ordinary.state_dict()["recent_norms"][-1] == pytest.approx(1.0)  # the short window has it (log10 of 10)
    assert unknown.update(10.0) == pytest.approx(0.95)  # no loss: the norm alone, an outlier
    assert AdaptiveClipThreshold(outlier_loss=0.5).settings.clip_outlier_loss == 0.5


def test_adaptive_clip_does_not_take_an_unfrozen_backbone_for_an_outlier(tmp_path):
    # Lightning's usual fine-tuning: a frozen backbone joins at epoch 2 (BackboneFinetuning does the same); its
    # gradients nearly triple the total norm at once, which is no outlier: GradWatch judges the chained norm
    class Finetune(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Sequential(
                torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU()
            )
            self.head = torch.nn.Linear(32, 1)
            self.backbone.requires_grad_(False)

        def on_train_epoch_start(self) -> None:
            if self.current_epoch == 2:
                self.backbone.requires_grad_(True)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.head(self.backbone(x)), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 8, generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, :2].sum(1, keepdim=True)), batch_size=16)
    torch.manual_seed(0)
    watch = GradWatch(clip="adaptive", log_every_n_steps=1)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=3))
    with single_thread():
        trainer.fit(Finetune(), data)
    acc = events(trainer.logger.log_dir)
    before, after = scalars(acc, "gradwatch/total_norm"), scalars(acc, "gradwatch/clipped_norm")
    head_only = statistics.median(before[s] for s in range(10, 20))
    assert before[20] > 2 * head_only  # the backbone's first step: the total norm jumps
    assert after[20] == pytest.approx(before[20], rel=1e-6)  # ... and is left alone
    assert not watch.alerts


@pytest.mark.parametrize("seed", [0, 5])
def test_adaptive_clip_leaves_a_gan_to_its_game(tmp_path, seed):
    # a player's loss rises as its opponent learns: no measure of progress for the loss ceiling. With the ceiling fed
    # each optimizer's loss, these seeds ended 25x farther from the modes than without clipping (18.5 and 21.3 vs
    # 0.74 and 0.87); with several optimizers the ceiling is not given a loss
    distances = []
    for clip in (None, "adaptive"):
        model = RingGan(seed)
        watch = GradWatch(clip=clip, on_exploding="warn", log_every_n_steps=50)
        trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path / str(clip)))
        with single_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model)
        distances.append(model.distance())
        if clip:
            clippers = watch.state_dict()["clippers"]
            assert len(clippers) == 2
            assert all(state["first_level"] is None for state in clippers.values())  # never given a loss
            report = json.loads((Path(trainer.logger.log_dir) / "gradwatch.json").read_text())
            assert report["notices"] == []  # nor told a loss that did not fall
    assert distances[1] < 1.5 * distances[0], distances


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        ({}, 'clip gradients: GradWatch(clip="adaptive")'),
        ({"clip": "adaptive"}, 'clipping is already on (clip="adaptive")'),
        ({"clip": 1.0}, "clipping is already on (clip=1.0)"),
        ({"on_exploding": "clip"}, 'clipping is already on (on_exploding="clip")'),
    ],
)
def test_an_exploding_alert_does_not_suggest_the_clipping_the_run_already_has(arguments, said):
    """Adam whose learning rate grows 8% a step from step 50: the same explosion, alerted with or without clipping
    (the detector judges the norm before clipping); the remedies suggest clipping only to a run without it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    watch = GradWatch(**{"on_exploding": "warn", **arguments})
    with warnings.catch_warnings(), watch.loop(model) as loop:
        warnings.simplefilter("ignore")
        for i in range(200):
            optimizer.param_groups[0]["lr"] = 1e-3 * 1.08 ** max(0, i - 50)
            x = torch.randn(16, 4)
            loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
            loss.backward()
            if loop.step(optimizer, loss):
                optimizer.step()
            optimizer.zero_grad()
    alert = next(a for a in watch.alerts if a.kind == "exploding")
    assert said in alert.message
    assert ("clip gradients:" in alert.message) == (not arguments)


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        ({}, 'clip gradients (GradWatch(clip="adaptive"))'),
        ({"clip": "adaptive"}, 'clipping is already on: clip="adaptive"'),
    ],
)
def test_a_nonfinite_alert_does_not_suggest_the_clipping_the_run_already_has(arguments, said):
    """A NaN in one batch's inputs: the non-finite alert suggests clipping only to a run without it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    watch = GradWatch(on_nonfinite="skip", **arguments)
    with warnings.catch_warnings(), watch.loop(model) as loop:
        warnings.simplefilter("ignore")
        for i in range(40):
            x = torch.randn(16, 4)
            if i == 30:
                x[3, 1] = float("nan")
            loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
            loss.backward()
            if loop.step(optimizer, loss):
                optimizer.step()
            optimizer.zero_grad()
    (alert,) = [a for a in watch.alerts if a.kind == "nonfinite"]
    assert said in alert.message
    assert ("clip gradients" in alert.message) == (not arguments)


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): the sign of an interpolated momentum, a step of the learning rate's size."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99)) -> None:
        super().__init__(params, {"lr": lr, "betas": betas})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                momentum = self.state[p].setdefault("momentum", torch.zeros_like(p))
                p.add_(torch.sign(beta1 * momentum + (1 - beta1) * p.grad), alpha=-group["lr"])
                momentum.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


@pytest.mark.parametrize("optimizer", ["lion", "sgd"])
def test_an_exploding_alert_under_a_sign_optimizer_says_clipping_will_not_help(tmp_path, optimizer):
    """Lion at a learning rate of 1 (100-1000x what it takes) blows up at once; its step is the learning rate's size
    whatever the gradient's norm, so the remedy is a lower learning rate, not clipping (SGD is told to clip). The
    optimizer's class is read inside Lightning's wrapper."""
    pl = flavour("lightning.pytorch")
    torch.manual_seed(0)
    model = make_mlp_module(pl, record=False, lr=1.0 if optimizer == "lion" else 3.0)
    if optimizer == "lion":
        model.configure_optimizers = lambda: Lion(model.parameters(), lr=1.0)
    watch = GradWatch(images=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_steps=40)).fit(model)
    alert = next(a for a in watch.alerts if a.kind == "exploding")
    assert ("clipping will not help: Lion takes a step of the learning rate's size" in alert.message) == (
        optimizer == "lion"
    )
    assert ("clip gradients:" in alert.message) == (optimizer == "sgd")
    assert "lower the learning rate" in alert.message


def test_a_fabric_wrapped_sign_optimizer_is_read_through_its_wrapper():
    """Fabric wraps the optimizer in a class of its own (``FabricLion``): the remedies still read a Lion."""
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    model, optimizer = fabric.setup(net, Lion(net.parameters(), lr=1.0))
    assert type(optimizer).__name__ != "Lion"
    watch = GradWatch(images=False)
    with warnings.catch_warnings(), watch.loop(model) as loop:
        warnings.simplefilter("ignore")
        for _ in range(20):
            x = torch.randn(16, 8)
            fabric.backward((model(x) - x.sum(1, keepdim=True)).pow(2).mean())
            if loop.step(optimizer):
                optimizer.step()
            optimizer.zero_grad()
    alert = next(a for a in watch.alerts if a.kind == "exploding")
    assert "clipping will not help: Lion takes a step" in alert.message


def test_a_resumed_run_keeps_the_outliers_of_its_short_window():
    """Outliers are not learnt but the short window takes them (a norm up for good is followed within 20 steps): a
    run resumed 10 steps after its norm rose 10x for good clips as the uninterrupted run does."""
    norms = [1.0 + 0.05 * (i % 3) for i in range(60)] + [10.0 + 0.5 * (i % 3) for i in range(40)]
    straight = AdaptiveClipThreshold()
    before = [straight.update(n, loss=1.0) for n in norms]
    first = AdaptiveClipThreshold()
    for n in norms[:70]:
        first.update(n, loss=1.0)
    resumed = AdaptiveClipThreshold()
    resumed.load_state_dict(first.state_dict())
    after = [resumed.update(n, loss=1.0) for n in norms[70:]]
    assert after == pytest.approx(before[70:])


# ---------------------------------------------------------------------------------------------------------- step size
def test_the_step_size_cap_holds_an_sgd_step_to_a_tenth_of_the_weights():
    """A step may move the weights by a tenth of their norm: under SGD at rate 0.5 with weights of norm 10, a total
    norm of 2 at most, from the first step (no history needed); without the rates (not SGD) or with
    ``step_ratio=None``, no cap."""
    clip = AdaptiveClipThreshold()
    assert clip.update(50.0, loss=1.0, weight_norm=10.0, step_scale=0.5) == pytest.approx(2.0)
    for _ in range(40):
        threshold = clip.update(1.0, loss=1.0, weight_norm=10.0, step_scale=0.5)
    assert threshold == pytest.approx(10**0.3)  # the outlier threshold (3 spreads of 0.1 decade), below the cap
    assert clip.update(1.0, loss=1.0, weight_norm=10.0, step_scale=5.0) == pytest.approx(0.2)  # lr 10x: cap 10x lower
    assert AdaptiveClipThreshold().update(50.0, loss=1.0, weight_norm=10.0) == math.inf  # no rate: not SGD
    off = AdaptiveClipThreshold(step_ratio=None)
    assert off.update(50.0, loss=1.0, weight_norm=10.0, step_scale=0.5) == math.inf
    zero_rate = AdaptiveClipThreshold()
    assert zero_rate.update(50.0, loss=1.0, weight_norm=10.0, step_scale=0.0) == math.inf  # lr 0: no step at all


def test_the_step_size_cap_does_not_rise_as_the_learning_rate_decays():
    """The cap holds the gradient norm where the run's highest rate put it: a schedule decaying the rate 10x shrinks
    a capped step 10x, as it shrinks every other step (a cap at a tenth of the weights for each rate would let a
    gradient 10x larger through, and the last steps of a noisy run move the weights as far as its first). A rate
    rising (a warm-up) lowers the cap with it; the highest rate survives a checkpoint."""
    clip = AdaptiveClipThreshold()
    assert clip.update(50.0, loss=1.0, weight_norm=10.0, step_scale=0.5) == pytest.approx(2.0)
    assert clip.update(50.0, loss=1.0, weight_norm=10.0, step_scale=0.05) == pytest.approx(2.0)  # not 20
    assert clip.update(50.0, loss=1.0, weight_norm=20.0, step_scale=0.05) == pytest.approx(4.0)  # the weights grew
    warm = AdaptiveClipThreshold()
    assert warm.update(50.0, loss=1.0, weight_norm=10.0, step_scale=0.05) == pytest.approx(20.0)
    assert warm.update(50.0, loss=1.0, weight_norm=10.0, step_scale=0.5) == pytest.approx(2.0)
    resumed = AdaptiveClipThreshold()
    resumed.load_state_dict(clip.state_dict())
    assert resumed.state_dict()["top_scale"] == 0.5
    assert resumed.update(50.0, loss=1.0, weight_norm=10.0, step_scale=0.05) == pytest.approx(2.0)


def test_weights_that_start_at_zero_are_not_capped_and_the_start_is_checkpointed():
    """A linear model initialised at zero has no weight scale to hold a step to (a cap of 0 would freeze it): not
    capped, however its weights grow; the weights' norm at the start survives a checkpoint."""
    zero = AdaptiveClipThreshold()
    assert zero.update(3.0, loss=1.0, weight_norm=0.0, step_scale=1.0) == math.inf
    for _ in range(30):
        assert zero.update(3.0, loss=1.0, weight_norm=1.0, step_scale=1.0) > 3.0
    capped = AdaptiveClipThreshold()
    capped.update(3.0, loss=1.0, weight_norm=5.0, step_scale=1.0)
    state = capped.state_dict()
    assert state["start_weights"] == 5.0
    resumed = AdaptiveClipThreshold()
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert resumed.update(3.0, loss=1.0, weight_norm=5.0, step_scale=1.0) == pytest.approx(0.5)


def test_the_step_size_cap_takes_weights_below_their_default_initialisation_at_that_size():
    """Weights far below the norm PyTorch's default initialisation gives them (drawn at 0.001, decayed) must grow:
    the cap measures them at that norm, not at their own (which would hold each step to a tenth of almost nothing);
    weights above it, at their own norm; ``weight_floor=0``: their own norm always."""
    clip = AdaptiveClipThreshold()
    assert clip.update(50.0, loss=1.0, weight_norm=0.002, step_scale=0.5, init_norm=2.0) == pytest.approx(0.4)
    above = AdaptiveClipThreshold()
    assert above.update(50.0, loss=1.0, weight_norm=10.0, step_scale=0.5, init_norm=2.0) == pytest.approx(2.0)
    floorless = AdaptiveClipThreshold(weight_floor=0.0)
    assert floorless.update(50.0, loss=1.0, weight_norm=0.002, step_scale=0.5, init_norm=2.0) == pytest.approx(4e-4)
    zero = AdaptiveClipThreshold()  # weights that start at zero: still not capped
    assert zero.update(50.0, loss=1.0, weight_norm=0.0, step_scale=0.5, init_norm=2.0) == math.inf


def test_the_default_initialisation_norm_counts_linear_conv_and_recurrent_weights_with_a_gradient():
    """The cap's floor is the norm PyTorch's default initialisation gives the weights, from their shapes: Linear and
    Conv (``out / 3`` squared), recurrent input and hidden weights (``numel / (3 hidden)``), close to the norm
    freshly initialised weights have; a weight without a gradient (frozen, or in an unused branch) does not count, as
    it does not in the weights' norm it is compared with."""
    from lightning_gradwatch.engine.step_rates import StepRates

    torch.manual_seed(0)
    net = torch.nn.ModuleDict(
        {
            "lin": torch.nn.Linear(300, 200),
            "conv": torch.nn.Conv2d(16, 64, 3),
            "lstm": torch.nn.LSTM(2, 256),
            "gru": torch.nn.GRU(1, 128, bidirectional=True),
        }
    )
    names, params = zip(*net.named_parameters())
    rates = StepRates(params, list(range(len(params))), names, names)
    for p in params:
        p.grad = torch.zeros_like(p)
    weights = [p for p in params if p.dim() >= 2]
    assert rates.init_norm() == pytest.approx(math.sqrt(sum(float(p.detach().norm()) ** 2 for p in weights)), rel=0.05)
    net["lin"].weight.grad = None  # frozen: no gradient
    rest = [p for p in weights if p is not net["lin"].weight]
    assert rates.init_norm() == pytest.approx(math.sqrt(sum(float(p.detach().norm()) ** 2 for p in rest)), rel=0.05)


class _SmallInitRegression(pl.LightningModule):
    """Linear regression on 32 Gaussian features (targets of norm about 11), weights drawn at std 0.001, SGD lr 0.05
    momentum 0.9, batch 64, 3 epochs (192 steps), the learning rate decayed to 0 over the last 40: a healthy run
    whose weights must grow about 2000x from their start. With ``hidden``: a one-hidden-layer ReLU net (32 -> hidden
    -> 1) from weights at 0.001 instead, whose gradient norm rises about 30x over its first 60 steps while its noisy
    loss stays level, before it falls. ``seed`` draws the data and the weights; ``init_std=None``: PyTorch's default
    initialisation instead."""

    def __init__(
        self, hidden: int | None = None, lr: float = 0.05, seed: int = 0, init_std: float | None = 1e-3
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(4096, 32, generator=g)
        self.y = self.x @ (2.0 * torch.randn(32, 1, generator=g)) + 0.1 * torch.randn(4096, 1, generator=g)
        with torch.random.fork_rng():  # PyTorch's default initialisation, drawn from the seed
            torch.manual_seed(seed)
            if hidden is None:
                self.net: torch.nn.Module = torch.nn.Linear(32, 1)
            else:
                self.net = torch.nn.Sequential(torch.nn.Linear(32, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        self.lr = lr
        with torch.no_grad():
            for p in self.net.parameters() if init_std is not None else ():
                p.normal_(0.0, init_std, generator=g)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (192 - step) / 40))  # to 0
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(self.x, self.y)
        order = torch.Generator().manual_seed(1)
        return torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, generator=order)

    def mse(self) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(self.net(self.x), self.y))


def _small_init_runs(tmp_path: Path, **model_kwargs: Any) -> tuple[dict[str | None, float], str]:
    """``_SmallInitRegression(**model_kwargs)`` through a real Trainer without clipping and with ``clip="adaptive"``
    (every step logged): the final training losses, and the adaptive run's log directory."""
    losses: dict[str | None, float] = {}
    for clip in (None, "adaptive"):
        model = _SmallInitRegression(**model_kwargs)
        watch = GradWatch(clip=clip, log_every_n_steps=1, images=False)
        trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path / str(clip), max_epochs=3))
        trainer.fit(model)
        losses[clip] = model.mse()
    return losses, trainer.logger.log_dir


@single_thread()
def test_a_linear_model_from_a_small_init_learns_as_fast_under_the_step_size_cap(tmp_path):
    """Through a real Trainer: the first step's cap measures the weights at their default-initialisation norm
    (``sqrt(1 / 3)`` for a Linear(32, 1)), not at their own 0.006; the run ends within 1.1x of no clipping."""
    losses, log_dir = _small_init_runs(tmp_path)
    thresholds = scalars(events(log_dir), "gradwatch/clip_threshold")
    assert thresholds[0] == pytest.approx(0.1 * math.sqrt(1 / 3) / (0.05 / 0.1), rel=1e-5)
    assert losses["adaptive"] <= 1.1 * losses[None], losses


@single_thread()
def test_a_net_escaping_a_small_init_is_not_held_back_as_an_outlier(tmp_path):
    """Through a real Trainer: the rising norm of a net escaping a small initialisation comes over ordinary losses,
    so it is no outlier (held to the outlier threshold, not scaled down to the typical norm): the run ends within
    1.1x of no clipping (1.13x when every norm above the outlier threshold was an outlier)."""
    losses, _ = _small_init_runs(tmp_path, hidden=256, lr=0.01)
    assert losses["adaptive"] <= 1.1 * losses[None], losses


@single_thread()
@pytest.mark.parametrize("seed", [2, 6])
def test_a_net_escaping_a_small_init_is_not_stopped_as_exploding(tmp_path, seed):
    """Through a real Trainer under ``on_exploding="stop"``: the net leaving weights at 0.001 grows its norm 10-30x
    over a loss that stays level, then learns. Stopped before: seed 6 at step 2 (its norm 10x the first steps' over
    a loss 1.4x its first), seed 2 at step 16 (a rise of 5 steps over a noisy loss, still within its first losses)."""
    model = _SmallInitRegression(hidden=256, lr=0.01, seed=seed)
    watch = GradWatch(on_exploding="stop", images=False)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=3))
    trainer.fit(model)
    assert watch.alerts == []
    assert trainer.global_step == 192
    assert model.mse() < 0.05  # from about 130: it learnt


@single_thread()
def test_a_decaying_learning_rate_shrinks_the_capped_steps_too(tmp_path):
    """Through a real Trainer: the linear regression at 20x its learning rate (SGD 1.0, momentum 0.9; without clipping
    it overflows), decayed to 0 over its last 40 steps. The step-size cap holds every step; while the rate decays, its
    threshold stays where the highest rate put it, so the last steps shrink with the rate, and the run ends within 2x
    of the best fixed threshold (of 0.03 and 0.1). Before, the threshold rose as the rate fell (XX by the last
    step) and the run ended 3x from it."""
    losses: dict[str | float, float] = {}
    for clip in (0.03, 0.1, "adaptive"):
        model = _SmallInitRegression(lr=1.0, init_std=None)
        watch = GradWatch(clip=clip, log_every_n_steps=1, images=False)
        trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path / str(clip), max_epochs=3))
        trainer.fit(model)
        losses[clip] = model.mse()
    thresholds = scalars(events(trainer.logger.log_dir), "gradwatch/clip_threshold")
    decay = [thresholds[step] for step in range(152, 192)]
    assert max(decay) <= 1.1 * decay[0], decay
    assert losses["adaptive"] <= 2 * min(losses[0.03], losses[0.1]), losses


class _TwoRates(pl.LightningModule):
    """A 2-layer net under SGD whose second layer has its own learning rate (10x), or under Adam."""

    def __init__(self, optimizer: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.optimizer_name = optimizer

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-3)
        groups = [{"params": self.net[0].parameters()}, {"params": self.net[2].parameters(), "lr": 1.0}]
        return torch.optim.SGD(groups, lr=0.1, momentum=0.5)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 8, generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=32)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_step_size_cap_reads_each_parameter_groups_learning_rate(tmp_path, optimizer):
    """Through a real Trainer: the first step's threshold is the cap, from each layer's group's rate
    ``lr / (1 - momentum)`` (0.2 and 2.0), the layers' gradient norms and the weights' norm; under Adam, no cap."""
    model, recorder = _TwoRates(optimizer), GradRecorder()
    watch = GradWatch(clip="adaptive", log_every_n_steps=1, images=False)
    trainer = pl.Trainer(callbacks=[recorder, watch], **trainer_kwargs(tmp_path))
    weights_at_start = {name: float(p.detach().norm()) for name, p in model.named_parameters()}
    trainer.fit(model)
    thresholds = scalars(events(trainer.logger.log_dir), "gradwatch/clip_threshold")
    if optimizer == "adam":
        assert 0 not in thresholds  # the outlier threshold needs a history; Adam is not capped
        return
    grads = recorder.before[0].split([p.numel() for p in model.parameters()])
    rates = [0.1 / 0.5, 0.1 / 0.5, 1.0 / 0.5, 1.0 / 0.5]  # net.0's weight and bias, net.2's
    step = math.sqrt(sum((r * float(g.norm())) ** 2 for r, g in zip(rates, grads)))
    total = float(recorder.before[0].norm())
    weights = math.sqrt(sum(w**2 for w in weights_at_start.values()))
    assert thresholds[0] == pytest.approx(0.1 * weights * total / step, rel=1e-5)


def test_step_rates_of_a_layer_split_across_groups_and_of_momentum_one(tmp_path):
    """A layer whose bias has 10x its weight's learning rate takes the mean rate over its values (mostly the
    weight's, not the bias's 10x); SGD with momentum 1 has no steady step: not capped, and no crash."""
    from lightning_gradwatch.engine.step_rates import StepRates

    lin = torch.nn.Linear(4, 4)
    rates = StepRates([lin.weight, lin.bias], [0, 0], ["lin"])
    split = torch.optim.SGD([{"params": [lin.weight]}, {"params": [lin.bias], "lr": 1.0}], lr=0.1)
    assert rates(split)["lin"] == pytest.approx((16 * 0.1 + 4 * 1.0) / 20)
    assert rates(torch.optim.SGD(lin.parameters(), lr=0.1, momentum=1.0)) is None
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=1.0)
    watch = GradWatch(clip="adaptive", log_every_n_steps=1, images=False)
    with watch.loop(net, log_dir=tmp_path) as loop:
        for _ in range(5):
            net(torch.randn(16, 4)).pow(2).mean().backward()
            if loop.step(optimizer):
                optimizer.step()
            optimizer.zero_grad()
    assert 0 not in scalars(events(tmp_path), "gradwatch/clip_threshold")  # no cap; no outlier history yet


def _outliers_in_a_row(watch: GradWatch, steps: int = 300, early: tuple[int, ...] = ()) -> float:
    """An MLP regression under SGD whose batches at steps 120-121 and 250-251 (two in a row), every 20th step from
    30 and the ``early`` ones have their targets x100, through ``watch.loop``; returns the final validation MSE
    (``inf``: lost)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(4000, 16, generator=g), torch.randn(16, 1, generator=g)
    y = torch.tanh(x @ w / 4) * 3 + 0.1 * torch.randn(4000, 1, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    bad = {120, 121, 250, 251, *early} | set(range(30, steps, 20))
    with watch.loop(model, steps=steps) as loop:
        for step in range(steps):
            idx = torch.randint(0, 3000, (32,), generator=g)
            target = y[idx] * (100.0 if step in bad else 1.0)
            loss = torch.nn.functional.mse_loss(model(x[idx]), target)
            loss.backward()
            if loop.step(opt, loss):
                opt.step()
            opt.zero_grad()
    with torch.no_grad():
        mse = float(torch.nn.functional.mse_loss(model(x[3000:]), y[3000:]))
    return mse if math.isfinite(mse) else math.inf


@single_thread()
def test_outlier_batches_in_a_row_that_adaptive_clipping_holds_are_no_explosion():
    """Two outlier batches in a row (targets x100), each scaled down by ``clip="adaptive"``: the second's norm is
    orders of magnitude beyond the run, but the first's update was held, so it cannot have thrown the run off; no
    exploding alert, and the run learns. Unclipped, the same batches throw the run off, and that is alerted."""
    clipped = GradWatch(clip="adaptive", images=False)
    assert _outliers_in_a_row(clipped) < 0.3  # lost without clipping; 0.13 under clip=1.0
    assert [(a.kind, a.step) for a in clipped.alerts] == []
    watched = GradWatch(images=False)  # no clipping: the outliers' updates reach the weights
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert _outliers_in_a_row(watched) == math.inf
    assert [a.kind for a in watched.alerts][:1] == ["exploding"]
    assert any(issubclass(w.category, GradientWarning) and "Exploding gradients" in str(w.message) for w in said)


@single_thread()
def test_an_outlier_batch_in_the_first_steps_that_adaptive_clipping_holds_does_not_stop_the_run():
    """An outlier batch at step 5, before the run has a spike threshold: a tenfold jump over every norm so far, its
    loss thousands of times the first. ``clip="adaptive"`` scales it down and the next step is back among the run's
    norms: with ``on_exploding="stop"`` the run is neither alerted nor stopped, and learns. Unclipped, the jump is
    alerted at its step (and the run's later outliers lose it)."""
    clipped = GradWatch(clip="adaptive", on_exploding="stop", images=False)
    assert _outliers_in_a_row(clipped, early=(5,)) < 0.3
    assert [(a.kind, a.step) for a in clipped.alerts] == []
    watched = GradWatch(images=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _outliers_in_a_row(watched, early=(5,)) == math.inf
    assert [(a.kind, a.step, a.extra["rule"]) for a in watched.alerts][:1] == [("exploding", 5, "jump")]
