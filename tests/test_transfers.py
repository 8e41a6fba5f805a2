"""Device-to-host transfers on the measuring path, counted with a torch function mode around GradWatch's hook."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from lightning_gradwatch import GradWatch
from tests.helpers import flavour, make_mlp_module, trainer_kwargs

pl = flavour("lightning.pytorch")

# calls that bring a tensor's values to the host (on a GPU each waits for the device)
_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__float__, torch.Tensor.__int__}
_READS |= {torch.Tensor.__bool__, torch.Tensor.__index__}


class CountTransfers(TorchFunctionMode):
    """Counts device-to-host transfers: ``.cpu()``, ``.to`` the host, and reads of values not already on the host.

    ``.cpu()`` counts even on a CPU tensor (where it moves nothing), so a CPU run counts what a GPU run would do. On
    the host are: the results of ``.cpu()``, tensors made from Python values without a ``device`` (``torch.tensor``
    of a list, ``torch.arange``), and whatever is computed from host tensors alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self._host: dict[int, torch.Tensor] = {}  # by id; the tensor is kept so that its id is not reused

    def _on_host(self, t: torch.Tensor) -> None:
        self._host[id(t)] = t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        # `.to(device)` is a transfer when it leaves the tensor's device for the host; moves onto the gradients' own
        # device (packing the statistics) are not, and on this CPU machine cannot be told apart by name
        to_cpu = (
            func is torch.Tensor.to
            and isinstance(result, torch.Tensor)
            and result.device.type == "cpu"
            and args[0].device.type != "cpu"
        )
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if func is torch.Tensor.cpu or to_cpu:
            self.calls.append(func.__name__)
            self._on_host(result)
        elif func in _READS and args and id(args[0]) not in self._host:
            self.calls.append(func.__name__)
        elif isinstance(result, torch.Tensor) and "device" not in kwargs and all(id(a) in self._host for a in inputs):
            self._on_host(result)
        return result


def _transfers_at(tmp_path, watch: GradWatch, steps: tuple[int, ...]) -> dict[int, list[str]]:
    """The transfers GradWatch's hook makes at each of ``steps`` of a real fit."""
    hook = watch.on_before_optimizer_step
    seen: dict[int, list[str]] = {}

    def counted(trainer, pl_module, optimizer):
        if trainer.global_step not in steps:
            return hook(trainer, pl_module, optimizer)
        with CountTransfers() as mode:
            hook(trainer, pl_module, optimizer)
        seen[trainer.global_step] = mode.calls
        return None

    watch.on_before_optimizer_step = counted  # the Trainer calls the instance's hook
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_steps=max(steps) + 1))
    trainer.fit(make_mlp_module(pl, record=False))
    assert sorted(seen) == sorted(steps)
    return seen


def test_one_transfer_per_plain_log_and_histogram_step(tmp_path):
    """Each step moves its statistics (and the loss) to the host once, whatever it writes."""
    watch = GradWatch(log_every_n_steps=4, histogram_every_n_steps=8)
    seen = _transfers_at(tmp_path, watch, (3, 4, 5, 8))
    assert seen[3] == ["cpu"], seen  # plain
    assert seen[4] == ["cpu"], seen  # log step: the extended statistics ride in the same transfer
    assert seen[5] == ["cpu"], seen
    assert seen[8] == ["cpu"], seen  # histogram step: the histogram counts too


def test_counter_sees_a_transfer_that_is_there():
    """The counter is not blind: a read of a value, a move to the host and a read of it are two transfers."""
    x, y = torch.ones(3), torch.ones(3)  # made before counting: as if on the device
    with CountTransfers() as mode:
        x.sum().item()
        x.cpu().tolist()
        float(y[0])
        (torch.tensor([1.0, 2.0]) * 2).tolist()  # made on the host from Python values: no transfer
    assert mode.calls == ["item", "cpu", "__float__"]


@pytest.mark.parametrize("clip", ["adaptive", 1.0])
def test_clipping_adds_no_transfer(tmp_path, clip):
    """Clipping scales the gradients on the device with the host's coefficient: still one transfer a step."""
    watch = GradWatch(log_every_n_steps=100, histogram_every_n_steps=0, images=False, clip=clip)
    seen = _transfers_at(tmp_path, watch, (5, 6))
    assert seen == {5: ["cpu"], 6: ["cpu"]}
