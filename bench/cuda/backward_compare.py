#!/usr/bin/env python3
"""Joins backward_bench --json lines with shared/peers/sdpa_peer.py --backward --json lines (same
device, same run) and prints, per cell (dtype, d, causal, seqlen), our TFLOP/s, the peers', and the
ratios ours / FA2 (the peer's "flash") and ours / cuDNN, default and deterministic dQ. Lines
of backward_bench --sm90 add both dK / dV kernels' TFLOP/s (mma.sync "sm80", Hopper "sm90") and
the Hopper kernel's ratios to FA2 and cuDNN.

Usage: backward_compare.py ours.jsonl peer.jsonl
"""
import json
import sys


def load(path, kind="bwd"):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("kind") != kind:
                continue
            rows[(r["dtype"], r["d"], bool(r["causal"]), r["seqlen"])] = r
    return rows


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ours = load(sys.argv[1])
    peer = load(sys.argv[2])
    families = any("sm90_tflops" in o for o in ours.values())
    head = ("| dtype | d | causal | seqlen | ours | ours det | FA2 | cuDNN | ours/FA2 | ours/cuDNN "
            "| det/FA2 |")
    if families:
        head += " sm80 | sm90 | sm90/FA2 | sm90/cuDNN |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for key in sorted(ours):
        o = ours[key]
        p = peer.get(key, {})
        fa2, cudnn = p.get("flash_tflops"), p.get("cudnn_tflops")
        line = (f"| {key[0]} | {key[1]} | {int(key[2])} | {key[3]} | {o['ours_tflops']} | "
                f"{o['ours_det_tflops']} | {fa2 if fa2 is not None else '-'} | "
                f"{cudnn if cudnn is not None else '-'} | {ratio(o['ours_tflops'], fa2)} | "
                f"{ratio(o['ours_tflops'], cudnn)} | {ratio(o['ours_det_tflops'], fa2)} |")
        if families:
            sm90 = o.get("sm90_tflops") or None
            line += (f" {o.get('sm80_tflops', '-')} | {sm90 if sm90 else '-'} | "
                     f"{ratio(sm90, fa2)} | {ratio(sm90, cudnn)} |")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
