"""A second blind round of the clipping benchmark: six families written from the README alone, public API only.

    python benchmarks/clipping_blind2/run.py [--families flips,long] [--cells "healthy;lr x10"] [--seeds 0,1,2]
        [--rules none,ours] [--out FILE] [--logs DIR]
    python benchmarks/clipping_blind2/analyse.py FILE [late]

Families, cells and seeds (``families.py``): Student-t (df 1.5) label noise under SGD momentum; 35% of the digits'
labels flipped; a sparse parity's plateau at 1x, 10x and 30x its learning rate; 800 steps under Laplace or Cauchy label
noise; AdamW with 10% or 3% of the targets x100; a 1-D conv net whose warm-up/cosine peak is 10x or 30x too high.
Each with a healthy cell, 3 seeds, 300 steps (``long``: 800). Every rule of a cell and seed trains from the same
initial weights on the same batches: no clipping, fixed {0.03 ... 100} (``clip_grad_norm_``), ``GradWatch(clip=
"adaptive")`` through ``watch.loop`` as the README shows it, ZClip's defaults, AutoClip p10 and AGC 0.02 / 0.16
(``clipping_rules.py``). Each run's result is ``outcome.outcome`` (its final clean held-out metric; inf when lost),
and ``late``, the median of that metric after every 10th of the last 100 steps. Writes one JSON line per run
(``--out``); runs already in the file are kept.
"""

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the peers: benchmarks/clipping_rules.py
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

torch.set_num_threads(1)
from clipping_rules import AGC, AutoClip, ZClipRule  # noqa: E402  (the peers)
from families import FAMILIES  # noqa: E402
from outcome import outcome  # noqa: E402

from lightning_gradwatch import GradWatch  # noqa: E402

FIXED = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
RULES = ["none", *[f"fixed {v:g}" for v in FIXED], "ours", "ZClip", "AutoClip p10", "AGC 0.02", "AGC 0.16"]


def finite_weights(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


class Run:
    """One run's model, optimizer, scheduler and late evaluations."""

    def __init__(self, setup, init_state):
        self.setup, self.steps = setup, setup["steps"]
        self.model = copy.deepcopy(setup["model"])
        self.model.load_state_dict(init_state)
        self.opt = setup["opt"](self.model.parameters())
        self.sched = setup["sched"](self.opt) if setup["sched"] is not None else None
        self.late = []

    def after(self, s):
        """After step ``s``'s update: the schedule, the late evaluations; False when the weights are lost."""
        if self.sched is not None:
            self.sched.step()
        if s >= self.steps - 100 and s % 10 == 9:
            self.late.append(outcome(self.model, self.setup["metric"]))
        return not (s % 25 == 0 and not finite_weights(self.model))


def train_ours(run):
    model, opt, loss_fn = run.model, run.opt, run.setup["loss"]
    watch = GradWatch(clip="adaptive")
    info = {}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with watch.loop(model, steps=run.steps) as loop:
            for s in range(run.steps):
                loss = loss_fn(model, s)
                loss.backward()
                if loop.step(opt, loss):  # False: GradWatch dropped this step's update
                    opt.step()
                opt.zero_grad()
                ok = run.after(s)
                if loop.should_stop:
                    info["stopped_at"] = s
                    break
                if not ok:
                    break
    info["warnings"] = sorted({f"{x.category.__name__}: {str(x.message)[:160]}" for x in w})
    info["alerts"] = len(watch.alerts)
    return info


def train_other(run, rule):
    model, opt, loss_fn = run.model, run.opt, run.setup["loss"]
    params = list(model.parameters())
    peer = None
    if rule == "ZClip":
        peer = ZClipRule()
    elif rule == "AutoClip p10":
        peer = AutoClip(10.0)
    elif rule.startswith("AGC"):
        peer = AGC(float(rule.split()[1]))
    fixed = float(rule.split()[1]) if rule.startswith("fixed") else None
    for s in range(run.steps):
        loss = loss_fn(model, s)
        loss.backward()
        if fixed is not None:
            torch.nn.utils.clip_grad_norm_(params, fixed)
        elif isinstance(peer, AutoClip):
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
            th = peer.update(norm)
            if math.isfinite(th):
                torch.nn.utils.clip_grad_norm_(params, th)
        elif peer is not None:
            peer.apply_(model)
        opt.step()
        opt.zero_grad()
        if not run.after(s):
            break
    return {}


def train(setup, init_state, rule):
    run = Run(setup, init_state)
    info = train_ours(run) if rule == "ours" else train_other(run, rule)
    m = outcome(run.model, setup["metric"])
    late = statistics.median(run.late) if math.isfinite(m) and len(run.late) == 10 else math.inf
    return m, late, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--cells", default="", help="cells to run, separated by ';' (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--out", default="clipping_blind2.jsonl", help="JSON lines, one per run; runs already in it kept")
    a = ap.parse_args()
    rules = a.rules.split(",")
    done = set()
    if os.path.exists(a.out):
        with open(a.out) as f:
            for line in f:
                d = json.loads(line)
                done.add((d["family"], d["cell"], d["seed"], d["rule"]))
    with open(a.out, "a") as f:
        for fam in a.families.split(","):
            make, cells = FAMILIES[fam]
            if a.cells:
                cells = [c for c in cells if c in a.cells.split(";")]
            for cell in cells:
                for seed in map(int, a.seeds.split(",")):
                    setup = make(cell, seed)
                    init = copy.deepcopy(setup["model"].state_dict())
                    for rule in rules:
                        if (fam, cell, seed, rule) in done:
                            continue
                        t = time.time()
                        m, late, info = train(setup, init, rule)
                        rec = {"family": fam, "cell": cell, "seed": seed, "rule": rule, "metric": m, "late": late}
                        rec.update(secs=time.time() - t, **info)
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                        secs = rec["secs"]
                        print(f"{fam:8s} {cell:18s} {seed} {rule:13s} {m:.4g} {late:.4g} {secs:.2f}s", flush=True)


if __name__ == "__main__":
    main()
