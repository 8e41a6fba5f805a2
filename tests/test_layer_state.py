"""`gradwatch report` separates now from then: each layer's state over the last steps, apart from its alerts."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from lightning_gradwatch import GradWatch
from lightning_gradwatch.demos import DeepMLP
from tests.helpers import flavour, make_mlp_module, trainer_kwargs
from tests.test_cli import gradwatch

pl = flavour("lightning.pytorch")


def _fit(root: Path, model, steps: int, log_every: int = 2) -> Path:
    trainer = pl.Trainer(
        callbacks=[GradWatch(log_every_n_steps=log_every)],
        **trainer_kwargs(root, max_epochs=50, max_steps=steps),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the alerts are what the tests read back, from the files
        trainer.fit(model)
    return Path(trainer.logger.log_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("states")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        recovered = _fit(root / "recovered", make_mlp_module(pl, optimizer="adam", lr=0.3, batches=1024), 120)
        torch.manual_seed(0)
        dead = _fit(root / "dead", DeepMLP("relu", depth=5, optimizer="adam", lr=0.05), 120)
        torch.manual_seed(0)
        sigmoid = _fit(root / "sigmoid", DeepMLP("sigmoid", depth=11), 80, log_every=5)
    return {"recovered": recovered, "dead": dead, "sigmoid": sigmoid}


def _rows(text: str) -> dict[str, tuple[str, str]]:
    """``{layer: (now, alerts)}`` from the text table."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^(\(total\)|[\w.]+)\s+\d+\s+(?:\S+\s+){5}(ok|small|zero|large|non-finite)\s+(.+)$", line)
        if match:
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def test_recovered_run_is_ok_now_and_still_shows_its_alert(runs):
    # Adam at lr 0.3: the norms exploded at step 1 (71x the first steps'), then settled
    result = gradwatch("report", str(runs["recovered"]))
    assert result.returncode == 0, result.stderr
    assert _rows(result.stdout) == dict.fromkeys(("(total)", "net.0", "net.2", "head"), ("ok", "exploding@1"))
    (doc,) = json.loads(gradwatch("report", str(runs["recovered"]), "--format", "json").stdout)
    layer = doc["layers"][0]
    assert (layer["status"], layer["state"], layer["named_in"]) == ("exploding", "ok", ["exploding@1"])
    assert layer["recent"]["last_step"] == 119
    assert layer["recent"]["points"] >= 5
    assert doc["total_norm"]["all"]["state"] == "ok"


def test_dead_network_is_zero_now(runs):
    # Adam at lr 0.05 on a deep ReLU net: an explosion at step 1 kills every unit; gradients are exactly 0 after
    rows = _rows(gradwatch("report", str(runs["dead"])).stdout)
    assert rows["net.0"] == ("zero", "-")
    assert rows["net.8"] == ("zero", "exploding@1")
    assert rows["(total)"][0] == "zero"


def test_vanishing_layers_are_small_now(runs):
    rows = _rows(gradwatch("report", str(runs["sigmoid"])).stdout)
    alerted = {name for name, (_, alerts) in rows.items() if alerts.startswith("vanishing@")} - {"(total)"}
    small = {name for name, (now, _) in rows.items() if now == "small"}
    assert small == {"net.0", "net.2", "net.4", "net.6"}
    assert alerted - {"net.8"} == small  # net.8 sits at the threshold (1e-5x): small when alerted, at step 19
    assert rows["net.20"] == ("ok", "-")


def test_states_from_event_files_alone_agree(runs, tmp_path):
    for name in ("recovered", "dead", "sigmoid"):
        run = Path(shutil.copytree(runs[name], tmp_path / name))
        expected = _rows(gradwatch("report", str(run)).stdout)
        (run / "gradwatch.json").unlink()
        result = gradwatch("report", str(run))
        assert "(event files" in result.stdout
        found = _rows(result.stdout)
        if name == "sigmoid":  # net.8 sits at the threshold (1.0e-5x the last layer): the window's points decide
            found.pop("net.8"), expected.pop("net.8")
        assert found == expected


def test_report_heading_is_a_legend(runs):
    lines = gradwatch("report", str(runs["recovered"])).stdout.splitlines()
    legend = lines[: lines.index("")]
    assert legend[0] == "gradient health per layer; columns:"
    assert [line.split()[0] for line in legend[1:] if not line.startswith("               ")] == [
        "steps",
        "last..max",
        "grad/weight",
        "now",
        "alerts",
    ]
    assert all(len(line) <= 100 for line in legend)
    title = lines[len(legend) + 1]
    assert title.endswith("(gradwatch.json, 120 steps, finished; now: steps 108-119)")
