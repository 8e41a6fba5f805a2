"""Families of runs with an EVENT mid-run, for ``noisy_healthy.py``: things that happen during real training and move
the loss or the gradient norm at one step (or, for gradient noise, all along); eleven healthy families, three
failing twins.

Written, with their expected outcome, before the detector was run on them (held out: written without reading the
detector's rules). The healthy eleven: Adam's state lost on resume (fresh moments at the same lr), the batch size
changed mid-run (128 -> 8 or 16 -> 512), Adam switched to SGD momentum mid-run (SWATS-like), a soft orthogonality
penalty switched on abruptly with weight 1, dropout raised or label smoothing introduced mid-run, a small training
set memorised (the training loss and the gradient go to ~0, legitimately), a linear decay of the learning rate to
exactly 0 (at the end, or too early: the last steps at lr 0), a data pipeline bug fixed mid-run (raw 0-16 pixels,
then /16 as the test set is), a frozen pretrained encoder with only a head training for 3/4 of the run, then
unfrozen, a sequence-length warm-up (a GRU on length 10, then 40), annealed gradient noise injection. The failing
three (the outcome decides): Adam's fresh state at 100x the learning rate, the SGD switch at a badly scaled
learning rate, the orthogonality penalty at weight 1000. Two setups were fixed after a run without
GradWatch and before any watched run (``aux_ortho_on`` and ``adam_state_lost_hot``: their docstrings say how).

First run with GradWatch, 10 seeds each (140 runs, 154 s): every healthy-expected run trained fine (110 of 110);
5 false alarms, all *exploding* (rule ``spikes``) just after the event: ``batch_size_change`` seed 6 (shrink, step
153) and ``seq_len_warmup`` seeds 1, 3, 5, 8 (steps 203-205; its norm jumped ~10x, more than the 1-5x expected).
``adam_state_lost_hot`` failed on 7 of 10, all 7 alerted *vanishing* (``layers`` on 6, ``stall`` on 1, steps
251-292), none of its 3 healthy runs alerted; ``adam_to_sgd_hot`` failed on 10 of 10, all alerted (*exploding*
``spikes`` at 153-157 on 6, *vanishing* ``layers`` at 204-239 on 4); ``aux_ortho_hot`` failed on 10 of 10 (NaN),
all alerted (*exploding* ``spikes`` at 201, then *nonfinite* at 203). Outcomes without GradWatch (seed 0 of each)
are the same.

Then the spike rule judged a shock on every batch's loss: when the loss jumps with the first spike, the norm
compounds only while each loss since climbs past where the jump put it. The same 140 runs: 2 false alarms
(``seq_len_warmup`` seeds 1 and 8, at 206 and 205: a flat run of 7 spikes whose loss stays at the jump's level, and
a loss that doubles over the 5 steps after the jump), every failing twin's alerts unchanged. And a flat run of
spikes after a shock is judged only while its losses climb too (a loss that stays up far from where training
started is the trend rule's): 1 (seed 8), the twins unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from noisy_healthy import Spec, Supervised, digits, mlp, prior_ce, stream_loader
from noisy_practices import digits_stream
from noisy_recipes import pretrained_0to4
from noisy_shocks import ce_metric, epochs_idx
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


# ---------------------------------------------------------------------------------------------------- helpers
class Evented(Supervised):
    """``Supervised`` with ``events``: ``{step: fn(module)}``, each called at that optimizer step's batch start (before
    its forward), i.e. after ``step`` optimizer steps."""

    def __init__(
        self,
        net: nn.Module,
        opt_fn: Callable | None,
        sched_fn: Callable | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        events: dict[int, Callable[[Any], None]] | None = None,
    ) -> None:
        super().__init__(net, opt_fn, sched_fn, loss_fn)
        self.events = events or {}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        fn = self.events.get(int(self.global_step))
        if fn is not None:
            fn(self)


class Batches(Dataset):
    """A list of pre-drawn batches (of any sizes), served in order with ``batch_size=None``."""

    def __init__(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.batches[i]


def adam(lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda p: torch.optim.Adam(p, lr=lr)


def sgd(lr: float) -> Callable[[Any], torch.optim.Optimizer]:
    return lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9)


def digits_test() -> tuple[Callable[[Supervised], float], float]:
    _, xte, _, yte = digits()
    return ce_metric(xte, yte), prior_ce(yte, 10)


def fresh_state(lr: float) -> Callable[[Any], None]:
    """An event: the optimizer's state is dropped (as when a run is resumed from the weights alone: new Adam moments,
    step count 0) and its learning rate set to ``lr``."""

    def fn(m: Any) -> None:
        opt = m.trainer.optimizers[0]
        opt.state.clear()
        for g in opt.param_groups:
            g["lr"] = lr

    return fn


# ================================================================================================ healthy events
# --- a. adam_state_lost -----------------------------------------------------------------------------------------------
def fam_adam_state_lost(seed: int) -> Spec:
    """Adam's state lost on resume: a digits MLP 64-128-128-10, Adam 1e-3, batches of 32, 400 steps; at step 200 the
    optimizer's state is cleared (first and second moments and the step count back to zero, as after resuming from
    the weights alone) and training goes on at the same lr (one Trainer and one GradWatch see the whole run).
    Expected: the loss is ~0.05-0.1 at step 200; the first steps after the reset are ~lr-sized sign steps on every
    weight (bias-corrected m/sqrt(v) = +-1), larger than the late run's Adam steps on weights whose gradients are
    small and noisy: the loss bumps a little (to ~0.1-0.4 for a few steps) and the gradient norm by ~1-3x, then both
    settle within ~20-50 steps. Metric: held-out cross-entropy; baseline the class prior's. Healthy expected on every
    seed."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 61000, 400)
    model = Evented(mlp([64, 128, 128, 10]), adam(1e-3), events={200: fresh_state(1e-3)})
    return Spec(model=model, train=stream_loader(x, y), max_steps=400, metric=metric, baseline=base)


# --- b. batch_size_change ---------------------------------------------------------------------------------------------
def fam_batch_size_change(seed: int) -> Spec:
    """The batch size changed mid-run at the same lr: a digits MLP 64-128-128-10, SGD momentum 0.9 at 0.02, 400 steps;
    even seeds ("shrink") batches of 128 for 150 steps then of 8 (a memory-saving config change: the gradient's noise
    grows ~4x), odd seeds ("grow") batches of 16 then of 512 (the "increase the batch size instead of decaying the
    lr" practice: the noise falls ~5.7x). Expected: shrink: the loss ~0.2 at step 150 becomes a noisy 0-1 per batch,
    the gradient norm jumps ~2-4x and fluctuates, the held-out loss keeps falling slowly (~0.1-0.2); grow: the loss
    smooths, the gradient norm drops ~2-5x at once (a step down, not a decay) and the loss keeps falling. Metric:
    held-out cross-entropy; baseline the class prior's. Healthy expected on every seed."""
    xtr, _, ytr, _ = digits()
    metric, base = digits_test()
    g = torch.Generator().manual_seed(62000 + seed)
    steps, at = 400, 150
    shrink = seed % 2 == 0
    b1, b2 = (128, 8) if shrink else (16, 512)
    i1 = epochs_idx(len(ytr), at, b1, g)
    i2 = epochs_idx(len(ytr), steps - at, b2, g)
    batches = [(xtr[i], ytr[i]) for i in i1] + [(xtr[i], ytr[i]) for i in i2]
    model = Evented(mlp([64, 128, 128, 10]), sgd(0.02))
    return Spec(
        model=model,
        train=DataLoader(Batches(batches), batch_size=None, shuffle=False),
        max_steps=steps,
        metric=metric,
        baseline=base,
        variant="shrink" if shrink else "grow",
    )


# --- c. adam_to_sgd ---------------------------------------------------------------------------------------------------
class AdamThenSGD(torch.optim.Optimizer):
    """Adam (betas 0.9, 0.999, eps 1e-8) at ``adam_lr`` for ``switch`` steps, then SGD with (heavy-ball) momentum at
    ``sgd_lr``, its buffer starting from the first SGD step's gradient: a SWATS-like switch at a fixed step."""

    def __init__(self, params: Any, adam_lr: float, sgd_lr: float, switch: int, momentum: float = 0.9) -> None:
        super().__init__(params, {"lr": adam_lr})
        self.adam_lr, self.sgd_lr, self.switch, self.momentum = adam_lr, sgd_lr, switch, momentum
        self.t = 0

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.t += 1
        use_sgd = self.t > self.switch
        for group in self.param_groups:
            group["lr"] = lr = self.sgd_lr if use_sgd else self.adam_lr
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if use_sgd:
                    if "buf" not in st:
                        st["buf"] = p.grad.clone()
                    else:
                        st["buf"].mul_(self.momentum).add_(p.grad)
                    p.add_(st["buf"], alpha=-lr)
                else:
                    if not st:
                        st["m"], st["v"], st["k"] = torch.zeros_like(p), torch.zeros_like(p), 0
                    st["k"] += 1
                    st["m"].mul_(0.9).add_(p.grad, alpha=0.1)
                    st["v"].mul_(0.999).addcmul_(p.grad, p.grad, value=0.001)
                    mhat = st["m"] / (1 - 0.9 ** st["k"])
                    vhat = st["v"] / (1 - 0.999 ** st["k"])
                    p.addcdiv_(mhat, vhat.sqrt().add_(1e-8), value=-lr)
        # the lr the next step will use (what a scheduler-free optimizer shows between steps)
        for group in self.param_groups:
            group["lr"] = self.sgd_lr if self.t + 1 > self.switch else self.adam_lr
        return loss


def fam_adam_to_sgd(seed: int) -> Spec:
    """Adam switched to SGD mid-run (SWATS; "Adam early, SGD late"): a digits MLP 64-128-128-10, batches of 32, 400
    steps; Adam 1e-3 for 150 steps, then SGD with momentum 0.9 at lr 0.02 (a sound lr for this net) for 250. Expected:
    the loss is ~0.1 at the switch; the gradient does not change at the switch (only the update rule does): SGD's
    first steps are smaller on most weights than Adam's were, the loss goes on falling more slowly, with no jump;
    the gradient norm stays at its level or drifts. Metric: held-out cross-entropy; baseline the class prior's.
    Healthy expected on every seed."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 63000, 400)
    model = Evented(mlp([64, 128, 128, 10]), lambda p: AdamThenSGD(p, 1e-3, 0.02, 150))
    return Spec(model=model, train=stream_loader(x, y), max_steps=400, metric=metric, baseline=base)


# --- d. aux_ortho_on --------------------------------------------------------------------------------------------------
class OrthoPenalty(Evented):
    """Cross-entropy, plus from step ``at`` ``weight * ||W W^T - I||_F^2 / d`` on the MLP's middle (d x d = 128x128)
    weight: the soft orthogonality regulariser (Bansal et al. 2018), averaged over W's rows, switched on abruptly."""

    def __init__(self, opt_fn: Callable, at: int, weight: float) -> None:
        super().__init__(mlp([64, 128, 128, 10]), opt_fn)
        self.at, self.weight = at, weight

    def compute_loss(self, batch: Any) -> Tensor:
        loss = super().compute_loss(batch)
        if self.global_step >= self.at:
            w = self.net[2].weight
            loss = loss + self.weight * ((w @ w.T - torch.eye(w.shape[0])) ** 2).sum() / w.shape[0]
        return loss


def fam_aux_ortho_on(seed: int) -> Spec:
    """An auxiliary loss switched on abruptly: a digits MLP 64-128-128-10, SGD momentum 0.9 at 0.05, batches of 32,
    400 steps; from step 200 the loss adds ||W W^T - I||_F^2 / 128 (weight 1; the squared Frobenius norm averaged
    over W's 128 rows) on the 128x128 middle weight (at step 200 its singular values ~0-2.8, the penalty ~2).
    Expected: the loss jumps from ~0.1 to ~2 at step 200 and the gradient norm ~2-5x (the penalty's gradient
    4 (W W^T - I) W / 128); the penalty's curvature (< 1 here) is well inside SGD's stable range at 0.05 with
    momentum, so it falls within ~30-80 steps (W nearer orthogonal, which the classifier does not mind) and the loss
    returns to ~0.1-0.2. Metric: held-out cross-entropy (without the penalty); baseline the class prior's. Healthy
    expected on every seed.

    Fixed after a first run without GradWatch (seeds 0, 1; before any watched run): the penalty was first the plain
    sum (no / 128); with it this run went non-finite on both seeds (after 200 steps of SGD the weight's top singular
    value is ~2.8, where the quartic penalty's curvature, ~90, is past SGD momentum's stable range at 0.05: a
    family setup error, not the healthy event intended)."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 64000, 400)
    return Spec(
        model=OrthoPenalty(sgd(0.05), 200, 1.0), train=stream_loader(x, y), max_steps=400, metric=metric, baseline=base
    )


# --- e. regularise_mid ------------------------------------------------------------------------------------------------
def set_dropout(p: float) -> Callable[[Any], None]:
    def fn(m: Any) -> None:
        for mod in m.net.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = p

    return fn


def smoothing(eps: float) -> Callable[[Any], None]:
    def fn(m: Any) -> None:
        m.loss_fn = lambda o, y: F.cross_entropy(o, y, label_smoothing=eps)

    return fn


def fam_regularise_mid(seed: int) -> Spec:
    """Regularisation added mid-run (an overfitting run "fixed" in flight): a digits MLP 64-256-256-10 with Dropout
    modules, Adam 1e-3, batches of 32, 450 steps; even seeds ("dropout") the dropout rate goes from 0 to 0.5 at step
    200, odd seeds ("smoothing") label smoothing 0.2 is introduced at step 200. Expected: the training loss is
    ~0.01-0.05 at step 200; dropout lifts it to ~0.2-0.5 (noisier) and the gradient norm ~3-10x; smoothing lifts it
    to its floor ~0.87 and more (the smoothed targets' entropy) and the gradient norm by ~10x at first (confident
    logits pulled back), then the loss settles at ~0.9-1.0 with a gradient norm above the pre-event one. Held-out
    cross-entropy stays ~0.1-0.4 (smoothing softens the predictions: ~0.3-0.5). Metric: held-out cross-entropy
    (no smoothing); baseline the class prior's. Healthy expected on every seed."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 65000, 450)
    drop = seed % 2 == 0
    net = mlp([64, 256, 256, 10], dropout=0.5)
    for mod in net.modules():  # no dropout until the event
        if isinstance(mod, nn.Dropout):
            mod.p = 0.0
    model = Evented(net, adam(1e-3), events={200: set_dropout(0.5) if drop else smoothing(0.2)})
    return Spec(
        model=model,
        train=stream_loader(x, y),
        max_steps=450,
        metric=metric,
        baseline=base,
        variant="dropout" if drop else "smoothing",
    )


# --- f. memorise_small ------------------------------------------------------------------------------------------------
def fam_memorise_small(seed: int) -> Spec:
    """A long run that memorises a small training set: 256 training digits (a random subset per seed), a digits MLP
    64-256-256-10, SGD momentum 0.9 at 0.05, batches of 64 (4 per epoch), 1500 steps (~375 epochs). Expected: the
    training loss falls to ~1e-2 by step ~200-300 and then keeps falling, slowly (the logits' margins grow like a
    logarithm under gradient descent on separable data) to ~1e-3-1e-4; the gradient norm falls with it, by 2-4
    decades over the run, smoothly (no jump): legitimately small gradients of a converged run, not a vanishing
    gradient. Held-out cross-entropy ~0.3-0.8 (accuracy ~85-92%: 256 examples), creeping up a little late as the
    wrong answers grow confident, far below the prior's. Metric: held-out cross-entropy; baseline the class prior's.
    Healthy expected on every seed."""
    xtr, _, ytr, _ = digits()
    metric, base = digits_test()
    g = torch.Generator().manual_seed(66000 + seed)
    keep = torch.randperm(len(ytr), generator=g)[:256]
    xs, ys = xtr[keep], ytr[keep]
    idx = epochs_idx(256, 1500, 64, g)
    model = Evented(mlp([64, 256, 256, 10]), sgd(0.05))
    return Spec(model=model, train=stream_loader(xs[idx], ys[idx]), max_steps=1500, metric=metric, baseline=base)


# --- g. lr_to_zero ----------------------------------------------------------------------------------------------------
def linear_to_zero(warmup: int, total: int) -> Callable[[torch.optim.Optimizer], dict[str, Any]]:
    """``get_linear_schedule_with_warmup`` (Hugging Face): linear warm-up, then linear decay to 0 at ``total``, and 0
    after it."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, (total - s) / (total - warmup))

    return lambda o: {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, factor), "interval": "step"}


def fam_lr_to_zero(seed: int) -> Spec:
    """The learning rate decayed linearly to exactly 0: a digits MLP 64-128-128-10, SGD momentum 0.9 at peak 0.05,
    batches of 32, 400 steps, Hugging Face's linear schedule with 20 warm-up steps; even seeds ("end") reach 0 at
    step 400 (the last steps at lr ~1e-4 of the peak and below), odd seeds ("early") have the schedule's
    num_training_steps set to 250 (a config mismatch: the last 150 steps at lr exactly 0: the weights do not move, the
    gradient norm and the loss stay at their step-250 level, with batch noise). Expected: the loss falls to
    ~0.05-0.1 and flattens as the lr goes to 0; the gradient norm does NOT vanish (only the lr does), it stays at its
    late-run level ~0.3-1. Metric: held-out cross-entropy; baseline the class prior's. Healthy expected on every
    seed."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 67000, 400)
    end = seed % 2 == 0
    model = Evented(mlp([64, 128, 128, 10]), sgd(0.05), sched_fn=linear_to_zero(20, 400 if end else 250))
    return Spec(
        model=model,
        train=stream_loader(x, y),
        max_steps=400,
        metric=metric,
        baseline=base,
        variant="end" if end else "early",
    )


# --- h. input_scale_fixed ---------------------------------------------------------------------------------------------
def fam_input_scale_fixed(seed: int) -> Spec:
    """A data pipeline bug fixed mid-run: a digits MLP 64-128-128-10, Adam 1e-3, batches of 32, 400 steps; for the
    first 150 steps the inputs are the raw 0-16 pixel values (the /16 forgotten), from step 150 they are scaled to
    0-1 as the test set is (inputs 16x smaller at once). Expected: the run trains on the raw pixels (Adam is
    indifferent to the input scale; the loss ~0.05-0.2 at step 150); at the fix the first layer's pre-activations
    shrink ~16x (the biases now dominate), the logits shrink and the loss jumps to ~1-2.3; the first layer's gradient
    shrinks ~16x with its input and the total norm changes (probably down) by ~2-10x; Adam's steps do not depend on
    the gradient's scale, so the first layer relearns its scale within ~50-100 steps and the loss falls back to
    ~0.1-0.2. Metric: held-out cross-entropy on the 0-1 test digits; baseline the class prior's. The outcome decides;
    healthy expected on most or all seeds."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 68000, 400)
    x = x.clone()
    x[:150] = x[:150] * 16.0
    model = Evented(mlp([64, 128, 128, 10]), adam(1e-3))
    return Spec(model=model, train=stream_loader(x, y), max_steps=400, metric=metric, baseline=base)


# --- i. probe_then_unfreeze -------------------------------------------------------------------------------------------
def unfreeze(module: nn.Module) -> Callable[[Any], None]:
    return lambda m: module.requires_grad_(True)


def fam_probe_then_unfreeze(seed: int) -> Spec:
    """A frozen pretrained encoder, only a head training for most of the run: the first two layers (64-256-256, ReLU)
    of an MLP pretrained on digits 0-4 (``noisy_recipes``'s, once per process) frozen, a new linear head 256 -> 10
    trained alone (Adam 1e-3) for 300 steps; at step 300 the encoder's requires_grad is switched on (it was in the
    optimizer from the start, in its own group at lr 1e-4) and all train for 100 more steps; batches of 32. Expected:
    the head (2570 parameters) learns a linear probe, the loss falls to ~0.2-0.4 and the (head-only) gradient norm
    shrinks; at step 300 the total norm jumps ~2-10x as the encoder's 82k weights get gradients for the first time
    (earlier layers' gradients were None), no loss jump; the loss keeps falling to ~0.1-0.2. Metric: held-out
    cross-entropy on all ten classes; baseline the class prior's. Healthy expected on every seed."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 69000, 400)
    pre = mlp([64, 256, 256, 5])
    pre.load_state_dict(pretrained_0to4())
    encoder = pre[:4]
    encoder.requires_grad_(False)
    head = nn.Linear(256, 10)
    net = nn.Sequential(encoder, head)
    opt_fn = lambda p: torch.optim.Adam(  # noqa: E731
        [{"params": list(head.parameters()), "lr": 1e-3}, {"params": list(encoder.parameters()), "lr": 1e-4}]
    )
    model = Evented(net, opt_fn, events={300: unfreeze(encoder)})
    return Spec(model=model, train=stream_loader(x, y), max_steps=400, metric=metric, baseline=base)


# --- j. seq_len_warmup ------------------------------------------------------------------------------------------------
def fam_seq_len_warmup(seed: int) -> Spec:
    """Sequence-length warm-up (short sequences first, then the full length, as in Li et al. 2022): x is L steps of 3
    channels ~ N(0, 1), the label the channel with the largest sum over time; a GRU (3 -> 64) and a linear readout
    (``noisy_shocks``'s), cross-entropy, batches of 64, Adam 3e-3, 400 steps; L = 10 for steps 0-199 and L = 40 from
    step 200 (the data pipeline's curriculum switching to full length). Expected: the loss falls from log 3 to
    ~0.1-0.3 at L = 10; at step 200 it rises (the GRU has never run 40 steps: its state drifts or saturates
    differently, the sums are 2x larger) to ~0.3-1.5 and the gradient norm changes by ~1-5x (backpropagation through
    4x more steps, larger sums); the readout and gates adapt within ~50-100 steps and the loss is back to ~0.1-0.4.
    Metric: held-out cross-entropy at L = 40; baseline the class prior's (~log 3). Healthy expected on every seed."""
    from noisy_shocks import GRUClassifier

    g = torch.Generator().manual_seed(70000 + seed)
    steps, bs, at = 400, 64, 200
    batches = []
    for s in range(steps):
        x = torch.randn(bs, 10 if s < at else 40, 3, generator=g)
        batches.append((x, x.sum(1).argmax(-1)))
    xte = torch.randn(2000, 40, 3, generator=g)
    yte = xte.sum(1).argmax(-1)
    return Spec(
        model=Evented(GRUClassifier(), adam(3e-3)),
        train=DataLoader(Batches(batches), batch_size=None, shuffle=False),
        max_steps=steps,
        metric=ce_metric(xte, yte),
        baseline=prior_ce(yte, 3),
    )


# --- k. grad_noise ----------------------------------------------------------------------------------------------------
class GradNoise(Evented):
    """Annealed Gaussian gradient noise (Neelakantan et al. 2015): every parameter's gradient gets N(0, sigma_t^2),
    sigma_t^2 = eta / (1 + t)^0.55, added through the loss as ``(p * n).sum() - (p * n).sum().detach()`` (its value 0,
    its gradient n): the loss is unchanged, the gradient every observer sees includes the noise."""

    def __init__(self, eta: float) -> None:
        super().__init__(mlp([64, 128, 128, 10]), adam(1e-3))
        self.eta = eta

    def compute_loss(self, batch: Any) -> Tensor:
        loss = super().compute_loss(batch)
        sigma = (self.eta / (1 + int(self.global_step)) ** 0.55) ** 0.5
        noise = sum((p * (torch.randn_like(p) * sigma)).sum() for p in self.parameters())
        return loss + noise - noise.detach()


def fam_grad_noise(seed: int) -> Spec:
    """Gradient noise injection: a digits MLP 64-128-128-10 (26k parameters), Adam 1e-3, batches of 32, 400 steps,
    annealed Gaussian noise added to every gradient (eta 0.01: std 0.1 per entry at step 0, 0.02 at step 400).
    Expected: the total gradient norm is the noise's (~16 at step 0, ~3 at the end: sqrt(26k) x std) far above the
    data gradient's (~0.5-2), decaying smoothly like t^-0.275 over the run (no jump); Adam's normalised steps average
    the noise out where the data gradient is consistent: the loss falls to ~0.1-0.3, a little slower and noisier than
    without noise. Metric: held-out cross-entropy; baseline the class prior's. Healthy expected on every seed.

    Seen in a first run without GradWatch (seeds 0, 1; left as written): the norm as expected (16 at step 0, 3.2 at
    the end), but the loss falls much slower than expected (Adam's steps shrink where the noise dominates v): ~2.1
    at step 200, ~1.0 at step 400; both seeds still trained fine by the outcome."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 71000, 400)
    return Spec(model=GradNoise(0.01), train=stream_loader(x, y), max_steps=400, metric=metric, baseline=base)


# ================================================================================================ failing twins
# --- l. adam_state_lost_hot -------------------------------------------------------------------------------------------
def fam_adam_state_lost_hot(seed: int) -> Spec:
    """Adam's state lost on resume AND the learning rate restarted 100x higher without warm-up (a resume script that
    takes the peak lr of another config): the ``adam_state_lost`` run (digits MLP 64-128-128-10, Adam 1e-3, batches
    of 32, 400 steps) whose state is cleared at step 200 and its lr set to 0.1. Expected: fresh moments make the
    first steps sign steps of 0.1 on EVERY weight (the weights' own scale is ~0.1): the loss jumps to ~5-100 within a
    few steps, the gradient norm jumps ~10-100x and then either stays erratic or collapses (dead ReLUs); the loss
    does not come back below ~0.7 of the prior's. Metric: held-out cross-entropy; baseline the class prior's. NOT
    healthy expected (the outcome decides).

    Fixed after a first run without GradWatch (before any watched run): at 30x (lr 3e-2), as first written, the run
    trained fine on 6 of 6 seeds (held-out loss 0.10-0.28); at 100x it failed on 5 of 6 (seed 2 trained fine, 0.98
    against the 1.61 bar)."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 61000, 400)
    model = Evented(mlp([64, 128, 128, 10]), adam(1e-3), events={200: fresh_state(0.1)})
    return Spec(model=model, train=stream_loader(x, y), max_steps=400, metric=metric, baseline=base)


# --- m. adam_to_sgd_hot -----------------------------------------------------------------------------------------------
SGD_HOT = (1.0, 2.0, 5.0)


def fam_adam_to_sgd_hot(seed: int) -> Spec:
    """The Adam -> SGD switch with the SGD learning rate badly scaled: the ``adam_to_sgd`` run whose SGD momentum 0.9
    phase (from step 150) runs at lr 1, 2 or 5 (seed mod 3: a switch rule that scaled Adam's lr by a wrong
    preconditioner estimate), ~10-100x past this net's edge of stability (~0.1-0.2 with momentum). Expected: at the
    switch the loss is ~0.1; within a few steps the weights are thrown off: the loss jumps to ~10-1e4 or goes
    non-finite, the gradient norm grows 10-1000x or collapses (dead ReLUs, logits stuck), and the run ends at or
    above chance. Metric: held-out cross-entropy; baseline the class prior's. NOT healthy expected (the outcome
    decides)."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 63000, 400)
    lr = SGD_HOT[seed % 3]
    model = Evented(mlp([64, 128, 128, 10]), lambda p: AdamThenSGD(p, 1e-3, lr, 150))
    return Spec(
        model=model, train=stream_loader(x, y), max_steps=400, metric=metric, baseline=base, variant=f"lr{lr:g}"
    )


# --- n. aux_ortho_hot -------------------------------------------------------------------------------------------------
def fam_aux_ortho_hot(seed: int) -> Spec:
    """The auxiliary orthogonality loss switched on at weight 1000 (a weight meant for a mean over all d^2 entries
    applied to the mean over rows): the ``aux_ortho_on`` run (SGD momentum 0.9 at 0.05) with the penalty
    ``1000 ||W W^T - I||_F^2 / 128`` from step 200. Expected: the penalty's curvature (~700 at the top singular value
    ~2.8) is far past SGD's stable range at 0.05: the first step overshoots, the singular values grow, the quartic
    penalty's gradient grows with their cube, and within a few steps the loss and the norm explode to inf/NaN (or
    the weights blow up and the classifier is at or above chance). Metric: held-out cross-entropy; baseline the class
    prior's. NOT healthy expected (the outcome decides)."""
    metric, base = digits_test()
    x, y = digits_stream(seed, 64000, 400)
    return Spec(
        model=OrthoPenalty(sgd(0.05), 200, 1000.0),
        train=stream_loader(x, y),
        max_steps=400,
        metric=metric,
        baseline=base,
    )


FAMILIES: dict[str, Callable[[int], Spec]] = {
    "adam_state_lost": fam_adam_state_lost,
    "batch_size_change": fam_batch_size_change,
    "adam_to_sgd": fam_adam_to_sgd,
    "aux_ortho_on": fam_aux_ortho_on,
    "regularise_mid": fam_regularise_mid,
    "memorise_small": fam_memorise_small,
    "lr_to_zero": fam_lr_to_zero,
    "input_scale_fixed": fam_input_scale_fixed,
    "probe_then_unfreeze": fam_probe_then_unfreeze,
    "seq_len_warmup": fam_seq_len_warmup,
    "grad_noise": fam_grad_noise,
    "adam_state_lost_hot": fam_adam_state_lost_hot,
    "adam_to_sgd_hot": fam_adam_to_sgd_hot,
    "aux_ortho_hot": fam_aux_ortho_hot,
}
