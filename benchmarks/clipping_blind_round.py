"""Blind rounds of the clipping benchmark: families written from the README alone, every rule on the same runs.

    python benchmarks/clipping_blind_round.py run ROUND [--families a,b] [--cells "healthy;lr x10"] [--seeds 0,1,2]
        [--rules none,ours] [--out FILE] [--logs DIR]
    python benchmarks/clipping_blind_round.py analyse FILE [late]

``ROUND`` is a round's directory (``benchmarks/clipping_blind``, ``clipping_blind2``, ``clipping_blind3``). Its
``families.py`` holds ``FAMILIES``: name -> (``make(cell, seed) -> dict``, cells). A run's dict gives ``model`` (its
initial weights fixed by the seed), ``opt`` (parameters -> optimizer), ``loss`` (model, step -> the training loss of
that step's batch, drawn before any run), ``metric`` (model -> the clean held-out metric, lower is better), and
optionally ``sched`` (optimizer -> a scheduler stepped after every step) and ``steps`` (300). The cell named
``healthy`` has nothing wrong by design; the others are trouble. A round may also give ``OURS`` (keyword arguments of
our rule's ``GradWatch``) and ``EXTRA_RULES`` (name -> more ``GradWatch`` arguments: our rule beside them).

Every rule of a cell and seed trains from the same initial weights on the same batches: no clipping, fixed {0.03 ...
100} (``clip_grad_norm_``), ``GradWatch(clip="adaptive")`` through ``watch.loop`` as the README shows it, ZClip's
defaults, AutoClip p10 and AGC 0.02 / 0.16 (``clipping_rules.py``). Each run's result is :func:`outcome`: its final
clean held-out metric (inf when lost), and ``late``, the median of that metric after every 10th of the last 100 steps.
``run`` writes one JSON line per run (``--out``; runs already in the file are kept). ``analyse`` scores them: per cell
and seed, each rule's metric over the best fixed threshold's in hindsight; healthy cells also over no clipping's; then
the table per family and pooled, and the misses of ours (trouble above 2x, healthy above 1.1x).
"""

import argparse
import copy
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the peers: benchmarks/clipping_rules.py
import torch

from lightning_gradwatch import GradWatch

torch.set_num_threads(1)
from clipping_rules import AGC, AutoClip, ZClipRule  # noqa: E402  (the peers)

STEPS = 300
FIXED = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
FIXED_RULES = [f"fixed {v:g}" for v in FIXED]
RULES = ["none", *FIXED_RULES, "ours", "ZClip", "AutoClip p10", "AGC 0.02", "AGC 0.16"]
SHOWN = ["ours", "ZClip", "AutoClip p10", "AGC 0.02", "AGC 0.16", "none"]


@torch.no_grad()
def outcome(model, metric_fn):
    """A run's result: ``metric_fn(model)``, the family's clean held-out metric (lower is better), on the model now.

    A run is *lost* (``math.inf``) when any weight of the model is non-finite or the metric is. Called once after the
    last optimizer step (the result, ``metric``), and after every 10th of the last 100 steps (``late``: the median of
    those ten).
    """
    for p in model.parameters():
        if not torch.isfinite(p).all():
            return math.inf
    try:
        m = float(metric_fn(model))
    except (RuntimeError, ValueError, FloatingPointError):
        return math.inf
    return m if math.isfinite(m) else math.inf


class Run:
    """One run's model, optimizer, scheduler and late evaluations."""

    def __init__(self, setup, init_state):
        self.setup, self.steps = setup, setup.get("steps", STEPS)
        self.model = copy.deepcopy(setup["model"])
        self.model.load_state_dict(init_state)
        self.opt = setup["opt"](self.model.parameters())
        sched = setup.get("sched")
        self.sched = sched(self.opt) if sched is not None else None
        self.late = []

    def after(self, s):
        """After step ``s``'s update: the schedule, the late evaluations; False when the weights are lost."""
        if self.sched is not None:
            self.sched.step()
        if s >= self.steps - 100 and s % 10 == 9:
            self.late.append(outcome(self.model, self.setup["metric"]))
        return not (s % 25 == 0 and not all(torch.isfinite(p).all() for p in self.model.parameters()))


def train_ours(run, logdir=None, **kwargs):
    """Our rule through ``watch.loop``, as the README shows it; its warnings, alerts and stop are recorded."""
    model, opt, loss_fn = run.model, run.opt, run.setup["loss"]
    watch = GradWatch(clip="adaptive", **kwargs)
    info = {}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with watch.loop(model, log_dir=logdir, steps=run.steps) as loop:
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
    """No clipping, a fixed threshold, or a peer."""
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


def train(setup, init_state, rule, ours=None, logdir=None):
    """One run; ``ours``: our rule's ``GradWatch`` arguments when ``rule`` is ours (``None``: a peer's run)."""
    run = Run(setup, init_state)
    info = train_ours(run, logdir, **ours) if ours is not None else train_other(run, rule)
    m = outcome(run.model, setup["metric"])
    late = statistics.median(run.late) if math.isfinite(m) and len(run.late) == 10 else math.inf
    return m, late, info


def load_round(path):
    """A round's ``families.py`` as a module (its directory on ``sys.path`` for its own imports)."""
    directory = Path(path).resolve()
    sys.path.insert(0, str(directory))
    spec = importlib.util.spec_from_file_location(f"{directory.name}_families", directory / "families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(argv):
    ap = argparse.ArgumentParser(prog="clipping_blind_round.py run")
    ap.add_argument("round", help="the round's directory, e.g. benchmarks/clipping_blind2")
    ap.add_argument("--families", default="", help="families to run, separated by ',' (default: all)")
    ap.add_argument("--cells", default="", help="cells to run, separated by ';' (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rules", default="", help="rules to run, separated by ',' (default: all)")
    ap.add_argument("--out", default="", help="JSON lines, one per run; runs already in it kept (default: ROUND.jsonl)")
    ap.add_argument("--logs", default=None, help="a directory for our rule's logs (default: none written)")
    a = ap.parse_args(argv)
    rnd = load_round(a.round)
    families, ours, extra = rnd.FAMILIES, getattr(rnd, "OURS", {}), getattr(rnd, "EXTRA_RULES", {})
    rules = a.rules.split(",") if a.rules else [*RULES, *extra]
    unknown = sorted(set(rules) - {*RULES, *extra})
    if unknown:
        ap.error(f"no rule {', '.join(unknown)}; the rules: {', '.join([*RULES, *extra])}")
    out = a.out or f"{Path(a.round).resolve().name}.jsonl"
    done = set()
    if os.path.exists(out):
        with open(out) as f:
            for line in f:
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a stopped run: that run is run again
                    continue
                done.add((d["family"], d["cell"], d["seed"], d["rule"]))
    with open(out, "a") as f:
        for fam in a.families.split(",") if a.families else families:
            make, cells = families[fam]
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
                        kwargs = {**ours, **extra[rule]} if rule in extra else ours if rule == "ours" else None
                        logdir = f"{a.logs}/" + f"{fam}_{cell}_{seed}_{rule}".replace(" ", "_") if a.logs else None
                        m, late, info = train(setup, init, rule, kwargs, logdir if kwargs is not None else None)
                        rec = {"family": fam, "cell": cell, "seed": seed, "rule": rule, "metric": m, "late": late}
                        rec.update(secs=time.time() - t, **info)
                        f.write(json.dumps(rec) + "\n")
                        f.flush()
                        secs = rec["secs"]
                        print(f"{fam:8s} {cell:18s} {seed} {rule:13s} {m:.4g} {late:.4g} {secs:.2f}s", flush=True)


def _fmt(v):
    return "inf" if math.isinf(v) else f"{v:.2f}" if v < 1000 else f"{v:.3g}"


def _summary(trouble, lost, healthy):
    t = [v for v in trouble if not math.isnan(v)]
    worst, med = (_fmt(max(t)), _fmt(statistics.median(t))) if t else ("-", "-")
    h = [v for v in healthy if not math.isnan(v)]
    hworst = f"{max(h):.3f}" if h else "-"
    within, calm = sum(v <= 2 for v in t), sum(v <= 1.1 for v in h)
    return f"| {within}/{len(t)} | {worst} | {med} | {sum(lost)} | {calm}/{len(h)} | {hworst} |"


def analyse(argv):
    """Print the scores of a results file; ``late`` as a second argument scores the last 100 steps instead.

    *Lost*: a non-finite result where a fixed threshold's is finite (the first round's own analysis counted every
    non-finite result). Rules beyond the round's own (an extra row) appear when every cell and seed has them; a cell
    without every rule's result is left out, and the number left out is printed.
    """
    if not argv or len(argv) > 2 or argv[1:] not in ([], ["late"]):
        sys.exit("usage: clipping_blind_round.py analyse FILE [late]")
    path, metric = argv[0], argv[1] if len(argv) > 1 else "metric"
    res = defaultdict(dict)
    with open(path) as results:
        for line in results:
            d = json.loads(line)
            if metric in d:
                res[(d["family"], d["cell"], d["seed"])][d["rule"]] = d[metric]
    extra = sorted({rule for r in res.values() for rule in r} - set(RULES))
    shown = SHOWN + [rule for rule in extra if all(rule in r for r in res.values())]
    stats = defaultdict(lambda: defaultdict(list))  # (fam, rule) -> kind -> values
    misses = []
    incomplete = 0
    for (fam, cell, seed), r in sorted(res.items()):
        if not all(k in r for k in FIXED_RULES + shown):
            incomplete += 1
            continue
        best = min(r[k] for k in FIXED_RULES)
        line = [fam, cell, seed, f"best={best:.4g}"]
        for rule in shown:
            x = r[rule] / best if math.isfinite(best) else math.nan  # a lost run: inf
            line.append(f"{rule}:{x:.2f}")
            if cell == "healthy":
                h = r[rule] / r["none"] if math.isfinite(r["none"]) else math.nan
                stats[(fam, rule)]["healthy"].append(h)
                line.append(f"(/none {h:.3f})")
                if rule == "ours" and h > 1.1:
                    misses.append(f"{fam} | {cell} | {seed} | healthy: {h:.3f}x none ({x:.2f}x best fixed)")
            else:
                stats[(fam, rule)]["trouble"].append(x)
                stats[(fam, rule)]["lost"].append(math.isinf(r[rule]) and math.isfinite(best))
                if rule == "ours" and x > 2:
                    misses.append(
                        f"{fam} | {cell} | {seed} | trouble: {x:.2f}x best fixed (none {r['none'] / best:.2f}x)"
                    )
        print(" ".join(map(str, line)))
    print(
        f"\nscore: {metric}" + (f" ({incomplete} cells and seeds without every rule, left out)" if incomplete else "")
    )
    print("\n| family | rule | trouble <=2x best fixed | worst | median | lost | healthy <=1.1x none | worst |")
    print("|---|---|---|---|---|---|---|---|")
    fams = sorted({k[0] for k in stats})
    for fam in fams:
        for rule in shown:
            s = stats[(fam, rule)]
            print(f"| {fam} | {rule} " + _summary(s["trouble"], s["lost"], s["healthy"]))
    for rule in shown:
        pooled = [[v for fam in fams for v in stats[(fam, rule)][kind]] for kind in ("trouble", "lost", "healthy")]
        print(f"| **pooled** | {rule} " + _summary(*pooled))
    print("\nmisses of ours (family | cell | seed | ratio):")
    for m in misses:
        print("  " + m)


if __name__ == "__main__":
    commands = {"run": run, "analyse": analyse}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2:])
