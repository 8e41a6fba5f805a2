"""Families of noisy-but-healthy training runs, each with a failing twin.

Every family is `setup(seed, variant) -> Spec`, variant "healthy" or "twin".
A plain-loop Spec has .model (what GradWatch watches), .optimizers, .steps and .train(gate) -> trace.
A Trainer Spec has .kind == "trainer" and .train(callbacks) -> trace.
`gate.step(opt, loss)` records the loss and this optimizer's gradient norm, then hands the step to
GradWatch's loop when there is one; it returns False when the update must be dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)


# ---------------------------------------------------------------- harness
class Gate:
    def __init__(self, loop=None):
        self.loop = loop
        self.losses: list[float] = []  # one per gate.step call (GradWatch's step axis)
        self.norms: list[float] = []

    def step(self, opt, loss) -> bool:
        sq = 0.0
        for g in opt.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                gr = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
                sq += float(gr.detach().double().pow(2).sum())
        self.losses.append(float(loss.detach()))
        self.norms.append(math.sqrt(sq) if math.isfinite(sq) else float("nan"))
        if self.loop is None:
            return True
        return bool(self.loop.step(opt, loss))

    @property
    def stop(self) -> bool:
        return self.loop is not None and bool(self.loop.should_stop)


@dataclass
class Spec:
    model: nn.Module | None
    optimizers: list
    steps: int
    train: Callable[..., dict]
    kind: str = "loop"
    extra: dict = field(default_factory=dict)


def finite_weights(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def trace_of(losses, model, m0, m1, ideal, gate=None, died=False, **kw):
    t = {
        "loss": [float(x) for x in losses],
        "died": died,
        "nonfinite": not finite_weights(model),
        "metric_start": m0,
        "metric_end": m1,
        "metric_ideal": ideal,
    }
    if gate is not None:
        t["step_loss"] = gate.losses
        t["step_norm"] = gate.norms
    t.update(kw)
    return t


def safe_metric(fn):
    try:
        with torch.no_grad():
            v = float(fn())
        return v
    except Exception:
        return float("nan")


def teacher_cls(n, d, k, seed, hidden=32, scale=3.0):
    """X ~ N(0, I), labels from a random tanh teacher (learnable, not linearly trivial)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    w1 = torch.randn(d, hidden, generator=g) / math.sqrt(d)
    w2 = torch.randn(hidden, k, generator=g) / math.sqrt(hidden)
    x = torch.randn(n, d, generator=g)
    y = (scale * torch.tanh(x @ w1 * 2) @ w2).argmax(1)
    return x, y


def acc(model, x, y):
    model.eval()
    with torch.no_grad():
        a = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return a


def batches(n, bs, g):
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - bs + 1, bs):
            yield perm[i : i + bs]


# ---------------------------------------------------------------- 1. stochastic depth
class StochDepthNet(nn.Module):
    def __init__(self, d=32, w=64, k=10, blocks=8, survive=0.5):
        super().__init__()
        self.inp = nn.Linear(d, w)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.GELU(), nn.Linear(w, w)) for _ in range(blocks)
        )
        self.head = nn.Linear(w, k)
        self.survive = survive

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            if self.training:
                if torch.rand(()) < self.survive:
                    h = h + b(h)
            else:
                h = h + self.survive * b(h)
        return self.head(h)


def stochdepth(seed, variant):
    torch.manual_seed(seed)
    x, y = teacher_cls(4000, 32, 10, seed)
    xt, yt = x[3000:], y[3000:]
    x, y = x[:3000], y[:3000]
    model = StochDepthNet()
    lr = 0.05 * (100 if variant == "twin" else 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    steps = 300

    def train(gate):
        m0 = acc(model, xt, yt)
        g = torch.Generator().manual_seed(seed)
        it = batches(len(x), 64, g)
        losses = []
        for _s in range(steps):
            idx = next(it)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(lambda: acc(model, xt, yt)), 1.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- 2. sharpness-aware minimisation
def teacher_reg(n, d, seed, noise=0.1):
    g = torch.Generator().manual_seed(20_000 + seed)
    w1 = torch.randn(d, 32, generator=g) / math.sqrt(d)
    w2 = torch.randn(32, 1, generator=g) / math.sqrt(32)
    x = torch.randn(n, d, generator=g)
    y = torch.tanh(x @ w1 * 1.5) @ w2 * 2 + noise * torch.randn(n, 1, generator=g)
    return x, y


def sam(seed, variant):
    torch.manual_seed(seed)
    x, y = teacher_reg(3000, 20, seed)
    xt, yt = x[2500:], y[2500:]
    x, y = x[:2500], y[:2500]
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    lr = 0.05 * (100 if variant == "twin" else 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    rho = 0.05
    steps = 300

    def mse():
        return F.mse_loss(model(xt), yt)

    def train(gate):
        m0 = safe_metric(mse)
        g = torch.Generator().manual_seed(seed)
        it = batches(len(x), 32, g)
        losses = []
        for _s in range(steps):
            idx = next(it)
            loss = F.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            losses.append(float(loss))
            params = [p for p in model.parameters() if p.grad is not None]
            gn = torch.norm(torch.stack([p.grad.norm() for p in params])) + 1e-12
            eps = []
            with torch.no_grad():
                for p in params:
                    e = rho * p.grad / gn
                    p.add_(e)
                    eps.append(e)
            opt.zero_grad()
            loss2 = F.mse_loss(model(x[idx]), y[idx])
            loss2.backward()
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.sub_(e)
            if gate.step(opt, loss):  # the step's (unperturbed) loss, the SAM gradient
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(mse), 0.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- 3. WGAN-GP on a ring of Gaussians
def ring(n, g):
    ang = torch.randint(0, 8, (n,), generator=g).float() * (2 * math.pi / 8)
    return torch.stack([2 * torch.cos(ang), 2 * torch.sin(ang)], 1) + 0.05 * torch.randn(n, 2, generator=g)


def energy_distance(a, b):
    return 2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()


def wgan_gp(seed, variant):
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    D = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
    model = nn.ModuleDict({"G": G, "D": D})
    lr = 1e-3 * (100 if variant == "twin" else 1)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.9))
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.9))
    iters, n_critic, bs = 200, 5, 64
    gt = torch.Generator().manual_seed(777 + seed)
    real_t = ring(1000, gt)
    z_t = torch.randn(1000, 8, generator=gt)

    def metric():
        return energy_distance(G(z_t), real_t)

    def train(gate):
        m0 = safe_metric(metric)
        g = torch.Generator().manual_seed(seed)
        losses = []
        for _it in range(iters):
            stop = False
            for _ in range(n_critic):
                real = ring(bs, g)
                fake = G(torch.randn(bs, 8, generator=g)).detach()
                a = torch.rand(bs, 1, generator=g)
                mix = (a * real + (1 - a) * fake).requires_grad_(True)
                grad = torch.autograd.grad(D(mix).sum(), mix, create_graph=True)[0]
                gp = ((grad.norm(dim=1) - 1) ** 2).mean()
                d_loss = D(fake).mean() - D(real).mean() + 10 * gp
                d_loss.backward()
                if gate.step(opt_d, d_loss):
                    opt_d.step()
                opt_d.zero_grad()
                opt_g.zero_grad()
                if gate.stop:
                    stop = True
                    break
            if stop:
                break
            losses.append(float(d_loss))
            g_loss = -D(G(torch.randn(bs, 8, generator=g))).mean()
            g_loss.backward()
            if gate.step(opt_g, g_loss):
                opt_g.step()
            opt_g.zero_grad()
            opt_d.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(metric), 0.0, gate)

    return Spec(model, [opt_d, opt_g], iters * (n_critic + 1), train)


# ---------------------------------------------------------------- 4. VAE with KL annealing
class VAE(nn.Module):
    def __init__(self, d=16, z=4):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 2 * z))
        self.dec = nn.Sequential(nn.Linear(z, 64), nn.ReLU(), nn.Linear(64, d))

    def forward(self, x, beta):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        zz = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = ((self.dec(zz) - x) ** 2).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        return rec + beta * kl


def vae_kl(seed, variant):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(30_000 + seed)
    zl = torch.randn(3000, 2, generator=g)
    W = torch.randn(2, 32, generator=g)
    V = torch.randn(32, 16, generator=g) / math.sqrt(32)
    data = torch.tanh(zl @ W) @ V * 2 + 0.05 * torch.randn(3000, 16, generator=g)
    xt, x = data[2500:], data[:2500]
    model = VAE()
    lr = 2e-3 * (100 if variant == "twin" else 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = 300

    def nelbo():
        model.eval()
        torch.manual_seed(999)
        v = model(xt, 1.0)
        model.train()
        return v

    def train(gate):
        m0 = safe_metric(nelbo)
        gg = torch.Generator().manual_seed(seed)
        it = batches(len(x), 64, gg)
        losses = []
        for s in range(steps):
            beta = min(1.0, s / 250)
            loss = model(x[next(it)], beta)
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(nelbo), 0.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- 5. curriculum: batches get harder
def curriculum(seed, variant):
    torch.manual_seed(seed)
    x, y = teacher_cls(5000, 32, 10, seed)
    xt, yt = x[4000:], y[4000:]
    x, y = x[:4000], y[:4000]
    gt = torch.Generator().manual_seed(50 + seed)
    xt_hard = xt + 1.0 * torch.randn(xt.shape, generator=gt)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 300
    nan_from = 150 if variant == "twin" else None

    def train(gate):
        m0 = acc(model, xt_hard, yt)
        g = torch.Generator().manual_seed(seed)
        it = batches(len(x), 64, g)
        losses = []
        for s in range(steps):
            idx = next(it)
            noise = 1.0 * s / steps  # input noise grows 0 -> 1
            label_noise = 0.15 * s / steps  # and a growing share of relabelled examples
            xb = x[idx] + noise * torch.randn(len(idx), 32, generator=g)
            yb = y[idx].clone()
            flip = torch.rand(len(idx), generator=g) < label_noise
            yb[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
            if nan_from is not None and s >= nan_from:
                xb[0, 0] = float("nan")
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(lambda: acc(model, xt_hard, yt)), 1.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- 6. top-1 mixture of experts
class MoE(nn.Module):
    def __init__(self, d=16, n_exp=4):
        super().__init__()
        self.gate = nn.Linear(d, n_exp)
        with torch.no_grad():
            self.gate.bias.copy_(torch.tensor([0.5, 0.0, 0.0, -1.5])[:n_exp])
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 1)) for _ in range(n_exp))

    def forward(self, x):
        p = self.gate(x).softmax(1)
        top = p.argmax(1)
        out = torch.zeros(len(x), 1)
        for e, expert in enumerate(self.experts):
            m = top == e
            if m.any():  # an expert no example is routed to gets no gradient this step
                out[m] = p[m, e : e + 1] * expert(x[m])
        return out


def moe_top1(seed, variant):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(60_000 + seed)
    x = torch.randn(3000, 16, generator=g)
    region = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    W = torch.randn(4, 16, generator=g)
    y = ((x * W[region]).sum(1, keepdim=True)).tanh() * 2 + region.unsqueeze(1).float() - 1.5
    y = y + 0.1 * torch.randn(y.shape, generator=g)
    xt, yt, x, y = x[2500:], y[2500:], x[:2500], y[:2500]
    model = MoE()
    lr = 3e-3 * (100 if variant == "twin" else 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = 300

    def mse():
        return F.mse_loss(model(xt), yt)

    def train(gate):
        m0 = safe_metric(mse)
        gg = torch.Generator().manual_seed(seed)
        it = batches(len(x), 8, gg)
        losses = []
        for _s in range(steps):
            idx = next(it)
            loss = F.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad(set_to_none=True)
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(mse), 0.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- 7. recsys: big sparse embeddings
class MF(nn.Module):
    def __init__(self, nu, ni, d=16):
        super().__init__()
        self.u = nn.Embedding(nu, d, sparse=True)
        self.i = nn.Embedding(ni, d, sparse=True)
        self.ub = nn.Embedding(nu, 1, sparse=True)
        self.ib = nn.Embedding(ni, 1, sparse=True)
        for e in (self.u, self.i):
            nn.init.normal_(e.weight, std=0.1)
        for e in (self.ub, self.ib):
            nn.init.zeros_(e.weight)

    def forward(self, u, i):
        return (self.u(u) * self.i(i)).sum(1) + self.ub(u).squeeze(1) + self.ib(i).squeeze(1) + 3.5


def recsys(seed, variant):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(70_000 + seed)
    nu, ni, n = 5000, 2000, 80_000
    U = torch.randn(nu, 8, generator=g) * 0.5
    V = torch.randn(ni, 8, generator=g) * 0.5
    bu = torch.randn(nu, generator=g) * 0.5
    bi = torch.randn(ni, generator=g) * 0.7
    pop = 1.0 / torch.arange(1, ni + 1).float() ** 0.8  # Zipf-like item popularity
    users = torch.randint(0, nu, (n,), generator=g)
    items = torch.multinomial(pop, n, replacement=True, generator=g)
    r = (U[users] * V[items]).sum(1) + bu[users] + bi[items] + 3.5 + 0.3 * torch.randn(n, generator=g)
    ut, it_, rt = users[70_000:], items[70_000:], r[70_000:]
    users, items, r = users[:70_000], items[:70_000], r[:70_000]
    model = MF(nu, ni)
    lr = 1e-2 * (100 if variant == "twin" else 1)
    opt = torch.optim.SparseAdam(list(model.parameters()), lr=lr)
    steps = 300

    def mse():
        return F.mse_loss(model(ut, it_), rt)

    def train(gate):
        m0 = safe_metric(mse)
        gg = torch.Generator().manual_seed(seed)
        itr = batches(len(r), 256, gg)
        losses = []
        for _s in range(steps):
            idx = next(itr)
            loss = F.mse_loss(model(users[idx], items[idx]), r[idx])
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(mse), 0.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- 8. mixup + label smoothing on images
def pattern_images(n, seed, k=10, noise=0.6):
    g = torch.Generator().manual_seed(80_000 + seed)
    base = torch.randn(k, 1, 8, 8, generator=g)
    tmpl = F.interpolate(base, size=(20, 20), mode="bilinear", align_corners=False)
    y = torch.randint(0, k, (n,), generator=g)
    dx = torch.randint(0, 5, (n,), generator=g)
    dy = torch.randint(0, 5, (n,), generator=g)
    imgs = torch.stack([tmpl[y[j], :, dy[j] : dy[j] + 16, dx[j] : dx[j] + 16] for j in range(n)])
    return imgs + noise * torch.randn(imgs.shape, generator=g), y


class SmallCNN(nn.Module):
    def __init__(self, k=10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, k)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def mixup_ls(seed, variant):
    torch.manual_seed(seed)
    x, y = pattern_images(3000, seed)
    xt, yt, x, y = x[2500:], y[2500:], x[:2500], y[:2500]
    model = SmallCNN()
    lr = 0.03 * (100 if variant == "twin" else 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    steps = 300
    beta = torch.distributions.Beta(0.4, 0.4)

    def train(gate):
        m0 = acc(model, xt, yt)
        g = torch.Generator().manual_seed(seed)
        it = batches(len(x), 32, g)
        losses = []
        for _s in range(steps):
            idx = next(it)
            lam = float(beta.sample())
            perm = torch.randperm(len(idx), generator=g)
            xb = lam * x[idx] + (1 - lam) * x[idx][perm]
            out = model(xb)
            loss = lam * F.cross_entropy(out, y[idx], label_smoothing=0.1) + (1 - lam) * F.cross_entropy(
                out, y[idx][perm], label_smoothing=0.1
            )
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(lambda: acc(model, xt, yt)), 1.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- 9. quantile (pinball) regression, heavy tails
def pinball(pred, y, qs):
    e = y - pred
    return torch.maximum(qs * e, (qs - 1) * e).mean()


def quantile(seed, variant):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(90_000 + seed)
    x = torch.randn(4000, 8, generator=g)
    w = torch.randn(8, generator=g)
    t = torch.distributions.StudentT(1.5)
    noise = t.sample((4000,)) * 0.3 * (1 + 0.5 * x[:, 1].abs())  # heavy-tailed, heteroscedastic
    y = (2 * torch.sin(x @ w) + x[:, 0] + noise).unsqueeze(1)
    xt, yt, x, y = x[3500:], y[3500:], x[:3500], y[:3500]
    qs = torch.tensor([0.1, 0.5, 0.9])
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    steps = 300
    nan_from = 100 if variant == "twin" else None

    def metric():
        return pinball(model(xt), yt, qs)

    def train(gate):
        m0 = safe_metric(metric)
        gg = torch.Generator().manual_seed(seed)
        it = batches(len(x), 32, gg)
        losses = []
        for s in range(steps):
            idx = next(it)
            xb = x[idx].clone()
            if nan_from is not None and s >= nan_from:
                xb[3, 2] = float("nan")
            loss = pinball(model(xb), y[idx], qs)
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(metric), 0.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- 10. CTC on a small LSTM
class CTCNet(nn.Module):
    def __init__(self, d=8, h=48, v=6):
        super().__init__()
        self.rnn = nn.LSTM(d, h, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * h, v)

    def forward(self, x):
        return self.out(self.rnn(x)[0]).log_softmax(-1)


def ctc_data(n, seed, d=8, vocab=5):
    g = torch.Generator().manual_seed(100_000 + seed)
    emb = torch.randn(vocab + 1, d, generator=g)
    xs, labels, xl, yl = [], [], [], []
    T = 30
    for _ in range(n):
        L = int(torch.randint(3, 6, (1,), generator=g))
        lab = torch.randint(1, vocab + 1, (L,), generator=g)
        frames = []
        for c in lab.tolist():
            frames += [emb[0]] * int(torch.randint(0, 2, (1,), generator=g))
            frames += [emb[c]] * int(torch.randint(2, 5, (1,), generator=g))
        frames = frames[:T]
        seq = torch.zeros(T, d)
        seq[: len(frames)] = torch.stack(frames)
        seq = seq + 0.7 * torch.randn(T, d, generator=g)
        xs.append(seq)
        labels.append(torch.cat([lab, torch.zeros(5 - L, dtype=torch.long)]))
        xl.append(T)
        yl.append(L)
    return torch.stack(xs), torch.stack(labels), torch.tensor(xl), torch.tensor(yl)


def edit_distance(a, b):
    d = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, cb in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ca != cb))
    return d[-1]


def ctc(seed, variant):
    torch.manual_seed(seed)
    x, lab, xl, yl = ctc_data(1700, seed)
    xt, labt, ylt = x[1500:], lab[1500:], yl[1500:]
    x, lab, xl, yl = x[:1500], lab[:1500], xl[:1500], yl[:1500]
    model = CTCNet()
    lr = 3e-3 * (100 if variant == "twin" else 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = 300

    def ter():
        model.eval()
        pred = model(xt).argmax(-1)
        model.train()
        errs, tot = 0, 0
        for p, lab_ref, n in zip(pred.tolist(), labt.tolist(), ylt.tolist()):
            dec, prev = [], 0
            for c in p:
                if c != prev and c != 0:
                    dec.append(c)
                prev = c
            errs += edit_distance(dec, lab_ref[:n])
            tot += n
        return min(errs / tot, 1.0)

    def train(gate):
        m0 = safe_metric(ter)
        g = torch.Generator().manual_seed(seed)
        it = batches(len(x), 16, g)
        losses = []
        for _s in range(steps):
            idx = next(it)
            lp = model(x[idx]).transpose(0, 1)
            loss = F.ctc_loss(lp, lab[idx], xl[idx], yl[idx], blank=0, zero_infinity=True)
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(ter), 0.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- 11. PPO clipped loss on a contextual bandit
def ppo_bandit(seed, variant):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(110_000 + seed)
    A = torch.randn(5, 4, generator=g) * 1.5

    def probs(c):
        return torch.sigmoid(c @ A.T)  # arm success probabilities

    ct = torch.randn(2000, 4, generator=g)
    ideal = probs(ct).max(1).values.mean().item()
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 5))
    lr = 3e-3 * (100 if variant == "twin" else 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    iters, epochs, bs = 75, 4, 64

    def value():
        pi = model(ct).softmax(1)
        return (pi * probs(ct)).sum(1).mean()

    def train(gate):
        m0 = safe_metric(value)
        gg = torch.Generator().manual_seed(seed)
        losses = []
        for _it in range(iters):
            c = torch.randn(bs, 4, generator=gg)
            with torch.no_grad():
                logp_old_all = model(c).log_softmax(1)
                a = torch.multinomial(logp_old_all.exp(), 1, generator=gg).squeeze(1)
                logp_old = logp_old_all.gather(1, a[:, None]).squeeze(1)
                r = (torch.rand(bs, generator=gg) < probs(c).gather(1, a[:, None]).squeeze(1)).float()
                adv = (r - r.mean()) / (r.std() + 1e-8)
            stop = False
            for _ep in range(epochs):
                logp_all = model(c).log_softmax(1)
                logp = logp_all.gather(1, a[:, None]).squeeze(1)
                ratio = (logp - logp_old).exp()
                ent = -(logp_all.exp() * logp_all).sum(1).mean()
                loss = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean() - 0.01 * ent
                loss.backward()
                losses.append(float(loss))
                if gate.step(opt, loss):
                    opt.step()
                opt.zero_grad()
                if gate.stop:
                    stop = True
                    break
            if stop:
                break
        return trace_of(losses, model, m0, safe_metric(value), ideal, gate)

    return Spec(model, [opt], iters * epochs, train)


# ---------------------------------------------------------------- 12. dropout 0.5, batch size 4 (twin: 20-deep sigmoi
def dropout_b4(seed, variant):
    torch.manual_seed(seed)
    x, y = teacher_cls(3000, 32, 10, seed)
    xt, yt, x, y = x[2500:], y[2500:], x[:2500], y[:2500]
    if variant == "twin":
        layers = [nn.Linear(32, 64), nn.Sigmoid()]
        for _ in range(19):
            layers += [nn.Linear(64, 64), nn.Sigmoid()]
        model = nn.Sequential(*layers, nn.Linear(64, 10))
    else:
        model = nn.Sequential(
            nn.Linear(32, 256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, 10),
        )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = 400

    def train(gate):
        m0 = acc(model, xt, yt)
        g = torch.Generator().manual_seed(seed)
        it = batches(len(x), 4, g)
        losses = []
        for _s in range(steps):
            idx = next(it)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(lambda: acc(model, xt, yt)), 1.0, gate)

    return Spec(model, [opt], steps, train)


# ---------------------------------------------------------------- Lightning Trainer families
def _trainer(callbacks, max_steps, root):
    import lightning.pytorch as pl

    return pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def _record_norm(module):
    sq = 0.0
    for p in module.parameters():
        if p.grad is not None:
            sq += float(p.grad.detach().double().pow(2).sum())
    return math.sqrt(sq) if math.isfinite(sq) else float("nan")


def _make_majority_data(n, seed, T=12, V=10):
    g = torch.Generator().manual_seed(120_000 + seed)
    tok = torch.randint(0, V, (n, T), generator=g)
    maj = torch.randint(0, V, (n,), generator=g)
    k = torch.randint(2, 5, (n,), generator=g)  # plant 2-4 extra copies of the majority token
    for j in range(n):
        pos = torch.randperm(T, generator=g)[: int(k[j])]
        tok[j, pos] = maj[j]
    y = F.one_hot(tok, V).sum(1).argmax(1)
    return tok, y


def warmup_decay(seed, variant):
    """Lightning Trainer: a small transformer, SGD, linear warm-up 30 steps then linear decay to 0."""
    import lightning.pytorch as pl

    steps = 300
    peak = 0.05 * (100 if variant == "twin" else 1)

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 32)
            self.pos = nn.Parameter(torch.randn(12, 32) * 0.1)
            self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
            self.head = nn.Linear(32, 10)
            self.losses, self.norms = [], []

        def forward(self, t):
            return self.head(self.enc(self.emb(t) + self.pos).mean(1))

        def training_step(self, batch, i):
            loss = F.cross_entropy(self(batch[0]), batch[1])
            self.losses.append(float(loss))
            return loss

        def on_before_optimizer_step(self, opt):
            self.norms.append(_record_norm(self))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=peak, momentum=0.9)

            def f(s):
                return (s + 1) / 30 if s < 30 else max(0.0, (steps - s) / (steps - 30))

            return [opt], [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, f), "interval": "step"}]

    def train(callbacks, root):
        torch.manual_seed(seed)
        tok, y = _make_majority_data(steps * 32 + 1000, seed)
        tt, yt = tok[-1000:], y[-1000:]
        dl = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(tok[:-1000], y[:-1000]),
            batch_size=32,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        m = M()
        m0 = acc(m, tt, yt)
        died = False
        try:
            _trainer(callbacks, steps, root).fit(m, dl)
        except Exception as e:
            died = repr(e)[:200]
        t = trace_of(m.losses, m, m0, safe_metric(lambda: acc(m, tt, yt)), 1.0, died=bool(died))
        t["step_loss"], t["step_norm"], t["error"] = m.losses, m.norms, died
        return t

    return Spec(None, [], steps, train, kind="trainer")


def ema_distill(seed, variant):
    """Lightning Trainer: mean-teacher distillation; EMA teacher, 10% labels, consistency weight ramped up."""
    import copy

    import lightning.pytorch as pl

    steps = 300
    nan_from = 150 if variant == "twin" else None

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.student = nn.Sequential(
                nn.Linear(32, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
            )
            self.teacher = copy.deepcopy(self.student)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            self.losses, self.norms = [], []
            self.g = torch.Generator().manual_seed(seed)

        def forward(self, x):
            return self.student(x)

        def training_step(self, batch, i):
            x, y = batch
            s = self.global_step
            x = x.clone()
            if nan_from is not None and s >= nan_from:
                x[0, 5] = float("nan")
            lab = torch.arange(len(x)) < len(x) // 10  # 10% of each batch labelled
            xs = x + 0.3 * torch.randn(x.shape, generator=self.g)
            xte = x + 0.3 * torch.randn(x.shape, generator=self.g)
            out = self.student(xs)
            with torch.no_grad():
                tgt = self.teacher(xte).softmax(1)
            w = 10.0 * min(1.0, s / 100) ** 2
            loss = F.cross_entropy(out[lab], y[lab]) + w * ((out.softmax(1) - tgt) ** 2).sum(1).mean()
            self.losses.append(float(loss))
            return loss

        def on_before_optimizer_step(self, opt):
            self.norms.append(_record_norm(self.student))

        def on_train_batch_end(self, *a):
            with torch.no_grad():
                for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
                    pt.mul_(0.99).add_(ps, alpha=0.01)

        def configure_optimizers(self):
            return torch.optim.Adam(self.student.parameters(), lr=1e-3)

    def train(callbacks, root):
        torch.manual_seed(seed)
        x, y = teacher_cls(steps * 64 + 1000, 32, 10, seed)
        xt, yt = x[-1000:], y[-1000:]
        dl = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x[:-1000], y[:-1000]),
            batch_size=64,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        m = M()
        m0 = acc(m, xt, yt)
        died = False
        try:
            _trainer(callbacks, steps, root).fit(m, dl)
        except Exception as e:
            died = repr(e)[:200]
        t = trace_of(m.losses, m.student, m0, safe_metric(lambda: acc(m, xt, yt)), 1.0, died=bool(died))
        t["step_loss"], t["step_norm"], t["error"] = m.losses, m.norms, died
        return t

    return Spec(None, [], steps, train, kind="trainer")


FAMILIES: dict[str, Callable[[int, str], Spec]] = {
    "stochdepth": stochdepth,
    "sam": sam,
    "wgan_gp": wgan_gp,
    "vae_kl": vae_kl,
    "curriculum": curriculum,
    "moe_top1": moe_top1,
    "recsys_sparse": recsys,
    "mixup_ls": mixup_ls,
    "quantile_heavy": quantile,
    "ctc_lstm": ctc,
    "ppo_bandit": ppo_bandit,
    "dropout_b4": dropout_b4,
    "warmup_decay_pl": warmup_decay,
    "ema_distill_pl": ema_distill,
}
TWIN = {
    "stochdepth": "SGD lr 100x (5.0)",
    "sam": "SGD lr 100x (5.0)",
    "wgan_gp": "Adam lr 100x (0.1)",
    "vae_kl": "Adam lr 100x (0.2)",
    "curriculum": "NaN in one input value per batch from step 150",
    "moe_top1": "Adam lr 100x (0.3)",
    "recsys_sparse": "SparseAdam lr 100x (1.0)",
    "mixup_ls": "SGD lr 100x (3.0)",
    "quantile_heavy": "NaN in one input value per batch from step 100",
    "ctc_lstm": "Adam lr 100x (0.3)",
    "ppo_bandit": "Adam lr 100x (0.3)",
    "dropout_b4": "20-deep sigmoid MLP instead",
    "warmup_decay_pl": "peak lr 100x (5.0)",
    "ema_distill_pl": "NaN in one input value per batch from step 150",
}


# ================================================================ batch 2 (added after batch 1's results, same rule)
def sgdr_restarts(seed, variant):
    """SGD with cosine warm restarts every 60 steps: the learning rate jumps back to its peak 4 times."""
    torch.manual_seed(seed)
    x, y = teacher_cls(4000, 32, 10, seed)
    xt, yt, x, y = x[3000:], y[3000:], x[:3000], y[:3000]
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    peak = 0.2 * (100 if variant == "twin" else 1)
    opt = torch.optim.SGD(model.parameters(), lr=peak, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=60)
    steps = 300

    def train(gate):
        m0 = acc(model, xt, yt)
        g = torch.Generator().manual_seed(seed)
        it = batches(len(x), 32, g)
        losses = []
        for _s in range(steps):
            idx = next(it)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            sched.step()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(lambda: acc(model, xt, yt)), 1.0, gate)

    return Spec(model, [opt], steps, train)


class _GRL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.lam * g, None


class DANN(nn.Module):
    def __init__(self):
        super().__init__()
        self.feat = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.cls = nn.Linear(64, 10)
        self.dom = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x):
        return self.cls(self.feat(x))


def dann_grl(seed, variant):
    """Domain-adversarial training with a gradient-reversal layer (its weight ramped 0 -> 1)."""
    torch.manual_seed(seed)
    x, y = teacher_cls(6000, 32, 10, seed)
    g0 = torch.Generator().manual_seed(150_000 + seed)
    shift = 0.8 * torch.randn(32, generator=g0)
    xs, ys = x[:3000], y[:3000]
    xtg = x[3000:5000] * 1.3 + shift  # unlabelled target domain
    xte, yte = x[5000:] * 1.3 + shift, y[5000:]
    model = DANN()
    lr = 1e-3 * (100 if variant == "twin" else 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = 300

    def train(gate):
        m0 = acc(model, xte, yte)
        g = torch.Generator().manual_seed(seed)
        it_s, it_t = batches(len(xs), 32, g), batches(len(xtg), 32, g)
        losses = []
        for s in range(steps):
            i, j = next(it_s), next(it_t)
            lam = 2 / (1 + math.exp(-10 * s / steps)) - 1
            fs, ft = model.feat(xs[i]), model.feat(xtg[j])
            dl = model.dom(_GRL.apply(torch.cat([fs, ft]), lam))
            dy = torch.cat([torch.zeros(len(i)), torch.ones(len(j))]).long()
            loss = F.cross_entropy(model.cls(fs), ys[i]) + F.cross_entropy(dl, dy)
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(lambda: acc(model, xte, yte)), 1.0, gate)

    return Spec(model, [opt], steps, train)


def infonce(seed, variant):
    """Contrastive (SimCLR-style) InfoNCE at temperature 0.05, noise + masking augmentations."""
    torch.manual_seed(seed)
    x, y = teacher_cls(4000, 32, 10, seed)
    xt, yt, x = x[3000:], y[3000:], x[:3000]
    xtr_lab, ytr_lab = x[:1000], teacher_cls(4000, 32, 10, seed)[1][:1000]
    enc = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32))
    lr = 1e-3 * (100 if variant == "twin" else 1)
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    steps = 300

    def nc_acc():  # nearest-class-mean accuracy of the normalised embedding
        enc.eval()
        e, et = F.normalize(enc(xtr_lab), dim=1), F.normalize(enc(xt), dim=1)
        enc.train()
        means = torch.stack([e[ytr_lab == k].mean(0) if (ytr_lab == k).any() else torch.zeros(32) for k in range(10)])
        return (et @ means.T).argmax(1).eq(yt).float().mean()

    def aug(xb, g):
        return (xb + 0.3 * torch.randn(xb.shape, generator=g)) * (torch.rand(xb.shape, generator=g) > 0.2)

    def train(gate):
        m0 = safe_metric(nc_acc)
        g = torch.Generator().manual_seed(seed)
        it = batches(len(x), 64, g)
        losses = []
        for _s in range(steps):
            xb = x[next(it)]
            z1, z2 = F.normalize(enc(aug(xb, g)), dim=1), F.normalize(enc(aug(xb, g)), dim=1)
            z = torch.cat([z1, z2])
            sim = z @ z.T / 0.05
            sim.fill_diagonal_(-1e9)
            n = len(xb)
            tgt = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
            loss = F.cross_entropy(sim, tgt)
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, enc, m0, safe_metric(nc_acc), 1.0, gate)

    return Spec(enc, [opt], steps, train)


def huber_outliers(seed, variant):
    """Huber regression, batch 16, 5% of targets off by +-30; twin: targets x1000 from step 150 on."""
    torch.manual_seed(seed)
    x, y = teacher_reg(4000, 16, seed)
    g = torch.Generator().manual_seed(160_000 + seed)
    bad = torch.rand(3500, generator=g) < 0.05
    y_tr = y[:3500].clone()
    y_tr[bad] += 30 * torch.sign(torch.randn(int(bad.sum()), 1, generator=g))
    xt, yt, x = x[3500:], y[3500:], x[:3500]
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    steps = 300
    scale_from = 150 if variant == "twin" else None

    def mse():
        return F.mse_loss(model(xt), yt)

    def train(gate):
        m0 = safe_metric(mse)
        gg = torch.Generator().manual_seed(seed)
        it = batches(len(x), 16, gg)
        losses = []
        for s in range(steps):
            idx = next(it)
            yb = y_tr[idx] * (1000 if scale_from is not None and s >= scale_from else 1)
            loss = F.huber_loss(model(x[idx]), yb, delta=1.0)
            loss.backward()
            losses.append(float(loss))
            if gate.step(opt, loss):
                opt.step()
            opt.zero_grad()
            if gate.stop:
                break
        return trace_of(losses, model, m0, safe_metric(mse), 0.0, gate)

    return Spec(model, [opt], steps, train)


def accum_bn_pl(seed, variant):
    """Lightning Trainer: BatchNorm MLP on micro-batches of 2, accumulate_grad_batches=8."""
    import lightning.pytorch as pl

    steps = 150  # optimizer steps (1200 micro-batches)
    lr = 0.05 * (100 if variant == "twin" else 1)

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(32, 128),
                nn.BatchNorm1d(128),
                nn.ReLU(),
                nn.Linear(128, 128),
                nn.BatchNorm1d(128),
                nn.ReLU(),
                nn.Linear(128, 10),
            )
            self.losses, self.norms, self.micro = [], [], []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, i):
            loss = F.cross_entropy(self(batch[0]), batch[1])
            self.micro.append(float(loss))
            if len(self.micro) == 8:
                self.losses.append(sum(self.micro) / 8)
                self.micro = []
            return loss

        def on_before_optimizer_step(self, opt):
            self.norms.append(_record_norm(self))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    def train(callbacks, root):
        import lightning.pytorch as pl

        torch.manual_seed(seed)
        x, y = teacher_cls(steps * 16 + 1000, 32, 10, seed)
        xt, yt = x[-1000:], y[-1000:]
        dl = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x[:-1000], y[:-1000]),
            batch_size=2,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        m = M()
        m0 = acc(m, xt, yt)
        died = False
        try:
            tr = pl.Trainer(
                max_steps=steps,
                max_epochs=-1,
                callbacks=callbacks,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=root,
                accelerator="cpu",
                devices=1,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                accumulate_grad_batches=8,
            )
            tr.fit(m, dl)
        except Exception as e:
            died = repr(e)[:200]
        t = trace_of(m.losses, m, m0, safe_metric(lambda: acc(m, xt, yt)), 1.0, died=bool(died))
        t["step_loss"], t["step_norm"], t["error"] = m.losses, m.norms, died
        return t

    return Spec(None, [], steps, train, kind="trainer")


BATCH2 = {
    "sgdr_restarts": sgdr_restarts,
    "dann_grl": dann_grl,
    "infonce_t005": infonce,
    "huber_outliers_b16": huber_outliers,
    "accum8_bn_mb2_pl": accum_bn_pl,
}
FAMILIES.update(BATCH2)
TWIN.update(
    {
        "sgdr_restarts": "SGD peak lr 100x (20)",
        "dann_grl": "Adam lr 100x (0.1)",
        "infonce_t005": "Adam lr 100x (0.1)",
        "huber_outliers_b16": "targets x1000 from step 150",
        "accum8_bn_mb2_pl": "SGD lr 100x (5.0)",
    }
)
