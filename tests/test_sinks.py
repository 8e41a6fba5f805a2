"""The sink protocol: a new output is one class; capabilities, not classes, decide what it is given."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from lightning_gradwatch import GradientWarning
from lightning_gradwatch.act.actor import LocalHost
from lightning_gradwatch.config import WatchConfig
from lightning_gradwatch.engine.environment import Environment
from lightning_gradwatch.engine.session import Session
from lightning_gradwatch.write.sinks import BaseSink
from lightning_gradwatch.write.writers import Writers


class Lines(BaseSink):
    """A JSON-lines stream of step scalars: one class in one file is all a new output needs."""

    name = "lines"
    scalars = True

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, step, scalars, histograms):
        self.lines.append(json.dumps({"step": step, **scalars}))


class Broken(BaseSink):
    name = "broken"
    scalars = images = True

    def __init__(self) -> None:
        self.calls = 0

    def write(self, step, scalars, histograms):
        self.calls += 1
        raise OSError("disk full")


def test_writes_go_to_the_sinks_that_show_them():
    lines = Lines()
    writers = Writers([], sinks=[lines])
    assert writers  # steps are written: the engine measures what log steps write
    assert not Writers([])  # no logger and no sink: it measures no more than it must
    assert not writers.wants_images
    assert not writers.reports
    writers.write_step(4, {"gradwatch/total_norm": 2.0}, {})
    writers.write_images(4, {"gradwatch/gradient_flow": b"png"})  # lines shows no images: not given them
    assert [json.loads(line) for line in lines.lines] == [{"step": 4, "gradwatch/total_norm": 2.0}]


def test_a_failing_sink_is_reported_once_and_left_alone():
    broken, lines = Broken(), Lines()
    writers = Writers([], sinks=[broken, lines])
    assert writers.wants_images
    with pytest.warns(GradientWarning, match=r"could not write to broken \(OSError: disk full\)"):
        writers.write_step(0, {"a": 1.0}, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        writers.write_step(1, {"a": 2.0}, {})
    assert broken.calls == 1
    assert len(lines.lines) == 2
    assert not writers.wants_images


def test_a_plain_loop_writes_through_its_own_sink(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lines = Lines()
    session = Session(WatchConfig.from_arguments(images=False, overhead_budget=None))
    session.begin(Environment(log_every=2, hist_every=0, log_dir=str(tmp_path)), sinks=[lines])
    host = LocalHost()
    for step in range(6):
        optimizer.zero_grad()
        model(torch.randn(16, 4)).square().mean().backward()
        session.step(host, optimizer, model, step=step)
        optimizer.step()
    session.end("finished")
    written = [json.loads(line) for line in lines.lines]
    assert [w["step"] for w in written] == [0, 2, 4]
    assert all(math.isfinite(w["gradwatch/total_norm"]) for w in written)
    report = json.loads((tmp_path / "gradwatch.json").read_text())
    assert report["status"] == "finished"
    assert report["steps"]["measured"] == 6
