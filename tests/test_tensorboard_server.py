"""A real TensorBoard server serves every kind of GradWatch output (HTTP API), and, opt-in, renders it in Chromium."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from lightning_gradwatch import GradWatch
from tests.helpers import events, flavour, make_mlp_module, scalars, trainer_kwargs
from tests.tensorboard_server import TensorBoardServer

pl = flavour("lightning.pytorch")
LAYERS = ("net.0", "net.2", "head")


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tb")
    watch = GradWatch(on_nonfinite="skip", log_every_n_steps=2, histogram_every_n_steps=4)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(root))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NaN run TensorBoard serves; the alert is not the point
        trainer.fit(make_mlp_module(pl, nan_at_step=9))
    return Path(trainer.logger.log_dir)


@pytest.mark.timeout(180)
def test_tensorboard_serves_every_kind_of_output(logdir):
    run = "."
    with TensorBoardServer(logdir) as tb:
        tags = tb.wait_for("/data/plugin/scalars/tags", lambda d: "gradwatch/total_norm" in d.get(run, {}))
        for layer in LAYERS:
            for family in ("grad_norm", "grad_to_weight", "param_norm", "grad_max_abs", "grad_zero_fraction"):
                assert f"{family}/{layer}" in tags[run]
        query = urllib.parse.urlencode({"run": run, "tag": "gradwatch/total_norm"})
        served = {step: float(value) for _, step, value in tb.json(f"/data/plugin/scalars/scalars?{query}")}
        assert served == pytest.approx(scalars(events(logdir), "gradwatch/total_norm"), nan_ok=True)
        assert math.isnan(served[9])  # the NaN step, charted at its own step between two log steps ("NaN" in JSON)

        hist_tags = tb.json("/data/plugin/histograms/tags")[run]
        assert {f"grad_hist/{layer}" for layer in LAYERS} <= set(hist_tags)
        query = urllib.parse.urlencode({"run": run, "tag": "grad_hist/head"})
        assert [h[1] for h in tb.json(f"/data/plugin/histograms/histograms?{query}")] == [0, 4, 8, 12]

        image_tags = tb.json("/data/plugin/images/tags")[run]
        assert {"gradwatch/gradient_flow", "gradwatch/gradient_heatmap"} <= set(image_tags)
        query = urllib.parse.urlencode({"run": run, "tag": "gradwatch/gradient_flow", "sample": 0})
        images = tb.json(f"/data/plugin/images/images?{query}")
        assert images
        png = tb.get(f"/data/plugin/images/individualImage?{images[-1]['query']}")
        assert png.startswith(b"\x89PNG")

        layout = tb.json("/data/plugin/custom_scalars/layout")
        charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
        assert charts["gradient L2 norm"] == ["grad_norm/.*"]

        assert "gradwatch/alerts" in tb.json("/data/plugin/text/tags")[run]
        query = urllib.parse.urlencode({"run": run, "tag": "gradwatch/alerts"})
        (entry,) = tb.json(f"/data/plugin/text/text?{query}")
        assert entry["step"] == 9
        assert "nonfinite" in entry["text"]
    assert tb.process.poll() is not None  # stopped


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Headless Chromium with no background networking (this machine has no internet)."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    try:
        return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
@pytest.mark.timeout(240)
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_browser_renders_gradwatch_charts(logdir, tmp_path):
    with TensorBoardServer(logdir) as tb:
        tb.wait_for("/data/plugin/scalars/tags", lambda d: "gradwatch/total_norm" in d.get(".", {}))
        dom = chromium("--virtual-time-budget=15000", "--dump-dom", f"{tb.url}/?darkMode=false#timeseries")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "grad_norm" in dom.stdout
        assert "gradwatch" in dom.stdout
        shot = tmp_path / "scalars.png"
        result = chromium(
            "--virtual-time-budget=15000",
            "--window-size=1400,900",
            f"--screenshot={shot}",
            f"{tb.url}/#custom_scalars",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert shot.stat().st_size > 10_000
        assert os.path.getsize(shot) > 0
