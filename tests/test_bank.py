"""The generated detection bank: outcomes, the plain loop against a real Trainer, and the prototype rules on the
issue's two runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from examples.harness import single_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bank_outcome import outcome
from bank_rules import CANDIDATES
from bank_runs import generate, issue_runs, train
from bank_score import alerts_of, judge
from bank_trainer import train_lightning

FINETUNE, TANH_STACK = issue_runs()


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def spec_named(text: str):
    return next(s for s in generate() if text in s.name)


def maker(name: str):
    candidate = CANDIDATES[name]
    return candidate.factory(**candidate.defaults)


def test_the_bank_covers_every_family_with_many_healthy_seeds():
    specs = generate()
    families = {s.family for s in specs}
    assert len(specs) >= 200
    assert len(families) == 10
    assert all(sum(s.family == f and s.lightning for s in specs) >= 1 for f in families)
    assert all(sum(s.family == f and bool(s.noise) for s in specs) >= 16 for f in families)


def test_a_nan_batch_is_a_nonfinite_outcome_at_its_step():
    spec = spec_named("mlp_relu/rmsprop/step/nan/")
    trace = train(spec)
    result = outcome(trace)
    assert (result.verdict, result.step) == ("nonfinite", spec.event_step)
    assert judge(spec.name, result, alerts_of(trace, maker("baseline"))).ok


def test_the_deep_tanh_stack_never_learns_and_only_the_loss_aware_rule_names_it_within_60_steps():
    trace = train(TANH_STACK)
    result = outcome(trace)
    assert result.verdict == "never_learned"
    assert result.deadline == 60
    assert result.layers == ("backbone.0",)
    assert not judge(TANH_STACK.name, result, alerts_of(trace, maker("baseline"))).ok
    alerts = alerts_of(trace, maker("combined"))
    assert judge(TANH_STACK.name, result, alerts).ok, alerts


def test_the_backbone_joining_is_a_false_alarm_today_and_silent_with_the_chained_norm():
    trace = train(FINETUNE)
    result = outcome(trace)
    assert result.verdict == "healthy"
    assert "backbone joins" in trace.events.values()
    assert [kind for kind, _, _ in alerts_of(trace, maker("baseline"))] == ["exploding"]
    assert alerts_of(trace, maker("rebase")) == []
    assert alerts_of(trace, maker("combined")) == []


def test_the_plain_loop_gives_the_trainer_s_trace_and_the_callback_s_alerts():
    spec = spec_named("mlp_relu/sgd/constant/accum/")  # accumulation over 4 batches, across epoch ends
    real, plain = train_lightning(spec), train(spec)
    assert [(r.step, r.layers) for r in real.records] == [(r.step, r.layers) for r in plain.records]
    for a, b in zip(real.records, plain.records):
        assert a.total_norm == pytest.approx(b.total_norm, rel=1e-5)
        assert (a.observed is None and b.observed is None) or a.observed == pytest.approx(b.observed, rel=1e-5)
    assert real.alerts == alerts_of(plain, maker("baseline"))
