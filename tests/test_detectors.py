"""The detectors alone, on hand-made streams of statistics (no Trainer)."""

from __future__ import annotations

import json
import math
import random

import pytest

from lightning_gradwatch.alerts import ModelTraits, remedies
from lightning_gradwatch.detectors import DetectionConfig, GradientDetector
from lightning_gradwatch.judge.context import LossTrack
from lightning_gradwatch.stats import StepStats

LAYERS = ("l0", "l1", "l2")


def stats(*norms: float, nonfinite: tuple[int, ...] | None = None) -> StepStats:
    total = math.sqrt(sum(n * n for n in norms)) if all(map(math.isfinite, norms)) else math.nan
    counts = nonfinite or tuple(0 if math.isfinite(n) else 1 for n in norms)
    return StepStats(LAYERS[: len(norms)], tuple(norms), total, (10,) * len(norms), counts)


def healthy(step: int, scale: float = 1.0) -> StepStats:
    wobble = 1.0 + 0.1 * math.sin(1.7 * step)
    return stats(0.5 * scale * wobble, 1.0 * scale * wobble, 0.8 * scale / wobble)


def feed(detector: GradientDetector, steps: range, make=healthy, loss=None) -> list:
    alerts = []
    for step in steps:
        if loss is not None:
            detector.observe_loss(loss(step))
        alerts += detector.update(step, make(step)).alerts
    return alerts


def test_single_spike_is_counted_not_alerted():
    det = GradientDetector()
    assert feed(det, range(50)) == []
    verdict = det.update(50, healthy(50, scale=100.0))
    assert verdict.spike
    assert verdict.alerts == []
    assert feed(det, range(51, 80)) == []
    assert det.state_dict()["counts"]["spikes"] == 1


def test_sustained_spikes_alert_once_per_episode():
    det = GradientDetector(DetectionConfig(exploding_patience=2))
    feed(det, range(50))
    first = feed(det, range(50, 55), make=lambda s: healthy(s, scale=1000.0))
    assert [(a.kind, a.step) for a in first] == [("exploding", 51)]
    assert "2 consecutive steps above the spike threshold" in first[0].message
    assert "clip" in first[0].message  # a remedy
    feed(det, range(55, 60))  # recovered: the episode ends
    second = feed(det, range(60, 63), make=lambda s: healthy(s, scale=1000.0))
    assert [(a.kind, a.step) for a in second] == [("exploding", 61)]


def test_no_spike_verdict_during_warmup_but_absolute_threshold_applies():
    det = GradientDetector(DetectionConfig(warmup_steps=20))
    assert not any(det.update(s, healthy(s, scale=1000.0 if s == 5 else 1.0)).spike for s in range(20))
    strict = GradientDetector(DetectionConfig(warmup_steps=20, exploding_threshold=10.0))
    assert strict.update(0, healthy(0, scale=100.0)).spike
    assert strict.spike_threshold() == 10.0


def converging(step: int) -> StepStats:
    """A classifier that learns: norms around 5 at first, then ~500x smaller once most examples are fit."""
    return healthy(step, scale=5.0 * max(0.002, 0.9**step))


def test_consecutive_spikes_below_the_runs_ceiling_are_counted_not_alerted():
    det = GradientDetector()
    assert feed(det, range(100), make=converging) == []
    # two hard batches in a row: ~1000x the recent norm, yet no larger than the norms of early training
    verdicts = [det.update(s, healthy(s, scale=3.0)) for s in (100, 101)]
    assert [v.spike for v in verdicts] == [True, True]
    assert [v.alerts for v in verdicts] == [[], []]
    assert feed(det, range(102, 150), make=converging) == []
    assert det.state_dict()["counts"]["spikes"] == 2


def test_consecutive_spikes_beyond_the_runs_ceiling_are_an_explosion():
    det = GradientDetector()
    feed(det, range(100), make=converging)
    alerts = feed(det, range(100, 103), make=lambda s: healthy(s, scale=50.0 * 10 ** (s - 100)))
    assert [(a.kind, a.step) for a in alerts] == [("exploding", 101)]
    assert "largest ordinary norm" in alerts[0].message


def test_the_ceiling_forgets_slowly():
    det = GradientDetector(DetectionConfig(exploding_ceiling_memory=100))
    feed(det, range(400), make=converging)  # the early norms are 3 decades behind
    alerts = feed(det, range(400, 402), make=lambda s: healthy(s, scale=3.0))
    assert [(a.kind, a.step) for a in alerts] == [("exploding", 401)]


def test_a_spike_run_the_run_came_back_from_raises_the_ceiling():
    """A catapult (SGD at the peak of a warm-up): the norm jumps for a few steps and the run settles by itself."""
    det = GradientDetector(DetectionConfig(exploding_patience=2))  # two spikes: the ceiling is the point
    feed(det, range(50))
    assert feed(det, range(50, 52), make=lambda s: healthy(s, scale=8.0 if s == 50 else 5.0)) == []  # falls back
    feed(det, range(52, 100))
    # the next excursion, a little larger: the run's own (above twice the largest ordinary norm, it was alerted)
    assert feed(det, range(100, 102), make=lambda s: healthy(s, scale=6.0 if s == 100 else 12.0)) == []
    feed(det, range(102, 150))
    # twice as far as the largest the run came back from: an explosion
    alerts = feed(det, range(150, 152), make=lambda s: healthy(s, scale=50.0 if s == 150 else 100.0))
    assert [(a.kind, a.step) for a in alerts] == [("exploding", 151)]


def test_a_steady_rise_below_a_norm_the_run_came_back_from_is_no_explosion():
    """A catapult's slow build-up: the norm up 6 steps in a row with the loss, to less than a catapult it survived."""
    det = GradientDetector()
    loss = lambda s: 1.0 if s < 100 or s >= 110 else 1.0 + 0.5 * (s - 99)  # noqa: E731
    feed(det, range(50), loss=loss)
    assert feed(det, range(50, 52), make=lambda s: healthy(s, scale=8.0 if s == 50 else 5.0), loss=loss) == []
    feed(det, range(52, 100), loss=loss)
    rise = [2.0, 2.5, 3.2, 4.0, 5.0, 6.0]
    assert feed(det, range(100, 106), make=lambda s: healthy(s, scale=rise[s - 100]), loss=loss) == []
    feed(det, range(106, 150), loss=loss)
    # the same rise, on to norms the run never had: an explosion
    loss = lambda s: 1.0 + 0.5 * max(0, s - 149)  # noqa: E731
    rise = [2.0, 2.5, 3.2, 4.0, 5.0, 6.0, 9.0, 14.0, 20.0, 30.0]
    alerts = feed(det, range(150, 160), make=lambda s: healthy(s, scale=rise[s - 150]), loss=loss)
    assert [a.kind for a in alerts] == ["exploding"]


def test_spikes_that_slow_down_and_turn_are_a_catapult_and_spikes_that_compound_are_an_explosion():
    """SGD at the peak of a warm-up: the norm jumps, its growth dies out, it turns; the loss follows a step behind."""
    loss = lambda s: 3.0 if 51 <= s < 55 else 1.0  # noqa: E731
    catapult = GradientDetector()
    feed(catapult, range(50), loss=loss)
    norms = {50: 4.0, 51: 10.0, 52: 12.0, 53: 9.0, 54: 5.0}  # rises of 0.4, then 0.08 decades; then down
    assert feed(catapult, range(50, 55), make=lambda s: healthy(s, scale=norms[s]), loss=loss) == []
    assert feed(catapult, range(55, 80), loss=loss) == []
    diverging = GradientDetector()
    feed(diverging, range(50), loss=loss)
    norms = {50: 4.0, 51: 10.0, 52: 25.0, 53: 60.0, 54: 150.0}  # 0.4 decades at every step
    alerts = feed(diverging, range(50, 55), make=lambda s: healthy(s, scale=norms[s]), loss=loss)
    assert [(a.kind, a.step, a.extra["rule"]) for a in alerts] == [("exploding", 52, "spikes")]


def test_a_norm_grown_tenfold_from_the_start_with_the_loss_on_two_steps_is_an_explosion_in_the_warm_up():
    """4x per step: no step is ten times the largest before it. A bad batch (one step), or a norm taking off while the
    loss does not grow, is not an explosion."""
    growing = {0: 1.0, 1: 4.0, 2: 16.0, 3: 64.0, 4: 256.0}
    blowing_up = GradientDetector()
    alerts = feed(blowing_up, range(5), make=lambda s: healthy(0, scale=growing[s]), loss=lambda s: 2.0 * growing[s])
    assert [(a.kind, a.step, a.extra["rule"]) for a in alerts] == [("exploding", 3, "jump")]
    assert "the training loss 64x its first value (2 to 128): both grew from the start" in alerts[0].message
    taking_off = GradientDetector()
    assert feed(taking_off, range(5), make=lambda s: healthy(0, scale=growing[s]), loss=lambda s: 2.0) == []
    bad_batch = GradientDetector()
    one = {0: 1.0, 1: 4.0, 2: 16.0, 3: 2.0, 4: 20.0, 5: 2.0}
    loss = lambda s: 2.0 * one[s]  # noqa: E731
    assert feed(bad_batch, range(6), make=lambda s: healthy(0, scale=one[s]), loss=loss) == []


def test_a_run_that_gives_back_what_it_learned_while_its_norm_falls_is_a_stall_again():
    """Learned from 2.3 to 1.0, then back to 2.2 with its first layer 4 decades below the last: a collapse. The same
    loss with a growing norm is a divergence, not a vanishing run."""
    learning = lambda s: 2.3 - 1.3 * min(s, 60) / 60  # noqa: E731
    back = lambda s: learning(s) if s < 80 else 2.2  # noqa: E731
    collapsed = GradientDetector()
    feed(collapsed, range(80), make=lambda s: stats(1.0, 1.0, 1.0), loss=back)
    alerts = feed(collapsed, range(80, 140), make=lambda s: stats(2e-5, 0.01, 0.3), loss=back)
    assert [(a.kind, a.extra["rule"]) for a in alerts] == [("vanishing", "stall")]
    assert "given back most of what it learned" in alerts[0].message
    diverging = GradientDetector()
    feed(diverging, range(80), make=lambda s: stats(1.0, 1.0, 1.0), loss=back)
    alerts = feed(diverging, range(80, 140), make=lambda s: stats(1e-4, 1.0, 3.0), loss=back)
    assert [a for a in alerts if a.kind == "vanishing"] == []


def test_bad_batches_in_a_row_raise_the_ceiling_by_a_decade_at_most():
    det = GradientDetector(DetectionConfig(exploding_patience=2))  # two spikes: the ceiling is the point
    feed(det, range(50))
    assert feed(det, range(50, 52), make=lambda s: healthy(s, scale=1000.0 if s == 50 else 300.0)) == []
    feed(det, range(52, 100))
    alerts = feed(det, range(100, 102), make=lambda s: healthy(s, scale=50.0 if s == 100 else 100.0))
    assert [(a.kind, a.step) for a in alerts] == [("exploding", 101)]


def test_absolute_threshold_spikes_are_an_explosion_whatever_the_ceiling():
    det = GradientDetector(DetectionConfig(exploding_patience=2, exploding_threshold=1.0))
    feed(det, range(100), make=converging)
    alerts = feed(det, range(100, 102), make=lambda s: healthy(s, scale=3.0))
    assert [(a.kind, a.step) for a in alerts] == [("exploding", 101)]


def noisy(step: int) -> StepStats:
    """A noisy SGD run: the total norm wanders by about 0.35 decades (one spike needs ~25x the mean)."""
    return stats(*(10 ** (0.5 * math.sin(2.3 * step + i)) for i in range(3)))


def rising(step: int) -> StepStats:
    return stats(*(1.5 ** (step - 39) for _ in range(3)))


def test_steady_growth_with_rising_loss_is_an_explosion_before_any_spike():
    det = GradientDetector()
    feed(det, range(40), make=noisy, loss=lambda s: 1.0)
    alerts = feed(det, range(40, 48), make=rising, loss=lambda s: 1.2 ** (s - 39))
    assert [a.kind for a in alerts] == ["exploding"]
    assert "has risen for 5 consecutive steps" in alerts[0].message
    assert "while the loss rose from 1.2 to 3.583 (medians 5 to 10 steps back and of the last 3)" in alerts[0].message
    assert det.state_dict()["counts"]["spikes"] == 0  # no single step was extreme yet


def test_a_loss_of_exactly_zero_has_not_climbed_whatever_the_norm_does():
    """A model fitting its data exactly (a source stuck on one symbol): its loss is 0.0 and its gradient float noise,
    until a change in the model lifts the norm by decades. 0 >= 2 x 0 is no climb (it was one, and the message's
    ratio to the first losses, all 0, divided by zero inside the training step)."""
    det = GradientDetector()
    assert feed(det, range(40), make=lambda s: healthy(s, scale=1e-16), loss=lambda s: 0.0) == []
    assert feed(det, range(40, 120), make=lambda s: healthy(s, scale=1e-16 * 1.6 ** (s - 39)), loss=lambda s: 0.0) == []


def test_steady_growth_with_falling_loss_is_training_taking_off():
    det = GradientDetector()
    feed(det, range(40), make=noisy, loss=lambda s: 1.0)
    assert feed(det, range(40, 48), make=rising, loss=lambda s: 0.9 ** (s - 39)) == []


def test_steady_growth_while_the_loss_has_not_left_its_start_is_a_take_off():
    """A net leaving a small initialisation: within its first 50 losses, its norm rises step after step while its
    noisy loss stays within its first losses (the median of the last 3 up 34% on the 5 before 5 steps back: a batch or
    two). The same rise in a run whose loss had halved, one that lifts the loss past its first losses, or one later
    in the run (a fine-tune that never halved its loss, climbing back toward where it started) is a divergence."""

    def start(s: int) -> float:
        return (1.0, 1.6, 0.8, 1.2, 1.1)[s % 5]  # the first losses: the highest 1.6

    def growth(loss, at: int = 40) -> list:
        det = GradientDetector()
        feed(det, range(at), make=noisy, loss=loss)
        rise = lambda s: rising(s - at + 40)  # noqa: E731
        return [(a.kind, a.extra["rule"]) for a in feed(det, range(at, at + 8), make=rise, loss=loss)]

    assert growth(lambda s: start(s) if s < 40 else 1.06 ** (s - 39)) == []  # 1.59 at step 47
    learnt = growth(lambda s: start(s) if s < 10 else 0.4 * start(s) if s < 40 else 0.4 * 1.06 ** (s - 39))
    assert learnt == [("exploding", "growth")]
    assert growth(lambda s: start(s) if s < 40 else 1.2 ** (s - 37)) == [("exploding", "growth")]  # past 1.6
    later = growth(lambda s: start(s) if s < 60 else 1.06 ** (s - 59), at=60)
    assert later == [("exploding", "growth")]


def _hump(top: float) -> list:
    """A loss term far from its equilibrium at the start: from step 3 the norm rises 1.13-1.2x a step to ``top`` times
    its first by step 21 and the loss (0.2) 8x with it, then both come back over the next 15 steps; 60 steps."""

    def level(s: int) -> float:  # 0 -> 1 -> 0: up over steps 3-21, down over 21-36
        return 0.0 if s < 3 else (s - 3) / 18 if s <= 21 else max(0.0, 1 - (s - 21) / 15)

    det = GradientDetector()
    make = lambda s: healthy(s, scale=top ** level(s))  # noqa: E731
    return [(a.kind, a.extra["rule"]) for a in feed(det, range(60), make=make, loss=lambda s: 0.2 * 8 ** level(s))]


def test_a_climb_within_the_first_norms_decade_in_the_first_steps_is_a_take_off():
    """A VQ-VAE whose codebook starts at U(-1/K, 1/K), far below its encoder's outputs: over its first 20 steps the
    codebook and commitment terms lift its loss 8x and its norm 9x, then the codebook catches up and both come back.
    Within its first 50 losses, before it has learnt, a climb that keeps the norm within 10x its first is no
    divergence yet; the same climb taking the norm 30x its first is one."""
    assert _hump(9.0) == []
    assert _hump(30.0) == [("exploding", "growth")]


def test_steady_growth_judges_the_loss_by_medians_not_by_single_batches():
    """Dropout and small batches: one mini-batch loss against the next is a coin flip; the median does not rise."""
    det = GradientDetector()
    feed(det, range(40), make=noisy, loss=lambda s: 1.0)
    coin_flip = feed(det, range(40, 48), make=rising, loss=lambda s: (1.1, 0.9, 1.0)[s % 3])  # 47 "rose" from 44
    assert coin_flip == []


def test_nonfinite_alert_once_per_episode_naming_layers():
    det = GradientDetector()
    feed(det, range(20))
    bad = feed(det, range(20, 23), make=lambda s: stats(0.5, math.nan, 0.8))
    assert [(a.kind, a.step, a.layers, a.extra) for a in bad] == [("nonfinite", 20, ("l1",), {"rule": "nonfinite"})]
    assert feed(det, range(23, 25)) == []
    again = feed(det, range(25, 26), make=lambda s: stats(math.inf, 1.0, 0.8))
    assert [(a.kind, a.layers) for a in again] == [("nonfinite", ("l0",))]


def test_nonfinite_steps_stay_out_of_the_history():
    det = GradientDetector()
    feed(det, range(30))
    before = {k: det.state_dict()[k] for k in ("steps", "mean", "var")}
    feed(det, range(30, 35), make=lambda s: stats(math.nan, 1.0, 1.0))
    assert {k: det.state_dict()[k] for k in ("steps", "mean", "var")} == before


def test_vanishing_after_patience_names_the_layers():
    det = GradientDetector(DetectionConfig(vanishing_patience=10))
    alerts = feed(det, range(30), make=lambda s: stats(1e-9, 1e-3, 1.0))
    assert [(a.kind, a.step, a.layers, a.extra) for a in alerts] == [("vanishing", 9, ("l0",), {"rule": "layers"})]
    assert "below 1e-05x the largest layer's (l2)" in alerts[0].message


def test_vanishing_ignores_exempt_layers_and_recovers():
    det = GradientDetector(DetectionConfig(vanishing_patience=5), exempt_layers={"l0"})
    assert feed(det, range(20), make=lambda s: stats(1e-9, 0.5, 1.0)) == []
    watched = GradientDetector(DetectionConfig(vanishing_patience=5))
    assert len(feed(watched, range(10), make=lambda s: stats(1e-9, 0.5, 1.0))) == 1
    assert watched.update(10, stats(0.5, 0.5, 1.0)).vanishing_layers == ()
    assert len(feed(watched, range(11, 20), make=lambda s: stats(1e-9, 0.5, 1.0))) == 1  # a new episode


def test_vanishing_is_alerted_once_per_episode_while_layers_come_and_go():
    det = GradientDetector(DetectionConfig(vanishing_patience=10))

    def make(step: int) -> StepStats:  # l0 vanishes throughout, l1 hovers around the ratio
        return stats(1e-9, 2e-5 if step % 7 == 0 else 5e-6, 1.0)

    alerts = feed(det, range(200), make=make)
    assert [(a.kind, a.step, a.layers) for a in alerts] == [("vanishing", 9, ("l0",))]
    assert det.update(200, stats(1e-9, 5e-6, 1.0)).vanishing_layers[0] == "l0"
    assert feed(det, range(201, 203), make=lambda s: stats(1.0, 1.0, 1.0)) == []  # the episode ends
    again = feed(det, range(203, 220), make=lambda s: stats(1.0, 1e-9, 1.0))
    assert [(a.kind, a.step, a.layers) for a in again] == [("vanishing", 212, ("l1",))]


def test_converged_model_is_not_vanishing():
    det = GradientDetector(DetectionConfig(vanishing_patience=10))
    alerts = feed(
        det, range(300), make=lambda s: healthy(s, scale=0.97**s), loss=lambda s: 0.95**s
    )  # everything shrinks together, loss included
    assert alerts == []


def test_collapse_with_a_stuck_loss_is_vanishing():
    det = GradientDetector(DetectionConfig(vanishing_patience=10))
    alerts = feed(det, range(100), make=lambda s: healthy(s, scale=1.0 if s < 20 else 1e-6), loss=lambda s: 1.3)
    assert [(a.kind, a.extra) for a in alerts] == [("vanishing", {"rule": "collapse"})]
    assert "fell to" in alerts[0].message
    dead = GradientDetector(DetectionConfig(vanishing_patience=10))
    alerts = feed(dead, range(30), make=lambda s: stats(0.0, 0.0, 0.0))
    assert [a.kind for a in alerts] == ["vanishing"]
    assert "every gradient is exactly zero" in alerts[0].message
    assert alerts[0].extra == {"rule": "collapse"}
    assert "a softmax or sigmoid whose probabilities reached exactly 1" in alerts[0].message  # not only dead ReLUs


def killing(step: int, intermittent: bool = False) -> StepStats:
    """30 healthy steps, one at 50x, then the first two layers exactly zero for good; the head still learns.

    ``intermittent``: the first layer is exactly zero on every other step before (a branch used on some batches).
    """
    if step < 30:
        first = 0.0 if intermittent and step % 2 else 0.5
        return stats(first, 1.0 + 0.1 * math.sin(1.7 * step), 0.8)
    if step == 30:
        return stats(25.0, 50.0, 40.0)
    return stats(0.0, 0.0, 0.3 + 0.01 * math.sin(step))


def test_a_blow_up_that_leaves_layers_exactly_zero_is_an_explosion_naming_them():
    """One step at 50x, the next ones small (a lone spike: no run of spikes), the first layers exactly zero since,
    the loss up from 1.0 to 2.3: alerted 5 steps after, the layers it killed named; the same from any checkpoint."""
    loss = lambda s: 1.0 if s < 30 else 2.3  # noqa: E731
    alerts = feed(GradientDetector(), range(60), make=killing, loss=loss)
    assert [(a.kind, a.step, a.layers, a.extra["rule"]) for a in alerts] == [("exploding", 35, ("l0", "l1"), "kill")]
    assert "the update of step 30" in alerts[0].message
    assert "exactly zero on each of the 5 steps since: it killed their units" in alerts[0].message
    assert "Killed: l0, l1." in alerts[0].message
    assert "LeakyReLU" in alerts[0].message
    for split in (31, 33, 35):
        first = GradientDetector()
        feed(first, range(split), make=killing, loss=loss)
        second = GradientDetector()
        second.load_state_dict(json.loads(json.dumps(first.state_dict())))
        assert [(a.step, a.message) for a in feed(second, range(split, 60), make=killing, loss=loss)] == [
            (a.step, a.message) for a in alerts if a.step >= split
        ]


def test_zeros_after_a_blow_up_while_the_loss_falls_or_in_an_intermittent_layer_are_no_kill():
    """A loss term switched off at a blow-up (its head exactly zero from then on) in a run whose loss goes on falling;
    a branch used on every other step: neither is a kill (nor dead, within 60 steps)."""
    falling = lambda s: 1.0 if s < 30 else 0.5  # noqa: E731
    assert feed(GradientDetector(), range(60), make=killing, loss=falling) == []
    up = lambda s: 1.0 if s < 30 else 2.3  # noqa: E731
    alerts = feed(GradientDetector(), range(60), make=lambda s: killing(s, intermittent=True), loss=up)
    assert [(a.layers, a.extra["rule"]) for a in alerts] == [(("l1",), "kill")]  # the layer alive on every step


def eventful(step: int) -> StepStats:
    """Spikes, an explosion, a NaN step, a steady rise and a vanishing first layer, all in 160 steps."""
    scale = 1000.0 if step in (40, 41, 70) else 1.5 ** (step - 119) if 120 <= step < 130 else 1.0
    if step == 90:
        return stats(math.nan, 1.0, 1.0)
    wobble = 1.0 + 0.1 * math.sin(1.7 * step)
    return stats((1e-9 if step >= 100 else 0.5) * scale, scale * wobble, 0.8 * scale / wobble)


def eventful_loss(step: int) -> float:
    return 1.0 + (1.2 ** (step - 119) if step >= 120 else 0.0)


@pytest.mark.parametrize("split", [5, 25, 41, 60, 95, 125, 150])
def test_state_dict_round_trip_continues_exactly(split):
    cfg = DetectionConfig(vanishing_patience=10)

    def run(det, steps):
        out = []
        for s in steps:
            det.observe_loss(eventful_loss(s))
            v = det.update(s, eventful(s))
            out.append((v.spike, v.nonfinite, v.vanishing_layers, [(a.kind, a.step, a.message) for a in v.alerts]))
        return out

    whole = GradientDetector(cfg)
    expected = run(whole, range(160))
    assert {a[0] for v in expected for a in v[3]} == {"exploding", "nonfinite", "vanishing"}
    first = GradientDetector(cfg)
    run(first, range(split))
    state = json.loads(json.dumps(first.state_dict()))  # plain values, as a checkpoint keeps them
    second = GradientDetector(cfg)
    second.load_state_dict(state)
    assert run(second, range(split, 160)) == expected[split:]
    assert second.state_dict() == whole.state_dict()


def test_old_state_with_missing_keys_loads_with_defaults():
    det = GradientDetector()
    det.load_state_dict({"steps": 12, "mean": 0.1})  # written before the ceiling existed
    state = det.state_dict()
    assert (state["steps"], state["mean"]) == (12, 0.1)
    assert state["spike_run"] == 0
    assert state["ceiling"] is None
    assert det.update(12, healthy(12)).alerts == []


def test_state_dict_of_a_fresh_detector_equals_one_loaded_from_nothing():
    fresh = GradientDetector()
    loaded = GradientDetector()
    loaded.load_state_dict({})
    assert loaded.state_dict() == fresh.state_dict()
    assert fresh.state_dict()["counts"] == {"spikes": 0, "nonfinite_steps": 0}
    det = GradientDetector()
    det.load_state_dict({"counts": {"spikes": 3}, "vanishing_episode": ["b", "a"]})  # counts merge with defaults
    assert det.state_dict()["counts"] == {"spikes": 3, "nonfinite_steps": 0}
    assert det.state_dict()["vanishing_episode"] == ["a", "b"]


def test_remedies_fit_the_model():
    rnn = GradientDetector(DetectionConfig(vanishing_patience=2), traits=ModelTraits(vanilla_rnn=True))
    (alert,) = feed(rnn, range(5), make=lambda s: stats(1e-9, 1.0))
    assert "nn.LSTM or nn.GRU" in alert.message
    sig = GradientDetector(DetectionConfig(vanishing_patience=2), traits=ModelTraits(saturating_activations=True))
    (alert,) = feed(sig, range(5), make=lambda s: stats(1e-9, 1.0))
    assert "ReLU-family" in alert.message
    assert "He (Kaiming)" in alert.message


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"`vanishing_patience` must be >= 1, got 0"):
        DetectionConfig(vanishing_patience=0)
    with pytest.raises(ValueError, match=r"`exploding_growth_steps` must be >= 2, got 1"):
        DetectionConfig(exploding_growth_steps=1)
    with pytest.raises(ValueError, match=r"`exploding_ceiling_factor` must be at least 1, got 0.5"):
        DetectionConfig(exploding_ceiling_factor=0.5)
    with pytest.raises(ValueError, match=r"`exploding_ceiling_memory` must be >= 1, got 0"):
        DetectionConfig(exploding_ceiling_memory=0)
    with pytest.raises(ValueError, match=r"`ema_decay` must be in \(0, 1\), got 1.0"):
        DetectionConfig(ema_decay=1.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vanishing_patience": 2.5}, r"`vanishing_patience` must be an int, got float 2.5"),
        ({"warmup_steps": True}, r"`warmup_steps` must be an int, got bool True"),
        ({"exploding_zscore": "4"}, r"`exploding_zscore` must be a number, got str '4'"),
        ({"exploding_threshold": "10"}, r"`exploding_threshold` must be a number, got str '10'"),
        ({"collapse_ratio": None}, r"`collapse_ratio` must be a number, got NoneType None"),
        ({"exploding_jump_factor": [10]}, r"`exploding_jump_factor` must be a number, got list \[10\]"),
    ],
)
def test_config_rejects_wrong_types_with_type_error(kwargs, match):
    # the same rule as GradWatch's own arguments: a wrong type is a TypeError, a wrong value a ValueError
    with pytest.raises(TypeError, match=match):
        DetectionConfig(**kwargs)


def test_blow_up_from_step_0_is_exploding_without_warm_up():
    det = GradientDetector()  # warm-up 10 steps: no spike threshold yet
    norms = (0.25, 23.0, 6.6e3, 1.2e5)
    losses = (2.3, 20.6, 6.3e4, 8.1e5)  # each step's own loss: an overshoot lifts it with the norm
    alerts = []
    for step, (norm, loss) in enumerate(zip(norms, losses)):
        det.observe_loss(loss)
        alerts += det.update(step, stats(norm / 2, norm / 2, norm / 2)).alerts
    assert [(a.kind, a.step, a.extra["rule"]) for a in alerts] == [("exploding", 1, "jump")]
    assert "the largest norm of the run's first steps" in alerts[0].message
    assert "lower the learning rate, by 10x or more" in alerts[0].message


def test_a_fast_healthy_start_is_not_a_jump():
    det = GradientDetector()
    alerts = feed(det, range(10), make=lambda s: healthy(s, scale=3.0**s), loss=lambda s: 2.0 - 0.1 * s)
    assert alerts == []


def adam_divergence(step: int) -> StepStats:
    """Noisy norms (a spike needs ~10x) around 1 for 30 steps, then growing by 15% a step (Adam at a too-high
    learning rate: no single step stands out)."""
    wobble = 10 ** (0.4 * math.sin(2.3 * step))
    scale = wobble * (1.15 ** max(0, step - 30))
    return stats(0.5 * scale, scale, 0.8 * scale)


def adam_loss(step: int) -> float:
    return 4.0 - 0.02 * step if step <= 30 else 3.4 * 1.12 ** (step - 30)


def test_loss_and_norm_climbing_together_are_exploding_before_the_loss_is_10x():
    det = GradientDetector()
    alerts = feed(det, range(80), make=adam_divergence, loss=adam_loss)
    assert [(a.kind, a.extra["rule"]) for a in alerts] == [("exploding", "trend")]
    tenfold = next(s for s in range(31, 80) if adam_loss(s) >= 10 * 3.4)
    assert alerts[0].step < tenfold
    assert "the loss has climbed to" in alerts[0].message
    assert "if the loss rises by design" in alerts[0].message  # a TD loss or a curriculum: how to gate on the rest
    assert "lower the learning rate: a gradient norm and a loss that climb together" in alerts[0].message


def test_a_loss_climbing_while_the_norm_stays_is_exploding_only_far_above_its_start():
    det = GradientDetector()
    flat = lambda s: adam_divergence(min(s, 30))  # noqa: E731
    assert feed(det, range(50), make=flat, loss=adam_loss) == []  # 3x its best, 1.4x its start: not yet
    alerts = feed(det, range(50, 80), make=flat, loss=adam_loss)
    assert [(a.kind, a.extra["rule"]) for a in alerts] == [("exploding", "climb")]
    start = adam_loss(0)  # the highest of the first 10 losses
    first_up = alerts[0].step - 1  # the climb holds two steps in a row
    assert adam_loss(first_up - 4) >= 10 * start  # the lowest of its last 5: 10x the highest first one
    assert adam_loss(first_up - 5) < 10 * start  # a step before, not yet
    assert alerts[0].value >= 10
    assert "the highest of the first 10 (4), with a total norm of" in alerts[0].message


def test_a_loss_with_outlier_batches_is_not_a_climb():
    """Outlier targets in 60% of the batches (a robust loss): such a batch's loss is 30x a clean one's, all run long.

    A median of 5 batches is 30x a median of the first 5 whenever these drew mostly clean batches, and runs of 6
    outlier batches come every few dozen steps; but clean batches keep coming between them, and the first 10 with an
    outlier among them are what a divergence has to leave behind. 20 seeds (one starts with 5 clean batches), 400
    steps each: no alert.
    """
    for seed in range(20):
        rng = random.Random(seed)
        outliers = [rng.random() < 0.6 for _ in range(400)]
        alerts = feed(
            GradientDetector(),
            range(400),
            make=lambda s: stats(0.3, 0.2, 0.1),
            loss=lambda s, outliers=outliers: 9.6 if outliers[s] else 0.3,
        )
        assert alerts == [], seed


def test_a_loss_climbing_from_near_zero_but_below_its_start_is_not_exploding():
    det = GradientDetector()  # fine-tuning noise: 10x a tiny best loss, still far below where training started

    def loss(step: int) -> float:
        return 2.3 if step < 5 else 1e-3 if step < 40 else 1e-2

    def make(step: int) -> StepStats:  # the norm grows 3.5x with the loss
        return stats(*(10 ** (0.4 * math.sin(2.3 * step + i)) * (1.0 if step < 40 else 3.5) for i in range(3)))

    assert feed(det, range(80), make=make, loss=loss) == []


def test_layers_small_next_to_an_exploding_layer_are_not_vanishing():
    det = GradientDetector(DetectionConfig(vanishing_patience=10))

    def make(step: int) -> StepStats:  # l0 keeps its norm while the others grow by orders of magnitude
        scale = adam_divergence(step).grad_norm[1]
        return stats(1e-3, scale * 100.0, scale * 80.0)

    alerts = feed(det, range(120), make=make, loss=adam_loss)
    assert [a.kind for a in alerts] == ["exploding"]


def test_a_tenfold_first_norm_over_a_level_loss_is_a_take_off_not_a_jump():
    """A net leaving a small initialisation: its first gradients are batch noise on tiny weights (0.38, then 3.8)
    while its batch loss moves as batches do (81.5, then 114.6). A tenfold norm is a jump only with the loss at twice
    its first value, or a hundredfold norm, or no loss to tell."""

    def first_alert(norms, losses):
        det = GradientDetector()
        for step, (norm, loss) in enumerate(zip(norms, losses)):
            if loss is not None:
                det.observe_loss(loss)
            alerts = det.update(step, stats(norm, norm, norm)).alerts
            if alerts:
                return alerts[0].step, alerts[0].extra["rule"]
        return None

    assert first_alert((0.38, 3.8, 1.5, 2.0), (81.5, 114.6, 81.7, 80.0)) is None  # a take-off
    assert first_alert((0.38, 37.0, 1.5, 2.0), (81.5, 114.6, 81.7, 80.0)) is None  # 97x
    assert first_alert((0.38, 3.8, 1.5, 2.0), (81.5, 170.0, 81.7, 80.0)) == (1, "jump")  # the loss doubled with it
    assert first_alert((0.38, 50.0, 1.5, 2.0), (81.5, 114.6, 81.7, 80.0)) == (1, "jump")  # orders of magnitude
    assert first_alert((0.38, 3.8, 1.5, 2.0), (None,) * 4) == (1, "jump")  # no loss: the norm alone
    # a loss told on some steps only, or not finite: the step's own is not known, so the norm alone
    assert first_alert((0.38, 3.8, 1.5, 2.0), (81.5, None, None, None)) == (1, "jump")
    assert first_alert((0.38, 3.8, 1.5, 2.0), (81.5, math.inf, 81.7, 80.0)) == (1, "jump")


def test_units_an_explosion_killed_are_its_aftermath_not_a_vanishing_diagnosis():
    det = GradientDetector(DetectionConfig(vanishing_patience=10))
    for step, (norm, loss) in enumerate(zip((0.25, 23.0, 6.6e3), (2.3, 20.6, 6.3e4))):
        det.observe_loss(loss)
        det.update(step, stats(norm, norm, norm))
    # every unit feeding l0 and l1 is dead: their gradients are exactly zero; the loss sits at chance
    after = feed(det, range(3, 100), make=lambda s: stats(0.0, 0.0, 0.9), loss=lambda s: 2.3)
    assert after == []


def test_dead_units_without_an_explosion_are_vanishing_with_fitting_remedies():
    det = GradientDetector(DetectionConfig(vanishing_patience=10))
    alerts = feed(det, range(30), make=lambda s: stats(0.0, 0.0, 0.9), loss=lambda s: 2.3)
    assert [(a.kind, a.step, a.layers) for a in alerts] == [("vanishing", 9, ("l0", "l1"))]
    assert "exactly zero" in alerts[0].message
    assert "LeakyReLU or GELU" in alerts[0].message


def test_remedies_fit_what_was_seen():
    assert remedies("exploding", cause="outlier")[0].startswith("check the inputs and labels")
    assert remedies("exploding", cause="growth")[0].startswith("lower the learning rate")
    assert remedies("exploding", cause="startup")[0].startswith("lower the learning rate, by 10x or more")
    for kind in ("vanishing", "exploding", "nonfinite"):
        for cause in (None, "startup", "growth", "outlier", "dead"):
            assert not any("learning-rate-free" in hint for hint in remedies(kind, ModelTraits(), cause))


def test_new_config_fields_are_validated():
    with pytest.raises(ValueError, match=r"`exploding_jump_factor` must be greater than 1, got 1"):
        DetectionConfig(exploding_jump_factor=1)
    with pytest.raises(ValueError, match=r"`exploding_trend_loss_factor` must be a positive, finite number, got -2"):
        DetectionConfig(exploding_trend_loss_factor=-2)


def test_all_zero_gradients_at_zero_loss_are_a_perfect_fit_not_vanishing():
    det = GradientDetector(DetectionConfig(vanishing_patience=10))  # float32 softmax saturates: loss 0.0, grads 0.0
    alerts = feed(det, range(60), make=lambda s: healthy(s) if s < 15 else stats(0.0, 0.0, 0.0), loss=lambda s: 0.0)
    assert alerts == []


def test_an_exploding_episode_lasts_while_the_loss_stays_up():
    det = GradientDetector()
    for step, (norm, loss) in enumerate(zip((0.25, 23.0, 6.6e3), (2.3, 20.6, 6.3e4))):
        det.observe_loss(loss)
        assert det.update(step, stats(norm, norm, norm)).exploding == (step >= 1)
    verdicts = []
    for step in range(3, 40):  # the norm is back to ordinary, the loss is not
        det.observe_loss(30.0)
        verdicts.append(det.update(step, healthy(step)))
    assert all(v.exploding for v in verdicts)
    assert [a for v in verdicts for a in v.alerts] == []
    for step in range(40, 50):  # recovered
        det.observe_loss(2.0)
        verdict = det.update(step, healthy(step))
    assert not verdict.exploding


# SGD with Nesterov momentum at 40x its learning rate on a digits MLP (seeds 0 and 6 of a real run): the loss and the
# norm blow up from step 1 for ten steps, with a step or two on the way where they fall back
BLOW_UPS = {
    "the best before it is the lowest loss told": (
        (2.317, 7.238, 6.847, 25.17, 2199.0, 22133.0, 1.31e6, 3.3e17, 4.9e14, 9.4e14, 254.0, 13.1, 12.9, 14.0),
        (0.527, 8.861, 11.40, 45.87, 1468.0, 23111.0, 9.7e6, 2.7e12, 9.6e15, 5.4e7, 1906.0, 0.547, 0.535, 0.445),
    ),
    "one quiet step is no recovery": (
        (2.29, 5.216, 3.483, 20.97, 10.29, 5.555, 13406.0, 295.5, 1448.0, 29135.0, 13.09, 9.385, 8.234, 11.17),
        (0.459, 6.359, 4.136, 19.74, 33.98, 29.72, 2590.0, 696.0, 147.6, 238.3, 0.913, 0.505, 0.407, 0.532),
    ),
}


@pytest.mark.parametrize("why", BLOW_UPS)
def test_a_blow_up_from_the_first_steps_is_one_episode(why):
    """Alerted at step 1, then again three to five steps later as a second episode, because the episode ended at
    step 2. In the first run the best loss before it was taken as the median of the run's first losses, the
    blow-up's own among them (4.8, for a first loss of 2.3): the loss at step 2 was within 2x of that. The best before
    an episode in the first steps is the lowest loss told. In the second the loss came back for one step (the median
    of the run's three losses 3.48, within 2x of its first, 2.29; the norm still 9x its first): an episode ends after
    five quiet steps in a row."""
    losses, norms = BLOW_UPS[why]
    det = GradientDetector()
    alerts = []
    for step, (loss, norm) in enumerate(zip(losses, norms)):
        det.observe_loss(loss)
        alerts += det.update(step, stats(norm, norm, norm)).alerts
    assert [(a.kind, a.step) for a in alerts] == [("exploding", 1)]
    det.observe_loss(losses[-1])
    assert det.update(len(losses), stats(0.5, 0.5, 0.5)).exploding  # the loss is still 6x the first: not over


# ---------------------------------------------------------------------------------------- layers that join or leave
def named(norms: dict[str, float]) -> StepStats:
    """A step whose layers are the names given (the set of layers with a gradient changes from step to step)."""
    values = tuple(norms.values())
    return StepStats(
        tuple(norms), values, math.sqrt(sum(v * v for v in values)), (10,) * len(values), (0,) * len(values)
    )


def test_an_unchanged_set_of_layers_is_judged_by_its_total_norm_itself():
    det = GradientDetector()
    feed(det, range(100), make=noisy, loss=lambda s: 1.0)
    assert det.state_dict()["offset"] == 0.0
    assert det.spike_threshold() == pytest.approx(
        10 ** (det.state_dict()["mean"] + 4 * math.sqrt(det.state_dict()["var"]))
    )


def test_layers_that_join_are_no_spike_and_an_explosion_after_they_joined_still_is():
    """A backbone unfrozen at step 60 brings 10x the head's norm: the total norm jumps, nothing is wrong."""
    det = GradientDetector()

    def finetune(step: int) -> StepStats:
        wobble = 1.0 + 0.1 * math.sin(1.7 * step)
        head = {"head": 0.3 * wobble}
        return named({"backbone": 3.0 / wobble, **head} if step >= 60 else head)

    verdicts = [det.update(s, finetune(s)) for s in range(120) if det.observe_loss(2.0 - 0.005 * s) is None]
    assert [a for v in verdicts for a in v.alerts] == []
    assert not verdicts[60].spike
    assert verdicts[60].spike_threshold > finetune(60).total_norm
    assert det.state_dict()["offset"] == pytest.approx(-1.0, abs=0.1)  # the total is 10x the norm it chains
    exploding = feed(det, range(120, 130), make=lambda s: named({"backbone": 3.0 * 10 ** (s - 119), "head": 0.3}),
                     loss=lambda s: 1.4 * 3 ** (s - 119))  # fmt: skip
    assert [(a.kind, a.step) for a in exploding][:1] == [("exploding", 122)]  # third spike; the loss rises too
    assert "total norm 3000 for 3 consecutive steps" in exploding[0].message  # real norms in the message


def test_layers_that_leave_and_come_back_or_branches_used_on_some_steps_are_no_spike():
    det = GradientDetector()

    def changing(step: int) -> StepStats:
        norms = {"trunk": 1.0 + 0.1 * math.sin(step)}
        if step % 3 == 0:
            norms["branch"] = 20.0  # an auxiliary loss on one batch in three
        if not 50 <= step < 100:
            norms["early"] = 5.0  # frozen for 50 steps, then trained again
        return named(norms)

    assert feed(det, range(200), make=changing, loss=lambda s: 1.0) == []
    assert det.state_dict()["counts"]["spikes"] == 0


# ---------------------------------------------------------------------------------------- the loss rises with it
def spiking(step: int) -> StepStats:
    return stats(*(10 ** (0.1 * math.sin(step + i)) * (300.0 if step >= 40 else 1.0) for i in range(3)))


def test_spikes_are_an_explosion_only_while_the_loss_rises():
    plateau = GradientDetector()  # a plateau that breaks: the norm leads, the loss follows down
    assert feed(plateau, range(46), make=spiking, loss=lambda s: 1.38 if s < 40 else 1.38 - 0.05 * (s - 39)) == []
    assert plateau.state_dict()["counts"]["spikes"] >= 2
    diverging = GradientDetector()
    alerts = feed(diverging, range(46), make=spiking, loss=lambda s: 1.38 if s < 40 else 1.38 * 2 ** (s - 39))
    assert [(a.kind, a.step, a.extra["rule"]) for a in alerts] == [("exploding", 41, "spikes")]
    no_loss = GradientDetector()  # a loop that tells no loss: the norm alone
    assert [a.step for a in feed(no_loss, range(46), make=spiking)] == [41]


# ---------------------------------------------------------------------------------------- vanishing with the loss
def deep_stack(step: int) -> StepStats:
    """A 24-layer tanh stack at default init: the first layer's gradient a millionth of the last one's."""
    wobble = 1.0 + 0.2 * math.sin(1.3 * step)
    return stats(1.5e-6 * wobble, 2e-3 / wobble, 0.2 * wobble)


def test_a_loss_that_never_moved_with_layers_decades_apart_is_vanishing_within_tens_of_steps():
    det = GradientDetector()
    alerts = feed(det, range(60), make=deep_stack, loss=lambda s: 2.30 + 0.02 * math.sin(2.1 * s))
    assert [(a.kind, a.step, a.layers, a.extra) for a in alerts] == [("vanishing", 19, ("l0",), {"rule": "stall"})]
    assert "the loss has not come down from where training started" in alerts[0].message
    assert "l0 lies 5.1 decades below the largest layer (l2" in alerts[0].message
    assert feed(det, range(60, 200), make=deep_stack, loss=lambda s: 2.30) == []  # one alert for the episode


def apart(step: int) -> StepStats:
    """Layers 4.7 decades apart (above the per-layer ratio of 1e-5, deep enough for the stall)."""
    return stats(4e-6, 2e-3, 0.2)


def test_a_slowly_learning_or_converged_deep_net_is_not_stalled():
    stuck = GradientDetector()
    assert [a.extra for a in feed(stuck, range(100), make=apart, loss=lambda s: 2.3)] == [{"rule": "stall"}]
    slow = GradientDetector()
    assert feed(slow, range(200), make=apart, loss=lambda s: 2.30 * 0.995**s) == []  # 5% in its first 10 steps
    converged = GradientDetector()  # the loss came down long ago
    assert feed(converged, range(100), make=apart, loss=lambda s: 2.3 if s < 5 else 0.01) == []


def closing_stack(step: int) -> StepStats:
    """A deep stack whose first layer starts 5.1 decades below the last and closes 0.03 decade a step (Adam lifting a
    deep plain ReLU stack out of its gap), its loss at its start all along."""
    return stats(1.5e-6 * 10 ** (0.03 * step), 2e-3, 0.2)


def test_a_gap_that_closes_is_no_stall_and_under_adam_the_stall_waits_to_know():
    flat = lambda s: 2.30 + 0.02 * math.sin(2.1 * s)  # noqa: E731
    sgd = GradientDetector(traits=ModelTraits(optimizer="SGD"))
    assert [(a.step, a.extra) for a in feed(sgd, range(60), make=deep_stack, loss=flat)] == [(19, {"rule": "stall"})]
    adam = GradientDetector(traits=ModelTraits(optimizer="Adam"))  # the same stuck stack: known at step 49
    assert [(a.step, a.extra) for a in feed(adam, range(60), make=deep_stack, loss=flat)] == [(49, {"rule": "stall"})]
    lifted = GradientDetector(traits=ModelTraits(optimizer="AdamW"))  # 1.5 decades closed by step 49: no alert
    assert feed(lifted, range(120), make=closing_stack, loss=flat) == []


def test_under_adam_a_layer_small_by_the_ratio_is_vanishing_once_its_gap_is_known_not_to_close():
    """The per-layer ratio counts from the first step; under Adam the alert needs the gap known (step 49) and not
    closing."""
    far = lambda s: stats(2e-8, 0.2)  # noqa: E731  (a head 7 decades above the layer before it; a loss that falls)
    falling = lambda s: 2.3 * 0.99**s  # noqa: E731
    adam = GradientDetector(traits=ModelTraits(optimizer="Adam"))
    alerts = feed(adam, range(100), make=far, loss=falling)
    assert [(a.step, a.layers, a.extra) for a in alerts] == [(49, ("l0",), {"rule": "layers"})]
    lifting = lambda s: stats(2e-8 * 10 ** (0.02 * s), 0.2)  # noqa: E731
    assert feed(GradientDetector(traits=ModelTraits(optimizer="Adam")), range(100), make=lifting, loss=falling) == []
    assert [a.step for a in feed(GradientDetector(), range(100), make=lifting, loss=falling)] == [49]  # not Adam


@pytest.mark.parametrize(
    ("name", "own", "scale_free"),
    [
        ("Adam", True, False), ("AdamW8bit", True, False), ("PagedAdamW", True, False), ("SparseAdam", True, False),
        ("FusedAdam", True, False), ("Adafactor", True, False), ("RMSprop", True, False), ("Adagrad", True, False),
        ("Lamb", True, False), ("LARS", True, False), ("NvNovoGrad", True, False), ("MADGRAD", True, False),
        ("AdEMAMix", True, False), ("ScheduleFreeAdamW", True, False), ("Lion", True, True),
        ("PagedLion8bit", True, True), ("FusedLion", True, True), ("Muon", True, True), ("Rprop", True, True),
        ("SGD", False, False), ("ASGD", False, False), ("LBFGS", False, False), ("FusedSGD", False, False),
        ("SGDScheduleFree", False, False), ("", False, False),
    ],
)  # fmt: skip
def test_the_optimizers_that_size_each_step_by_their_own_gradients_are_told_by_class_name(name, own, scale_free):
    traits = ModelTraits(optimizer=name)
    assert (traits.own_step_sizes, traits.scale_free_steps) == (own, scale_free)


def test_an_optimizer_that_steps_another_is_named_by_the_one_it_steps():
    import torch

    from lightning_gradwatch.engine.environment import optimizer_class_name

    class Lookahead(torch.optim.Optimizer):  # as timm's: the base optimizer sizes the steps
        def __init__(self, base: torch.optim.Optimizer) -> None:
            self._base_optimizer, self.param_groups, self.state, self.defaults = base, base.param_groups, {}, {}

    params = [torch.nn.Parameter(torch.zeros(2))]
    assert optimizer_class_name(Lookahead(torch.optim.RAdam(params))) == "RAdam"
    assert optimizer_class_name(torch.optim.SGD(params, lr=0.1)) == "SGD"


def test_under_adam_the_floor_counts_as_under_any_optimizer_and_the_gap_resumes_from_a_checkpoint():
    rising = lambda s: stats(2e-8 * 10 ** (0.02 * s), 0.2)  # noqa: E731  (a gap that closes: the ratio waits)
    falling = lambda s: 2.3 * 0.99**s  # noqa: E731
    floored = GradientDetector(DetectionConfig(vanishing_floor=1e-6), traits=ModelTraits(optimizer="Adam"))
    alerts = feed(floored, range(60), make=rising, loss=falling)
    assert [(a.step, a.extra) for a in alerts] == [(49, {"rule": "layers"})]
    stuck = lambda s: stats(1.5e-6, 2e-3, 0.2)  # noqa: E731
    flat = lambda s: 2.30 + 0.02 * math.sin(2.1 * s)  # noqa: E731
    whole = GradientDetector(traits=ModelTraits(optimizer="Adam"))
    assert [a.step for a in feed(whole, range(80), make=stuck, loss=flat)] == [49]
    first = GradientDetector(traits=ModelTraits(optimizer="Adam"))
    assert feed(first, range(30), make=stuck, loss=flat) == []
    saved = json.loads(json.dumps(first.state_dict()))
    assert len(saved["gaps"]) == 30
    resumed = GradientDetector(traits=ModelTraits(optimizer="Adam"))
    resumed.load_state_dict(saved)
    assert [a.step for a in feed(resumed, range(30, 80), make=stuck, loss=flat)] == [49]


# ---------------------------------------------------------------------------------------- dead units
def test_a_branch_used_once_in_70_steps_with_zeroed_gradients_is_not_dead():
    """``zero_grad(set_to_none=False)``: between its uses the branch's gradient is exactly zero, not absent."""
    det = GradientDetector()
    alerts = feed(
        det,
        range(300),
        make=lambda s: stats(0.3 if s % 70 == 0 else 0.0, 1.0 + 0.1 * math.sin(s), 0.8),
        loss=lambda s: 1.0 * 0.99**s if s < 100 else 0.366,  # learning, then converged
    )
    assert alerts == []


def test_zeros_that_outlast_any_the_layer_came_back_from_while_the_loss_is_stuck_are_dead():
    det = GradientDetector(DetectionConfig(vanishing_patience=20))

    def dying(step: int) -> StepStats:  # l0 flickers off for 5 steps at 30, then dies at 40
        return stats(0.0 if 30 <= step < 35 or step >= 40 else 0.5, 1.0, 0.8)

    alerts = feed(det, range(100), make=dying, loss=lambda s: 2.3)
    assert [(a.kind, a.step, a.layers) for a in alerts] == [("vanishing", 59, ("l0",))]
    assert "exactly zero for 20 or more consecutive steps, while the loss did not improve" in alerts[0].message


# ---------------------------------------------------------------------------------------- wording
def test_a_jump_is_said_to_be_of_orders_of_magnitude_only_from_100x():
    for factor, orders in ((11.7, False), (413.0, True)):
        det = GradientDetector()
        det.update(0, stats(0.25, 0.25, 0.25))
        (alert,) = det.update(1, stats(*(0.25 * factor,) * 3)).alerts
        assert ("orders of magnitude within the first steps" in alert.message) == orders
        assert f"is {factor:.3g}x the largest norm of the run's first steps" in alert.message


def _shock(scales: dict[int, float], losses: dict[int, float], end: int) -> list:
    """50 ordinary steps, the loss learnt from 2.3 (chance for 10 classes) to 0.2, then the given norm scales and
    losses (ordinary ones in between)."""
    det = GradientDetector()
    feed(det, range(50), loss=lambda s: max(0.2, 2.3 - 0.07 * s) + 0.01 * math.sin(s))
    return feed(
        det, range(50, end), make=lambda s: healthy(s, scale=scales.get(s, 1.0)), loss=lambda s: losses.get(s, 0.2)
    )


def _creeping(step: int) -> float:
    """A TD loss: down from 0.045 to 0.013 in 30 steps, then up 0.6% a step as the targets grow, batches +-30%."""
    level = 0.045 - 0.001 * step if step < 32 else 0.013 * 1.006 ** (step - 32)
    return level * (1.0 + 0.3 * math.sin(2.3 * step))


def test_a_loss_that_creeps_up_over_hundreds_of_steps_is_no_trend():
    """The trend climbs from the loss's lowest level of the last 75-100 steps: a loss 17x its best after 470 steps,
    the norm 10x with it, never 3x in 100 steps, is a loss whose scale grows (a TD loss), not a divergence."""
    alerts = feed(
        GradientDetector(), range(500), make=lambda s: healthy(s, scale=1.005 ** max(0, s - 32)), loss=_creeping
    )
    assert alerts == []


def _below_zero(climb_to: float):
    """A loss that goes below zero (a Gaussian NLL, a critic's): from -1 down to -70 over 100 steps, then back up to
    ``climb_to`` over 40 steps while the norm steps up 5x at step 120."""

    def loss(s: int) -> float:
        wobble = 0.5 * math.sin(2.3 * s)
        if s < 100:
            return -1.0 - 0.7 * s + wobble
        return -70.3 + min(1.0, (s - 100) / 40) * (climb_to + 70.3) + wobble

    return feed(GradientDetector(), range(220), make=lambda s: healthy(s, 1.0 if s < 120 else 5.0), loss=loss)


def test_a_loss_below_zero_climbs_by_the_way_it_came_down_not_by_factors():
    """A factor of a loss at or below zero says nothing (any loss above -70 is "3x" -70): the trend measures such a
    climb by the way the run had come down, and no message prints "inf"."""
    assert _below_zero(20.0) == []  # back above its start, by less than twice the 69 it came down
    diverged = _below_zero(200.0)
    assert [a.kind for a in diverged] == ["exploding"]
    assert all("inf" not in a.message for a in diverged)


def test_a_late_divergence_climbs_from_where_the_run_just_was():
    """A run converged for 300 steps that then diverges is alerted as soon after it begins as one diverging at step 30
    (the lowest level of the last 100 steps is the converged one)."""
    early = feed(GradientDetector(), range(80), make=adam_divergence, loss=adam_loss)
    late = feed(
        GradientDetector(),
        range(350),
        make=lambda s: adam_divergence(s - 270) if s >= 270 else healthy(s),
        loss=lambda s: adam_loss(s - 270) if s >= 270 else max(3.4, 4.0 - 0.02 * s),
    )
    assert [(a.kind, a.extra["rule"]) for a in late] == [("exploding", "trend")]
    assert late[0].step - 270 == early[0].step
    assert "its lowest level of the last 75-100 steps" in late[0].message
    # ... which, within the first 75 steps, is the lowest so far: the message says so
    assert [a.extra["rule"] for a in early] == ["trend"]
    assert "its lowest level so far" in early[0].message


def test_a_shock_the_run_learns_from_is_no_explosion():
    """New data (a task switched, labels renamed): loss and norm jump at once and stay up for a while, the norm
    flat, the loss coming down; a divergence's norm compounds, or its loss does not come down."""
    flat = dict.fromkeys(range(50, 62), 6.0)
    falling = {s: 8.0 - 0.4 * (s - 50) for s in range(50, 62)}
    assert _shock(flat, falling, 70) == []
    # the same plateau of spikes whose loss stays up: an explosion, once judged on its own losses (a trend of 6)
    stuck = {s: 8.0 + 0.3 * math.sin(3 * s) for s in range(50, 62)}
    assert [(a.kind, a.step) for a in _shock(flat, stuck, 70)] == [("exploding", 57)]
    # a blow-up far past where training started (10x its highest first loss) is no shock new data makes: at once
    blown = {s: 300.0 - 20.0 * (s - 50) for s in range(50, 62)}
    assert [(a.kind, a.step) for a in _shock(flat, blown, 70)] == [("exploding", 52)]
    # a bad batch's spike that falls back to a level from which the norm compounds again: at its third spike
    thrown = {50: 700.0, 51: 20.0, 52: 34.0, 53: 35.0, 54: 39.0}
    losses = {50: 26.0, 51: 4.9, 52: 10.0, 53: 10.9, 54: 11.8}
    assert [(a.kind, a.step) for a in _shock(thrown, losses, 60)] == [("exploding", 52)]


def test_where_new_data_put_the_loss_is_its_own_batch_unless_its_update_threw_the_run_off():
    """Progressive resizing (8x8 images, then 16x16): the first batch at the new size lifts the loss 25x and the norm
    25x, and batch by batch both swing (5.2, 2.1, 4.8) while the run learns the new size. Where the new data put the
    loss is that first batch's loss: the next, lower one is a draw of the new level, not where the run fell back to,
    and a later batch below the first has not climbed. A batch whose update was orders of magnitude beyond the run's
    norms (a corrupted batch: 700x) throws the run off: where the run is then is the next batch's loss, and the same
    losses climb from it."""
    norms = {50: 25.0, 51: 8.4, 52: 28.0, 53: 11.0, 54: 7.0, 55: 4.1, 56: 8.0, 57: 3.8}
    losses = {50: 5.2, 51: 2.1, 52: 4.8, 53: 3.4, 54: 2.5, 55: 2.1, 56: 2.4, 57: 2.0}
    losses.update({s: 2.0 - 0.05 * (s - 57) for s in range(58, 70)})
    assert _shock(norms, losses, 70) == []
    thrown = {**norms, 50: 700.0}
    assert [(a.kind, a.step) for a in _shock(thrown, losses, 70)] == [("exploding", 52)]


def _warm_started(rates, learnt: bool = True, state_at: int | None = None, curve=None) -> tuple[list, list]:
    """A fit from a trained model (losses near 0.03 from the first step, norms about 1), meeting new data at step 60:
    the loss 200x at once, the norm 6x, then learnt down 3% a step (``learnt``) or stuck. ``rates(step)``: the
    learning rates told each step (``None``: not known). Alerts ``(kind, step, rule)`` and notices ``(step, text)``;
    ``state_at``: the detector is rebuilt from its checkpoint (through JSON) after that step."""
    det, alerts, notices = GradientDetector(), [], []
    for step in range(160):
        if step == state_at:
            saved = json.loads(json.dumps(det.state_dict()))
            det = GradientDetector()
            det.load_state_dict(saved)
        new = step >= 60
        down = curve(step - 60) if curve is not None else 0.97 ** (step - 60) if learnt else 1.0
        loss = (6.0 * down if new else 0.03) * (1.0 + 0.1 * math.sin(2.3 * step))
        det.observe_loss(loss)
        det.observe_rates(rates(step))
        verdict = det.update(step, healthy(step, scale=6.0 if new else 1.0))
        alerts += [(a.kind, a.step, a.extra["rule"]) for a in verdict.alerts]
        notices += [(step, verdict.notice)] if verdict.notice else []
    return alerts, notices


def test_a_loss_that_jumps_at_once_under_steady_learning_rates_and_is_learnt_is_new_data():
    """A warm-started model meeting new classes: its loss far past the fit's first losses (200x), so every rule that
    compares with where training started alerted it. Under learning rates that were not raised, nothing the optimizer
    did can lift the loss that far in one ordinary step: new data, said once when every loss of 5 steps stayed up,
    and the run judged against the new data's loss from the jump on."""
    alerts, notices = _warm_started(lambda s: (1e-3, 1e-4))
    assert alerts == []
    assert [step for step, _ in notices] == [65]
    assert notices[0][1].startswith("New data at step 60: the training loss jumped")
    # the same, rebuilt from checkpoints taken while it is being confirmed and while it is being learnt
    assert _warm_started(lambda s: (1e-3, 1e-4), state_at=62) == (alerts, notices)
    assert _warm_started(lambda s: (1e-3, 1e-4), state_at=80) == (alerts, notices)
    # learning rates not known, or one group's raised 100x at the step before the jump: judged as before
    assert [a[:2] for a in _warm_started(lambda s: None)[0]][:1] == [("exploding", 63)]
    raised = _warm_started(lambda s: (1e-3, 1e-4 * (100.0 if s >= 59 else 1.0)))
    assert raised[0][:1] == _warm_started(lambda s: None)[0][:1]
    assert raised[1] == []
    # a loss that stays up is no new data: once 50 steps have not brought it below half its new start, it is
    # judged against the fit's first losses again (the trend: 200x its lowest level, the norm 6x)
    # learnt at any step within the 50: slowly (at step 106), or down to 0.35x and back up to settle at 0.55x
    assert _warm_started(lambda s: (1e-3, 1e-4), curve=lambda k: 0.985**k)[0] == []
    assert _warm_started(lambda s: (1e-3, 1e-4), curve=lambda k: max(0.97**k, 0.35 if k < 40 else 0.55))[0] == []
    stuck_alerts, stuck_notices = _warm_started(lambda s: (1e-3, 1e-4), learnt=False)
    assert [step for step, _ in stuck_notices] == [65]
    assert stuck_alerts[:1] == [("exploding", 110, "trend")]


def test_a_negative_loss_rises_against_the_progress_the_run_made():
    """A Gaussian NLL with a learnt variance goes below zero: -0.26 to -0.25 is no rise (x1.25 of a negative number
    would say so); a positive loss keeps its relative margin."""
    track = LossTrack()
    for loss in [1.5, 1.2, 0.9, 0.5, 0.2, -0.1, -0.2, -0.26, -0.27, -0.25, -0.26]:
        track.observe_loss(loss)
        track.observe_norm(0.0)
    for loss in [-0.25, -0.2, -0.18]:
        track.observe_loss(loss)
    assert track.rising(0.25) is False
    positive = LossTrack()
    for loss in [2.3, 1.0, 0.5, 0.3] + [0.2] * 6 + [0.3, 0.3, 0.3]:
        positive.observe_loss(loss)
        positive.observe_norm(0.0)
    assert positive.rising(0.25) is True


def test_without_a_loss_a_run_of_spikes_is_judged_by_the_norm_alone_as_before():
    """No loss known (a loop that gives none): no shock can be told, spikes alert at the patience."""
    det = GradientDetector()
    feed(det, range(50))
    alerts = feed(det, range(50, 60), make=lambda s: healthy(s, scale=10.0))
    assert [(a.kind, a.step) for a in alerts] == [("exploding", 52)]


def test_a_shock_whose_norm_dips_and_comes_back_does_not_compound():
    """A jittery flat norm (5.5, 7.4, 5.2, 6.6, ...: a task switch's) while the loss comes down: no growth. A norm
    that dips and comes back 1.5x over one step (6, 4, 6.5: a sequence-length warm-up's 3.8, 9.1, 4.0, 11.7) compounds
    only when every batch's loss climbs past where the shock put it: a divergence thrown off by a bad batch climbs
    just so from where its spike fell back to (79, 2.2, 3.4, its loss 4.9, 10, 10.9)."""
    falling = {s: 8.0 - 0.4 * (s - 50) for s in range(50, 62)}
    jitter = {s: (5.5, 7.4, 5.2, 6.6, 6.2, 5.5, 6.3, 4.3, 4.4, 4.0, 4.4, 3.6)[s - 50] for s in range(50, 62)}
    assert _shock(jitter, falling, 70) == []
    dip = {s: (6.0, 4.0, 6.5)[(s - 50) % 3] for s in range(50, 62)}
    assert _shock(dip, falling, 70) == []
    climbing = {s: 8.0 + 3.0 * (s - 50) for s in range(50, 62)}
    assert [(a.kind, a.step) for a in _shock(dip, climbing, 70)] == [("exploding", 52)]


def test_spikes_whose_loss_did_not_jump_with_them_compound_as_before():
    """A norm that leads and a loss that follows (Adam as its learning rate ramps past stability: the loss falling
    when the spikes begin, then up and down between batches) is no shock: a dip and a 1.5x rise is growth."""
    det = GradientDetector()
    feed(det, range(50), loss=lambda s: max(0.2, 2.3 - 0.07 * s) + 0.01 * math.sin(s))
    dip = {s: (6.0, 4.0, 6.5)[(s - 50) % 3] for s in range(50, 62)}
    losses = {50: 0.2, 51: 0.5, 52: 0.3, 53: 0.55}
    alerts = feed(
        det, range(50, 60), make=lambda s: healthy(s, scale=dip.get(s, 1.0)), loss=lambda s: losses.get(s, 0.4)
    )
    assert [(a.kind, a.step) for a in alerts] == [("exploding", 52)]


def test_one_batch_loss_of_exactly_zero_leaves_the_relative_rise():
    """A hinge or triplet loss hits 0 on a batch: the loss is not one that goes below zero, its rise is relative."""
    track = LossTrack()
    for loss in [2.3, 1.5, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.02, 0.0, 0.02, 0.02]:
        track.observe_loss(loss)
        track.observe_norm(0.0)
    for loss in [0.3, 0.4, 0.5, 0.5, 0.6]:
        track.observe_loss(loss)
    assert track.rising(0.25) is True


def test_two_bad_batches_in_a_row_wait_for_a_third_spike_when_the_first_was_held():
    """A spike orders of magnitude beyond the run, right after one whose update reached the weights, is a run that
    update threw off: an explosion at the second spike. When the first spike's update was held (clipped below its norm
    by ``clip="adaptive"``, or skipped), the second is another bad batch: the full patience of three spikes."""

    def run(held: bool, third: bool) -> list:
        det = GradientDetector()
        feed(det, range(50), loss=lambda s: max(0.1, 2.0 - 0.05 * s))
        alerts = []
        for step, scale in ((50, 500.0), (51, 2000.0), (52, 8000.0 if third else 1.0), (53, 1.0)):
            det.observe_loss(3000.0 if scale > 1 else 0.1)
            alerts += det.update(step, healthy(step, scale=scale)).alerts
            det.observe_held(held and scale > 1)
        return [(a.kind, a.step) for a in alerts]

    assert run(held=False, third=False) == [("exploding", 51)]  # the update of the first threw the run off
    assert run(held=True, third=False) == []  # two outlier batches, both clipped: no explosion
    assert run(held=True, third=True) == [("exploding", 52)]  # a third spike in a row: one step later


def test_a_jump_in_the_first_steps_waits_a_step_under_adaptive_clipping():
    """An outlier batch among the first steps jumps tenfold over every norm before, its loss with it: without clipping
    that is a learning rate far too high or a run thrown off, alerted at once. Under ``clip="adaptive"`` the step's
    update is scaled to the run's typical norm: the jump waits a step, and fires only when the run is not back, when
    the update was not held after all, or after several jumps in a row. A run back after held jumps has batches that
    size: a jump is measured over them from then on."""

    def run(norms: dict[int, float], losses: dict[int, float], clip: str = 'clip="adaptive"', held: bool = True):
        det = GradientDetector(traits=ModelTraits(clipping=clip))
        alerts = []
        for step in range(20):
            scale = norms.get(step, 1.0)
            det.observe_loss(losses.get(step, 2.0 - 0.05 * step))
            alerts += det.update(step, healthy(step, scale=scale)).alerts
            det.observe_held(held and scale > 5)
        return [(a.kind, a.step, a.extra["rule"]) for a in alerts]

    outlier = ({4: 300.0}, {4: 5000.0})
    assert run(*outlier) == []  # held, and the next step is back among the run's norms and losses
    assert run(*outlier, clip="") == [("exploding", 4, "jump")]  # nothing holds it: a jump at once
    assert run(*outlier, clip="clip=1.0") == [("exploding", 4, "jump")]  # a fixed threshold may be far above the run's
    assert run(*outlier, clip='on_exploding="clip"') == [("exploding", 4, "jump")]  # clipping that answers an alert
    two = ({4: 300.0, 5: 200.0}, {4: 5000.0, 5: 4000.0})
    assert run(*two) == []  # two outlier batches in a row, both held
    rising = ({4: 100.0, 5: 300.0, 6: 900.0}, {4: 5000.0, 5: 6000.0, 6: 9000.0})
    assert run(*rising) == [("exploding", 6, "jump")]  # three in a row, each above the one before: compounding
    flat = {step: 300.0 + 100.0 * (step % 2) for step in range(4, 12)}
    assert run(flat, dict.fromkeys(flat, 5000.0)) == [("exploding", 9, "jump")]  # six in a row, whatever their order
    thrown = ({4: 300.0, 5: 8.0, 6: 3.0}, {4: 5000.0, 5: 30.0, 6: 20.0})
    assert run(*thrown) == [("exploding", 5, "jump")]  # not back: its norm 8x all before, its loss 15x the first
    assert run(*outlier, held=False) == []  # the update reached the weights, and the run did not move
    assert run(*two, held=False) == [("exploding", 5, "jump")]  # ... and the run jumps again after it
    survived = ({4: 300.0, 8: 100.0, 9: 300.0, 10: 900.0}, {4: 5000.0, 8: 3000.0, 9: 5000.0, 10: 9000.0})
    assert run(*survived) == []  # back after the first: three rising later are no jump over its 300
    later = ({k + 4: v for k, v in rising[0].items()}, {k + 4: v for k, v in rising[1].items()})
    assert run(*later) == [("exploding", 10, "jump")]  # the same three with no outlier before them
    gap = ({4: 300.0, 5: 0.0, 6: 8.0}, {4: 5000.0, 6: 30.0})
    assert run(*gap) == [("exploding", 6, "jump")]  # a step without a gradient tells nothing: still not back at 6


def test_a_jump_waiting_under_adaptive_clipping_without_a_loss_or_resumed_without_it():
    """With no loss known the norm alone tells whether the run is back; a run resumed mid-wait without
    ``clip="adaptive"`` stops waiting, and its history goes on (its warm-up ends, its spikes are judged)."""

    def feed(det: GradientDetector, norms: dict[int, float], steps: range) -> list:
        alerts = []
        for step in steps:
            scale = norms.get(step, 1.0)
            alerts += det.update(step, healthy(step, scale=scale)).alerts
            det.observe_held(scale > 5)
        return [(a.kind, a.step) for a in alerts]

    adaptive = ModelTraits(clipping='clip="adaptive"')
    assert feed(GradientDetector(traits=adaptive), {4: 300.0}, range(20)) == []
    assert feed(GradientDetector(traits=adaptive), {4: 300.0, 5: 8.0, 6: 8.0}, range(20)) == [("exploding", 5)]
    waiting = GradientDetector(traits=adaptive)
    feed(waiting, {4: 300.0}, range(5))
    resumed = GradientDetector(traits=ModelTraits())
    resumed.load_state_dict(waiting.state_dict())
    feed(resumed, {}, range(5, 40))
    assert resumed.ctx.norms.warm
    assert resumed.spike_threshold() < 10.0


def test_outlier_batches_adaptive_clipping_held_do_not_make_a_trend_or_a_run_of_spikes():
    """After the first steps, a run whose batches carry outliers in three of every five steps: each outlier batch's
    norm 300x the run's, its loss 50x. Under ``clip="adaptive"`` every one of them is held (scaled to the typical
    norm): their own losses lift the medians the spike and trend rules read, but a run of held spikes that does not
    compound is outlier batches, and a trend among held steps needs every batch's loss up. Unclipped, the same stream
    is alerted. A divergence under the same clipping, its norm compounding and every batch's loss climbing, still
    is."""

    def run(clip: str, make, loss) -> list:
        det = GradientDetector(traits=ModelTraits(clipping=clip))
        alerts = []
        for step in range(160):
            det.observe_loss(loss(step))
            stats = make(step)
            alerts += det.update(step, stats).alerts
            det.observe_held(stats.total_norm > 10.0)
        return [(a.kind, a.step, a.extra["rule"]) for a in alerts]

    def bad(step: int) -> bool:
        return step >= 60 and step % 5 in (0, 1, 2)

    def outliers(step: int) -> StepStats:
        return healthy(step, scale=(300.0 + 40.0 * math.sin(step)) if bad(step) else 1.0)

    def losses(step: int) -> float:
        return 50.0 if bad(step) else max(0.5, 2.0 - 0.02 * step)

    assert run('clip="adaptive"', outliers, losses) == []
    assert [kind for kind, *_ in run("", outliers, losses)][:1] == ["exploding"]
    diverging = run(
        'clip="adaptive"',
        lambda s: healthy(s, scale=1.8 ** (s - 99) if s >= 100 else 1.0),
        lambda s: max(0.5, 2.0 - 0.02 * s) * (1.6 ** (s - 99) if s >= 100 else 1.0),
    )
    assert [kind for kind, *_ in diverging][:1] == ["exploding"]
    assert diverging[0][1] < 115
