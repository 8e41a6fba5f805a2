"""Tables and lists for REPORT.md from results.jsonl and traces/."""

from __future__ import annotations

import json
import math
import statistics as st
import sys

from families import FAMILIES, TWIN

with open(sys.argv[1] if len(sys.argv) > 1 else "results.jsonl") as _f:
    R = [json.loads(line) for line in _f]


def med(xs):
    return st.median(xs) if xs else None


def trace(r):
    with open(f"traces/{r['family']}.{r['variant']}.{r['seed']}.json") as f:
        return json.load(f)["plain"]


def fmt(x):
    return "-" if x is None else (f"{x:g}" if isinstance(x, (int, float)) else str(x))


out = []
out.append(
    "| family | runs | healthy | healthy alerted (FA) | FA exploding/nonfinite | FA vanishing | failing alerted | failing not alerted | median 1st alert step (FA) | median 1st alert step (failing) |"  # noqa: E501
)
out.append("|---|---|---|---|---|---|---|---|---|---|")
tot = {"runs": 0, "h": 0, "fa": 0, "fae": 0, "fav": 0, "fal": 0, "fna": 0}
for fam in FAMILIES:
    rs = [r for r in R if r["family"] == fam]
    h = [r for r in rs if r["outcome"] == "healthy"]
    f = [r for r in rs if r["outcome"] == "failed"]
    fa = [r for r in h if r["alerts"]]
    fae = [r for r in fa if any(a["kind"] in ("exploding", "nonfinite") for a in r["alerts"])]
    fav = [r for r in fa if any(a["kind"] == "vanishing" for a in r["alerts"])]
    fal = [r for r in f if r["alerts"]]
    fna = [r for r in f if not r["alerts"]]
    out.append(
        f"| {fam} | {len(rs)} | {len(h)} | {len(fa)} | {len(fae)} | {len(fav)} | {len(fal)} | {len(fna)} | "
        f"{fmt(med([r['alerts'][0]['step'] for r in fa]))} | {fmt(med([r['alerts'][0]['step'] for r in fal]))} |"
    )
    for k, v in zip(("runs", "h", "fa", "fae", "fav", "fal", "fna"), (rs, h, fa, fae, fav, fal, fna)):
        tot[k] += len(v)
out.append(
    f"| **total** | {tot['runs']} | {tot['h']} | {tot['fa']} | {tot['fae']} | {tot['fav']} | {tot['fal']} | {tot['fna']} | | |"  # noqa: E501
)
print("\n".join(out))

print("\n### per variant\n")
print(
    "| family | variant (twin = ...) | seeds healthy/failed by outcome | alerts (kind@step, rule) per seed | stopped at |"  # noqa: E501
)
print("|---|---|---|---|---|")
for fam in FAMILIES:
    for v in ("healthy", "twin"):
        rs = sorted([r for r in R if r["family"] == fam and r["variant"] == v], key=lambda r: r["seed"])
        if not rs:
            continue
        hf = f"{sum(r['outcome'] == 'healthy' for r in rs)}/{sum(r['outcome'] == 'failed' for r in rs)}"
        al = "; ".join(
            f"s{r['seed']}{'H' if r['outcome'] == 'healthy' else 'F'}:"
            + (",".join(f"{a['kind']}@{a['step']}({a['rule']})" for a in r["alerts"]) or "none")
            for r in rs
        )
        stp = ", ".join(f"s{r['seed']}@{r['stop_step']}" for r in rs if r["stopped"]) or "-"
        name = v if v == "healthy" else f"twin: {TWIN[fam]}"
        print(f"| {fam} | {name} | {hf} | {al} | {stp} |")


def around(xs, i, k=4):
    lo, hi = max(0, i - k), min(len(xs), i + k + 1)
    return " ".join(f"{x:.3g}" for x in xs[lo:hi])


print("\n### false alarms (healthy by outcome, alerted)\n")
for r in R:
    if r["outcome"] != "healthy" or not r["alerts"]:
        continue
    t = trace(r)
    L, N = t["step_loss"], t["step_norm"]
    print(
        f"- {r['family']} {r['variant']} seed {r['seed']} (metric {r['metric_start']:.3g} -> {r['metric_end']:.3g}, ideal {r['metric_ideal']:.3g}); stopped: {r['stopped']} at {r['stop_step']}"  # noqa: E501
    )
    for a in r["alerts"]:
        i = a["step"]
        print(f"  - {a['kind']} @ {i} ({a['rule']}): {a['message']!r}")
        if i < len(L):
            print(f"    - plain run, steps {max(0, i - 4)}-{i + 4}: loss [{around(L, i)}], norm [{around(N, i)}]")
            pre = [x for x in N[: max(1, i)] if math.isfinite(x)]
            print(
                f"    - norm median before: {med(pre):.3g}, max before: {max(pre):.3g}; loss median first 10: {med(L[:10]):.3g}, last 10 before: {med(L[max(0, i - 10) : i] or L[:1]):.3g}"  # noqa: E501
            )

print("\n### failing runs not alerted\n")
for r in R:
    if r["outcome"] != "failed" or r["alerts"]:
        continue
    t = trace(r)
    L, N = t["step_loss"], t["step_norm"]
    fin = [x for x in N if math.isfinite(x)]
    print(
        f"- {r['family']} {r['variant']} seed {r['seed']}: metric {r['metric_start']:.3g} -> {r['metric_end']:.3g} (ideal {r['metric_ideal']:.3g}), "  # noqa: E501
        f"loss median first 10 {med(L[:10]):.3g}, last 10 {med(L[-10:]):.3g}, norm median {med(fin):.3g} max {max(fin):.3g}, "  # noqa: E501
        f"non-finite loss from {r['first_nonfinite_step_loss']}, weights non-finite {r['nonfinite_weights']}"
    )

print("\n### failing runs alerted: first alert vs first non-finite loss\n")
for r in R:
    if r["outcome"] != "failed" or not r["alerts"]:
        continue
    a = r["alerts"][0]
    print(
        f"- {r['family']} {r['variant']} s{r['seed']}: {a['kind']}@{a['step']} ({a['rule']}), first non-finite loss {r['first_nonfinite_step_loss']}, stopped {r['stopped']}@{r['stop_step']}"  # noqa: E501
    )

print("\n### GradWatch warnings that are not alerts (notices), report notices\n")
for r in R:
    alert_heads = {a["message"][:60] for a in r["alerts"]}
    extra = [w for w in r["gw_warnings"] if w.split(": ", 1)[-1][:60] not in alert_heads]
    if extra or r.get("report_notices"):
        print(f"- {r['family']} {r['variant']} s{r['seed']} ({r['outcome']}):")
        for w in extra:
            print(f"  - warning: {w[:300]!r}")
        for n in r.get("report_notices") or []:
            print(f"  - notice: {json.dumps(n)[:300]}")

print("\n### sanity\n")
bad = [f"{r['family']} {r['variant']} s{r['seed']}" for r in R if not r["prefix_match"]]
print(
    f"- GradWatch run's loss sequence identical to the plain run's up to its end: {len(R) - len(bad)}/{len(R)}"
    + (f" (differ: {bad})" if bad else "")
)
errs = [
    (r["family"], r["variant"], r["seed"], r["error"], r.get("error_plain"))
    for r in R
    if r.get("error") or r.get("error_plain")
]
print(f"- runs with an exception: {errs or 'none'}")
print(f"- compute: plain {sum(r['secs_plain'] for r in R):.0f} s, with GradWatch {sum(r['secs'] for r in R):.0f} s")
