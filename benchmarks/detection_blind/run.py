"""A blind detection round: 19 families of training GradWatch was never tried on, each healthy and failing.

    python benchmarks/detection_blind/run.py OUT.jsonl [families,comma] [seeds]   # 7 minutes of one core
    python benchmarks/detection_blind/analyse.py OUT.jsonl   # the table (run from OUT's directory: its traces/)

Written from the README alone, without reading the package's code, benchmarks or tests: ``outcome.py`` (one function,
written before any GradWatch run and not changed since), ``families.py`` (stochastic depth, sharpness-aware
minimisation, WGAN-GP, a VAE under KL annealing, a curriculum, a top-1 mixture of experts, sparse embeddings, mixup
with label smoothing, quantile regression under heavy tails, CTC on an LSTM, a PPO bandit, dropout 0.5 at batch 4, a
warm-up then linear decay through a Trainer, EMA distillation through a Trainer, warm restarts, domain-adversarial
training, InfoNCE at temperature 0.005, Huber regression with outlier targets, accumulation over BatchNorm at batches
of 2 through a Trainer), each a healthy variant and a failing twin (a learning rate 100x, a NaN input, a 20-deep
sigmoid stack, targets x1000), 5 seeds. Every configuration runs twice on the same seed: without GradWatch (its
outcome) and with ``GradWatch(on_exploding="stop", on_nonfinite="stop")`` (its alerts); the losses of the two agree
bit for bit up to a stop. Resumable: configurations already in OUT are skipped.

``GRADWATCH_CLIP=adaptive python benchmarks/detection_blind/run.py OUT.jsonl``: the same round with every run under
``clip="adaptive"``, the outcome run included (through a GradWatch that only clips): what the alerts are worth when
clipping is on.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings

import torch

torch.set_num_threads(1)

from families import FAMILIES, TWIN, Gate  # noqa: E402
from outcome import outcome  # noqa: E402

from lightning_gradwatch import GradWatch  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else "results.jsonl"
FAMS = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] else list(FAMILIES)
SEEDS = [int(s) for s in sys.argv[3].split(",")] if len(sys.argv) > 3 else [0, 1, 2, 3, 4]
TRACES = os.path.join(os.path.dirname(os.path.abspath(OUT)), "traces")
os.makedirs(TRACES, exist_ok=True)


# GRADWATCH_CLIP=adaptive: every run under GradWatch(clip="adaptive"), its outcome run too (through a GradWatch whose
# responses are all "ignore": it only clips), so that the outcome is the clipped run's and the two agree up to a stop
CLIP = os.environ.get("GRADWATCH_CLIP") or None


def make_watch(judged=True):
    # the three responses of the brief; images=False only because the loop's log_dir is there for
    # gradwatch.json (notices), not for charts
    clip = {} if CLIP is None else {"clip": CLIP}
    if not judged:
        return GradWatch(on_exploding="ignore", on_nonfinite="ignore", on_vanishing="ignore", images=False, **clip)
    return GradWatch(on_exploding="stop", on_nonfinite="stop", on_vanishing="warn", images=False, **clip)


def run_once(fam, variant, seed, with_gw):
    spec = FAMILIES[fam](seed, variant)
    root = tempfile.mkdtemp(prefix="bd_")
    watch = make_watch() if with_gw else make_watch(judged=False) if CLIP else None
    caught = []
    t0 = time.time()
    stopped, loop_steps, err = None, None, None
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            if spec.kind == "trainer":
                trace = spec.train([watch] if watch else [], root)
            elif watch is None:
                trace = spec.train(Gate())
            else:
                kw = {"log_dir": root, "steps": spec.steps}
                if len(spec.optimizers) > 1:
                    kw["optimizers"] = spec.optimizers
                with watch.loop(spec.model, **kw) as loop:
                    gate = Gate(loop)
                    trace = spec.train(gate)
                    stopped = bool(loop.should_stop)
                    loop_steps = int(loop.global_step)
        except Exception as e:
            err = repr(e)[:300]
            trace = {"loss": [], "died": True, "step_loss": [], "step_norm": []}
        caught = list(w)
    secs = time.time() - t0
    gw_warn = []
    for m in caught:
        cat = m.category.__name__
        if cat == "GradientWarning" or "gradwatch" in (m.filename or ""):
            gw_warn.append(f"{cat}: {str(m.message)[:400]}")
    other_warn = sorted({f"{m.category.__name__}: {str(m.message)[:120]}" for m in caught} - set(gw_warn))
    report = None
    for dp, _, fs in os.walk(root):
        if "gradwatch.json" in fs:
            try:
                with open(os.path.join(dp, "gradwatch.json")) as f:
                    report = json.load(f)
            except Exception as e:
                report = {"read_error": repr(e)}
            break
    shutil.rmtree(root, ignore_errors=True)
    res = {"secs": round(secs, 2), "error": err or trace.get("error") or None}
    if with_gw:
        alerts = []
        for a in watch.alerts:
            extra = getattr(a, "extra", None) or {}
            alerts.append(
                {
                    "kind": str(getattr(a.kind, "value", a.kind)),
                    "step": int(a.step),
                    "rule": str(extra.get("rule")) if isinstance(extra, dict) else None,
                    "layers": list(a.layers)[:6],
                    "value": float(a.value) if a.value is not None else None,
                    "threshold": float(a.threshold) if a.threshold is not None else None,
                    "message": str(a.message)[:200],
                }
            )
        n_run = len(trace.get("step_loss", []))
        if stopped is None:  # Trainer: it stopped if it ran fewer steps than planned
            stopped = n_run < spec.steps and not trace.get("died")
        res.update(
            alerts=alerts,
            stopped=bool(stopped),
            steps_run=n_run,
            loop_global_step=loop_steps,
            stop_step=(n_run - 1) if stopped else None,
            gw_warnings=gw_warn,
            other_warnings=other_warn[:10],
            report_notices=(report or {}).get("notices") if isinstance(report, dict) else None,
            report_status=(report or {}).get("status") if isinstance(report, dict) else None,
            report_keys=sorted(report)[:40] if isinstance(report, dict) else None,
        )
    return trace, res


def first_nonfinite(xs):
    for i, x in enumerate(xs):
        if not math.isfinite(x):
            return i
    return None


def main():
    done = set()
    if os.path.exists(OUT):
        with open(OUT) as f:
            for line in f:
                r = json.loads(line)
                done.add((r["family"], r["variant"], r["seed"]))
    t_all = time.time()
    for fam in FAMS:
        for variant in ("healthy", "twin"):
            for seed in SEEDS:
                if (fam, variant, seed) in done:
                    continue
                tr0, r0 = run_once(fam, variant, seed, with_gw=False)
                oc = outcome(tr0)
                tr1, r1 = run_once(fam, variant, seed, with_gw=True)
                a, b = tr0.get("step_loss", []), tr1.get("step_loss", [])
                n = min(len(a), len(b))
                match = all((x == y) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a[:n], b[:n]))
                rec = {
                    "family": fam,
                    "variant": variant,
                    "twin_of": TWIN[fam] if variant == "twin" else None,
                    "seed": seed,
                    "outcome": oc,
                    "metric_start": tr0.get("metric_start"),
                    "metric_end": tr0.get("metric_end"),
                    "metric_ideal": tr0.get("metric_ideal"),
                    "nonfinite_weights": tr0.get("nonfinite"),
                    "first_nonfinite_step_loss": first_nonfinite(tr0.get("step_loss", [])),
                    "n_steps": len(tr0.get("step_loss", [])),
                    "secs_plain": r0["secs"],
                    "error_plain": r0["error"],
                    "prefix_match": match,
                    "prefix_len": n,
                    **dict(r1.items()),
                }
                with open(OUT, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                with open(os.path.join(TRACES, f"{fam}.{variant}.{seed}.json"), "w") as f:
                    json.dump({"plain": tr0, "gw_step_loss": b}, f)
                print(
                    f"{fam:16s} {variant:7s} s{seed} {oc:7s} alerts={[(x['kind'], x['step']) for x in r1['alerts']]} "
                    f"stopped={r1['stopped']}@{r1['stop_step']} match={match} {r0['secs']}+{r1['secs']}s "
                    f"t={time.time() - t_all:.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
