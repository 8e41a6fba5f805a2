"""Internal. Grouping parameters into layers: by owning module or one per parameter, with filters and a cap."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

from lightning_gradwatch._validation import Granularity, check_choice, choices

__all__ = [
    "GRANULARITIES",
    "Granularity",
    "LayerMap",
    "layer_name",
    "merge_layers",
    "tensor_name",
    "watched_parameters",
]

GRANULARITIES: tuple[str, ...] = choices(Granularity)

#: how ``torch.nn.utils.parametrize`` names what makes a parametrised tensor ``X.<tensor>``: its originals
#: (``X.parametrizations.<tensor>.original``, or ``original0``, ``original1`` when it has several, as weight_norm's)
#: and the parameters of its parametrisations (``X.parametrizations.<tensor>.<k>.<name>``); the outermost wins
_PARAMETRIZED = re.compile(r"^(?:(.+?)\.)?parametrizations\.([^.]+)\.(?:original\d*|\d+\..+)$")


def tensor_name(param_name: str) -> str:
    """The tensor a parameter stands for: the parametrised tensor its module reads, else the parameter itself.

    ``weight_norm``, ``spectral_norm``, ``orthogonal`` and every ``register_parametrization`` keep a module's weight
    as parameters of the module's ``parametrizations`` (``net.0.parametrizations.weight.original0``); they make
    ``net.0.weight``. ``torch.nn.utils.prune`` keeps its parameter on the module itself (``net.0.weight_orig``).

    Example:
        >>> tensor_name("net.0.parametrizations.weight.original0")
        'net.0.weight'
        >>> tensor_name("parametrizations.weight.original")  # a parametrised root module
        'weight'
        >>> tensor_name("net.0.weight_orig"), tensor_name("net.0.bias")
        ('net.0.weight_orig', 'net.0.bias')
    """
    match = _PARAMETRIZED.match(param_name)
    if match is None:
        return param_name
    owner, tensor = match.groups()
    return f"{owner}.{tensor}" if owner else tensor


def layer_name(param_name: str, granularity: Granularity = "module") -> str:
    """The layer a parameter belongs to: its owning module, or the parameter itself.

    A parametrised tensor's parameters belong to the module that reads the tensor, and per parameter are the
    tensor (weight_norm's ``original0`` and ``original1`` are one layer, ``net.0.weight``): see :func:`tensor_name`.

    Example:
        >>> layer_name("encoder.layers.3.self_attn.in_proj_weight")
        'encoder.layers.3.self_attn'
        >>> layer_name("encoder.layers.3.self_attn.in_proj_weight", "parameter")
        'encoder.layers.3.self_attn.in_proj_weight'
        >>> layer_name("pos_embedding")  # a parameter of the root module is its own layer
        'pos_embedding'
        >>> layer_name("net.0.parametrizations.weight.original1"), layer_name("net.0.bias")
        ('net.0', 'net.0')
        >>> layer_name("net.0.parametrizations.weight.original1", "parameter")
        'net.0.weight'
    """
    tensor = tensor_name(param_name)
    if granularity == "parameter":
        return tensor
    owner, _, _ = tensor.rpartition(".")
    return owner or tensor


@dataclass
class LayerMap:
    """Watched parameters, in forward (registration) order, and the layer each belongs to.

    Attributes:
        param_names: full parameter names.
        params: the parameters.
        layer_of: index into ``layer_names`` of each parameter's layer.
        layer_names: layer names in forward order.
        aggregated: how layers were merged to respect ``max_layers`` (``None``: they were not).
    """

    param_names: list[str]
    params: list[Tensor]
    layer_of: list[int]
    layer_names: tuple[str, ...]
    aggregated: str | None = None

    @classmethod
    def build(
        cls,
        named_parameters: Iterable[tuple[str, Tensor]],
        granularity: Granularity = "module",
        include: str | None = None,
        exclude: str | None = None,
        max_layers: int | None = None,
    ) -> LayerMap:
        """Group ``named_parameters``; a parameter shared between modules is watched once.

        Args:
            named_parameters: ``(name, parameter)`` pairs in forward order.
            granularity: ``"module"`` or ``"parameter"``.
            include: regular expression; only parameters whose full name matches (``re.search``) are watched.
            exclude: regular expression; parameters whose full name matches are not watched.
            max_layers: merge layers (see :func:`merge_layers`) until at most this many remain.

        Example:
            >>> import torch
            >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
            >>> LayerMap.build(model.named_parameters(), exclude=r"bias$").layer_names
            ('0', '2')
        """
        check_choice("granularity", granularity, Granularity)
        names, params = watched_parameters(named_parameters, include, exclude)
        owners = [layer_name(name, granularity) for name in names]
        aggregated = None
        if max_layers is not None and len(set(owners)) > max_layers:
            owners, aggregated = merge_layers(owners, max_layers)
        index: dict[str, int] = {}
        layer_of = [index.setdefault(owner, len(index)) for owner in owners]
        return cls(names, params, layer_of, tuple(index), aggregated)


def watched_parameters(
    named_parameters: Iterable[tuple[str, Tensor]], include: str | None, exclude: str | None
) -> tuple[list[str], list[Tensor]]:
    """The parameters ``include`` and ``exclude`` leave, each once (a parameter shared between modules).

    Example:
        >>> import torch
        >>> names, _ = watched_parameters(torch.nn.Linear(2, 1).named_parameters(), include="weight", exclude=None)
        >>> names
        ['weight']
    """
    inc = re.compile(include) if include else None
    exc = re.compile(exclude) if exclude else None
    names: list[str] = []
    params: list[Tensor] = []
    seen: set[int] = set()
    for name, p in named_parameters:
        if id(p) in seen:
            continue
        seen.add(id(p))
        if (inc is not None and not inc.search(name)) or (exc is not None and exc.search(name)):
            continue
        names.append(name)
        params.append(p)
    return names, params


def merge_layers(owners: list[str], cap: int) -> tuple[list[str], str]:
    """Merge layer names until at most ``cap`` remain; returns the new names and how they were merged.

    Names are shortened by one component at a time (``enc.3.attn`` -> ``enc.3``). When that would leave far fewer
    layers than allowed (fewer than ``cap // 4``), numbered siblings are merged into runs instead.

    Example:
        >>> merge_layers(["enc.0.attn", "enc.0.ff", "enc.1.attn", "enc.1.ff", "head"], cap=3)
        (['enc.0', 'enc.0', 'enc.1', 'enc.1', 'head'], 'by their first 2 name components')
        >>> names, how = merge_layers([f"layers.{i}" for i in range(10)], cap=4)
        >>> sorted(set(names)), how
        (['layers.0-2', 'layers.3-5', 'layers.6-8', 'layers.9'], 'into runs of 3 consecutive numbered modules')
    """
    depth = max(name.count(".") + 1 for name in owners)
    merged = owners
    while depth > 1 and len(set(merged)) > cap:
        shorter = [".".join(name.split(".")[: depth - 1]) for name in owners]
        if len(set(shorter)) < max(cap // 4, 2):
            runs = _numbered_runs(merged, cap)
            if runs is not None:
                return runs
        merged, depth = shorter, depth - 1
    return merged, f"by their first {depth} name component{'s' if depth > 1 else ''}"


def _numbered_runs(names: list[str], cap: int) -> tuple[list[str], str] | None:
    """Merge ``prefix.<n>`` names into runs of ``k`` consecutive numbers, ``k`` as small as keeps ``cap``."""
    numbered = _numbered(names)
    if not numbered:
        return None
    others = len(set(names) - set(numbered))
    groups: dict[str, list[int]] = {}
    for prefix, index in numbered.values():
        groups.setdefault(prefix, []).append(index)
    k = _run_length(groups, cap - others)
    if k is None:
        return None
    highest = {prefix: max(v) for prefix, v in groups.items()}

    def run(name: str) -> str:
        if name not in numbered:
            return name
        prefix, index = numbered[name]
        lo = index // k * k
        hi = min(lo + k - 1, highest[prefix])
        return f"{prefix}.{lo}" if lo == hi else f"{prefix}.{lo}-{hi}"

    return [run(n) for n in names], f"into runs of {k} consecutive numbered modules"


def _numbered(names: list[str]) -> dict[str, tuple[str, int]]:
    """The names ending in a number (``prefix.<n>``), as ``(prefix, n)``."""
    split = {n: n.rpartition(".") for n in set(names)}
    return {n: (prefix, int(last)) for n, (prefix, _, last) in split.items() if last.isdigit() and prefix}


def _run_length(groups: dict[str, list[int]], room: int) -> int | None:
    """The shortest run of consecutive numbers that leaves at most ``room`` runs in all (``None``: none does)."""
    for k in range(2, max(len(v) for v in groups.values()) + 1):
        if sum(len({i // k for i in v}) for v in groups.values()) <= room:
            return k
    return None
