"""False alarms of GradWatch's detector on healthy, noisy training runs of the kinds users train.

    python benchmarks/noisy_healthy.py                                   # 121 families, default seeds
    python benchmarks/noisy_healthy.py --families tinybatch,imbalanced --seeds 0-29
    python benchmarks/noisy_healthy.py --families sgdr --seeds 0,1 --out runs.jsonl   # one JSON line per run

Every run is a real ``lightning.pytorch.Trainer`` fit with ``GradWatch(on_exploding="warn", on_vanishing="warn")``
attached (public API only): alerts are recorded and listed, never acted on (``on_nonfinite`` keeps its default,
``"stop"``: a run whose gradients turn NaN or Inf ends there, and it did not train fine either way). Runs that
trained fine (the outcome below) and got an alert are false alarms. The 37 families of this module (a few hundred
optimizer steps each, CPU), the 7 of ``noisy_objectives.py`` (diffusion, curriculum, task switch, CTC, mixture
density, PINN, quantile), the 8 of ``noisy_shocks.py`` (runs that take a shock mid-run: four healthy, four failing)
and the 8 of ``noisy_practices.py`` (training practices that make the loss or the norm jump or drift by design: DQN
with a target network, BYOL, scheduled sampling, progressive resizing, pruning, adversarial training; two failing
twins, DQN with no target network and SimSiam without its stop-gradient), the 8 of ``noisy_recipes.py`` (recipes
copied from papers and libraries: LoRA, ReZero / zero-init residuals, SAM, a top-1 mixture of experts, RealNVP, PPO;
two failing twins, the flow with unconstrained scales and PPO without its clip), the 14 of
``noisy_optimizers.py`` (optimizers and learning-rate schedules none of the others use: Muon, Lion, Adafactor,
Adagrad, RAdam / NAdam / Adamax, Rprop, ASGD / Adadelta, warmup-stable-decay, inverse square root, polynomial,
chained and sequential schedules, cosine with hard restarts; three failing twins, Muon at 50x its learning rate,
Lion at SGD's, Rprop on mini-batches), the 8 of ``noisy_architectures.py`` (model architectures none of the
others use: a tiny ViT, a U-Net denoiser, a graph attention network, a TCN, a diagonal state-space model, a GRU
encoder-decoder with attention; two failing twins, the ViT at 100x its learning rate and the state-space model with
unstable eigenvalues), and the 14 of ``noisy_events.py`` (events mid-run: Adam's state lost, the batch size changed,
Adam switched to SGD, a penalty switched on, dropout or label smoothing switched on, a small set memorised, the
learning rate decayed to 0, inputs rescaled, an encoder unfrozen after linear probing, a sequence-length warm-up,
gradient noise; three failing twins, Adam's fresh state at 100x, the SGD switch at a bad learning rate, the penalty
at weight 1000), and the 17 of ``noisy_tricks.py`` (training techniques and parametrisations none of the others use:
weight norm, spectral norm, an orthogonal RNN, binary / ternary weights and fake quantisation through
straight-through estimators, a VQ-VAE, gradient checkpointing, sparse embedding gradients under SparseAdam,
alternating multitask heads, Lightning's EMA weight averaging and ModelPruning, a 5000-class softmax, a weight-tied
iterative block, GroupNorm / LayerNorm in batches of 2; three failing twins, the binary net at lr 3, the
discriminator without its spectral norm at a huge lr, the tied block with a diverging gain):

- ``sgdr``: scikit-learn's 8x8 digits, an MLP (even seeds) or a small CNN (odd), SGD momentum at lr 0.1 with cosine
  warm restarts every 50 steps;
- ``mixup_cutmix``: the small CNN on digits, mixup or cutmix drawn per batch, Adam;
- ``reinforce``: REINFORCE on a contextual bandit with noisy rewards (std 1), a running-mean baseline and an entropy
  bonus, batches of 16;
- ``distill``: knowledge distillation of a small MLP from a larger teacher MLP (temperature 4, alpha 0.9), AdamW;
- ``plateau``: noisy regression, SGD momentum under ``ReduceLROnPlateau`` on the epoch's training loss;
- ``imbalanced``: 1:50 imbalanced binary classification, focal loss (even seeds) or cross-entropy with the rare
  class weighted 50x (odd), batches of 16, Adam;
- ``multitask_ramp``: a shared trunk with a regression and a 4-class head, the classification loss's weight ramped
  from 0 to 1 over steps 100-150;
- ``poisson``: Poisson regression with a log link, 1% of the training counts bursts (x20 + 50), Adam;
- ``tinybatch``: Friedman #1 regression with noise, batches of 2, 3 or 4, dropout 0.3, Adam;
- ``autoencoder_wd``: a digits autoencoder with an 8-unit linear bottleneck, SGD Nesterov, weight decay 0.1;
- ``accum``: a digits MLP with gradient accumulation over 4 (seeds 0-5 mod 12) or 8 batches of 16, SGD momentum;
- ``lstm_packed``: an LSTM on packed variable-length sequences (5-40 steps), batches of 8, Adam;
- ``resume_lr_half``: a digits MLP (SGD momentum or Adam) trained 150 steps, checkpointed, and resumed from the
  checkpoint with a new GradWatch at half the learning rate for 150 more;
- ``feature_scales``: regression on features of scales 1e-3 to 1e3, standardised poorly (the first 30 rows' mean and
  one pooled std), Adam;
- ``transformer_preln``: a 2-layer pre-LayerNorm transformer encoder counting tokens, label smoothing 0.1, AdamW
  with a linear warm-up and cosine decay;
- ``gcn_sparse``: a 2-layer graph convolution network with a sparse normalised adjacency on a stochastic block model,
  full batch, dropout 0.5, Adam with weight decay;
- ``swa``: a digits MLP with dropout 0.2, SGD momentum and Lightning's ``StochasticWeightAveraging`` from epoch 6;
- ``unfreeze``: a backbone trained on digits 0-4, a new head for all ten, Lightning's ``BackboneFinetuning``
  unfreezing the backbone at epoch 2 (even seeds) or 4 (odd) at a tenth of the head's learning rate, Adam;
- ``augment``: the small CNN on digits in batches of 8, each batch shifted, noised and half the time partly erased,
  SGD momentum under ``OneCycleLR`` (peak 0.1);
- ``vae_kl_anneal``: a digits VAE (8-dimensional latent), the KL term's weight annealed from 0 to 1 over 200 steps;
- ``gru_lm_clip``: a GRU next-token model of a second-order Markov language, batches of 4, Adam, under Lightning's
  ``gradient_clip_val=0.5``;
- ``label_noise``: a digits MLP with dropout, 30% of its training labels replaced at random, batches of 16, SGD
  momentum with weight decay;
- ``huber_heavy_tail``: regression with Student-t (1.5 degrees of freedom) target noise, Huber loss, batches of 8,
  AdamW with cosine decay;
- ``bf16``: a digits MLP under ``precision="bf16-mixed"``, Adam;
- ``warmup_bigbatch``: the small CNN on digits, SGD Nesterov at 0.1 in batches of 256, 30 linear warm-up steps then
  cosine decay (near the peak the run catapults: its loss and norm jump for a few steps, and it settles);
- ``embedding_bag``: bag-of-tokens classification, a mean ``EmbeddingBag`` over 5000 Zipf-distributed tokens (most
  rows get no gradient in a batch), batches of 16, Adam;
- ``gauss_nll``: heteroscedastic regression, a mean and a learned variance under Gaussian negative log-likelihood
  (the loss goes negative; gradients grow as the variance shrinks), Adam;
- ``triplet``: a digits embedding under the triplet margin loss (triplets past the margin give no gradient), SGD
  momentum;
- ``infonce``: a SimCLR-like encoder, InfoNCE at temperature 0.1 between two noisy shifted views, batches of 64, Adam;
- ``cyclic_bn``: a BatchNorm MLP in batches of 16, SGD momentum under ``CyclicLR`` (triangular2, 0.001-0.2);
- ``hinge``: a digits MLP under the multi-class hinge loss (zero gradient past the margin), SGD momentum;
- ``cosine_temp``: a cosine-similarity head with a learnable logit scale (CLIP-style), AdamW;
- ``manual_opt``: manual optimization, two ``manual_backward`` per batch and one step, SGD momentum under StepLR;
- ``lr_raised``: a digits MLP under Adam at 1e-3 whose scheduler multiplies the learning rate by 30, 60 or 90 at
  step 100 (an event: most seeds absorb it and train on, some do not; the outcome decides);
- ``summed_loss``: a digits MLP whose cross-entropy is summed over batches of 128 where it should be averaged, SGD
  momentum at 0.05 (an event that fails: the norm grows 3-5x per step, falls back, and the run ends at chance);
- ``postln_collapse``: eight post-LayerNorm residual MLP blocks on the digits under Adam at 1e-2 to 3e-2 with no
  warm-up (an event that fails: the loss falls, then the stack collapses back to chance).

The last nine were written after the detector's constants were chosen and first run as they are here, 20 seeds
each: 5 false alarms, all on ``warmup_bigbatch`` (its catapults), which then led to the spike rule's memory of the
spike runs a run came back from. The other eight are held out from the detector's design. The nine after them
were written and first run as they are here, 20 seeds each of the first seven (0 false alarms on 140 runs, all
healthy) and 6 of the last two: ``summed_loss`` failed on 6 of 6 with no alert, which led to the jump rule's
growth from the first step; ``lr_raised`` trained fine on 5 of 6 and was alerted on 4 of those at its second spike,
which led to three spikes, not two. ``postln_collapse``, written with them, failed on 6 of 6, 5 alerted (dead or
small layers) and one not (its loss back at chance, its first layers' gradients 5 decades below the head's, at the
edge of the per-layer ratio), which led to the stall test judging again a run that gave back what it learned.

Outcome (decided before looking at any alert; one function, ``outcome`` below):
    Every family defines ``metric(model)``: a held-out, deterministic (eval mode, no grad) loss where LOWER IS BETTER
    and >= 0: the held-out loss of the family's own objective, except REINFORCE (exact regret of the policy) and
    Poisson (mean Poisson deviance, because the NLL without Stirling term can be negative). It also defines
    ``baseline``: the same metric for a trivial constant predictor (class prior / target mean / mean image /
    uniform policy / constant rate), or None.
    A run "trained fine" (healthy) iff
        - every recorded training loss and gradient norm is finite, and the start and end metric are finite, and
        - end_metric <= 0.7 * min(start_metric, baseline)   (30% clearly below both the untrained model and a
          trivial predictor).

Default seeds: 0-5 for every family, 0-11 for ``accum`` (both accumulation lengths 6 times); ``--seeds`` (a list
and/or ranges, e.g. ``0-29`` or ``0,3,8-10``) applies to every chosen family. The default sweep (732 runs, 0.1-20 s
each) takes about 25 minutes of one core (torch runs on one thread). Prints one line per run, then a markdown table
by family, then every healthy run that got an alert (a false alarm) and every run that did not train fine.
``--no-watch`` trains the same runs without GradWatch (outcomes only: the runs do not depend on the callback).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch.callbacks import BackboneFinetuning, StochasticWeightAveraging
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_gradwatch import GradWatch


# ---------------------------------------------------------------------------------------------------- outcome
def outcome(
    start_metric: float,
    end_metric: float,
    baseline: float | None,
    train_losses: Sequence[float],
    norms: Sequence[float],
) -> tuple[bool, str]:
    """Whether a run trained fine (see the module docstring), and why."""
    finite = all(math.isfinite(v) for v in [*train_losses, *norms, start_metric, end_metric])
    if not finite:
        return False, "non-finite"
    ref = start_metric if baseline is None else min(start_metric, baseline)
    ok = end_metric <= 0.7 * ref
    return ok, f"end {end_metric:.4g} vs 0.7*min(start {start_metric:.4g}, baseline {baseline})"


# ---------------------------------------------------------------------------------------------------- data
@functools.cache
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scikit-learn's 8x8 digits scaled to [0, 1], split 70/30 (stratified): x_train, x_test, y_train, y_test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    return tuple(torch.from_numpy(a) for a in (xtr, xte, ytr, yte))


def loader(*tensors: Tensor, batch_size: int = 32, shuffle: bool = True, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, generator=g, drop_last=True)


def stream_loader(*tensors: Tensor) -> DataLoader:
    """A pre-drawn stream of batches (first dimension: the step), served in order, one batch per optimizer step."""
    return DataLoader(TensorDataset(*tensors), batch_size=None, shuffle=False)


def prior_ce(y: Tensor, k: int) -> float:
    """Cross-entropy of the class prior: the constant predictor's loss."""
    p = torch.bincount(y, minlength=k).float() / len(y)
    return float(-(torch.log(p[y])).mean())


# ---------------------------------------------------------------------------------------------------- models
class Base(pl.LightningModule):
    """Records per optimizer step the loss (summed over micro-batches, as GradWatch does), total norm and lr."""

    def __init__(self) -> None:
        super().__init__()
        self.trace: list[tuple[int, float, float, float]] = []  # (global_step, loss, total_norm, lr)
        self._acc = 0.0

    def compute_loss(self, batch: Any) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.compute_loss(batch)
        self._acc += float(loss.detach())
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        self.trace.append((int(self.global_step), self._acc, norm, float(optimizer.param_groups[0]["lr"])))
        self._acc = 0.0


def mlp(sizes: Sequence[int], act: type[nn.Module] = nn.ReLU, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Two convolutions and a linear head on the 8x8 digits."""

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, k)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(-1, 1, 8, 8)
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def eval_ce(net: nn.Module, x: Tensor, y: Tensor) -> float:
    return float(F.cross_entropy(net(x), y))


def eval_mse(net: nn.Module, x: Tensor, y: Tensor) -> float:
    return float(F.mse_loss(net(x), y))


# ---------------------------------------------------------------------------------------------------- families
@dataclass
class Spec:
    """One run of a family: the model, its data and Trainer settings, its metric and the metric's baseline.

    ``fit``, when given, trains in its own way (several Trainers) and returns the final model and the GradWatch
    callbacks used: ``fit(make_trainer, tmp_dir, watch_factory)``.
    """

    model: Base
    metric: Callable[[Any], float]
    baseline: float | None
    train: DataLoader | None = None
    max_steps: int = -1
    trainer_kw: dict[str, Any] = field(default_factory=dict)
    extra_callbacks: Callable[[], list[pl.Callback]] | None = None
    fit: Callable[..., tuple[Base, list[GradWatch]]] | None = None
    variant: str | None = None


def digits_spec(model: Base, xte: Tensor, yte: Tensor, **fields: Any) -> Spec:
    """A run of a digits classifier: judged by its cross-entropy on the held-out digits, against the class prior's."""
    return Spec(model=model, metric=lambda m: eval_ce(m.net, xte, yte), baseline=prior_ce(yte, 10), **fields)


class Supervised(Base):
    """``loss_fn`` on ``net``, with the optimizer (and scheduler) the factories make; ``log_loss`` logs the epoch's
    training loss (for a plateau monitor)."""

    def __init__(
        self,
        net: nn.Module,
        opt_fn: Callable | None,
        sched_fn: Callable | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        log_loss: bool = False,
    ) -> None:
        super().__init__()
        self.net, self.opt_fn, self.sched_fn, self.loss_fn, self.log_loss = net, opt_fn, sched_fn, loss_fn, log_loss

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        loss = self.loss_fn(self.net(x), y)
        if self.log_loss:
            self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> Any:
        opt = self.opt_fn(self.parameters())
        if self.sched_fn is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.sched_fn(opt)}


class Classifier(Supervised):
    """Cross-entropy on ``net``."""

    def __init__(self, net: nn.Module, opt_fn: Callable | None, sched_fn: Callable | None = None) -> None:
        super().__init__(net, opt_fn, sched_fn)


# --- 1. SGDR: cosine annealing with warm restarts ---------------------------------------------------------------
def fam_sgdr(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    net = mlp([64, 128, 128, 10]) if seed % 2 == 0 else SmallCNN()
    model = Classifier(
        net,
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda o: {
            "scheduler": torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=50, eta_min=1e-4),
            "interval": "step",
        },
    )
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=32, seed=seed), max_steps=300)


# --- 2. mixup / cutmix --------------------------------------------------------------------------------------------
class MixClassifier(Classifier):
    """Mixup or cutmix (on the 8x8 image), drawn per batch from numpy's global generator."""

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        lam = float(np.random.beta(0.4, 0.4))
        perm = torch.randperm(x.shape[0])
        if np.random.rand() < 0.5:  # mixup
            xm = lam * x + (1 - lam) * x[perm]
        else:  # cutmix on the 8x8 image
            img = x.view(-1, 8, 8).clone()
            cut = round(8 * math.sqrt(1 - lam))
            cx, cy = np.random.randint(8), np.random.randint(8)
            x0, x1 = max(cx - cut // 2, 0), min(cx + cut // 2 + cut % 2, 8)
            y0, y1 = max(cy - cut // 2, 0), min(cy + cut // 2 + cut % 2, 8)
            img[:, x0:x1, y0:y1] = img[perm][:, x0:x1, y0:y1]
            lam = 1 - (x1 - x0) * (y1 - y0) / 64.0
            xm = img.view(-1, 64)
        out = self.net(xm)
        return lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])


def fam_mixup(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    model = MixClassifier(SmallCNN(), lambda p: torch.optim.Adam(p, lr=2e-3))
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=32, seed=seed), max_steps=300)


# --- 3. REINFORCE on a contextual bandit --------------------------------------------------------------------------
class Bandit:
    """Contexts in R^d, k arms whose mean reward is tanh(x @ W)."""

    def __init__(self, seed: int, d: int = 6, k: int = 5) -> None:
        g = torch.Generator().manual_seed(1000 + seed)
        self.w = torch.randn(d, k, generator=g)
        self.d, self.k = d, k
        self.x_eval = torch.randn(2000, d, generator=g)

    def means(self, x: Tensor) -> Tensor:
        return torch.tanh(x @ self.w)  # mean reward per arm in [-1, 1]


class Reinforce(Base):
    """REINFORCE with a running-mean reward baseline and an entropy bonus."""

    def __init__(self, env: Bandit, lr: float) -> None:
        super().__init__()
        self.env, self.lr = env, lr
        self.net = mlp([env.d, 64, env.k])
        self.baseline = 0.0

    def compute_loss(self, batch: Any) -> Tensor:
        (x,) = batch
        logits = self.net(x)
        dist = torch.distributions.Categorical(logits=logits)
        a = dist.sample()
        r = self.env.means(x).gather(1, a[:, None]).squeeze(1) + torch.randn(len(a)) * 1.0  # noisy reward
        adv = r - self.baseline
        self.baseline = 0.9 * self.baseline + 0.1 * float(r.mean())
        return -(adv * dist.log_prob(a)).mean() - 0.01 * dist.entropy().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def bandit_regret(m: Reinforce) -> float:
    env = m.env
    mu = env.means(env.x_eval)
    p = F.softmax(m.net(env.x_eval), -1)
    return float((mu.max(1).values - (p * mu).sum(1)).mean())


def fam_reinforce(seed: int) -> Spec:
    env = Bandit(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4000, env.d, generator=g)
    model = Reinforce(env, lr=3e-3)
    mu = env.means(env.x_eval)
    uniform = float((mu.max(1).values - mu.mean(1)).mean())
    return Spec(
        model=model, train=loader(x, batch_size=16, seed=seed), max_steps=300, metric=bandit_regret, baseline=uniform
    )


# --- 4. knowledge distillation ------------------------------------------------------------------------------------
@functools.cache
def teacher() -> nn.Module:
    """The teacher, trained once per process. It seeds torch's global generator (123) when it trains, so the first
    ``distill`` run of a process initialises its student from that generator's state, later ones from their seed."""
    xtr, _, ytr, _ = digits()
    torch.manual_seed(123)
    t = mlp([64, 256, 256, 10])
    opt = torch.optim.Adam(t.parameters(), lr=1e-3)
    for _ in range(600):
        idx = torch.randint(0, len(xtr), (64,))
        loss = F.cross_entropy(t(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    t.eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t


class Distill(Base):
    """A small MLP student: KL to the teacher's softened outputs (weight alpha) plus cross-entropy."""

    def __init__(self, teacher_net: nn.Module, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        self.net = mlp([64, 32, 10])
        self.teacher = [teacher_net]  # not a submodule: no parameters of it are trained or watched
        self.temperature, self.alpha = temperature, alpha

    def kd_loss(self, x: Tensor, y: Tensor) -> Tensor:
        s = self.net(x)
        with torch.no_grad():
            t = self.teacher[0](x)
        temp = self.temperature
        kl = F.kl_div(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean") * temp**2
        return self.alpha * kl + (1 - self.alpha) * F.cross_entropy(s, y)

    def compute_loss(self, batch: Any) -> Tensor:
        return self.kd_loss(*batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)


def fam_distill(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    model = Distill(teacher())
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=32, seed=seed), max_steps=300)


# --- 5. ReduceLROnPlateau, noisy regression -----------------------------------------------------------------------
def noisy_regression(seed: int, n: int = 3000, d: int = 8, noise: float = 0.7) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(2000 + seed)
    x = torch.randn(n, d, generator=g)
    f = torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.5 * x[:, 3]
    y = f + noise * torch.randn(n, generator=g)
    return x[:2000], y[:2000, None], x[2000:], y[2000:, None]


class Regressor(Supervised):
    """``loss_fn`` (MSE by default) on ``net``; ``log_loss`` logs the epoch's training loss (for a plateau monitor)."""

    def __init__(
        self,
        net: nn.Module,
        opt_fn: Callable,
        sched_fn: Callable | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
        log_loss: bool = False,
    ) -> None:
        super().__init__(net, opt_fn, sched_fn, loss_fn, log_loss)


def fam_plateau(seed: int) -> Spec:
    xtr, ytr, xte, yte = noisy_regression(seed)
    model = Regressor(
        mlp([8, 64, 64, 1]),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        lambda o: {
            "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=1),
            "monitor": "train_loss",
            "interval": "epoch",
        },
        log_loss=True,
    )
    # 640 rows / 32 = 20 steps per epoch: 20 epochs in 400 steps, each an occasion for the plateau schedule
    return Spec(
        model=model,
        train=loader(xtr[:640], ytr[:640], batch_size=32, seed=seed),
        max_steps=400,
        metric=lambda m: eval_mse(m.net, xte, yte),
        baseline=float(yte.var()),
    )


# --- 6. imbalanced 1:50, focal loss or class-weighted CE ----------------------------------------------------------
def focal_loss(logits: Tensor, y: Tensor, gamma: float = 2.0, alpha: float = 0.75) -> Tensor:
    logp = F.log_softmax(logits, -1)
    logpt = logp.gather(1, y[:, None]).squeeze(1)
    pt = logpt.exp()
    a = torch.where(y == 1, torch.tensor(alpha), torch.tensor(1 - alpha))
    return (-a * (1 - pt) ** gamma * logpt).mean()


def weighted_ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, weight=torch.tensor([1.0, 50.0]))


def const_baseline(loss_fn: Callable[[Tensor, Tensor], Tensor], y: Tensor) -> float:
    """The best loss of a constant logit difference (a grid over [-6, 6])."""
    best = float("inf")
    for b in np.linspace(-6, 6, 241):
        logits = torch.tensor([[0.0, float(b)]]).repeat(len(y), 1)
        best = min(best, float(loss_fn(logits, y)))
    return best


def fam_imbalanced(seed: int) -> Spec:
    from sklearn.datasets import make_classification

    x_np, y_np = make_classification(
        n_samples=10200,
        n_features=20,
        n_informative=6,
        n_redundant=2,
        weights=[50 / 51],
        class_sep=1.0,
        flip_y=0.0,
        random_state=3000 + seed,
    )
    x = torch.tensor(x_np, dtype=torch.float32)
    y = torch.tensor(y_np, dtype=torch.int64)
    xtr, ytr, xte, yte = x[:6000], y[:6000], x[6000:], y[6000:]
    loss_fn = focal_loss if seed % 2 == 0 else weighted_ce
    model = Supervised(mlp([20, 64, 64, 2]), lambda p: torch.optim.Adam(p, lr=1e-3), loss_fn=loss_fn)
    return Spec(
        model=model,
        train=loader(xtr, ytr, batch_size=16, seed=seed),
        max_steps=375,
        metric=lambda m: float(loss_fn(m.net(xte), yte)),
        baseline=const_baseline(loss_fn, yte),
        variant="focal" if seed % 2 == 0 else "weighted_ce",
    )


# --- 7. multi-task with a task weight ramping 0 -> 1 over steps 100-150 -------------------------------------------
class MultiTask(Base):
    """A shared trunk, a regression head (a) and a 4-class head (b) whose loss weight ramps in."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = mlp([10, 64, 64])
        self.trunk.append(nn.ReLU())
        self.head_a = nn.Linear(64, 1)
        self.head_b = nn.Linear(64, 4)

    def losses(self, x: Tensor, ya: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return F.mse_loss(self.head_a(h), ya), F.cross_entropy(self.head_b(h), yb)

    def compute_loss(self, batch: Any) -> Tensor:
        la, lb = self.losses(*batch)
        w = min(max((self.global_step - 100) / 50.0, 0.0), 1.0)
        return la + w * lb

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fam_multitask(seed: int) -> Spec:
    g = torch.Generator().manual_seed(4000 + seed)
    x = torch.randn(4000, 10, generator=g)
    ya = (x[:, 0] * x[:, 1] + torch.sin(x[:, 2]) + 0.3 * torch.randn(4000, generator=g))[:, None]
    yb = (x[:, 3] > 0).long() * 2 + (x[:, 4] + x[:, 5] > 0).long()
    xtr, xte, yatr, yate, ybtr, ybte = x[:3000], x[3000:], ya[:3000], ya[3000:], yb[:3000], yb[3000:]

    def metric(m: MultiTask) -> float:
        la, lb = m.losses(xte, yate, ybte)
        return float(la + lb)

    return Spec(
        model=MultiTask(),
        train=loader(xtr, yatr, ybtr, batch_size=32, seed=seed),
        max_steps=300,
        metric=metric,
        baseline=float(yate.var()) + prior_ce(ybte, 4),
    )


# --- 8. Poisson regression, log link, a few large counts ----------------------------------------------------------
def poisson_deviance(log_mu: Tensor, y: Tensor) -> float:
    mu = log_mu.exp()
    term = torch.where(y > 0, y * torch.log(y.clamp_min(1e-12) / mu), torch.zeros_like(y))
    return float((2 * (term - (y - mu))).mean())


def fam_poisson(seed: int) -> Spec:
    g = torch.Generator().manual_seed(5000 + seed)
    n = 4000
    x = torch.randn(n, 6, generator=g)
    log_rate = 0.5 + 0.9 * x[:, 0] - 0.6 * x[:, 1] + 0.4 * x[:, 2] * x[:, 3]
    y = torch.poisson(log_rate.exp(), generator=g)
    big = torch.rand(n, generator=g) < 0.01  # a few large counts (overdispersed bursts)
    y_clean = y.clone()
    y[big] = y[big] * 20 + 50
    y, y_clean = y[:, None], y_clean[:, None]
    # trained on the counts with bursts; judged on held-out rows without them (the rate function to learn)
    xtr, ytr, xte, yte = x[:3000], y[:3000], x[3000:], y_clean[3000:]
    model = Regressor(
        mlp([6, 32, 32, 1]), lambda p: torch.optim.Adam(p, lr=3e-3), loss_fn=nn.PoissonNLLLoss(log_input=True)
    )
    const = torch.full_like(yte, float(torch.log(ytr.mean())))
    return Spec(
        model=model,
        train=loader(xtr, ytr, batch_size=64, seed=seed),
        max_steps=400,
        metric=lambda m: poisson_deviance(m.net(xte), yte),
        baseline=poisson_deviance(const, yte),
    )


# --- 9. batch 2-4 MLP regression, Adam, dropout 0.3 ---------------------------------------------------------------
def fam_tinybatch(seed: int) -> Spec:
    from sklearn.datasets import make_friedman1

    x_np, y_np = make_friedman1(n_samples=1500, n_features=10, noise=1.0, random_state=6000 + seed)
    x = torch.tensor((x_np - x_np.mean(0)) / x_np.std(0), dtype=torch.float32)
    y = torch.tensor((y_np - y_np.mean()) / y_np.std(), dtype=torch.float32)[:, None]
    xtr, ytr, xte, yte = x[:1000], y[:1000], x[1000:], y[1000:]
    bs = [2, 3, 4][seed % 3]
    model = Regressor(mlp([10, 64, 64, 1], dropout=0.3), lambda p: torch.optim.Adam(p, lr=1e-3))
    return Spec(
        model=model,
        train=loader(xtr, ytr, batch_size=bs, seed=seed),
        max_steps=400,
        metric=lambda m: eval_mse(m.net, xte, yte),
        baseline=float(yte.var()),
        variant=f"bs{bs}",
    )


# --- 10. autoencoder, weight decay 0.1, bottleneck, SGD Nesterov --------------------------------------------------
class AutoEncoder(Base):
    """Tanh encoder and decoder around an 8-unit linear bottleneck; the loss summed over pixels."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.enc = mlp([64, 48, 8], act=nn.Tanh)
        self.dec = mlp([8, 48, 64], act=nn.Tanh)
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.dec(self.enc(x))  # linear bottleneck

    def compute_loss(self, batch: Any) -> Tensor:
        (x,) = batch
        return F.mse_loss(self(x), x, reduction="sum") / x.shape[0]  # summed over pixels, mean over the batch

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True, weight_decay=0.1)


def fam_autoencoder(seed: int) -> Spec:
    xtr, xte, _, _ = digits()
    model = AutoEncoder(lr=0.01)
    return Spec(
        model=model,
        train=loader(xtr, batch_size=32, seed=seed),
        max_steps=400,
        metric=lambda m: float(F.mse_loss(m(xte), xte)),
        baseline=float(F.mse_loss(xtr.mean(0, keepdim=True).expand_as(xte), xte)),
    )


# --- 11. gradient accumulation ------------------------------------------------------------------------------------
def fam_accum(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    acc = 4 if seed % 12 < 6 else 8
    model = Classifier(mlp([64, 128, 128, 10]), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    return digits_spec(
        model,
        xte,
        yte,
        train=loader(xtr, ytr, batch_size=16, seed=seed),
        max_steps=200,
        trainer_kw={"accumulate_grad_batches": acc},
        variant=f"accum{acc}",
    )


# --- 12. LSTM on packed variable-length sequences -----------------------------------------------------------------
class SeqData(Dataset):
    """Sequences of 5-40 steps of 4 channels; the class is the channel (of the first 3) with the largest sum."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(7000 + seed)
        self.items: list[tuple[Tensor, int]] = []
        for _ in range(n):
            length = int(torch.randint(5, 41, (1,), generator=g))
            x = torch.randn(length, 4, generator=g)
            y = int(torch.argmax(x[:, :3].sum(0)))  # class = channel with the largest sum over time
            self.items.append((x, y))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.items[i]


def collate_seq(batch: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
    xs, ys = zip(*batch)
    lengths = torch.tensor([len(x) for x in xs])
    padded = nn.utils.rnn.pad_sequence(xs, batch_first=True)
    return padded, lengths, torch.tensor(ys)


class LSTMClassifier(Base):
    """An LSTM over packed sequences, a linear head on its last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 32, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.head(h[-1])

    def compute_loss(self, batch: Any) -> Tensor:
        x, lengths, y = batch
        return F.cross_entropy(self(x, lengths), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fam_lstm(seed: int) -> Spec:
    tr, te = SeqData(2400, seed), SeqData(500, seed + 100)
    xte, lte, yte = collate_seq(te.items)
    g = torch.Generator().manual_seed(seed)
    dl = DataLoader(tr, batch_size=8, shuffle=True, collate_fn=collate_seq, generator=g, drop_last=True)
    return Spec(
        model=LSTMClassifier(),
        train=dl,
        max_steps=300,
        metric=lambda m: float(F.cross_entropy(m(xte, lte), yte)),
        baseline=prior_ce(yte, 3),
    )


# --- 13. resumed from a checkpoint with lr halved -----------------------------------------------------------------
class ResumeClassifier(Classifier):
    """A classifier whose learning rate is set at every fit's start (a resumed optimizer state carries the old one)."""

    def __init__(self, net: nn.Module, opt_name: str, lr: float) -> None:
        super().__init__(net, None)
        self.opt_name, self.lr = opt_name, lr

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.opt_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def on_train_start(self) -> None:  # the checkpoint's optimizer state carries the old lr: set the new one
        for g in self.trainer.optimizers[0].param_groups:
            g["lr"] = self.lr


def fam_resume(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    opt_name, lr = ("sgd", 0.05) if seed % 2 == 0 else ("adam", 2e-3)

    def fit(
        make_trainer: Callable[..., pl.Trainer], tmp: str, watch_factory: Callable[[], GradWatch | None]
    ) -> tuple[Base, list[GradWatch]]:
        m1 = ResumeClassifier(mlp([64, 128, 128, 10]), opt_name, lr)
        w1 = watch_factory()
        t1 = make_trainer(tmp, [w1] if w1 else [], max_steps=150)
        t1.fit(m1, loader(xtr, ytr, batch_size=32, seed=seed))
        ckpt = os.path.join(tmp, "mid.ckpt")
        t1.save_checkpoint(ckpt)
        m2 = ResumeClassifier(mlp([64, 128, 128, 10]), opt_name, lr / 2)
        w2 = watch_factory()
        t2 = make_trainer(tmp, [w2] if w2 else [], max_steps=300)
        t2.fit(m2, loader(xtr, ytr, batch_size=32, seed=seed + 50), ckpt_path=ckpt)
        m2.trace = m1.trace + m2.trace
        return m2, [w for w in (w1, w2) if w]

    start_model = ResumeClassifier(mlp([64, 128, 128, 10]), opt_name, lr)
    return digits_spec(start_model, xte, yte, fit=fit, variant=opt_name)


# --- 14. wildly different feature scales --------------------------------------------------------------------------
def fam_scales(seed: int) -> Spec:
    g = torch.Generator().manual_seed(8000 + seed)
    n = 3000
    z = torch.randn(n, 10, generator=g)
    y = (
        torch.tanh(z[:, 0] + z[:, 3])
        + 0.5 * z[:, 5] * z[:, 0]
        + 0.3 * z[:, 8]
        + 0.3 * z[:, 1]
        + 0.2 * torch.randn(n, generator=g)
    )
    y = ((y - y.mean()) / y.std())[:, None]
    scale = torch.tensor([1000.0, 1.0, 0.001, 1000.0, 1.0, 1000.0, 0.01, 1.0, 100.0, 1.0])
    shift = torch.tensor([5000.0, 0.0, 0.0, -200.0, 3.0, 0.0, 0.0, 0.0, 50.0, 0.0])
    x = z * scale + shift
    # "standardised poorly": centred with the first 30 rows' mean and one pooled std for all columns
    x = (x - x[:30].mean(0)) / x[:30].std()
    x = x * 1.0
    xtr, ytr, xte, yte = x[:2400], y[:2400], x[2400:], y[2400:]
    model = Regressor(mlp([10, 64, 64, 1]), lambda p: torch.optim.Adam(p, lr=1e-3))
    return Spec(
        model=model,
        train=loader(xtr, ytr, batch_size=32, seed=seed),
        max_steps=400,
        metric=lambda m: eval_mse(m.net, xte, yte),
        baseline=float(yte.var()),
    )


# --- 15. pre-LN transformer with label smoothing, AdamW, warm-up + cosine -----------------------------------------
class TinyTransformer(Base):
    """A 2-layer pre-LayerNorm transformer encoder, mean-pooled into a 3-class head."""

    def __init__(self, vocab: int = 20, d: int = 32, k: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(16, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, k)

    def forward(self, x: Tensor) -> Tensor:
        h = self.enc(self.emb(x) + self.pos)
        return self.head(self.norm(h).mean(1))

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y, label_smoothing=0.1)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=2e-3, weight_decay=0.05)
        total, warm = 300, 30

        def f(s: int) -> float:
            return (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))

        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, f), "interval": "step"},
        }


def fam_transformer(seed: int) -> Spec:
    g = torch.Generator().manual_seed(9000 + seed)
    x = torch.randint(0, 20, (4000, 16), generator=g)
    counts = torch.stack([(x == t).sum(1) for t in (1, 2, 3)], 1).float() + torch.rand(4000, 3, generator=g) * 0.5
    y = counts.argmax(1)
    xtr, ytr, xte, yte = x[:3200], y[:3200], x[3200:], y[3200:]
    prior_logits = torch.log(torch.bincount(yte, minlength=3).float() / len(yte)).expand(len(yte), 3)
    return Spec(
        model=TinyTransformer(),
        train=loader(xtr, ytr, batch_size=32, seed=seed),
        max_steps=300,
        metric=lambda m: float(F.cross_entropy(m(xte), yte, label_smoothing=0.1)),
        baseline=float(F.cross_entropy(prior_logits, yte, label_smoothing=0.1)),
    )


# --- 16. GCN-style message passing with a sparse adjacency, full batch, dropout -----------------------------------
class GCN(Base):
    """Two graph convolutions (sparse normalised adjacency), dropout 0.5, trained on the nodes ``train_idx``."""

    def __init__(self, adj: Tensor, x: Tensor, y: Tensor, train_idx: Tensor, d_in: int, k: int) -> None:
        super().__init__()
        self.adj, self.x, self.y, self.train_idx = adj, x, y, train_idx
        self.l1 = nn.Linear(d_in, 32)
        self.l2 = nn.Linear(32, k)

    def forward(self, drop: bool = True) -> Tensor:
        h = F.dropout(self.x, 0.5, self.training and drop)
        h = F.relu(torch.sparse.mm(self.adj, self.l1(h)))
        h = F.dropout(h, 0.5, self.training and drop)
        return torch.sparse.mm(self.adj, self.l2(h))

    def compute_loss(self, batch: Any) -> Tensor:
        out = self()
        return F.cross_entropy(out[self.train_idx], self.y[self.train_idx])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01, weight_decay=5e-4)


def fam_gcn(seed: int) -> Spec:
    g = torch.Generator().manual_seed(10000 + seed)
    n, k, d = 800, 4, 32
    y = torch.randint(0, k, (n,), generator=g)
    same = (y[:, None] == y[None, :]).float()
    p_edge = 0.02 * same + 0.003 * (1 - same)
    adj = (torch.rand(n, n, generator=g) < p_edge).float()
    adj = torch.triu(adj, 1)
    adj = adj + adj.T + torch.eye(n)
    dinv = adj.sum(1).pow(-0.5)
    adj_norm = (dinv[:, None] * adj * dinv[None, :]).to_sparse()
    means = torch.randn(k, d, generator=g) * 0.5
    x = means[y] + torch.randn(n, d, generator=g)
    perm = torch.randperm(n, generator=g)
    tr, te = perm[:160], perm[400:]
    model = GCN(adj_norm, x, y, tr, d, k)
    dummy = TensorDataset(torch.zeros(50))  # full batch: the loader only counts the steps
    return Spec(
        model=model,
        train=DataLoader(dummy, batch_size=1),
        max_steps=200,
        metric=lambda m: float(F.cross_entropy(m(drop=False)[te], y[te])),
        baseline=prior_ce(y[te], k),
    )


# --- 17. SWA (Lightning's StochasticWeightAveraging) --------------------------------------------------------------
def fam_swa(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    model = Classifier(mlp([64, 128, 128, 10], dropout=0.2), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    # 960 rows / 32 = 30 steps per epoch, 10 epochs = 300 steps; SWA from epoch 6 at lr 0.02
    return digits_spec(
        model,
        xte,
        yte,
        train=loader(xtr[:960], ytr[:960], batch_size=32, seed=seed),
        max_steps=-1,
        trainer_kw={"max_epochs": 10},
        extra_callbacks=lambda: [StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=0.6, annealing_epochs=2)],
    )


# --- 18. unfreezing: Lightning's BackboneFinetuning on a backbone trained on other classes -------------------------
@functools.cache
def pretrained_backbone_state() -> dict[str, Tensor]:
    """A backbone trained (150 Adam steps, batches of 32) on digits 0-4 only: its state, once per process."""
    xtr, _, ytr, _ = digits()
    keep = ytr < 5
    x, y = xtr[keep], ytr[keep]
    g = torch.Generator().manual_seed(321)
    torch.manual_seed(321)
    backbone, head = mlp([64, 128, 64]), nn.Linear(64, 5)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)
    for _ in range(150):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(head(F.relu(backbone(x[idx]))), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in backbone.state_dict().items()}


class Unfreezing(Base):
    """The pretrained backbone (frozen until ``BackboneFinetuning`` unfreezes it) and a new 10-class head, Adam."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.backbone = mlp([64, 128, 64])
        self.backbone.load_state_dict(pretrained_backbone_state())
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))
        self.lr = lr

    def net(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def fam_unfreeze(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    at = [2, 4][seed % 2]
    return digits_spec(
        Unfreezing(lr=1e-3),
        xte,
        yte,
        train=loader(xtr, ytr, batch_size=32, seed=seed),
        max_steps=400,
        extra_callbacks=lambda: [BackboneFinetuning(unfreeze_backbone_at_epoch=at, backbone_initial_ratio_lr=0.1)],
        variant=f"unfreeze@{at}",
    )


# --- 19. augmentation: shifts, noise and erasing in batches of 8, OneCycleLR -------------------------------------
class Augmented(Classifier):
    """Each batch shifted by up to a pixel, with Gaussian noise (std 0.1), and a 3x3 patch erased half the time."""

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        img = x.view(-1, 8, 8)
        dx, dy = (int(v) for v in torch.randint(-1, 2, (2,)))
        img = torch.roll(img, shifts=(dx, dy), dims=(1, 2)) + 0.1 * torch.randn_like(img)
        if torch.rand(()) < 0.5:
            i, j = (int(v) for v in torch.randint(0, 6, (2,)))
            img = img.clone()
            img[:, i : i + 3, j : j + 3] = 0
        return F.cross_entropy(self.net(img.reshape(-1, 64)), y)


def fam_augment(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    steps = 400
    model = Augmented(
        SmallCNN(),
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9),
        lambda o: {
            "scheduler": torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=steps + 5),
            "interval": "step",
        },
    )
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=8, seed=seed), max_steps=steps)


# --- 20. VAE, the KL term's weight annealed from 0 to 1 over 200 steps -------------------------------------------
def bce_excess(p: Tensor, x: Tensor) -> Tensor:
    """Per image, the binary cross-entropy of ``p`` for the targets ``x`` above the targets' own entropy (>= 0)."""
    pc, xc = p.clamp(1e-6, 1 - 1e-6), x.clamp(1e-6, 1 - 1e-6)
    ce = -(x * pc.log() + (1 - x) * (1 - pc).log())
    h = -(x * xc.log() + (1 - x) * (1 - xc).log())
    return (ce - h).sum(1)


class VAE(Base):
    """A digits VAE with an 8-dimensional latent, Adam."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = mlp([64, 128, 16])
        self.dec = mlp([8, 128, 64])

    def parts(self, x: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        """Per image: the reconstruction term and the KL term (the latent's mean when ``sample`` is false)."""
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if sample else mu
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return bce_excess(torch.sigmoid(self.dec(z)), x), kl

    def compute_loss(self, batch: Any) -> Tensor:
        (x,) = batch
        rec, kl = self.parts(x, sample=True)
        return (rec + min(1.0, self.global_step / 200) * kl).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=2e-3)


def fam_vae(seed: int) -> Spec:
    xtr, xte, _, _ = digits()

    def metric(m: VAE) -> float:
        rec, kl = m.parts(xte, sample=False)
        return float((rec + kl).mean())

    baseline = float(bce_excess(xtr.mean(0, keepdim=True).expand_as(xte), xte).mean())  # the mean image, no latent
    return Spec(
        model=VAE(), train=loader(xtr, batch_size=32, seed=seed), max_steps=800, metric=metric, baseline=baseline
    )


# --- 21. a GRU language model in batches of 4, under Lightning's gradient_clip_val ---------------------------------
def markov_text(seed: int, n: int, vocab: int = 12) -> Tensor:
    """``n`` tokens of a second-order Markov language (two likely successors per context), shared by every seed."""
    g = torch.Generator().manual_seed(9100)
    table = torch.full((vocab, vocab, vocab), -4.0)
    for a in range(vocab):
        for b in range(vocab):
            nxt = torch.randperm(vocab, generator=g)[:2]
            table[a, b, nxt[0]], table[a, b, nxt[1]] = 2.0, 1.0
    probs = table.softmax(-1)
    g2 = torch.Generator().manual_seed(9200 + seed)
    out = [0, 1]
    for _ in range(n - 2):
        out.append(int(torch.multinomial(probs[out[-2], out[-1]], 1, generator=g2)))
    return torch.tensor(out)


class CharGRU(Base):
    """Embedding, a GRU, a linear head: next-token prediction, Adam."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 32)
        self.gru = nn.GRU(32, 64, batch_first=True)
        self.out = nn.Linear(64, vocab)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.gru(self.emb(x))
        return self.out(h)

    def compute_loss(self, batch: Any) -> Tensor:
        (seq,) = batch
        logits = self(seq[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def fam_gru_lm(seed: int) -> Spec:
    tr = markov_text(seed, 33 * 600).view(600, 33)
    te = markov_text(seed + 500, 33 * 100).view(100, 33)
    unigram = torch.bincount(tr.flatten(), minlength=12).float() / tr.numel()

    def metric(m: CharGRU) -> float:
        return float(F.cross_entropy(m(te[:, :-1]).reshape(-1, 12), te[:, 1:].reshape(-1)))

    return Spec(
        model=CharGRU(),
        train=loader(tr, batch_size=4, seed=seed),
        max_steps=400,
        metric=metric,
        baseline=float(-(unigram[te[:, 1:]].log()).mean()),
        trainer_kw={"gradient_clip_val": 0.5},
    )


# --- 22. 30% of the training labels replaced at random -------------------------------------------------------------
def fam_label_noise(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(9300 + seed)
    flip = torch.rand(len(ytr), generator=g) < 0.3
    noisy = ytr.clone()
    noisy[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    model = Classifier(
        mlp([64, 128, 128, 10], dropout=0.2), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4)
    )
    return digits_spec(model, xte, yte, train=loader(xtr, noisy, batch_size=16, seed=seed), max_steps=400)


# --- 23. Student-t (1.5 degrees of freedom) target noise, Huber loss, batches of 8, AdamW + cosine ---------------
def fam_huber(seed: int) -> Spec:
    g = torch.Generator().manual_seed(9400 + seed)
    n = 3000
    x = torch.randn(n, 8, generator=g)
    f = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.3 * x[:, 3]
    y = (f + 0.5 * torch.distributions.StudentT(1.5).sample((n,)))[:, None]
    xtr, ytr, xte, fte = x[:2500], y[:2500], x[2500:], f[2500:, None]  # judged against the clean function
    steps = 500
    model = Supervised(
        mlp([8, 64, 64, 1]),
        lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=1e-2),
        lambda o: {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps), "interval": "step"},
        loss_fn=nn.HuberLoss(delta=1.0),
    )
    return Spec(
        model=model,
        train=loader(xtr, ytr, batch_size=8, seed=seed),
        max_steps=steps,
        metric=lambda m: eval_mse(m.net, xte, fte),
        baseline=float(fte.var()),
    )


# --- 24. precision="bf16-mixed" --------------------------------------------------------------------------------------
def fam_bf16(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    model = Classifier(mlp([64, 128, 128, 10]), lambda p: torch.optim.Adam(p, lr=1e-3))
    return digits_spec(
        model,
        xte,
        yte,
        train=loader(xtr, ytr, batch_size=32, seed=seed),
        max_steps=300,
        trainer_kw={"precision": "bf16-mixed"},
    )


# --- 25. a warm-up to SGD Nesterov at 0.1 in batches of 256, then cosine ------------------------------------------
def fam_warmup_bigbatch(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    steps, warm = 300, 30

    def schedule(o: torch.optim.Optimizer) -> dict[str, Any]:
        def factor(s: int) -> float:
            return (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, factor), "interval": "step"}

    model = Classifier(SmallCNN(), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), schedule)
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=256, seed=seed), max_steps=steps)


# --- 26. sparse bag-of-tokens classification: an EmbeddingBag over 5000 Zipf-distributed tokens ---------------------
def bag_data(seed: int, n: int, vocab: int = 5000, length: int = 40) -> tuple[Tensor, Tensor]:
    """Documents of ``length`` tokens; the label is the sign of their polarity (300 positive, 300 negative tokens)."""
    g = torch.Generator().manual_seed(9500 + seed)
    ranks = torch.arange(1, vocab + 1, dtype=torch.float)
    tokens = torch.multinomial(1 / ranks, n * length, replacement=True, generator=g).view(n, length)
    polarity = torch.zeros(vocab)
    perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(9600))
    polarity[perm[:300]], polarity[perm[300:600]] = 1.0, -1.0
    score = polarity[tokens].sum(1) + 0.5 * torch.randn(n, generator=g)
    return tokens, (score > 0).long()


class BagClassifier(Base):
    """A mean ``EmbeddingBag`` and a linear head, Adam: most embedding rows get no gradient in a batch."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(vocab, 32, mode="mean")
        self.head = nn.Linear(32, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.emb(tokens))

    def compute_loss(self, batch: Any) -> Tensor:
        tokens, y = batch
        return F.cross_entropy(self(tokens), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def fam_embedding_bag(seed: int) -> Spec:
    xtr, ytr = bag_data(seed, 4000)
    xte, yte = bag_data(seed + 1000, 1000)
    return Spec(
        model=BagClassifier(5000),
        train=loader(xtr, ytr, batch_size=16, seed=seed),
        max_steps=500,
        metric=lambda m: float(F.cross_entropy(m(xte), yte)),
        baseline=prior_ce(yte, 2),
    )


# --- 27. heteroscedastic regression, Gaussian NLL with a learned variance, Adam ---------------------------------------
class GaussNLL(Base):
    """A mean and a variance (softplus) per input, Gaussian negative log-likelihood: gradients grow as the variance
    learns to shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp([4, 64, 64, 2])

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        out = self.net(x)
        mu, var = out[:, :1], F.softplus(out[:, 1:]) + 1e-6
        return F.gaussian_nll_loss(mu, y, var)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fam_gauss_nll(seed: int) -> Spec:
    g = torch.Generator().manual_seed(9700 + seed)
    n = 3000
    x = torch.rand(n, 4, generator=g) * 4 - 2
    f = torch.sin(2 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    sigma = 0.05 + 0.5 * (x[:, 3:4] + 2) / 4  # 0.05 to 0.55
    y = f + sigma * torch.randn(n, 1, generator=g)
    model = GaussNLL()
    return Spec(
        model=model,
        train=loader(x[:2500], y[:2500], batch_size=32, seed=seed),
        max_steps=400,
        metric=lambda m: float(F.mse_loss(m.net(x[2500:])[:, :1], f[2500:])),
        baseline=float(f[2500:].var()),
    )


# --- 28. triplet margin loss on digits embeddings, SGD momentum -----------------------------------------------------
def triplets(y: Tensor, g: torch.Generator, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` (anchor, positive, negative) index triplets: the positive of the anchor's class, the negative not."""
    a = torch.randint(0, len(y), (n,), generator=g)
    pos, neg = torch.empty_like(a), torch.empty_like(a)
    by = {int(c): (y == c).nonzero().flatten() for c in y.unique()}
    other = {int(c): (y != c).nonzero().flatten() for c in y.unique()}
    for i, ai in enumerate(a.tolist()):
        c = int(y[ai])
        pos[i] = by[c][torch.randint(0, len(by[c]), (1,), generator=g)]
        neg[i] = other[c][torch.randint(0, len(other[c]), (1,), generator=g)]
    return a, pos, neg


class Triplet(Base):
    """An MLP embedding of the digits, triplet margin loss: a triplet past the margin gives no gradient."""

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.x = x
        self.net = mlp([64, 128, 32])

    def compute_loss(self, batch: Any) -> Tensor:
        a, p, n = batch
        return F.triplet_margin_loss(self.net(self.x[a]), self.net(self.x[p]), self.net(self.x[n]), margin=1.0)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def fam_triplet(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(9800 + seed)
    a, p, n = triplets(ytr, g, 9600)
    ta, tp, tn = triplets(yte, torch.Generator().manual_seed(9899), 2000)
    model = Triplet(xtr)

    def metric(m: Triplet) -> float:
        e = m.net(xte)
        return float(F.triplet_margin_loss(e[ta], e[tp], e[tn], margin=1.0))

    return Spec(
        model=model, train=loader(a, p, n, batch_size=32, seed=seed), max_steps=300, metric=metric, baseline=1.0
    )


# --- 29. InfoNCE (SimCLR-like) on two noisy shifted views of digits, temperature 0.1, Adam --------------------------
def view(x: Tensor, g: torch.Generator | None = None) -> Tensor:
    """A view of 8x8 images: shifted by up to a pixel, with Gaussian noise (std 0.15)."""
    img = x.view(-1, 8, 8)
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
    img = torch.roll(img, shifts=(dx, dy), dims=(1, 2)) + 0.15 * torch.randn(img.shape, generator=g)
    return img.reshape(-1, 64)


def info_nce(z1: Tensor, z2: Tensor, t: float = 0.1) -> Tensor:
    """Symmetric InfoNCE: each view must pick its pair among the batch's other views."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = z1 @ z2.T / t
    target = torch.arange(len(z1))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class Contrastive(Base):
    """An MLP encoder, InfoNCE between two views of each image of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp([64, 128, 64])

    def compute_loss(self, batch: Any) -> Tensor:
        (x,) = batch
        return info_nce(self.net(view(x)), self.net(view(x)))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fam_infonce(seed: int) -> Spec:
    xtr, xte, _, _ = digits()
    g = torch.Generator().manual_seed(9900)
    v1, v2 = view(xte[:256], g), view(xte[:256], g)
    model = Contrastive()
    return Spec(
        model=model,
        train=loader(xtr, batch_size=64, seed=seed),
        max_steps=300,
        metric=lambda m: float(info_nce(m.net(v1), m.net(v2))),
        baseline=math.log(256),
    )


# --- 30. BatchNorm MLP in batches of 16, SGD under CyclicLR (triangular2, 0.001-0.2, 25 steps up) --------------------
def fam_cyclic_bn(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    net = nn.Sequential(
        nn.Linear(64, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    model = Classifier(
        net,
        lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        lambda o: {
            "scheduler": torch.optim.lr_scheduler.CyclicLR(o, 0.001, 0.2, step_size_up=25, mode="triangular2"),
            "interval": "step",
        },
    )
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=16, seed=seed), max_steps=300)


# --- 31. multi-class hinge loss (zero gradient on samples past the margin), SGD -------------------------------------
def fam_hinge(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    model = Supervised(
        mlp([64, 64, 10]), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), loss_fn=nn.MultiMarginLoss()
    )
    return Spec(
        model=model,
        train=loader(xtr, ytr, batch_size=32, seed=seed),
        max_steps=400,
        metric=lambda m: float(F.multi_margin_loss(m.net(xte), yte)),
        baseline=0.9,
    )


# --- 32. cosine-similarity head with a learnable logit scale (CLIP-style), AdamW --------------------------------------
class CosineHead(nn.Module):
    """Cosine similarity to 10 class vectors, times a learnable scale (from 1/0.07, at most 100)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp([64, 128, 64])
        self.w = nn.Parameter(torch.randn(10, 64) * 0.1)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: Tensor) -> Tensor:
        return self.log_scale.exp().clamp(max=100) * F.normalize(self.body(x), dim=1) @ F.normalize(self.w, dim=1).T


def fam_cosine_temp(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    model = Classifier(CosineHead(), lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05))
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=32, seed=seed), max_steps=300)


# --- 33. manual optimization: backward per half-batch, one step per batch, a StepLR ---------------------------------
class Manual(Classifier):
    """Manual optimization: two ``manual_backward`` per batch (its halves), one ``opt.step()``, a StepLR."""

    def __init__(self) -> None:
        super().__init__(mlp([64, 128, 10], dropout=0.1), None)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        opt = self.optimizers()
        x, y = batch
        opt.zero_grad()
        total = 0.0
        for xs, ys in zip(x.chunk(2), y.chunk(2)):
            loss = F.cross_entropy(self.net(xs), ys) / 2
            self.manual_backward(loss)
            total += float(loss.detach())
        self._acc = total
        opt.step()
        sch = self.lr_schedulers()
        sch.step()
        return torch.tensor(total)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 100, 0.3)]


def fam_manual(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    return digits_spec(Manual(), xte, yte, train=loader(xtr, ytr, batch_size=32, seed=seed), max_steps=300)


# --- 34. a scheduler bug: the learning rate x30, x60 or x90 from step 100 (Adam, a digits MLP) ---------------------
def fam_lr_raised(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    model = Classifier(
        mlp([64, 128, 128, 10]),
        lambda p: torch.optim.Adam(p, lr=1e-3),
        lambda o: {
            "scheduler": torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0 if s < 100 else 30.0 * (1 + seed % 3)),
            "interval": "step",
        },
    )
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=32, seed=seed), max_steps=300)


# --- 35. the loss summed over batches of 128 where it should be averaged, SGD momentum at 0.05 ------------------
def fam_summed_loss(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    model = Supervised(
        mlp([64, 128, 10]),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        loss_fn=lambda o, y: F.cross_entropy(o, y, reduction="sum"),
    )
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=128, seed=seed), max_steps=200)


# --- 36. eight post-LayerNorm residual MLP blocks under Adam at 1e-2 to 3e-2, no warm-up ----------------------------
class PostLN(nn.Module):
    """Post-LayerNorm residual MLP blocks (``h = norm(h + block(h))``) between an input and a 10-class layer."""

    def __init__(self, d: int = 64, blocks: int = 8) -> None:
        super().__init__()
        self.inp = nn.Linear(64, d)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d, d * 2), nn.GELU(), nn.Linear(d * 2, d)) for _ in range(blocks)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(blocks))
        self.out = nn.Linear(d, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block, norm in zip(self.blocks, self.norms):
            h = norm(h + block(h))
        return self.out(h)


def fam_postln(seed: int) -> Spec:
    xtr, xte, ytr, yte = digits()
    model = Classifier(PostLN(), lambda p: torch.optim.Adam(p, lr=1e-2 * (1 + seed % 3)))
    return digits_spec(model, xte, yte, train=loader(xtr, ytr, batch_size=32, seed=seed), max_steps=300)


# --- 37. a net leaving a small initialisation: weights drawn at 1e-3 or 1e-4, SGD momentum ----------------------------
def fam_small_init(seed: int) -> Spec:
    """Regression on 32 Gaussian features (targets of norm about 11) by a one-hidden-layer net (64, 256 or 1024
    ReLU or tanh units, by the seed) whose every weight is drawn at std 1e-3 or 1e-4: its first gradients are batch
    noise on tiny weights, and its norm grows 10-100x as the weights leave zero, while its loss stays level, then
    falls. SGD momentum 0.9 at 0.01, batches of 64, 192 steps, the learning rate decayed to 0 over the last 40."""
    g = torch.Generator().manual_seed(3000 + seed)
    x = torch.randn(5120, 32, generator=g)
    y = x @ (2.0 * torch.randn(32, 1, generator=g)) + 0.1 * torch.randn(5120, 1, generator=g)
    width, std = (64, 256, 1024)[seed % 3], (1e-3, 1e-4)[(seed // 3) % 2]
    net = mlp([32, width, 1], act=(nn.ReLU, nn.Tanh)[(seed // 6) % 2])
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, std, generator=g)
    model = Regressor(
        net,
        lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        lambda o: {
            "scheduler": torch.optim.lr_scheduler.LambdaLR(o, lambda step: min(1.0, (192 - step) / 40)),
            "interval": "step",
        },
    )
    return Spec(
        model=model,
        train=loader(x[:4096], y[:4096], batch_size=64, seed=seed),
        max_steps=192,
        metric=lambda m: eval_mse(m.net, x[4096:], y[4096:]),
        baseline=float(y[4096:].var()),
        variant=f"{width} {('relu', 'tanh')[(seed // 6) % 2]} {std:g}",
    )


FAMILIES: dict[str, Callable[[int], Spec]] = {
    "sgdr": fam_sgdr,
    "mixup_cutmix": fam_mixup,
    "reinforce": fam_reinforce,
    "distill": fam_distill,
    "plateau": fam_plateau,
    "imbalanced": fam_imbalanced,
    "multitask_ramp": fam_multitask,
    "poisson": fam_poisson,
    "tinybatch": fam_tinybatch,
    "autoencoder_wd": fam_autoencoder,
    "accum": fam_accum,
    "lstm_packed": fam_lstm,
    "resume_lr_half": fam_resume,
    "feature_scales": fam_scales,
    "transformer_preln": fam_transformer,
    "gcn_sparse": fam_gcn,
    "swa": fam_swa,
    "unfreeze": fam_unfreeze,
    "augment": fam_augment,
    "vae_kl_anneal": fam_vae,
    "gru_lm_clip": fam_gru_lm,
    "label_noise": fam_label_noise,
    "huber_heavy_tail": fam_huber,
    "bf16": fam_bf16,
    "warmup_bigbatch": fam_warmup_bigbatch,
    "embedding_bag": fam_embedding_bag,
    "gauss_nll": fam_gauss_nll,
    "triplet": fam_triplet,
    "infonce": fam_infonce,
    "cyclic_bn": fam_cyclic_bn,
    "hinge": fam_hinge,
    "cosine_temp": fam_cosine_temp,
    "manual_opt": fam_manual,
    "lr_raised": fam_lr_raised,
    "summed_loss": fam_summed_loss,
    "postln_collapse": fam_postln,
    "small_init": fam_small_init,
}


def all_families() -> dict[str, Callable[[int], Spec]]:
    """The families above, then those of ``noisy_objectives.py`` (other objectives and data streams), of
    ``noisy_shocks.py`` (runs that take a shock mid-run), of ``noisy_practices.py`` (training practices that make
    the loss or the norm jump or drift by design), of ``noisy_recipes.py`` (recipes copied from papers and
    libraries: LoRA, ReZero, SAM, mixture of experts, RealNVP, PPO), of ``noisy_optimizers.py`` (optimizers and
    learning-rate schedules the others do not use), of ``noisy_architectures.py`` (model architectures the others
    do not use), of ``noisy_events.py`` (events mid-run) and of ``noisy_tricks.py`` (training techniques and
    parametrisations the others do not use), all built on this module's pieces."""
    import noisy_architectures
    import noisy_events
    import noisy_objectives  # here: they import this module
    import noisy_optimizers
    import noisy_practices
    import noisy_recipes
    import noisy_shocks
    import noisy_tricks

    modules = (
        noisy_objectives,
        noisy_shocks,
        noisy_practices,
        noisy_recipes,
        noisy_optimizers,
        noisy_architectures,
        noisy_events,
        noisy_tricks,
    )
    merged = {**FAMILIES, **{k: v for m in modules for k, v in m.FAMILIES.items()}}
    assert len(merged) == len(FAMILIES) + sum(len(m.FAMILIES) for m in modules), "a name twice"
    return merged


def default_seeds(family: str) -> list[int]:
    """0-5; ``accum`` 0-11 (both accumulation lengths: 4 on seeds 0-5, 8 on 6-11)."""
    return list(range(12 if family == "accum" else 6))


# ---------------------------------------------------------------------------------------------------- runner
def make_trainer(tmp: str, callbacks: list[pl.Callback], **kw: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kw,
    )


def eval_metric(spec: Spec, model: Base) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        v = spec.metric(model)
    model.train(was)
    return v


def run(family: str, seed: int, watch: bool = True) -> dict[str, Any]:
    """Train one run of ``family`` with ``seed``; its record: outcome, metrics, norms, GradWatch's alerts."""
    pl.seed_everything(seed, verbose=False)
    spec = all_families()[family](seed)
    start = eval_metric(spec, spec.model)

    def watch_factory() -> GradWatch | None:
        return GradWatch(on_exploding="warn", on_vanishing="warn") if watch else None

    with tempfile.TemporaryDirectory(prefix=f"gradwatch-noisy-{family}-{seed}-") as tmp:
        t0 = time.perf_counter()
        if spec.fit is not None:
            model, watches = spec.fit(make_trainer, tmp, watch_factory)
        else:
            model = spec.model
            w = watch_factory()
            watches = [w] if w else []
            callbacks: list[pl.Callback] = list(watches) + (spec.extra_callbacks() if spec.extra_callbacks else [])
            trainer = make_trainer(tmp, callbacks, max_steps=spec.max_steps, **spec.trainer_kw)
            trainer.fit(model, spec.train)
        secs = time.perf_counter() - t0
    end = eval_metric(spec, model)
    losses = [t[1] for t in model.trace]
    norms = [t[2] for t in model.trace]
    healthy, why = outcome(start, end, spec.baseline, losses, norms)
    alerts = [
        {"kind": a.kind, "step": a.step, "rule": (a.extra or {}).get("rule"), "message": a.message[:300]}
        for w in watches
        for a in w.alerts
    ]
    return {
        "family": family,
        "variant": spec.variant,
        "seed": seed,
        "steps": len(model.trace),
        "healthy": healthy,
        "outcome": why,
        "start_metric": start,
        "end_metric": end,
        "baseline": spec.baseline,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "max_norm": max(norms) if norms else None,
        "median_norm": float(np.median(norms)) if norms else None,
        "watched": watch,
        "alerts": alerts,
        "seconds": round(secs, 1),
    }


def alert_list(rec: dict[str, Any]) -> list[tuple[str, int, str | None]]:
    return [(a["kind"], a["step"], a["rule"]) for a in rec["alerts"]]


def by_rule(records: list[dict[str, Any]]) -> str:
    counts = Counter(a["kind"] + (f"/{a['rule']}" if a["rule"] else "") for rec in records for a in rec["alerts"])
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def table(records: list[dict[str, Any]], families: list[str]) -> list[str]:
    """Markdown rows: per family, the runs, how many trained fine, and how many of those got an alert (false alarms)."""
    rows = [
        "| family | runs | healthy (outcome) | healthy runs with an alert | alerts on healthy runs by kind/rule |",
        "|---|---:|---:|---:|---|",
    ]
    groups = [(f, [r for r in records if r["family"] == f]) for f in families] + [("**total**", records)]
    for name, recs in groups:
        healthy = [r for r in recs if r["healthy"]]
        alerted = [r for r in healthy if r["alerts"]]
        rows.append(f"| {name} | {len(recs)} | {len(healthy)} | {len(alerted)} | {by_rule(alerted)} |")
    return rows


def parse_seeds(text: str) -> list[int]:
    """``"0,3,8-10"`` -> ``[0, 3, 8, 9, 10]``."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return seeds


def quiet() -> None:
    """Keep Lightning's banners and GradWatch's warnings (the alerts, listed at the end) off the output."""
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    known = all_families()
    parser.add_argument("--families", default="all", help=f"comma-separated, from {', '.join(known)} (default all)")
    parser.add_argument(
        "--seeds", default=None, help="seeds for every chosen family, e.g. 0-29 or 0,3,8-10 (default 0-5; accum 0-11)"
    )
    parser.add_argument("--out", default=None, help="append one JSON line per run to this file")
    parser.add_argument("--no-watch", action="store_true", help="train without GradWatch: outcomes only")
    args = parser.parse_args(argv)
    families = list(known) if args.families == "all" else [f.strip() for f in args.families.split(",")]
    unknown = [f for f in families if f not in known]
    if unknown:
        parser.error(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; choose from {list(known)}")
    try:
        seeds = parse_seeds(args.seeds) if args.seeds else None
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected seeds and ranges such as 0-29 or 0,3,8-10")
    torch.set_num_threads(1)
    quiet()

    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    for family in families:
        for seed in seeds if seeds is not None else default_seeds(family):
            rec = run(family, seed, watch=not args.no_watch)
            records.append(rec)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            print(
                f"{family:18s} {rec['variant']!s:12s} seed {seed:2d} healthy={rec['healthy']} "
                f"alerts={alert_list(rec)} {rec['seconds']}s",
                flush=True,
            )
    total = time.perf_counter() - started

    watched = "" if not args.no_watch else ", trained without GradWatch: no alerts"
    print(f"\n## False alarms on healthy noisy runs ({len(records)} runs{watched})\n")
    print("\n".join(table(records, families)))
    false_alarms = [r for r in records if r["healthy"] and r["alerts"]]
    print(f"\nHealthy runs with an alert (false alarms): {len(false_alarms)}")
    for r in false_alarms:
        print(f"- {r['family']} {r['variant'] or '-'} seed {r['seed']}: {alert_list(r)}")
    unhealthy = [r for r in records if not r["healthy"]]
    print(f"\nRuns that did not train fine (alerts on these are not false alarms): {len(unhealthy)}")
    for r in unhealthy:
        print(f"- {r['family']} {r['variant'] or '-'} seed {r['seed']}: {r['outcome']}; alerts {alert_list(r)}")
    print(
        f"\ntorch {torch.__version__}, lightning {lightning.__version__}; torch threads: {torch.get_num_threads()};"
        f" {len(records)} runs in {total:.0f} s"
    )


if __name__ == "__main__":
    main()
