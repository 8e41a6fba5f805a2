"""The generated bank's runs: families of model x optimizer x schedule x event x seed, trained on this CPU.

Each run is a :class:`RunSpec` (plain values); :func:`generate` lists the bank; :func:`train` trains one run in a
plain PyTorch loop that measures with the package's collector exactly where GradWatch measures (after backward,
accumulation and unscaling, before the optimizer step) and returns its :class:`Trace`; :func:`train_lightning` trains
the same run through a real ``lightning.pytorch.Trainer`` with ``GradWatch(on_*="warn")``.

A run's expected verdict is *not* part of its spec: it comes from its outcome (``bank_outcome.outcome``). The
``event`` only says what was done to the run.

Families (by model): ``mlp_relu``, ``mlp_tanh``, ``mlp_sigmoid`` (MLPs on digits/blobs), ``cnn`` (no
normalisation) and ``cnn_bn`` (BatchNorm) on bright-quadrant or digit images, ``resmlp`` (pre-norm residual MLP),
``lstm`` and ``gru`` (language models over a synthetic token language), ``rnn`` (a vanilla tanh RNN reading a
sequence to classify its first input), ``transformer`` (a pre-norm decoder LM).

Optimizers: ``sgd``, ``momentum`` (0.9), ``adam``, ``adamw`` (weight decay 0.01), ``rmsprop``. Schedules (per
optimizer step): ``constant``, ``warmup`` (linear over the first 30 steps), ``cosine`` (to 0 at the run's end),
``ramp`` (linear from 1x to 3x the base learning rate over the run), ``step`` (x0.3 every 60 steps).

Events: ``none``; ``lr_high`` (the base learning rate x50 for SGD-like optimizers, x100 for adaptive ones);
``ramp_unstable`` (the learning rate multiplied by 1.03-1.08 every step); ``corrupt`` (a few inputs of some batches
scaled by 1e2-1e4); ``nan`` (one batch of NaN inputs, or a NaN loss for token models); ``bad_init`` (a
family-specific bad initialisation: dead ReLU biases, a deep saturating stack, exploding recurrent weights, ...);
``unfreeze`` (the backbone frozen, then unfrozen and added as a parameter group at an epoch start, as Lightning's
``BackboneFinetuning`` does, BatchNorm layers trainable throughout); ``adapter`` (a zero-initialised adapter
added to the forward pass and to the optimizer with ``add_param_group`` mid-run); ``branch`` (an auxiliary head
whose loss is used on one batch in three: its parameters have gradients on those steps only); ``freeze`` (the
first half of the backbone frozen mid-run: its layers leave); ``accum`` (gradient accumulation over 4 batches);
``fp16`` (fp16 autocast with a loss scaler from 2**16); ``manual`` (manual optimization; in the plain loop the same
as ``none``). Every run also has an auxiliary head that no loss uses (it never has a gradient).

Noise (healthy variants on many seeds): ``dropout``, ``small_batch`` (batch 4-8), ``augment`` (Gaussian input
noise, or 10% of tokens replaced), ``label_noise`` (25% of labels random).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from gradwatch_adapter import StepRecord, Watcher
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

FAMILIES = ("mlp_relu", "mlp_tanh", "mlp_sigmoid", "cnn", "cnn_bn", "resmlp", "lstm", "gru", "rnn", "transformer")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "warmup", "cosine", "ramp", "step")
EVENTS = (
    "none",
    "lr_high",
    "ramp_unstable",
    "corrupt",
    "nan",
    "bad_init",
    "unfreeze",
    "adapter",
    "branch",
    "freeze",
    "accum",
    "fp16",
    "manual",
)
NOISES = ("dropout", "small_batch", "augment", "label_noise")


# ---------------------------------------------------------------------------------------------------------- data


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32) / 16.0, torch.tensor(data.target, dtype=torch.long)


def dataset(name: str, seed: int) -> TensorDataset:
    """``digits`` (64 features), ``digit_images`` (1x8x8), ``blobs`` (32 features, 4 classes), ``quadrants``
    (1x16x16, 4 classes), ``tokens`` (sequences of 32 tokens of an arithmetic-progression language, vocabulary 64),
    ``memory`` (20 steps of 4-d noise, classify the first step's one-hot)."""
    g = _gen(seed)
    if name in ("digits", "digit_images"):
        x, y = _digits()
        return TensorDataset(x.reshape(-1, 1, 8, 8) if name == "digit_images" else x, y)
    if name == "blobs":
        centres = 2.0 * torch.randn(4, 32, generator=g)
        y = torch.randint(4, (2048,), generator=g)
        return TensorDataset(centres[y] + torch.randn(2048, 32, generator=g), y)
    if name == "quadrants":
        y = torch.randint(4, (1024,), generator=g)
        x = 0.5 * torch.randn(1024, 1, 16, 16, generator=g)
        for q in range(4):
            r, c = divmod(q, 2)
            x[y == q, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] += 1.0
        return TensorDataset(x, y)
    if name == "tokens":
        start = torch.randint(64, (1024, 1), generator=g)
        stride = torch.randint(1, 4, (1024, 1), generator=g)
        seq = (start + stride * torch.arange(33)) % 64
        return TensorDataset(seq[:, :-1], seq[:, 1:])
    if name == "shifted_blobs":  # issue 22's noisy classifier: four blobs, the input shifted by a fixed buffer
        centres = torch.randn(4, 16, generator=g)
        y = torch.randint(4, (2048,), generator=g)
        shift = torch.randn(16, generator=_gen(1000 + seed))
        return TensorDataset(centres[y] + torch.randn(2048, 16, generator=g) + shift, y)
    if name == "memory":
        y = torch.randint(4, (2048,), generator=g)
        x = 0.3 * torch.randn(2048, 20, 4, generator=g)
        x[:, 0] = nn.functional.one_hot(y, 4).float() * 3.0
        return TensorDataset(x, y)
    raise ValueError(f"unknown data set {name!r}")


CLASSES = {"digits": 10, "digit_images": 10, "blobs": 4, "shifted_blobs": 4, "quadrants": 4, "tokens": 64, "memory": 4}
FEATURES = {"digits": 64, "blobs": 32, "shifted_blobs": 16}


# ---------------------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class RunSpec:
    """One generated run, in plain values.

    Attributes:
        name: unique, readable.
        family: the model family (one of :data:`FAMILIES`).
        optimizer, schedule, event: see the module docstring.
        seed: seeds weights, data, order and noise.
        lr: base learning rate (before the event's change).
        steps: optimizer steps.
        batch_size: batch size.
        data: the data set.
        depth, width: the model's size (family-specific meaning).
        noise: healthy noise (see :data:`NOISES`), possibly several.
        event_step: when the event happens (``unfreeze``: the epoch; others: the optimizer step).
        event_scale: the event's magnitude (``lr_high``: factor; ``ramp_unstable``: growth per step;
            ``corrupt``: input scale; ``bad_init``: family-specific).
        lightning: also trained through a real Trainer to compare with the plain loop.
        quick: in the quick subset.
        origin: ``"generated"`` or ``"issue"`` (the two runs of the issue).
    """

    name: str
    family: str
    optimizer: str
    schedule: str
    event: str
    seed: int
    lr: float
    steps: int = 200
    batch_size: int = 32
    data: str = "digits"
    depth: int = 4
    width: int = 64
    activation: str = "relu"
    noise: tuple[str, ...] = ()
    event_step: int = 60
    event_scale: float = 0.0
    lightning: bool = False
    quick: bool = False
    origin: str = "generated"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# base learning rates per family and optimizer, well inside the stable range
_SGD_LR = {
    "mlp_relu": 0.1,
    "mlp_tanh": 0.1,
    "mlp_sigmoid": 0.5,
    "cnn": 0.05,
    "cnn_bn": 0.1,
    "resmlp": 0.05,
    "lstm": 1.0,
    "gru": 1.0,
    "rnn": 0.05,
    "transformer": 0.1,
}
_ADAPTIVE_LR = {"rnn": 2e-3, "lstm": 3e-3, "gru": 3e-3}


def base_lr(family: str, optimizer: str) -> float:
    if optimizer == "sgd":
        return _SGD_LR[family]
    if optimizer == "momentum":
        return _SGD_LR[family] * 0.2
    if optimizer == "rmsprop":
        return 0.3 * _ADAPTIVE_LR.get(family, 1e-3)
    return _ADAPTIVE_LR.get(family, 1e-3)


_FAMILY_SHAPE: dict[str, dict[str, Any]] = {
    "mlp_relu": {"data": "digits", "depth": 5, "width": 64, "activation": "relu"},
    "mlp_tanh": {"data": "digits", "depth": 5, "width": 64, "activation": "tanh"},
    "mlp_sigmoid": {"data": "blobs", "depth": 3, "width": 64, "activation": "sigmoid"},
    "cnn": {"data": "quadrants", "depth": 2, "width": 8},
    "cnn_bn": {"data": "quadrants", "depth": 2, "width": 8},
    "resmlp": {"data": "blobs", "depth": 6, "width": 64},
    "lstm": {"data": "tokens", "depth": 1, "width": 48, "batch_size": 16, "steps": 160},
    "gru": {"data": "tokens", "depth": 1, "width": 48, "batch_size": 16, "steps": 160},
    "rnn": {"data": "memory", "depth": 1, "width": 32},
    "transformer": {"data": "tokens", "depth": 2, "width": 32, "batch_size": 16, "steps": 150},
}


def _event_settings(family: str, optimizer: str, event: str, k: int) -> dict[str, Any]:
    """The event's step and scale, varied with ``k``."""
    adaptive = optimizer in ("adam", "adamw", "rmsprop")
    if event == "lr_high":
        return {"event_scale": (100.0 if adaptive else 50.0) * (1, 3, 0.5)[k % 3]}
    if event == "ramp_unstable":
        return {"event_scale": (1.03, 1.05, 1.08)[k % 3], "event_step": 0}
    if event == "corrupt":
        return {"event_scale": (1e2, 1e3, 1e4)[k % 3], "event_step": (50, 80, 110)[k % 3]}
    if event == "nan":
        return {"event_step": (40, 75, 120)[k % 3]}
    if event == "unfreeze":
        return {"event_step": 1 + k % 2}  # the epoch the backbone joins
    if event in ("adapter", "freeze"):
        return {"event_step": (50, 80, 100)[k % 3]}
    return {}


def _spec(family: str, optimizer: str, schedule: str, event: str, seed: int, k: int, **extra: Any) -> RunSpec:
    shape = {"steps": 200, "batch_size": 32, **_FAMILY_SHAPE[family]}
    if family == "cnn" and k % 2:
        shape["data"] = "digit_images"
    settings = _event_settings(family, optimizer, event, k)
    noise = extra.pop("noise", ())
    tag = "+".join(noise) if noise else event
    name = f"{family}/{optimizer}/{schedule}/{tag}/s{seed}"
    spec = RunSpec(name, family, optimizer, schedule, event, seed, base_lr(family, optimizer), noise=noise,
                   **{**shape, **settings, **extra})  # fmt: skip
    if "small_batch" in noise:
        spec = replace(spec, batch_size=(4, 8)[seed % 2])
    return spec


#: seeds of issue 22's noisy classifier (healthy runs whose single mini-batch losses are a coin flip)
NOISY_CLASSIFIER_SEEDS = 32


def issue_runs() -> list[RunSpec]:
    """The two runs of issue 23, and issue 22's noisy classifier on several seeds, as generated cases."""
    noisy = [
        # an MLP 16-32-32-4 (ReLU, dropout 0.1 on an input shifted by a fixed random buffer) on four blobs, SGD lr 0.05
        # with momentum 0.9, batch 32, two epochs: the loss falls from 1.3 to 0.6, single batches jump up and down
        RunSpec(f"mlp_relu/momentum/constant/issue22-noisy-classifier/s{seed}", "mlp_relu", "momentum", "constant",
                "none", seed, 0.05, steps=128, batch_size=32, data="shifted_blobs", depth=3, width=32,
                noise=("input_dropout",), quick=seed < 2, origin="issue")
        for seed in range(NOISY_CLASSIFIER_SEEDS)
    ]  # fmt: skip
    return [  # noqa: RUF005 (the two of issue 23 listed first)
        # a digits CNN fine-tuned with BackboneFinetuning: backbone frozen two epochs, then unfrozen; Adam; an
        # auxiliary head no loss uses (every bank model has one)
        RunSpec("cnn/adam/constant/issue-backbone-finetuning/s0", "cnn", "adam", "constant", "unfreeze", 0, 3e-3,
                steps=200, batch_size=32, data="digit_images", depth=2, width=32, event_step=2, lightning=True,
                quick=True, origin="issue"),
        # 24 tanh layers at PyTorch's default initialisation on digits, SGD momentum 0.9
        RunSpec("mlp_tanh/momentum/constant/issue-24-tanh-layers/s0", "mlp_tanh", "momentum", "constant",
                "bad_init", 0, 0.01, steps=200, batch_size=32, data="digits", depth=24, width=64, activation="tanh",
                lightning=True, quick=True, origin="issue"),
    ] + noisy  # fmt: skip


#: in each family, the event run also trained through a real Trainer (varied over families)
_LIGHTNING_EVENT = {
    "mlp_relu": "accum",
    "mlp_tanh": "none",
    "mlp_sigmoid": "manual",
    "cnn": "unfreeze",
    "cnn_bn": "fp16",
    "resmlp": "adapter",
    "lstm": "branch",
    "gru": "freeze",
    "rnn": "nan",
    "transformer": "lr_high",
}
HEALTHY_SEEDS = 16  # noisy healthy runs per family
EVENT_RUNS = 2  # runs per family and event
#: the second bad initialisation of the MLP families: a deep stack at PyTorch's default initialisation
DEEP_STACKS = {"mlp_relu": 16, "mlp_tanh": 20, "mlp_sigmoid": 12}


def generate() -> list[RunSpec]:
    """The whole bank: per family, two runs per event (13 events; the second with another optimizer, schedule,
    seed and magnitude) and 16 noisy healthy runs; plus the issue's two runs."""
    specs: list[RunSpec] = []
    for i, family in enumerate(FAMILIES):
        for v in range(EVENT_RUNS):
            for j, event in enumerate(EVENTS):
                optimizer = OPTIMIZERS[(i + j + 2 * v) % len(OPTIMIZERS)]
                schedule = SCHEDULES[(2 * i + j + 3 * v) % len(SCHEDULES)]
                if event == "ramp_unstable":
                    schedule = "constant"
                seed = 100 * i + j + 20 * v
                spec = _spec(family, optimizer, schedule, event, seed, i + j + v)
                if event == "bad_init" and v == 1 and family in DEEP_STACKS:
                    spec = replace(spec, depth=DEEP_STACKS[family], name=spec.name + "-deep")
                quick = v == 0 and event in ("none", "lr_high", "nan", "bad_init", "unfreeze", "branch")
                specs.append(replace(spec, lightning=v == 0 and _LIGHTNING_EVENT[family] == event, quick=quick))
        for k in range(HEALTHY_SEEDS):
            optimizer = OPTIMIZERS[(i + k) % len(OPTIMIZERS)]
            schedule = SCHEDULES[(i + 3 * k) % len(SCHEDULES)]
            noise = (NOISES[k % 4],) if k % 8 < 4 else (NOISES[k % 4], NOISES[(k + 1) % 4])
            seed = 100 * i + 50 + k
            specs.append(replace(_spec(family, optimizer, schedule, "none", seed, k, noise=noise), quick=k < 2))
    specs += issue_runs()
    names = [s.name for s in specs]
    assert len(set(names)) == len(names), "run names must be unique"
    return specs


# ---------------------------------------------------------------------------------------------------------- models


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[name]()


class _Block(nn.Module):
    """Pre-norm residual block ``h + W2 relu(W1 LayerNorm(h))``."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, width), nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.fc2(self.drop(torch.relu(self.fc1(self.norm(h)))))


class _Recurrent(nn.Module):
    """Embedding (tokens) or nothing (float sequences), then one recurrent layer (outside fp16 autocast for
    LSTM/GRU, which CPU autocast cannot run)."""

    def __init__(self, cell: str, inputs: int | None, width: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, width) if inputs is None else None
        kind = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = kind(width if inputs is None else inputs, width, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.cell = cell

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop(self.embed(x)) if self.embed is not None else x
        if self.cell in ("lstm", "gru") and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self.rnn(h.float())[0]
        return self.rnn(h)[0]


class _Transformer(nn.Module):
    def __init__(self, layers: int, width: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, width)
        self.pos = nn.Parameter(0.02 * torch.randn(32, width))
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.norm(self.encoder(self.embed(x) + self.pos[: x.shape[1]], mask=mask, is_causal=True))


def _backbone(spec: RunSpec, dropout: float) -> tuple[nn.Module, int]:
    """The family's backbone and its feature width."""
    f, width = spec.family, spec.width
    if f.startswith("mlp"):
        layers: list[nn.Module] = [nn.Dropout(0.1)] if "input_dropout" in spec.noise else []
        features = FEATURES[spec.data]
        for _ in range(spec.depth - 1):
            layers += [nn.Linear(features, width), _act(spec.activation)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            features = width
        return nn.Sequential(*layers), width
    if f in ("cnn", "cnn_bn"):
        bn = f == "cnn_bn"
        pool = 2 if spec.data == "quadrants" else 1
        blocks: list[nn.Module] = []
        channels = 1
        for i in range(spec.depth):
            out = width * 2**i
            blocks += [nn.Conv2d(channels, out, 3, padding=1)]
            blocks += [nn.BatchNorm2d(out)] if bn else []
            blocks += [nn.ReLU(), nn.MaxPool2d(2) if i == 0 and pool == 2 else nn.Identity()]
            channels = out
        # quadrants: the bright quadrant survives average pooling; digits: keep the 4x4 layout
        size = 2 if pool == 2 else 4
        blocks += [nn.AdaptiveAvgPool2d(2) if pool == 2 else nn.MaxPool2d(2), nn.Flatten()]
        if dropout:
            blocks.append(nn.Dropout(dropout))
        return nn.Sequential(*blocks), channels * size * size
    if f == "resmlp":
        return nn.Sequential(
            nn.Linear(FEATURES[spec.data], width), *(_Block(width, dropout) for _ in range(spec.depth))
        ), width
    if f in ("lstm", "gru", "rnn"):
        return _Recurrent(f, 4 if spec.data == "memory" else None, width, dropout), width
    if f == "transformer":
        return _Transformer(spec.depth, width, dropout), width
    raise ValueError(f"unknown family {f!r}")


class _Adapter(nn.Module):
    """A residual bottleneck adapter whose up-projection starts at zero (the model is unchanged when it joins)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(width, 8), nn.Linear(8, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(torch.relu(self.down(h)))


class BankNet(nn.Module):
    """``backbone`` -> [``adapter``] -> ``head``; ``branch`` (an auxiliary head with its own loss on some batches);
    ``aux`` (a head no loss uses).

    Args:
        spec: the run.
    """

    def __init__(self, spec: RunSpec) -> None:
        super().__init__()
        dropout = 0.25 if "dropout" in spec.noise else 0.0
        self.spec = spec
        self.backbone, features = _backbone(spec, dropout)
        classes = CLASSES[spec.data]
        self.adapter = _Adapter(features) if spec.event == "adapter" else None
        self.head = nn.Linear(features, classes)
        self.branch = nn.Linear(features, classes) if spec.event == "branch" else None
        self.aux = nn.Linear(features, classes)  # never used by a loss
        self.adapter_on = False
        self.corrupt_scale = 1.0
        if spec.event == "bad_init":
            _bad_init(self, spec)

    @property
    def sequence_output(self) -> bool:
        return self.spec.data == "tokens"

    def features(self, x: Tensor) -> Tensor:
        if self.corrupt_scale != 1.0 and x.is_floating_point():
            x = x * self.corrupt_scale
        h = self.backbone(x)
        if self.corrupt_scale != 1.0 and not x.is_floating_point():
            h = h * self.corrupt_scale  # token inputs: the corruption scales the sequence's features
        if self.spec.data == "memory":
            h = h[:, -1]
        if self.adapter is not None and self.adapter_on:
            h = self.adapter(h)
        return h

    def loss(self, x: Tensor, y: Tensor, step: int) -> Tensor:
        h = self.features(x)
        loss = _cross_entropy(self.head(h), y)
        if self.branch is not None and step % 3 == 0:
            loss = loss + 0.5 * _cross_entropy(self.branch(h), y)
        return loss


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


@torch.no_grad()
def _bad_init(net: BankNet, spec: RunSpec) -> None:
    """The family's bad initialisation (the 24-layer tanh stack of the issue is bad by its depth alone)."""
    f, k = spec.family, spec.seed % 2
    linears = [m for m in net.backbone.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if f in DEEP_STACKS and spec.depth >= DEEP_STACKS[f]:
        return  # deep enough to be bad at PyTorch's default initialisation
    if f in ("mlp_relu", "cnn"):  # dead ReLUs: every unit of the first layers negative for every input
        for m in linears[: max(1, len(linears) // 2)]:
            m.bias.fill_(-4.0 - 4.0 * k)
    elif f == "mlp_tanh":  # saturated: weights far too large
        for m in linears:
            m.weight.mul_(4.0)
    elif f == "mlp_sigmoid":  # a deep sigmoid stack would need to be built deep: shrink the weights instead
        for m in linears:
            m.weight.mul_(0.05)
    elif f == "cnn_bn":  # BatchNorm scales at zero: nothing below them gets a gradient at first
        for m in net.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.zero_()
    elif f == "resmlp":  # residual branches far too large: the stream grows block after block
        for m in linears[1:]:
            m.weight.mul_(6.0)
    elif f in ("lstm", "gru", "rnn"):  # recurrent weights far too large
        rnn = net.backbone.rnn
        rnn.weight_hh_l0.mul_(4.0 if f == "rnn" else 6.0)
    elif f == "transformer":  # output head far too large
        net.head.weight.mul_(30.0)


def build(spec: RunSpec) -> BankNet:
    """The run's network, seeded, with the depth the issue's tanh stack needs."""
    torch.manual_seed(spec.seed)
    return BankNet(spec)


# ---------------------------------------------------------------------------------------------------------- schedule


def lr_factor(spec: RunSpec) -> Callable[[int], float]:
    """The learning rate multiplier at each optimizer step (schedule, and the event's change)."""
    total, kind = spec.steps, spec.schedule

    def scheduled(s: int) -> float:
        if kind == "warmup":
            return min(1.0, (s + 1) / 30)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
        if kind == "ramp":
            return 1.0 + 2.0 * s / total
        if kind == "step":
            return 0.3 ** (s // 60)
        return 1.0

    if spec.event == "lr_high":
        return lambda s: spec.event_scale * scheduled(s)
    if spec.event == "ramp_unstable":
        return lambda s: scheduled(s) * spec.event_scale**s
    return scheduled


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` over the optimizer's first parameter groups; groups added later (``add_param_group``) keep the
    learning rate their owner sets (PyTorch's own ``LambdaLR`` fails once a group is added)."""

    def get_lr(self) -> list[Any]:  # type: ignore[override]
        lrs = [base * f(self.last_epoch) for f, base in zip(self.lr_lambdas, self.base_lrs)]
        return lrs + [g["lr"] for g in self.optimizer.param_groups[len(lrs) :]]


def optimizer_class(name: str) -> str:
    """The class name of the optimizer a run's ``optimizer`` makes (what GradWatch tells its detector)."""
    return {"sgd": "SGD", "momentum": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}[name]


def make_optimizer(spec: RunSpec, params: Any) -> torch.optim.Optimizer:
    name, lr = spec.optimizer, spec.lr
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def freeze_backbone(net: BankNet) -> None:
    """As ``BackboneFinetuning.freeze_before_training`` (``train_bn=True``): BatchNorm layers stay trainable."""
    for m in net.backbone.modules():
        trainable = isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters(recurse=False):
            p.requires_grad_(trainable)


def initial_params(net: BankNet) -> list[nn.Parameter]:
    """What the optimizer starts with: trainable parameters, without a not-yet-joined adapter."""
    skip = set() if net.adapter is None else {id(p) for p in net.adapter.parameters()}
    return [p for p in net.parameters() if p.requires_grad and id(p) not in skip]


def unfreeze_backbone(net: BankNet, optimizer: torch.optim.Optimizer, epoch: int, spec: RunSpec, state: dict) -> None:
    """As ``BackboneFinetuning.finetune_function`` at each epoch start (ratio 0.1, x2 per epoch, aligned)."""
    current = optimizer.param_groups[0]["lr"]
    if epoch == spec.event_step:
        for p in net.backbone.parameters():
            p.requires_grad_(True)
        present = {id(p) for g in optimizer.param_groups for p in g["params"]}
        params = [p for p in net.backbone.parameters() if id(p) not in present]
        state["backbone_lr"] = current * 0.1
        optimizer.add_param_group({"params": params, "lr": state["backbone_lr"]})
    elif epoch > spec.event_step:
        state["backbone_lr"] = min(2.0 * state["backbone_lr"], current)
        optimizer.param_groups[-1]["lr"] = state["backbone_lr"]


def step_event(net: BankNet, optimizer: torch.optim.Optimizer, step: int, spec: RunSpec) -> str | None:
    """Mid-run changes at the start of optimizer step ``step`` (adapter joins, layers freeze); returns what."""
    if spec.event == "adapter" and step == spec.event_step and net.adapter is not None:
        net.adapter_on = True
        optimizer.add_param_group({"params": list(net.adapter.parameters())})
        return "adapter joins"
    if spec.event == "freeze" and step == spec.event_step:
        modules = [m for m in net.backbone.modules() if any(True for _ in m.parameters(recurse=False))]
        for m in modules[: max(1, len(modules) // 2)]:
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
        return "backbone's first half frozen"
    return None


def batch_transform(spec: RunSpec, x: Tensor, y: Tensor, step: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Noise and injected faults of this batch (``g``: the run's own noise generator)."""
    if "augment" in spec.noise:
        if x.is_floating_point():
            x = x + 0.3 * torch.randn(x.shape, generator=g)
        else:
            swap = torch.rand(x.shape, generator=g) < 0.1
            x = torch.where(swap, torch.randint(64, x.shape, generator=g), x)
    if "label_noise" in spec.noise:
        flip = torch.rand(y.shape, generator=g) < 0.25
        y = torch.where(flip, torch.randint(CLASSES[spec.data], y.shape, generator=g), y)
    if spec.event == "nan" and step == spec.event_step and x.is_floating_point():
        x = torch.full_like(x, math.nan)
    return x, y


def corrupt_now(spec: RunSpec, step: int) -> bool:
    """Corrupted batches: one at ``event_step``, and for the strongest scale two more 20 steps apart."""
    if spec.event != "corrupt":
        return False
    hits = (spec.event_step,) if spec.event_scale < 1e4 else (spec.event_step, spec.event_step + 20)
    return step in hits


def nan_loss_now(spec: RunSpec, step: int) -> bool:
    return spec.event == "nan" and step == spec.event_step and spec.data == "tokens"


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffle that depends on the seed and the epoch only (Lightning calls ``set_epoch``; the plain loop too), so
    the plain loop and the Trainer see the same batches however often the loader is iterated."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.size, generator=_gen(1000 * self.seed + self.epoch)).tolist())


def loader(spec: RunSpec) -> DataLoader:
    """The run's batches (the loader's own generator keeps the global random stream, used by dropout, untouched)."""
    data = dataset(spec.data, spec.seed)
    return DataLoader(data, batch_size=spec.batch_size, sampler=EpochSampler(len(data), spec.seed),
                      generator=_gen(spec.seed))  # fmt: skip


def accumulation(spec: RunSpec) -> int:
    return 4 if spec.event == "accum" else 1


# ---------------------------------------------------------------------------------------------------------- traces


@dataclass
class Trace:
    """What one run fed its detector, and what happened to it.

    Attributes:
        spec: the run.
        records: per optimizer step, the statistics and the loss the detector observes.
        losses: per optimizer step, the model's own training loss (the last micro-batch's, undivided).
        layer_names: every watched layer, in forward order (including layers that joined later).
        exempt: normalisation layers (exempt from the per-layer vanishing test).
        events: step -> what happened (joins, freezes, corrupted or NaN batches).
        seconds: training time.
        alerts: for a Trainer run, the callback's alerts ``(kind, step, layers)``.
    """

    spec: RunSpec
    records: list[StepRecord] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)
    exempt: frozenset[str] = frozenset()
    events: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    alerts: list[tuple[str, int, tuple[str, ...]]] | None = None


NONFINITE_TAIL = 3  # steps recorded after the first non-finite one (the weights are ruined by then)


def _batches(spec: RunSpec) -> Iterator[tuple[int, int, bool, Tensor, Tensor]]:
    """``(epoch, batch index, last of its epoch, x, y)`` for as many epochs as the run needs."""
    data = loader(spec)
    epoch = 0
    while True:
        data.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        for i, (x, y) in enumerate(data):
            yield epoch, i, i == len(data) - 1, x, y
        epoch += 1


def train(spec: RunSpec) -> Trace:
    """Train ``spec`` in a plain loop, measuring where GradWatch measures; returns its trace."""
    torch.set_num_threads(1)
    net = build(spec)
    if spec.event == "unfreeze":
        freeze_backbone(net)
    optimizer = make_optimizer(spec, initial_params(net))
    scheduler = Schedule(optimizer, lr_factor(spec))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16) if spec.event == "fp16" else None
    watcher = Watcher(net, optimizer)
    trace = Trace(spec)
    noise = _gen(spec.seed + 7)
    accum = accumulation(spec)
    state: dict[str, float] = {}
    observed: Tensor | None = None
    current: Tensor | None = None
    step, epoch_seen, bad_after = 0, -1, None
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for epoch, batch_idx, last, x, y in _batches(spec):
        if epoch != epoch_seen:
            epoch_seen = epoch
            if spec.event == "unfreeze":
                before = len(optimizer.param_groups)
                unfreeze_backbone(net, optimizer, epoch, spec, state)
                if len(optimizer.param_groups) > before:
                    trace.events[step] = "backbone joins"
        if batch_idx % accum == 0:  # accumulation windows start again each epoch, as in Lightning
            what = step_event(net, optimizer, step, spec)
            if what:
                trace.events[step] = what
        x, y = batch_transform(spec, x, y, step, noise)
        net.corrupt_scale = spec.event_scale if corrupt_now(spec, step) else 1.0
        if net.corrupt_scale != 1.0:
            trace.events[step] = f"corrupted batch x{spec.event_scale:g}"
        if spec.event == "nan" and step == spec.event_step:
            trace.events[step] = "NaN batch"
        with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
            loss = net.loss(x, y, step)
        if nan_loss_now(spec, step):
            loss = loss * math.nan
        scaled = loss / accum
        current = scaled.detach() if current is None else current + scaled.detach()  # this step's micro-batches
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if (batch_idx + 1) % accum and not last:  # Lightning steps at an epoch's last batch whatever the count
            observed = scaled.detach()
            continue
        if scaler is not None:
            scaler.unscale_(optimizer)
        scale = None if scaler is None else float(scaler.get_scale())
        record = watcher.measure(step, observed, scale, current)
        current = None
        if record is not None:
            trace.records.append(record)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        trace.losses.append(value)
        observed = scaled.detach()
        if bad_after is None and (not math.isfinite(value) or (record is not None and not record.finite)):
            bad_after = step
        step += 1
        if step >= spec.steps or (bad_after is not None and step > bad_after + NONFINITE_TAIL and scaler is None):
            break
    trace.seconds = time.perf_counter() - started
    trace.layer_names = list(watcher.layer_names)
    trace.exempt = frozenset(watcher.exempt)
    return trace
