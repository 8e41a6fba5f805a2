"""Scores of ``run.py``'s results: per cell and seed, each rule's metric over the best fixed threshold's in hindsight
(the best of the fixed ones for that cell and seed); healthy cells also over no clipping's. Then the table per family
and pooled, as ``clipping_blind/analyse.py``; then the misses of ``ours`` (trouble above 2x, healthy above 1.1x).

    python analyse.py FILE [late]

``late``: the median held-out metric over the last 100 steps (every 10) instead of the final one. *Lost*: a
non-finite result where a fixed threshold's is finite."""

import json
import math
import statistics
import sys
from collections import defaultdict

FIXED = [f"fixed {v:g}" for v in (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)]
SHOW = ["ours", "ZClip", "AutoClip p10", "AGC 0.02", "AGC 0.16", "none"]
METRIC = sys.argv[2] if len(sys.argv) > 2 else "metric"
res = defaultdict(dict)
with open(sys.argv[1] if len(sys.argv) > 1 else "clipping_blind2.jsonl") as results:
    for line in results:
        d = json.loads(line)
        res[(d["family"], d["cell"], d["seed"])][d["rule"]] = d[METRIC]


def ratio(a, b):
    if math.isinf(a):
        return math.inf
    return a / b


stats = defaultdict(lambda: defaultdict(list))  # (fam, rule) -> kind -> values
misses = []
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
            if rule == "ours" and h > 1.1:
                misses.append(f"{fam} | {cell} | {seed} | healthy: {h:.3f}x none ({x:.2f}x best fixed)")
        else:
            stats[(fam, rule)]["trouble"].append(x)
            stats[(fam, rule)]["lost"].append(math.isinf(r[rule]) and math.isfinite(best))
            if rule == "ours" and x > 2:
                misses.append(f"{fam} | {cell} | {seed} | trouble: {x:.2f}x best fixed (none {r['none'] / best:.2f}x)")
    print(" ".join(map(str, line)))


def fmt(v):
    return "inf" if math.isinf(v) else f"{v:.2f}" if v < 1000 else f"{v:.3g}"


def summary(vals_t, lost, vals_h):
    t = [v for v in vals_t if not math.isnan(v)]
    within = sum(v <= 2 for v in t)
    worst = fmt(max(t)) if t else "-"
    med = fmt(statistics.median(t)) if t else "-"
    h = [v for v in vals_h if not math.isnan(v)]
    hw = sum(v <= 1.1 for v in h)
    hworst = f"{max(h):.3f}" if h else "-"
    return f"| {within}/{len(t)} | {worst} | {med} | {sum(lost)} | {hw}/{len(h)} | {hworst} |"


print(f"\nscore: {METRIC}")
print("\n| family | rule | trouble <=2x best fixed | worst | median | lost | healthy <=1.1x none | worst |")
print("|---|---|---|---|---|---|---|---|")
fams = sorted({k[0] for k in stats})
for fam in fams:
    for rule in SHOW:
        s = stats[(fam, rule)]
        print(f"| {fam} | {rule} " + summary(s["trouble"], s["lost"], s["healthy"]))
for rule in SHOW:
    t, lost, h = [], [], []
    for fam in fams:
        t += stats[(fam, rule)]["trouble"]
        lost += stats[(fam, rule)]["lost"]
        h += stats[(fam, rule)]["healthy"]
    print(f"| **pooled** | {rule} " + summary(t, lost, h))
print("\nmisses of ours (family | cell | seed | ratio):")
for m in misses:
    print("  " + m)
