#!/usr/bin/env python3
"""Joins fp32_bench's JSON lines with sdpa_peer.py --dtype fp32's (the same grid, the same run):
a markdown table of ours at each precision level (FULL, TF32, BF16) against PyTorch's float32
SDPA per cell, the FULL / efficient ratio summary, and the tile sweep and the d-256 kernel
variants (fp32_bench --variants) when they ran: each variant's TFLOP/s and ratio to the peer's
efficient backend beside the default's, per cell.

Usage: fp32_compare.py OURS.jsonl PEER.jsonl
"""
import json
import math
import sys


def fmt(x):
    return "-" if x is None else f"{x:.1f}"


def main():
    ours, tiles, peer, variants = {}, [], {}, {}
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if r.get("kind") == "fp32":
            ours[(r["precision"], r["d"], r["causal"], r["seqlen"])] = r["ours_tflops"]
        elif r.get("kind") == "fp32_tiles":
            tiles.append(r)
        elif r.get("kind") == "fp32_variants":
            variants.setdefault(r["variant"], {})[(r["d"], r["causal"], r["seqlen"])] = r
    for line in open(sys.argv[2]):
        r = json.loads(line)
        if r.get("kind") == "fwd":
            peer[(r["d"], r["causal"], r["seqlen"])] = r
    print("| d | causal | seqlen | FULL TFLOP/s | TF32 | BF16 | torch efficient | torch cudnn "
          "| FULL / efficient |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for (d, c, n), r in sorted(peer.items()):
        full = ours.get(("full", d, c, n))
        eff = r.get("efficient_tflops")
        ratio = full / eff if full and eff else None
        if ratio:
            ratios.append(ratio)
        print(f"| {d} | {int(c)} | {n} | {fmt(full)} | {fmt(ours.get(('tf32', d, c, n)))} | "
              f"{fmt(ours.get(('bf16', d, c, n)))} | {fmt(eff)} | {fmt(r.get('cudnn_tflops'))} | "
              f"{'-' if ratio is None else f'{ratio:.2f}x'} |")
    if ratios:
        g = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"\nFULL / efficient: min {min(ratios):.2f}x, geometric mean {g:.2f}x, max "
              f"{max(ratios):.2f}x, {sum(r >= 1.0 for r in ratios)} of {len(ratios)} cells >= 1.0x")
    if tiles:
        print("\n| tiles (FULL, plain) | d | causal | seqlen | TFLOP/s |\n|---|---|---|---|---|")
        for t in tiles:
            print(f"| {t['tiles']} | {t['d']} | {int(t['causal'])} | {t['seqlen']} | "
                  f"{t['ours_tflops']} |")
    if variants:
        names = sorted(variants)
        print("\n| d | causal | seqlen | default (ours / efficient) | "
              + " | ".join(names) + " |\n|---|---|---|---|" + "---|" * len(names))
        cells = sorted({k for v in variants.values() for k in v})
        for (d, c, n) in cells:
            eff = peer.get((d, c, n), {}).get("efficient_tflops")
            default = next(v[(d, c, n)] for v in variants.values() if (d, c, n) in v)[
                "default_tflops"]

            def cell(tf):
                return f"{tf:.1f}" + (f" / {tf / eff:.2f}x" if eff else "")

            row = [cell(default)]
            for name in names:
                r = variants[name].get((d, c, n))
                row.append("-" if r is None else cell(r["ours_tflops"]) +
                           ("" if r["o_ok"] else " DIFFERS"))
            print(f"| {d} | {int(c)} | {n} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
