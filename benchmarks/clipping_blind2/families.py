"""Families of the second blind clipping round: where clipping acts on most steps, or the training loss looks flat.

``python benchmarks/clipping_blind_round.py run benchmarks/clipping_blind2``. A run's result is the round's outcome
(``clipping_blind_round.outcome``): its clean held-out metric, lower is better, per family:

- ``studentt``: validation MSE to the noiseless teacher of an MLP regression trained on noisy labels;
- ``flips``: validation cross-entropy on the true labels of the held-out digits;
- ``parity``: held-out binary cross-entropy to the true parity (the training labels have 5% wrong);
- ``long``: validation MSE to the noiseless teacher, after 800 steps;
- ``adamw``: validation MSE to the clean targets;
- ``conv1d``: validation cross-entropy of the motif classes.

Each family is ``make(cell, seed) -> dict``: ``model`` (its initial weights fixed by the seed), ``opt`` (parameters
-> optimizer), ``sched`` (optimizer -> a learning-rate scheduler stepped after every step, or ``None``), ``loss``
(model, step -> the training loss of that step's batch; the batches are drawn before any run, the same for every
rule), ``metric`` (model -> the clean held-out metric, lower is better) and ``steps``. The cell named ``healthy`` has
nothing wrong by design; the others are trouble.

- ``studentt``: an MLP regression under SGD momentum 0.9 with Student-t (df 1.5) label noise on every label, scale
  1 or 3; Gaussian noise of scale 1 is the healthy cell;
- ``flips``: an MLP on the scikit-learn digits under SGD momentum 0.9, 35% of the training labels flipped to a random
  other class or to the next class; no flips is the healthy cell (clean validation cross-entropy);
- ``parity``: a 3-sparse parity of 16 bits (5% of the training labels wrong) under SGD momentum 0.9: a long plateau
  before a sudden drop at a learning rate that escapes it within the run; 10x and 30x that rate;
- ``long``: 800 steps of an MLP regression under SGD momentum 0.9 with Laplace or Cauchy label noise (scale 1) on
  every label; Gaussian noise (scale 1) is the healthy cell;
- ``adamw``: a multi-output MLP regression under AdamW with 10% of the training targets x100, or 3% x100;
- ``conv1d``: a 1-D conv net finding motifs in noisy sequences under SGD momentum 0.9 with a linear warm-up and a
  cosine decay, its peak learning rate sane, 10x and 30x too high.
"""

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as nnf
from sklearn.datasets import load_digits
from torch import nn

STEPS = 300
LONG_STEPS = 800


def _rng(seed, salt):
    return np.random.RandomState(seed * 1000 + salt)


def _t(a):
    return torch.tensor(np.asarray(a, dtype=np.float32))


def _order(r, n, batch, steps):
    return [torch.tensor(r.choice(n, batch, replace=False)) for _ in range(steps)]


def _mlp(*sizes, act=nn.ReLU):
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])


def _sgd(lr, momentum=0.9):
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum)


def _label_noise(r, n, kind, scale):
    if kind == "gauss":
        return scale * r.randn(n)
    if kind == "laplace":
        return r.laplace(0.0, scale, n)
    if kind == "cauchy":
        return scale * r.standard_cauchy(n)
    return scale * r.standard_t(1.5, n)  # "t1.5"


def _regression(seed, salt, n_train, n_val, d, kind, scale):
    """Inputs N(0, 1)^d; a smooth teacher of unit variance; label noise on the training labels only."""
    r = _rng(seed, salt)
    x = r.randn(n_train + n_val, d)
    w = r.randn(d, 8) / math.sqrt(d)
    v = r.randn(8) / math.sqrt(8)
    y = np.tanh(2 * x @ w) @ v + 0.3 * x[:, 0] * x[:, 1]
    y = (y - y[:n_train].mean()) / y[:n_train].std()
    y_noisy = y[:n_train] + _label_noise(r, n_train, kind, scale)
    return r, _t(x[:n_train]), _t(y_noisy)[:, None], _t(x[n_train:]), _t(y[n_train:])[:, None]


# ------------------------------------------------------------------ 1: Student-t label noise, SGD momentum
def studentt(cell, seed):
    kind, scale = {"healthy": ("gauss", 1.0), "t1.5 x1": ("t1.5", 1.0), "t1.5 x3": ("t1.5", 3.0)}[cell]
    r, x, y, xv, yv = _regression(seed, 11, 4096, 1024, 12, kind, scale)
    torch.manual_seed(seed)
    model = _mlp(12, 64, 64, 1)
    order = _order(r, len(x), 32, STEPS)

    def loss(m, s):
        i = order[s]
        return nnf.mse_loss(m(x[i]), y[i])

    return {
        "model": model,
        "opt": _sgd(0.02),
        "sched": None,
        "loss": loss,
        "metric": lambda m: nnf.mse_loss(m(xv), yv),
        "steps": STEPS,
    }


# ------------------------------------------------------------------ 2: flipped labels on digits, SGD momentum
_DIG = None


def _digits():
    global _DIG
    if _DIG is None:
        d = load_digits()
        _DIG = (d.data.astype(np.float32), d.target.astype(np.int64))
    return _DIG


def flips(cell, seed):
    x, y = _digits()
    r = _rng(seed, 12)
    perm = r.permutation(len(x))
    x, y = x[perm], y[perm]
    mu, sd = x[:1400].mean(0), x[:1400].std(0) + 1.0
    x = (x - mu) / sd
    y_tr = y[:1400].copy()
    flip = r.rand(1400) < (0.0 if cell == "healthy" else 0.35)
    if cell == "35% random flips":
        y_tr[flip] = (y_tr[flip] + r.randint(1, 10, flip.sum())) % 10  # a random other class
    elif cell == "35% pair flips":
        y_tr[flip] = (y_tr[flip] + 1) % 10  # the next class: still the minority of each class's labels
    xt, yt = _t(x[:1400]), torch.tensor(y_tr)
    xv, yv = _t(x[1400:]), torch.tensor(y[1400:])
    torch.manual_seed(seed)
    model = _mlp(64, 128, 10)
    order = _order(r, 1400, 32, STEPS)

    def loss(m, s):
        i = order[s]
        return nnf.cross_entropy(m(xt[i]), yt[i])

    return {
        "model": model,
        "opt": _sgd(0.05),
        "sched": None,
        "loss": loss,
        "metric": lambda m: nnf.cross_entropy(m(xv), yv),
        "steps": STEPS,
    }


# ------------------------------------------------------------------ 3: sparse parity, a plateau then a drop
def parity(cell, seed):
    lr = {"healthy": 0.07, "lr x10": 0.7, "lr x30": 2.1}[cell]
    r = _rng(seed, 13)
    n_bits, n = 16, 8192
    x = r.choice([-1.0, 1.0], size=(n + 1024, n_bits))
    y = (x[:, 0] * x[:, 1] * x[:, 2] > 0).astype(np.float32)
    y_tr = y[:n].copy()
    flip = r.rand(n) < 0.05  # 5% of the training labels wrong: the clean optimum is not at zero loss
    y_tr[flip] = 1 - y_tr[flip]
    xt, yt, xv, yv = _t(x[:n]), _t(y_tr), _t(x[n:]), _t(y[n:])
    torch.manual_seed(seed)
    model = _mlp(n_bits, 128, 1)
    order = _order(r, n, 32, STEPS)

    def loss(m, s):
        i = order[s]
        return nnf.binary_cross_entropy_with_logits(m(xt[i]).squeeze(1), yt[i])

    return {
        "model": model,
        "opt": _sgd(lr),
        "sched": None,
        "loss": loss,
        "metric": lambda m: nnf.binary_cross_entropy_with_logits(m(xv).squeeze(1), yv),
        "steps": STEPS,
    }


# ------------------------------------------------------------------ 4: a long run under heavy-tailed label noise
def long(cell, seed):
    kind = {"healthy": "gauss", "laplace": "laplace", "cauchy": "cauchy"}[cell]
    r, x, y, xv, yv = _regression(seed, 14, 8192, 1024, 8, kind, 1.0)
    torch.manual_seed(seed)
    model = _mlp(8, 32, 32, 1)
    order = _order(r, len(x), 32, LONG_STEPS)

    def loss(m, s):
        i = order[s]
        return nnf.mse_loss(m(x[i]), y[i])

    return {
        "model": model,
        "opt": _sgd(0.01),
        "sched": None,
        "loss": loss,
        "metric": lambda m: nnf.mse_loss(m(xv), yv),
        "steps": LONG_STEPS,
    }


# ------------------------------------------------------------------ 5: AdamW, a share of the targets x100
def adamw(cell, seed):
    share = {"healthy": 0.0, "10% targets x100": 0.10, "3% targets x100": 0.03}[cell]
    r = _rng(seed, 15)
    n, d, k = 4096, 20, 4
    x = r.randn(n + 1024, d)
    w = r.randn(d, k) / math.sqrt(d)
    y = np.sin(2 * x @ w) + 0.1 * r.randn(n + 1024, k)
    bad = r.rand(n) < share
    y_tr = y[:n].copy()
    y_tr[bad] *= 100.0
    xt, yt, xv, yv = _t(x[:n]), _t(y_tr), _t(x[n:]), _t(y[n:])
    torch.manual_seed(seed)
    model = _mlp(d, 64, 64, k, act=nn.GELU)
    order = _order(r, n, 32, STEPS)

    def loss(m, s):
        i = order[s]
        return nnf.mse_loss(m(xt[i]), yt[i])

    return {
        "model": model,
        "opt": lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01),
        "sched": None,
        "loss": loss,
        "metric": lambda m: nnf.mse_loss(m(xv), yv),
        "steps": STEPS,
    }


# ------------------------------------------------------------------ 6: 1-D conv net, warm-up and cosine, SGD
class Conv1dNet(nn.Module):
    def __init__(self, c=16, classes=4):
        super().__init__()
        self.c1 = nn.Conv1d(1, c, 5, padding=2)
        self.c2 = nn.Conv1d(c, c, 5, padding=4, dilation=2)
        self.out = nn.Linear(c, classes)

    def forward(self, x):
        h = nnf.relu(self.c2(nnf.relu(self.c1(x))))
        return self.out(h.amax(-1))


def _motifs(r, n, motifs, length=64):
    """Gaussian noise with the class's motif added at a random place; class 0..k-1."""
    y = r.randint(len(motifs), size=n)
    x = r.randn(n, length)
    w = motifs.shape[1]
    at = r.randint(length - w, size=n)
    for j in range(n):
        x[j, at[j] : at[j] + w] += motifs[y[j]]
    return _t(x)[:, None], torch.tensor(y)


def _warmup_cosine(steps, warmup):
    def factor(s):
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / (steps - warmup))))

    return factor


def conv1d(cell, seed):
    peak = {"healthy": 0.02, "peak x10": 0.2, "peak x30": 0.6}[cell]
    r = _rng(seed, 16)
    motifs = 1.5 * np.sign(r.randn(4, 9))
    xt, yt = _motifs(r, 2048, motifs)
    xv, yv = _motifs(r, 512, motifs)
    torch.manual_seed(seed)
    model = Conv1dNet()
    order = _order(r, 2048, 32, STEPS)

    def loss(m, s):
        i = order[s]
        return nnf.cross_entropy(m(xt[i]), yt[i])

    return {
        "model": model,
        "opt": _sgd(peak),
        "sched": lambda o: torch.optim.lr_scheduler.LambdaLR(o, _warmup_cosine(STEPS, 30)),
        "loss": loss,
        "metric": lambda m: nnf.cross_entropy(m(xv), yv),
        "steps": STEPS,
    }


FAMILIES = {
    "studentt": (studentt, ["healthy", "t1.5 x1", "t1.5 x3"]),
    "flips": (flips, ["healthy", "35% random flips", "35% pair flips"]),
    "parity": (parity, ["healthy", "lr x10", "lr x30"]),
    "long": (long, ["healthy", "laplace", "cauchy"]),
    "adamw": (adamw, ["healthy", "10% targets x100", "3% targets x100"]),
    "conv1d": (conv1d, ["healthy", "peak x10", "peak x30"]),
}
