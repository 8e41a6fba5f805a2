"""The `gradwatch` command, called as a subprocess on runs written by real trainings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_gradwatch import GradWatch
from tests.helpers import flavour, make_mlp_module, trainer_kwargs

pl = flavour("lightning.pytorch")
GRADWATCH = shutil.which("gradwatch", path=os.path.dirname(sys.executable)) or "gradwatch"


def gradwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_gradwatch", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _train(root: Path, **model_kwargs) -> Path:
    watch = GradWatch(on_nonfinite="skip", log_every_n_steps=2)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(root))
    trainer.fit(make_mlp_module(pl, **model_kwargs))
    return Path(trainer.logger.log_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "root": root,
        "healthy": _train(root / "healthy"),
        "nan": _train(root / "nan", nan_at_step=5),
    }


def test_check_healthy_run_exits_0(runs):
    result = gradwatch("check", str(runs["healthy"]))
    assert result.returncode == 0, result.stderr
    assert "healthy" in result.stdout
    assert result.stdout.strip().endswith("with alerts of kind exploding, nonfinite, vanishing")
    assert result.stdout.splitlines()[-1].startswith("PASS")


def test_check_alerting_run_exits_1_with_readable_reason(runs):
    result = gradwatch("check", str(runs["nan"]))
    assert result.returncode == 1
    assert "[FAIL] step 5: Non-finite gradients (NaN/Inf) at step 5" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("FAIL: 1 of 1 run(s)")


def test_check_fail_on_filters_kinds(runs):
    assert gradwatch("check", str(runs["nan"]), "--fail-on", "vanishing,exploding").returncode == 0
    assert gradwatch("check", str(runs["nan"]), "--fail-on", "nonfinite").returncode == 1


def test_check_parent_of_many_runs(runs):
    result = gradwatch("check", str(runs["root"]), "--format", "json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["result"] == "fail"
    by_path = {Path(r["path"]): r for r in doc["runs"]}
    assert set(by_path) == {runs["healthy"], runs["nan"]}
    assert by_path[runs["healthy"]]["failing"] is False
    assert [a["kind"] for a in by_path[runs["nan"]]["alerts"]] == ["nonfinite"]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["check", "/no/such/dir"], "no such file or directory"),
        (["check"], "the following arguments are required: PATH"),
        (["check", ".", "--fail-on", "bogus"], "--fail-on takes a comma-separated list"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_check_bad_usage_exits_2_with_one_line(args, reason):
    result = gradwatch(*args)
    assert result.returncode == 2
    assert reason in result.stderr
    assert result.stdout == ""


def test_check_directory_without_runs_exits_2(tmp_path):
    result = gradwatch("check", str(tmp_path))
    assert result.returncode == 2
    assert "no GradWatch run" in result.stderr


def test_check_corrupt_report_exits_2(runs, tmp_path):
    run = Path(shutil.copytree(runs["healthy"], tmp_path / "run"))
    (run / "gradwatch.json").write_text('{"format": "gradwatch-report", "layers": [')
    result = gradwatch("check", str(run))
    assert result.returncode == 2
    assert "is not valid JSON" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    (run / "gradwatch.json").write_text('{"something": "else"}')
    assert "is not a GradWatch report" in gradwatch("check", str(run)).stderr


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_check_corrupt_event_file_exits_2(runs, tmp_path, damage):
    run = Path(shutil.copytree(runs["healthy"], tmp_path / "run"))
    event_file = next(run.glob("events.out.tfevents.*"))
    data = bytearray(event_file.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x55
    else:
        data = data[: len(data) - 7]
    event_file.write_bytes(bytes(data))
    result = gradwatch("check", str(run))
    assert result.returncode == 2
    assert re.search(r"(corrupt|truncated) event file", result.stderr)


def test_check_github_format_and_step_summary(runs, tmp_path):
    summary = tmp_path / "summary.md"
    result = gradwatch("check", str(runs["root"]), "--format", "github", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines
    command = re.compile(r"^::(error|warning|notice) title=[^:,\n]*::[^\n]*$")
    assert all(command.match(line) for line in lines), lines
    assert lines[0].startswith("::error title=GradWatch nonfinite gradients at step 5")
    assert "%0ARemedies%3A" not in lines[0]  # data is escaped, not as a property
    assert "%0ARemedies:" in lines[0]
    text = summary.read_text()
    assert "## GradWatch gradient health" in text
    assert "**FAIL**: 1 of 2 run(s)" in text


def test_report_names_layers_and_remedies(runs):
    result = gradwatch("report", str(runs["nan"]))
    assert result.returncode == 0
    out = result.stdout
    for layer in ("net.0", "net.2", "head"):
        assert re.search(rf"^{re.escape(layer)}\s+\S+", out, re.M)
    assert "non-finite" in out
    assert "Remedies:" in out
    assert "step 5, nonfinite" in out


def test_report_from_event_files_alone(runs, tmp_path):
    run = Path(shutil.copytree(runs["nan"], tmp_path / "run"))
    (run / "gradwatch.json").unlink()
    result = gradwatch("report", str(run), "--format", "json")
    assert result.returncode == 0, result.stderr
    (doc,) = json.loads(result.stdout)
    assert doc["source"] == "events"
    assert [layer["name"] for layer in doc["layers"]] == ["net.0", "net.2", "head"]
    assert [(a["kind"], a["step"]) for a in doc["alerts"]] == [("nonfinite", 5)]
    assert doc["alerts"][0]["layers"] == ["net.0", "net.2", "head"]
    assert gradwatch("check", str(run)).returncode == 1


def test_installed_entry_point(runs):
    result = subprocess.run([GRADWATCH, "check", str(runs["healthy"])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
