"""The generated detection bank: outcomes, the plain loop against a real Trainer, and the package's detector on
the issue's two runs (replayed from their traces)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from examples.harness import single_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bank_outcome import outcome
from bank_runs import generate, issue_runs, train
from bank_score import alerts_of, judge
from bank_trainer import train_lightning
from gradwatch_adapter import baseline_factory

FINETUNE, TANH_STACK, *NOISY_CLASSIFIER = issue_runs()


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def spec_named(text: str):
    return next(s for s in generate() if text in s.name)


def maker():
    return baseline_factory()  # the package's detector, GradWatch's defaults


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
    assert judge(spec.name, result, alerts_of(trace, maker())).ok


def test_the_deep_tanh_stack_never_learns_and_is_named_vanishing_within_60_steps():
    trace = train(TANH_STACK)
    result = outcome(trace)
    assert result.verdict == "never_learned"
    assert result.deadline == 60
    assert result.layers == ("backbone.0",)
    alerts = alerts_of(trace, maker())
    assert judge(TANH_STACK.name, result, alerts).ok, alerts
    assert alerts[0][0] == "vanishing"
    assert alerts[0][1] < 30


def test_the_backbone_joining_is_silent():
    trace = train(FINETUNE)
    result = outcome(trace)
    assert result.verdict == "healthy"
    assert "backbone joins" in trace.events.values()
    assert alerts_of(trace, maker()) == []
    assert alerts_of(trace, maker(), current=False) == []  # told the previous batch's loss, as before: silent too


def test_the_plain_loop_gives_the_trainer_s_trace_and_the_callback_s_alerts():
    spec = spec_named("mlp_relu/sgd/constant/accum/")  # accumulation over 4 batches, across epoch ends
    real, plain = train_lightning(spec), train(spec)
    assert [(r.step, r.layers) for r in real.records] == [(r.step, r.layers) for r in plain.records]
    for a, b in zip(real.records, plain.records):
        assert a.total_norm == pytest.approx(b.total_norm, rel=1e-5)
        assert a.current == pytest.approx(b.current, rel=1e-5)  # the step's loss: its 4 micro-batches'
    assert real.alerts == alerts_of(plain, maker())
