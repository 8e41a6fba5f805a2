"""One source of configuration: GradWatch's flat arguments are the configuration groups' fields, defaults and types."""

from __future__ import annotations

import inspect
import re
import typing

import pytest

from lightning_gradwatch import GradWatch
from lightning_gradwatch.clipping import AdaptiveClipThreshold
from lightning_gradwatch.config import ClipConfig, DetectionConfig, MeasureConfig, WatchConfig
from lightning_gradwatch.stats import GradientStats

PARAMETERS = {k: p for k, p in inspect.signature(GradWatch.__init__).parameters.items() if k != "self"}


def _fields() -> dict[str, tuple[type, object, object]]:
    """Every argument field: ``name -> (group, default, resolved type)``."""
    out = {}
    for group in WatchConfig.groups().values():
        hints = typing.get_type_hints(group)
        for f in group.settings():
            if f.metadata["argument"]:
                assert f.name not in out, f"{f.name} is an argument of two groups"
                out[f.name] = (group, f.default, hints[f.name])
    return out


def test_every_argument_is_one_config_field_with_its_default_and_type():
    fields = _fields()
    assert set(PARAMETERS) == set(fields)
    hints = typing.get_type_hints(GradWatch.__init__)
    for name, parameter in PARAMETERS.items():
        group, default, hint = fields[name]
        assert parameter.default == default, f"{name}: GradWatch's default is not {group.__name__}'s"
        assert hints[name] == hint, f"{name}: GradWatch's type {hints[name]} is not {group.__name__}'s {hint}"


def test_every_argument_and_detection_constant_is_documented():
    documented = set(re.findall(r"^ {8}(\w+):", GradWatch.__doc__, flags=re.M))
    assert set(PARAMETERS) <= documented
    constants = set(re.findall(r"^ {8}(\w+):", DetectionConfig.__doc__, flags=re.M))
    assert {f.name for f in DetectionConfig.settings()} <= constants


def test_the_arguments_land_in_their_groups_and_read_back():
    watch = GradWatch(on_exploding="clip", clip=0.5, max_layers=12, vanishing_patience=7, images=False)
    assert watch.settings.responses.on_exploding == "clip"
    assert watch.settings.clipping.fixed == 0.5
    assert watch.settings.measure.max_layers == 12
    assert watch.detection.vanishing_patience == 7
    assert (watch.on_exploding, watch.clip, watch.images) == ("clip", 0.5, False)  # as attributes too
    assert watch.config() == WatchConfig.from_arguments(**{k: watch.settings.argument(k) for k in PARAMETERS}).to_dict()
    with pytest.raises(AttributeError):
        _ = watch.no_such_argument


def test_the_parts_take_their_defaults_from_the_configuration():
    clipper = inspect.signature(AdaptiveClipThreshold).parameters
    assert clipper["zscore"].default == ClipConfig.clip_zscore
    assert clipper["warmup_steps"].default == ClipConfig.clip_warmup_steps
    assert clipper["use_loss"].default == ClipConfig.clip_use_loss
    built = AdaptiveClipThreshold.from_config(ClipConfig(clip="adaptive", clip_use_loss=False, clip_window=7))
    assert (built.use_loss, built.settings.clip_window) == (False, 7)
    stats = inspect.signature(GradientStats).parameters
    assert stats["histogram_bins"].default == MeasureConfig.histogram_bins
    assert stats["histogram_sample_size"].default == MeasureConfig.histogram_sample_size
    assert stats["max_layers"].default is None  # the measuring primitive keeps every layer unless asked


def test_config_report_keeps_its_keys_in_order():
    keys = list(GradWatch().config())
    assert keys[:3] == ["on_vanishing", "on_exploding", "on_nonfinite"]
    assert keys[-5:] == ["collapse_ratio", "collapse_loss_fraction", "stall_steps", "stall_decades", "stall_tolerance"]
    assert len(keys) == len(set(keys)) == 78
