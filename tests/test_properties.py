"""Property-based checks: any constructor argument is accepted and works, or is refused clearly; any
``gradwatch.json`` content gives the command a clean exit code, never a traceback."""

from __future__ import annotations

import io
import json
import math
import warnings
from contextlib import redirect_stderr, redirect_stdout

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lightning_gradwatch import GradWatch
from lightning_gradwatch.cli import main as gradwatch_main
from tests.helpers import flavour, make_mlp_module, trainer_kwargs

pl = flavour("lightning.pytorch")

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(["warn", "raise", "stop", "skip", "clip", "ignore", "adaptive", "module", "parameter"]),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)
ARGUMENTS = [
    "on_vanishing",
    "on_exploding",
    "on_nonfinite",
    "clip",
    "log_every_n_steps",
    "histogram_every_n_steps",
    "granularity",
    "include",
    "exclude",
    "warmup_steps",
    "exploding_zscore",
    "exploding_min_factor",
    "exploding_patience",
    "exploding_growth_steps",
    "exploding_threshold",
    "vanishing_ratio",
    "vanishing_floor",
    "vanishing_patience",
    "clip_zscore",
    "clip_warmup_steps",
    "clip_max_norm",
    "clip_use_loss",
    "amp_overflow_patience",
    "histogram_bins",
    "histogram_sample_size",
    "max_layers",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kwargs=st.dictionaries(st.sampled_from(ARGUMENTS), ANY_VALUE, min_size=1, max_size=2))
@example(kwargs={"include": "warn"})  # matches none of the parameters: refused at fit, not at construction
def test_any_argument_is_usable_or_refused_clearly(tmp_path_factory, kwargs):
    try:
        watch = GradWatch(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        named = [name for name in kwargs if f"`{name}`" in message]
        assert named, f"the message names no argument: {message}"
        assert "got" in message or "must be" in message, message
        return
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path_factory.mktemp("fit"), max_steps=3, logger=False))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd values may set off any of GradWatch's warnings: usable is the point
            trainer.fit(make_mlp_module(pl, record=False))
    except ValueError as err:  # an include/exclude that selects none of the parameters, refused once the model is built
        message = str(err)
        assert [name for name in ("include", "exclude") if name in kwargs and f"`{name}=" in message], message
        return
    assert trainer.global_step == 3


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)
REPORT_KEYS = ["format", "status", "error", "steps", "layers", "alerts", "events", "config", "total_norm"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    doc=st.one_of(
        JSON_VALUE,
        st.fixed_dictionaries({"format": st.just("gradwatch-report")}).flatmap(
            lambda base: st.dictionaries(st.sampled_from(REPORT_KEYS), JSON_VALUE, max_size=6).map(
                lambda extra: {**extra, **base}
            )
        ),
    ),
    command=st.sampled_from(["check", "report"]),
)
def test_any_report_content_gives_a_clean_exit(tmp_path_factory, doc, command):
    run = tmp_path_factory.mktemp("run")
    (run / "gradwatch.json").write_text(json.dumps(doc))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = gradwatch_main([command, str(run)])
    assert code in (0, 1, 2, 3)
    if code == 2:
        assert len(err.getvalue().strip().splitlines()) == 1
        assert err.getvalue().startswith("gradwatch: error: ")
        assert str(run / "gradwatch.json") in err.getvalue()


@pytest.mark.parametrize("text", ["", "{", "\x00\x01binary", '{"format": "gradwatch-report", "layers": [1, 2]}'])
def test_broken_reports_exit_2(tmp_path, text):
    (tmp_path / "gradwatch.json").write_text(text)
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert gradwatch_main(["check", str(tmp_path)]) == 2
    assert math.isfinite(len(err.getvalue()))
    assert err.getvalue().startswith("gradwatch: error: ")
