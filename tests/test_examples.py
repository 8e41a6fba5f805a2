"""Each example, run in its shortened mode, shows what its docstring promises, in its output and in TensorBoard."""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import events, scalars

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *argv: str) -> Any:
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))["main"](list(argv))


def test_deep_sigmoid_vs_relu(tmp_path):
    outcome = run_example("deep_sigmoid_vs_relu", "--quick", "--out", str(tmp_path))
    sigmoid, relu = outcome["sigmoid"], outcome["relu_batchnorm"]
    assert sigmoid["alerts"] == ["vanishing"]
    assert sigmoid["layers"][0][:2] == ["net.0", "net.2"]  # the first layers are named
    assert "net.20" not in sigmoid["layers"][0]
    assert relu["alerts"] == []
    assert relu["accuracy"] > 0.9 > 0.5 > sigmoid["accuracy"]
    for run in ("sigmoid", "relu_batchnorm"):
        acc = events(tmp_path / run)
        assert len(scalars(acc, "grad_norm/net.0")) >= 20
        assert {"grad_hist/net.0", "grad_hist_log10/net.0"} <= set(acc.Tags()["histograms"])
        assert acc.Tags()["images"]
        assert scalars(acc, "eval/accuracy") == {outcome[run]["steps"]: outcome[run]["accuracy"]}
        report = json.loads((tmp_path / run / "gradwatch.json").read_text())
        assert [a["kind"] for a in report["alerts"]] == outcome[run]["alerts"]


def test_rnn_vs_lstm(tmp_path):
    outcome = run_example("rnn_vs_lstm", "--quick", "--out", str(tmp_path))
    rnn, lstm = outcome["rnn"], outcome["lstm"]
    assert lstm["accuracy"] > 0.9
    assert rnn["accuracy"] < 0.5
    assert rnn["ratio_before"] < 1e-10 < 1e-3 < lstm["ratio_before"]  # vanishing through time, at the start
    assert rnn["ratio_after"] < 1e-3 * lstm["ratio_after"]  # and still after training
    assert "vanishing" not in rnn["alerts"]  # the parameter gradients do not show it
    for cell in ("rnn", "lstm"):
        acc = events(tmp_path / cell)
        assert scalars(acc, "grad_norm/rnn")
        assert scalars(acc, "eval/accuracy")[outcome[cell]["steps"]] == outcome[cell]["accuracy"]
        probe = scalars(acc, "probe/first_to_last_input_gradient")[outcome[cell]["steps"]]
        assert math.isclose(probe, outcome[cell]["ratio_after"], rel_tol=1e-6)


def test_divergence_rescue(tmp_path):
    outcome = run_example("divergence_rescue", "--quick", "--out", str(tmp_path))
    warn, stop, adaptive = outcome["warn"], outcome["stop"], outcome["adaptive"]
    assert warn["steps"] == 100
    assert not warn["finite_weights"]
    assert math.isnan(warn["final_loss"])
    assert warn["nan_loss_from"] is not None
    assert [kind for kind, _ in warn["alerts"][:2]] == ["exploding", "nonfinite"]
    assert warn["alerts"][0][1] <= warn["alerts"][1][1] - 2  # the warning comes before the NaN
    assert 60 < stop["steps"] <= 64  # stopped at the alert, just after the corrupted step 60
    assert stop["finite_weights"]
    assert math.isfinite(stop["final_loss"])
    assert stop["nan_loss_from"] is None
    assert [kind for kind, _ in stop["alerts"]] == ["exploding"]
    assert adaptive["steps"] == 100
    assert adaptive["finite_weights"]
    assert adaptive["final_loss"] < 10  # finite and bounded; an ordinary loss is test_divergence_rescue_adaptive_loss
    assert adaptive["nan_loss_from"] is None
    assert not adaptive["alerts"]
    clipped = scalars(events(tmp_path / "adaptive"), "gradwatch/clipped_norm")
    total = scalars(events(tmp_path / "adaptive"), "gradwatch/total_norm")
    assert max(total.values()) > 100 * max(clipped.values())  # the corrupted step, clipped
    assert len(scalars(events(tmp_path / "warn"), "gradwatch/total_norm")) == 100


def test_divergence_rescue_adaptive_loss(tmp_path):
    outcome = run_example("divergence_rescue", "--quick", "--out", str(tmp_path))
    assert outcome["adaptive"]["final_loss"] < 0.5  # as a run that never saw the corrupted batch (0.054)


def test_demo_runs_as_a_script_from_anywhere(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--out", str(out), "--steps", "60"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "== sigmoid: 1 alert(s)" in result.stdout
    assert "Vanishing gradients at step 19: the loss has not come down from where training started" in result.stdout
    assert "== relu_batchnorm: 0 alert(s)" in result.stdout
    assert "GPU available" not in result.stdout + result.stderr  # Lightning's banners kept off the demo's output
    for run in ("sigmoid", "relu_batchnorm"):
        assert (out / run / "gradwatch.json").exists()
        histograms = events(out / run).Tags()["histograms"]
        assert {"grad_hist/net.0", "grad_hist/net.10", "grad_hist_log10/net.0"} <= set(histograms)  # as screenshot
