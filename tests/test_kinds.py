"""The table of alert kinds and the enums: one place says what each kind is, and data stays plain strings."""

from __future__ import annotations

import json
import pickle
from typing import get_args

import pytest

from lightning_gradwatch import GradientAlert
from lightning_gradwatch.alerts import ALERT_KINDS, remedies
from lightning_gradwatch.kinds import KINDS, AlertKind, Health, Response, RunStatus, by_severity, kind_spec
from lightning_gradwatch.pictures import HEALTH_COLOURS


def test_every_kind_has_one_entry_and_its_argument_allows_its_default():
    assert list(KINDS) == list(AlertKind)
    for kind, spec in KINDS.items():
        assert spec.kind is kind
        assert spec.default in spec.choices
        assert spec.drops <= set(spec.choices)
        assert Response.IGNORE in spec.choices
        assert remedies(kind)  # every kind has hints
    assert [str(k) for k in by_severity()] == ["nonfinite", "exploding", "vanishing"]
    assert ALERT_KINDS == ("vanishing", "exploding", "nonfinite")


def test_the_argument_types_are_the_tables_responses():
    assert get_args(KINDS[AlertKind.VANISHING].responses) == ("warn", "raise", "stop", "ignore")
    assert get_args(KINDS[AlertKind.EXPLODING].responses) == ("warn", "raise", "stop", "skip", "clip", "ignore")
    assert get_args(KINDS[AlertKind.NONFINITE].responses) == ("warn", "raise", "stop", "skip", "ignore")


def test_health_words_and_colours_come_from_the_table():
    assert [str(h) for h in Health] == ["ok", "vanishing", "exploding", "non-finite"]
    assert HEALTH_COLOURS == {"ok": "#4C72B0", "vanishing": "#DD8452", "exploding": "#C44E52", "non-finite": "#8172B3"}


def test_an_unknown_kind_is_refused_not_answered_with_another_kinds_hints():
    with pytest.raises(ValueError, match="'melting' is not a valid AlertKind"):
        remedies("melting")
    with pytest.raises(ValueError, match="not a valid AlertKind"):
        kind_spec("melting")


def test_enums_are_stored_by_value():
    alert = GradientAlert(AlertKind.EXPLODING, 3, ("fc",), 2.0, 1.0, "m", extra={"rule": "spikes"})
    assert type(alert.kind) is str
    assert alert.kind == "exploding" == AlertKind.EXPLODING
    assert json.loads(json.dumps(alert.to_dict()))["kind"] == "exploding"
    assert "kinds" not in str(pickle.dumps(alert))  # a checkpoint holds plain strings
    assert f"{RunStatus.FINISHED}" == str(RunStatus.FINISHED) == "finished"
    assert Response.SKIP in {"skip"}
    assert "skip" in {Response.SKIP}
