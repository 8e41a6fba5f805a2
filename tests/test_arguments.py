"""Bad arguments fail in the constructor with a message naming the allowed values and the value received."""

from __future__ import annotations

import pytest

from lightning_gradwatch import GradWatch


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"on_vanishing": "skip"},
            ValueError,
            r"`on_vanishing` must be one of \('warn', 'raise', 'stop', 'ignore'\), got 'skip'",
        ),
        ({"on_exploding": "explode"}, ValueError, r"`on_exploding` must be one of .*'skip'.*got 'explode'"),
        ({"on_nonfinite": None}, ValueError, r"`on_nonfinite` must be one of .*got None"),
        ({"granularity": "block"}, ValueError, r"`granularity` must be one of \('module', 'parameter'\), got 'block'"),
        ({"log_every_n_steps": 0}, ValueError, r"`log_every_n_steps` must be >= 1, got 0"),
        ({"log_every_n_steps": 2.5}, TypeError, r"`log_every_n_steps` must be an int, got float 2.5"),
        ({"histogram_every_n_steps": -1}, ValueError, r"`histogram_every_n_steps` must be >= 0, got -1"),
        ({"include": "("}, ValueError, r"`include` must be a valid regular expression"),
        ({"exclude": "?"}, ValueError, r"`exclude` must be a valid regular expression \(nothing to repeat.*got '\?'"),
        ({"exclude": 3}, TypeError, r"`exclude` must be a regular expression string or None"),
        ({"vanishing_patience": 0}, ValueError, r"`vanishing_patience` must be >= 1, got 0"),
        ({"vanishing_patience": 2.5}, TypeError, r"`vanishing_patience` must be an int, got float 2.5"),
        ({"exploding_threshold": "big"}, TypeError, r"`exploding_threshold` must be a number, got str 'big'"),
        (
            {"exploding_zscore": float("nan")},
            ValueError,
            r"`exploding_zscore` must be a positive, finite number, got nan",
        ),
        ({"vanishing_ratio": 2.0}, ValueError, r"`vanishing_ratio` must be in \(0, 1\), got 2.0"),
        ({"histogram_sample_size": 0}, ValueError, r"`histogram_sample_size` must be >= 1, got 0"),
        ({"exploding_jump_factor": 1.0}, ValueError, r"`exploding_jump_factor` must be greater than 1, got 1.0"),
        ({"exploding_trend_loss_factor": "3"}, TypeError, r"`exploding_trend_loss_factor` must be a number"),
        ({"clip": 1.0, "clip_max_norm": 0.05}, ValueError, r"`clip_max_norm` .* needs clip='adaptive'.*\(clip=0.05\)"),
        ({"clip_max_norm": 0.05}, ValueError, r"`clip_max_norm` .* got clip=None"),
    ],
)
def test_gradwatch_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GradWatch(**kwargs)


def test_gradwatch_passes_the_jump_and_trend_factors_to_its_detectors():
    watch = GradWatch(exploding_jump_factor=30.0, exploding_trend_loss_factor=5.0, exploding_trend_norm_factor=4.0)
    detection = watch.detection
    assert (detection.exploding_jump_factor, detection.exploding_trend_loss_factor) == (30.0, 5.0)
    assert detection.exploding_trend_norm_factor == 4.0
    assert watch.config()["exploding_jump_factor"] == 30.0
