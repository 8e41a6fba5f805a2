"""The reduction logic for sharded gradients, in one process: a real gloo group of size one, real DTensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from lightning_gradwatch.sharding import group_size, is_dtensor, local, reduce_parts, shard_groups
from lightning_gradwatch.stats import GradientStats


@pytest.fixture(scope="module")
def world():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_plain_tensors_need_no_reduction():
    t = torch.randn(3)
    assert shard_groups(t) == ()
    assert not is_dtensor(t)
    assert local(t) is t
    assert group_size(()) == 1
    sums, maxes = reduce_parts([(torch.tensor([1.0, 2.0]), "sum"), (torch.tensor([3.0]), "max")], ())
    assert sums.tolist() == [1.0, 2.0]
    assert maxes.tolist() == [3.0]


def test_complex_tensors_are_pairs_of_reals():
    z = torch.tensor([3 + 4j, 0j])
    assert local(z).tolist() == [[3.0, 4.0], [0.0, 0.0]]


def test_only_sharded_mesh_dimensions_are_reduced(world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    sharded = distribute_tensor(torch.randn(4, 2), mesh, [Shard(0)])
    replicated = distribute_tensor(torch.randn(4, 2), mesh, [Replicate()])
    assert is_dtensor(sharded)
    assert len(shard_groups(sharded)) == 1  # sums over the shard dimension
    assert shard_groups(replicated) == ()  # copies: summing them would count each value once per replica
    assert local(sharded).shape == (4, 2)
    assert shard_groups(torch.zeros(2), plain_group=world) == (world,)  # FSDP1 slices name their group
    assert group_size((world,)) == 1


def test_reduce_parts_one_collective_per_kind(world):
    parts = [(torch.tensor([1.0, 2.0]), "sum"), (torch.tensor([5.0]), "max"), (torch.tensor([0.5]), "sum")]
    out = reduce_parts(parts, (world,))
    assert [t.tolist() for t in out] == [[1.0, 2.0], [5.0], [0.5]]


def test_dtensor_gradients_measured_like_plain_ones(world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    plain(torch.randn(5, 4)).sum().backward()
    sharded = {}
    for name, p in plain.named_parameters():
        dp = torch.nn.Parameter(distribute_tensor(p.detach().clone(), mesh, [Shard(0)]))
        dp.grad = distribute_tensor(p.grad.clone(), mesh, [Shard(0)])
        sharded[name] = dp
    expected = GradientStats(plain.named_parameters()).collect(extended=True, histograms=True)
    collector = GradientStats(sharded.items())
    assert collector.sharded
    got = collector.collect(extended=True, histograms=True)
    assert got.layers == expected.layers
    for field in ("grad_norm", "param_norm", "max_abs", "zero_fraction", "numel", "mean_abs"):
        assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-6), field
    assert got.total_norm == pytest.approx(expected.total_norm, rel=1e-6)
    for a, b in zip(got.histograms, expected.histograms):
        assert a.num == b.num
        assert sum(a.bucket_counts) == pytest.approx(sum(b.bucket_counts))


def test_plain_shards_without_gradient_still_take_part(world):
    """FSDP1: a rank holding none of a parameter has no gradient for it, yet must join the same collectives."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model(torch.randn(3, 2)).sum().backward()
    model[1].weight.grad = None
    model[1].bias.grad = None
    stats = GradientStats(model.named_parameters(), plain_group=world).collect(extended=True)
    assert stats.layers == ("0", "1")  # present, as on the ranks that hold its values
    assert stats.grad_norm[1] == 0.0
    assert stats.numel[1] == 0
    assert math.isfinite(stats.total_norm)
