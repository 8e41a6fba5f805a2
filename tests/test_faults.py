"""Faults in the middle of training: a full disk, an unwritable report, Ctrl+C. Nothing is lost that could be kept."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import events, scalars

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, scenario: str) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fault_script.py"), str(tmp_path), scenario],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result, json.loads(lines[-1]) if lines else {}


def test_disk_full_mid_run_warns_once_and_training_and_detection_go_on(tmp_path):
    result, out = _run(tmp_path, "disk_full")
    assert out, result.stderr[-3000:]
    assert out["global_step"] == 32  # the whole epoch ran
    assert out["alerts"] == [["nonfinite", 10]]  # detection and the skip response kept working
    writer_warnings = [w for w in out["warnings"] if "could not write to TensorBoardLogger" in w]
    assert len(writer_warnings) == 1
    assert "File too large" in writer_warnings[0]
    report = json.loads(Path(out["log_dir"], "gradwatch.json").read_text())  # small enough to fit
    assert report["status"] == "finished"
    assert [a["step"] for a in report["alerts"]] == [10]
    assert sorted(scalars(events(out["log_dir"]), "gradwatch/total_norm"))[:4] == [0, 1, 2, 3]  # kept on disk


def test_unwritable_report_warns_once_and_training_goes_on(tmp_path):
    result, out = _run(tmp_path, "report_unwritable")
    assert out, result.stderr[-3000:]
    assert out["global_step"] == 32
    assert out["alerts"] == [["nonfinite", 10]]
    report_warnings = [w for w in out["warnings"] if "could not write gradwatch.json" in w]
    assert len(report_warnings) == 1
    leftovers = [p.name for p in Path(out["log_dir"]).iterdir() if p.name.startswith(".gradwatch-")]
    assert leftovers == []  # no half-written temporary file left behind


def test_keyboard_interrupt_flushes_logs_and_writes_the_report(tmp_path):
    result, out = _run(tmp_path, "keyboard_interrupt")
    assert out, result.stderr[-3000:]
    assert out["ended"] == "SystemExit"  # Lightning's graceful shutdown after Ctrl+C
    assert out["global_step"] == 7
    report = json.loads(Path(out["log_dir"], "gradwatch.json").read_text())
    assert report["status"] == "interrupted"
    assert [(a["kind"], a["step"]) for a in report["alerts"]] == [("nonfinite", 3)]
    total = scalars(events(out["log_dir"]), "gradwatch/total_norm")
    assert sorted(total) == [0, 1, 2, 3, 4, 5, 6]  # every step before the interrupt is on disk
    assert math.isnan(total[3])  # the NaN step, shown as such
