"""Sharded gradients (FSDP2) on CPU with gloo, two real processes: norms equal the unsharded ones."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import events, scalars

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]


def test_lightning_model_parallel_fully_shard(tmp_path):
    """`ModelParallelStrategy` re-launches its command for rank 1: run it as a script, never inside pytest."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fsdp_script.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[1]["steps"]["0"]["local_numel"]["net.3"] == 0  # rank 1 holds nothing of Linear(3, 1)
    assert ranks[0]["steps"]["0"]["local_numel"]["net.2"] != ranks[1]["steps"]["0"]["local_numel"]["net.2"]
    assert ranks[0]["summary_total"] == ranks[1]["summary_total"]  # every rank saw the same (combined) numbers
    (run_dir,) = glob.glob(str(tmp_path / "lightning_logs" / "*"))
    acc = events(run_dir)
    for layer in ("net.0", "net.2", "net.3"):
        logged = scalars(acc, f"grad_norm/{layer}")
        assert sorted(logged) == list(range(6))
        for step, value in logged.items():
            assert value == pytest.approx(ranks[0]["steps"][str(step)]["norms"][layer], rel=1e-5)
    for layer, numel in ranks[0]["steps"]["0"]["numel"].items():
        for hist in acc.Histograms(f"grad_hist/{layer}"):
            assert hist.histogram_value.num == numel
            assert sum(hist.histogram_value.bucket) == pytest.approx(numel)
        magnitudes = acc.Histograms(f"grad_hist_log10/{layer}")  # the non-zero values, on edges both ranks agreed on
        assert [h.step for h in magnitudes] == [h.step for h in acc.Histograms(f"grad_hist/{layer}")]
        for hist in magnitudes:
            assert 0 < hist.histogram_value.num <= numel
            assert sum(hist.histogram_value.bucket) == pytest.approx(hist.histogram_value.num, abs=0.5)
    assert ranks[0]["alerts"] == ranks[1]["alerts"] == 0
    # clip="adaptive" under SGD (lr 0.05): the first step's threshold is the step-size cap, 0.1 of the unsharded
    # weights' norm over the learning rate; both ranks clip alike
    thresholds = scalars(acc, "gradwatch/clip_threshold")
    assert thresholds[0] == pytest.approx(0.1 * ranks[0]["steps"]["0"]["weights"] / 0.05, rel=1e-5)
    assert ranks[0]["clipped"] == ranks[1]["clipped"]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_raw_fsdp2_under_torchrun(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "tests" / "raw_fsdp2_script.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[1]["local_numel"]["3.weight"] == 0
    for rank in ranks:
        for i, layer in enumerate(rank["layers"]):
            ref = rank["reference"][layer]
            assert rank["grad_norm"][i] == pytest.approx(ref["sq"] ** 0.5, rel=1e-5)
            assert rank["param_norm"][i] == pytest.approx(ref["param_sq"] ** 0.5, rel=1e-5)
            assert rank["max_abs"][i] == pytest.approx(ref["max_abs"], rel=1e-6)
            assert rank["zero_fraction"][i] == pytest.approx(ref["zeros"] / ref["numel"])
            assert rank["numel"][i] == rank["hist_num"][i] == ref["numel"]
            assert rank["hist_count"][i] == pytest.approx(ref["numel"])
            num, count, lo, hi = rank["log_hist"][i]  # log10 |g| of the non-zero values, edges agreed across ranks
            assert num == ref["numel"] - ref["zeros"]
            assert count == pytest.approx(num)
            assert (lo, hi) == (pytest.approx(ref["log_lo"], abs=1e-5), pytest.approx(ref["log_hi"], abs=1e-5))
    assert ranks[0]["grad_norm"] == ranks[1]["grad_norm"]
    assert ranks[0]["log_hist"] == ranks[1]["log_hist"]
    assert ranks[0]["total_norm"] == ranks[1]["total_norm"]
