"""More families of healthy runs for ``noisy_healthy.py``: other objectives and data streams.

Written before the detector was run on them, and first run as they are here (10 seeds each). Seven kinds users
train that the first 36 families are not:

- ``diffusion``: a DDPM-style denoiser on 2-D points, noise-prediction MSE at uniformly random timesteps (each
  batch's loss depends on the timesteps drawn), Adam;
- ``curriculum``: a digits MLP on classes 0-4 for 150 steps, then all ten (the loss jumps 0.01 -> 3-6 by design and
  the norm 20-40x; the new classes are learnt), SGD momentum;
- ``task_switch``: continual learning, a digits MLP on the digits for 200 steps, then the same stream with its pixels
  permuted (even seeds) or every class renamed (odd seeds): the loss jumps 0.15 -> 3-9 and the norm 6-8x in one
  step, flat for a dozen steps while the loss comes down, Adam;
- ``ctc``: a bidirectional GRU under ``nn.CTCLoss`` aligning noisy frame sequences to short label sequences, Adam;
- ``mdn``: a mixture density network (3-5 Gaussians, learnt log-sigmas) on Bishop's inverted sinusoid, negative
  log-likelihood (it goes below zero, and the norm grows 10x as the sigmas shrink), Adam;
- ``pinn``: a physics-informed tanh MLP for a 1-D Poisson problem (second derivatives through
  ``autograd.grad(create_graph=True)``), Adam;
- ``quantile``: quantile regression (pinball loss at 0.1/0.5/0.9) with 2% outlier targets, batches of 8, SGD momentum
  with weight decay.

First run, 10 seeds each (70 runs, 69 healthy): 10 false alarms, all exploding: 7 on ``task_switch`` (at its switch)
and 3 on ``mdn`` (a loss going from -0.26 to -0.25 counted as rising by a quarter). They led to the exploding rules'
*shock* (a flat run of spikes whose loss comes down since it began is no explosion) and to a negative loss rising
against the progress made. A char-level transformer LM written with them (0 of 10 alerted) is left out: 20 s a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from noisy_healthy import Base, Spec, Supervised, digits, loader, mlp, prior_ce, stream_loader
from torch import Tensor, nn


# --- a. diffusion: DDPM noise prediction on a 2-D mixture of 8 Gaussians ---------------------------------------------
def cosine_alpha_bar(timesteps: int) -> Tensor:
    s = 0.008
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (f / f[0]).clamp(min=1e-4, max=1.0).float()  # index 0..timesteps; t=0 unused


def time_embedding(t: Tensor, timesteps: int, dim: int = 32) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
    ang = (t.float()[:, None] / timesteps * 1000.0) * freqs[None, :]
    return torch.cat([ang.sin(), ang.cos()], 1)


class Denoiser(Base):
    """An MLP eps(x_t, t) with a sinusoidal timestep embedding; noise-prediction MSE at uniform random t, Adam."""

    def __init__(self, timesteps: int = 100) -> None:
        super().__init__()
        self.timesteps = timesteps
        self.ab = cosine_alpha_bar(timesteps)
        self.net = nn.Sequential(
            nn.Linear(2 + 32, 128),
            nn.SiLU(),
            nn.Linear(128, 128),
            nn.SiLU(),
            nn.Linear(128, 128),
            nn.SiLU(),
            nn.Linear(128, 2),
        )

    def eps(self, xt: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([xt, time_embedding(t, self.timesteps)], 1))

    def noise_mse(self, x0: Tensor, t: Tensor, e: Tensor) -> Tensor:
        ab = self.ab[t][:, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * e
        return F.mse_loss(self.eps(xt, t), e)

    def compute_loss(self, batch: Any) -> Tensor:
        (x0,) = batch
        t = torch.randint(1, self.timesteps + 1, (len(x0),))
        return self.noise_mse(x0, t, torch.randn_like(x0))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=2e-3)


def eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    k = torch.randint(0, 8, (n,), generator=g).float()
    centers = torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1) * 1.5
    return centers + 0.08 * torch.randn(n, 2, generator=g)


def fam_diffusion(seed: int) -> Spec:
    """DDPM-style denoiser: an MLP with a sinusoidal timestep embedding predicts the noise added to 2-D points (8
    Gaussians on a circle of radius 1.5, std 0.08) at a uniformly random timestep of a 100-step cosine schedule;
    MSE on the noise, batches of 128, Adam 2e-3, 500 steps. The per-batch loss and gradient norm are noisy by design
    (they depend on the mix of timesteps drawn: near t=0 the noise is nearly unpredictable, MSE ~1; at large t easy).
    Expected: the loss falls from ~1 to ~0.2-0.35 within ~150 steps and then fluctuates; gradient norms fall and stay
    noisy, no trend. Metric: held-out noise MSE at fixed timesteps (cycling 1..100) and fixed noise; baseline: zero
    prediction (MSE ~1). Healthy expected on every seed."""
    g = torch.Generator().manual_seed(11000 + seed)
    xtr = eight_gaussians(4000, g)
    xte = eight_gaussians(2000, g)
    model = Denoiser()
    t_te = torch.arange(2000) % model.timesteps + 1
    e_te = torch.randn(2000, 2, generator=g)
    return Spec(
        model=model,
        train=loader(xtr, batch_size=128, seed=seed),
        max_steps=500,
        metric=lambda m: float(m.noise_mse(xte, t_te, e_te)),
        baseline=float(e_te.pow(2).mean()),
    )


# --- b. curriculum: digits 0-4 first, all ten from step 150 ----------------------------------------------------------
def fam_curriculum(seed: int) -> Spec:
    """Curriculum learning: a digits MLP (64-128-128-10) sees only the easy classes 0-4 for the first 150 steps, then
    batches drawn from all ten classes for 250 more (batches of 32, SGD momentum 0.9 at lr 0.05). Expected: the loss
    falls to ~0.1 on classes 0-4, then at step 150 it RISES by design to ~3-5 (the head has learned never to predict
    5-9, so those are confidently wrong) and the gradient norm jumps by maybe 5-20x for a few steps; within ~50 steps
    the net learns the new classes and the loss falls back to ~0.1-0.2. Metric: held-out cross-entropy on all ten
    classes; baseline the class prior's. Healthy expected on every seed."""
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(12000 + seed)
    easy = (ytr < 5).nonzero().flatten()
    steps, bs, widen = 400, 32, 150
    idx = torch.empty(steps, bs, dtype=torch.long)
    idx[:widen] = easy[torch.randint(0, len(easy), (widen, bs), generator=g)]
    idx[widen:] = torch.randint(0, len(ytr), (steps - widen, bs), generator=g)
    model = Supervised(mlp([64, 128, 128, 10]), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    return Spec(
        model=model,
        train=stream_loader(xtr[idx], ytr[idx]),
        max_steps=steps,
        metric=lambda m: float(F.cross_entropy(m.net(xte), yte)),
        baseline=prior_ce(yte, 10),
    )


# --- c. task switch (continual learning): digits task A for 200 steps, then task B -----------------------------------
def fam_task_switch(seed: int) -> Spec:
    """Continual learning with a task switch: a digits MLP (64-128-128-10, Adam 1e-3, batches of 32) trains on the
    plain digits (task A) for 200 steps, then the stream switches to task B for 200 more: permuted pixels (even seeds;
    a fixed random permutation of the 64 inputs) or permuted labels (odd seeds; every class renamed to another, a
    derangement). Expected: A's loss falls to ~0.1; at step 200 the loss jumps (to ~2-4 for pixels, ~5-10 for labels:
    confident wrong answers) and the gradient norm jumps by one or two orders of magnitude, then B is learned and the
    loss falls back to ~0.1-0.3 within ~100 steps. Metric: held-out cross-entropy on task B; baseline: B's class
    prior. Healthy expected on every seed."""
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(13000 + seed)
    steps, bs, switch = 400, 32, 200
    if seed % 2 == 0:
        variant = "pixels"
        perm = torch.randperm(64, generator=g)
        xb_tr, xb_te, yb_tr, yb_te = xtr[:, perm], xte[:, perm], ytr, yte
    else:
        variant = "labels"
        order = torch.randperm(10, generator=g)
        relabel = torch.empty(10, dtype=torch.long)
        relabel[order] = order.roll(1)  # a cycle over all ten: no class keeps its name
        xb_tr, xb_te, yb_tr, yb_te = xtr, xte, relabel[ytr], relabel[yte]
    idx = torch.cat([torch.randperm(len(ytr), generator=g) for _ in range(steps * bs // len(ytr) + 1)])[: steps * bs]
    idx = idx.view(steps, bs)
    xs = torch.cat([xtr[idx[:switch]], xb_tr[idx[switch:]]])
    ys = torch.cat([ytr[idx[:switch]], yb_tr[idx[switch:]]])
    model = Supervised(mlp([64, 128, 128, 10]), lambda p: torch.optim.Adam(p, lr=1e-3))
    return Spec(
        model=model,
        train=stream_loader(xs, ys),
        max_steps=steps,
        variant=variant,
        metric=lambda m: float(F.cross_entropy(m.net(xb_te), yb_te)),
        baseline=prior_ce(yb_te, 10),
    )


# --- d. CTC: a bidirectional GRU aligning noisy frame sequences to short label sequences -----------------------------
def ctc_data(n: int, g: torch.Generator, protos: Tensor, frames_max: int = 32) -> tuple[Tensor, ...]:
    x = torch.zeros(n, frames_max, protos.shape[1])
    tgt = torch.zeros(n, 5, dtype=torch.long)
    in_len = torch.zeros(n, dtype=torch.long)
    tgt_len = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(2, 6, (1,), generator=g))
        labels, prev = [], 0
        for _ in range(length):
            c = int(torch.randint(1, 6 if prev == 0 else 5, (1,), generator=g))
            c = c if (prev == 0 or c < prev) else c + 1  # 1..5, never the previous label (no repeats to separate)
            labels.append(c)
            prev = c
        frames = [0] * int(torch.randint(0, 3, (1,), generator=g))
        for c in labels:
            frames += [c] * int(torch.randint(2, 5, (1,), generator=g))
            frames += [0] * int(torch.randint(0, 3, (1,), generator=g))
        frames = frames[:frames_max]
        f = torch.tensor(frames)
        x[i, : len(frames)] = protos[f] + 0.6 * torch.randn(len(frames), protos.shape[1], generator=g)
        in_len[i], tgt_len[i] = len(frames), length
        tgt[i, :length] = torch.tensor(labels)
    return x, tgt, in_len, tgt_len


class CTCModel(Base):
    """A bidirectional GRU (8 -> 2x64) and a linear layer to 6 classes (blank 0); CTC loss (mean over the batch of
    the loss per target length), Adam."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 64, batch_first=True, bidirectional=True)
        self.out = nn.Linear(128, 6)

    def ctc(self, x: Tensor, tgt: Tensor, in_len: Tensor, tgt_len: Tensor) -> Tensor:
        h, _ = self.gru(x)
        logp = F.log_softmax(self.out(h), -1).transpose(0, 1)  # (T, N, C)
        return F.ctc_loss(logp, tgt, in_len, tgt_len, blank=0, reduction="mean")

    def compute_loss(self, batch: Any) -> Tensor:
        return self.ctc(*batch)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def fam_ctc(seed: int) -> Spec:
    """CTC: sequences of 2-5 labels from 5 symbols (no immediate repeats), each rendered as 2-4 frames of the symbol's
    8-D prototype vector plus Gaussian noise (std 0.6), with 0-2 silence frames around them (up to 32 frames, zero
    padded); a bidirectional GRU is trained with CTC loss (blank 0, mean per target length), batches of 32, Adam 3e-3,
    300 steps. Expected: CTC's early phase: the loss first falls fast as the net learns to emit blanks everywhere
    (gradient norms can be large in the first tens of steps), then plateaus briefly, then falls again as alignments
    are found, ending at ~0.05-0.3 per target symbol. Metric: held-out CTC loss per target length; no trivial
    predictor: the baseline is None (the outcome compares with the untrained model's). Healthy expected."""
    g = torch.Generator().manual_seed(14000 + seed)
    protos = torch.randn(6, 8, generator=g) * 1.0
    protos[0] = 0.0  # silence
    tr = ctc_data(3000, g, protos)
    te = ctc_data(500, g, protos)
    return Spec(
        model=CTCModel(),
        train=loader(*tr, batch_size=32, seed=seed),
        max_steps=300,
        metric=lambda m: float(m.ctc(*te)),
        baseline=None,
    )


# --- e. mixture density network on the inverted sinusoid --------------------------------------------------------------
def normal_crps_term(mu: Tensor, var: Tensor) -> Tensor:
    """A(mu, var) = E|Z| for Z ~ N(mu, var)."""
    s = var.sqrt()
    z = mu / s
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return mu * (2 * cdf - 1) + 2 * s * pdf


def mixture_crps(w: Tensor, mu: Tensor, sigma: Tensor, y: Tensor) -> Tensor:
    """Mean CRPS of Gaussian mixtures (weights w, means mu, stds sigma: (n, K)) at y (n,): >= 0, lower is better."""
    var = sigma**2
    t1 = (w * normal_crps_term(y[:, None] - mu, var)).sum(1)
    t2 = (
        w[:, :, None]
        * w[:, None, :]
        * normal_crps_term(mu[:, :, None] - mu[:, None, :], var[:, :, None] + var[:, None, :])
    ).sum((1, 2))
    return (t1 - 0.5 * t2).mean()


class MDN(Base):
    """tanh MLP (1-64-64) into K mixture weights, means and log-sigmas; NLL of the mixture, Adam."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.body = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.head = nn.Linear(64, 3 * k)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, mu, log_sigma = self.head(self.body(x)).split(self.k, 1)
        return F.log_softmax(logits, 1), mu, log_sigma

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        logw, mu, log_sigma = self(x)
        z = (y - mu) / log_sigma.exp()
        logp = -0.5 * z * z - log_sigma - 0.5 * math.log(2 * math.pi)
        return -torch.logsumexp(logw + logp, 1).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def inverse_sinusoid(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    t = torch.rand(n, 1, generator=g)
    x = t + 0.3 * torch.sin(2 * math.pi * t) + (torch.rand(n, 1, generator=g) * 0.2 - 0.1)
    return x, t


def fam_mdn(seed: int) -> Spec:
    """Mixture density network on Bishop's inverted sinusoid: predict t from x = t + 0.3 sin(2 pi t) + U(-0.1, 0.1),
    t ~ U(0, 1) (up to three branches of t per x), K = 3, 4 or 5 Gaussian components (seed mod 3) with learned
    log-sigmas, NLL, batches of 64, Adam 3e-3, 600 steps. Expected: the NLL falls from ~1 to below 0 (negative, as the
    sigmas shrink to ~0.03-0.1); gradient norms grow somewhat as sigmas shrink and are noisy (a point in a narrow
    component's tail gives a large gradient); the multimodal fit may arrive in stages (loss plateaus then drops as a
    component splits off). Metric: held-out mean CRPS of the predicted mixture (>= 0); baseline: the CRPS of a single
    Gaussian fit to all training targets (~0.17). Healthy expected."""
    g = torch.Generator().manual_seed(15000 + seed)
    xtr, ytr = inverse_sinusoid(3000, g)
    xte, yte = inverse_sinusoid(1000, g)
    k = 3 + seed % 3

    def metric(m: MDN) -> float:
        logw, mu, log_sigma = m(xte)
        return float(mixture_crps(logw.exp(), mu, log_sigma.exp(), yte[:, 0]))

    one = torch.ones(len(yte), 1)
    base = float(mixture_crps(one, one * ytr.mean(), one * ytr.std(), yte[:, 0]))
    return Spec(
        model=MDN(k),
        train=loader(xtr, ytr, batch_size=64, seed=seed),
        max_steps=600,
        metric=metric,
        baseline=base,
        variant=f"K{k}",
    )


# --- g. PINN: a 1-D Poisson problem ---------------------------------------------------------------------------------
def pinn_exact(x: Tensor) -> Tensor:
    return torch.sin(math.pi * x) + 0.3 * torch.sin(4 * math.pi * x)


def pinn_rhs(x: Tensor) -> Tensor:
    """f with -u''/pi^2 = f for the exact solution above."""
    return torch.sin(math.pi * x) + 0.3 * 16 * torch.sin(4 * math.pi * x)


class PINN(Base):
    """tanh MLP u(x) (1-32-32-32-1); loss = mean (-u''/pi^2 - f)^2 on a batch of collocation points (second
    derivative by autograd.grad with create_graph) + 10 (u(0)^2 + u(1)^2); Adam."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
        )

    def compute_loss(self, batch: Any) -> Tensor:
        (x,) = batch
        x = x.clone().requires_grad_(True)
        u = self.net(x)
        du = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
        d2u = torch.autograd.grad(du.sum(), x, create_graph=True)[0]
        res = -d2u / math.pi**2 - pinn_rhs(x)
        ub = self.net(torch.tensor([[0.0], [1.0]]))
        return res.pow(2).mean() + 10 * ub.pow(2).sum()

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=2e-3)


def fam_pinn(seed: int) -> Spec:
    """Physics-informed network for -u'' = pi^2 f on [0, 1], u(0) = u(1) = 0, exact u = sin(pi x) + 0.3 sin(4 pi x):
    a tanh MLP, the residual of the (pi^2-scaled) equation on 64 uniformly drawn collocation points per step, computed
    through autograd.grad(create_graph=True), plus boundary terms weighted 10; Adam 2e-3, 600 steps. Expected: the
    loss starts at ~12 and falls by orders of magnitude, in stages (the low-frequency mode, then the 4-pi mode; PINN
    losses often plateau and then drop); the gradient norm is large at first and decays by one to three decades with
    the loss; per-batch noise from the resampled points. Metric: held-out mean squared error to the exact solution on
    a 201-point grid; baseline: the zero function's (~0.545). Healthy expected."""
    g = torch.Generator().manual_seed(17000 + seed)
    x = torch.rand(64 * 600, 1, generator=g)
    grid = torch.linspace(0, 1, 201)[:, None]
    exact = pinn_exact(grid)
    return Spec(
        model=PINN(),
        train=loader(x, batch_size=64, seed=seed),
        max_steps=600,
        metric=lambda m: float(F.mse_loss(m.net(grid), exact)),
        baseline=float(exact.pow(2).mean()),
    )


# --- h. quantile regression: pinball loss, heteroscedastic data with outliers, batches of 8 ---------------------------
QS = torch.tensor([0.1, 0.5, 0.9])


def pinball(pred: Tensor, y: Tensor) -> Tensor:
    e = y - pred  # (n, 3)
    return torch.maximum(QS * e, (QS - 1) * e).mean()


def fam_quantile(seed: int) -> Spec:
    """Quantile regression: an MLP (3-64-64-3) predicts the 0.1/0.5/0.9 quantiles of y = 2 sin(1.5 x0) + x1 x2 +
    (0.1 + 0.4 |x0|) eps, x ~ U(-2, 2)^3, with 2% outliers (+-U(3, 10) added); pinball loss averaged over the three
    quantiles, batches of 8, SGD momentum 0.9 at lr 0.02 with weight decay 5e-4, 500 steps. Expected: the pinball
    gradient is bounded per sample (|dL/dpred| <= 0.9/3 per output) so the gradient norm does not follow the loss
    magnitude; the per-batch loss jumps whenever an outlier is drawn (about 15% of batches), with small batches very
    noisy; the loss falls from ~0.6 to ~0.2-0.25. Metric: held-out pinball loss; baseline: the constant marginal
    quantiles of the training targets. Healthy expected."""
    g = torch.Generator().manual_seed(18000 + seed)
    n = 5000
    x = torch.rand(n, 3, generator=g) * 4 - 2
    y = 2 * torch.sin(1.5 * x[:, 0]) + x[:, 1] * x[:, 2] + (0.1 + 0.4 * x[:, 0].abs()) * torch.randn(n, generator=g)
    out = torch.rand(n, generator=g) < 0.02
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    y = torch.where(out, y + sign * (3 + 7 * torch.rand(n, generator=g)), y)[:, None]
    xtr, ytr, xte, yte = x[:4000], y[:4000], x[4000:], y[4000:]
    model = Supervised(
        mlp([3, 64, 64, 3]), lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, weight_decay=5e-4), loss_fn=pinball
    )
    const = torch.quantile(ytr[:, 0], QS)[None, :].expand(len(yte), 3)
    return Spec(
        model=model,
        train=loader(xtr, ytr, batch_size=8, seed=seed),
        max_steps=500,
        metric=lambda m: float(pinball(m.net(xte), yte)),
        baseline=float(pinball(const, yte)),
    )


FAMILIES: dict[str, Callable[[int], Spec]] = {
    "diffusion": fam_diffusion,
    "curriculum": fam_curriculum,
    "task_switch": fam_task_switch,
    "ctc": fam_ctc,
    "mdn": fam_mdn,
    "pinn": fam_pinn,
    "quantile": fam_quantile,
}
