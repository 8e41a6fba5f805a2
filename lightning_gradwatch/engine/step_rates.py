"""How far an SGD optimizer moves each layer's weights per unit of gradient: the clip threshold's step-size cap.

Read from the optimizer's parameter groups at every step (a schedule changes the learning rate), as plain floats:
no tensor is read, so no host synchronisation. Other optimizers have no such rate (Adam's step does not grow with
the gradient's norm): ``None``. Under SGD, the size the cap measures the weights against is at least the norm
PyTorch's default initialisation gives them (:meth:`StepRates.init_norm`), from their shapes alone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_gradwatch.engine.environment import inner_optimizer

__all__ = ["StepRates", "learning_rates"]


class StepRates:
    """The rate ``lr * (1 - dampening) / (1 - momentum)`` of each watched layer, under ``torch.optim.SGD``.

    A layer's rate is the mean of its values' rates (their parameter groups'); the lane hands it to the judge, which
    turns the layers' rates and gradient norms into the step's size (``judge.clipping.sgd_step_scale``).

    Args:
        params: the watched parameters.
        layer_of: index into ``layer_names`` of each parameter's layer.
        layer_names: the watched layers.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> rates = StepRates(list(net.parameters()), [0, 0, 1, 1], ["0", "1"])
        >>> net(torch.randn(1, 2)).sum().backward()
        >>> round(rates.init_norm(), 3)  # sqrt(2 / 3 + 1 / 3): the weights' rows, biases not counted
        1.0
        >>> rates(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9))
        1.0000000000000002
        >>> groups = [{"params": net[0].parameters(), "lr": 0.01}, {"params": net[1].parameters()}]
        >>> rates(torch.optim.SGD(groups, lr=0.1))
        {'0': 0.01, '1': 0.1}
        >>> rates(torch.optim.Adam(net.parameters())) is None
        True
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        layer_of: Sequence[int],
        layer_names: Sequence[str],
        param_names: Sequence[str] | None = None,
    ) -> None:
        names = list(param_names) if param_names is not None else [""] * len(params)
        shapes = {name: tuple(p.shape) for p, name in zip(params, names) if name}
        self._layer_by_id = {id(p): (layer_names[i], p.numel()) for p, i in zip(params, layer_of)}
        # each weight's squared norm under PyTorch's default initialisation (tensors of two or more dimensions)
        self._init_sq = [(p, _default_init_sq(p, name, shapes)) for p, name in zip(params, names) if p.dim() >= 2]
        self._groups_key: tuple[tuple[int, int], ...] = ()
        self._group_layers: list[dict[str, int]] = []

    def __call__(self, optimizer: Any) -> float | Mapping[str, float] | None:
        """One rate for every layer, each layer's (groups with different rates), or ``None`` (no cap).

        Lightning's and Fabric's optimizer wrappers are read through. A layer whose values sit in groups with
        different rates (biases at 10x the weights' learning rate) takes their mean over its values: mostly its
        weights' rate.
        """
        optimizer = inner_optimizer(optimizer)
        if not isinstance(optimizer, torch.optim.SGD):
            return None
        groups = optimizer.param_groups
        rates = [_rate(group) for group in groups]
        if any(r is None for r in rates):
            return None
        if len(set(rates)) == 1:
            return rates[0]
        shares: dict[str, list[tuple[int, float]]] = {}
        for sizes, rate in zip(self._layers(groups), rates):
            for name, numel in sizes.items():
                shares.setdefault(name, []).append((numel, rate))  # type: ignore[arg-type]
        return {name: _mean_rate(parts) for name, parts in shares.items()}

    def init_norm(self) -> float:
        """The norm PyTorch's default initialisation gives the watched weights that have a gradient now.

        From their shapes alone. ``nn.Linear`` and ``nn.Conv*`` draw a weight's values uniformly within
        ``1 / sqrt(fan_in)`` (Kaiming uniform with ``a = sqrt(5)``): a weight of ``out_features`` rows has norm
        ``sqrt(out_features / 3)`` whatever its fan-in, and so counts any tensor of two or more dimensions; a
        recurrent layer's (``weight_ih_l*``, ``weight_hh_l*`` of ``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) draws within
        ``1 / sqrt(hidden_size)``: ``sqrt(numel / (3 hidden_size))``. Biases and normalisation weights do not count,
        nor a weight without a gradient (frozen, or unused at this step), as in the weights' norm the cap compares
        it with. Parameters GradWatch sees flattened (FSDP1's shards) have one dimension: they do not count.
        """
        return math.sqrt(math.fsum(sq for p, sq in self._init_sq if p.grad is not None))

    def _layers(self, groups: Sequence[Mapping[str, Any]]) -> list[dict[str, int]]:
        """How many values of each watched layer every parameter group holds.

        Kept while the groups hold the same lists.
        """
        key = tuple((id(g["params"]), len(g["params"])) for g in groups)
        if key != self._groups_key:
            self._groups_key = key
            self._group_layers = []
            for group in groups:
                sizes: dict[str, int] = {}
                for p in group["params"]:
                    if id(p) in self._layer_by_id:
                        name, numel = self._layer_by_id[id(p)]
                        sizes[name] = sizes.get(name, 0) + numel
                self._group_layers.append(sizes)
        return self._group_layers


def learning_rates(optimizer: Any) -> tuple[float, ...] | None:
    """Every parameter group's learning rate, as plain floats (``None``: no optimizer, or a rate not readable).

    Any optimizer (``lr`` of each group; Lightning's and Fabric's wrappers are read through). ``None`` when a rate is
    a tensor on a device (reading it would synchronise) or not a number.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> learning_rates(torch.optim.Adam([{"params": [net.weight], "lr": 0.01}, {"params": [net.bias]}], lr=0.1))
        (0.01, 0.1)
    """
    if optimizer is None:
        return None
    rates = []
    for group in inner_optimizer(optimizer).param_groups:
        lr = _plain_lr(group.get("lr"))
        if lr is None:
            return None
        rates.append(lr)
    return tuple(rates)


def _plain_lr(lr: Any) -> float | None:
    """A learning rate as a float (``None``: a tensor on a device, or not a finite number of at least 0)."""
    if isinstance(lr, torch.Tensor):
        if lr.device.type != "cpu" or lr.numel() != 1:
            return None
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
        return None
    return float(lr)


def _default_init_sq(param: torch.Tensor, name: str, shapes: Mapping[str, tuple[int, ...]]) -> float:
    """A weight's squared norm under PyTorch's default initialisation (see :meth:`StepRates.init_norm`)."""
    tail = name.rpartition(".")[2]
    if tail.startswith(("weight_ih_l", "weight_hh_l")):  # a recurrent layer: within 1 / sqrt(hidden_size)
        hidden = shapes.get(name[: len(name) - len(tail)] + "weight_hh" + tail[len("weight_ih") :])
        if hidden is not None and len(hidden) == 2 and hidden[1] > 0:
            return param.numel() / (3.0 * hidden[1])
    return param.shape[0] / 3.0


def _mean_rate(parts: Sequence[tuple[int, float]]) -> float:
    """The mean rate over a layer's values, from ``(values, rate)`` of each group holding some (exact for one)."""
    if len({rate for _, rate in parts}) == 1:
        return parts[0][1]
    values = sum(numel for numel, _ in parts)
    return math.fsum(numel * rate for numel, rate in parts) / values if values else 0.0


def _rate(group: Mapping[str, Any]) -> float | None:
    """``lr * (1 - dampening) / (1 - momentum)`` of a parameter group.

    Dampening applies only with momentum (as in ``torch.optim.SGD``). ``None`` (no cap) when its learning rate is a
    tensor on a device (reading it would synchronise) or not a number, or its momentum is 1 or more (no steady step).
    """
    lr = _plain_lr(group.get("lr"))
    if lr is None:
        return None
    momentum = float(group.get("momentum", 0.0) or 0.0)
    if momentum <= 0.0:
        return float(lr)
    if momentum >= 1.0:
        return None
    return float(lr) * (1.0 - float(group.get("dampening", 0.0) or 0.0)) / (1.0 - momentum)
