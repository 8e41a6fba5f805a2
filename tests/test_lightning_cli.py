"""GradWatch configured from a LightningCLI YAML file: the example CI job, in-process and as a script."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_gradwatch import GradWatch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIG = EXAMPLES / "ci_smoke.yaml"


def _ci_smoke():
    spec = importlib.util.spec_from_file_location("ci_smoke", EXAMPLES / "ci_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "ci_smoke.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_yaml_configures_every_response(tmp_path):
    cli = _ci_smoke().main(
        ["fit", "--config", str(CONFIG), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=8"]
    )
    (watch,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, GradWatch)]
    assert (watch.on_nonfinite, watch.on_exploding, watch.on_vanishing) == ("raise", "stop", "warn")
    assert watch.detection.vanishing_patience == 20
    assert cli.trainer.global_step == 8
    assert watch.alerts == []
    assert list(tmp_path.rglob("gradwatch.json"))


def test_ci_job_fails_with_the_alert_and_the_check_agrees(tmp_path):
    result = _script("fit", "--config", str(CONFIG), f"--trainer.default_root_dir={tmp_path}", "--model.nan_at_step=4")
    assert result.returncode != 0
    assert "GradientAlertError" in result.stderr
    assert "Non-finite gradients (NaN/Inf) at step 4" in result.stderr
    check = subprocess.run(
        [sys.executable, "-m", "lightning_gradwatch", "check", str(tmp_path)], capture_output=True, text=True
    )
    assert check.returncode == 1
    assert "step 4" in check.stdout


def test_ci_job_healthy_passes(tmp_path):
    result = _script("fit", "--config", str(CONFIG), f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=20")
    assert result.returncode == 0, result.stderr[-2000:]
    check = subprocess.run(
        [sys.executable, "-m", "lightning_gradwatch", "check", str(tmp_path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout


def test_yaml_with_a_wrong_value_is_refused_with_the_choices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("on_nonfinite: raise", "on_nonfinite: explode"))
    result = _script("fit", "--config", str(bad), f"--trainer.default_root_dir={tmp_path}")
    assert result.returncode != 0
    assert "on_nonfinite" in result.stderr
    assert "explode" in result.stderr


@pytest.mark.parametrize("name", ["lightning.pytorch", "pytorch_lightning"])
def test_gradwatch_is_a_callback_of_each_flavour(name):
    module = importlib.import_module(name)
    assert isinstance(GradWatch(), module.Callback)
