"""A blind round of the clipping benchmark: six families written from the README alone, public API only.

    python benchmarks/clipping_blind/run.py [--families ae,tcn] [--seeds 0,1,2] [--out FILE] [--logs DIR]
    python benchmarks/clipping_blind/analyse.py FILE

Families, cells and seeds (``families.py``): a conv autoencoder under SGD at 10x and 30x its learning rate,
REINFORCE with heavy-tailed or rare huge rewards, a two-tower InfoNCE model at low temperature, a deep ReLU regression
on raw polynomial features, a dilated causal conv net with outlier targets or inputs, a residual MLP without
normalisation under SGD at 10x and 30x; each with a healthy cell, 3 seeds, 300 steps. Every rule of a cell and seed
trains from the same initial weights on the same batches: no clipping, fixed {0.03 ... 100}, ``GradWatch(clip=
"adaptive")`` through ``watch.loop``, ZClip's defaults, AutoClip p10 and AGC 0.02 / 0.16 (``clipping_rules.py``). Each
run's result is ``outcome.outcome`` (its final held-out metric; inf when lost), written before any run. About 6
minutes of one core. Writes one JSON line per run (``--out``); runs already in the file are kept.
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
from families import FAMILIES, STEPS  # noqa: E402
from outcome import outcome  # noqa: E402

from lightning_gradwatch import GradWatch  # noqa: E402

FIXED = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
MAX_NORM = "ours+clip_max_norm=1"  # added after the round: the README's remedy for a first step with no past
RULES = ["none", *[f"fixed {v:g}" for v in FIXED], "ours", "ZClip", "AutoClip p10", "AGC 0.02", "AGC 0.16", MAX_NORM]


def finite_weights(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


def _late(setup, model, step, late):
    if late is not None and step >= STEPS - 100 and step % 10 == 9:
        late.append(outcome(model, setup["metric"]))


def train(setup, init_state, rule, logdir=None, late=None):
    """One run; ``late`` (added after the round), a list that receives the held-out metric after every 10th of the
    last 100 steps (``outcome`` of the model then), for a result that one late step cannot move."""
    model = copy.deepcopy(setup["model"])
    model.load_state_dict(init_state)
    opt = setup["opt"](model.parameters())
    params = list(model.parameters())
    info = {}
    if rule in ("ours", MAX_NORM):
        cap = {"clip_max_norm": 1.0} if rule == MAX_NORM else {}
        watch = GradWatch(clip="adaptive", on_nonfinite="warn", images=False, **cap)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with watch.loop(model, log_dir=logdir, steps=STEPS) as loop:
                for s in range(STEPS):
                    loss = setup["loss"](model, s)
                    loss.backward()
                    if loop.step(opt, loss):
                        opt.step()
                    opt.zero_grad()
                    _late(setup, model, s, late)
                    if loop.should_stop:
                        info["stopped_at"] = s
                        break
                    if s % 25 == 0 and not finite_weights(model):
                        break
        info["warnings"] = sorted({f"{x.category.__name__}: {str(x.message)[:160]}" for x in w})
        info["alerts"] = len(watch.alerts)
    else:
        peer = None
        if rule == "ZClip":
            peer = ZClipRule()
        elif rule == "AutoClip p10":
            peer = AutoClip(10.0)
        elif rule.startswith("AGC"):
            peer = AGC(float(rule.split()[1]))
        fixed = float(rule.split()[1]) if rule.startswith("fixed") else None
        for s in range(STEPS):
            loss = setup["loss"](model, s)
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
            _late(setup, model, s, late)
            if s % 25 == 0 and not finite_weights(model):
                break
    return outcome(model, setup["metric"]), info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--cells", default="")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--out", default="clipping_blind.jsonl", help="JSON lines, one per run; runs already in it kept")
    ap.add_argument("--logs", default=None, help="a directory for our rule's logs (default: none written)")
    ap.add_argument(
        "--late",
        action="store_true",
        help="also record 'late', the median held-out metric over the last 100 steps (every 10; added after the round)",
    )
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
                        logdir = None
                        if a.logs and rule == "ours":
                            logdir = f"{a.logs}/{fam}_{cell.replace(' ', '_')}_{seed}"
                        late = [] if a.late else None
                        m, info = train(setup, init, rule, logdir, late)
                        rec = dict(family=fam, cell=cell, seed=seed, rule=rule, metric=m, secs=time.time() - t, **info)
                        if late is not None:
                            rec["late"] = (statistics.median(late) if late else m) if math.isfinite(m) else math.inf
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                        print(f"{fam:8s} {cell:24s} {seed} {rule:13s} {m:.4g} {rec['secs']:.2f}s", flush=True)


if __name__ == "__main__":
    main()
