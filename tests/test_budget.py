"""The overhead budget with a real Trainer: slow histograms and pictures are spaced out, nothing asked for is lost."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import warnings

import pytest

from lightning_gradwatch import GradientWarning, GradWatch
from lightning_gradwatch.write import output
from tests.helpers import events, flavour, make_mlp_module, scalars, trainer_kwargs

pl = flavour("lightning.pytorch")
MESSAGES = "lightning.pytorch.callbacks.gradwatch"


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, r"`overhead_budget` must be a fraction of the training time in \(0, 1\].*got 0"),
        (1.5, ValueError, r"`overhead_budget` must be .*got 1.5"),
        (float("nan"), ValueError, r"`overhead_budget` must be .*got nan"),
        ("3%", TypeError, r"`overhead_budget` must be a number in \(0, 1\] or None, got str '3%'"),
        (True, TypeError, r"`overhead_budget` must be a number in \(0, 1\] or None, got bool True"),
    ],
)
def test_overhead_budget_rejects_bad_values(value, error, match):
    with pytest.raises(error, match=match):
        GradWatch(overhead_budget=value)


@pytest.mark.parametrize("value", [None, 0.03, 1])
def test_overhead_budget_accepts_fractions_and_none(value):
    assert GradWatch(overhead_budget=value).config()["overhead_budget"] == value


class _StopAt(pl.Callback):
    """Ends the fit after ``steps`` optimizer steps: the first steps of a run whose length says it is long."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def _fit(tmp_path, watch, epochs=4, long_run=False):
    """A real fit (16 steps an epoch); returns the trainer, its GradientWarnings and GradWatch's log messages
    (``(level name, message)``, DEBUG ones included).

    ``long_run``: the same steps as the first of a run of 100 000 steps (a run too long for the floor of pictures).
    """
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(MESSAGES)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    if long_run:
        kwargs = trainer_kwargs(tmp_path, max_steps=100_000, max_epochs=-1)
        trainer = pl.Trainer(callbacks=[watch, _StopAt(16 * epochs)], **kwargs)
    else:
        trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=epochs))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(make_mlp_module(pl, record=False))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    ours = [str(w.message) for w in caught if issubclass(w.category, GradientWarning)]
    return trainer, ours, [(r.levelname, r.getMessage()) for r in records if r.levelno >= logging.DEBUG]


def _said(messages, level):
    return [m for lvl, m in messages if lvl == level]


def _report(trainer):
    with open(os.path.join(trainer.logger.log_dir, "gradwatch.json")) as fh:
        return json.load(fh)


def test_budget_spaces_out_slow_pictures_and_says_so(tmp_path, monkeypatch):
    """Pictures that take 0.1 s each on steps of a few ms, in a long run: after the first, they are spaced far apart.

    Without the budget, 16 are asked for and most of them drawn (the drawing thread queues up to 8). The run is
    the first 64 steps of a run of 100 000: too long for the floor of pictures a short run has.
    """
    draw = output.gradient_flow_png

    def slow_flow(*args, **kwargs):
        time.sleep(0.1)
        return draw(*args, **kwargs)

    monkeypatch.setattr(output, "gradient_flow_png", slow_flow)
    watch = GradWatch(log_every_n_steps=2, histogram_every_n_steps=4, overhead_budget=0.05)
    trainer, ours, messages = _fit(tmp_path, watch, long_run=True)
    assert trainer.global_step == 64
    acc = events(trainer.logger.log_dir)
    pictures = [i.step for i in acc.Images("gradwatch/gradient_flow")]
    assert pictures[0] == 0
    assert pictures[-1] == 60  # the last histogram step's, drawn at the end of the fit: the whole run's heat map
    assert len(pictures) <= 3  # of 16 asked for
    assert [i.step for i in acc.Images("gradwatch/gradient_heatmap")] == pictures[1:]
    # what the user asked for is all there: scalars every 2 steps, the explicit histogram interval
    assert sorted(scalars(acc, "gradwatch/total_norm")) == list(range(0, 64, 2))
    assert [h.step for h in acc.Histograms("grad_hist/head")] == list(range(0, 64, 4))
    budget = _report(trainer)["budget"]
    assert budget["overhead_budget"] == 0.05
    assert budget["thinned"] is True
    assert budget["asked"] == {"log_every_n_steps": None, "histogram_every_n_steps": 4, "pictures_every_n_steps": 4}
    assert budget["histogram_every_n_steps"] == 4
    assert budget["pictures_every_n_steps"] >= 32
    assert budget["pictures_every_n_steps"] % 4 == 0
    assert budget["picture_seconds"] >= 0.1
    # held to the budget itself (no 2 ms floor for pictures): per step they cost at most 5% of a step
    assert budget["picture_seconds"] / budget["pictures_every_n_steps"] <= 0.05 * budget["step_seconds"]
    assert budget["pictures_left_out"] == 16 - len(pictures)
    thinned = _said(messages, "DEBUG")  # within the budget: said for whoever looks, not on the console
    assert len(thinned) == 1, messages
    assert "gradient-flow pictures every" in thinned[0]
    assert all(m.startswith("GradWatch cost about ") for m in _said(messages, "INFO"))  # only past twice the budget
    # spacing pictures out is an information, not a GradientWarning (on a loaded machine the explicit histograms
    # alone may break the budget, and that one is said)
    assert not [w for w in ours if "picture" in w]


@pytest.fixture
def slow_histograms(monkeypatch):
    """Every histogram step's histograms take 100 ms more to write (far past a toy step's budget, even on a loaded
    machine whose steps take ten times as long; within the 200 ms a histogram step may take for a short run's floor
    of pictures, with room for the real writing on a loaded machine)."""
    tags = output.histogram_tags

    def slow(stats):
        if stats.histograms is not None:
            time.sleep(0.1)
        return tags(stats)

    monkeypatch.setattr(output, "histogram_tags", slow)


def test_budget_spaces_out_slow_default_histograms(tmp_path, slow_histograms):
    """Histograms at their default interval that cost 100 ms each are spaced out (the first 64 steps of a long run);
    scalars stay at every step."""
    watch = GradWatch(log_every_n_steps=1, overhead_budget=0.05, images=False)
    trainer, ours, messages = _fit(tmp_path, watch, long_run=True)
    acc = events(trainer.logger.log_dir)
    assert sorted(scalars(acc, "gradwatch/total_norm")) == list(range(64))  # every step, as asked
    steps = [h.step for h in acc.Histograms("grad_hist/head")]
    assert steps[:2] == [0, 4]  # the first is part of setting up; the second is measured, then they are spaced out
    assert len(steps) <= 4  # of 16 due at the default interval (4 x the log interval)
    assert all(step % 4 == 0 for step in steps)  # on the grid of the asked interval
    budget = _report(trainer)["budget"]
    assert budget["asked"]["histogram_every_n_steps"] == 4
    assert budget["histogram_every_n_steps"] >= 24  # 100 ms in a 2 ms allowance (the floor): every 52 steps or more
    assert budget["histogram_every_n_steps"] % 4 == 0
    assert budget["histogram_extra_seconds"] >= 0.04
    thinned = _said(messages, "DEBUG")
    assert len(thinned) == 1, messages
    assert "histograms every" in thinned[0]
    assert ours == []


def test_short_run_keeps_histograms_spread_over_it(tmp_path, slow_histograms):
    """The same 100 ms histograms on a run of 64 steps: spaced out to an eighth of the run, not past its end (the
    budget alone would leave it the first two)."""
    trainer, _, _ = _fit(tmp_path, GradWatch(log_every_n_steps=1, overhead_budget=0.05, images=False))
    steps = [h.step for h in events(trainer.logger.log_dir).Histograms("grad_hist/head")]
    assert steps[:2] == [0, 4]
    assert steps[-1] >= 56  # to the end of the run
    assert all(b - a <= 8 for a, b in itertools.pairwise(steps)), steps
    assert _report(trainer)["budget"]["histogram_every_n_steps"] == 8  # 64 / 8, on the grid of 4


def test_budget_honours_explicit_histograms_and_warns_they_break_it(tmp_path, slow_histograms):
    watch = GradWatch(log_every_n_steps=1, histogram_every_n_steps=4, overhead_budget=0.05, images=False)
    trainer, ours, _ = _fit(tmp_path, watch, epochs=2)
    assert [h.step for h in events(trainer.logger.log_dir).Histograms("grad_hist/head")] == list(range(0, 32, 4))
    assert len(ours) == 1, ours
    assert "histogram_every_n_steps=4) alone take more than overhead_budget=0.05" in ours[0]
    budget = _report(trainer)["budget"]
    assert budget["histogram_every_n_steps"] == 4
    assert budget["histograms_break_budget"] is True


def test_budget_default_run_keeps_what_was_asked(tmp_path):
    """Default settings on a tiny model: every scalar, histogram and picture the 16 steps were due. On a busy machine
    the histograms asked for may measure above the budget: they are kept, and the one warning says so."""
    trainer, ours, _ = _fit(tmp_path, GradWatch(log_every_n_steps=2, histogram_every_n_steps=4, images=False), 1)
    acc = events(trainer.logger.log_dir)
    assert sorted(scalars(acc, "gradwatch/total_norm")) == list(range(0, 16, 2))
    assert [h.step for h in acc.Histograms("grad_hist/head")] == [0, 4, 8, 12]
    assert all("histogram_every_n_steps=4) alone take more than overhead_budget" in m for m in ours), ours
    budget = _report(trainer)["budget"]
    assert budget["overhead_budget"] == 0.03
    assert budget["histogram_every_n_steps"] == 4
    assert budget["pictures_every_n_steps"] == 0


def test_short_run_gets_pictures_spread_over_it(tmp_path, monkeypatch):
    """A toy run of 64 steps of a few ms: the budget alone would leave it its first and last pictures (0.03 of a
    few ms is far less than a picture takes); the floor of a short run spreads about 8 sets over it, drawn on the
    worker thread, and the report says so.

    The floor's bound is raised to 60 s here, so that how long this machine takes to draw cannot change what is
    drawn (the 2 s bound is tested below and in the rules' test).
    """
    from lightning_gradwatch.write import budget as budget_module
    from lightning_gradwatch.write.budget import MIN_PICTURES

    monkeypatch.setattr(budget_module, "PICTURES_FLOOR_SECONDS", 60.0)
    trainer, ours, messages = _fit(tmp_path, GradWatch(histogram_every_n_steps=4), epochs=4)
    acc = events(trainer.logger.log_dir)
    pictures = [i.step for i in acc.Images("gradwatch/gradient_flow")]
    budget = _report(trainer)["budget"]
    assert budget["run_steps"] == 64
    # the floor takes the toy run far past its budget: said once, plainly, with what turns the pictures off
    assert budget["estimated_overhead"] > 2 * 0.03
    said = _said(messages, "INFO")
    assert len(said) == 1, messages
    assert said[0].startswith("GradWatch cost about ")
    assert "of the training time of this run, " in said[0]
    assert " in all (64 steps of about " in said[0]  # and the seconds: "about 4.1 s in all"
    assert ", beyond overhead_budget=0.03: its gradient-flow pictures " in said[0]
    assert "`images=False` turns the pictures off" in said[0]
    assert budget["pictures_floor"]["pictures_every_n_steps"] == budget["pictures_every_n_steps"] == 8  # 64 / 8
    # about 8 sets spread over the run, the first step's and the last histogram step's among them (drawn at the end
    # of the fit). Where the grid starts depends on when the first picture's drawing time becomes known (while the
    # first set is still being drawn, the next histogram step may start one): [0, 8, ..., 56, 60] or [0, 4, 12, ...].
    assert pictures[0] == 0
    assert pictures[-1] == 60
    assert MIN_PICTURES <= len(pictures) <= MIN_PICTURES + 2
    gaps = [b - a for a, b in itertools.pairwise(pictures)]
    assert all(4 <= gap <= 8 for gap in gaps), pictures
    assert [i.step for i in acc.Images("gradwatch/gradient_heatmap")] == pictures[1:]
    assert budget["pictures_left_out"] == 16 - len(pictures)
    assert budget["pictures_floor"] == {"pictures": MIN_PICTURES, "seconds": 60.0, "pictures_every_n_steps": 8}
    assert not [w for w in ours if "picture" in w]  # none dropped (the histograms every 4 may break the budget)


def test_short_run_floor_of_pictures_is_bounded_in_seconds(tmp_path, monkeypatch):
    """Pictures that take 0.5 s or more each: the floor pays for at most 4 sets (2 s), the first and last among them."""
    draw = output.gradient_flow_png

    def slow_flow(*args, **kwargs):
        time.sleep(0.5)
        return draw(*args, **kwargs)

    monkeypatch.setattr(output, "gradient_flow_png", slow_flow)
    trainer, ours, _ = _fit(tmp_path, GradWatch(histogram_every_n_steps=4), epochs=4)
    pictures = [i.step for i in events(trainer.logger.log_dir).Images("gradwatch/gradient_flow")]
    budget = _report(trainer)["budget"]
    assert budget["picture_seconds"] >= 0.5
    assert pictures[0] == 0
    assert pictures[-1] == 60
    assert len(pictures) <= 4  # 4 x 0.5 s: the floor's 2 s
    floor = budget["pictures_floor"]["pictures_every_n_steps"]
    assert floor is None or floor >= 24  # 0, 24, 48 and 60 at most
    assert not [w for w in ours if "picture" in w]


def test_all_defaults_short_run_gets_a_point_every_step_and_its_first_pictures(tmp_path):
    """16 steps under the Trainer's interval of 50 would chart one point; the run gets one per step instead."""
    trainer, ours, _ = _fit(tmp_path / "default", GradWatch(), 1)
    acc = events(trainer.logger.log_dir)
    assert sorted(scalars(acc, "gradwatch/total_norm")) == list(range(16))
    hist_steps = [h.step for h in acc.Histograms("grad_hist/head")]
    assert hist_steps[0] == 0
    assert all(step % 4 == 0 for step in hist_steps)
    assert next(i.step for i in acc.Images("gradwatch/gradient_flow")) == 0
    assert ours == []
    report = _report(trainer)
    assert report["config"]["overhead_budget"] == 0.03
    assert report["config"]["log_every_n_steps"] is None  # as configured; the chosen interval is the schedule's
    assert report["schedule"] == {"log_every_n_steps": 1, "histogram_every_n_steps": 4}


def test_budget_spreads_out_slow_scalars_the_run_length_chose_but_keeps_enough_points(tmp_path, monkeypatch):
    """A 208-step run charts every 2 steps by default; scalars that cost 50 ms each (far over any budget, on a
    loaded machine too) are spread out to every 8 (the 25 points such a run keeps whatever the budget), and said so;
    an explicit interval is never spread."""
    step_scalars = output.step_scalars

    def slow(stats, suffix=""):
        time.sleep(0.05)
        return step_scalars(stats, suffix=suffix)

    monkeypatch.setattr(output, "step_scalars", slow)
    trainer, ours, messages = _fit(tmp_path / "chosen", GradWatch(images=False, histogram_every_n_steps=0), 13)
    report = _report(trainer)
    assert report["schedule"]["log_every_n_steps"] == 2
    assert report["budget"]["log_every_n_steps"] == 8
    steps = sorted(scalars(events(trainer.logger.log_dir), "gradwatch/total_norm"))
    assert steps[:2] == [0, 2]
    assert steps[-1] - steps[-2] == 8
    assert all(step % 2 == 0 for step in steps)
    assert len(steps) >= 25
    assert any("scalars every 8 steps instead of 2" in m for m in _said(messages, "DEBUG"))
    assert ours == []

    trainer, _, _ = _fit(tmp_path / "explicit", GradWatch(images=False, log_every_n_steps=2), 2)
    assert sorted(scalars(events(trainer.logger.log_dir), "gradwatch/total_norm")) == list(range(0, 32, 2))
    assert _report(trainer)["budget"]["log_every_n_steps"] is None


@pytest.mark.parametrize(
    ("max_steps", "trainer_every", "watch_every", "expected"),
    [
        (20_000, 50, None, (50, 200, 0)),  # a long run keeps the Trainer's interval
        (1_000, 50, None, (10, 40, 40)),  # 100 points; a budget may spread them to 25
        (145, 50, None, (1, 4, 5)),  # every step; at least 29 points under a budget
        (1_000, 5, None, (5, 20, 0)),  # a Trainer interval other than Lightning's default is kept
        (20, 50, None, (1, 4, 1)),  # never below every step
        (3_000, 50, None, (30, 120, 50)),  # never spread past the Trainer's interval
        (145, 50, 25, (25, 100, 0)),  # an explicit interval is kept
    ],
)
def test_scalar_interval_follows_the_run_length(max_steps, trainer_every, watch_every, expected):
    from lightning_gradwatch._environment import Environment, run_cadence

    trainer = pl.Trainer(max_steps=max_steps, max_epochs=-1, log_every_n_steps=trainer_every, logger=False)
    env = Environment(log_every=watch_every or trainer_every, hist_every=4 * (watch_every or trainer_every))
    chosen = run_cadence(env, trainer, watch_every, None)
    assert (chosen.log_every, chosen.hist_every, chosen.log_widest) == expected


def test_scalar_interval_of_a_run_of_unknown_length_is_the_trainers():
    from lightning_gradwatch._environment import Environment, run_cadence

    trainer = pl.Trainer(max_steps=-1, max_epochs=-1, logger=False)  # runs until stopped
    env = Environment(log_every=50, hist_every=200)
    assert run_cadence(env, trainer, None, None) is env


def test_no_budget_times_nothing_and_records_nothing(tmp_path):
    trainer, _, messages = _fit(tmp_path, GradWatch(log_every_n_steps=2, overhead_budget=None, images=False), 1)
    assert "budget" not in _report(trainer)
    assert messages == []


def _observed(budget, steps=40, step_seconds=0.1, hook=0.001, histogram_hook=0.002, every=4):
    now = 0.0
    for step in range(steps):
        histograms = step % every == 0
        budget.step_done(now, histogram_hook if histograms else hook, histograms)
        now += step_seconds
    budget.update()
    return budget


def test_budget_spacing_rules_without_a_trainer():
    from lightning_gradwatch.write.budget import FLOOR_SECONDS, OverheadBudget

    # nothing is known before a few steps: nothing changes
    early = _observed(OverheadBudget(0.03, 4, explicit=False, pictures=True), steps=3, histogram_hook=1.0)
    assert (early.histogram_every, early.pictures_every, early.thinned) == (4, 4, False)
    # cheap histograms and no picture yet: as asked
    cheap = _observed(OverheadBudget(0.03, 4, explicit=False, pictures=True))
    assert (cheap.histogram_every, cheap.pictures_every, cheap.thinned) == (4, 4, False)
    # 1 s histograms on 100 ms steps at 3%: spaced out on the grid of 4, so they cost at most the 2 ms left
    slow = _observed(OverheadBudget(0.03, 4, explicit=False, pictures=False), histogram_hook=1.0)
    assert slow.histogram_every % 4 == 0
    assert 0.999 / slow.histogram_every <= 0.002 < 0.999 / (slow.histogram_every - 4)
    assert slow.overhead() == pytest.approx(0.03, abs=0.002)
    # the same histograms asked for explicitly: kept, and flagged as breaking the budget
    kept = _observed(OverheadBudget(0.03, 4, explicit=True, pictures=False), histogram_hook=1.0)
    assert (kept.histogram_every, kept.histograms_break_budget, kept.thinned) == (4, True, False)
    # pictures are spaced on the histogram grid
    drawn = _observed(OverheadBudget(0.03, 4, explicit=False, pictures=True))
    drawn.picture_done(1.0)
    drawn.update()
    assert drawn.pictures_every % drawn.histogram_every == 0
    assert drawn.pictures_every >= 1.0 / 0.003
    # on steps of 1 ms, costs under the floor are within any budget
    tiny = _observed(OverheadBudget(0.03, 4, explicit=True, pictures=False), step_seconds=0.001, hook=0.0003)
    assert FLOOR_SECONDS == 0.002
    assert not tiny.histograms_break_budget
    assert not tiny.thinned
    # but pictures are held to the budget itself: 0.17 s pictures on 2 ms steps cost at most 3% of them
    toy = _observed(OverheadBudget(0.03, 4, explicit=False, pictures=True), step_seconds=0.002, hook=0.0003)
    toy.picture_done(0.17)
    toy.update()
    assert toy.histogram_every == 4  # the histograms' hook time is within the floor
    assert 0.17 / toy.pictures_every <= 0.03 * 0.002


def test_short_run_floor_of_pictures_without_a_trainer():
    """A run of known length gets about 8 sets of pictures over it while their drawing stays within 2 s in all."""
    from lightning_gradwatch.write.budget import MIN_PICTURES, PICTURES_FLOOR_SECONDS, OverheadBudget
    from lightning_gradwatch.write.output import budget_message

    assert (MIN_PICTURES, PICTURES_FLOOR_SECONDS) == (8, 2.0)

    def toy(run_steps, seconds, hist_every=12):
        budget = OverheadBudget(0.03, hist_every, explicit=False, pictures=True)
        budget.retime(hist_every, run_steps=run_steps)
        budget = _observed(budget, step_seconds=0.002, hook=0.0003, histogram_hook=0.0006, every=hist_every)
        budget.picture_done(seconds)
        budget.update()
        return budget

    # the demo: 300 steps of 2 ms, histograms every 12, 0.17 s pictures: every 36 steps (0, 36, ..., 288: 9 sets)
    demo = toy(300, 0.17)
    assert (demo.pictures_floor_every, demo.pictures_every) == (36, 36)
    said = "gradient-flow pictures every 36 steps instead of 12 (about 0.17 s each to draw; about 8 over this run's"
    assert f"{said} 300 steps)" in budget_message(demo)
    assert (len(range(0, 300, 36)) + 1) * 0.17 <= PICTURES_FLOOR_SECONDS  # counting a last set at the end
    # slower pictures: fewer of them, so that their drawing stays within the bound
    slow = toy(300, 0.5)  # 4 sets in 2 s: the first, the last, and 2 between
    assert slow.pictures_floor_every == 108
    assert (len(range(0, 300, 108)) + 1) * 0.5 <= PICTURES_FLOOR_SECONDS
    # pictures of 1 s: the floor pays for no more than the first and last sets, which are drawn anyway
    assert toy(300, 1.0).pictures_floor_every == 0
    assert toy(300, 1.0).pictures_every > 10_000
    # a run of unknown length has no floor: the budget alone
    unknown = toy(0, 0.17)
    assert unknown.pictures_floor_every == 0
    assert 0.17 / unknown.pictures_every <= 0.03 * 0.002
    # a long run (10 000 steps of 100 ms): its budget already spaces pictures closer than an eighth of the run
    long = OverheadBudget(0.03, 12, explicit=False, pictures=True)
    long.retime(12, run_steps=10_000)
    long = _observed(long, every=12)
    long.picture_done(0.17)
    long.update()
    assert long.pictures_floor_every == 1248  # about 10 000 / 8, on the grid of 12
    assert long.pictures_every < long.pictures_floor_every  # the budget's own spacing, within its fraction:
    assert 0.17 / long.pictures_every <= 0.03 * 0.1
    assert long.to_dict()["pictures_floor"] == {"pictures": 8, "seconds": 2.0, "pictures_every_n_steps": 1248}


def test_one_stalled_hook_does_not_make_the_per_step_work_over_budget():
    """The per-step work is judged on its median, as the step time is: a hook stalled by the machine (another
    process, a page fault) once in a toy run of 3 ms steps is not "GradWatch's work at every step"."""
    from lightning_gradwatch.write.budget import OverheadBudget

    def run(hooks: list[float]) -> OverheadBudget:
        budget = OverheadBudget(0.03, histogram_every=0, explicit=False, pictures=False)
        started = 0.0
        for hook in hooks:
            budget.step_done(started=started, hook_seconds=hook, histograms=False)
            started += 0.003 + hook
        budget.update()
        return budget

    stalled = run([0.0003] * 5 + [0.5] + [0.0003] * 6)
    assert (stalled.per_step_far_over, stalled.per_step_breaks_budget) == (False, False)
    assert stalled.per_step_seconds == pytest.approx(0.0003)
    slow = run([0.02] * 12)  # every step: far over
    assert (slow.per_step_far_over, slow.per_step_breaks_budget) == (True, True)


def test_end_of_fit_cost_line_names_only_what_costs_too_much():
    """The end-of-fit line counts hook time as the budget does (under 2 ms a step it is within any budget) and gives
    a remedy only for the parts that cost too much: no `images=False` when the pictures are cheap, no per-step
    remedy when the per-step work is within the budget."""
    from lightning_gradwatch.write.budget import OverheadBudget
    from lightning_gradwatch.write.output import over_budget, overhead_message

    def toy(step_seconds, hook, picture=None, histogram_hook=None, every=200):
        budget = OverheadBudget(0.03, every, explicit=every != 200, pictures=True)
        budget = _observed(budget, step_seconds=step_seconds, hook=hook, histogram_hook=histogram_hook or hook)
        if picture is not None:
            budget.picture_done(picture)
            budget.update()
        return budget

    # 1 ms of measuring on 6 ms steps (17% of them), pictures spaced out to cost less than the budget: nothing to say
    measuring = toy(0.006, 0.001, picture=0.3)
    assert measuring.overhead() > 2 * 0.03
    assert measuring.costs()[2] < 0.03 * 0.006
    assert not over_budget(measuring)
    # the same with a short run's floor of pictures (every 8 steps): the pictures, and only they, are advised
    floor = toy(0.006, 0.001, picture=0.3)
    floor.pictures_every = 8
    said = overhead_message(floor, steps=64)
    assert over_budget(floor)
    assert "its gradient-flow pictures " in said
    assert "its measuring and judging at every step 17% (1 ms a step)" in said
    assert "GradWatch's hook (1 ms a step) is within the budget: hook costs under 2 ms a step are within any" in said
    assert "`images=False` turns the pictures off." in said
    assert "histogram_every_n_steps" not in said
    assert "include" not in said
    # 5 ms of measuring on 10 ms steps: beyond any budget, the per-step work is advised, not the pictures
    heavy = toy(0.01, 0.005, picture=0.3)
    said = overhead_message(heavy, steps=64)
    assert over_budget(heavy)
    assert "its measuring and judging at every step 50% (5 ms a step)" in said
    assert "fewer parameters (`include`/`exclude`)" in said
    assert "images=False" not in said
    assert "within the budget" not in said
    # histograms asked for every 4 steps that take 20 ms each on 10 ms steps: they are named and advised
    histograms = toy(0.01, 0.0005, histogram_hook=0.0205, every=4)
    said = overhead_message(histograms, steps=64)
    assert over_budget(histograms)
    assert "A larger `histogram_every_n_steps` spaces out the histograms." in said
    assert "images=False" not in said
    assert "include" not in said


def test_toy_run_measuring_under_2_ms_a_step_is_not_called_over_budget(tmp_path):
    """The first 64 steps of a long run (no floor of pictures: the budget holds them to its fraction) of a model
    whose steps take a few ms: GradWatch's per-step measuring is a large share of them, but under 2 ms a step it is
    within any budget. The end of the fit does not call it over the budget, nor blame the pictures for it."""
    from lightning_gradwatch.write.budget import FLOOR_SECONDS

    trainer, _, messages = _fit(tmp_path, GradWatch(), long_run=True)
    budget = _report(trainer)["budget"]
    said = [m for m in _said(messages, "INFO") if m.startswith("GradWatch cost about ")]
    allowed = 0.03 * budget["step_seconds"]
    pictures = budget["picture_seconds"] / budget["pictures_every_n_steps"]
    assert pictures <= allowed  # held to the budget (no floor of pictures in a long run) ...
    assert not [m for m in said if "images=False" in m]  # ... so they are not what costs too much
    histograms = (budget["histogram_extra_seconds"] or 0.0) / budget["histogram_every_n_steps"]
    if budget["hook_seconds"] + histograms <= FLOOR_SECONDS:  # a machine too loaded for that says it, with a remedy
        assert said == []


def test_a_fit_that_raises_at_a_step_is_finished_once_and_its_end_is_not_timed_as_a_step(tmp_path):
    """``on_nonfinite="raise"`` finishes the fit at the NaN step (its last pictures drawn, the report written) before
    the exception leaves it: the end-of-fit line is said once, and the pictures' drawing is not booked as the step's
    hook time (it was: a second line gave 0.5 s a step, and gradwatch.json kept it)."""
    from lightning_gradwatch import GradientAlertError

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(MESSAGES)
    logger.addHandler(handler)
    watch = GradWatch(on_nonfinite="raise", log_every_n_steps=4)  # a fixed interval: every other step is a plain one
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path, max_epochs=4))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(GradientAlertError):
                trainer.fit(make_mlp_module(pl, nan_at_step=30, record=False))
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records if r.getMessage().startswith("GradWatch cost about")]
    assert len(lines) <= 1, lines
    report = _report(trainer)
    assert report["status"] == "failed"
    assert report["budget"]["hook_seconds"] < 0.05  # a tiny MLP's hook: a millisecond or so
