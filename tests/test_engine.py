"""An optimizer's lane through the engine and the one place that acts, without a Trainer: measure, judge, act."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_gradwatch import GradientAlertError
from lightning_gradwatch.act.actor import LocalHost, act
from lightning_gradwatch.config import WatchConfig
from lightning_gradwatch.engine.environment import Environment
from lightning_gradwatch.engine.lane import Lane
from lightning_gradwatch.judge.decision import Flags


def _setup(**settings):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    lane = Lane(WatchConfig.from_arguments(**settings), environment=Environment(log_every=2, hist_every=0))
    lane.watch(model.named_parameters(), exempt=set())
    return model, lane, torch.optim.SGD(model.parameters(), lr=0.1)


def _backward(model, scale=1.0, nan=False):
    model.zero_grad()
    x = torch.randn(16, 4)
    loss = model(x).square().mean() * scale
    loss.backward()
    if nan:
        model[0].weight.grad[0, 0] = math.nan


@pytest.mark.parametrize(
    ("response", "flags"),
    [("skip", Flags(skip=True)), ("stop", Flags(skip=True, stop=True)), ("warn", Flags()), ("ignore", Flags())],
)
def test_nonfinite_responses_decide_and_act(response, flags):
    model, lane, optimizer = _setup(on_nonfinite=response)
    _backward(model, nan=True)
    decision = lane.decide(step=3)
    assert decision.flags == flags
    assert [(a.kind, a.step, r) for a, r in decision.alerts] == (
        [] if response == "ignore" else [("nonfinite", 3, response)]
    )
    assert decision.health == "non-finite"
    host = LocalHost()
    before = [p.detach().clone() for p in model.parameters()]
    act(decision, decision.flags, optimizer, host, lane.collector)
    optimizer.step()
    unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert unchanged == (response in ("skip", "stop"))  # a dropped update never reaches the weights
    assert host.stopped == (response == "stop")


def test_raise_response_raises_the_alert_after_dropping_the_update():
    model, lane, optimizer = _setup(on_nonfinite="raise")
    _backward(model, nan=True)
    decision = lane.decide(step=5)
    assert decision.flags == Flags(skip=True, fail=True)
    with pytest.raises(GradientAlertError, match="Non-finite gradients") as info:
        act(decision, decision.flags, optimizer, source=lane.collector)
    assert info.value.alert.step == 5
    assert all(p.grad is None for p in model.parameters())


def test_a_flag_raised_on_another_rank_is_carried_out_here():
    model, lane, optimizer = _setup()
    _backward(model)
    decision = lane.decide(step=0)
    assert decision.flags == Flags()
    with pytest.raises(GradientAlertError, match="on another process"):
        act(decision, decision.flags | Flags(fail=True), optimizer, source=lane.collector)
    assert all(p.grad is not None for p in model.parameters())  # a raise alone does not drop the update


def test_fixed_clip_scales_gradients_to_the_threshold():
    model, lane, optimizer = _setup(clip=0.01)
    _backward(model, scale=100.0)
    decision = lane.decide(step=0)
    threshold, clipped = decision.clip(decision.flags)
    assert threshold == 0.01
    assert clipped == pytest.approx(0.01, rel=1e-4)
    assert lane.settle(decision, decision.flags) == (threshold, clipped)
    act(decision, decision.flags, optimizer, source=lane.collector)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])).item()
    assert norm == pytest.approx(0.01, rel=1e-4)
    assert lane.summary.events["clipped_steps"] == 1
    assert decision.clip(Flags(skip=True)) is None  # a step dropped on any rank is not clipped


def test_no_clipping_configured_leaves_gradients_alone():
    model, lane, optimizer = _setup()
    _backward(model, scale=1e6)
    decision = lane.decide(step=0)
    assert decision.clip_threshold is None
    before = [p.grad.clone() for p in model.parameters()]
    act(decision, decision.flags, optimizer, source=lane.collector)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


def test_schedule_counts_the_optimizers_own_steps_when_asked():
    model, lane, _ = _setup()
    logged_global, logged_own = [], []
    for step in (1, 3, 5, 7):  # the odd global steps of the second of two alternating optimizers
        _backward(model)
        logged_global.append(lane.decide(step=step).log)
    lane.ticks = 0
    for step in (1, 3, 5, 7):
        _backward(model)
        logged_own.append(lane.decide(step=step, own_cadence=True).log)
    assert logged_global == [False] * 4  # global_step % 2 never holds
    assert logged_own == [True, False, True, False]


def test_no_gradient_is_an_empty_decision():
    _, lane, _ = _setup()
    decision = lane.decide(step=0)
    assert decision.stats is None
    assert decision.verdict is None
    assert decision.flags == Flags()
