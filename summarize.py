import json, glob, statistics, sys, os
dirs = sys.argv[1:] or ["results"]
rows = {}
for d in dirs:
    for p in sorted(glob.glob(f"{d}/*.jsonl")):
        for l in open(p):
            r = json.loads(l); rows.setdefault(r["family"], {})[(r["seed"], r["mode"])] = r
print("family | seeds | healthy(warn) | warn-run alerts kind@step | expl(warn) | clip-run alerts | clip ratio worst/median (healthy pairs) | notices (clip runs, on healthy)")
for fam, R in rows.items():
    seeds = sorted({s for s, m in R})
    hw = [s for s in seeds if (s, "warn") in R and R[(s, "warn")]["healthy"]]
    wal = [f"s{s}:" + ",".join(f"{a['kind'][:4]}@{a['step']}" for a in R[(s, 'warn')]["alerts"]) for s in seeds if (s, 'warn') in R and R[(s, 'warn')]["alerts"]]
    wex = sum(1 for s in hw if any(a["kind"] == "exploding" for a in R[(s, "warn")]["alerts"]))
    cal = [f"s{s}:" + ",".join(f"{a['kind'][:4]}@{a['step']}" + ("" if R[(s, 'clip')]["healthy"] else "(unh)") for a in R[(s, 'clip')]["alerts"]) for s in seeds if (s, 'clip') in R and R[(s, 'clip')]["alerts"]]
    ratios = [R[(s, "clip")]["val_final"] / R[(s, "warn")]["val_final"] if R[(s, "warn")]["val_final"] > 0 else (1.0 if R[(s, "clip")]["val_final"] == 0 else float("inf")) for s in hw if (s, "clip") in R]
    allr = [R[(s, "clip")]["val_final"] / max(R[(s, "warn")]["val_final"], 1e-12) for s in seeds if (s, "clip") in R]
    nots = [s for s in seeds if (s, "clip") in R and R[(s, "clip")]["notices"]]
    nots_h = [s for s in nots if s in hw]
    unh = [f"s{s}:{R[(s, 'warn')]['reason']}" for s in seeds if (s, 'warn') in R and not R[(s, 'warn')]["healthy"]]
    print(f"{fam} | {len(seeds)} | {len(hw)} | {' '.join(wal) or '-'} | {wex} | {' '.join(cal) or '-'} | "
          f"{max(ratios):.3g}/{statistics.median(ratios):.3g} | {len(nots)} ({len(nots_h)} healthy: {nots_h}) | unhealthy: {unh}")
