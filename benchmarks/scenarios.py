"""The detection scenario bank: real training runs of a few seconds each on a CPU, with the verdict each should get.

Every scenario's expected verdict was written down before the scenario was first run, and the bank is split into a
*calibration* half (every detection constant is chosen on it) and a *held-out* half (only measured): within each
family the scenarios alternate calibration / held-out in the order written, except that the three runs that the
detection had been seen to fail on (the AdamW transformer LM at a learning rate 100x too high, the digits MLPs at
learning rate 50 with ReLU and with tanh) are calibration scenarios. The split is fixed in the ``half`` field below.

Expected verdicts:

- ``silent``: healthy training; any alert is a false alarm.
- ``exploding``: a divergence (a non-finite gradient, or a loss that reaches 10x its running minimum and stays); the
  exploding alert must come >= 2 steps before the first non-finite gradient, or before that loss mark.
- ``vanishing``: the alert must name ``layers`` (and none of ``not_layers``).
- ``nonfinite``: a NaN batch; the non-finite alert at that step, and no exploding or vanishing alert before it.

The models here (MLPs, a CNN, transformer LMs, LSTM/GRU, residual MLPs) live in the benchmark, not in the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gradwatch.demos import blobs, quadrants, small_cnn

# ---------------------------------------------------------------------------------------------------------- data


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def digits(seed: int = 0) -> TensorDataset:
    """scikit-learn's 8x8 digits (shipped with scikit-learn, no download), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return TensorDataset(x, torch.tensor(data.target, dtype=torch.long))


def regression(seed: int = 0, n: int = 8192, features: int = 16) -> TensorDataset:
    """A smooth regression target a small MLP can fit to near-zero loss."""
    g = _gen(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :4].sum(1, keepdim=True) + 0.5 * torch.sin(3 * x[:, 4:5])) / 2
    return TensorDataset(x, y)


def tokens(seed: int = 0, n: int = 1024, vocab: int = 64, seq_len: int = 32) -> TensorDataset:
    """A synthetic language: arithmetic progressions modulo ``vocab`` (each token predicts the next)."""
    g = _gen(seed)
    start = torch.randint(vocab, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    seq = (start + stride * torch.arange(seq_len + 1)) % vocab
    return TensorDataset(seq[:, :-1], seq[:, 1:])


def memory(seed: int = 0, n: int = 2048, seq_len: int = 20) -> TensorDataset:
    """Remember the first of ``seq_len`` noisy 4-d inputs: its one-hot class."""
    g = _gen(seed)
    y = torch.randint(4, (n,), generator=g)
    x = 0.3 * torch.randn(n, seq_len, 4, generator=g)
    x[:, 0] = nn.functional.one_hot(y, 4).float() * 3.0
    return TensorDataset(x, y)


DATA: dict[str, Callable[[int], TensorDataset]] = {
    "blobs": lambda seed: blobs(seed=seed),  # the demos' Gaussian clusters
    "digits": digits,
    "regression": regression,
    "quadrants": lambda seed: quadrants(seed=seed),  # the demos' bright-quadrant images
    "tokens": tokens,
    "memory": memory,
}
SHAPES = {"blobs": (32, 4), "digits": (64, 10), "regression": (16, 1), "memory": (4, 4)}

# ---------------------------------------------------------------------------------------------------------- models


def mlp(data: str, activation: str = "relu", depth: int = 3, width: int = 128, batchnorm: bool = False) -> nn.Module:
    """``depth`` linear layers (``net.0``, ``net.2``, ... with an activation, or a BatchNorm, in between)."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[activation]
    features, out = SHAPES[data]
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers.append(nn.Linear(features, width))
        if batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(act())
        features = width
    layers.append(nn.Linear(features, out))
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """Pre-norm residual blocks ``h + W2 act(W1 LayerNorm(h))`` between a stem and a head."""

    def __init__(self, data: str, blocks: int = 8, width: int = 64) -> None:
        super().__init__()
        features, out = SHAPES[data]
        self.stem = nn.Linear(features, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
            for _ in range(blocks)
        )
        self.head = nn.Linear(width, out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class TransformerLM(nn.Module):
    """A pre-norm decoder-only transformer LM (causal mask) over a 64-token vocabulary.

    ``final_norm=False`` leaves out the LayerNorm before the output head, as many hand-written LMs do: the residual
    stream then reaches the logits unnormalised, and a too-high learning rate makes the loss climb without bound.
    """

    def __init__(
        self,
        layers: int = 2,
        d_model: int = 64,
        heads: int = 4,
        vocab: int = 64,
        seq_len: int = 32,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()
        self.head = nn.Linear(d_model, vocab)

    def forward(self, x: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        h = self.embed(x) + self.pos[: x.shape[1]]
        return self.head(self.norm(self.encoder(h, mask=mask, is_causal=True)))


class RecurrentLM(nn.Module):
    """An LSTM or GRU language model over the token data."""

    def __init__(self, cell: str = "lstm", hidden: int = 64, vocab: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out)


class RecurrentClassifier(nn.Module):
    """An LSTM or GRU reading a sequence, classifying from its last state (the memory task)."""

    def __init__(self, cell: str = "lstm", hidden: int = 32) -> None:
        super().__init__()
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(4, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 4)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


# ---------------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Corruption:
    """Batches at ``steps`` (or every ``every`` steps from ``start``) get ``count`` targets (regression) or inputs
    (classification) multiplied by ``scale``."""

    scale: float
    steps: tuple[int, ...] = ()
    every: int = 0
    start: int = 0
    count: int = 4

    def hits(self, step: int) -> bool:
        return step in self.steps or (self.every > 0 and step >= self.start and (step - self.start) % self.every == 0)


class BankModel(pl.LightningModule):
    """One scenario's model: a network, its data, optimizer, learning-rate schedule and injected faults.

    Args:
        net: the network.
        data: a key of :data:`DATA`.
        optimizer: ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"adamw"``.
        lr: peak learning rate.
        schedule: ``None``, ``("warmup", W)``, ``("warmup_cosine", W, T)``, ``("cosine", T)`` or ``("ramp", g)``
            (the learning rate multiplied by ``g`` every step).
        betas: Adam/AdamW betas.
        batch_size: batch size.
        corrupt: corrupted batches.
        nan_at_step: the step whose inputs are all NaN.
        pretrain_steps: plain-PyTorch Adam steps (lr 1e-3) on the same data before training: a fine-tuning run.
        seed: seeds the weights, the data and its order.
    """

    def __init__(
        self,
        net: Callable[[], nn.Module],
        data: str,
        optimizer: str = "adam",
        lr: float = 1e-3,
        schedule: tuple[Any, ...] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        batch_size: int = 64,
        corrupt: Corruption | None = None,
        nan_at_step: int | None = None,
        pretrain_steps: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = net()
        self.data_name, self.seed = data, seed
        self.data = DATA[data](seed)
        self.optimizer_name, self.lr, self.schedule, self.betas = optimizer, lr, schedule, betas
        self.batch_size, self.corrupt, self.nan_at_step = batch_size, corrupt, nan_at_step
        self.losses: dict[int, float] = {}  # global step -> training loss
        if pretrain_steps:
            self._pretrain(pretrain_steps)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        out = self.net(x)
        if self.data_name == "regression":
            return nn.functional.mse_loss(out, y)
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def _pretrain(self, steps: int) -> None:
        optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        loader = DataLoader(self.data, batch_size=64, shuffle=True, generator=_gen(self.seed + 1000))
        done = 0
        while done < steps:
            for x, y in loader:
                optimizer.zero_grad()
                self._loss(x, y).backward()
                optimizer.step()
                done += 1
                if done >= steps:
                    break

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        step = self.global_step
        if self.corrupt is not None and self.corrupt.hits(step):
            if self.data_name == "regression":
                y = y.clone()
                y[: self.corrupt.count] *= self.corrupt.scale
            else:
                x = x.clone()
                x[: self.corrupt.count] *= self.corrupt.scale
        nan_now = self.nan_at_step is not None and step == self.nan_at_step
        if nan_now and x.is_floating_point():
            x = torch.full_like(x, math.nan)
        loss = self._loss(x, y)
        if nan_now and not x.is_floating_point():  # token inputs: the loss itself is NaN
            loss = loss * math.nan
        self.losses[step] = float(loss.detach())
        return loss

    def configure_optimizers(self) -> Any:
        params = self.parameters()
        name = self.optimizer_name
        if name == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=self.lr, betas=self.betas)
        elif name == "adamw":
            optimizer = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=0.01)
        else:
            optimizer = torch.optim.SGD(params, lr=self.lr, momentum=0.9 if name == "momentum" else 0.0)
        if self.schedule is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(self.schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True, generator=_gen(self.seed))


def _lr_lambda(schedule: tuple[Any, ...]) -> Callable[[int], float]:
    kind = schedule[0]
    if kind == "warmup":
        warm = schedule[1]
        return lambda s: min(1.0, (s + 1) / warm)
    if kind == "warmup_cosine":
        warm, total = schedule[1], schedule[2]
        return lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / total)))
    if kind == "cosine":
        total = schedule[1]
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    if kind == "ramp":
        growth = schedule[1]
        return lambda s: growth**s
    raise ValueError(f"unknown schedule {schedule!r}")


def fp16() -> dict[str, Any]:
    """fp16 mixed precision on CPU with a loss scaler that starts high (it halves down through overflow steps)."""
    from lightning.pytorch.plugins import MixedPrecision

    return {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**24))]}


# ---------------------------------------------------------------------------------------------------------- the bank


@dataclass(frozen=True)
class Scenario:
    name: str
    family: str
    half: str  # "calibration" or "held-out"
    expect: str  # "silent", "exploding", "vanishing", "nonfinite"
    build: Callable[[], BankModel]
    steps: int
    layers: tuple[str, ...] = ()  # vanishing: layers the alert must name
    not_layers: tuple[str, ...] = ()  # vanishing: layers it must not name
    trainer: Callable[[], dict[str, Any]] = field(default=dict)
    quick: bool = False  # in the quick subset


C, H = "calibration", "held-out"
B = BankModel
ISSUE_BETAS = (0.9, 0.95)


def _t(layers: int, d: int, final_norm: bool = True) -> Callable[[], nn.Module]:
    return lambda: TransformerLM(layers, d, final_norm=final_norm)


BANK: list[Scenario] = [
    # ---- learning rate far too high from step 0
    Scenario("digits MLP ReLU, SGD lr 50", "step0", C, "exploding",
             lambda: B(lambda: mlp("digits"), "digits", "sgd", 50.0), 60),
    Scenario("blobs MLP ReLU, SGD+momentum lr 3", "step0", H, "exploding",
             lambda: B(lambda: mlp("blobs"), "blobs", "momentum", 3.0, seed=1), 60),
    Scenario("digits MLP tanh, SGD lr 50", "step0", C, "exploding",
             lambda: B(lambda: mlp("digits", "tanh"), "digits", "sgd", 50.0), 60),
    Scenario("CNN, SGD+momentum lr 5", "step0", H, "exploding",
             lambda: B(small_cnn, "quadrants", "momentum", 5.0, batch_size=32, seed=2), 60),
    Scenario("residual MLP, SGD lr 5", "step0", C, "exploding",
             lambda: B(lambda: ResidualMLP("blobs"), "blobs", "sgd", 5.0, seed=3), 60),
    Scenario("regression MLP, SGD lr 2", "step0", H, "exploding",
             lambda: B(lambda: mlp("regression", depth=3, width=64), "regression", "sgd", 2.0, seed=4), 60),
    # ---- Adam/AdamW at a learning rate ~100x too high: divergence that may never reach NaN
    Scenario("transformer 6x128 (no final norm), AdamW lr 0.1, warm-up 50", "adam", C, "exploding",
             lambda: B(_t(6, 128, False), "tokens", "adamw", 0.1, ("warmup", 50), ISSUE_BETAS, 16), 90),
    Scenario("transformer 4x128 (no final norm), AdamW lr 0.1, warm-up 50", "adam", H, "exploding",
             lambda: B(_t(4, 128, False), "tokens", "adamw", 0.1, ("warmup", 50), ISSUE_BETAS, 16, seed=1), 90),
    Scenario("transformer 2x64 (no final norm), Adam lr 0.1", "adam", C, "exploding",
             lambda: B(_t(2, 64, False), "tokens", "adam", 0.1, batch_size=16, seed=2), 120),
    Scenario("blobs MLP ReLU, Adam lr 0.1", "adam", H, "exploding",
             lambda: B(lambda: mlp("blobs", depth=5), "blobs", "adam", 0.1), 150),
    Scenario("CNN, AdamW lr 0.3, cosine", "adam", C, "exploding",
             lambda: B(small_cnn, "quadrants", "adamw", 0.3, ("cosine", 400), batch_size=32, seed=1), 150),
    Scenario("LSTM LM, Adam lr 0.5", "adam", H, "exploding",
             lambda: B(lambda: RecurrentLM("lstm"), "tokens", "adam", 0.5, batch_size=16, seed=3), 150),
    Scenario("residual MLP, AdamW lr 0.3, warm-up 20", "adam", C, "exploding",
             lambda: B(lambda: ResidualMLP("blobs"), "blobs", "adamw", 0.3, ("warmup", 20), seed=2), 150),
    Scenario("GRU classifier, AdamW lr 1", "adam", H, "exploding",
             lambda: B(lambda: RecurrentClassifier("gru"), "memory", "adamw", 1.0, batch_size=32, seed=4), 150),
    Scenario("regression MLP, Adam lr 0.3", "adam", C, "exploding",
             lambda: B(lambda: mlp("regression", width=64), "regression", "adam", 0.3, batch_size=32), 100),
    Scenario("regression residual MLP, AdamW lr 0.3", "adam", H, "exploding",
             lambda: B(lambda: ResidualMLP("regression", 4), "regression", "adamw", 0.3, batch_size=32, seed=5), 100),
    # ---- learning-rate ramps and warm-up overshoot
    Scenario("regression MLP, SGD lr x1.05/step", "ramp", C, "exploding",
             lambda: B(lambda: mlp("regression", width=64), "regression", "sgd", 0.02, ("ramp", 1.05), batch_size=32),
             150),
    Scenario("regression MLP, SGD lr x1.02/step", "ramp", H, "exploding",
             lambda: B(lambda: mlp("regression", width=64), "regression", "sgd", 0.02, ("ramp", 1.02), batch_size=32,
                       seed=1), 330),
    Scenario("blobs MLP ReLU, SGD+momentum lr x1.08/step", "ramp", C, "exploding",
             lambda: B(lambda: mlp("blobs"), "blobs", "momentum", 0.01, ("ramp", 1.08), seed=2), 150),
    Scenario("transformer 2x64, AdamW lr x1.05/step", "ramp", H, "exploding",
             lambda: B(_t(2, 64), "tokens", "adamw", 1e-4, ("ramp", 1.05), batch_size=16, seed=3), 200),
    Scenario("CNN, SGD lr x1.03/step", "ramp", C, "exploding",
             lambda: B(small_cnn, "quadrants", "sgd", 0.01, ("ramp", 1.03), batch_size=32, seed=4), 300),
    Scenario("blobs MLP ReLU, SGD+momentum warm-up 100 to lr 5", "ramp", H, "exploding",
             lambda: B(lambda: mlp("blobs"), "blobs", "momentum", 5.0, ("warmup", 100), seed=5), 130),
    Scenario("transformer 2x64, AdamW warm-up 40 to lr 0.05, cosine", "ramp", C, "exploding",
             lambda: B(_t(2, 64), "tokens", "adamw", 0.05, ("warmup_cosine", 40, 300), ISSUE_BETAS, 16, seed=6),
             150),
    Scenario("regression MLP, SGD warm-up 60 to lr 1", "ramp", H, "exploding",
             lambda: B(lambda: mlp("regression", width=64), "regression", "sgd", 1.0, ("warmup", 60), batch_size=32,
                       seed=7), 100),
    # ---- corrupted batches
    Scenario("regression, 4 labels x1e4 at step 60", "corrupt", C, "exploding",
             lambda: B(lambda: mlp("regression", width=64), "regression", "sgd", 0.02, batch_size=32,
                       corrupt=Corruption(1e4, steps=(60,))), 100),
    Scenario("regression, 4 labels x1e4 at step 40", "corrupt", H, "exploding",
             lambda: B(lambda: mlp("regression", width=64), "regression", "sgd", 0.02, batch_size=32,
                       corrupt=Corruption(1e4, steps=(40,)), seed=1), 80),
    Scenario("regression, rare: 4 labels x3e3 at steps 50, 130", "corrupt", C, "exploding",
             lambda: B(lambda: mlp("regression", width=64), "regression", "sgd", 0.02, batch_size=32,
                       corrupt=Corruption(3e3, steps=(50, 130)), seed=2), 160),
    Scenario("regression, frequent: 4 labels x1e3 every 8 steps", "corrupt", H, "exploding",
             lambda: B(lambda: mlp("regression", width=64), "regression", "sgd", 0.02, batch_size=32,
                       corrupt=Corruption(1e3, every=8, start=20), seed=3), 120),
    Scenario("regression, 4 labels x100 once (absorbed)", "corrupt", C, "silent",
             lambda: B(lambda: mlp("regression", width=64), "regression", "sgd", 0.02, batch_size=32,
                       corrupt=Corruption(100.0, steps=(60,)), seed=4), 150),
    Scenario("blobs MLP, Adam, 4 inputs x1e3 once (absorbed)", "corrupt", H, "silent",
             lambda: B(lambda: mlp("blobs"), "blobs", "adam", 1e-3, corrupt=Corruption(1e3, steps=(80,)), seed=5),
             200),
    # ---- a NaN batch
    Scenario("ReLU+BN MLP, NaN batch at step 40", "nan", C, "nonfinite",
             lambda: B(lambda: mlp("blobs", depth=6, width=64, batchnorm=True), "blobs", "momentum", 0.1,
                       nan_at_step=40), 60),
    Scenario("transformer 2x64, NaN loss at step 30", "nan", H, "nonfinite",
             lambda: B(_t(2, 64), "tokens", "adam", 1e-3, batch_size=16, nan_at_step=30, seed=1), 50),
    # ---- vanishing stacks
    Scenario("sigmoid MLP, 11 layers, SGD+momentum", "vanishing", C, "vanishing",
             lambda: B(lambda: mlp("blobs", "sigmoid", 11, 64), "blobs", "momentum", 0.1), 150,
             layers=("net.0", "net.2"), not_layers=("net.20",)),
    Scenario("sigmoid MLP, 11 layers, Adam", "vanishing", H, "vanishing",
             lambda: B(lambda: mlp("blobs", "sigmoid", 11, 64), "blobs", "adam", 1e-3, seed=1), 150,
             layers=("net.0", "net.2"), not_layers=("net.20",)),
    Scenario("sigmoid MLP, 16 layers x32, SGD", "vanishing", C, "vanishing",
             lambda: B(lambda: mlp("blobs", "sigmoid", 16, 32), "blobs", "sgd", 0.1, seed=2), 150,
             layers=("net.0", "net.2"), not_layers=("net.30",)),
    Scenario("sigmoid MLP, 14 layers, digits, SGD+momentum", "vanishing", H, "vanishing",
             lambda: B(lambda: mlp("digits", "sigmoid", 14, 64), "digits", "momentum", 0.05, seed=3), 150,
             layers=("net.0", "net.2"), not_layers=("net.26",)),
    # ---- healthy: converging classifiers meeting hard batches
    Scenario("ReLU+BN MLP, 11 layers, SGD+momentum", "classifier", C, "silent",
             lambda: B(lambda: mlp("blobs", depth=11, width=64, batchnorm=True), "blobs", "momentum", 0.1), 400,),
    Scenario("CNN, Adam", "classifier", H, "silent",
             lambda: B(small_cnn, "quadrants", "adam", 1e-3, batch_size=32), 400),
    Scenario("digits MLP ReLU, SGD lr 0.1", "classifier", C, "silent",
             lambda: B(lambda: mlp("digits"), "digits", "sgd", 0.1, batch_size=32, seed=1), 500),
    Scenario("digits MLP tanh, SGD+momentum lr 0.05", "classifier", H, "silent",
             lambda: B(lambda: mlp("digits", "tanh"), "digits", "momentum", 0.05, batch_size=32, seed=2), 500),
    Scenario("blobs MLP sigmoid, 3 layers, SGD lr 0.5", "classifier", C, "silent",
             lambda: B(lambda: mlp("blobs", "sigmoid"), "blobs", "sgd", 0.5, seed=3), 300),
    Scenario("GRU classifier, Adam", "classifier", H, "silent",
             lambda: B(lambda: RecurrentClassifier("gru"), "memory", "adam", 3e-3, batch_size=32, seed=4), 250),
    Scenario("LSTM classifier, Adam", "classifier", C, "silent",
             lambda: B(lambda: RecurrentClassifier("lstm"), "memory", "adam", 3e-3, batch_size=32, seed=5), 250),
    Scenario("CNN, SGD+momentum, cosine", "classifier", H, "silent",
             lambda: B(small_cnn, "quadrants", "momentum", 0.05, ("cosine", 400), batch_size=32, seed=6), 400),
    # ---- healthy: Adam take-off, learning-rate warm-up
    Scenario("deep ReLU MLP, Adam take-off", "takeoff", C, "silent",
             lambda: B(lambda: mlp("blobs", depth=11, width=64), "blobs", "adam", 1e-3), 300),
    Scenario("deep ReLU MLP, Adam take-off, seed 3", "takeoff", H, "silent",
             lambda: B(lambda: mlp("blobs", depth=11, width=64), "blobs", "adam", 1e-3, seed=3), 300),
    Scenario("transformer 6x128 (no final norm), AdamW lr 1e-3, warm-up 50", "takeoff", C, "silent",
             lambda: B(_t(6, 128, False), "tokens", "adamw", 1e-3, ("warmup", 50), ISSUE_BETAS, 16), 120),
    Scenario("transformer 4x64, AdamW lr 3e-4, warm-up 30 + cosine", "takeoff", H, "silent",
             lambda: B(_t(4, 64), "tokens", "adamw", 3e-4, ("warmup_cosine", 30, 200), ISSUE_BETAS, 16, seed=1), 200),
    Scenario("transformer 2x64, Adam", "takeoff", C, "silent",
             lambda: B(_t(2, 64), "tokens", "adam", 1e-3, batch_size=16, seed=2), 250),
    Scenario("residual MLP 20 blocks, SGD+momentum", "takeoff", H, "silent",
             lambda: B(lambda: ResidualMLP("blobs", 20), "blobs", "momentum", 0.1, seed=3), 300),
    Scenario("residual MLP, AdamW warm-up 30 + cosine", "takeoff", C, "silent",
             lambda: B(lambda: ResidualMLP("blobs"), "blobs", "adamw", 3e-3, ("warmup_cosine", 30, 300), seed=4),
             300),
    Scenario("GRU LM, AdamW warm-up 30", "takeoff", H, "silent",
             lambda: B(lambda: RecurrentLM("gru"), "tokens", "adamw", 3e-3, ("warmup", 30), batch_size=16, seed=5),
             250),
    # ---- healthy: near-zero loss, fp16, batch sizes, fine-tuning
    Scenario("regression to near-zero loss, SGD", "misc", C, "silent",
             lambda: B(lambda: mlp("regression", width=64), "regression", "sgd", 0.05, batch_size=32), 600,),
    Scenario("regression to near-zero loss, residual MLP, Adam", "misc", H, "silent",
             lambda: B(lambda: ResidualMLP("regression", 4), "regression", "adam", 1e-3, batch_size=32, seed=1), 600),
    Scenario("fp16 + loss scaler from 2^24, ReLU+BN MLP", "misc", C, "silent",
             lambda: B(lambda: mlp("blobs", depth=11, width=64, batchnorm=True), "blobs", "momentum", 0.1), 200,
             trainer=fp16),
    Scenario("fp16 + loss scaler from 2^24, transformer 2x64", "misc", H, "silent",
             lambda: B(_t(2, 64), "tokens", "adamw", 1e-3, ("warmup", 20), batch_size=16, seed=1), 150,
             trainer=fp16),
    Scenario("batch 1024, blobs MLP, SGD+momentum lr 0.5", "misc", C, "silent",
             lambda: B(lambda: mlp("blobs"), "blobs", "momentum", 0.5, batch_size=1024, seed=2), 200),
    Scenario("batch 2, blobs MLP, Adam", "misc", H, "silent",
             lambda: B(lambda: mlp("blobs"), "blobs", "adam", 1e-3, batch_size=2, seed=3), 400),
    Scenario("fine-tuning a trained digits MLP, AdamW 1e-4", "misc", C, "silent",
             lambda: B(lambda: mlp("digits"), "digits", "adamw", 1e-4, batch_size=32, pretrain_steps=400, seed=4),
             300),
    Scenario("fine-tuning a trained CNN, SGD+momentum 0.01", "misc", H, "silent",
             lambda: B(small_cnn, "quadrants", "momentum", 0.01, batch_size=32, pretrain_steps=300, seed=5), 300),
    Scenario("batch 1, digits MLP, SGD lr 0.01", "misc", C, "silent",
             lambda: B(lambda: mlp("digits"), "digits", "sgd", 0.01, batch_size=1, seed=6), 500),
    Scenario("fine-tuning a trained transformer 2x64, Adam 1e-4", "misc", H, "silent",
             lambda: B(_t(2, 64), "tokens", "adam", 1e-4, batch_size=16, pretrain_steps=300, seed=7), 200),
]  # fmt: skip


def halves() -> dict[str, list[Scenario]]:
    """The bank by half."""
    return {half: [s for s in BANK if s.half == half] for half in (C, H)}


QUICK = (
    # calibration
    "digits MLP ReLU, SGD lr 50",
    "digits MLP tanh, SGD lr 50",
    "transformer 2x64 (no final norm), Adam lr 0.1",
    "regression MLP, Adam lr 0.3",
    "regression MLP, SGD lr x1.05/step",
    "regression, 4 labels x1e4 at step 60",
    "ReLU+BN MLP, NaN batch at step 40",
    "sigmoid MLP, 11 layers, SGD+momentum",
    "ReLU+BN MLP, 11 layers, SGD+momentum",
    "deep ReLU MLP, Adam take-off",
    "regression to near-zero loss, SGD",
    "fine-tuning a trained digits MLP, AdamW 1e-4",
    # held-out
    "regression, frequent: 4 labels x1e3 every 8 steps",
    "blobs MLP, Adam, 4 inputs x1e3 once (absorbed)",
    "sigmoid MLP, 11 layers, Adam",
    "GRU classifier, Adam",
    "fp16 + loss scaler from 2^24, transformer 2x64",
)
BANK = [replace(s, quick=s.name in QUICK) for s in BANK]
assert sum(s.quick for s in BANK) == len(QUICK), "a quick scenario name is not in the bank"
