"""Small models that reproduce healthy training and the classic gradient failures, on synthetic data, in seconds.

Used by the examples, the tests and the benchmarks (their training harness is ``examples/harness.py``); handy to
see what GradWatch reports before trying it on your own model. Every model makes its own data (no downloads), seeded,
and takes ``nan_at_step`` to inject a NaN batch. Imports Lightning (``lightning.pytorch``, else
``pytorch_lightning``).

Example:
    >>> import lightning.pytorch as pl
    >>> from lightning_gradwatch import GradWatch
    >>> model = DeepMLP(activation="sigmoid", depth=11)  # the textbook vanishing-gradient network
    >>> len([m for m in model.modules() if isinstance(m, torch.nn.Linear)])
    11
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

try:
    from lightning.pytorch import LightningModule
except ImportError:  # pragma: no cover - the other flavour
    from pytorch_lightning import LightningModule  # type: ignore[no-redef]


__all__ = [
    "DeepMLP",
    "Divergence",
    "RingGan",
    "SequenceMemory",
    "SmallCNN",
    "TinyTransformerLM",
    "blobs",
    "quadrants",
    "small_cnn",
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(n: int = 4096, features: int = 32, classes: int = 4, seed: int = 0) -> TensorDataset:
    """Gaussian clusters: an easy classification task, so trouble comes from the network, not the data."""
    g = _generator(seed)
    centres = 2.0 * torch.randn(classes, features, generator=g)
    y = torch.randint(classes, (n,), generator=g)
    return TensorDataset(centres[y] + torch.randn(n, features, generator=g), y)


def quadrants(n: int = 2048, seed: int = 0) -> TensorDataset:
    """16x16 single-channel images whose class (of 4) is the bright quadrant."""
    g = _generator(seed)
    y = torch.randint(4, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    for quadrant in range(4):
        r, c = divmod(quadrant, 2)
        x[y == quadrant, :, 8 * r : 8 * r + 8, 8 * c : 8 * c + 8] += 1.0
    return TensorDataset(x, y)


def small_cnn() -> nn.Sequential:
    """Two conv blocks with BatchNorm for :func:`quadrants`' 16x16 images, 4 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 4),
    )


class _Demo(LightningModule):
    """Shared plumbing: data loader, optimizer, NaN injection, loss logging."""

    def __init__(self, lr: float, optimizer: str, batch_size: int, nan_at_step: int | None, seed: int) -> None:
        super().__init__()
        self.lr, self.optimizer_name, self.batch_size = lr, optimizer, batch_size
        self.nan_at_step, self.seed = nan_at_step, seed
        self.losses: list[float] = []

    def dataset(self) -> TensorDataset:
        """The training data."""
        raise NotImplementedError

    def loss(self, batch: Any) -> Tensor:
        """The loss of one batch."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.nan_at_step is not None and self.global_step == self.nan_at_step:
            batch = [torch.full_like(batch[0], math.nan), *batch[1:]]
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.losses.append(float(loss.detach()))
        return loss

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9 if self.optimizer_name == "momentum" else 0)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset(), batch_size=self.batch_size, shuffle=True, generator=_generator(self.seed))


class DeepMLP(_Demo):
    """``depth`` linear layers on :func:`blobs`: sigmoid (vanishing), ReLU + BatchNorm, or residual blocks.

    Args:
        activation: ``"sigmoid"``, ``"tanh"`` or ``"relu"``.
        batchnorm: a BatchNorm after each hidden linear layer.
        residual: hidden layers as pre-norm residual blocks ``x + f(LayerNorm(x))``.
        depth: number of linear layers (input and output included; residual: number of blocks + 2).
        width: hidden width.
    """

    def __init__(
        self,
        activation: Literal["sigmoid", "tanh", "relu"] = "relu",
        batchnorm: bool = False,
        residual: bool = False,
        depth: int = 11,
        width: int = 64,
        lr: float = 0.1,
        optimizer: str = "momentum",
        batch_size: int = 64,
        nan_at_step: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(lr, optimizer, batch_size, nan_at_step, seed)
        act = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}[activation]
        if residual:
            self.stem = nn.Linear(32, width)
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), act(), nn.Linear(width, width))
                for _ in range(depth - 2)
            )
            self.head = nn.Linear(width, 4)
            return
        layers: list[nn.Module] = []
        features = 32
        for _ in range(depth - 1):
            layers.append(nn.Linear(features, width))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(act())
            features = width
        layers.append(nn.Linear(features, 4))
        self.net = nn.Sequential(*layers)

    @override
    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "net"):
            return self.net(x)
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)

    @override
    def dataset(self) -> TensorDataset:
        return blobs(seed=self.seed)

    @override
    def loss(self, batch: Any) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)


class SmallCNN(_Demo):
    """A two-block CNN on 16x16 images whose class is a bright quadrant; trains to near-zero loss."""

    def __init__(self, lr: float = 1e-3, optimizer: str = "adam", batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(lr, optimizer, batch_size, kwargs.pop("nan_at_step", None), kwargs.pop("seed", 0))
        self.net = small_cnn()

    @override
    def dataset(self) -> TensorDataset:
        return quadrants(seed=self.seed)

    @override
    def loss(self, batch: Any) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)


class TinyTransformerLM(_Demo):
    """A small decoder-only transformer LM on a synthetic language (each token predicts the next modulo ``vocab``)."""

    def __init__(
        self,
        layers: int = 2,
        d_model: int = 64,
        heads: int = 4,
        vocab: int = 64,
        seq_len: int = 32,
        lr: float = 1e-3,
        optimizer: str = "adam",
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr, optimizer, batch_size, kwargs.pop("nan_at_step", None), kwargs.pop("seed", 0))
        self.vocab, self.seq_len = vocab, seq_len
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(seq_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    @override
    def forward(self, tokens: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], device=tokens.device)
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.norm(self.encoder(h, mask=mask, is_causal=True)))

    @override
    def dataset(self) -> TensorDataset:
        g = _generator(self.seed)
        start = torch.randint(self.vocab, (1024, 1), generator=g)
        stride = torch.randint(1, 4, (1024, 1), generator=g)
        seq = (start + stride * torch.arange(self.seq_len + 1)) % self.vocab
        return TensorDataset(seq[:, :-1].float(), seq[:, 1:])

    @override
    def loss(self, batch: Any) -> Tensor:
        x, y = batch
        logits = self(x.long())
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab), y.reshape(-1))


class SequenceMemory(_Demo):
    """Remember the first token of a long sequence, with a vanilla ``nn.RNN`` or an LSTM.

    The longer the sequence, the harder it is for a vanilla RNN: the gradient that links the answer to the first
    token vanishes through time. An LSTM's gated cell keeps it.

    Args:
        cell: ``"rnn"`` (tanh) or ``"lstm"``.
        seq_len: steps between the token to remember and the answer.
    """

    def __init__(
        self,
        cell: Literal["rnn", "lstm"] = "rnn",
        seq_len: int = 40,
        hidden: int = 32,
        lr: float = 3e-3,
        optimizer: str = "adam",
        batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr, optimizer, batch_size, kwargs.pop("nan_at_step", None), kwargs.pop("seed", 0))
        self.seq_len = seq_len
        rnn = nn.RNN if cell == "rnn" else nn.LSTM
        self.rnn = rnn(4, hidden, batch_first=True)
        if cell == "lstm":  # forget-gate bias 2 (1 in each bias vector): remember by default
            for name, bias in self.rnn.named_parameters():
                if name.startswith("bias_"):
                    bias.data[hidden : 2 * hidden] = 1.0
        self.head = nn.Linear(hidden, 4)

    @override
    def dataset(self) -> TensorDataset:
        g = _generator(self.seed)
        y = torch.randint(4, (2048,), generator=g)
        x = 0.3 * torch.randn(2048, self.seq_len, 4, generator=g)
        x[:, 0] = nn.functional.one_hot(y, 4).float() * 3.0
        return TensorDataset(x, y)

    @override
    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    @override
    def loss(self, batch: Any) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def gradient_through_time(self, n: int = 256) -> Tensor:
        """``|d loss / d x_t|`` for each time step ``t``, averaged over ``n`` sequences of the data.

        What the parameter gradients cannot show: the weights are shared by every time step, so their gradient is a
        sum over time that the recent steps dominate. The gradient reaching the first input tells whether the
        answer can still learn from it.
        """
        x, y = self.dataset().tensors
        x = x[:n].clone().requires_grad_(True)
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(self(x), y[:n])
            (grad,) = torch.autograd.grad(loss, x)
        return grad.norm(dim=2).mean(dim=0)


class Divergence(_Demo):
    """Regression under plain SGD that diverges.

    Either a few labels of one batch are corrupted (``corrupt_at_step``: multiplied by ``corrupt_scale``, as a
    sentinel value such as -9999 in raw data would be), or the learning rate grows by ``lr_growth`` per step.

    Args:
        corrupt_at_step: the step whose batch gets ``corrupt_count`` labels multiplied by ``corrupt_scale``.
        lr_growth: factor applied to the learning rate after every step (1.0: constant).
    """

    def __init__(
        self,
        corrupt_at_step: int | None = None,
        corrupt_count: int = 4,
        corrupt_scale: float = 100.0,
        lr_growth: float = 1.0,
        lr: float = 0.02,
        batch_size: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr, "sgd", batch_size, kwargs.pop("nan_at_step", None), kwargs.pop("seed", 0))
        self.corrupt_at_step, self.corrupt_count, self.corrupt_scale = corrupt_at_step, corrupt_count, corrupt_scale
        self.lr_growth = lr_growth
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    @override
    def dataset(self) -> TensorDataset:
        g = _generator(self.seed)
        x = torch.randn(8192, 16, generator=g)
        y = (x[:, :4].sum(1, keepdim=True) + 0.5 * torch.sin(3 * x[:, 4:5])) / 2
        return TensorDataset(x, y)

    @override
    def loss(self, batch: Any) -> Tensor:
        x, y = batch
        if self.corrupt_at_step is not None and self.global_step == self.corrupt_at_step:
            y = y.clone()
            y[: self.corrupt_count] *= self.corrupt_scale
        return nn.functional.mse_loss(self.net(x), y)

    @override
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.lr_growth == 1.0:
            return optimizer
        growth = self.lr_growth
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: growth**step)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


#: the eight modes of :class:`RingGan`'s data, on a circle of radius 2
RING = torch.stack([torch.tensor([math.cos(math.pi * k / 4), math.sin(math.pi * k / 4)]) * 2 for k in range(8)])


class RingGan(LightningModule):
    """A GAN on a ring of 8 Gaussians: manual optimization, two Adam optimizers (generator, discriminator).

    A player's loss rises as its opponent learns: the generator's loss is no measure of the run's progress.
    :meth:`distance` is: how far samples lie from their nearest mode plus how far each mode lies from its nearest
    sample (lower is better; a collapsed generator covers few modes).

    Args:
        seed: seeds the weights, the data and the fixed noise :meth:`distance` samples from.
        batches: training batches of 64 in one epoch.
        lr: both optimizers' learning rate.

    Example:
        >>> gan = RingGan(seed=0, batches=4)
        >>> len(gan.configure_optimizers()), gan.automatic_optimization
        (2, False)
        >>> gan.distance() > 0
        True
    """

    def __init__(self, seed: int = 0, batches: int = 300, lr: float = 1e-3) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.seed, self.lr = seed, lr
        torch.manual_seed(seed)
        g = _generator(seed)
        self.x = RING[torch.randint(0, 8, (batches * 64,), generator=g)] + 0.1 * torch.randn(
            batches * 64, 2, generator=g
        )
        self.gen = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
        self.disc = nn.Sequential(
            nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1)
        )
        self.z = torch.randn(2000, 4, generator=g)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> None:
        (x,) = batch
        bce = nn.functional.binary_cross_entropy_with_logits
        opt_gen, opt_disc = self.optimizers()  # type: ignore[misc]
        fake = self.gen(torch.randn(len(x), 4))
        ones, zeros = torch.ones(len(x), 1), torch.zeros(len(x), 1)
        opt_disc.zero_grad()
        self.manual_backward(bce(self.disc(x), ones) + bce(self.disc(fake.detach()), zeros))
        opt_disc.step()
        opt_gen.zero_grad()
        self.manual_backward(bce(self.disc(fake), ones))
        opt_gen.step()

    @override
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = (0.5, 0.999)
        return [
            torch.optim.Adam(self.gen.parameters(), self.lr, betas),
            torch.optim.Adam(self.disc.parameters(), self.lr, betas),
        ]

    @override
    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x), batch_size=64, shuffle=True, generator=_generator(0))

    def distance(self) -> float:
        """Samples to their nearest mode plus modes to their nearest sample (mean distances)."""
        with torch.no_grad():
            d = torch.cdist(self.gen(self.z), RING)
        return float(d.min(1).values.mean() + d.min(0).values.mean())
