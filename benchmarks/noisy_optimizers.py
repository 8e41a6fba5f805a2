"""Families of runs under *optimizers* and *learning-rate schedules* that the other families do not use, for
``noisy_healthy.py``: eleven that train fine, three failing twins.

Written, with their expected outcome, before the detector was run on them. The other 67 families step with SGD,
Adam or AdamW only; most of these step with an optimizer whose update size does not follow the gradient's size
(Muon orthogonalises the momentum, Lion and Rprop take its sign, Adafactor scales by the weights' RMS, Adagrad and
Adadelta by accumulated squares), or under a schedule none of them uses. The healthy eleven: Muon for the hidden
weights with AdamW for the rest (``muon_mlp``), a Lion written here (``lion_cnn``), Adafactor on a small causal
transformer LM (``adafactor_lm``), Adagrad on a bag of 5000 Zipf tokens (``adagrad_bag``), RAdam / NAdam / Adamax on a
CNN (``adam_variants``), full-batch Rprop (``rprop_fullbatch``), ASGD / Adadelta (``asgd_adadelta``), and four
schedules: warmup-stable-decay (``wsd``), the transformer's inverse square root with warm-up (``inv_sqrt``),
``PolynomialLR`` / a ``ChainedScheduler`` of a warm-up and ``ExponentialLR`` (``poly_chained``), and cosine with hard
restarts as a ``LambdaLR`` / a ``SequentialLR`` (``hard_restarts``). The failing twins (the outcome decides): Muon at
50x its learning rate (``muon_high_lr``), Lion at SGD's learning rate (``lion_high_lr``, 33x AdamW's), and Rprop on
mini-batches of 16 (``rprop_minibatch``; it is meant for full batches). Sparse gradients (``EmbeddingBag(sparse=True)``
under Adagrad) were planned and left out: the harness's own total norm (``torch.nn.utils.get_total_norm``) does not
take sparse tensors.

Fixed after a run without GradWatch (seeds 0-2) and before any watched run: ``adagrad_bag`` (did not train: its
initial accumulator went from TensorFlow's 0.1 to torch's 0) and ``lion_high_lr`` (trained fine at 10x AdamW's
learning rate: it went from 3e-2 to 0.1); their docstrings say how. That run also showed that several healthy
families train less far than their docstrings expected (written before it): ``lion_cnn`` ends at 1.0-1.2 held-out
cross-entropy (threshold ~1.61: lr 3e-4 is slow here), ``adafactor_lm`` at 1.58-1.62 (threshold ~1.70) and
``inv_sqrt`` at 1.40-1.45; they were left as they are.

First run with GradWatch, 10 seeds each (140 runs, 238 s; 0.4-7 s a run, ``adafactor_lm`` and ``inv_sqrt`` the
slowest): every healthy-expected run trained fine (110 of 110) with no alert. The failing twins:

- ``muon_high_lr`` failed on 10 of 10 (held-out cross-entropy 5.2-12.3; the gradient norm grows from ~0.5 to
  ~60-440, erratically, the loss swinging between ~0 and ~15 from batch to batch); alerted on 6 of 10, each
  *exploding* (rule ``trend``) at steps 75, 106, 113, 141, 228 and 257; seeds 1, 2, 4, 8 got no alert.
- ``lion_high_lr`` failed on 9 of 10 (dead at chance, 2.303) and trained fine on 1 (seed 1, end 0.38); all 10 were
  alerted *exploding* (rule ``jump``) at step 1 (the norm 18-54x its first step's after one update of 0.1 on every
  weight), so seed 1's alert counts as one false alarm (its loss jumped to 8.7 at step 1 and it recovered). The
  alert's remedies list "clip gradients" (GradWatch(clip="adaptive") or on_exploding="clip"), which does not change
  a Lion (or Muon) update: its size does not follow the gradient's.
- ``rprop_minibatch`` failed on 6 of 10 and trained fine on 4 (all near the threshold: end 1.40-1.65 against
  ~1.53-1.65; it stalls with a noisy loss, the norm flat at ~1-5); none alerted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from noisy_healthy import (
    BagClassifier,
    Base,
    SmallCNN,
    Spec,
    Supervised,
    TinyTransformer,
    bag_data,
    markov_text,
    mlp,
    noisy_regression,
    prior_ce,
    stream_loader,
)
from noisy_practices import digits_stream
from noisy_shocks import ce_metric, epochs_idx
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


# ---------------------------------------------------------------------------------------------------- helpers
def step_sched(make: Callable[[torch.optim.Optimizer], Any]) -> Callable[[torch.optim.Optimizer], dict[str, Any]]:
    """A ``sched_fn`` for ``Supervised``: the scheduler ``make(opt)``, stepped every optimizer step."""
    return lambda o: {"scheduler": make(o), "interval": "step"}


def digits_run(model: Supervised, seed: int, base: int, steps: int, bs: int = 32, variant: str | None = None) -> Spec:
    """A digits classifier on a pre-drawn stream: judged by held-out cross-entropy against the class prior's."""
    from noisy_healthy import digits

    _, xte, _, yte = digits()
    x, y = digits_stream(seed, base, steps, bs=bs)
    return Spec(
        model=model,
        train=stream_loader(x, y),
        max_steps=steps,
        metric=ce_metric(xte, yte),
        baseline=prior_ce(yte, 10),
        variant=variant,
    )


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """Run an optimizer's closure (Lightning's: forward and backward) with gradients on; its loss, or ``None``."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update is the sign of an
    interpolation of the momentum and the gradient (beta1), the momentum an EMA of the gradient (beta2), with
    decoupled weight decay. Every coordinate moves by exactly ``lr`` (plus the decay) whatever the gradient's size."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, wd, (b1, b2) = group["lr"], group["weight_decay"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - lr * wd)
                p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-lr)
                m.mul_(b2).add_(p.grad, alpha=1 - b2)
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` for the hidden layers' 2-D weights and ``torch.optim.AdamW`` for the other parameters, as
    Muon's docs say, wrapped as one optimizer (Lightning's automatic optimization steps one): its param groups are
    the two optimizers' own (a scheduler or a learning-rate read sees both), ``step`` steps both."""

    def __init__(
        self, muon_params: list[Tensor], adam_params: list[Tensor], muon_kw: dict[str, Any], adam_kw: dict[str, Any]
    ) -> None:
        self.muon = torch.optim.Muon(muon_params, **muon_kw)
        self.adamw = torch.optim.AdamW(adam_params, **adam_kw)
        super().__init__([*muon_params, *adam_params], {"lr": muon_kw["lr"]})
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        self.muon.step()
        self.adamw.step()
        return loss


def muon_opt(muon_kw: dict[str, Any]) -> Callable[[Iterable[Tensor]], torch.optim.Optimizer]:
    """Muon (``muon_kw``) on every 2-D weight but the last (the classifier head), AdamW (3e-3, weight decay 0.01) on
    the head and the biases, as Keller Jordan's recipe does."""

    def make(params: Iterable[Tensor]) -> torch.optim.Optimizer:
        ps = list(params)
        mats = [p for p in ps if p.ndim == 2][:-1]
        rest = [p for p in ps if all(p is not q for q in mats)]
        return MuonAdamW(mats, rest, muon_kw, {"lr": 3e-3, "weight_decay": 0.01})

    return make


class CausalLM(Base):
    """A 2-layer pre-LayerNorm causal transformer (d 64, 4 heads, no dropout) predicting the next token."""

    def __init__(self, opt_fn: Callable, sched_fn: Callable | None = None, vocab: int = 12, d: int = 64) -> None:
        super().__init__()
        self.opt_fn, self.sched_fn = opt_fn, sched_fn
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(32, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(32))

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        h = self.enc(self.emb(x) + self.pos[:t], mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))

    def lm_loss(self, seq: Tensor) -> Tensor:
        logits = self(seq[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1))

    def compute_loss(self, batch: Any) -> Tensor:
        (seq,) = batch
        return self.lm_loss(seq)

    def configure_optimizers(self) -> Any:
        opt = self.opt_fn(self.parameters())
        if self.sched_fn is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": self.sched_fn(opt)}


def lm_spec(seed: int, base: int, steps: int, model: CausalLM, bs: int = 16) -> Spec:
    """Next-token prediction on the second-order Markov language of ``gru_lm_clip`` (sequences of 33 tokens, 1200 of
    them for training, 100 held out), batches of ``bs``; metric the held-out next-token cross-entropy, baseline the
    unigram's."""
    tr = markov_text(base + seed, 33 * 1200).view(1200, 33)
    te = markov_text(base + 500 + seed, 33 * 100).view(100, 33)
    idx = epochs_idx(len(tr), steps, bs, torch.Generator().manual_seed(base + 900 + seed))
    unigram = torch.bincount(tr.flatten(), minlength=12).float() / tr.numel()
    return Spec(
        model=model,
        train=stream_loader(tr[idx]),
        max_steps=steps,
        metric=lambda m: float(m.lm_loss(te)),
        baseline=float(-(unigram[te[:, 1:]].log()).mean()),
    )


class FullBatch(Dataset):
    """The same full batch ``steps`` times (one per optimizer step)."""

    def __init__(self, steps: int, *tensors: Tensor) -> None:
        self.steps, self.tensors = steps, tensors

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        return self.tensors


def regression_spec(seed: int, model: Supervised, steps: int, bs: int | None, base: int = 0) -> Spec:
    """``noisy_regression`` (8 features, sin / product / linear terms, noise 0.7, 2000 training rows): full batch
    (``bs=None``) or shuffled passes in batches of ``bs``; metric held-out MSE, baseline the target's variance."""
    xtr, ytr, xte, yte = noisy_regression(base + seed)
    if bs is None:
        train = DataLoader(FullBatch(steps, xtr, ytr), batch_size=None)
    else:
        idx = epochs_idx(len(xtr), steps, bs, torch.Generator().manual_seed(base + 700 + seed))
        train = stream_loader(xtr[idx], ytr[idx])
    return Spec(
        model=model,
        train=train,
        max_steps=steps,
        metric=lambda m: float(F.mse_loss(m.net(xte), yte)),
        baseline=float(yte.var()),
    )


# ================================================================================================ healthy optimizers
# --- a. muon_mlp: Muon on the hidden weights, AdamW on the head and biases -----------------------------------------
def fam_muon(seed: int) -> Spec:
    """A digits MLP 64-256-256-10 (ReLU), batches of 32, 300 steps: ``torch.optim.Muon`` (momentum 0.95, Nesterov,
    5 Newton-Schulz steps) on the two hidden weight matrices, AdamW (3e-3, weight decay 0.01) on the head and the
    biases, no schedule. Even seeds: Keller Jordan's convention (lr 0.02, ``adjust_lr_fn="original"``, weight decay
    0.01); odd seeds: Moonshot's (``adjust_lr_fn="match_rms_adamw"``, AdamW's lr 3e-3 and weight decay 0.1).
    Expected: every Muon step moves each hidden matrix by a (near-)orthogonal matrix of fixed size whatever the
    gradient's norm, so the gradient norm can shrink by orders of magnitude as the loss falls (log 10 to ~0.05-0.2)
    while the weights keep moving. Metric: held-out cross-entropy; baseline: the class prior's. Healthy expected on
    every seed."""
    if seed % 2 == 0:
        kw: dict[str, Any] = {"lr": 0.02, "weight_decay": 0.01, "adjust_lr_fn": "original"}
    else:
        kw = {"lr": 3e-3, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}
    model = Supervised(mlp([64, 256, 256, 10]), muon_opt(kw))
    return digits_run(model, seed, 51000, 300, variant="keller" if seed % 2 == 0 else "moonshot")


# --- b. lion_cnn: Lion (sign of the interpolated momentum), cosine decay -----------------------------------------
def fam_lion(seed: int) -> Spec:
    """The small CNN on digits, batches of 32, 300 steps, Lion (written above) at lr 3e-4 (the paper: 3-10x below
    AdamW's, here 3e-3), betas (0.9, 0.99), decoupled weight decay 0.1 (the paper: 3-10x AdamW's), cosine decay to 0.
    Expected: every coordinate moves by exactly lr per step whatever its gradient, so the update's norm is fixed
    (lr x sqrt(#params), ~0.05 at first) and the gradient's norm is free to fall (or rise) with no effect on it; the
    loss from log 10 to ~0.05-0.2. Metric: held-out cross-entropy; baseline: the class prior's. Healthy expected on
    every seed."""
    model = Supervised(
        SmallCNN(),
        lambda p: Lion(p, lr=3e-4, betas=(0.9, 0.99), weight_decay=0.1),
        step_sched(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 300)),
    )
    return digits_run(model, seed, 52000, 300)


# --- c. adafactor_lm: Adafactor (relative step) on a causal transformer LM ---------------------------------------
def fam_adafactor(seed: int) -> Spec:
    """The causal transformer LM (2 pre-LN layers, d 64) on the second-order Markov language, batches of 16, 400
    steps, ``torch.optim.Adafactor`` at its defaults (lr 1e-2: the paper's cap on the relative step, so each update
    is ~1% of the weight's RMS, factored second moments, beta2 decay -0.8, update clipping d=1, no weight decay), no
    schedule. Expected: the update's size follows the weights' RMS, not the gradient's; zero-initialised biases move
    by at most 1e-5 per step (eps2 = 1e-3 times 1e-2); the loss from ~2.6 to ~0.8-1.2 (the language's entropy is
    ~0.7 nats). Metric: held-out next-token cross-entropy; baseline: the unigram model's. Healthy expected on every
    seed."""
    model = CausalLM(lambda p: torch.optim.Adafactor(p, lr=1e-2))
    return lm_spec(seed, 53000, 400, model)


# --- d. adagrad_bag: Adagrad on a bag of 5000 Zipf tokens ---------------------------------------------------------
class AdagradBag(BagClassifier):
    """``embedding_bag``'s model (a mean ``EmbeddingBag`` over 5000 tokens, a linear head) under Adagrad."""

    def configure_optimizers(self) -> Any:
        return torch.optim.Adagrad(self.parameters(), lr=0.05)


def fam_adagrad(seed: int) -> Spec:
    """Bag-of-tokens sentiment (``embedding_bag``'s data: documents of 40 Zipf-distributed tokens out of 5000, the label
    the sign of their summed polarity), a mean ``EmbeddingBag`` (dense gradients; most rows zero in a batch) and a
    linear head, batches of 16, 500 steps, Adagrad at lr 0.05 (GloVe's) with torch's defaults (initial accumulator
    0, eps 1e-10: a row's first update is ~lr per coordinate, whatever its gradient's size). Expected: frequent
    tokens' step sizes decay as 1/sqrt(their accumulated squares), rare tokens take full steps when they first
    appear; the loss from ~0.7 to ~0.2-0.4. Metric: held-out cross-entropy; baseline: the class prior's. Healthy
    expected on every seed. Setup fixed once before any watched run: first written with an initial accumulator of
    0.1 (TensorFlow's default), 0 of 3 seeds trained fine without GradWatch (end 0.64-0.67 against a baseline of
    0.69: a rare row's gradient, ~1e-3, is divided by sqrt(0.1), so rare tokens hardly moved; lr 0.2-1.0 did not
    fix it), so the accumulator became torch's default 0; then 3 of 3 train fine (end 0.43-0.46)."""
    xtr, ytr = bag_data(54000 + seed, 4000)
    xte, yte = bag_data(54500 + seed, 1000)
    idx = epochs_idx(len(xtr), 500, 16, torch.Generator().manual_seed(54900 + seed))
    return Spec(
        model=AdagradBag(5000),
        train=stream_loader(xtr[idx], ytr[idx]),
        max_steps=500,
        metric=lambda m: float(F.cross_entropy(m(xte), yte)),
        baseline=prior_ce(yte, 2),
    )


# --- e. adam_variants: RAdam / NAdam / Adamax on the small CNN ----------------------------------------------------
def fam_adam_variants(seed: int) -> Spec:
    """The small CNN on digits, batches of 32, 300 steps, by seed mod 3: RAdam (lr 1e-3: no warm-up needed, its
    rectifier takes the first ~5 steps as SGD with momentum), NAdam (2e-3, momentum decay 4e-3) or Adamax (2e-3: the
    infinity norm of the gradients instead of their squares), the papers' / torch's defaults. Expected: like Adam;
    the loss from log 10 to ~0.05-0.2. Metric: held-out cross-entropy; baseline: the class prior's. Healthy expected
    on every seed."""
    name = ["radam", "nadam", "adamax"][seed % 3]
    make = {
        "radam": lambda p: torch.optim.RAdam(p, lr=1e-3),
        "nadam": lambda p: torch.optim.NAdam(p, lr=2e-3),
        "adamax": lambda p: torch.optim.Adamax(p, lr=2e-3),
    }[name]
    return digits_run(Supervised(SmallCNN(), make), seed, 55000, 300, variant=name)


# --- f. rprop_fullbatch: Rprop on the full batch --------------------------------------------------------------
def rprop() -> Callable[[Iterable[Tensor]], torch.optim.Optimizer]:
    return lambda p: torch.optim.Rprop(p, lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50))


def fam_rprop(seed: int) -> Spec:
    """Noisy regression (``noisy_regression``: 2000 training rows), an MLP 8-64-64-1, MSE, the full batch every step,
    300 steps, ``torch.optim.Rprop`` at its defaults (initial step 0.01, etas (0.5, 1.2), step sizes 1e-6 to 50).
    Expected: each weight moves by its own step size in the direction of its gradient's sign; the step grows 1.2x
    while the sign holds and halves (and skips the update) when it flips; the gradient's size plays no part. The
    loss from ~2.5 to ~0.6-0.9 (noise 0.49). Metric: held-out MSE; baseline: the target's variance. Healthy expected
    on every seed."""
    return regression_spec(seed, Supervised(mlp([8, 64, 64, 1]), rprop(), loss_fn=F.mse_loss), 300, None, 56000)


# --- g. asgd_adadelta: averaged SGD / Adadelta on a digits MLP ------------------------------------------------------
def fam_asgd_adadelta(seed: int) -> Spec:
    """A digits MLP 64-128-128-10, batches of 32, 400 steps. Even seeds: ``torch.optim.ASGD`` at lr 0.05 (lambd
    1e-4, alpha 0.75), averaging from step 100 (t0; the default 1e6 would never start); the model is judged on its
    raw weights, not the average the optimizer keeps. Odd seeds: ``torch.optim.Adadelta`` at its default lr 1.0
    (the paper has no learning rate), rho 0.9, eps 1e-6: the step is the ratio of two running RMS, of the past
    updates and of the gradients, so it starts tiny (sqrt(eps) = 1e-3 per coordinate) and grows. Expected: the loss
    from log 10 to ~0.1-0.4 (both slower than Adam). Metric: held-out cross-entropy; baseline: the class prior's.
    Healthy expected on every seed."""
    if seed % 2 == 0:
        name, make = "asgd", lambda p: torch.optim.ASGD(p, lr=0.05, t0=100)
    else:
        name, make = "adadelta", lambda p: torch.optim.Adadelta(p, lr=1.0)
    return digits_run(Supervised(mlp([64, 128, 128, 10]), make), seed, 57000, 400, variant=name)


# ================================================================================================ healthy schedules
# --- h. wsd: warmup-stable-decay on the pre-LN transformer ----------------------------------------------------------
def wsd(warm: int, total: int, decay: int) -> Callable[[int], float]:
    """Linear warm-up over ``warm`` steps, constant, then a linear decay to 0 over the last ``decay`` steps."""
    return lambda s: min((s + 1) / warm, 1.0, max(0.0, (total - s) / decay))


class WSDTransformer(TinyTransformer):
    """``transformer_preln``'s model (2 pre-LN layers, label smoothing 0.1) under AdamW and warmup-stable-decay."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=2e-3, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, wsd(30, 300, 60))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fam_wsd(seed: int) -> Spec:
    """``transformer_preln``'s counting task and model, batches of 32, 300 steps, AdamW 2e-3 (weight decay 0.05)
    under warmup-stable-decay (MiniCPM, "WSD"): 30 linear warm-up steps, constant until step 240, a linear decay to 0
    over the last 60 (the loss typically drops sharply in the decay). Expected: the loss falls during the stable
    phase and again in the decay, from ~1.1 to ~0.4-0.6 (label smoothing's floor ~0.2). Metric: held-out smoothed
    cross-entropy; baseline: the class prior's. Healthy expected on every seed."""
    from noisy_healthy import fam_transformer

    spec = fam_transformer(58000 + seed)
    spec.model = WSDTransformer()
    return spec


# --- i. inv_sqrt: the original transformer schedule ----------------------------------------------------------------
def inv_sqrt(warm: int) -> Callable[[int], float]:
    """Vaswani et al.'s schedule normalised to 1 at its peak: linear warm-up over ``warm`` steps, then 1/sqrt(step)."""
    return lambda s: min((s + 1) / warm, math.sqrt(warm / (s + 1)))


def fam_inv_sqrt(seed: int) -> Spec:
    """The causal transformer LM (d 64) on the Markov language, batches of 16, 400 steps, Adam with the paper's betas
    (0.9, 0.98) and eps 1e-9 under the paper's schedule d^-0.5 min(s^-0.5, s warm^-1.5): its peak at d 64 and the
    paper's 4000 warm-up steps is 2e-3, reached here after 40 steps, then 1/sqrt(s) (6.3e-4 at step 400).
    Expected: the loss from ~2.6 to ~0.8-1.0. Metric: held-out next-token cross-entropy; baseline: the unigram
    model's. Healthy expected on every seed."""
    model = CausalLM(
        lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.9, 0.98), eps=1e-9),
        step_sched(lambda o: torch.optim.lr_scheduler.LambdaLR(o, inv_sqrt(40))),
    )
    return lm_spec(seed, 59000, 400, model)


# --- j. poly_chained: PolynomialLR / ChainedScheduler(LinearLR warm-up, ExponentialLR) ---------------------------
def fam_poly_chained(seed: int) -> Spec:
    """Noisy regression, an MLP 8-64-64-1, MSE, batches of 32, 400 steps. Even seeds: SGD momentum 0.9 at 0.05 under
    ``PolynomialLR`` (power 2, to 0 at step 400); odd seeds: Adam 3e-3 under a ``ChainedScheduler`` of a ``LinearLR``
    warm-up (x0.05 to x1 over 30 steps) and ``ExponentialLR`` (x0.992 per step: 1.2e-4 at the end). Expected: the
    loss from ~2.5 to ~0.6-0.8 (noise 0.49). Metric: held-out MSE; baseline: the target's variance. Healthy expected
    on every seed."""
    if seed % 2 == 0:
        name = "poly"
        opt_fn: Callable = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)  # noqa: E731
        sched = step_sched(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=400, power=2.0))
    else:
        name = "chained"
        opt_fn = lambda p: torch.optim.Adam(p, lr=3e-3)  # noqa: E731
        sched = step_sched(
            lambda o: torch.optim.lr_scheduler.ChainedScheduler(
                [
                    torch.optim.lr_scheduler.LinearLR(o, start_factor=0.05, total_iters=30),
                    torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.992),
                ]
            )
        )
    spec = regression_spec(seed, Supervised(mlp([8, 64, 64, 1]), opt_fn, sched, loss_fn=F.mse_loss), 400, 32, 60000)
    spec.variant = name
    return spec


# --- k. hard_restarts: cosine with hard restarts, as a LambdaLR or a SequentialLR -------------------------------
def cosine_hard_restarts(warm: int, total: int, cycles: int) -> Callable[[int], float]:
    """Hugging Face's ``get_cosine_with_hard_restarts_schedule_with_warmup``: linear warm-up, then ``cycles`` cosine
    decays to 0, each restarting at the peak."""

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        progress = (s - warm) / max(1, total - warm)
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))

    return f


def fam_hard_restarts(seed: int) -> Spec:
    """The small CNN on digits, batches of 32, 400 steps, AdamW 3e-3 (weight decay 0.01). Even seeds: Hugging Face's
    cosine with hard restarts as a ``LambdaLR`` (20 warm-up steps, then 3 cosine cycles of ~127 steps, each
    restarting from ~0 to the peak in one step); odd seeds: a ``SequentialLR`` of a ``LinearLR`` warm-up (x0.01 to
    x1 over 20 steps) and ``CosineAnnealingWarmRestarts`` (T_0 127). Expected: the loss falls, rises a little at each
    restart and falls again; from log 10 to ~0.05-0.2. Metric: held-out cross-entropy; baseline: the class prior's.
    Healthy expected on every seed."""
    opt_fn = lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01)  # noqa: E731
    if seed % 2 == 0:
        name = "lambda"
        sched = step_sched(lambda o: torch.optim.lr_scheduler.LambdaLR(o, cosine_hard_restarts(20, 400, 3)))
    else:
        name = "sequential"
        sched = step_sched(
            lambda o: torch.optim.lr_scheduler.SequentialLR(
                o,
                [
                    torch.optim.lr_scheduler.LinearLR(o, start_factor=0.01, total_iters=20),
                    torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=127),
                ],
                milestones=[20],
            )
        )
    return digits_run(Supervised(SmallCNN(), opt_fn, sched), seed, 61000, 400, variant=name)


# ================================================================================================ failing twins
# --- l. muon_high_lr: Muon at 50x its learning rate -----------------------------------------------------------------
def fam_muon_high_lr(seed: int) -> Spec:
    """``muon_mlp``'s even-seed setup (Keller's convention) with Muon's lr 1.0 instead of 0.02 (50x); AdamW on the
    head and biases unchanged. Expected: each step adds to each hidden matrix an orthogonal-like matrix with singular
    values ~1-2, whatever the gradient: the hidden weights' norms grow step after step, the activations and logits
    blow up, the loss rises far above log 10 (or the network ends dead); NOT healthy expected (the outcome
    decides)."""
    model = Supervised(mlp([64, 256, 256, 10]), muon_opt({"lr": 1.0, "weight_decay": 0.01, "adjust_lr_fn": "original"}))
    return digits_run(model, seed, 62000, 300)


# --- m. lion_high_lr: Lion at 10x AdamW's learning rate ------------------------------------------------------
def fam_lion_high_lr(seed: int) -> Spec:
    """``lion_cnn`` with Lion at 0.1 (SGD momentum's learning rate on these digits, as in ``sgdr``: the mistake of
    switching SGD to Lion and keeping its learning rate; 33x AdamW's 3e-3, 330x the healthy twin's), same schedule
    and data. Expected: every weight moves by 0.1 per step whatever its gradient; the head (512 inputs) shifts its
    logits by tens of units per step; the ReLUs die or the loss stays high until the cosine has brought the lr down;
    NOT healthy expected (the outcome decides). Setup fixed once before any watched run: first written with Lion at
    3e-2 (10x AdamW's), 3 of 3 seeds trained fine without GradWatch (end 0.14-0.23, better than the healthy twin's
    1.0-1.2; also 3 of 3 at a constant 3e-2), so the learning rate became 0.1; then 2 of 3 fail (end 2.303, at
    chance; 0.3 failed 3 of 3)."""
    model = Supervised(
        SmallCNN(),
        lambda p: Lion(p, lr=0.1, betas=(0.9, 0.99), weight_decay=0.1),
        step_sched(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 300)),
    )
    return digits_run(model, seed, 63000, 300)


# --- n. rprop_minibatch: Rprop on mini-batches --------------------------------------------------------------
def fam_rprop_minibatch(seed: int) -> Spec:
    """``rprop_fullbatch`` on mini-batches of 16 (Rprop is meant for full batches): the gradient's sign flips from
    batch to batch on most weights, each flip halves the step and skips the update, so the steps shrink towards 1e-6
    and the run stalls where the first steps left it; NOT healthy expected (the outcome decides)."""
    return regression_spec(seed, Supervised(mlp([8, 64, 64, 1]), rprop(), loss_fn=F.mse_loss), 300, 16, 64000)


FAMILIES: dict[str, Callable[[int], Spec]] = {
    "muon_mlp": fam_muon,
    "lion_cnn": fam_lion,
    "adafactor_lm": fam_adafactor,
    "adagrad_bag": fam_adagrad,
    "adam_variants": fam_adam_variants,
    "rprop_fullbatch": fam_rprop,
    "asgd_adadelta": fam_asgd_adadelta,
    "wsd": fam_wsd,
    "inv_sqrt": fam_inv_sqrt,
    "poly_chained": fam_poly_chained,
    "hard_restarts": fam_hard_restarts,
    "muon_high_lr": fam_muon_high_lr,
    "lion_high_lr": fam_lion_high_lr,
    "rprop_minibatch": fam_rprop_minibatch,
}
