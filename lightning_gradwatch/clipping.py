"""Norm-based gradient clipping: a fixed threshold or one learned from the run's own gradient-norm history.

Deciding and scaling are separate, as in ``torch.nn.utils.clip_grad``: a policy turns a step's total norm (already on
the host, from the step's one statistics transfer) into a threshold, and :func:`scale_gradients_` multiplies the
gradients in place with ``torch._foreach_mul_`` per (device, dtype) group. Nothing here forces another host sync,
and a step below its threshold is not touched at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

_EPS = 1e-6


def clip_coefficient(total_norm: float, max_norm: float) -> float:
    """The factor that brings ``total_norm`` down to ``max_norm`` (1.0 when it is already below).

    Matches ``torch.nn.utils.clip_grad_norm_``: ``max_norm / (total_norm + 1e-6)``, clamped to at most 1.

    Example:
        >>> clip_coefficient(10.0, 1.0)
        0.09999999000000101
        >>> clip_coefficient(0.5, 1.0)
        1.0
    """
    if not math.isfinite(total_norm) or total_norm <= max_norm:
        return 1.0
    return min(1.0, max_norm / (total_norm + _EPS))


@torch.no_grad()
def scale_gradients_(parameters: Iterable[Tensor], coefficient: float) -> None:
    """Multiply every gradient in place by ``coefficient`` (sparse and sharded gradients included).

    Example:
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> w.grad = torch.full((3,), 2.0)
        >>> scale_gradients_([w], 0.5)
        >>> w.grad.tolist()
        [1.0, 1.0, 1.0]
    """
    grads = [g for g in (p.grad for p in parameters) if g is not None]
    if all(type(g) is Tensor and g.layout == torch.strided for g in grads):  # the common case, grouped in C++
        for (tensors,), _ in _group_tensors_by_device_and_dtype([grads]).values():  # type: ignore[arg-type]
            torch._foreach_mul_(tensors, coefficient)
        return
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        local = g.to_local() if callable(getattr(g, "to_local", None)) else g
        if local.layout != torch.strided:
            local.mul_(coefficient)
            continue
        groups.setdefault((local.device, local.dtype), []).append(local)
    for tensors in groups.values():
        torch._foreach_mul_(tensors, coefficient)


class AdaptiveClipThreshold:
    """A clipping threshold learned from the run's own total-norm history (z-score clipping in log space).

    The running mean and variance of ``log10(total norm)`` are kept as exponential moving averages, started by a
    plain mean over ``warmup_steps``. The threshold is ``10 ** (mean + zscore * std)``; a norm above it is clipped to
    it, and the history learns the clipped value, so a single spike does not inflate the threshold. During warm-up
    nothing is clipped (except by ``max_norm``, a fixed cap that always applies when given).

    Args:
        zscore: standard deviations above the running mean where clipping starts.
        warmup_steps: steps that only build the history.
        ema_decay: weight of the newest step in the running statistics.
        max_norm: optional fixed cap applied on every step, warm-up included.
        min_std: floor of the standard deviation (in decades), so a very steady run is not clipped at its mean.

    Example:
        >>> clip = AdaptiveClipThreshold(warmup_steps=5)
        >>> [clip.threshold() for _ in range(1)]
        [inf]
        >>> for norm in [1.0, 1.1, 0.9, 1.0, 1.05, 0.95]:
        ...     _ = clip.update(norm)
        >>> 1.1 < clip.threshold() < 2.0
        True
        >>> clip.update(1000.0) < 2.0  # a spike is clipped to the threshold, and learnt as such
        True
    """

    def __init__(
        self,
        zscore: float = 2.5,
        warmup_steps: int = 25,
        ema_decay: float = 0.03,
        max_norm: float | None = None,
        min_std: float = 0.02,
    ) -> None:
        self.zscore = zscore
        self.warmup_steps = warmup_steps
        self.ema_decay = ema_decay
        self.max_norm = max_norm
        self.min_std = min_std
        self.steps = 0
        self.mean = 0.0
        self.var = 0.0

    def threshold(self) -> float:
        """The total norm above which the next step is clipped (``inf`` during warm-up without a cap)."""
        threshold = math.inf
        if self.steps >= max(self.warmup_steps, 2):
            std = max(math.sqrt(max(self.var, 0.0)), self.min_std)
            threshold = 10 ** min(self.mean + self.zscore * std, 300.0)
        if self.max_norm is not None:
            threshold = min(threshold, self.max_norm)
        return threshold

    def update(self, total_norm: float) -> float:
        """Learn from one step's total norm; returns the threshold that applied to it.

        Non-finite and zero norms are not learnt.
        """
        threshold = self.threshold()
        if not math.isfinite(total_norm) or total_norm <= 0:
            return threshold
        x = math.log10(min(total_norm, threshold))
        self.steps += 1
        if self.steps <= max(self.warmup_steps, 2):
            delta = x - self.mean
            self.mean += delta / self.steps
            self.var += (delta * (x - self.mean) - self.var) / self.steps
        else:
            a = self.ema_decay
            delta = x - self.mean
            self.mean += a * delta
            self.var = (1 - a) * (self.var + a * delta * delta)
        return threshold

    def state_dict(self) -> dict[str, Any]:
        """Plain values that let a resumed run continue with the same threshold."""
        return {"steps": self.steps, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; missing keys keep their defaults."""
        self.steps = int(state.get("steps", 0))
        self.mean = float(state.get("mean", 0.0))
        self.var = float(state.get("var", 0.0))
