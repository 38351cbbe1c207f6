#!/usr/bin/env python3
"""Markdown tables from run_paged_on_gpu.sh's bench.jsonl: the dense forward before / after per
kernel family (runs base_<family>, new_<family>, and the repeat base_sm90_2 / new_sm90_2), and
paged prefill against the dense kernel in the same run (paged_<family>, kind "paged").

Usage: bench/cuda/paged_report.py BENCH_JSONL > report.md
"""
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["run"], {})[(r["d"], r["causal"], r["seqlen"])] = r
def cells(run):
    return sorted(by.get(run, {}).keys(), key=lambda k: (k[0], k[1], k[2]))
out = []
for fam in ["sm90", "sm80"]:
    base, new, base2, new2 = by.get("base_" + fam, {}), by.get("new_" + fam, {}), by.get("base_%s_2" % fam, {}), by.get("new_%s_2" % fam, {})
    if base and new:
        out.append("\n### Dense forward before / after (%s family), bf16\n" % fam)
        hdr = "| d | causal | seqlen | before ms | after ms | after / before time |"
        if base2 and new2: hdr += " repeat: before ms | after ms | ratio |"
        out.append(hdr)
        out.append("|" + "---|" * (hdr.count("|") - 1))
        ratios, ratios2 = [], []
        for k in cells("base_" + fam):
            if k not in new: continue
            b, n = base[k]["ms"], new[k]["ms"]
            ratios.append(n / b)
            line = "| %d | %d | %d | %.3f | %.3f | %.3f |" % (k[0], k[1], k[2], b, n, n / b)
            if base2 and new2 and k in base2 and k in new2:
                b2, n2 = base2[k]["ms"], new2[k]["ms"]
                ratios2.append(n2 / b2)
                line += " %.3f | %.3f | %.3f |" % (b2, n2, n2 / b2)
            out.append(line)
        out.append("\ngeomean after/before time: %.4f (min %.3f, max %.3f)%s" % (
            statistics.geometric_mean(ratios), min(ratios), max(ratios),
            "; repeat %.4f" % statistics.geometric_mean(ratios2) if ratios2 else ""))
    paged = by.get("paged_" + fam, {})
    if paged:
        out.append("\n### Paged prefill (64-key pages, random order) vs dense, same run (%s family), bf16\n" % fam)
        out.append("| d | causal | seqlen | batch | dense ms | paged ms | paged TFLOP/s | paged speed / dense |")
        out.append("|---|---|---|---|---|---|---|---|")
        rs = []
        for k in cells("paged_" + fam):
            r = paged[k]
            rs.append(r["paged_over_dense"])
            fl = 4.0 * r["batch"] * r["heads"] * r["seqlen"] ** 2 * r["d"] / (2 if r["causal"] else 1)
            out.append("| %d | %d | %d | %d | %.3f | %.3f | %.1f | %.3f |" % (k[0], k[1], k[2], r["batch"], r["ms_dense"], r["ms_paged"], fl / (r["ms_paged"] * 1e-3) / 1e12, r["paged_over_dense"]))
        out.append("\ngeomean paged/dense speed: %.4f (min %.3f, max %.3f)" % (statistics.geometric_mean(rs), min(rs), max(rs)))
print("\n".join(out))
