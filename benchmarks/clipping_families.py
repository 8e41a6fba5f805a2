"""Families of training runs that misbehave in different ways, for judging clipping rules across families.

Each *cell* is one configuration of one family with one seed. It builds a :class:`Setup`: a model factory (the same
initial weights on every call), an optimizer (with its per-step learning-rate schedule), the training batches in
order (the same for every rule), the loss, and a clean validation metric (MSE, cross-entropy or LM loss; ``nan`` when
the weights are not finite). A cell is ``healthy`` (nothing wrong by design), ``outliers`` (corrupted samples) or
``growth`` (a norm that grows or a run that diverges without clipping: a recurrent gain above 1, a learning rate too
high). The kind is fixed by the design, before any rule is run.

Families (sizes for one core: a few hundred steps per run; every family but the MLP grid ends with the learning rate
decayed linearly to zero over its last 20% of steps, so the metric measures where the run got, not its last jitter):

- ``mlp``: 8 cells of the clipping grid (``clipping_grid.py``: regression and teacher classification, SGD and AdamW,
  label or feature outliers in 0.02% to 1% of the samples, x30 to x3000, constant learning rate), 2 of them healthy;
- ``cnn``: a small CNN on "noisy digits" (scikit-learn's 8x8 digits shifted by up to a pixel, with pixel noise:
  8192 training and 2048 validation images), images x10 or x50 in 1% to 10% of the samples (batch 32: 28% to 97%
  of the batches hold one), SGD momentum and AdamW;
- ``recurrent``: vanilla tanh RNN, LSTM and GRU (hidden 32) on a leaky-sum sequence regression over 30-40 steps,
  recurrent weights orthogonal times a gain 0.9 to 1.5, SGD momentum at a sane learning rate and 3-10x higher;
- ``transformer``: a 2-layer causal transformer LM on a synthetic Markov language, AdamW at a sane learning rate,
  10x and 30x higher, with and without a linear warm-up;
- ``cauchy``: regression with heavy-tailed (Cauchy) label noise in every batch, SGD and AdamW; Gaussian noise of the
  same scale is the healthy cell;
- ``schedule``: a classifier under SGD momentum with warm-up and cosine decay whose peak learning rate is 1x, 3x, 10x
  or 30x a sane one;
- ``finetune``: a noisy-digits CNN trained on digits 0-4, fine-tuned (all weights, new head) on 5-9: a sane learning
  rate, one 30x higher, and input outliers;
- ``linear``: models whose weights must grow far past their start: logistic regression on the raw digits (SGD
  momentum, lr 0.5; default or zero init; 5% of the images x50), linear regression on 32 Gaussian features (lr 0.05;
  default init, weights drawn at std 0.001, zeros; Cauchy label noise; a learning rate 20x too high) and a one-hidden-
  layer ReLU net from a small init (std 0.001) at lr 0.01 and 0.05 (which diverges without clipping);
- ``issue``: the two runs of issue 24 (a vanilla tanh RNN with recurrent gain 1.3 on the adding problem over 100
  steps under SGD momentum at lr 0.1, which explodes from the first steps; an MLP on the raw digits with 5% of the
  images x50), the same MLP on clean digits, and a deep ReLU + BatchNorm classifier trained to near-zero loss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import clipping_grid as grid
import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
Schedule = Callable[[int], float]  # learning-rate factor at a step (LambdaLR)


@dataclass(frozen=True)
class Cell:
    """One configuration of one family, with one seed."""

    family: str
    config: str
    seed: int
    kind: str  # "healthy" | "outliers" | "growth"
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def healthy(self) -> bool:
        return self.kind == "healthy"

    @property
    def key(self) -> str:
        return f"{self.family}/{self.config}/s{self.seed}"

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass
class Setup:
    """Everything one training run of a cell needs; the same for every rule."""

    model: Callable[[], nn.Module]
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    schedule: Schedule | None
    batches: list[Batch]
    loss: Callable[[nn.Module, Tensor, Tensor], Tensor]
    evaluate: Callable[[nn.Module], float]
    outlier: list[bool]  # per batch: does it hold a corrupted sample


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _order(n: int, batch: int, steps: int, seed: int) -> list[Tensor]:
    """``steps`` batches of indices: epochs of a seeded permutation, partial batches dropped."""
    g = _gen(seed)
    out: list[Tensor] = []
    while len(out) < steps:
        out += [b for b in torch.randperm(n, generator=g).split(batch) if len(b) == batch]
    return out[:steps]


def _sgd(lr: float, momentum: float = 0.9) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)


def _adamw(lr: float, weight_decay: float = 0.01) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=weight_decay)


def _seeded(seed: int, build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(seed)
        return build()

    return make


@torch.no_grad()
def _metric(model: nn.Module, fn: Callable[[nn.Module], Tensor]) -> float:
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return math.nan
    was = model.training
    model.eval()
    value = float(fn(model))
    model.train(was)
    return value if math.isfinite(value) else math.nan


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(out, y)


def _ce(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out, y)


def _supervised(
    model: Callable[[], nn.Module],
    optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    x: Tensor,
    y: Tensor,
    corrupt: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    criterion: Callable[[Tensor, Tensor], Tensor],
    batch: int,
    steps: int,
    seed: int,
    schedule: Schedule | None = None,
    decay: bool = True,
) -> Setup:
    order = _order(len(x), batch, steps, seed)
    return Setup(
        model=model,
        optimizer=optimizer,
        schedule=final_decay(schedule, steps) if decay else schedule,
        batches=[(x[i], y[i]) for i in order],
        loss=lambda m, xb, yb: criterion(m(xb), yb),
        evaluate=lambda m: _metric(m, lambda m: criterion(m(x_val), y_val)),
        outlier=[bool(corrupt[i].any()) for i in order],
    )


def final_decay(schedule: Schedule | None, steps: int, share: float = 0.2) -> Schedule:
    """``schedule`` (constant when ``None``) times a linear decay to zero over the last ``share`` of the steps.

    The clean metric then measures where the run got, not the jitter of its last steps (with a constant learning
    rate, two runs one clipped step apart end up to 2x apart in validation loss).
    """
    base = schedule or (lambda step: 1.0)
    tail = max(1, round(share * steps))
    return lambda step: base(step) * min(1.0, (steps - step) / tail)


def _corrupt_rows(n: int, rate: float, g: torch.Generator) -> Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    count = round(rate * n)
    if count:
        mask[torch.randperm(n, generator=g)[:count]] = True
    return mask


# ---------------------------------------------------------------------------------------------------------- mlp grid
MLP_CONFIGS = (
    ("regression", "sgd", 0.0, 1.0),
    ("classification", "adamw", 0.0, 1.0),
    ("regression", "sgd", 0.0002, 3000.0),
    ("regression", "sgd", 0.01, 300.0),
    ("regression", "adamw", 0.01, 3000.0),
    ("classification", "sgd", 0.002, 3000.0),
    ("classification", "sgd", 0.01, 3000.0),
    ("classification", "adamw", 0.01, 30.0),
)


def mlp_setup(cell: Cell, steps: int) -> Setup:
    g = grid.Cell(cell.get("task"), cell.get("optimizer"), cell.get("rate"), cell.get("magnitude"), seed=cell.seed)
    data = grid.make_data(g)
    order = grid.batch_order(g, math.ceil(steps / (grid.N_TRAIN // grid.BATCH)))[:steps]
    return Setup(
        model=lambda: grid.make_model(g),
        optimizer=lambda m: grid.make_optimizer(g, m),
        schedule=None,
        batches=[(data.x[i], data.y[i]) for i in order],
        loss=lambda m, xb, yb: grid.loss_fn(g, m(xb), yb),
        evaluate=lambda m: _metric(m, lambda m: grid.loss_fn(g, m(data.x_val), data.y_val)),
        outlier=[bool(data.outlier[i].any()) for i in order],
    )


# ---------------------------------------------------------------------------------------------------------- digits
@functools.cache
def digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(data.target)


def digits_split(seed: int, classes: tuple[int, ...] = tuple(range(10))) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x, y, x_val, y_val) of the chosen digits, a seeded 78/22 split; labels renumbered from 0."""
    x, y = digits()
    keep = torch.isin(y, torch.tensor(classes))
    x, y = x[keep], y[keep]
    y = torch.searchsorted(torch.tensor(classes), y)
    perm = torch.randperm(len(x), generator=_gen(7000 + seed))
    n_val = len(x) * 22 // 100
    return x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]


def noisy_digits(
    seed: int, classes: tuple[int, ...] = tuple(range(10)), n: int = 8192, n_val: int = 2048
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits shifted by up to one pixel, with Gaussian pixel noise (0.3): ``n`` training images drawn from the
    training split, ``n_val`` validation images from the validation split. More data than digits itself, and a
    validation loss away from zero, so one cell's metric does not hinge on a few confident mistakes."""
    x, y, x_val, y_val = digits_split(seed, classes)
    g = _gen(7100 + seed)

    def draw(images: Tensor, labels: Tensor, count: int) -> tuple[Tensor, Tensor]:
        pick = torch.randint(len(images), (count,), generator=g)
        padded = nn.functional.pad(images[pick], (1, 1, 1, 1))
        dx, dy = torch.randint(3, (count,), generator=g), torch.randint(3, (count,), generator=g)
        rows = (dy[:, None] + torch.arange(8)[None, :])[:, :, None].expand(count, 8, 8)
        cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, :].expand(count, 8, 8)
        shifted = padded[torch.arange(count)[:, None, None], 0, rows, cols].unsqueeze(1)
        return shifted + 0.3 * torch.randn(shifted.shape, generator=g), labels[pick]

    return (*draw(x, y, n), *draw(x_val, y_val, n_val))


def digits_cnn(classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 16, 64),
        nn.ReLU(),
        nn.Linear(64, classes),
    )


def digits_mlp() -> nn.Module:
    hidden = (nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
    return nn.Sequential(nn.Flatten(), *hidden, nn.Linear(128, 10))


def _image_outliers(x: Tensor, rate: float, magnitude: float, seed: int) -> tuple[Tensor, Tensor]:
    corrupt = _corrupt_rows(len(x), rate, _gen(8000 + seed))
    x = x.clone()
    x[corrupt] *= magnitude
    return x, corrupt


def cnn_setup(cell: Cell, steps: int) -> Setup:
    x, y, x_val, y_val = noisy_digits(cell.seed)
    x, corrupt = _image_outliers(x, cell.get("rate"), cell.get("magnitude"), cell.seed)
    opt = _sgd(0.05) if cell.get("optimizer") == "sgd" else _adamw(1e-3)
    model = _seeded(3000 + cell.seed, digits_cnn)
    return _supervised(model, opt, x, y, corrupt, x_val, y_val, _ce, 32, steps, cell.seed)


@functools.cache
def pretrained_digits_cnn(seed: int, steps: int) -> dict[str, Tensor]:
    """A digits CNN trained on digits 0-4 (SGD momentum, lr 0.05, batch 32), its weights."""
    x, y, _, _ = noisy_digits(seed, (0, 1, 2, 3, 4))
    torch.manual_seed(4000 + seed)
    model = digits_cnn(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for idx in _order(len(x), 32, steps, 4100 + seed):
        loss = _ce(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def finetune_setup(cell: Cell, steps: int) -> Setup:
    weights = pretrained_digits_cnn(cell.seed, 300)

    def model() -> nn.Module:
        torch.manual_seed(4200 + cell.seed)
        net = digits_cnn(5)
        net.load_state_dict({k: v for k, v in weights.items() if not k.startswith("8.")}, strict=False)
        return net

    x, y, x_val, y_val = noisy_digits(cell.seed, (5, 6, 7, 8, 9))
    x, corrupt = _image_outliers(x, cell.get("rate", 0.0), cell.get("magnitude", 1.0), cell.seed)
    return _supervised(model, _sgd(cell.get("lr")), x, y, corrupt, x_val, y_val, _ce, 32, steps, cell.seed)


def digits_mlp_setup(cell: Cell, steps: int) -> Setup:
    x, y, x_val, y_val = digits_split(cell.seed)
    x, corrupt = _image_outliers(x, cell.get("rate"), cell.get("magnitude"), cell.seed)
    model = _seeded(3000 + cell.seed, digits_mlp)
    return _supervised(model, _sgd(0.05), x, y, corrupt, x_val, y_val, _ce, 32, steps, cell.seed)


# ---------------------------------------------------------------------------------------------------------- recurrent
class Recurrent(nn.Module):
    """A one-layer recurrent net (``rnn``: tanh, ``lstm``, ``gru``), recurrent weights orthogonal times ``gain``.

    ``per_step``: a prediction at every time step (sequence to sequence), else one from the last state.
    """

    def __init__(self, cell: str, gain: float, inputs: int, per_step: bool, hidden: int = 32) -> None:
        super().__init__()
        kind = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = kind(inputs, hidden, batch_first=True)
        with torch.no_grad():
            for block in self.rnn.weight_hh_l0.split(hidden):
                nn.init.orthogonal_(block, gain=gain)
        self.head = nn.Linear(hidden, 1)
        self.per_step = per_step

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out if self.per_step else out[:, -1])


def adding_problem(n: int, length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Hochreiter's adding problem: values in [0, 1) and two markers; the target is the sum of the marked values."""
    values = torch.rand(n, length, generator=g)
    first = torch.randint(length // 2, (n,), generator=g)
    second = torch.randint(length // 2, length, (n,), generator=g)
    marks = torch.zeros(n, length)
    marks[torch.arange(n), first] = 1.0
    marks[torch.arange(n), second] = 1.0
    return torch.stack([values, marks], dim=2), (values * marks).sum(1, keepdim=True)


def leaky_sum(n: int, length: int, g: torch.Generator, decay: float = 0.8) -> tuple[Tensor, Tensor]:
    """Gaussian inputs; the target at every step is their exponentially decaying sum (unit variance)."""
    x = torch.randn(n, length, 1, generator=g)
    y = torch.zeros_like(x)
    acc = torch.zeros(n, 1)
    for t in range(length):
        acc = decay * acc + x[:, t]
        y[:, t] = acc
    return x, y * math.sqrt(1 - decay**2)


def recurrent_setup(cell: Cell, steps: int) -> Setup:
    g = _gen(5000 + cell.seed)
    length = cell.get("length", 40)
    adding = cell.get("task") == "adding"
    task = adding_problem if adding else leaky_sum
    x, y = task(4096, length, g)
    x_val, y_val = task(512, length, g)
    inputs = 2 if adding else 1
    model = _seeded(3000 + cell.seed, lambda: Recurrent(cell.get("cell"), cell.get("gain"), inputs, not adding))
    none = torch.zeros(len(x), dtype=torch.bool)
    return _supervised(model, _sgd(cell.get("lr")), x, y, none, x_val, y_val, _mse, 32, steps, cell.seed)


# ---------------------------------------------------------------------------------------------------------- transformer
VOCAB, CONTEXT = 16, 24


def markov_language(n: int, g: torch.Generator, table: Tensor) -> Tensor:
    """``n`` sequences of ``CONTEXT + 1`` tokens from a Markov chain with transition ``table``."""
    seq = torch.zeros(n, CONTEXT + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(VOCAB, (n,), generator=g)
    for t in range(1, CONTEXT + 1):
        seq[:, t] = torch.multinomial(table[seq[:, t - 1]], 1, generator=g).squeeze(1)
    return seq


class TinyLM(nn.Module):
    """A 2-layer pre-norm causal transformer, d_model 32, 2 heads, learned positions."""

    def __init__(self, d: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(0.02 * torch.randn(CONTEXT, d))
        layer = nn.TransformerEncoderLayer(d, 2, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(CONTEXT), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        h = self.blocks(h, mask=self.mask, is_causal=True)
        return self.out(self.norm(h))


def _lm_loss(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, VOCAB), y.reshape(-1))


def transformer_setup(cell: Cell, steps: int) -> Setup:
    g = _gen(6000 + cell.seed)
    table = torch.softmax(3.0 * torch.randn(VOCAB, VOCAB, generator=g), -1)  # entropy about 1.2 nats per token
    seq = markov_language(2048, g, table)
    val = markov_language(512, g, table)
    warmup = cell.get("warmup", 0)
    schedule = (lambda step: min(1.0, (step + 1) / warmup)) if warmup else None
    model = _seeded(3000 + cell.seed, TinyLM)
    none = torch.zeros(len(seq), dtype=torch.bool)
    return _supervised(
        model,
        _adamw(cell.get("lr")),
        seq[:, :-1],
        seq[:, 1:],
        none,
        val[:, :-1],
        val[:, 1:],
        _lm_loss,
        16,
        steps,
        cell.seed,
        schedule,
    )


# ---------------------------------------------------------------------------------------------------------- cauchy
def cauchy_setup(cell: Cell, steps: int) -> Setup:
    g = _gen(9000 + cell.seed)
    n, features = 4096, 32
    x = torch.randn(n + 1024, features, generator=g)
    y = ((x[:, :4].sum(1) + 0.5 * torch.sin(3 * x[:, 4])) / 2).unsqueeze(1)
    x, x_val, y, y_val = x[:n], x[n:], y[:n], y[n:]
    scale = cell.get("scale")
    if cell.get("noise") == "cauchy":
        u = torch.rand(n, 1, generator=g)
        noise = scale * torch.tan(math.pi * (u - 0.5))
    else:
        noise = scale * torch.randn(n, 1, generator=g)
    corrupt = noise.abs().squeeze(1) > 10 * scale
    opt = _sgd(0.01) if cell.get("optimizer") == "sgd" else _adamw(1e-3)
    model = _seeded(
        3000 + cell.seed,
        lambda: nn.Sequential(nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1)),
    )
    return _supervised(model, opt, x, y + noise, corrupt, x_val, y_val, _mse, 64, steps, cell.seed)


# ---------------------------------------------------------------------------------------------------------- schedule
def warmup_cosine(steps: int, warmup: int) -> Schedule:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return factor


def schedule_setup(cell: Cell, steps: int) -> Setup:
    g = grid.Cell("classification", "sgd", 0.0, 1.0, seed=cell.seed)
    data = grid.make_data(g)
    none = torch.zeros(len(data.x), dtype=torch.bool)
    model = _seeded(3000 + cell.seed, lambda: grid.make_model(g))
    return _supervised(
        model,
        _sgd(0.1 * cell.get("peak")),
        data.x,
        data.y,
        none,
        data.x_val,
        data.y_val,
        _ce,
        64,
        steps,
        cell.seed,
        warmup_cosine(steps, steps // 10),
        decay=False,
    )


# ---------------------------------------------------------------------------------------------------------- issue
def blobs(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = _gen(seed)
    centres = 2.0 * torch.randn(4, 32, generator=g)
    y = torch.randint(4, (n + 1024,), generator=g)
    x = centres[y] + torch.randn(n + 1024, 32, generator=g)
    return x[:n], y[:n], x[n:], y[n:]


def deep_bn_mlp(depth: int = 11, width: int = 64) -> nn.Module:
    layers: list[nn.Module] = []
    features = 32
    for _ in range(depth - 1):
        layers += [nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU()]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, 4))


def issue_setup(cell: Cell, steps: int) -> Setup:
    run = cell.get("run")
    if run == "tanh rnn":
        return recurrent_setup(cell, steps)
    if run == "digits mlp":
        return digits_mlp_setup(cell, steps)
    x, y, x_val, y_val = blobs(4096, cell.seed)
    none = torch.zeros(len(x), dtype=torch.bool)
    model = _seeded(3000 + cell.seed, deep_bn_mlp)
    return _supervised(model, _sgd(0.1), x, y, none, x_val, y_val, _ce, 64, steps, cell.seed)


# ---------------------------------------------------------------------------------------------------------- linear
def _init(model: nn.Module, init: str) -> nn.Module:
    """``default`` (torch's), ``zeros`` or ``small`` (every weight and bias drawn at std 0.001)."""
    if init != "default":
        with torch.no_grad():
            for p in model.parameters():
                p.zero_() if init == "zeros" else p.normal_(0.0, 1e-3)
    return model


def linear_setup(cell: Cell, steps: int) -> Setup:
    init = cell.get("init", "default")
    if cell.get("task") == "logreg":
        x, y, x_val, y_val = digits_split(cell.seed)
        x, corrupt = _image_outliers(x, cell.get("rate", 0.0), cell.get("magnitude", 1.0), cell.seed)
        model = _seeded(3000 + cell.seed, lambda: _init(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), init))
        return _supervised(model, _sgd(cell.get("lr")), x, y, corrupt, x_val, y_val, _ce, 32, steps, cell.seed)
    g = _gen(9500 + cell.seed)
    n, features = 4096, 32
    x = torch.randn(n + 1024, features, generator=g)
    w = 2.0 * torch.randn(features, 1, generator=g)
    y = x @ w + 0.1 * torch.randn(n + 1024, 1, generator=g)
    x, x_val, y, y_val = x[:n], x[n:], y[:n], y[n:]
    noise = torch.zeros(n, 1)
    if cell.get("noise") == "cauchy":
        noise = torch.tan(math.pi * (torch.rand(n, 1, generator=g) - 0.5))
    corrupt = noise.abs().squeeze(1) > 10
    if cell.get("task") == "shallow":
        build = lambda: _init(nn.Sequential(nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 1)), init)  # noqa: E731
    else:
        build = lambda: _init(nn.Linear(features, 1), init)  # noqa: E731
    model = _seeded(3000 + cell.seed, build)
    return _supervised(model, _sgd(cell.get("lr")), x, y + noise, corrupt, x_val, y_val, _mse, 64, steps, cell.seed)


def _linear_configs() -> tuple[tuple[str, str, dict[str, Any]], ...]:
    logreg = {"task": "logreg", "lr": 0.5}
    linreg = {"task": "linreg", "lr": 0.05}
    return (
        ("logreg digits", "healthy", logreg),
        ("logreg digits zeros", "healthy", logreg | {"init": "zeros"}),
        ("logreg digits 5% x50", "outliers", logreg | {"rate": 0.05, "magnitude": 50.0}),
        ("linreg", "healthy", linreg),
        ("linreg init 1e-3", "healthy", linreg | {"init": "small"}),
        ("linreg zeros", "healthy", linreg | {"init": "zeros"}),
        ("linreg cauchy", "outliers", linreg | {"noise": "cauchy"}),
        ("linreg lr 20x", "growth", linreg | {"lr": 1.0}),
        ("shallow init 1e-3", "healthy", {"task": "shallow", "lr": 0.01, "init": "small"}),
        ("shallow init 1e-3 lr 5x", "growth", {"task": "shallow", "lr": 0.05, "init": "small"}),
    )


# ---------------------------------------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Family:
    name: str
    setup: Callable[[Cell, int], Setup]
    steps: int
    configs: tuple[tuple[str, str, dict[str, Any]], ...]  # (config name, kind, parameters)


def _mlp_configs() -> tuple[tuple[str, str, dict[str, Any]], ...]:
    out = []
    for task, opt, rate, mag in MLP_CONFIGS:
        what = "no outliers" if rate == 0 else f"{100 * rate:g}% x{mag:g}"
        kind = "healthy" if rate == 0 else "outliers"
        out.append((f"{task[:5]} {opt} {what}", kind, {"task": task, "optimizer": opt, "rate": rate, "magnitude": mag}))
    return tuple(out)


def _cnn_configs() -> tuple[tuple[str, str, dict[str, Any]], ...]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for opt, rate, mag in (
        ("sgd", 0.0, 1.0),
        ("adamw", 0.0, 1.0),
        ("sgd", 0.01, 50.0),
        ("sgd", 0.05, 50.0),
        ("sgd", 0.1, 50.0),
        ("sgd", 0.1, 10.0),
        ("adamw", 0.05, 50.0),
        ("adamw", 0.1, 50.0),
    ):
        what = "clean" if rate == 0 else f"{100 * rate:g}% x{mag:g}"
        kind = "healthy" if rate == 0 else "outliers"
        out.append((f"{opt} {what}", kind, {"optimizer": opt, "rate": rate, "magnitude": mag}))
    return tuple(out)


def _recurrent_configs() -> tuple[tuple[str, str, dict[str, Any]], ...]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for cell, gain, lr, kind in (
        ("rnn", 0.9, 0.03, "healthy"),
        ("rnn", 1.5, 0.1, "growth"),
        ("rnn", 1.2, 0.3, "growth"),
        ("rnn", 1.5, 0.3, "growth"),
        ("lstm", 0.9, 0.1, "healthy"),
        ("lstm", 1.5, 0.3, "growth"),
        ("gru", 0.9, 0.1, "healthy"),
        ("gru", 1.5, 0.3, "growth"),
    ):
        params = {"cell": cell, "gain": gain, "lr": lr, "length": 30 if cell == "gru" else 40}
        out.append((f"{cell} gain {gain:g} lr {lr:g}", kind, params))
    return tuple(out)


def _transformer_configs() -> tuple[tuple[str, str, dict[str, Any]], ...]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for factor in (1, 10, 30):
        for warmup in (0, 50):
            kind = "healthy" if factor == 1 else "growth"
            name = f"lr {factor}x{' warm-up' if warmup else ''}"
            out.append((name, kind, {"lr": 3e-3 * factor, "warmup": warmup}))
    return tuple(out)


def _cauchy_configs() -> tuple[tuple[str, str, dict[str, Any]], ...]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for opt in ("sgd", "adamw"):
        out.append((f"{opt} gaussian 0.3", "healthy", {"optimizer": opt, "noise": "gaussian", "scale": 0.3}))
        for scale in (0.3, 3.0):
            out.append((f"{opt} cauchy {scale:g}", "outliers", {"optimizer": opt, "noise": "cauchy", "scale": scale}))
    return tuple(out)


FAMILIES = (
    Family("mlp", mlp_setup, 384, _mlp_configs()),
    Family("cnn", cnn_setup, 300, _cnn_configs()),
    Family("recurrent", recurrent_setup, 200, _recurrent_configs()),
    Family("transformer", transformer_setup, 200, _transformer_configs()),
    Family("cauchy", cauchy_setup, 300, _cauchy_configs()),
    Family(
        "schedule",
        schedule_setup,
        300,
        tuple((f"peak {p}x", "healthy" if p == 1 else "growth", {"peak": float(p)}) for p in (1, 3, 10, 30)),
    ),
    Family(
        "finetune",
        finetune_setup,
        200,
        (
            ("sane lr", "healthy", {"lr": 0.01}),
            ("lr 30x", "growth", {"lr": 0.3}),
            ("5% x50", "outliers", {"lr": 0.01, "rate": 0.05, "magnitude": 50.0}),
            ("10% x20", "outliers", {"lr": 0.01, "rate": 0.1, "magnitude": 20.0}),
        ),
    ),
    Family("linear", linear_setup, 200, _linear_configs()),
    Family(
        "issue",
        issue_setup,
        300,
        (
            (
                "tanh rnn gain 1.3",
                "growth",
                {"run": "tanh rnn", "task": "adding", "cell": "rnn", "gain": 1.3, "lr": 0.1, "length": 100}
                | {"steps": 150},
            ),
            ("digits mlp 5% x50", "outliers", {"run": "digits mlp", "rate": 0.05, "magnitude": 50.0}),
            ("digits mlp clean", "healthy", {"run": "digits mlp", "rate": 0.0, "magnitude": 1.0}),
            ("near-zero loss classifier", "healthy", {"run": "blobs"}),
        ),
    ),
)

SEEDS = (0, 1, 2)


def cells(families: tuple[str, ...] | None = None, seeds: tuple[int, ...] = SEEDS) -> list[Cell]:
    out = []
    for family in FAMILIES:
        if families and family.name not in families:
            continue
        for config, kind, params in family.configs:
            for seed in seeds:
                out.append(Cell(family.name, config, seed, kind, tuple(sorted(params.items()))))
    return out


def family(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)


def setup(cell: Cell, quick: bool = False) -> Setup:
    fam = family(cell.family)
    steps = cell.get("steps", fam.steps)
    steps = steps // 3 if quick else steps
    return fam.setup(cell, steps)
