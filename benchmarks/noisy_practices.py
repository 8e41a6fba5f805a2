"""Families of runs under training *practices* that make the loss or the gradient norm jump or drift by design, for
``noisy_healthy.py``: six that train fine, two failing twins.

Written, with their expected outcome, before the detector was run on them. The healthy six: DQN on a chain MDP with a
target network synced every 30 steps (the TD target jumps at each sync), BYOL with an EMA target and a negative-cosine
loss (it goes to -1), a GRU seq2seq under scheduled sampling (the training loss rises as teacher forcing is withdrawn),
progressive resizing of a global-pooling CNN (8x8 digits, then 16x16), global magnitude pruning of 80% of a digits
MLP's weights mid-run with ``torch.nn.utils.prune`` (the loss jumps and recovers; the weights are renamed
``weight_orig``), FGSM adversarial training mixed in mid-run. The failing twins (the outcome decides): DQN with no
target network, a discount of 0.99 and a too-high learning rate, and SimSiam with no stop-gradient (it collapses).
Three setups were fixed after a run without GradWatch and before any watched run (each family's docstring says how).

First run with GradWatch, 10 seeds each (80 runs, 152 s): every healthy-expected run trained fine (60 of 60) and
both twins failed on 10 of 10. False alarms: 11, all exploding: 9 of 10 on ``dqn_target`` (a trend at steps 213-490:
the TD loss climbs 8-20x from its best level between and across syncs as the targets grow towards Q*, the norm
5-10x) and 2 of 10 on ``progressive_resize`` (spikes at steps 202-203, the resize). ``dqn_no_target`` was alerted on
10 of 10 (first at steps 3-8); ``simsiam_collapse`` on 0 of 10 (its loss at -1 and its norm 300x down look like a
converged run).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from noisy_healthy import Base, Spec, Supervised, digits, mlp, prior_ce, stream_loader
from noisy_shocks import adam, ce_metric, epochs_idx
from torch import Tensor, nn
from torch.nn.utils import prune


# ---------------------------------------------------------------------------------------------------- helpers
def digits_stream(seed: int, base: int, steps: int, bs: int = 32, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(steps, bs, 64) images and (steps, bs) labels: shuffled passes over the digits' training split (or its rows
    ``keep``)."""
    xtr, _, ytr, _ = digits()
    if keep is not None:
        xtr, ytr = xtr[keep], ytr[keep]
    idx = epochs_idx(len(ytr), steps, bs, torch.Generator().manual_seed(base + seed))
    return xtr[idx], ytr[idx]


# ================================================================================================ healthy practices
# --- a. dqn_target: DQN with a target network on a chain MDP ---------------------------------------------------------
class Chain:
    """A chain of ``n`` states, actions left/right that slip (go the other way) with probability ``slip``; reward 1 for
    arriving at (or staying in) the right end, 0.2 for arriving at the left end. Q* by value iteration."""

    def __init__(self, n: int = 12, slip: float = 0.2, gamma: float = 0.9) -> None:
        self.n, self.slip, self.gamma = n, slip, gamma
        q = torch.zeros(n, 2, dtype=torch.float64)
        for _ in range(2000):
            v = q.max(1).values
            q = torch.stack(
                [(1 - slip) * self._ev(s, a, v) + slip * self._ev(s, 1 - a, v) for s in range(n) for a in (0, 1)]
            ).view(n, 2)
        self.q_star = q.float()

    def move(self, s: int, d: int) -> tuple[int, float]:
        s2 = min(max(s + (1 if d == 1 else -1), 0), self.n - 1)
        return s2, 1.0 if s2 == self.n - 1 else (0.2 if s2 == 0 else 0.0)

    def _ev(self, s: int, d: int, v: Tensor) -> Tensor:
        s2, r = self.move(s, d)
        return r + self.gamma * v[s2]

    def transitions(self, g: torch.Generator, count: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``count`` transitions (s, a, r, s') from uniformly random states and actions: an offline replay buffer."""
        s = torch.randint(0, self.n, (count,), generator=g)
        a = torch.randint(0, 2, (count,), generator=g)
        slipped = torch.rand(count, generator=g) < self.slip
        d = torch.where(slipped, 1 - a, a)
        moved = [self.move(int(si), int(di)) for si, di in zip(s, d)]
        s2 = torch.tensor([m[0] for m in moved])
        r = torch.tensor([m[1] for m in moved])
        return s, a, r, s2


def state_features(s: Tensor, n: int, kind: str) -> Tensor:
    """One-hot states, or smooth features of the position (which generalise across states)."""
    if kind == "onehot":
        return F.one_hot(s, n).float()
    u = s.float()[:, None] / (n - 1)
    return torch.cat([u, u**2, torch.sin(3.0 * u), torch.cos(3.0 * u), torch.ones_like(u)], 1)


class DQN(Base):
    """Q-learning on a replay buffer: Huber loss to ``r + gamma * max_a' Q_target(s', a')``. The target network is a
    registered copy (as in Lightning's DQN example: not frozen, not in the optimizer) loaded from the online network
    every ``sync`` steps; with ``sync=None`` the target is the online network itself (detached)."""

    def __init__(self, env: Chain, kind: str, sync: int | None, lr: float, hidden: int = 64) -> None:
        super().__init__()
        self.env, self.kind, self.sync, self.lr = env, kind, sync, lr
        d = env.n if kind == "onehot" else 5
        self.net = mlp([d, hidden, hidden, 2])
        self.target = copy.deepcopy(self.net) if sync else None

    def q(self, s: Tensor) -> Tensor:
        return self.net(state_features(s, self.env.n, self.kind))

    def compute_loss(self, batch: Any) -> Tensor:
        s, a, r, s2 = batch
        if self.sync and self.global_step % self.sync == 0:
            self.target.load_state_dict(self.net.state_dict())
        with torch.no_grad():
            nxt = self.target if self.sync else self.net
            y = r + self.env.gamma * nxt(state_features(s2, self.env.n, self.kind)).max(1).values
        q = self.q(s).gather(1, a[:, None]).squeeze(1)
        return F.smooth_l1_loss(q, y)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


def q_error(m: DQN) -> float:
    return float(F.mse_loss(m.q(torch.arange(m.env.n)), m.env.q_star))


def fam_dqn_target(seed: int) -> Spec:
    """DQN on a 12-state chain MDP (slip 0.2, discount 0.9; Q* from 1.0 to 10), one-hot states, an MLP 12-64-64-2,
    Huber loss, batches of 64 from an offline replay buffer of 20000 uniformly random transitions, Adam 3e-3, 600
    steps, a target network synced every 30 steps (Lightning's DQN example's layout). Expected: between syncs the
    loss falls as the online net fits the fixed target; at each sync the targets jump (by up to ~gamma times the
    change since the last sync, early on ~1 per sync) and the loss and norm jump with them, a saw-tooth of 20 teeth,
    decaying as value iteration converges (0.9^20 ~ 0.12). Metric: MSE of Q over all 24 (state, action) pairs to Q*;
    baseline: Q*'s variance (the best constant Q). Healthy expected on every seed."""
    env = Chain()
    g = torch.Generator().manual_seed(31000 + seed)
    steps, bs = 600, 64
    s, a, r, s2 = env.transitions(g, 20000)
    idx = torch.randint(0, 20000, (steps, bs), generator=g)
    return Spec(
        model=DQN(env, "onehot", sync=30, lr=3e-3),
        train=stream_loader(s[idx], a[idx], r[idx], s2[idx]),
        max_steps=steps,
        metric=q_error,
        baseline=float(env.q_star.var(unbiased=False)),
    )


# --- b. byol_ema: BYOL with an EMA target, negative-cosine loss ------------------------------------------------------
def nuisance_data(g: torch.Generator, n: int, k: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    """Class signal (k centroids in 8 dims, noise 0.3) and 56 nuisance dims: (signal, labels, a fixed rotation)."""
    centroids = torch.randn(k, 8, generator=torch.Generator().manual_seed(32500)) * 1.5
    rot = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(32600)))[0]
    y = torch.randint(0, k, (n,), generator=g)
    return centroids[y] + 0.3 * torch.randn(n, 8, generator=g), y, rot


def nuisance_view(signal: Tensor, rot: Tensor, g: torch.Generator | None = None) -> Tensor:
    """A view: the signal jittered (std 0.2) and 56 fresh nuisance dims (std 2), mixed by a fixed rotation."""
    jit = signal + 0.2 * torch.randn(signal.shape, generator=g)
    noise = 2.0 * torch.randn(len(signal), 56, generator=g)
    return torch.cat([jit, noise], 1) @ rot


def knn_error(enc: nn.Module, xa: Tensor, ya: Tensor, xb: Tensor, yb: Tensor, k: int = 5) -> float:
    """Held-out error of a k-nearest-neighbour (cosine) classifier on the encoder's features."""
    za, zb = F.normalize(enc(xa), dim=1), F.normalize(enc(xb), dim=1)
    nn_idx = (zb @ za.T).topk(k, dim=1).indices
    votes = F.one_hot(ya[nn_idx], int(ya.max()) + 1).sum(1)
    return float((votes.argmax(1) != yb).float().mean())


def head(bn: bool) -> nn.Module:
    """A projector / predictor 32-64-32: BYOL's Linear, BatchNorm, ReLU, Linear, or a plain MLP (``bn=False``)."""
    return (
        nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32)) if bn else mlp([32, 64, 32])
    )


class SelfSupervised(Base):
    """An encoder, a projector, a predictor; negative cosine between the online prediction of one view and the target
    projection of the other, symmetrised. ``ema`` set: BYOL (the target an EMA copy, frozen, updated after each step);
    ``ema=None, stop_grad=False``: SimSiam without its stop-gradient (the target is the online branch, undetached)."""

    def __init__(self, rot: Tensor, ema: float | None, stop_grad: bool, lr: float, bn: bool = True) -> None:
        super().__init__()
        self.rot, self.ema, self.stop_grad, self.lr = rot, ema, stop_grad, lr
        self.encoder = mlp([64, 128, 32])
        self.projector = head(bn)
        self.predictor = head(bn)
        if ema is not None:
            self.t_encoder, self.t_projector = copy.deepcopy(self.encoder), copy.deepcopy(self.projector)
            self.t_encoder.requires_grad_(False)
            self.t_projector.requires_grad_(False)

    def target(self, x: Tensor) -> Tensor:
        if self.ema is not None:
            return self.t_projector(self.t_encoder(x))
        z = self.projector(self.encoder(x))
        return z.detach() if self.stop_grad else z

    def compute_loss(self, batch: Any) -> Tensor:
        (signal,) = batch
        v1, v2 = nuisance_view(signal, self.rot), nuisance_view(signal, self.rot)
        p1, p2 = self.predictor(self.projector(self.encoder(v1))), self.predictor(self.projector(self.encoder(v2)))
        return -0.5 * (
            F.cosine_similarity(p1, self.target(v2)).mean() + F.cosine_similarity(p2, self.target(v1)).mean()
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is None:
            return
        with torch.no_grad():
            for online, tgt in ((self.encoder, self.t_encoder), (self.projector, self.t_projector)):
                for p, tp in zip(online.parameters(), tgt.parameters()):
                    tp.mul_(self.ema).add_(p, alpha=1 - self.ema)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def ssl_spec(seed: int, base: int, **kw: Any) -> Spec:
    g = torch.Generator().manual_seed(base + seed)
    steps, bs = 400, 128
    signal, _, rot = nuisance_data(g, steps * bs)
    gp = torch.Generator().manual_seed(32700)
    sa, ya, _ = nuisance_data(gp, 1000)
    sb, yb, _ = nuisance_data(gp, 500)
    xa, xb = nuisance_view(sa, rot, gp), nuisance_view(sb, rot, gp)
    return Spec(
        model=SelfSupervised(rot, **kw),
        train=stream_loader(signal.view(steps, bs, 8)),
        max_steps=steps,
        metric=lambda m: knn_error(m.encoder, xa, ya, xb, yb),
        baseline=0.8,
    )


def fam_byol_ema(seed: int) -> Spec:
    """BYOL on vectors whose class lives in 8 of 64 (rotated) dimensions under 56 nuisance dimensions of std 2 (the
    signal: 5 class centroids of std 1.5, noise 0.3): the two views share the signal (jittered, std 0.2) and draw
    fresh nuisance. Encoder 64-128-32, projector and predictor 32-64-32 MLPs; the target encoder and projector are an
    EMA (0.99) of the online ones, frozen (``requires_grad_(False)``); the projector and predictor are BYOL's
    Linear-BatchNorm-ReLU-Linear; loss: minus the mean cosine similarity between
    each view's online prediction and the other view's target projection (symmetrised), batches of 128, Adam 1e-3, 400
    steps. Expected: the loss goes from ~0 to about -0.9 to -1 (it is negative throughout); the norm stays small and
    drifts (cosine gradients shrink as predictions align, the EMA target moves). Metric: held-out 5-NN (cosine) error
    on the encoder's features of one view per point (1000 labelled, 500 held out); baseline: chance error 0.8. The
    random encoder sees mostly nuisance (start error ~0.6-0.75); BYOL learns the nuisance-invariant signal (end error
    ~0-0.1). Healthy expected on every seed. Setup fixed once before any watched run: first written with plain MLP
    heads (no BatchNorm), 2 of 4 seeds' encoders partly collapsed (loss -0.998, 5-NN error 0.47-0.55: not healthy by
    the outcome); with BYOL's BatchNorm heads 10 of 10 train fine (loss about -0.5 by step 50, -0.85 to -0.93 by the
    end; 5-NN error 0.00-0.05)."""
    return ssl_spec(seed, 32000, ema=0.99, stop_grad=True, lr=1e-3)


# --- c. scheduled_sampling: a GRU seq2seq with teacher forcing withdrawn ---------------------------------------------
class Seq2Seq(Base):
    """A GRU encoder reads the tokens, a GRU decoder writes them reversed; the decoder's input at each position is the
    previous target token with probability ``tf(step)`` (teacher forcing), else the model's own previous argmax."""

    def __init__(self, vocab: int, tf: Callable[[int], float], lr: float) -> None:
        super().__init__()
        self.vocab, self.tf, self.lr = vocab, tf, lr
        self.emb = nn.Embedding(vocab + 1, 32)  # the last token: start of output
        self.enc = nn.GRU(32, 96, batch_first=True)
        self.dec = nn.GRUCell(32, 96)
        self.out = nn.Linear(96, vocab)

    def decode(self, src: Tensor, tgt: Tensor, ratio: float, g: torch.Generator | None = None) -> Tensor:
        _, h = self.enc(self.emb(src))
        h = h[0]
        prev = torch.full((len(src),), self.vocab)
        logits = []
        for t in range(tgt.shape[1]):
            h = self.dec(self.emb(prev), h)
            lo = self.out(h)
            logits.append(lo)
            if ratio >= 1.0:
                prev = tgt[:, t]
            elif ratio <= 0.0:
                prev = lo.argmax(1)
            else:
                use = torch.rand(len(src), generator=g) < ratio
                prev = torch.where(use, tgt[:, t], lo.argmax(1))
        return torch.stack(logits, 1)

    def compute_loss(self, batch: Any) -> Tensor:
        (src,) = batch
        tgt = src.flip(1)
        logits = self.decode(src, tgt, self.tf(int(self.global_step)))
        return F.cross_entropy(logits.reshape(-1, self.vocab), tgt.reshape(-1))

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fam_scheduled_sampling(seed: int) -> Spec:
    """Scheduled sampling: reverse sequences of 7 tokens (vocabulary 8) with a GRU encoder-decoder (hidden 96), batches
    of 64, Adam 3e-3, 500 steps; the teacher-forcing ratio is 1 for steps 0-99, falls linearly to 0 by step 350 and
    stays 0 (each decoder input is, per sequence, the true previous token with that probability, else the model's
    own argmax). Expected: under full teacher forcing the loss falls from log 8 (2.08) to ~0.5-1 (the first
    positions are learnt first); as the ratio falls the model's own mistakes are fed back and the training loss stops
    falling or rises (by design) for ~100 steps while free-running accuracy improves; it ends ~0.05-0.3. Metric:
    held-out cross-entropy of free-running (greedy, ratio 0) decoding on 500 sequences; baseline: the uniform
    predictor's log 8. Healthy expected on every seed. Run without GradWatch (seeds 0-1): the loss is ~0.45 at step
    100, rises to ~1.0 by step 200-250 and is ~0.7 at the end; the free-running metric ends at 0.65-0.70 (short of
    the ~0.05-0.3 expected, well under 0.7 x log 8)."""
    vocab, length, steps, bs = 8, 7, 500, 64
    g = torch.Generator().manual_seed(33000 + seed)
    src = torch.randint(0, vocab, (steps, bs, length), generator=g)
    te = torch.randint(0, vocab, (500, length), generator=torch.Generator().manual_seed(33500))

    def tf(step: int) -> float:
        return 1.0 if step < 100 else max(0.0, 1.0 - (step - 100) / 250)

    def metric(m: Seq2Seq) -> float:
        return float(F.cross_entropy(m.decode(te, te.flip(1), 0.0).reshape(-1, vocab), te.flip(1).reshape(-1)))

    return Spec(
        model=Seq2Seq(vocab, tf, 3e-3),
        train=stream_loader(src),
        max_steps=steps,
        metric=metric,
        baseline=float(torch.log(torch.tensor(float(vocab)))),
    )


# --- d. progressive_resize: a global-pooling CNN on 8x8 digits, then 16x16 --------------------------------------------
class PoolCNN(nn.Module):
    """Three 3x3 convolutions, global average pooling, a linear head: any input size."""

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64, k)

    def forward(self, img: Tensor) -> Tensor:
        h = F.relu(self.c1(img))
        h = F.max_pool2d(F.relu(self.c2(h)), 2)
        h = F.relu(self.c3(h))
        return self.fc(h.mean((2, 3)))


def resize(x: Tensor, size: int) -> Tensor:
    img = x.view(-1, 1, 8, 8)
    return img if size == 8 else F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)


class Progressive(Supervised):
    """Cross-entropy on the digits at 8x8 before step ``at``, upsampled to 16x16 from it (the data pipeline's size)."""

    def __init__(self, at: int) -> None:
        super().__init__(PoolCNN(), lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01))
        self.at = at

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(resize(x, 8 if self.global_step < self.at else 16)), y)


def fam_progressive_resize(seed: int) -> Spec:
    """Progressive resizing: a global-average-pooling CNN (three 3x3 convolutions of 16/32/64 channels, one 2x2 max
    pool, a linear head) trained on the 8x8 digits for 200 steps, then on the same digits bilinearly upsampled to 16x16
    for 250 more; batches of 32, AdamW 3e-3 (weight decay 0.01). Expected: the loss falls to ~0.1-0.3 at
    8x8; at step 200 every feature map sees strokes twice as wide and the pooled features shift: the loss jumps (to
    ~0.5-3) and the norm with it, then falls back to ~0.1-0.2 within ~50-100 steps (larger images are easier).
    Metric: held-out cross-entropy at 16x16; baseline the class prior's. Healthy expected on every seed. First
    written with SGD momentum at 0.05: the loss stayed at ~2.2-2.3 through the 8x8 phase (no shock to test), so the
    optimizer became AdamW before any watched run; then the loss is ~0.1-0.4 at step 199, 5-7 at step 200 (the norm
    ~35-40, 10-20x), ~1.5 by step 220 and 0.3-0.5 at the end."""
    _, xte, _, yte = digits()
    x, y = digits_stream(seed, 34000, 450)
    return Spec(
        model=Progressive(200),
        train=stream_loader(x, y),
        max_steps=450,
        metric=lambda m: float(F.cross_entropy(m.net(resize(xte, 16)), yte)),
        baseline=prior_ce(yte, 10),
    )


# --- e. prune_mid: global magnitude pruning of 80% of the weights at step 150 --------------------------------------
class Pruned(Supervised):
    """At step ``at`` (before its forward) prunes ``amount`` of the Linear weights by global magnitude with
    ``torch.nn.utils.prune`` (each ``weight`` becomes ``weight_orig`` times a fixed ``weight_mask``), and trains on."""

    def __init__(self, at: int, amount: float, opt_fn: Callable, sched_fn: Callable | None = None) -> None:
        super().__init__(mlp([64, 256, 256, 10]), opt_fn, sched_fn)
        self.at, self.amount = at, amount

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.global_step == self.at:
            layers = [(m, "weight") for m in self.net if isinstance(m, nn.Linear)]
            prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=self.amount)


def fam_prune_mid(seed: int) -> Spec:
    """One-shot pruning mid-run: a digits MLP 64-256-256-10, Adam 1e-3, batches of 32, 400 steps; at step 150 the 80%
    of its Linear weights smallest in magnitude (global) are pruned with ``torch.nn.utils.prune.global_unstructured``
    and stay masked (the parameters are renamed ``weight_orig``; the optimizer keeps the same tensors and their
    state). Expected: the loss is ~0.05-0.1 at step 150; pruning jumps it (to ~0.3-2, more on some seeds) and the
    gradient norm by ~5-20x; the remaining 20% retrain and the loss is back to ~0.05-0.1 within ~50-100 steps.
    Metric: held-out cross-entropy; baseline the class prior's. Healthy expected on every seed."""
    _, xte, _, yte = digits()
    x, y = digits_stream(seed, 35000, 400)
    return Spec(
        model=Pruned(150, 0.8, adam(1e-3)),
        train=stream_loader(x, y),
        max_steps=400,
        metric=ce_metric(xte, yte),
        baseline=prior_ce(yte, 10),
    )


# --- f. adversarial_fgsm: FGSM examples mixed in from step 150 --------------------------------------------------------
def fgsm(net: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Inputs moved by ``eps`` along the sign of the loss's input gradient, clipped to [0, 1] (no parameter grads)."""
    with torch.enable_grad():
        xa = x.detach().clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(F.cross_entropy(net(xa), y), xa)
    return (x + eps * gx.sign()).clamp(0, 1).detach()


class Adversarial(Supervised):
    """Cross-entropy on clean batches; from step ``at``, on the batch's clean half and its other half's FGSM copy."""

    def __init__(self, at: int, eps: float) -> None:
        super().__init__(mlp([64, 256, 256, 10]), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
        self.at, self.eps = at, eps

    def compute_loss(self, batch: Any) -> Tensor:
        x, y = batch
        if self.global_step >= self.at:
            h = len(x) // 2
            x = torch.cat([x[:h], fgsm(self.net, x[h:], y[h:], self.eps)])
        return F.cross_entropy(self.net(x), y)


def fam_adversarial_fgsm(seed: int) -> Spec:
    """Adversarial training switched on mid-run: a digits MLP 64-256-256-10, SGD momentum 0.9 at 0.05, batches of 32,
    450 steps; from step 150 half of each batch is replaced by its FGSM copy (eps 0.1 on pixels in [0, 1], the
    gradient taken with ``torch.autograd.grad``, no parameter grads). Expected: the loss is ~0.1 at step 150; the
    adversarial half's loss is ~2-5 at first (the clean-trained MLP is fragile), the batch loss jumps to ~1-3 and the
    norm by ~5-10x; both come down as the net becomes robust, and the loss settles at ~0.3-0.6 (the adversarial half
    stays harder). Metric: held-out mean of the clean and the FGSM (eps 0.1) cross-entropy; baseline the class
    prior's. Healthy expected on every seed."""
    _, xte, _, yte = digits()
    x, y = digits_stream(seed, 36000, 450)

    def metric(m: Adversarial) -> float:
        clean = F.cross_entropy(m.net(xte), yte)
        adv = F.cross_entropy(m.net(fgsm(m.net, xte, yte, 0.1)), yte)
        return float(0.5 * (clean + adv))

    return Spec(
        model=Adversarial(150, 0.1), train=stream_loader(x, y), max_steps=450, metric=metric, baseline=prior_ce(yte, 10)
    )


# ================================================================================================ failing twins
# --- g. dqn_no_target: no target network, discount 0.99, a too-high learning rate -----------------------------------
def fam_dqn_no_target(seed: int) -> Spec:
    """The deadly triad: DQN on the same chain MDP with discount 0.99 (Q* ~ 19-100), no target network (bootstrapping
    from the online network's own detached output), smooth position features (u, u^2, sin 3u, cos 3u, 1 with
    u = s / 11: they generalise across states), an MLP 5-64-64-2, Huber loss, batches of 64 from the offline buffer,
    Adam at 3e-2 (too high), 600 steps. Expected: the bootstrapped targets chase the online net's own output: Q
    grows without bound or oscillates (the loss, Huber, grows ~linearly with the TD error; the norm grows as the
    weights do), far from Q*. Metric: MSE of Q to Q*; baseline: Q*'s variance. NOT healthy expected (the outcome
    decides)."""
    env = Chain(gamma=0.99)
    g = torch.Generator().manual_seed(37000 + seed)
    steps, bs = 600, 64
    s, a, r, s2 = env.transitions(g, 20000)
    idx = torch.randint(0, 20000, (steps, bs), generator=g)
    return Spec(
        model=DQN(env, "smooth", sync=None, lr=3e-2),
        train=stream_loader(s[idx], a[idx], r[idx], s2[idx]),
        max_steps=steps,
        metric=q_error,
        baseline=float(env.q_star.var(unbiased=False)),
    )


# --- h. simsiam_collapse: SimSiam without its stop-gradient ----------------------------------------------------------
def fam_simsiam_collapse(seed: int) -> Spec:
    """SimSiam with its stop-gradient forgotten: the BYOL family's data, encoder, projector and predictor, no EMA
    target, the target branch the online projector's output NOT detached (gradients flow through both branches), the
    projector and predictor plain MLPs (no BatchNorm), batches of 128, Adam 1e-3, 400 steps. Expected: the symmetric
    negative cosine is minimised by a constant output: the loss drops to -1 within tens of steps and stays (it looks
    better than BYOL's), the norm falls towards zero as the collapsed outputs stop depending on the input. Metric:
    held-out 5-NN error on the encoder's features; baseline chance (0.8): the collapsed features carry little class
    information and the error stays at or near the random encoder's. NOT healthy expected (the outcome decides). First
    written with BYOL's BatchNorm heads: 2 of 3 seeds kept class information (5-NN error 0.27-0.33, healthy by the
    outcome), so the heads are plain; then 0 of 10 train fine (loss -0.995 by step 50, 5-NN error 0.60-0.71)."""
    return ssl_spec(seed, 38000, ema=None, stop_grad=False, lr=1e-3, bn=False)


FAMILIES: dict[str, Callable[[int], Spec]] = {
    "dqn_target": fam_dqn_target,
    "byol_ema": fam_byol_ema,
    "scheduled_sampling": fam_scheduled_sampling,
    "progressive_resize": fam_progressive_resize,
    "prune_mid": fam_prune_mid,
    "adversarial_fgsm": fam_adversarial_fgsm,
    "dqn_no_target": fam_dqn_no_target,
    "simsiam_collapse": fam_simsiam_collapse,
}
