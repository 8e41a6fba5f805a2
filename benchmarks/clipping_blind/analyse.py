"""Scores of ``run.py``'s results: per cell and seed, each rule's metric over the best fixed threshold's (lost: inf);
healthy cells also over no clipping's. Then the table per family and pooled.

    python analyse.py FILE [late]

With ``late`` (added after the round; needs ``run.py --late``), the metric is the median over the last 100 steps."""

import json
import math
import statistics
import sys
from collections import defaultdict

FIXED = [f"fixed {v:g}" for v in (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)]
SHOW = ["ours", "ZClip", "AutoClip p10", "AGC 0.02", "AGC 0.16", "none", "ours+clip_max_norm=1"]
METRIC = sys.argv[2] if len(sys.argv) > 2 else "metric"
res = defaultdict(dict)
with open(sys.argv[1] if len(sys.argv) > 1 else "clipping_blind.jsonl") as results:
    for line in results:
        d = json.loads(line)
        if METRIC in d:  # lines written without --late have no "late": their cell is left out
            res[(d["family"], d["cell"], d["seed"])][d["rule"]] = d[METRIC]


def ratio(a, b):
    if math.isinf(a):
        return math.inf
    return a / b


rows = []
stats = defaultdict(lambda: defaultdict(list))  # (fam, rule) -> kind -> values
for (fam, cell, seed), r in sorted(res.items()):
    if not all(k in r for k in FIXED + SHOW):
        continue
    best = min(r[k] for k in FIXED)
    healthy = cell == "healthy"
    line = [fam, cell, seed, f"best={best:.4g}"]
    for rule in SHOW:
        x = ratio(r[rule], best) if math.isfinite(best) else math.nan
        line.append(f"{rule}:{x:.2f}")
        if healthy:
            h = ratio(r[rule], r["none"]) if math.isfinite(r["none"]) else math.nan
            stats[(fam, rule)]["healthy"].append(h)
            line.append(f"(/none {h:.3f})")
        else:
            stats[(fam, rule)]["trouble"].append(x)
            stats[(fam, rule)]["lost"].append(math.isinf(r[rule]))
    print(" ".join(map(str, line)))


def fmt(v):
    return "inf" if math.isinf(v) else f"{v:.2f}"


def summary(vals_t, lost, vals_h):
    t = [v for v in vals_t if not math.isnan(v)]
    within = sum(v <= 2 for v in t)
    med = statistics.median(t) if t else math.nan
    h = [v for v in vals_h if not math.isnan(v)]
    hw = sum(v <= 1.1 for v in h)
    return f"| {within}/{len(t)} | {fmt(max(t))} | {fmt(med)} | {sum(lost)} | {hw}/{len(h)} | {max(h):.3f} |"


print("\n| family | rule | trouble <=2x best fixed | worst | median | lost | healthy <=1.1x none | worst |")
print("|---|---|---|---|---|---|---|---|")
fams = sorted({k[0] for k in stats})
for fam in fams:
    for rule in SHOW:
        s = stats[(fam, rule)]
        print(f"| {fam} | {rule} " + summary(s["trouble"], s["lost"], s["healthy"]))
for rule in SHOW:
    T, L, H = [], [], []
    for fam in fams:
        T += stats[(fam, rule)]["trouble"]
        L += stats[(fam, rule)]["lost"]
        H += stats[(fam, rule)]["healthy"]
    print(f"| **pooled** | {rule} " + summary(T, L, H))
