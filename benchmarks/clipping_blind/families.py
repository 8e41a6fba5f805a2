"""Families of the first blind clipping round: see ``benchmarks/clipping_blind_round.py``.

Each family: ``make(cell, seed) -> dict(model, opt, loss, metric)``, 300 steps. A run's result is the round's outcome
(``clipping_blind_round.outcome``): its final held-out metric, lower is better, per family:

- ``ae``: validation MSE of a conv autoencoder reconstructing held-out digits (inputs scaled to [0, 1]);
- ``bandit``: held-out mean cross-entropy of the policy to the best arm of each held-out context;
- ``infonce``: held-out InfoNCE loss (temperature 0.1, fixed across cells) of a two-tower model on 512 held-out pairs;
- ``poly``: validation MSE of a deep MLP regression on polynomial features;
- ``tcn``: validation MSE (clean targets) of a dilated causal 1-D conv net on sequences;
- ``resmlp``: validation cross-entropy of a residual MLP without normalisation on breast-cancer data.

Our rule ran with ``on_nonfinite="warn"`` and no pictures; ``ours+clip_max_norm=1`` (added after the round: the
README's remedy for a first step with no past) is our rule beside ``clip_max_norm=1.0``.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

STEPS = 300
OURS = {"on_nonfinite": "warn", "images": False}
EXTRA_RULES = {"ours+clip_max_norm=1": {"clip_max_norm": 1.0}}


def _rng(seed, salt):
    return np.random.RandomState(seed * 1000 + salt)


# ------------------------------------------------------------------ A: conv autoencoder on digits, SGD momentum
_DIG = None


def _digits():
    global _DIG
    if _DIG is None:
        X = load_digits().images.astype(np.float32) / 16.0
        _DIG = torch.tensor(X).unsqueeze(1)
    return _DIG


class AE(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1 = nn.Conv2d(1, 8, 3, padding=1)
        self.e2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.d1 = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.d2 = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        return self.d2(F.relu(self.d1(F.relu(self.e2(F.relu(self.e1(x)))))))


def ae(cell, seed):
    lr = {"healthy": 0.05, "lr x10": 0.5, "lr x30": 1.5}[cell]
    X = _digits()
    r = _rng(seed, 1)
    perm = torch.tensor(r.permutation(len(X)))
    tr, va = X[perm[:1400]], X[perm[1400:]]
    torch.manual_seed(seed)
    model = AE()
    order = [torch.tensor(r.choice(len(tr), 64, replace=False)) for _ in range(STEPS)]

    def loss(m, s):
        x = tr[order[s]]
        return F.mse_loss(m(x), x)

    return {
        "model": model,
        "opt": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
        "loss": loss,
        "metric": lambda m: F.mse_loss(m(va), va),
    }


# ------------------------------------------------------------------ B: REINFORCE contextual bandit, RMSprop
def bandit(cell, seed):
    r = _rng(seed, 2)
    d, K = 10, 5
    W = torch.tensor(r.randn(K, d).astype(np.float32)) / math.sqrt(d)
    Xte = torch.tensor(r.randn(1000, d).astype(np.float32))
    best_te = (Xte @ W.T).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, K))
    g = torch.Generator().manual_seed(seed * 7 + 3)
    ctx = [torch.randn(64, d, generator=g) for _ in range(STEPS)]
    u = [torch.rand(64, generator=g) for _ in range(STEPS)]
    noise_n = [torch.randn(64, generator=g) for _ in range(STEPS)]
    heavy = [torch.distributions.StudentT(1.1).sample((64,)) for _ in range(STEPS)]  # global RNG, seeded below
    spikes = [(torch.rand(64, generator=g) < 0.003).float() * 300.0 for _ in range(STEPS)]

    def loss(m, s):
        x = ctx[s]
        logits = m(x)
        p = logits.softmax(-1)
        # inverse-CDF sampling with pre-drawn uniforms: the same draws for every rule
        a = (p.detach().cumsum(-1) < u[s].unsqueeze(1)).sum(-1).clamp(max=K - 1)
        mu = (x @ W.T).gather(1, a[:, None]).squeeze(1)
        if cell == "healthy":
            rew = mu + 0.5 * noise_n[s]
        elif cell == "student-t(1.1) rewards":
            rew = mu + 0.5 * heavy[s]
        else:  # rare huge rewards
            rew = mu + 0.5 * noise_n[s] + spikes[s]
        adv = rew - rew.mean()
        logp = F.log_softmax(logits, -1).gather(1, a[:, None]).squeeze(1)
        return -(adv * logp).mean()

    return {
        "model": model,
        "opt": lambda p: torch.optim.RMSprop(p, lr=3e-3),
        "loss": loss,
        "metric": lambda m: F.cross_entropy(m(Xte), best_te),
    }


# ------------------------------------------------------------------ C: InfoNCE two-tower, SGD momentum
class Towers(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 32))
        self.g = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 32))

    def forward(self, x, y):
        return F.normalize(self.f(x), dim=-1), F.normalize(self.g(y), dim=-1)


def _nce(m, x, y, tau):
    a, b = m(x, y)
    logits = a @ b.T / tau
    t = torch.arange(len(x))
    return 0.5 * (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t))


def infonce(cell, seed):
    tau = {"healthy": 0.2, "tau 0.02": 0.02, "tau 0.005": 0.005}[cell]
    r = _rng(seed, 3)
    d = 16
    A = torch.tensor(r.randn(d, d).astype(np.float32)) / math.sqrt(d)
    X = torch.tensor(r.randn(3000, d).astype(np.float32))
    Y = torch.tanh(X @ A) + 0.3 * torch.tensor(r.randn(3000, d).astype(np.float32))
    Xtr, Ytr, Xva, Yva = X[:2488], Y[:2488], X[2488:], Y[2488:]
    torch.manual_seed(seed)
    model = Towers(d)
    order = [torch.tensor(r.choice(len(Xtr), 128, replace=False)) for _ in range(STEPS)]

    def loss(m, s):
        i = order[s]
        return _nce(m, Xtr[i], Ytr[i], tau)

    return {
        "model": model,
        "opt": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        "loss": loss,
        "metric": lambda m: _nce(m, Xva, Yva, 0.1),
    }


# ------------------------------------------------------------------ D: deep MLP on polynomial features, Nesterov
def poly(cell, seed):
    r = _rng(seed, 4)
    x = r.uniform(0, 3, size=2000).astype(np.float32)
    y = np.sin(2 * x) + 0.1 * r.randn(2000).astype(np.float32)
    P = np.stack([x**k for k in range(1, 9)], 1)
    if cell == "healthy":  # standardised features
        P = (P - P[:1500].mean(0)) / P[:1500].std(0)
        lr = 0.01
    elif cell == "raw features lr 1e-5":  # raw powers x^1..x^8 of x in [0, 3]: scales 1..6561
        lr = 1e-5
    else:
        lr = 1e-4
    P = torch.tensor(P.astype(np.float32))
    Y = torch.tensor(y[:, None].astype(np.float32))
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    order = [torch.tensor(r.choice(1500, 32, replace=False)) for _ in range(STEPS)]

    def loss(m, s):
        i = order[s]
        return F.mse_loss(m(P[i]), Y[i])

    return {
        "model": model,
        "opt": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True),
        "loss": loss,
        "metric": lambda m: F.mse_loss(m(P[1500:]), Y[1500:]),
    }


# ------------------------------------------------------------------ E: dilated causal TCN, Adagrad, corrupted batches
class TCN(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.inp = nn.Conv1d(1, c, 1)
        self.convs = nn.ModuleList([nn.Conv1d(c, c, 3, dilation=d) for d in (1, 2, 4, 8)])
        self.out = nn.Conv1d(c, 1, 1)

    def forward(self, x):
        h = self.inp(x)
        for conv in self.convs:
            pad = 2 * conv.dilation[0]
            h = h + F.relu(conv(F.pad(h, (pad, 0))))
        return self.out(h)


def _seq(r, n, L=64):
    e = r.randn(n, L + 20).astype(np.float32)
    x = np.zeros_like(e)
    for t in range(1, L + 20):
        x[:, t] = 0.7 * x[:, t - 1] + e[:, t]
    x = x[:, 20:] / 1.4
    y = np.zeros_like(x)
    y[:, 10:] = x[:, 5:-5] * x[:, :-10] + np.tanh(x[:, 7:-3])
    return torch.tensor(x[:, None]), torch.tensor(y[:, None])


def tcn(cell, seed):
    r = _rng(seed, 5)
    Xtr, Ytr = _seq(r, 1500)
    Xva, Yva = _seq(r, 300)
    torch.manual_seed(seed)
    model = TCN()
    order = [torch.tensor(r.choice(1500, 32, replace=False)) for _ in range(STEPS)]
    bad = r.rand(STEPS) < 0.05
    badi = r.rand(STEPS) < 0.2

    def loss(m, s):
        i = order[s]
        x, y = Xtr[i], Ytr[i]
        if cell == "5% batches targets x50" and bad[s]:
            y = y * 50
        if cell == "20% batches inputs x20" and badi[s]:
            x = x * 20
        return F.mse_loss(m(x)[..., 10:], y[..., 10:])

    return {
        "model": model,
        "opt": lambda p: torch.optim.Adagrad(p, lr=0.01),
        "loss": loss,
        "metric": lambda m: F.mse_loss(m(Xva)[..., 10:], Yva[..., 10:]),
    }


# ------------------------------------------------------------------ F: residual MLP without normalisation, SGD
class ResMLP(nn.Module):
    def __init__(self, d_in=30, h=64, blocks=8):
        super().__init__()
        self.inp = nn.Linear(d_in, h)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h)) for _ in range(blocks)])
        self.out = nn.Linear(h, 2)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(F.relu(h))


_BC = None


def resmlp(cell, seed):
    global _BC
    if _BC is None:
        d = load_breast_cancer()
        _BC = (d.data.astype(np.float32), d.target)
    X, y = _BC
    r = _rng(seed, 6)
    perm = r.permutation(len(X))
    X, y = X[perm], y[perm]
    X = (X - X[:450].mean(0)) / X[:450].std(0)
    X, y = torch.tensor(X), torch.tensor(y)
    lr = {"healthy": 0.01, "lr 0.1": 0.1, "lr 0.3": 0.3}[cell]
    torch.manual_seed(seed)
    model = ResMLP()
    order = [torch.tensor(r.choice(450, 32, replace=False)) for _ in range(STEPS)]

    def loss(m, s):
        i = order[s]
        return F.cross_entropy(m(X[i]), y[i])

    return {
        "model": model,
        "opt": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
        "loss": loss,
        "metric": lambda m: F.cross_entropy(m(X[450:]), y[450:]),
    }


FAMILIES = {
    "ae": (ae, ["healthy", "lr x10", "lr x30"]),
    "bandit": (bandit, ["healthy", "student-t(1.1) rewards", "rare x300 rewards"]),
    "infonce": (infonce, ["healthy", "tau 0.02", "tau 0.005"]),
    "poly": (poly, ["healthy", "raw features lr 1e-5", "raw features lr 1e-4"]),
    "tcn": (tcn, ["healthy", "5% batches targets x50", "20% batches inputs x20"]),
    "resmlp": (resmlp, ["healthy", "lr 0.1", "lr 0.3"]),
}
