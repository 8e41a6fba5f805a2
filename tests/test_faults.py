"""Faults in the middle of training and what the gate says after them. Nothing is lost that could be kept.

The fault matrix: SIGKILL, SIGTERM, Ctrl+C, an exception, a full disk and a read-only log directory, in one process
and under two-process DDP, each followed by `gradwatch check`: what is on disk, the verdict, the exit codes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

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


# ---------------------------------------------------------------------- the fault matrix
# Each run is a real training in its own process that meets one fault, followed by `gradwatch check` on what it left.
# scenario: (gate exit code, verdict, gradwatch.json status (None: no file), steps on disk, alerts in the report)
SINGLE = {
    "sigkill_before_alert": (3, "unfinished", None, range(6), []),
    "sigkill_after_alert": (1, "alerts", "running", range(8), [("nonfinite", 3)]),
    "sigkill_second_fit": (3, "unfinished", "running", range(20), []),  # the first fit's "finished" is no pass
    "sigkill_csv": (3, "unfinished", None, range(6), []),  # a CSV logger's metrics.csv alone: no silent pass
    "sigterm": (3, "interrupted", "interrupted", range(7), []),
    "sigint": (3, "interrupted", "interrupted", range(7), []),
    "exception": (3, "failed", "failed", range(5), []),
    "disk_full_tmpfs": (3, "unfinished", None, range(4), []),  # at least the steps flushed before the disk filled
    "unwritable_dir": (3, "unfinished", None, range(4), []),
}
PRIVILEGED = {"disk_full_tmpfs", "unwritable_dir"}  # they mount file systems
TIMEOUT = 120


def _mounting_works(where: Path) -> str | None:
    """None when this process may mount a tmpfs (root, outside a locked-down container), else why not."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and mount(8) to make a real full disk and a read-only directory"
    where.mkdir(parents=True, exist_ok=True)
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if tried.returncode:
        return f"mount is not permitted here ({tried.stderr.decode(errors='replace').strip()})"
    subprocess.run(["umount", str(where)], check=True)
    return None


def _start(script: str, out_dir: Path, scenario: str) -> subprocess.CompletedProcess:
    """Run a fault script in its own session; on timeout, kill its whole process group (no stray ranks left)."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / script), str(out_dir), scenario],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{scenario}: no end within {TIMEOUT} s (a hang)")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _unmount_all_under(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(path))), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess] | str]:
    """Every single-process scenario, two at a time; a scenario that cannot run here maps to the reason."""
    root = tmp_path_factory.mktemp("faults")
    cannot_mount = _mounting_works(root / "probe")
    todo = {s: root / s for s in SINGLE if not (s in PRIVILEGED and cannot_mount)}
    try:
        if "disk_full_tmpfs" in todo:
            todo["disk_full_tmpfs"].mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(todo["disk_full_tmpfs"])], check=True)
        with ThreadPoolExecutor(max_workers=2) as pool:
            done = dict(zip(todo, pool.map(lambda item: _start("fault_script.py", item[1], item[0]), todo.items())))
        runs: dict[str, Any] = {s: (root / s / "lightning_logs" / "version_0", done[s]) for s in todo}
        yield {**runs, **{s: cannot_mount for s in SINGLE if s not in todo}}
    finally:
        _unmount_all_under(root)


def _gate(log_dir: Path, *args: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gradwatch", "check", str(log_dir), "--format", "json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


def _steps_on_disk(log_dir: Path) -> list[int]:
    if (log_dir / "metrics.csv").exists():  # a CSV logger's run
        with (log_dir / "metrics.csv").open(newline="") as f:
            return sorted({int(row["step"]) for row in csv.DictReader(f) if row["gradwatch/total_norm"]})
    return sorted(scalars(events(log_dir), "gradwatch/total_norm"))


def _check_matrix_run(log_dir: Path, expected: tuple) -> None:
    code, verdict, status, steps, alerts = expected
    report = log_dir / "gradwatch.json"
    if status is None:
        assert not report.exists()
    else:
        doc = json.loads(report.read_text())
        assert doc["status"] == status
        assert [(a["kind"], a["step"]) for a in doc["alerts"]] == alerts
    assert [p.name for p in log_dir.iterdir() if p.name.startswith(".gradwatch-")] == []  # no temporary file left
    on_disk = _steps_on_disk(log_dir)
    assert on_disk == list(range(len(on_disk)))  # a prefix of the run: nothing missing in between
    assert set(steps) <= set(on_disk)  # everything flushed before the fault is there
    gate, out = _gate(log_dir)
    assert (gate, [r["verdict"] for r in out["runs"]]) == (code, [verdict])  # never a false "healthy"
    assert out["runs"][0]["steps"]["last"] == on_disk[-1]  # a report older than the logs does not hide steps
    allowed, _ = _gate(log_dir, "--allow-unfinished")
    assert allowed == (1 if alerts else 0)


@pytest.mark.parametrize("scenario", list(SINGLE))
def test_fault_matrix_single_process(matrix, scenario):
    if isinstance(matrix[scenario], str):
        pytest.skip(matrix[scenario])
    log_dir, process = matrix[scenario]
    killed = scenario.startswith("sigkill")
    assert process.returncode == (-signal.SIGKILL if killed else 0), process.stderr[-3000:]
    if not killed:
        out = json.loads(process.stdout.strip().splitlines()[-1])
        ended = {"sigterm": "SIGTERMException", "sigint": "SystemExit", "exception": "RuntimeError"}
        assert out["ended"] == ended.get(scenario, out["ended"]), process.stderr[-3000:]
    _check_matrix_run(log_dir, SINGLE[scenario])


def test_fault_matrix_alert_then_kill_gates_on_the_alert_or_the_kill(matrix):
    if isinstance(matrix["sigkill_after_alert"], str):
        pytest.skip(matrix["sigkill_after_alert"])
    log_dir, _ = matrix["sigkill_after_alert"]
    assert _gate(log_dir, "--fail-on", "vanishing,exploding")[0] == 3  # the kill still fails the gate
    assert _gate(log_dir, "--fail-on", "vanishing,exploding", "--allow-unfinished")[0] == 0


def test_fault_matrix_full_disk_and_read_only_directory_warn_once(matrix):
    for scenario, words in (("disk_full_tmpfs", "No space left on device"), ("unwritable_dir", "Read-only")):
        if isinstance(matrix[scenario], str):
            pytest.skip(matrix[scenario])
        _, process = matrix[scenario]
        out = json.loads(process.stdout.strip().splitlines()[-1])
        assert "Traceback" not in process.stderr, process.stderr[-3000:]  # the warning is all it shows
        assert out["global_step"] == (32 if scenario == "disk_full_tmpfs" else 16)  # training went on to the end
        assert out["alerts"] == [["nonfinite", 10]]  # and so did detection
        writer = [w for w in out["warnings"] if "could not write to TensorBoardLogger" in w]
        report = [w for w in out["warnings"] if "could not write gradwatch.json" in w]
        assert len(writer) == 1
        assert words in writer[0]
        assert len(report) == 1


# scenario: verdicts allowed. Whatever happens, the gate exits 3 (a run that did not finish) and never passes.
# - A rank that dies makes rank 0's next collective fail at once ("failed"), but Lightning's child-process observer
#   also SIGKILLs rank 0 within 5 s of a rank's death: when rank 0 is slower than that (a loaded machine), it leaves
#   no gradwatch.json ("unfinished").
# - SIGTERM to both ranks, as a scheduler sends it: Lightning's handler broadcasts from inside the signal handler,
#   which often times out against the other rank's collectives ("failed"); when it does not, the run records
#   "interrupted" and the job exits 0: only the gate tells that it did not finish.
DDP = {
    "ddp_sigkill": {"failed", "unfinished"},
    "ddp_exception": {"failed", "unfinished"},
    "ddp_sigterm": {"interrupted", "failed", "unfinished"},
}


@pytest.mark.distributed
@pytest.mark.parametrize("scenario", list(DDP))
def test_fault_matrix_ddp(tmp_path, scenario):
    process = _start("ddp_fault_script.py", tmp_path, scenario)
    log_dir = tmp_path / "lightning_logs" / "version_0"
    report = log_dir / "gradwatch.json"
    status = json.loads(report.read_text())["status"] if report.exists() else None
    assert status in {"failed", "interrupted", None}, status  # never "finished"
    if status == "interrupted":
        assert process.returncode == 0
    else:
        assert process.returncode in (1, -signal.SIGKILL), process.stderr[-3000:]
    assert set(range(5)) <= set(_steps_on_disk(log_dir))  # flushed on rank 0 before the fault at step 5
    gate, out = _gate(log_dir)
    (run,) = out["runs"]
    assert gate == 3
    assert run["verdict"] in DDP[scenario]
    assert run["verdict"] == (status or "unfinished")
