"""GradientStats without a Trainer: numbers against independent float64 computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_gradwatch.stats import GradientStats, layer_name
from tests.helpers import reference_norms


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3))
    model(torch.randn(32, 16)).pow(2).sum().backward()
    return model


def test_stats_layer_and_total_norms_match_float64_reference():
    model = _model()
    stats = GradientStats(model.named_parameters()).collect()
    ref = reference_norms(model)
    assert stats.layers == ("0", "2", "4")
    for layer, norm in zip(stats.layers, stats.grad_norm):
        assert norm == pytest.approx(ref[layer], rel=1e-6)
    assert stats.total_norm == pytest.approx(ref["__total__"], rel=1e-6)
    assert stats.finite
    assert stats.param_norm is None  # only on extended steps


def test_stats_parameter_granularity_and_filters():
    model = _model()
    stats = GradientStats(model.named_parameters(), granularity="parameter", exclude=r"\.bias$").collect()
    assert stats.layers == ("0.weight", "2.weight", "4.weight")
    assert stats.grad_norm[0] == pytest.approx(model[0].weight.grad.double().norm().item(), rel=1e-6)
    only_last = GradientStats(model.named_parameters(), include=r"^4\.").collect()
    assert only_last.layers == ("4",)


def test_stats_extended_values_are_exact():
    model = _model()
    model[2].weight.grad[:10] = 0.0
    stats = GradientStats(model.named_parameters()).collect(extended=True)
    w, b = model[2].weight, model[2].bias
    zeros = int((w.grad == 0).sum() + (b.grad == 0).sum())
    assert stats.zero_fraction[1] == pytest.approx(zeros / (w.numel() + b.numel()))
    assert stats.max_abs[1] == pytest.approx(max(w.grad.abs().max().item(), b.grad.abs().max().item()))
    param_norm = math.sqrt(w.double().pow(2).sum().item() + b.double().pow(2).sum().item())
    assert stats.param_norm[1] == pytest.approx(param_norm, rel=1e-6)
    assert stats.grad_to_weight[1] == pytest.approx(stats.grad_norm[1] / param_norm)


def test_stats_skip_frozen_and_missing_gradients():
    model = _model()
    model[0].weight.grad = None
    model[0].bias.grad = None
    stats = GradientStats(model.named_parameters()).collect()
    assert stats.layers == ("2", "4")
    for p in model.parameters():
        p.grad = None
    assert GradientStats(model.named_parameters()).collect() is None


def test_stats_shared_parameter_counted_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    model(torch.randn(3, 4)).sum().backward()
    stats = GradientStats(model.named_parameters()).collect()
    assert stats.layers == ("0",)
    assert stats.total_norm == pytest.approx(reference_norms(model)["__total__"], rel=1e-6)


def test_stats_sparse_embedding_gradient():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8, sparse=True)
    head = nn.Linear(8, 1)
    model = nn.ModuleDict({"emb": emb, "head": head})
    idx = torch.tensor([1, 2, 2, 7, 1])  # repeated indices: an uncoalesced sparse gradient
    head(emb(idx)).sum().backward()
    assert emb.weight.grad.is_sparse
    stats = GradientStats(model.named_parameters()).collect(extended=True, histograms=True)
    dense = emb.weight.grad.to_dense()
    assert stats.grad_norm[0] == pytest.approx(dense.double().norm().item(), rel=1e-6)
    assert stats.zero_fraction[0] == pytest.approx((dense == 0).double().mean().item())
    assert stats.max_abs[0] == pytest.approx(dense.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stats_low_precision_gradients_are_measured_in_float32(dtype):
    torch.manual_seed(0)
    model = nn.Linear(2048, 256).to(dtype)
    model(torch.randn(8, 2048, dtype=dtype)).float().pow(2).sum().backward()
    stats = GradientStats(model.named_parameters()).collect()
    ref = math.sqrt(model.weight.grad.double().pow(2).sum().item() + model.bias.grad.double().pow(2).sum().item())
    # float32 accumulation over a 524k-value tensor: ~1e-5 relative; a bf16 accumulation would be off by ~1e-3
    assert stats.total_norm == pytest.approx(ref, rel=1e-4)


def test_stats_nonfinite_values_are_counted_exactly():
    model = _model()
    model[2].weight.grad[0, :3] = float("nan")
    model[4].bias.grad[0] = float("inf")
    stats = GradientStats(model.named_parameters()).collect(extended=True, histograms=True)
    assert not stats.finite
    assert stats.nonfinite_count == (0, 3, 1)
    assert stats.nonfinite_layers == ("2", "4")
    assert math.isnan(stats.grad_norm[1])
    assert math.isinf(stats.grad_norm[2])
    assert math.isnan(stats.total_norm)
    assert stats.histograms[0] is not None
    assert stats.histograms[1] is None


def test_stats_float32_overflow_is_recomputed_not_reported_as_nonfinite():
    model = _model()
    model[4].weight.grad[0, 0] = 1e30  # finite, but its square overflows float32
    stats = GradientStats(model.named_parameters()).collect()
    assert stats.finite
    assert stats.grad_norm[2] == pytest.approx(1e30, rel=1e-6)
    assert stats.total_norm == pytest.approx(1e30, rel=1e-6)


def test_stats_histograms_cover_every_value_with_their_exact_range_and_do_not_touch_the_global_rng():
    model = _model()
    collector = GradientStats(model.named_parameters(), histogram_bins=16, histogram_sample_size=500)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    stats = collector.collect(histograms=True)
    assert torch.equal(torch.rand(1), expected_next)
    for h, numel, layer in zip(stats.histograms, stats.numel, (model[0], model[2], model[4])):
        assert h.num == numel
        assert sum(h.bucket_counts) == pytest.approx(numel, rel=1e-9)
        assert len(h.bucket_limits) == len(h.bucket_counts) <= 16  # of 16 buckets, each run of empty ones merged
        assert not any(a == b == 0 for a, b in zip(h.bucket_counts, h.bucket_counts[1:]))
        values = torch.cat([layer.weight.grad.flatten(), layer.bias.grad])
        assert (h.min, h.max) == (values.min().item(), values.max().item())  # exact, sampled or not
        assert h.sum == pytest.approx(values.double().sum().item(), rel=1e-9, abs=1e-12)  # likewise
        assert h.sample_size <= numel
        assert h.sample_size == numel if numel <= 500 else abs(h.sample_size - 500) <= 4
    small = stats.histograms[2]  # 64*3 + 3 values < 500: exact
    values = torch.cat([model[4].weight.grad.flatten(), model[4].bias.grad])
    assert small.sample_size == values.numel()
    assert (small.min, small.max) == (values.min().item(), values.max().item())


def test_stats_plan_follows_changing_gradient_patterns():
    model = _model()
    collector = GradientStats(model.named_parameters())
    first = collector.collect()
    model[0].weight.grad = None
    model[0].bias.grad = None
    second = collector.collect()
    model(torch.randn(4, 16)).sum().backward()
    third = collector.collect()
    assert (len(first.layers), len(second.layers), len(third.layers)) == (3, 2, 3)


def test_layer_name_root_parameter():
    assert layer_name("scale") == "scale"
    assert layer_name("a.b.weight") == "a.b"


def test_stats_rejects_unknown_granularity():
    with pytest.raises(ValueError, match=r"`granularity` must be one of \('module', 'parameter'\), got 'block'"):
        GradientStats([], granularity="block")


def test_stats_mean_abs_on_histogram_steps():
    model = _model()
    stats = GradientStats(model.named_parameters()).collect(histograms=True)
    for layer, mean_abs in zip((model[0], model[2], model[4]), stats.mean_abs):
        values = torch.cat([layer.weight.grad.flatten(), layer.bias.grad])
        assert mean_abs == pytest.approx(values.abs().double().mean().item(), rel=1e-5)  # float32 sums
    assert GradientStats(model.named_parameters()).collect().mean_abs is None


def test_layer_cap_merges_numbered_layers_into_runs_not_into_one():
    model = nn.ModuleDict({"layers": nn.ModuleList(nn.Linear(2, 2) for _ in range(500)), "head": nn.Linear(2, 1)})
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    collector = GradientStats(model.named_parameters(), max_layers=256)
    assert len(collector.layer_names) == 251
    assert collector.layer_names[:2] == ("layers.0-1", "layers.2-3")
    assert collector.layer_names[-1] == "head"
    assert collector.aggregated == "into runs of 2 consecutive numbered modules"
    stats = collector.collect()
    assert stats.grad_norm[0] == pytest.approx(math.sqrt(12))  # two Linear(2, 2): 2 x (4 + 2) ones


def test_max_abs_of_complex_gradients_is_the_modulus():
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    w.grad = torch.tensor([3 + 4j, 0.5j, -1.0], dtype=torch.complex64)
    step = GradientStats([("w", w)]).collect(extended=True)
    assert step.max_abs == (5.0,)  # |3+4j|, not its largest part (4)
    assert step.grad_norm[0] == pytest.approx(math.sqrt(25 + 0.25 + 1))


def test_sparse_gradient_layers_get_a_histogram():
    emb = torch.nn.Embedding(100, 4, sparse=True)
    emb(torch.tensor([1, 2, 2, 7])).sum().backward()  # rows 1, 2 and 7 hold gradients; 97 rows are zeros
    step = GradientStats(emb.named_parameters(), histogram_bins=8).collect(histograms=True)
    (hist,) = step.histograms
    assert hist is not None
    assert hist.num == 400
    assert sum(hist.bucket_counts) == pytest.approx(400)
    assert (hist.min, hist.max) == (0.0, 2.0)  # row 2 was looked up twice
    assert hist.sum == pytest.approx(float(emb.weight.grad.to_dense().sum()))
    zero_bucket = hist.bucket_counts[0]
    assert zero_bucket == pytest.approx(97 * 4)  # the implicit zeros
