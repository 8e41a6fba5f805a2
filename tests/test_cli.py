"""The `gradwatch` command, called as a subprocess on runs written by real trainings."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_gradwatch import GradientAlert, GradientWarning, GradWatch
from lightning_gradwatch.alerts import alert_markdown
from tests.helpers import events, flavour, make_mlp_module, regression_data, trainer_kwargs

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


def _alerting(root: Path) -> Path:
    with pytest.warns(GradientWarning, match="Non-finite gradients .* at step 5"):  # the alert the checks read back
        return _train(root, nan_at_step=5)


def _train_failing(root: Path) -> Path:
    watch = GradWatch(log_every_n_steps=2)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(root))
    with pytest.raises(RuntimeError, match="boom at step 5"):
        trainer.fit(make_mlp_module(pl, fail_at_step=5))
    return Path(trainer.logger.log_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "root": root,
        "healthy": _train(root / "healthy"),
        "nan": _alerting(root / "nan"),
        "failed": _train_failing(tmp_path_factory.mktemp("failed")),
    }


def _copy(run: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


def _set_status(run: Path, status: str) -> None:
    doc = json.loads((run / "gradwatch.json").read_text())
    doc["status"] = status
    (run / "gradwatch.json").write_text(json.dumps(doc))


def test_check_healthy_run_exits_0(runs):
    result = gradwatch("check", str(runs["healthy"]))
    assert result.returncode == 0, result.stderr
    assert "healthy" in result.stdout
    assert result.stdout.strip().endswith("with alerts (failing kinds: exploding, nonfinite, vanishing)")
    assert result.stdout.splitlines()[-1].startswith("PASS")


def test_check_says_how_many_steps_a_response_clipped_in_a_healthy_run(tmp_path):
    """A spike that ``on_exploding="clip"`` clipped is no alert: the run passes, and its line says it was clipped."""
    model = make_mlp_module(pl, lr=1e-6)
    plain_step = model.training_step
    model.training_step = lambda *args: plain_step(*args) * (1e4 if model.global_step == 12 else 1.0)
    trainer = pl.Trainer(callbacks=[GradWatch(on_exploding="clip", warmup_steps=5)], **trainer_kwargs(tmp_path))
    trainer.fit(model)
    result = gradwatch("check", trainer.logger.log_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{trainer.logger.log_dir}: healthy (3 layers, 16 steps, 1 step clipped)" in result.stdout.splitlines()


def test_check_alerting_run_exits_1_with_readable_reason(runs):
    result = gradwatch("check", str(runs["nan"]))
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if line.startswith("  [FAIL] "))
    assert line.startswith("  [FAIL] Non-finite gradients (NaN/Inf) at step 5: ")
    assert line.count("step 5") == 1  # said once, by the message
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


def test_check_a_named_path_without_runs_beside_a_healthy_run_exits_2(runs, tmp_path):
    """Every path named must hold a run: one that holds none (a typo, a run logged elsewhere) is no silent pass."""
    empty = tmp_path / "empty"
    empty.mkdir()
    from torch.utils.tensorboard import SummaryWriter

    foreign = tmp_path / "foreign"  # the event files of a run logged without GradWatch
    with SummaryWriter(str(foreign)) as writer:
        writer.add_scalar("train_loss", 0.5, 0)
    for other in (empty, foreign):
        result = gradwatch("check", str(runs["healthy"]), str(other))
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"no GradWatch run (gradwatch.json, GradWatch event files or metrics.csv) under {other}" in result.stderr
    both = gradwatch("check", str(runs["healthy"]), str(runs["root"]))  # a run named twice is checked once
    assert both.returncode == 1
    assert both.stdout.count(str(runs["healthy"])) == 1


def _unreadable(result: subprocess.CompletedProcess, run: Path, name: str) -> None:
    """Exit 2; the run's verdict on stdout with the reason; the reason on stderr too, in one line."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{run}: unreadable: " in result.stdout
    assert name in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("gradwatch: error: ")
    assert name in line


def test_check_corrupt_report_exits_2(runs, tmp_path):
    run = Path(shutil.copytree(runs["healthy"], tmp_path / "run"))
    (run / "gradwatch.json").write_text('{"format": "gradwatch-report", "layers": [')
    result = gradwatch("check", str(run))
    _unreadable(result, run, str(run / "gradwatch.json"))
    assert "is not valid JSON" in result.stderr
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
    _unreadable(result, run, str(event_file))
    assert re.search(r"(corrupt|truncated) event file", result.stderr)


# ---------------------------------------------------------------------- every verdict printed
@pytest.fixture
def five_runs(runs, tmp_path) -> dict[str, Path]:
    """3 healthy runs, 1 with a nonfinite alert and 1 whose gradwatch.json was cut short, under one parent."""
    parent = tmp_path / "runs"
    found = {f"healthy{i}": _copy(runs["healthy"], parent, f"healthy{i}") for i in range(3)}
    found["nan"] = _copy(runs["nan"], parent, "nan")
    found["truncated"] = _copy(runs["healthy"], parent, "truncated")
    report = found["truncated"] / "gradwatch.json"
    report.write_bytes(report.read_bytes()[:300])  # a copy interrupted mid-file
    return {"parent": parent, **found}


@pytest.mark.parametrize("allow", [[], ["--allow-unfinished"]])
def test_check_unreadable_run_is_one_verdict_among_the_others(five_runs, allow):
    runs, truncated = five_runs, str(five_runs["truncated"] / "gradwatch.json")
    result = gradwatch("check", str(runs["parent"]), *allow)
    _unreadable(result, runs["truncated"], truncated)
    lines = result.stdout.splitlines()
    for i in range(3):
        assert f"{runs[f'healthy{i}']}: healthy (3 layers, 16 steps)" in lines
    assert f"{runs['nan']}: 1 alert(s): nonfinite (3 layers, 16 steps, 1 step skipped)" in lines
    assert any(line.startswith("  [FAIL] Non-finite gradients (NaN/Inf) at step 5") for line in lines)
    assert f"{runs['truncated']}: unreadable: {truncated} is not valid JSON" in result.stdout
    assert lines[-1].startswith(
        "UNREADABLE: 1 of 5 run(s) with alerts (failing kinds: exploding, nonfinite, vanishing)"
    )
    assert lines[-1].endswith("could not be read: 1")

    as_json = gradwatch("check", str(runs["parent"]), "--format", "json", *allow)
    assert as_json.returncode == 2
    doc = json.loads(as_json.stdout)
    assert (doc["result"], doc["exit_code"]) == ("unreadable", 2)
    assert doc["verdicts"] == {
        "healthy": 3,
        "alerts": 1,
        "unfinished": 0,
        "interrupted": 0,
        "failed": 0,
        "unmeasured": 0,
        "unreadable": 1,
    }
    by_path = {Path(r["path"]): r for r in doc["runs"]}
    assert (by_path[runs["nan"]]["verdict"], by_path[runs["nan"]]["failing"]) == ("alerts", True)
    broken = by_path[runs["truncated"]]
    assert (broken["verdict"], broken["failing"]) == ("unreadable", True)
    assert broken["unreadable"].startswith(f"{truncated} is not valid JSON")
    assert truncated in as_json.stderr


def test_check_github_names_every_run_and_the_unreadable_one(five_runs, tmp_path):
    summary = tmp_path / "summary.md"
    result = gradwatch(
        "check", str(five_runs["parent"]), "--format", "github", env={"GITHUB_STEP_SUMMARY": str(summary)}
    )
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"::error title=GradWatch nonfinite gradients at step 5 ({five_runs['nan']})")
    assert lines[1].startswith(f"::error title=GradWatch run unreadable ({five_runs['truncated']})::")
    assert "is not valid JSON" in lines[1]
    text = summary.read_text()
    assert "**UNREADABLE**: 1 of 5 run(s)" in text
    assert f"| `{five_runs['nan']}` | alerts | 1 | nonfinite at step 5" in text
    assert f"| `{five_runs['truncated']}` | unreadable | - | {five_runs['truncated']}/gradwatch.json is not" in text
    assert text.count("| healthy | 0 | none |") == 3


def test_unreadable_wins_over_unfinished(runs, five_runs):
    result = gradwatch("check", str(five_runs["truncated"]), str(runs["failed"]))
    assert result.returncode == 2
    assert f"{runs['failed']}: failed: training ended with an exception" in result.stdout


def test_report_prints_the_readable_runs_and_exits_2(five_runs):
    result = gradwatch("report", str(five_runs["parent"]))
    assert result.returncode == 2
    assert result.stdout.count("(gradwatch.json, 16 steps, finished; now: steps ") == 4
    assert f"{five_runs['truncated']}  (unreadable)" in result.stdout
    as_json = gradwatch("report", str(five_runs["parent"]), "--format", "json")
    assert as_json.returncode == 2
    docs = json.loads(as_json.stdout)
    assert [d["unreadable"] is not None for d in docs] == [False, False, False, False, True]


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
    assert "\n- Non-finite gradients (NaN/Inf) at step 5: " in out
    assert re.search(r"^net\.0 .* nonfinite@5$", out, re.M)  # then; the run went on healthy after the skipped step
    assert re.search(r"^net\.0 .*  ok  ", out, re.M)


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


# ---------------------------------------------------------------------- runs that did not finish
def test_check_run_without_report_is_unfinished_not_healthy(runs, tmp_path):
    run = _copy(runs["healthy"], tmp_path)
    (run / "gradwatch.json").unlink()  # what a job killed before its first alert leaves
    result = gradwatch("check", str(run))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "healthy" not in result.stdout
    assert f"{run}: unfinished: no gradwatch.json" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("UNFINISHED: 0 of 1 run(s) with alerts")
    assert result.stdout.splitlines()[-1].endswith("did not finish: 1 unfinished")
    allowed = gradwatch("check", str(run), "--allow-unfinished")
    assert allowed.returncode == 0
    assert allowed.stdout.splitlines()[-1].endswith("(allowed by --allow-unfinished)")


def test_check_report_still_running_is_unfinished(runs, tmp_path):
    run = _copy(runs["healthy"], tmp_path)
    _set_status(run, "running")  # written at an alert; a job killed after it keeps it
    result = gradwatch("check", str(run), "--format", "json")
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert (doc["result"], doc["exit_code"]) == ("unfinished", 3)
    assert [(r["verdict"], r["failing"]) for r in doc["runs"]] == [("unfinished", True)]
    _set_status(run, "something new")  # a status this version does not know is not taken for "finished"
    assert gradwatch("check", str(run)).returncode == 3


def test_check_run_that_raised_is_failed(runs):
    result = gradwatch("check", str(runs["failed"]))
    assert result.returncode == 3, result.stdout + result.stderr
    line = result.stdout.splitlines()[0]
    assert line.startswith(f"{runs['failed']}: failed: training ended with an exception: RuntimeError: boom at step 5")
    assert "PASS" not in result.stdout
    assert gradwatch("check", str(runs["failed"]), "--allow-unfinished").returncode == 0


def test_check_interrupted_run(runs, tmp_path):
    run = _copy(runs["healthy"], tmp_path)
    _set_status(run, "interrupted")
    result = gradwatch("check", str(run))
    assert result.returncode == 3
    assert ": interrupted: training was interrupted (Ctrl+C or SIGTERM)" in result.stdout


def test_check_alerts_win_over_unfinished(runs, tmp_path):
    nan = _copy(runs["nan"], tmp_path, "nan")
    _set_status(nan, "running")
    result = gradwatch("check", str(nan), str(runs["failed"]), "--format", "json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert [r["verdict"] for r in doc["runs"]] == ["alerts", "failed"]
    assert doc["verdicts"] == {
        "healthy": 0,
        "alerts": 1,
        "unfinished": 0,
        "interrupted": 0,
        "failed": 1,
        "unmeasured": 0,
        "unreadable": 0,
    }
    # the alert's kind is not gated on: the run that did not finish decides
    assert gradwatch("check", str(nan), "--fail-on", "vanishing").returncode == 3
    assert gradwatch("check", str(nan), "--fail-on", "vanishing", "--allow-unfinished").returncode == 0


def test_check_github_annotates_unfinished_runs(runs, tmp_path):
    summary = tmp_path / "summary.md"
    result = gradwatch("check", str(runs["failed"]), "--format", "github", env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 3
    assert result.stdout.startswith("::error title=GradWatch run failed (")
    assert "::notice" not in result.stdout
    assert "| failed | 0 | none |" in summary.read_text()
    assert "**UNFINISHED**: 0 of 1 run(s)" in summary.read_text()


def test_check_event_file_cut_short_by_a_kill_is_unfinished(runs, tmp_path):
    run = _copy(runs["healthy"], tmp_path)
    (run / "gradwatch.json").unlink()
    event_file = next(run.glob("events.out.tfevents.*"))
    event_file.write_bytes(event_file.read_bytes()[:-7])  # a process killed while writing a record
    result = gradwatch("check", str(run))
    assert result.returncode == 3, result.stderr
    assert "ends in half a record" in result.stdout


@pytest.fixture(scope="module")
def csv_runs(tmp_path_factory) -> dict[str, Path]:
    """A run under Lightning's CSVLogger alone, and one of the same logger without GradWatch."""
    root = tmp_path_factory.mktemp("csv")
    made = {}
    for name, callbacks in (("watched", [GradWatch(log_every_n_steps=1)]), ("unwatched", [])):
        logger = pl.loggers.CSVLogger(root / name)
        trainer = pl.Trainer(callbacks=callbacks, logger=logger, **trainer_kwargs(root / name, max_steps=12))
        trainer.fit(make_mlp_module(pl))
        made[name] = Path(logger.log_dir)
    both = [pl.loggers.TensorBoardLogger(root / "both"), pl.loggers.CSVLogger(root / "both")]
    trainer = pl.Trainer(callbacks=[GradWatch()], logger=both, **trainer_kwargs(root / "both", max_steps=12))
    trainer.fit(make_mlp_module(pl))
    made["both"] = root / "both"
    return made


def test_check_a_finished_run_with_tensorboard_and_csv_loggers_is_one_healthy_run(csv_runs):
    """The CSV logger gets GradWatch's scalars but not gradwatch.json: a pointer there says where the record is."""
    result = gradwatch("check", str(csv_runs["both"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: 0 of 1 run(s)" in result.stdout
    assert len(list(csv_runs["both"].rglob("metrics.csv"))) == 1


def test_another_tools_metrics_csv_damaged_or_not_is_no_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.csv").write_bytes(b"epoch,loss,\xff\xfe\n0,1.0\n1")  # not UTF-8, rows cut short
    result = gradwatch("check", str(tmp_path))
    assert result.returncode == 2
    assert "no GradWatch run" in result.stderr


def test_check_a_csv_logger_run_killed_before_its_report_is_unfinished_not_missed(csv_runs, tmp_path):
    run = _copy(csv_runs["watched"], tmp_path)
    (run / "gradwatch.json").unlink()  # what a SIGKILL before the first alert leaves: metrics.csv alone
    result = gradwatch("check", str(tmp_path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "unfinished: no gradwatch.json" in result.stdout
    assert "(3 layers, 12 steps)" in result.stdout
    assert "metrics.csv" in gradwatch("report", str(run)).stdout  # where the numbers come from
    csv_file = run / "metrics.csv"
    whole = csv_file.read_text()
    for cut in (whole.rstrip("\n").rfind(",") - 3, len(whole.rstrip("\r\n")) - 1):  # within a row, within a cell
        csv_file.write_text(whole[:cut])  # killed while writing its last row
        result = gradwatch("check", str(run))
        assert result.returncode == 3, result.stdout + result.stderr
        assert "metrics.csv ends in half a row" in result.stdout
    header, first, *rest = whole.splitlines()
    cells = first.split(",")
    cells[header.split(",").index("gradwatch/total_norm")] = "0.5x"  # damage inside the file is no kill
    csv_file.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    result = gradwatch("check", str(run))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unreadable: " in result.stdout
    assert "metrics.csv: line 2: not a number: '0.5x'" in result.stdout
    result = gradwatch("check", str(csv_runs["unwatched"]))  # another logger's metrics.csv is no GradWatch run
    assert result.returncode == 2
    assert "no GradWatch run" in result.stderr


def test_a_csv_runs_numbered_layers_come_in_number_order(tmp_path):
    """Lightning's CSVLogger sorts its columns by name (``layers.10`` before ``layers.2``): the report puts numbered
    layers back in number order, the model's for a stack of layers."""
    (tmp_path / "run").mkdir()
    header = "epoch,gradwatch/total_norm,grad_norm/layers.10,grad_norm/layers.2,grad_norm/layers.9,step"
    (tmp_path / "run" / "metrics.csv").write_text(f"{header}\n0,1.0,0.5,0.6,0.7,0\n0,1.1,0.5,0.6,0.7,1\n")
    result = gradwatch("report", str(tmp_path / "run"))
    assert result.returncode == 0, result.stdout + result.stderr
    shown = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("layers.")]
    assert shown == ["layers.2", "layers.9", "layers.10"]


# ---------------------------------------------------------------------- bad input never ends in a traceback
def _one_line_error(result: subprocess.CompletedProcess, name: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gradwatch: error: ")
    assert name in lines[0]


def test_deeply_nested_report_exits_2(runs, tmp_path):
    run = _copy(runs["healthy"], tmp_path)
    depth = 200_000
    (run / "gradwatch.json").write_text('{"format": "gradwatch-report", "layers": ' + "[" * depth + "]" * depth + "}")
    for command in ("check", "report"):
        result = gradwatch(command, str(run))
        assert result.returncode == 2
        assert str(run / "gradwatch.json") in result.stdout
        assert "nested too deeply" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_report_not_utf8_exits_2(runs, tmp_path):
    run = _copy(runs["healthy"], tmp_path)
    (run / "gradwatch.json").write_bytes(b'{"format": "gradwatch-report", "status": "\xff"}')
    _unreadable(gradwatch("check", str(run)), run, str(run / "gradwatch.json"))


@pytest.mark.parametrize("where", ["missing_directory", "directory"])
def test_github_step_summary_that_cannot_be_written_exits_2(runs, tmp_path, where):
    target = tmp_path / "no" / "such" / "summary.md" if where == "missing_directory" else tmp_path
    result = gradwatch("check", str(runs["healthy"]), "--format", "github", env={"GITHUB_STEP_SUMMARY": str(target)})
    _one_line_error(result, f"GITHUB_STEP_SUMMARY={target}")


@pytest.mark.parametrize("command", ["report", "check"])
def test_output_to_a_closed_pipe_ends_quietly(runs, command):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte, as with `| head` on long output
    process = subprocess.Popen(
        [sys.executable, "-m", "lightning_gradwatch", command, str(runs["root"])],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    _, stderr = process.communicate(timeout=120)
    assert stderr == ""
    assert process.returncode == (0 if command == "report" else 1)  # the verdict, whoever reads it


def test_gradwatch_json_or_event_file_path_means_that_run(runs):
    report = runs["healthy"] / "gradwatch.json"
    event_file = next(runs["healthy"].glob("events.out.tfevents.*"))
    for path in (report, event_file):
        result = gradwatch("check", str(path), "--format", "json")
        assert result.returncode == 0, result.stderr
        assert [Path(r["path"]) for r in json.loads(result.stdout)["runs"]] == [runs["healthy"]]


def test_other_file_path_exits_2(runs):
    stray = runs["root"] / "notes.txt"  # its parent holds two runs; it is not one of them
    stray.write_text("not a run")
    try:
        _one_line_error(gradwatch("check", str(stray)), str(stray))
    finally:
        stray.unlink()


# ---------------------------------------------------------------------- the report's total norm
@pytest.fixture
def seeded():
    """The same weights and data whichever tests ran before; the global random state is left as it was found."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def test_report_shows_total_norm_over_every_measured_step(tmp_path, seeded):
    # seeded: the spike at step 7 must be the run's largest norm, which depends on the weights
    class Spiky(type(make_mlp_module(pl))):
        def training_step(self, batch, batch_idx):
            x, y = batch
            if self.global_step == 7:  # between two log steps (every 4)
                x = x * 20
            return nn.functional.mse_loss(self(x), y)

    model = Spiky(lr=0.005)  # small steps: the spike's own update does not set off a divergence that outgrows it
    watch = GradWatch(log_every_n_steps=4)
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    trainer.fit(model)
    # one bad batch in the warm-up, its norm 13x the steps' before, its loss 1.3x the first: a batch the run absorbs
    assert watch.alerts == []
    spike = model.reference[7]["__total__"]
    norms = [model.reference[s]["__total__"] for s in range(16)]
    result = gradwatch("report", trainer.logger.log_dir)
    assert result.returncode == 0, result.stderr
    total_row = next(line for line in result.stdout.splitlines() if line.startswith("(total)"))
    steps, last, median, low, high = total_row.split()[1:6]
    assert int(steps) == 16
    assert spike > 5 * max(norms[:7])
    assert float(high) == pytest.approx(spike, rel=5e-3)
    assert float(low) == pytest.approx(min(norms), rel=5e-3)
    assert float(last) == pytest.approx(norms[-1], rel=5e-3)
    assert float(median) == pytest.approx(statistics.median(norms), rel=5e-3)
    layer_row = next(line for line in result.stdout.splitlines() if line.startswith("net.0"))
    assert layer_row.split()[1] == "16"  # per-layer rows cover every measured step too
    assert float(layer_row.split()[5]) == pytest.approx(model.reference[7]["net.0"], rel=5e-3)  # the spike's
    (doc,) = json.loads(gradwatch("report", trainer.logger.log_dir, "--format", "json").stdout)
    assert doc["total_norm"]["all"]["max"] == pytest.approx(spike, rel=1e-5)


# ---------------------------------------------------------------------- structured alerts in the event files
class _TwoOptimizers(pl.LightningModule):
    """Manual optimization: optimizer 0 trains a small net, optimizer 1 a 25-layer stack that sees NaN at step 9."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.small = nn.Linear(8, 1)
        self.deep = nn.Sequential(*[nn.Linear(8, 8) for _ in range(25)])

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_small, opt_deep = self.optimizers()
        loss = nn.functional.mse_loss(self.small(x), y)
        opt_small.zero_grad()
        self.manual_backward(loss)
        opt_small.step()
        deep_x = x * float("nan") if self.global_step == 9 else x
        opt_deep.zero_grad()
        self.manual_backward(self.deep(deep_x).pow(2).mean())
        opt_deep.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.small.parameters(), lr=0.01), torch.optim.SGD(self.deep.parameters(), lr=0.01)

    def train_dataloader(self):
        return regression_data(128)


def test_alerts_read_back_from_event_files_whole(tmp_path):
    watch = GradWatch(log_every_n_steps=1, on_nonfinite="skip")
    trainer = pl.Trainer(callbacks=[watch], **trainer_kwargs(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the alert is read back from the event files and gradwatch.json below
        trainer.fit(_TwoOptimizers())
    (alert,) = watch.alerts
    assert (alert.optimizer, len(alert.layers)) == (1, 25)
    run = Path(trainer.logger.log_dir)
    (from_json,) = json.loads(gradwatch("report", str(run), "--format", "json").stdout)
    (run / "gradwatch.json").unlink()
    (from_events,) = json.loads(gradwatch("report", str(run), "--format", "json").stdout)
    assert from_events["source"] == "events"
    expected = {
        "kind": "nonfinite",
        "step": alert.step,
        "layers": list(alert.layers),
        "value": alert.value,
        "threshold": alert.threshold,
        "message": alert.message,
        "optimizer": 1,
    }
    assert from_events["alerts"] == from_json["alerts"] == [expected]
    assert set(from_events["total_norm"]) == {"optimizer_0", "optimizer_1"}
    result = gradwatch("check", str(run), "--allow-unfinished")
    assert result.returncode == 1
    assert f"[FAIL] optimizer 1: Non-finite gradients (NaN/Inf) at step {alert.step}: " in result.stdout
    # TensorBoard's Text tab still shows the alert as Markdown, with its data in a code block at the end
    (text,) = events(run).Tensors("gradwatch/alerts")
    shown = text.tensor_proto.string_val[0].decode()
    assert shown.startswith(f"**nonfinite** at step {alert.step}")
    assert shown.endswith("}\n```")


def test_alerts_of_older_runs_read_from_their_markdown(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    alert = GradientAlert("exploding", 12, ("fc1", "fc2"), 40.0, 8.0, "Exploding gradients.\nRemedies:\n  - clip")
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("grad_norm/fc1", 1.0, 12)
        writer.add_text("gradwatch/alerts", alert_markdown(alert), 12)
    result = gradwatch("report", str(tmp_path), "--format", "json")
    assert result.returncode == 0, result.stderr
    (doc,) = json.loads(result.stdout)
    (back,) = doc["alerts"]
    assert (back["kind"], back["step"], back["layers"], back["value"], back["optimizer"]) == (
        "exploding",
        12,
        ["fc1", "fc2"],
        40.0,
        0,
    )


def test_unfinished_run_takes_steps_and_alerts_written_after_its_report(runs, tmp_path):
    run = _copy(runs["nan"], tmp_path)
    doc = json.loads((run / "gradwatch.json").read_text())
    doc.update(status="running", alerts=[], steps={"first": 0, "last": 2, "measured": 3, "logged": 2})
    (run / "gradwatch.json").write_text(json.dumps(doc))  # as if written at step 2, then killed at the end
    result = gradwatch("check", str(run), "--format", "json")
    assert result.returncode == 1
    (record,) = json.loads(result.stdout)["runs"]
    assert [(a["kind"], a["step"]) for a in record["alerts"]] == [("nonfinite", 5)]  # from the event files
    assert record["steps"]["last"] == 14  # the last logged step (every 2nd of 16)
    # the per-layer report: the event files' numbers, which go on past the report, and it says so
    said = gradwatch("report", str(run), "--format", "json")
    (layers_doc,) = json.loads(said.stdout)
    assert layers_doc["total_norm"]["all"]["recent"]["last_step"] == 14
    title = gradwatch("report", str(run)).stdout
    assert "gradwatch.json, older than the event files the numbers come from" in title


# ---------------------------------------------------------------------- help and encodings
@pytest.mark.parametrize("command", ["check", "report"])
def test_help_documents_path_format_and_exit_codes(command):
    result = gradwatch(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "PATH a run's log directory (where its gradwatch.json and TensorBoard event files, or a CSVLogger's" in text
    assert "any parent of runs (searched recursively)" in text
    assert re.search(r"--format \{[a-z,]+\} text: ", text)
    assert "json: " in text.split("--format", 2)[-1]
    assert "exit codes: 0 " in text
    assert "2 a run could not be read" in text
    if command == "check":
        assert "1 a run has an alert of a --fail-on kind" in text
        assert "3 a run did not finish" in text


@pytest.mark.parametrize("encoding", [{"PYTHONIOENCODING": "ascii"}, {"LC_ALL": "C", "PYTHONIOENCODING": "ascii"}])
@pytest.mark.parametrize(
    ("command", "fmt"),
    [("check", "text"), ("check", "json"), ("check", "github"), ("report", "text"), ("report", "json")],
)
def test_non_ascii_path_on_an_ascii_stdout(runs, tmp_path, encoding, command, fmt):
    run = _copy(runs["nan"], tmp_path / "données")
    summary = tmp_path / "summary.md"
    env = {**encoding, "GITHUB_STEP_SUMMARY": str(summary)}
    result = gradwatch(command, str(run.parent), "--format", fmt, env=env)
    assert result.returncode == (1 if command == "check" else 0), result.stderr
    assert result.stderr == ""
    assert "Traceback" not in result.stdout
    escaped = str(run).replace("é", "\\xe9")
    if fmt == "json":
        assert json.loads(result.stdout)  # JSON escapes it itself: "donn\u00e9es"
        assert "donn\\u00e9es" in result.stdout
    else:
        assert escaped in result.stdout
    if fmt == "github":
        assert f"| `{run}` | alerts |" in summary.read_text(encoding="utf-8")  # the file is UTF-8 whatever stdout is


def test_unreadable_non_ascii_path_on_an_ascii_stderr(runs, tmp_path):
    run = _copy(runs["healthy"], tmp_path / "données")
    (run / "gradwatch.json").write_text("{")
    result = gradwatch("check", str(run), env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "donn\\xe9es" in result.stderr
    assert "donn\\xe9es" in result.stdout


def test_a_run_of_one_layer_and_one_step_is_said_in_the_singular(tmp_path):
    from lightning_gradwatch.runs import RunRecord
    from lightning_gradwatch.verdicts import run_facts

    one = RunRecord(tmp_path, "events", steps={"last": 0}, layers=[{"name": "fc"}])
    assert run_facts(one, "healthy")[:2] == ["1 layer", "1 step"]
    two = RunRecord(tmp_path, "events", steps={"last": 1}, layers=[{"name": "a"}, {"name": "b"}])
    assert run_facts(two, "healthy")[:2] == ["2 layers", "2 steps"]
