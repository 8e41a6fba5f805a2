"""The detection rules as parts: each owns its settings and state, the detector composes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from lightning_gradwatch.config import DetectionConfig
from lightning_gradwatch.judge import detector as detector_module
from lightning_gradwatch.judge import exploding
from lightning_gradwatch.judge.context import NormBaseline
from lightning_gradwatch.judge.detector import WATCHES, GradientDetector
from lightning_gradwatch.judge.exploding import EXPLODING_RULES, ExplodingWatch
from lightning_gradwatch.judge.nonfinite import NonFinite
from lightning_gradwatch.judge.rule import ExplodingRule, Finding, NormStep
from lightning_gradwatch.judge.vanishing import VANISHING_RULES, VanishingWatch
from lightning_gradwatch.kinds import KINDS, Cause, Rule
from lightning_gradwatch.stats import StepStats

RULES = (NonFinite, *EXPLODING_RULES, *VANISHING_RULES)


def test_every_detection_setting_has_one_owner():
    owners = [NormBaseline, *WATCHES, *RULES]
    owned = [name for owner in owners for name in owner.settings]
    assert sorted(owned) == sorted(f.name for f in DetectionConfig.settings())
    assert len(owned) == len(set(owned))


def test_every_rule_is_named_in_the_enum_once_and_every_kind_has_a_watch():
    assert sorted(r.name for r in RULES) == sorted(Rule)
    assert {w.kind for w in WATCHES} == set(KINDS)


def test_the_state_is_one_flat_mapping_of_every_parts_keys():
    state = GradientDetector().state_dict()
    assert len(state) == 83
    assert {"steps", "mean", "var", "spike_run", "growth_run", "collapse_run", "vanishing_episode"} <= set(state)
    assert {"offset", "present", "start_losses", "first_high", "rise_losses", "climb_run", "run_jumped"} <= set(state)
    assert {"losses_at", "waited", "waited_peak", "waited_top", "waited_from", "run_held", "since_held"} <= set(state)
    assert {"stall_depths", "gaps", "zero_run", "zero_low", "trend_run"} <= set(state)
    assert {"kill_norms", "live_steps", "blowup", "blowup_floor", "killed_zeros"} <= set(state)
    assert {"rate_rows", "first_from", "new_data_seen", "new_data_floor", "old_high", "old_from"} <= set(state)


@dataclass(eq=False)
class _Ceiling(ExplodingRule):
    """A rule added the documented way: one class, one line in EXPLODING_RULES (here: any norm above 1000)."""

    name: ClassVar[Rule] = Rule.SPIKES  # a new rule would add its own member to Rule
    settings: ClassVar[tuple[str, ...]] = ()

    def fires(self, step: NormStep) -> bool:
        return step.norm > 1000.0

    def describe(self, step: NormStep) -> Finding:
        return Finding(f"total norm {step.norm:g} is above 1000", Cause.OUTLIER, step.norm, 1000.0)


def test_a_new_rule_is_one_class_and_one_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(exploding, "EXPLODING_RULES", (_Ceiling, *EXPLODING_RULES))
    det = GradientDetector()
    assert isinstance(det.watches[1], ExplodingWatch)
    assert isinstance(det.watches[1].rules[0], _Ceiling)
    verdict = det.update(0, StepStats(("fc",), (5000.0,), 5000.0, (10,), (0,)))
    (alert,) = verdict.alerts
    assert alert.kind == "exploding"
    assert alert.message.startswith("Exploding gradients at step 0: total norm 5000 is above 1000. Largest in: fc.")
    assert detector_module.WATCHES[2] is VanishingWatch
