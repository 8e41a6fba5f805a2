"""The packed layout of a step's statistics: per-layer values that travel to the host in ONE transfer.

Each field says how partial values from several processes combine; :func:`unpack` splits the transferred values
back into the fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_gradwatch.measure.histograms import log10_bins

__all__ = ["Packed", "histogram_layout", "step_layout", "to_host", "unpack"]


@dataclass(frozen=True)
class Packed:
    """One field of a step's packed statistics: per-layer values that travel in the step's single transfer.

    Attributes:
        name: the field's name (the key :func:`unpack` returns it under).
        op: how partial values from several processes combine: ``"sum"``, ``"max"`` or ``"min"``.
        width: values per layer (``histogram_bins`` for the bucket counts, else 1).
    """

    name: str
    op: str = "sum"
    width: int = 1


def step_layout(extended: bool, histograms: bool, weights: bool = False) -> tuple[Packed, ...]:
    """The packed per-layer statistics of a step, in transfer order (the histogram tail comes after these).

    ``weights``: the parameter norms alone (an extended step has them already).
    """
    layout = [Packed("grad_sq")]
    if extended or weights:
        layout.append(Packed("param_sq"))
    if extended:
        layout += [Packed("nonzero"), Packed("max_abs", "max")]
    if extended or histograms:
        layout.append(Packed("numel"))
    if histograms:
        layout.append(Packed("l1"))
    return tuple(layout)


def histogram_layout(bins: int) -> tuple[Packed, ...]:
    """The histogram tail: agreed bin edges first, then sums and weighted counts (two phases when sharded).

    The histogram of ``log10 |g|`` adds its smallest value (its range runs from there to ``log10`` of the largest
    ``|g|``, ``max(|hist_lo|, |hist_hi|)``), its counts (the exact zeros first, then ``log10_bins(bins)``
    buckets), and the number of non-zero values with the sums of their bucket centres and of their squares.
    """
    return (
        Packed("hist_lo", "min"),
        Packed("hist_log_lo", "min"),
        Packed("hist_hi", "max"),
        Packed("hist_sum"),
        Packed("hist_counts", width=bins),
        Packed("hist_log_counts", width=log10_bins(bins) + 1),
        Packed("hist_log_num"),
        Packed("hist_log_m1"),
        Packed("hist_log_m2"),
        Packed("hist_numel"),
    )


def unpack(layout: Sequence[Packed], values: Sequence[float], layers: int) -> dict[str, list[float]]:
    """Split a step's transferred values into its fields (values past the layout are left out).

    Example:
        >>> unpack(step_layout(False, False) + (Packed("lo", "min"), Packed("counts", width=2)), [4, 0, 5, 6, 9], 1)
        {'grad_sq': [4], 'lo': [0], 'counts': [5, 6]}
    """
    out, offset = {}, 0
    for field in layout:
        width = field.width * layers
        out[field.name] = list(values[offset : offset + width])
        offset += width
    return out


def to_host(parts: list[Tensor]) -> list[float]:
    """The step's one device-to-host transfer."""
    return torch.cat(parts).cpu().tolist() if len(parts) > 1 else parts[0].cpu().tolist()
