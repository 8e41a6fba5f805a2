"""Families of runs under training *recipes* users copy from papers and libraries, for ``noisy_healthy.py``: six that
train fine, two failing twins.

Written, with their expected outcome, before the detector was run on them. The healthy six: LoRA (rank-4 adapters,
B zero-initialised, on a frozen MLP pretrained on digits 0-4, adapted to digits 5-9: A's gradient is exactly zero
at step 0), a deep residual MLP whose branches start switched off (ReZero gates at 0, or each branch's last layer
zero-initialised), SAM (two forward/backward passes per step under manual optimization), a Switch-style top-1
mixture of experts with a load-balancing loss (experts that get no token have no gradient), a RealNVP flow on
unstandardised two moons (its NLL goes from ~1.9 to ~-1.2), PPO's clipped surrogate on a contextual bandit (the
loss near zero, changing sign). The failing twins (the outcome decides): the flow with unconstrained scales and a
50x learning rate, and PPO with no clip, 10 epochs per rollout and a 100x learning rate. One setup was fixed after
a run without GradWatch and before any watched run (``ppo_unclipped``: its first form trained fine; its docstring
says how). A masked-token transformer with gradient accumulation was planned and left out (it overlaps
``transformer_preln`` and ``accum`` and was the slowest).

First run with GradWatch, 10 seeds each (80 runs, 115 s; 0.5-2.8 s a run): every healthy-expected run trained fine
(60 of 60) with no alert. ``realnvp_unbounded`` failed on 10 of 10 (NaN from its second step), alerted on 10 of 10
(*nonfinite* at step 1; GradWatch's default ``on_nonfinite="stop"`` then ended each run after 2 of its 500 steps).
``ppo_unclipped`` failed on 7 of 10 and trained fine on 3 (seeds 4, 6, 8: the policy collapsed onto good enough
arms, regret 0.29-0.54 against the uniform policy's ~0.8-0.9): 6 of the 7 failing runs were alerted *vanishing*
("every gradient exactly zero for 50 steps", first at steps 59, 70, 214, 288, 449 and 672: a saturated softmax,
median logit gaps of 345-2700 on seeds 1, 2, 8, not dead ReLUs as the alert's remedy suggests); seed 2 was not (its
median gradient norm 5e-20, not exactly zero for 50 steps in a row). One false alarm: ``ppo_unclipped`` seed 8
(healthy by the outcome, regret 0.54) alerted *vanishing* at steps 607 and 729 (its gradient is exactly zero there:
training had stopped). The flow's metric was fixed after that run (a NaN KL was clamped to 0 by ``max``; NaN now
stays NaN): outcomes do not change (the NaN losses decide them), the first run's records show end metric 0.0 for
``realnvp_unbounded``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from noisy_healthy import Bandit, Base, SmallCNN, Spec, Supervised, bandit_regret, digits, mlp, prior_ce, stream_loader
from noisy_practices import digits_stream
from noisy_shocks import ce_metric
from torch import Tensor, nn


# ---------------------------------------------------------------------------------------------------- helpers
def cosine_schedule(total: int) -> Callable[[torch.optim.Optimizer], dict[str, Any]]:
    return lambda o: {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(o, total), "interval": "step"}


# ================================================================================================ healthy recipes
# --- a. lora: rank-4 adapters (B zero-initialised) on a frozen pretrained digits MLP --------------------------------
@functools.cache
def pretrained_0to4() -> dict[str, Tensor]:
    """An MLP 64-256-256-5 trained (300 Adam steps at 1e-3, batches of 32) on digits 0-4 only: its state, once per
    process (under ``fork_rng``: the global generator is left as it was)."""
    xtr, _, ytr, _ = digits()
    keep = ytr < 5
    x, y = xtr[keep], ytr[keep]
    with torch.random.fork_rng():
        torch.manual_seed(41500)
        g = torch.Generator().manual_seed(41501)
        net = mlp([64, 256, 256, 5])
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(300):
            idx = torch.randint(0, len(x), (32,), generator=g)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * x A^T B^T``: the frozen base layer plus a rank-``r`` update, A Kaiming-uniform (as
    PEFT initialises it), B zero (so the update, and A's gradient, are zero until B has moved)."""

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / r

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


def lora_net(r: int = 4, alpha: float = 8.0) -> nn.Sequential:
    net = mlp([64, 256, 256, 5])
    net.load_state_dict(pretrained_0to4())
    net.requires_grad_(False)
    for i, m in enumerate(net):
        if isinstance(m, nn.Linear):
            net[i] = LoRALinear(m, r, alpha)
    return net


def fam_lora(seed: int) -> Spec:
    """LoRA fine-tuning: an MLP 64-256-256-5 pretrained on digits 0-4 (once per process), frozen (its weights and its
    head), adapted to digits 5-9 (relabelled 0-4) by rank-4 adapters (alpha 8: scale 2) on all three Linear layers,
    A Kaiming-uniform and B zero; only the 6 adapter matrices train (AdamW 3e-3, weight decay 0.01), batches of 32,
    300 steps. Expected: at step 0 every A's gradient is exactly zero (B = 0) and only B's are not; the loss starts
    high (the frozen head confidently names the wrong digit: ~3-6) and falls to ~0.1-0.4; the total norm, of 6
    small matrices, is large at first and shrinks. Metric: held-out cross-entropy on digits 5-9; baseline: the class
    prior's (~log 5). Healthy expected on every seed."""
    _, xte, _, yte = digits()
    _, _, ytr, _ = digits()
    x, y = digits_stream(seed, 41000, 300, keep=ytr >= 5)
    test = yte >= 5
    xte5, yte5 = xte[test], yte[test] - 5
    model = Supervised(
        lora_net(), lambda p: torch.optim.AdamW([q for q in p if q.requires_grad], lr=3e-3, weight_decay=0.01)
    )
    return Spec(
        model=model,
        train=stream_loader(x, y - 5),
        max_steps=300,
        metric=ce_metric(xte5, yte5),
        baseline=prior_ce(yte5, 5),
    )


# --- b. rezero: residual MLP blocks whose branch starts at zero --------------------------------------------------
class ResBlock(nn.Module):
    """``x + g * f(x)``, f = Linear-ReLU-Linear (d -> 2d -> d). ``rezero``: g a scalar parameter starting at 0 (ReZero);
    else g = 1 and f's last Linear starts at zero (the zero-init residual of Goyal et al. / Fixup)."""

    def __init__(self, d: int, rezero: bool) -> None:
        super().__init__()
        self.f = mlp([d, 2 * d, d])
        self.rezero = rezero
        if rezero:
            self.gate = nn.Parameter(torch.zeros(()))
        else:
            nn.init.zeros_(self.f[-1].weight)
            nn.init.zeros_(self.f[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + (self.gate if self.rezero else 1.0) * self.f(x)


def res_mlp(rezero: bool, blocks: int = 8, d: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, d), *[ResBlock(d, rezero) for _ in range(blocks)], nn.ReLU(), nn.Linear(d, 10))


def fam_rezero(seed: int) -> Spec:
    """A deep residual MLP on the digits: a stem 64-128, eight residual blocks (Linear 128-256, ReLU, Linear 256-128),
    ReLU, a head 128-10, no normalisation. Even seeds: ReZero (each branch scaled by a scalar gate that starts at 0),
    Adam 1e-3; odd seeds: each branch's last Linear zero-initialised (gate 1), SGD momentum 0.9 at 0.05 with cosine
    decay. Batches of 32, 300 steps. Expected: at first every branch is off and only the stem, the head and the gates
    (or the branches' last layers) get gradient: every branch's first Linear gets exactly zero gradient at step 0
    and tiny ones for a few steps while the gates open; the network starts as a linear model and deepens; the loss
    falls from log 10 to ~0.05-0.2. Metric: held-out cross-entropy; baseline: the class prior's. Healthy expected on
    every seed."""
    _, xte, _, yte = digits()
    x, y = digits_stream(seed, 42000, 300)
    rezero = seed % 2 == 0
    if rezero:
        model = Supervised(res_mlp(True), lambda p: torch.optim.Adam(p, lr=1e-3))
    else:
        model = Supervised(
            res_mlp(False), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), sched_fn=cosine_schedule(300)
        )
    return Spec(
        model=model,
        train=stream_loader(x, y),
        max_steps=300,
        metric=ce_metric(xte, yte),
        baseline=prior_ce(yte, 10),
        variant="rezero" if rezero else "zero_last",
    )


# --- c. sam: sharpness-aware minimization with manual optimization ------------------------------------------------
class SAM(Supervised):
    """SAM (Foret et al.): per batch, the gradient at w; the weights moved to w + rho g / ||g||; the gradient there;
    the weights moved back; one optimizer step with that second gradient. Manual optimization (two
    ``manual_backward`` per step); the recorded loss is the one at w."""

    def __init__(self, rho: float, lr: float, total: int) -> None:
        super().__init__(SmallCNN(), None)
        self.rho, self.lr, self.total = rho, lr, total
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        opt = self.optimizers()
        x, y = batch
        opt.zero_grad()
        loss = F.cross_entropy(self.net(x), y)
        self.manual_backward(loss)
        params = [p for p in self.parameters() if p.grad is not None]
        with torch.no_grad():
            gnorm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            eps = [p.grad * (self.rho / (gnorm + 1e-12)) for p in params]
            for p, e in zip(params, eps):
                p.add_(e)
        opt.zero_grad()
        self.manual_backward(F.cross_entropy(self.net(x), y))
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
        self._acc = float(loss.detach())
        opt.step()
        self.lr_schedulers().step()
        return loss.detach()

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.total)]


def fam_sam(seed: int) -> Spec:
    """SAM on the small CNN on digits: rho 0.05, SGD momentum 0.9 at 0.05 with weight decay 5e-4 and cosine decay over
    300 steps, batches of 32, manual optimization (two forward/backward passes per step: the perturbation, then the
    gradient at the perturbed weights, which is the one stepped and watched). Expected: like plain SGD, a little
    slower; the loss from log 10 to ~0.05-0.2; the stepped gradient's norm a bit above the unperturbed one's.
    Metric: held-out cross-entropy; baseline: the class prior's. Healthy expected on every seed."""
    _, xte, _, yte = digits()
    x, y = digits_stream(seed, 43000, 300)
    return Spec(
        model=SAM(0.05, 0.05, 300),
        train=stream_loader(x, y),
        max_steps=300,
        metric=ce_metric(xte, yte),
        baseline=prior_ce(yte, 10),
    )


# --- d. moe_top1: a top-1 mixture-of-experts layer with a load-balancing loss -------------------------------------
class MoE(nn.Module):
    """A Switch-style layer: a linear router, softmax, each token to its top-1 expert (an MLP d-h-d) scaled by its
    gate probability; no capacity limit. Experts that get no token in a batch are not run (no gradient). Returns the
    output and the Switch load-balancing loss ``n * sum_i f_i P_i`` (1 when balanced)."""

    def __init__(self, d: int = 64, n: int = 8, h: int = 64) -> None:
        super().__init__()
        self.n = n
        self.router = nn.Linear(d, n)
        self.experts = nn.ModuleList([mlp([d, h, d]) for _ in range(n)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        probs = F.softmax(self.router(x), -1)
        top = probs.argmax(1)
        gate = probs.gather(1, top[:, None])
        out = torch.zeros_like(x)
        for e in range(self.n):
            idx = (top == e).nonzero().squeeze(1)
            if len(idx):
                out = out.index_add(0, idx, gate[idx] * self.experts[e](x[idx]))
        frac = torch.bincount(top, minlength=self.n).float() / len(x)
        aux = self.n * (frac * probs.mean(0)).sum()
        return out, aux


class MoENet(nn.Module):
    """A stem 64-64 (ReLU), a residual MoE layer, ReLU, a head 64-10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(64, 64)
        self.moe = MoE()
        self.head = nn.Linear(64, 10)
        self.aux = torch.zeros(())

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        out, self.aux = self.moe(h)
        return self.head(F.relu(h + out))


class MoEClassifier(Supervised):
    """Cross-entropy plus ``aux_weight`` times the load-balancing loss."""

    def __init__(self, aux_weight: float) -> None:
        super().__init__(MoENet(), lambda p: torch.optim.Adam(p, lr=1e-3))
        self.aux_weight = aux_weight

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y) + self.aux_weight * self.net.aux


def fam_moe(seed: int) -> Spec:
    """A mixture-of-experts classifier on digits: a stem, a Switch-style top-1 MoE layer of 8 experts (MLPs 64-64-64,
    residual), a head; cross-entropy plus 0.01 x the load-balancing loss; batches of 16 (2 tokens per expert on
    average: on most steps one or more experts get no token and no gradient, so the set of parameters with a
    gradient changes from step to step), Adam 1e-3, 400 steps. Expected: the loss from log 10 + 0.01 to ~0.05-0.2
    (its floor 0.01 from the balancing term). Run without GradWatch (seed 0): 99% of the steps have an expert with
    no gradient, on average 4.8 of the 8 (3.7 in the first 100 steps, ~5 later: the router concentrates on about
    3 experts despite the balancing term); the loss ends at ~0.25. Metric: held-out cross-entropy (no auxiliary
    term); baseline: the class prior's. Healthy expected on every seed."""
    _, xte, _, yte = digits()
    x, y = digits_stream(seed, 44000, 400, bs=16)
    return Spec(
        model=MoEClassifier(0.01),
        train=stream_loader(x, y),
        max_steps=400,
        metric=ce_metric(xte, yte),
        baseline=prior_ce(yte, 10),
    )


# --- e. realnvp: affine coupling flow on two moons -------------------------------------------------------------
MOONS_SCALE, MOONS_NOISE = 0.3, 0.1
MOONS_CENTER = np.array([0.5, 0.25])


def moons(n: int, seed: int) -> Tensor:
    """scikit-learn's two moons (noise 0.1), centred and scaled by 0.3 (not standardised: the density is sharp and
    the NLL goes below zero)."""
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=MOONS_NOISE, random_state=seed)
    return torch.tensor(MOONS_SCALE * (x - MOONS_CENTER), dtype=torch.float32)


@functools.cache
def moons_curve(points: int = 4000) -> Tensor:
    """Points along both moons' curves (uniform in the angle, as ``make_moons`` spaces them), scaled as the data."""
    t = np.linspace(0, np.pi, points)
    outer = np.stack([np.cos(t), np.sin(t)], 1)
    inner = np.stack([1 - np.cos(t), 1 - np.sin(t) - 0.5], 1)
    c = np.concatenate([outer, inner])
    return torch.tensor(MOONS_SCALE * (c - MOONS_CENTER), dtype=torch.float64)


def moons_true_nll(x: Tensor) -> Tensor:
    """The data density's negative log (a mixture over the curves of isotropic Gaussians, std 0.1 x 0.3)."""
    c = moons_curve()
    s = MOONS_SCALE * MOONS_NOISE
    d2 = ((x.double()[:, None, :] - c[None]) ** 2).sum(-1)
    logp = torch.logsumexp(-d2 / (2 * s * s), 1) - math.log(len(c)) - math.log(2 * math.pi * s * s)
    return -logp


class Coupling(nn.Module):
    """An affine coupling layer: the dimension ``keep`` passes, the other becomes ``x exp(s) + t`` with (s, t) from
    an MLP 1-h-h-2 of the kept one. ``bounded``: s = scale * tanh(raw) (a learnt scale starting at 1) and the MLP's
    last layer zero-initialised (the flow starts as the identity), as RealNVP / Glow implementations do; else s =
    raw, default initialisation."""

    def __init__(self, keep: int, hidden: int, bounded: bool) -> None:
        super().__init__()
        self.keep, self.bounded = keep, bounded
        self.net = mlp([1, hidden, hidden, 2])
        if bounded:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
            self.s_scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xk, xc = x[:, self.keep : self.keep + 1], x[:, 1 - self.keep : 2 - self.keep]
        raw, t = self.net(xk).chunk(2, 1)
        s = self.s_scale * torch.tanh(raw) if self.bounded else raw
        yc = xc * torch.exp(s) + t
        out = torch.cat([xk, yc], 1) if self.keep == 0 else torch.cat([yc, xk], 1)
        return out, s.squeeze(1)


class Flow(Base):
    """RealNVP: ``layers`` couplings alternating the passed dimension, a standard normal base; loss the mean negative
    log-likelihood of the batch (nats per point)."""

    def __init__(self, layers: int, hidden: int, bounded: bool, lr: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Coupling(i % 2, hidden, bounded) for i in range(layers)])
        self.lr = lr

    def nll(self, x: Tensor) -> Tensor:
        logdet = torch.zeros(len(x))
        for layer in self.layers:
            x, s = layer(x)
            logdet = logdet + s
        log_base = -0.5 * (x**2).sum(1) - math.log(2 * math.pi)
        return -(log_base + logdet)

    def compute_loss(self, batch: Any) -> Tensor:
        (x,) = batch
        return self.nll(x).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def flow_spec(seed: int, base: int, steps: int, **kw: Any) -> Spec:
    bs = 256
    x = moons(steps * bs, base + seed).view(steps, bs, 2)
    xte = moons(2000, 45999)
    true_nll = float(moons_true_nll(xte).mean())
    fit = x.view(-1, 2)[:4000]
    gauss = torch.distributions.MultivariateNormal(fit.mean(0), torch.cov(fit.T))

    def metric(m: Flow) -> float:
        kl = float(m.nll(xte).mean()) - true_nll
        return max(0.0, kl) if math.isfinite(kl) else kl  # NaN stays NaN (max(0.0, nan) is 0.0)

    return Spec(
        model=Flow(**kw),
        train=stream_loader(x),
        max_steps=steps,
        metric=metric,
        baseline=max(0.0, float(-gauss.log_prob(xte).mean()) - true_nll),
    )


def fam_realnvp(seed: int) -> Spec:
    """A RealNVP flow (6 affine couplings alternating the dimension, coupling MLPs 1-64-64-2, scales
    ``s_scale * tanh``, last layers zero-initialised: the identity at first) on two moons (noise 0.1) centred and
    scaled by 0.3 (not standardised); maximum likelihood, batches of 256 fresh points, Adam 1e-3, 500 steps.
    Expected: the NLL starts at ~1.9 (the standard normal base on the small data) and goes below zero, ending at
    ~-1.0 to -1.3 (the data's entropy is ~-1.45 nats); the gradient norm grows as the density sharpens (the log-det
    terms). Run without GradWatch (seeds 0-2): the loss is below zero from step ~20, -1.0 to -1.3 at the end; the
    norm ~2-4 early, ~6-10 late, up to 35-40 on single steps; the KL 0.14-0.18 at the end (start 3.3, baseline
    0.89). Metric: held-out NLL minus the data density's own (the KL from the data, >= 0,
    clamped at 0), on 2000 held-out points; baseline: the same for a Gaussian fitted to the data (~1 nat). Healthy
    expected on every seed."""
    return flow_spec(seed, 45000, 500, layers=6, hidden=64, bounded=True, lr=1e-3)


# --- f. ppo: the clipped surrogate on a contextual bandit ------------------------------------------------------
class PPO(Base):
    """PPO's policy objective on a contextual bandit: every ``epochs * minibatches`` steps a rollout (the batch's 256
    contexts, actions sampled from the current policy, noisy rewards, advantages normalised within the rollout, old
    log-probabilities kept); each step one minibatch of it (a new permutation per epoch); loss
    ``-mean(min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)) - 0.01 entropy`` (``clip=None``: ``-mean(ratio A)``)."""

    def __init__(
        self, env: Bandit, lr: float, clip: float | None, epochs: int, seed: int, minibatches: int = 4
    ) -> None:
        super().__init__()
        self.env, self.lr, self.clip, self.epochs, self.minibatches = env, lr, clip, epochs, minibatches
        self.net = mlp([env.d, 64, 64, env.k])
        self.g = torch.Generator().manual_seed(46500 + seed)
        self.rollout: tuple[Tensor, Tensor, Tensor] | None = None
        self.perm = torch.arange(0)

    def compute_loss(self, batch: Any) -> Tensor:
        (ctx,) = batch
        s = int(self.global_step) % (self.epochs * self.minibatches)
        if s == 0:
            with torch.no_grad():
                logp_all = F.log_softmax(self.net(ctx), -1)
                a = torch.multinomial(logp_all.exp(), 1, generator=self.g).squeeze(1)
                r = self.env.means(ctx).gather(1, a[:, None]).squeeze(1) + torch.randn(len(a), generator=self.g)
                adv = (r - r.mean()) / (r.std() + 1e-8)
                self.rollout = (a, logp_all.gather(1, a[:, None]).squeeze(1), adv)
        if s % self.minibatches == 0:
            self.perm = torch.randperm(len(ctx), generator=self.g)
        a, old_logp, adv = self.rollout
        idx = self.perm.chunk(self.minibatches)[s % self.minibatches]
        logp_all = F.log_softmax(self.net(ctx[idx]), -1)
        ratio = torch.exp(logp_all.gather(1, a[idx, None]).squeeze(1) - old_logp[idx])
        surr = ratio * adv[idx]
        if self.clip is not None:
            surr = torch.min(surr, ratio.clamp(1 - self.clip, 1 + self.clip) * adv[idx])
        entropy = -(logp_all.exp() * logp_all).sum(1).mean()
        return -surr.mean() - 0.01 * entropy

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def ppo_spec(seed: int, base: int, iters: int, rollout: int = 256, **kw: Any) -> Spec:
    env = Bandit(base + seed)
    g = torch.Generator().manual_seed(base + 500 + seed)
    per = kw["epochs"] * kw.get("minibatches", 4)
    ctx = torch.randn(iters, rollout, env.d, generator=g).repeat_interleave(per, 0)
    mu = env.means(env.x_eval)
    return Spec(
        model=PPO(env, seed=seed, **kw),
        train=stream_loader(ctx),
        max_steps=iters * per,
        metric=bandit_regret,
        baseline=float((mu.max(1).values - mu.mean(1)).mean()),
    )


def fam_ppo(seed: int) -> Spec:
    """PPO (clip 0.2) on a contextual bandit (6-dimensional contexts, 5 arms with mean rewards tanh(x W), reward noise
    std 1): a policy MLP 6-64-64-5, rollouts of 256 contexts, 4 epochs of 4 minibatches of 64 per rollout, Adam
    1e-3, 30 rollouts (480 steps), entropy bonus 0.01. Expected: the loss is near zero and changes sign (advantages
    normalised per rollout: the first minibatch of each rollout has ratio 1 and loss -mean(A) - 0.01 H), about
    -0.01 to -0.1 within a rollout as the policy improves on it; the norm is noisy, with no trend. Metric: the
    policy's exact expected regret on 2000 held-out contexts; baseline: the uniform policy's. Healthy expected on
    every seed."""
    return ppo_spec(seed, 46000, 30, lr=1e-3, clip=0.2, epochs=4)


# ================================================================================================ failing twins
# --- g. realnvp_unbounded: unconstrained scales, a 50x learning rate ---------------------------------------------
def fam_realnvp_unbounded(seed: int) -> Spec:
    """The RealNVP family with its scale guard removed: s = the coupling MLP's raw output (no tanh, no learnt bound),
    the MLPs' default initialisation (not the identity at first), and Adam at 5e-2 (50x the healthy twin's), 500
    steps on the same data. Expected: exp(s) is unbounded, a step that pushes some s up makes the log-det and the
    base term swing, the loss and the norm blow up (inf/NaN) or the flow stalls far from the data; NOT healthy
    expected (the outcome decides). Run without GradWatch (seeds 0-2): the loss and the norm are NaN from the second
    step on (the first Adam step, 0.05 on every weight, sends exp(s) to inf in some coupling)."""
    return flow_spec(seed, 47000, 500, layers=6, hidden=64, bounded=False, lr=5e-2)


# --- h. ppo_unclipped: no clip, many epochs, a 100x learning rate ---------------------------------------------
def fam_ppo_unclipped(seed: int) -> Spec:
    """The PPO family without its clip (the plain importance-weighted surrogate ``-mean(ratio A)``), 10 epochs per
    rollout instead of 4, Adam at 0.1 (100x), 20 rollouts (800 steps). Expected: within a rollout the ratios of
    positively-advantaged actions grow without limit, the policy turns deterministic on whatever the first noisy
    rollouts favoured (entropy collapse: the softmax saturates and the gradient goes to ~0); later rollouts see one
    action per context and learn nothing; the regret stays near the uniform policy's. NOT healthy expected (the
    outcome decides). Setup fixed once before any watched run: first written with Adam at 3e-2 and 8 epochs per
    rollout, 3 of 3 seeds trained fine without GradWatch (the policy collapsed late, mostly onto good arms: regret
    0.17-0.27 against the uniform policy's 0.74-0.90), so the learning rate became 0.1 and the epochs 10; then 4 of
    4 fail (regret 0.60-0.90, the gradient norm ~0 from the second decile of the run on)."""
    return ppo_spec(seed, 48000, 20, lr=0.1, clip=None, epochs=10)


FAMILIES: dict[str, Callable[[int], Spec]] = {
    "lora": fam_lora,
    "rezero": fam_rezero,
    "sam": fam_sam,
    "moe_top1": fam_moe,
    "realnvp": fam_realnvp,
    "ppo": fam_ppo,
    "realnvp_unbounded": fam_realnvp_unbounded,
    "ppo_unclipped": fam_ppo_unclipped,
}
