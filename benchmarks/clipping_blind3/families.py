"""Families of the third blind clipping round: optimizers, architectures and schedules the earlier rounds did not use.

``python benchmarks/clipping_blind_round.py run benchmarks/clipping_blind3``: every rule on every run, scored by the
round's outcome (``clipping_blind_round.outcome``), the family's clean held-out metric below.

Each family is ``make(cell, seed) -> dict``: ``model`` (its initial weights fixed by the seed), ``opt`` (parameters
-> optimizer), ``sched`` (optimizer -> a learning-rate scheduler stepped after every step, or ``None``), ``loss``
(model, step -> the training loss of that step's batch; the batches are drawn before any run, the same for every
rule), ``metric`` (model -> the clean held-out metric, lower is better) and ``steps``. The cell named ``healthy`` has
nothing wrong by design; the others are trouble.

- ``rmsprop``: a small CNN on the scikit-learn digits under RMSprop (lr 2e-3), 1% of the training images x1000 or
  10% x30; no corruption is the healthy cell (clean validation cross-entropy);
- ``gnn``: a 2-layer message-passing net over the dense adjacencies of random 16-node graphs under SGD momentum 0.9,
  node classification (neighbours' mean sign XOR own sign); healthy: mean aggregation; trouble: sum aggregation at
  15x the learning rate, or 1% of the training graphs' features x100 (clean validation BCE);
- ``sgdr``: a digits MLP under SGD with Nesterov momentum and cosine annealing with warm restarts (restarts at steps
  20, 60, 140; the last cycle ends at step 300), its peak learning rate sane, 5x and 10x too high (clean validation
  cross-entropy);
- ``multilabel``: an imbalanced 12-label MLP (label rates 1-30%, BCEWithLogits) under NAdam, 2% of the training
  inputs x1000 or 0.3% x10000; no corruption is the healthy cell (clean validation BCE);
- ``gaussnll``: a heteroscedastic regression (predicted mean and log-variance, Gaussian NLL; noise 0.03-0.53 across
  the inputs) under SGD momentum 0.9, at 20x its learning rate, or 0.5% of the training targets moved by 100 of
  their noise's sigmas (held-out KL from the true noise distribution to the predicted one, 0 at the truth);
- ``moe``: a soft mixture of 4 MLP experts with a softmax gate, regression of a function that differs by region,
  under SGD momentum 0.9, at 30x its learning rate, or 1% of the training targets x100 (clean validation MSE).
"""

import math

import numpy as np
import torch
import torch.nn.functional as nnf
from sklearn.datasets import load_digits
from torch import nn

STEPS = 300


def _rng(seed, salt):
    return np.random.RandomState(seed * 1000 + salt)


def _t(a):
    return torch.tensor(np.asarray(a, dtype=np.float32))


def _order(r, n, batch, steps=STEPS):
    return [torch.tensor(r.choice(n, batch, replace=False)) for _ in range(steps)]


# ------------------------------------------------------------------ 1: RMSprop CNN on digits
_DIG = None


def _digits():
    global _DIG
    if _DIG is None:
        d = load_digits()
        _DIG = (d.data.astype(np.float32) / 16.0, d.target.astype(np.int64))
    return _DIG


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.out = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        h = nnf.max_pool2d(nnf.relu(self.c1(x)), 2)
        h = nnf.max_pool2d(nnf.relu(self.c2(h)), 2)
        return self.out(h.flatten(1))


def rmsprop(cell, seed):
    lr, share, mag = {
        "healthy": (2e-3, 0.0, 1.0),
        "1% images x1000": (2e-3, 0.01, 1000.0),
        "10% images x30": (2e-3, 0.10, 30.0),
    }[cell]
    x, y = _digits()
    r = _rng(seed, 21)
    perm = r.permutation(len(x))
    x, y = x[perm], y[perm]
    mu = x[:1400].mean()
    sd = x[:1400].std()
    x = (x - mu) / sd
    x_tr = x[:1400].copy()
    bad = r.rand(1400) < share
    x_tr[bad] *= mag
    xt, yt = _t(x_tr).view(-1, 1, 8, 8), torch.tensor(y[:1400])
    xv, yv = _t(x[1400:]).view(-1, 1, 8, 8), torch.tensor(y[1400:])
    torch.manual_seed(seed)
    model = DigitsCNN()
    order = _order(r, 1400, 32)

    def loss(m, s):
        i = order[s]
        return nnf.cross_entropy(m(xt[i]), yt[i])

    return {
        "model": model,
        "opt": lambda p: torch.optim.RMSprop(p, lr=lr),
        "sched": None,
        "loss": loss,
        "metric": lambda m: nnf.cross_entropy(m(xv), yv),
        "steps": STEPS,
    }


# ------------------------------------------------------------------ 2: message passing on dense adjacencies
class GNN(nn.Module):
    """Two rounds of message passing, ``h' = relu(W_self h + W_nb (A h))``, then a per-node logit."""

    def __init__(self, d_in, d=64, aggr="mean"):
        super().__init__()
        self.aggr = aggr
        self.s1, self.n1 = nn.Linear(d_in, d), nn.Linear(d_in, d, bias=False)
        self.s2, self.n2 = nn.Linear(d, d), nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, 1)

    def _agg(self, a, h):
        m = a @ h
        if self.aggr == "mean":
            m = m / a.sum(-1, keepdim=True).clamp_min(1.0)
        return m

    def forward(self, a, x):
        h = nnf.relu(self.s1(x) + self.n1(self._agg(a, x)))
        h = nnf.relu(self.s2(h) + self.n2(self._agg(a, h)))
        return self.out(h).squeeze(-1)


def _graphs(r, n_graphs, n_nodes, p_lo, p_hi, d=8):
    """Random graphs of edge probability drawn in [p_lo, p_hi]; a node's label: its neighbours' mean of feature 0 is
    above 0, XOR its own feature 1 is above 0 (two hops of reasoning over a degree-free target)."""
    p = r.uniform(p_lo, p_hi, size=(n_graphs, 1, 1))
    u = r.rand(n_graphs, n_nodes, n_nodes)
    a = np.triu(u < p, 1)
    a = (a | a.transpose(0, 2, 1)).astype(np.float32)
    x = r.randn(n_graphs, n_nodes, d).astype(np.float32)
    nb = (a @ x[:, :, :1])[..., 0]
    y = ((nb > 0) ^ (x[:, :, 1] > 0)).astype(np.float32)
    return _t(a), _t(x), _t(y)


def gnn(cell, seed):
    aggr, lr, share, mag = {
        "healthy": ("mean", 0.05, 0.0, 1.0),
        "sum aggregation, lr x15": ("sum", 0.75, 0.0, 1.0),
        "1% graphs x100": ("mean", 0.05, 0.01, 100.0),
    }[cell]
    r = _rng(seed, 22)
    at, xt, yt = _graphs(r, 2048, 16, 0.05, 0.3)
    av, xv, yv = _graphs(r, 256, 16, 0.05, 0.3)
    bad = torch.tensor(r.rand(2048) < share)
    xt[bad] *= mag  # a corrupted record: every node's features scaled, the labels as before
    torch.manual_seed(seed)
    model = GNN(8, d=32, aggr=aggr)
    order = _order(r, 2048, 32)

    def loss(m, s):
        i = order[s]
        return nnf.binary_cross_entropy_with_logits(m(at[i], xt[i]), yt[i])

    return {
        "model": model,
        "opt": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
        "sched": None,
        "loss": loss,
        "metric": lambda m: nnf.binary_cross_entropy_with_logits(m(av, xv), yv),
        "steps": STEPS,
    }


# ------------------------------------------------------------------ 3: digits MLP, SGD Nesterov, warm restarts
def sgdr(cell, seed):
    peak = {"healthy": 0.05, "peak x5": 0.25, "peak x10": 0.5}[cell]
    x, y = _digits()
    r = _rng(seed, 23)
    perm = r.permutation(len(x))
    x, y = x[perm], y[perm]
    x = (x - x[:1400].mean(0)) / (x[:1400].std(0) + 0.1)
    xt, yt, xv, yv = _t(x[:1400]), torch.tensor(y[:1400]), _t(x[1400:]), torch.tensor(y[1400:])
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    order = _order(r, 1400, 32)

    def loss(m, s):
        i = order[s]
        return nnf.cross_entropy(m(xt[i]), yt[i])

    return {
        "model": model,
        "opt": lambda p: torch.optim.SGD(p, lr=peak, momentum=0.9, nesterov=True),
        # restarts at steps 20, 60 and 140; the last cycle ends at step 300
        "sched": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=20, T_mult=2),
        "loss": loss,
        "metric": lambda m: nnf.cross_entropy(m(xv), yv),
        "steps": STEPS,
    }


# ------------------------------------------------------------------ 4: imbalanced multi-label, NAdam
def multilabel(cell, seed):
    share, mag = {"healthy": (0.0, 1.0), "2% inputs x1000": (0.02, 1000.0), "0.3% inputs x10000": (0.003, 1e4)}[cell]
    r = _rng(seed, 24)
    n, d, k = 4096, 32, 12
    x = r.randn(n + 1024, d)
    w = r.randn(d, k) / math.sqrt(d)
    v = r.randn(d, k) / math.sqrt(d)
    bias = np.log(np.linspace(0.01, 0.3, k) / (1 - np.linspace(0.01, 0.3, k)))  # label rates 1%..30%
    logits = 3 * (x @ w) + np.abs(x @ v) - 1 + bias
    y = (logits + 0.2 * r.logistic(size=logits.shape) > 0).astype(np.float32)
    x_tr = x[:n].copy()
    bad = r.rand(n) < share
    x_tr[bad] *= mag
    xt, yt, xv, yv = _t(x_tr), _t(y[:n]), _t(x[n:]), _t(y[n:])
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, k))
    order = _order(r, n, 64)

    def loss(m, s):
        i = order[s]
        return nnf.binary_cross_entropy_with_logits(m(xt[i]), yt[i])

    return {
        "model": model,
        "opt": lambda p: torch.optim.NAdam(p, lr=2e-3),
        "sched": None,
        "loss": loss,
        "metric": lambda m: nnf.binary_cross_entropy_with_logits(m(xv), yv),
        "steps": STEPS,
    }


# ------------------------------------------------------------------ 5: heteroscedastic regression, Gaussian NLL
class MeanVar(nn.Module):
    def __init__(self, d, h=64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh())
        self.mu, self.log_var = nn.Linear(h, 1), nn.Linear(h, 1)

    def forward(self, x):
        h = self.body(x)
        return self.mu(h), self.log_var(h)


def _gauss_nll(m, x, y):
    mu, log_var = m(x)
    return nnf.gaussian_nll_loss(mu, y, log_var.exp())


def gaussnll(cell, seed):
    lr, share, mag = {
        "healthy": (0.005, 0.0, 1.0),
        "lr x20": (0.1, 0.0, 1.0),
        "0.5% targets +100 sigma": (0.005, 0.005, 100.0),
    }[cell]
    r = _rng(seed, 25)
    n, d = 4096, 6
    x = r.randn(n + 1024, d)
    w = r.randn(d, 2) / math.sqrt(d)
    z = x @ w
    sigma = 0.03 + 0.5 / (1 + np.exp(-3 * z[:, 1]))  # noise from 0.03 to 0.53 across the input space
    y = np.sin(2 * z[:, 0]) + sigma * r.randn(n + 1024)
    y_tr = y[:n].copy()
    bad = r.rand(n) < share
    y_tr[bad] = y_tr[bad] + mag * sigma[:n][bad] * np.sign(r.randn(bad.sum()))  # outliers: a jump of mag sigmas
    xt, yt, xv = _t(x[:n]), _t(y_tr)[:, None], _t(x[n:])
    fv, sv = _t(np.sin(2 * z[n:, 0]))[:, None], _t(sigma[n:])[:, None]
    torch.manual_seed(seed)
    model = MeanVar(d)

    def metric(m):  # KL(true N(f, sigma^2) || predicted N(mu, var)), over held-out inputs: 0 at the truth
        mu, log_var = m(xv)
        return 0.5 * (log_var - 2 * sv.log() + (sv**2 + (fv - mu) ** 2) / log_var.exp() - 1).mean()

    order = _order(r, n, 32)
    return {
        "model": model,
        "opt": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
        "sched": None,
        "loss": lambda m, s: _gauss_nll(m, xt[order[s]], yt[order[s]]),
        "metric": metric,
        "steps": STEPS,
    }


# ------------------------------------------------------------------ 6: soft mixture of experts
class MoE(nn.Module):
    def __init__(self, d, experts=4, h=32):
        super().__init__()
        self.gate = nn.Linear(d, experts)
        self.w1 = nn.Parameter(torch.randn(experts, d, h) / math.sqrt(d))
        self.b1 = nn.Parameter(torch.zeros(experts, 1, h))
        self.w2 = nn.Parameter(torch.randn(experts, h, 1) / math.sqrt(h))

    def forward(self, x):
        g = torch.softmax(self.gate(x), -1)  # (n, E)
        h = torch.relu(torch.einsum("nd,edh->enh", x, self.w1) + self.b1)
        e = torch.einsum("enh,eho->eno", h, self.w2)[..., 0]  # (E, n)
        return (g * e.T).sum(-1, keepdim=True)


def moe(cell, seed):
    lr, share, mag = {
        "healthy": (0.02, 0.0, 1.0),
        "lr x30": (0.6, 0.0, 1.0),
        "1% targets x100": (0.02, 0.01, 100.0),
    }[cell]
    r = _rng(seed, 26)
    n, d = 4096, 8
    x = r.randn(n + 1024, d)
    centers = r.randn(4, d)
    region = np.argmax(x @ centers.T, 1)
    w = r.randn(4, d) / math.sqrt(d)
    y = np.sin(2 * np.einsum("nd,nd->n", x, w[region])) + 0.1 * r.randn(n + 1024)
    y_tr = y[:n].copy()
    bad = r.rand(n) < share
    y_tr[bad] *= mag
    xt, yt, xv, yv = _t(x[:n]), _t(y_tr)[:, None], _t(x[n:]), _t(y[n:])[:, None]
    torch.manual_seed(seed)
    model = MoE(d)
    order = _order(r, n, 32)

    def loss(m, s):
        i = order[s]
        return nnf.mse_loss(m(xt[i]), yt[i])

    return {
        "model": model,
        "opt": lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9),
        "sched": None,
        "loss": loss,
        "metric": lambda m: nnf.mse_loss(m(xv), yv),
        "steps": STEPS,
    }


FAMILIES = {
    "rmsprop": (rmsprop, ["healthy", "1% images x1000", "10% images x30"]),
    "gnn": (gnn, ["healthy", "sum aggregation, lr x15", "1% graphs x100"]),
    "sgdr": (sgdr, ["healthy", "peak x5", "peak x10"]),
    "multilabel": (multilabel, ["healthy", "2% inputs x1000", "0.3% inputs x10000"]),
    "gaussnll": (gaussnll, ["healthy", "lr x20", "0.5% targets +100 sigma"]),
    "moe": (moe, ["healthy", "lr x30", "1% targets x100"]),
}
