"""Families of runs that take a *shock* mid-run, for ``noisy_healthy.py``: four the run learns from, four it does not.

Written, with their expected outcome, before the detector was run on them. A shock lifts the loss and the gradient
norm at once. The healthy four: a regression whose target changes (another teacher, its scale 5x), classes 5-9
joining a digits CNN trained on 0-4, digits images inverted and shifted, a GRU whose sequence rule is reversed. The
failing four (the outcome decides; none trains fine on 9 or 10 of 10 seeds): a corrupted batch (inputs x1000) that
throws a digits MLP at the edge of stability off, a learning rate raised 300-1000x, a task switch with the learning
rate raised 100x, a data pipeline that starts shuffling labels and scaling inputs 30x in half the batches.

First run, 10 seeds each, with the detector's shock rules as first written: the healthy four alerted on 10, 0, 0
and 0 of 10 (30 before those rules: class-incremental 10 and the sequence rule 10), but 7 failing runs lost their
exploding alert. Those 7 led to the shock's bound (a jump within 10x of the highest first loss); with it, every
failing run's first alert is the one it had before the shock rules, and the regression whose target's scale grew
(its MSE 25x its first losses) is alerted on 10 of 10 healthy seeds: a limit (see the README).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from noisy_healthy import SmallCNN, Spec, Supervised, digits, mlp, prior_ce, stream_loader
from torch import Tensor, nn


# ---------------------------------------------------------------------------------------------------- helpers
def epochs_idx(n: int, steps: int, bs: int, g: torch.Generator) -> Tensor:
    """(steps, bs) indices into n rows: successive shuffled passes over the data."""
    reps = steps * bs // n + 1
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[: steps * bs].view(steps, bs)


def raised_at(at: int, factor: float) -> Callable[[torch.optim.Optimizer], dict[str, Any]]:
    """A per-step schedule (``Supervised``'s ``sched_fn``) multiplying the learning rate by ``factor`` from ``at``."""
    return lambda opt: {
        "scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < at else factor),
        "interval": "step",
    }


def sgd(lr: float, wd: float = 0.0) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=wd)


def adam(lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda p: torch.optim.Adam(p, lr=lr)


def ce_metric(xte: Tensor, yte: Tensor) -> Callable[[Supervised], float]:
    return lambda m: float(F.cross_entropy(m.net(xte), yte))


# ================================================================================================ healthy shocks
# --- a. drift_regression --------------------------------------------------------------------------------------------
def teacher_net(g: torch.Generator, d: int = 8, h: int = 32) -> Callable[[Tensor], Tensor]:
    w1 = torch.randn(d, h, generator=g) / math.sqrt(d) * 1.5
    b1 = torch.randn(h, generator=g) * 0.5
    w2 = torch.randn(h, 1, generator=g) / math.sqrt(h)
    return lambda x: torch.tanh(x @ w1 + b1) @ w2


def fam_drift_regression(seed: int) -> Spec:
    """Concept drift in regression: x ~ N(0, I_8); for steps 0-199 the target is a random tanh teacher net (8-32-1,
    standardised to mean 0, std 1) plus noise 0.1; from step 200 it is ANOTHER random teacher, scaled x5 and shifted
    by +2 (std 5, mean 2) plus noise 0.5. Student: ReLU MLP 8-64-64-1, MSE, batches of 64, SGD momentum 0.9 at lr
    0.005, 450 steps. Expected: the loss falls from ~1 to ~0.1-0.2 on teacher A; at step 200 it jumps to ~30 (25x the
    variance plus the shift) and the gradient norm jumps by one to two orders of magnitude (the residuals are ~30x
    larger); both stay up for some steps (momentum, the bias and scale relearned first) and the loss comes down to
    ~1-3 on teacher B (a few % of its variance) by the end. Metric: held-out MSE on teacher B's (noise-free) target;
    baseline: its variance (the constant mean predictor). Healthy expected on every seed."""
    g = torch.Generator().manual_seed(21000 + seed)
    ta, tb = teacher_net(g), teacher_net(g)
    xref = torch.randn(4000, 8, generator=g)
    ya_ref, yb_ref = ta(xref), tb(xref)
    ma, sa, mb, sb = ya_ref.mean(), ya_ref.std(), yb_ref.mean(), yb_ref.std()

    def fa(x: Tensor) -> Tensor:
        return (ta(x) - ma) / sa

    def fb(x: Tensor) -> Tensor:
        return 5 * (tb(x) - mb) / sb + 2

    steps, bs, switch = 450, 64, 200
    x = torch.randn(steps, bs, 8, generator=g)
    y = torch.empty(steps, bs, 1)
    y[:switch] = fa(x[:switch]) + 0.1 * torch.randn(switch, bs, 1, generator=g)
    y[switch:] = fb(x[switch:]) + 0.5 * torch.randn(steps - switch, bs, 1, generator=g)
    xte = torch.randn(2000, 8, generator=g)
    yte = fb(xte)
    model = Supervised(mlp([8, 64, 64, 1]), sgd(0.005), loss_fn=F.mse_loss)
    return Spec(
        model=model,
        train=stream_loader(x, y),
        max_steps=steps,
        metric=lambda m: float(F.mse_loss(m.net(xte), yte)),
        baseline=float(yte.var(unbiased=False)),
    )


# --- b. class_incremental -------------------------------------------------------------------------------------------
def fam_class_incremental(seed: int) -> Spec:
    """Class-incremental learning: the small CNN on the 8x8 digits sees only classes 0-4 for 150 steps, then batches
    drawn from all ten classes (new classes 5-9 appear) for 250 more; batches of 32, AdamW 2e-3 (weight decay 0.01).
    Expected: the loss falls to ~0.05 on 0-4; at step 150 it jumps to ~3-6 (half of each batch is a class the head
    has learned never to predict) and the gradient norm jumps by ~10-50x; within ~30-60 steps classes 5-9 are learned
    and the loss falls back to ~0.1-0.2. Metric: held-out cross-entropy on all ten classes; baseline the class
    prior's. Healthy expected on every seed."""
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(22000 + seed)
    steps, bs, widen = 400, 32, 150
    old = (ytr < 5).nonzero().flatten()
    idx = torch.empty(steps, bs, dtype=torch.long)
    idx[:widen] = old[epochs_idx(len(old), widen, bs, g)]
    idx[widen:] = epochs_idx(len(ytr), steps - widen, bs, g)
    model = Supervised(SmallCNN(), lambda p: torch.optim.AdamW(p, lr=2e-3, weight_decay=0.01))
    return Spec(
        model=model,
        train=stream_loader(xtr[idx], ytr[idx]),
        max_steps=steps,
        metric=ce_metric(xte, yte),
        baseline=prior_ce(yte, 10),
    )


# --- c. domain_shift_images ----------------------------------------------------------------------------------------
def shift_invert(x: Tensor, dx: int = 2) -> Tensor:
    """Digits (n, 64) shifted right by dx pixels (zero fill) and then inverted (1 - x): background 1, ink dark."""
    img = x.view(-1, 8, 8)
    out = torch.zeros_like(img)
    out[:, :, dx:] = img[:, :, : 8 - dx]
    return (1 - out).reshape(-1, 64)


def fam_domain_shift_images(seed: int) -> Spec:
    """Domain shift: the small CNN on the digits for 200 steps; from step 200 every image is shifted right by 2 pixels
    and inverted (1 - x: white background, dark ink) for 250 more; same labels; batches of 32, SGD momentum 0.9 at lr
    0.03 with weight decay 5e-4. Expected: the loss falls to ~0.1; at step 200 the inputs' energy jumps (most pixels
    go from 0 to 1), activations are far off, the loss jumps to ~3-10 and the gradient norm by ~10-30x; the features
    re-adapt and the loss falls back to ~0.2-0.4 within ~100 steps. Metric: held-out cross-entropy on the shifted,
    inverted test digits; baseline the class prior's. Healthy expected on every seed."""
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(23000 + seed)
    steps, bs, switch = 450, 32, 200
    idx = epochs_idx(len(ytr), steps, bs, g)
    x = xtr[idx].clone()
    x[switch:] = shift_invert(x[switch:].reshape(-1, 64)).view(steps - switch, bs, 64)
    xte_b = shift_invert(xte)
    model = Supervised(SmallCNN(), sgd(0.03, 5e-4))
    return Spec(
        model=model,
        train=stream_loader(x, ytr[idx]),
        max_steps=steps,
        metric=ce_metric(xte_b, yte),
        baseline=prior_ce(yte, 10),
    )


# --- d. seq_switch ----------------------------------------------------------------------------------------------------
class GRUClassifier(nn.Module):
    def __init__(self, d_in: int = 3, h: int = 64, k: int = 3) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, h, batch_first=True)
        self.out = nn.Linear(h, k)

    def forward(self, x: Tensor) -> Tensor:
        _, hn = self.gru(x)
        return self.out(hn[-1])


def fam_seq_switch(seed: int) -> Spec:
    """Rule switch on sequences: x is 20 steps of 3 channels ~ N(0, 1); for 200 steps the label is the channel with
    the LARGEST sum over time, from step 200 the channel with the SMALLEST sum (same inputs, the rule inverted); a GRU
    (3 -> 64) and a linear readout, cross-entropy, batches of 64, Adam 3e-3, 450 steps. Expected: the loss falls from
    log 3 to ~0.1-0.3 on rule A; at step 200 it jumps to ~3-6 (confident wrong answers on almost every sequence) and
    the gradient norm by ~10x; the GRU's running sums are reused, only the readout has to flip, so the loss comes
    down within ~50-100 steps to ~0.2-0.4. Metric: held-out cross-entropy under rule B; baseline the class prior's
    (log 3). Healthy expected on every seed."""
    g = torch.Generator().manual_seed(24000 + seed)
    steps, bs, switch, length = 450, 64, 200, 20
    x = torch.randn(steps, bs, length, 3, generator=g)
    s = x.sum(2)
    y = torch.cat([s[:switch].argmax(-1), s[switch:].argmin(-1)])
    xte = torch.randn(2000, length, 3, generator=g)
    yte = xte.sum(1).argmin(-1)
    model = Supervised(GRUClassifier(), adam(3e-3))
    return Spec(
        model=model, train=stream_loader(x, y), max_steps=steps, metric=ce_metric(xte, yte), baseline=prior_ce(yte, 3)
    )


# ================================================================================================ failing shocks
# --- e. corrupt_then_diverge -----------------------------------------------------------------------------------------
CORRUPT = 1000.0


def fam_corrupt_then_diverge(seed: int) -> Spec:
    """A corrupted batch that wrecks a run at its edge: a digits MLP (64-128-128-10) under SGD momentum 0.9 at lr 0.2
    (near the edge of stability for this net; it trains at first), batches of 32, 350 steps; at step 150 one batch has
    its inputs multiplied by 1000 (a broken preprocessing step). Expected: the loss falls to ~0.1; at step 150 the
    logits are ~1000x too large, the loss jumps to ~1e3-1e4 and the gradient norm by ~1e5-1e6x; that step (and the
    momentum carrying it for tens of steps) throws the weights far off: ReLUs die or logits stay huge, the loss goes
    to inf/nan or stays at or above chance with norms that keep jumping; the run does not recover. Metric: held-out
    cross-entropy; baseline the class prior's. NOT healthy expected (the outcome decides)."""
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(25000 + seed)
    steps, bs, at = 350, 32, 150
    idx = epochs_idx(len(ytr), steps, bs, g)
    x = xtr[idx].clone()
    x[at] = x[at] * CORRUPT
    model = Supervised(mlp([64, 128, 128, 10]), sgd(0.2))
    return Spec(
        model=model,
        train=stream_loader(x, ytr[idx]),
        max_steps=steps,
        metric=ce_metric(xte, yte),
        baseline=prior_ce(yte, 10),
    )


# --- f. lr_blowup ---------------------------------------------------------------------------------------------------
def fam_lr_blowup(seed: int) -> Spec:
    """A scheduler bug that wrecks the run: a digits MLP (64-128-128-10) under Adam 1e-3, batches of 32, 300 steps;
    from step 100 its LambdaLR multiplies the learning rate by 300, 500, 700 or 1000 (seed mod 4: lr 0.3-1.0).
    Expected: the loss falls to ~0.1 by step 100; then each Adam step moves every weight by ~lr (0.3-1.0): the loss
    jumps to ~1e1-1e3 within a few steps, the norm jumps then may collapse (dead ReLUs) or oscillate at a large value;
    the loss stays at or above chance. Metric: held-out cross-entropy; baseline the class prior's. NOT healthy
    expected (the outcome decides)."""
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(26000 + seed)
    steps, bs = 300, 32
    idx = epochs_idx(len(ytr), steps, bs, g)
    factor = [300.0, 500.0, 700.0, 1000.0][seed % 4]
    model = Supervised(mlp([64, 128, 128, 10]), adam(1e-3), sched_fn=raised_at(100, factor))
    return Spec(
        model=model,
        train=stream_loader(xtr[idx], ytr[idx]),
        max_steps=steps,
        variant=f"x{factor:.0f}",
        metric=ce_metric(xte, yte),
        baseline=prior_ce(yte, 10),
    )


# --- g. switch_plus_high_lr -------------------------------------------------------------------------------------------
def fam_switch_plus_high_lr(seed: int) -> Spec:
    """A bad restart: a digits MLP (64-128-128-10) under Adam 3e-3, batches of 32, 450 steps; at step 200 the task
    switches (every label renamed: y -> (y + k) mod 10, k = 1 + seed mod 9) AND the learning rate is multiplied by 100
    (0.3: a fine-tuning script restarting with a wrong lr). Expected: the loss falls to ~0.05 on the original labels;
    at step 200 it jumps to ~10 (confident wrong answers) and the norm by ~10-100x, as in a healthy task switch, but
    Adam's steps of ~0.3 per weight throw the net off: the loss stays high or goes to chance or above, norms stay
    erratic or collapse (dead ReLUs); the new labels are never learned. Metric: held-out cross-entropy on the renamed
    labels; baseline the class prior's. NOT healthy expected (the outcome decides)."""
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(27000 + seed)
    steps, bs, switch = 450, 32, 200
    k = 1 + seed % 9
    idx = epochs_idx(len(ytr), steps, bs, g)
    y = ytr[idx].clone()
    y[switch:] = (y[switch:] + k) % 10
    yte_b = (yte + k) % 10
    model = Supervised(mlp([64, 128, 128, 10]), adam(3e-3), sched_fn=raised_at(switch, 100.0))
    return Spec(
        model=model,
        train=stream_loader(xtr[idx], y),
        max_steps=steps,
        variant=f"k{k}",
        metric=ce_metric(xte, yte_b),
        baseline=prior_ce(yte_b, 10),
    )


# --- h. poisoned_stream -----------------------------------------------------------------------------------------------
def fam_poisoned_stream(seed: int) -> Spec:
    """A broken data pipeline: a digits MLP (64-128-128-10) under SGD momentum 0.9 at lr 0.05, batches of 32, 400
    steps; from step 150 on, each batch with probability 1/2 has its labels shuffled (a random permutation within the
    batch: no relation to the image) AND its inputs multiplied by 30. Expected: the loss falls to ~0.1; from step 150
    the poisoned batches give losses of ~10-100 (logits 30x) and gradient norms ~30-1000x; with SGD at 0.05 the
    curvature of the x30 batches (~900x) is far past the edge: the weights are thrown off again and again, the loss
    does not come back (it climbs, goes non-finite, or sits above chance with dead ReLUs). Metric: held-out
    cross-entropy on clean digits; baseline the class prior's. NOT healthy expected (the outcome decides)."""
    xtr, xte, ytr, yte = digits()
    g = torch.Generator().manual_seed(28000 + seed)
    steps, bs, start = 400, 32, 150
    idx = epochs_idx(len(ytr), steps, bs, g)
    x, y = xtr[idx].clone(), ytr[idx].clone()
    bad = torch.rand(steps, generator=g) < 0.5
    bad[:start] = False
    for s in bad.nonzero().flatten().tolist():
        x[s] = x[s] * 30
        y[s] = y[s][torch.randperm(bs, generator=g)]
    model = Supervised(mlp([64, 128, 128, 10]), sgd(0.05))
    return Spec(
        model=model, train=stream_loader(x, y), max_steps=steps, metric=ce_metric(xte, yte), baseline=prior_ce(yte, 10)
    )


FAMILIES: dict[str, Callable[[int], Spec]] = {
    "drift_regression": fam_drift_regression,
    "class_incremental": fam_class_incremental,
    "domain_shift_images": fam_domain_shift_images,
    "seq_switch": fam_seq_switch,
    "corrupt_then_diverge": fam_corrupt_then_diverge,
    "lr_blowup": fam_lr_blowup,
    "switch_plus_high_lr": fam_switch_plus_high_lr,
    "poisoned_stream": fam_poisoned_stream,
}
