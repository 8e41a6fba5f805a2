"""`gradwatch report/check --html FILE`: one self-contained page per set of runs, opened in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import DeepMLP
from lightning_gradwatch.html_report import MAX_COLUMNS, run_data
from lightning_gradwatch.runs import load_run
from tests.helpers import flavour, make_mlp_module, trainer_kwargs
from tests.synthetic_runs import write_synthetic_run
from tests.test_cli import gradwatch
from tests.test_tensorboard_server import CHROMIUM, chromium

pl = flavour("lightning.pytorch")
VIRIDIS_ENDS = {"dark": (68, 1, 84), "bright": (253, 231, 37)}


def _fit(root: Path, model, steps: int, log_every: int, **watch) -> Path:
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=log_every, **watch)],
        **trainer_kwargs(root, max_epochs=50, max_steps=steps),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the alerts are read back from the files
        trainer.fit(model)
    return Path(trainer.logger.log_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("html")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        sigmoid = _fit(root / "sigmoid", DeepMLP("sigmoid", depth=11), 80, 5)  # the demo's failure, briefly
        torch.manual_seed(0)
        clipped = _fit(
            root / "clipped", make_mlp_module(pl, nan_at_step=5), 16, 1, clip="adaptive", on_nonfinite="skip"
        )
    return {"root": root, "sigmoid": sigmoid, "clipped": clipped}


def test_html_report_is_one_self_contained_file(runs, tmp_path):
    page = tmp_path / "report.html"
    result = gradwatch("report", str(runs["root"]), "--html", str(page))
    assert result.returncode == 0, result.stderr
    size = page.stat().st_size
    assert result.stdout.splitlines()[-1] == f"HTML report: {page} ({size / 1000:.0f} kB)"
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"https?:|<link|\bsrc=|@import|url\(|fetch\(|XMLHttpRequest", text)  # nothing fetched
    assert text.count('<section class="run"') == 2
    for phrase in ("Vanishing gradients at step 19", "Remedies:", "add residual (skip) connections", "net.0"):
        assert phrase in text
    assert '<span class="verdict alerts">alerts</span>' in text
    assert "Gradient flow" in text
    assert "Total gradient norm" in text


def test_sigmoid_run_data_shows_the_ladder_of_decades(runs):
    data = run_data(load_run(runs["sigmoid"], series=True))
    assert data["source"] == "event files"
    assert data["columns"] == sorted([*range(0, 80, 5), 19])  # one column per logged step, the alerted one too
    codes = np.frombuffer(__import__("base64").b64decode(data["norms"]), dtype="<u2").reshape(11, -1)
    log10 = data["low"] + codes / 65000 * (data["high"] - data["low"])
    assert log10[-1].mean() - log10[0].mean() > 6  # the first layer is more than 6 decades below the last
    assert [bool(m) for m in data["marked"]] == [True] * 5 + [False] * 6  # net.8: alerted at step 19, at 1e-5x
    assert data["marked"][0] == "small; vanishing@19"
    assert data["alerts"] == [{"step": 19, "kind": "vanishing"}]


def test_thresholds_and_nonfinite_steps_are_drawn_from_the_event_files(runs):
    data = run_data(load_run(runs["clipped"], series=True))
    assert set(data["totals"]["all"]) == {"mean", "max", "clip", "spike"}
    codes = np.frombuffer(__import__("base64").b64decode(data["norms"]), dtype="<u2").reshape(3, -1)
    assert (codes[:, 5] == 65534).all()  # the NaN step, in every layer: drawn red
    assert data["marked"] == ["nonfinite@5"] * 3


def test_a_run_logged_once_is_drawn_from_its_history_of_every_step(tmp_path):
    """An interval longer than the run (the Trainer's log_every_n_steps=500 on 60 steps) logs step 0 alone: the
    page's charts were one column, their lines empty, while gradwatch.json held 60 measured steps."""
    torch.manual_seed(0)
    trainer = pl.Trainer(callbacks=[GradWatch()], **trainer_kwargs(tmp_path, max_steps=60, log_every_n_steps=500))
    trainer.fit(make_mlp_module(pl, batches=960))
    data = run_data(load_run(Path(trainer.logger.log_dir), series=True))
    assert data["source"] == "gradwatch.json history"
    assert len(data["columns"]) == 60
    assert data["last_step"] == 59
    codes = np.frombuffer(__import__("base64").b64decode(data["norms"]), dtype="<u2").reshape(3, -1)
    assert (codes < 65000).all()  # every layer has a finite norm in every column


def test_long_wide_run_stays_small(tmp_path):
    run = write_synthetic_run(tmp_path / "long", steps=10_000, layers=200, log_every=10)
    page = tmp_path / "long.html"
    result = gradwatch("report", str(run), "--html", str(page))
    assert result.returncode == 0, result.stderr
    assert page.stat().st_size < 2_000_000
    data = json.loads(re.search(r'class="gradwatch-data" data-run="0">(.*?)</script>', page.read_text()).group(1))
    assert len(data["columns"]) == MAX_COLUMNS  # 1000 logged steps, in columns of 20 steps
    assert data["columns"][:3] == [0, 20, 40]
    assert "500 columns of 20 steps" in page.read_text()


def test_check_names_the_html_file_in_every_format(runs, tmp_path):
    page, summary = tmp_path / "report.html", tmp_path / "summary.md"
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    result = gradwatch("check", str(runs["root"]), "--format", "github", "--html", str(page), env=env)
    assert result.returncode == 1
    assert page.exists()
    assert f"::notice title=GradWatch HTML report::{page} (" in result.stdout
    text = summary.read_text()
    assert f"**Pictures of each run**: `{page}` (" in text
    assert "Open it from this run's artifacts." in text
    doc = json.loads(gradwatch("check", str(runs["root"]), "--format", "json", "--html", str(page)).stdout)
    assert doc["html"] == str(page)
    assert (
        gradwatch("check", str(runs["root"]), "--html", str(page))
        .stdout.splitlines()[-1]
        .startswith(f"HTML report: {page} (")
    )
    assert '<p class="gate fail"><b>FAIL</b> (exit code 1)' in page.read_text()


def test_unreadable_run_has_its_section(runs, tmp_path):
    broken = Path(shutil.copytree(runs["clipped"], tmp_path / "runs" / "broken"))
    (broken / "gradwatch.json").write_text("{")
    page = tmp_path / "report.html"
    result = gradwatch("check", str(tmp_path / "runs"), str(runs["sigmoid"]), "--html", str(page))
    assert result.returncode == 2
    text = page.read_text()
    assert '<span class="verdict unreadable">unreadable</span>' in text
    assert "is not valid JSON" in text
    assert text.count('<section class="run"') == 2


def test_unwritable_html_file_exits_2_before_any_output(runs, tmp_path):
    target = tmp_path / "no" / "such" / "report.html"
    result = gradwatch("check", str(runs["sigmoid"]), "--html", str(target))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"gradwatch: error: --html {target}: cannot write the HTML report")


def _rgb(png: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(png) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.mark.browser
@pytest.mark.timeout(240)
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_browser_shows_the_sigmoid_failure_at_a_glance(runs, tmp_path):
    page = tmp_path / "sigmoid.html"
    assert gradwatch("report", str(runs["sigmoid"]), "--html", str(page)).returncode == 0
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-drawn="true"' in dom.stdout  # the script ran to its end
    assert "vanishing</b>: Vanishing gradients at step 19" in dom.stdout
    shot = tmp_path / "sigmoid.png"
    result = chromium(
        "--virtual-time-budget=5000",
        "--window-size=1200,1000",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        page.as_uri(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pixels = _rgb(shot)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # charts, not a blank page
    # the heatmap: the rows of the screenshot that are mostly viridis colours (a row per layer, first layer on top)
    stops = np.array(
        [
            [68, 1, 84],
            [72, 40, 120],
            [62, 74, 137],
            [49, 104, 142],
            [38, 130, 142],
            [31, 158, 137],
            [53, 183, 121],
            [109, 205, 89],
            [180, 222, 44],
            [253, 231, 37],
        ]
    )
    distance = np.min(np.linalg.norm(pixels[:, :, None, :] - stops[None, None], axis=-1), axis=-1)
    rows = np.flatnonzero((distance < 40).mean(axis=1) > 0.5)
    assert len(rows) > 100
    heatmap = pixels[rows[0] : rows[-1] + 1][:, (distance[rows] < 40).mean(axis=0) > 0.9]
    brightness = heatmap.sum(axis=-1).mean(axis=1)
    top, bottom = brightness[: len(brightness) // 11].mean(), brightness[-(len(brightness) // 11) :].mean()
    assert top < 250 < 400 < bottom  # net.0 dark purple (1e-8), net.20 yellow-green (1e-1): decades apart
    flag = np.all(np.abs(pixels - [43, 108, 176]) < 12, axis=-1)  # the vanishing alert's flag and line
    assert flag.sum() > 100
