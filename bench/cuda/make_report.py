#!/usr/bin/env python3
"""Merges the kernel benchmark's JSON lines with the peer script's (shared/peers/sdpa_peer.py,
measured in the same command on the same GPU) into a Markdown report with per-cell ratios, and
renders a PNG chart (matplotlib).

Usage:
  make_report.py --ours kernel_bench.jsonl --peer peer.jsonl --device "NVIDIA H100 80GB HBM3" \
      --commit abc1234 --date 2026-11-22 --md kernel_2026-11-22.md --png kernel_2026-11-22.png
"""
import argparse
import json
import math
import sys


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def key(r):
    return (r["dtype"], r["d"], bool(r["causal"]), r["seqlen"])


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or not b else a / b


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--peer", required=True, action="append")
    ap.add_argument("--device", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png")
    args = ap.parse_args()

    ours_rows = load(args.ours)
    ours = {key(r): r for r in ours_rows if r.get("kind") == "fwd"}
    tiles = [r for r in ours_rows if r.get("kind") == "tiles"]
    memory = [r for r in ours_rows if r.get("kind") == "memory"]
    peer = {}
    for path in args.peer:
        for r in load(path):
            if r.get("kind") == "fwd":
                peer[key(r)] = r

    out = []
    out.append("# CUDA forward kernel vs PyTorch SDPA (FlashAttention-2, cuDNN)\n")
    out.append(f"- Device: {args.device}\n- Date: {args.date}\n- Commit: {args.commit}\n")
    out.append("- Shapes: batch x seqlen = 16384 tokens, heads x head_dim = 2048, "
               "seqlen_q = seqlen_k; TFLOP/s = 4 * B * H * S^2 * d (halved when causal).\n")
    out.append("- Ours: `attention_kernel_bench` (median of CUDA-event-timed launches, LSE "
               "written); peers: `shared/peers/sdpa_peer.py` (triton do_bench median), run in "
               "the same command on the same GPU. FA2 = SDPA's flash backend.\n\n")
    ratios_fa2, ratios_cudnn = [], []
    for dtype in ("bf16", "fp16"):
        cells = sorted(k for k in ours if k[0] == dtype)
        if not cells:
            continue
        out.append(f"## {dtype}\n\n")
        out.append("| d | causal | seqlen | batch | ours | FA2 | cuDNN | ours / FA2 | ours / cuDNN |\n")
        out.append("|---|---|---|---|---|---|---|---|---|\n")
        for k in cells:
            r = ours[k]
            p = peer.get(k, {})
            fa2, cudnn = p.get("flash_tflops"), p.get("cudnn_tflops")
            rf, rc = ratio(r["ours_tflops"], fa2), ratio(r["ours_tflops"], cudnn)
            if rf is not None:
                ratios_fa2.append((rf, k))
            if rc is not None:
                ratios_cudnn.append((rc, k))
            mark = " **<1**" if rf is not None and rf < 1.0 else ""
            out.append(f"| {k[1]} | {int(k[2])} | {k[3]} | {r['batch']} | "
                       f"{fmt(r['ours_tflops'])} | {fmt(fa2)} | {fmt(cudnn)} | "
                       f"{fmt(rf, 2)}{mark} | {fmt(rc, 2)} |\n")
        out.append("\n")

    def summary(name, rs):
        if not rs:
            return f"- vs {name}: no peer numbers\n"
        vals = [x for x, _ in rs]
        geo = math.exp(sum(math.log(x) for x in vals) / len(vals))
        worst = min(rs)
        below = sum(1 for x in vals if x < 1.0)
        return (f"- vs {name}: geometric mean {geo:.2f}x, worst {worst[0]:.2f}x "
                f"({worst[1][0]} d={worst[1][1]} causal={int(worst[1][2])} "
                f"seqlen={worst[1][3]}), cells below 1.0x: {below} of {len(vals)}\n")

    out.insert(4, "## Summary\n\n" + summary("FA2", ratios_fa2) + summary("cuDNN", ratios_cudnn) +
               "\n")

    for m in memory:
        out.append("## Memory: one 128k-token sequence\n\n")
        out.append(f"seqlen {m['seqlen']}, {m['heads']} heads, head_dim {m['d']}, bf16, with LSE: "
                   f"inputs + outputs + LSE = {m['io_bytes'] / 2**20:.1f} MiB; device memory in "
                   f"use after the runs = {m['used_bytes'] / 2**20:.1f} MiB (fixed workspace "
                   f"{(m['used_bytes'] - m['io_bytes']) / 2**20:.1f} MiB). Time: "
                   f"{m['ms_dense']:.1f} ms dense, {m['ms_causal']:.1f} ms causal.\n\n")

    if tiles:
        out.append("## Tile sweep (bf16)\n\n| tiles | d | causal | seqlen | TFLOP/s |\n"
                   "|---|---|---|---|---|\n")
        for r in tiles:
            out.append(f"| {r['tiles']} | {r['d']} | {int(r['causal'])} | {r['seqlen']} | "
                       f"{fmt(r['ours_tflops'])} |\n")
        out.append("\n")

    with open(args.md, "w") as f:
        f.write("".join(out))

    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        dtypes = [d for d in ("bf16", "fp16") if any(k[0] == d for k in ours)]
        hdims = sorted({k[1] for k in ours})
        fig, axes = plt.subplots(len(dtypes), len(hdims), figsize=(5 * len(hdims),
                                 4 * len(dtypes)), squeeze=False)
        for i, dtype in enumerate(dtypes):
            for j, d in enumerate(hdims):
                ax = axes[i][j]
                for causal, color in ((False, "tab:blue"), (True, "tab:orange")):
                    ks = sorted(k for k in ours if k[0] == dtype and k[1] == d and k[2] == causal)
                    xs = [k[3] for k in ks]
                    tag = "causal" if causal else "dense"
                    ax.plot(xs, [ours[k]["ours_tflops"] for k in ks], "-o", color=color,
                            label=f"ours {tag}")
                    fa = [peer.get(k, {}).get("flash_tflops") for k in ks]
                    cd = [peer.get(k, {}).get("cudnn_tflops") for k in ks]
                    ax.plot(xs, [float("nan") if v is None else v for v in fa], "--s",
                            color=color, alpha=0.7, label=f"FA2 {tag}")
                    ax.plot(xs, [float("nan") if v is None else v for v in cd], ":^",
                            color=color, alpha=0.5, label=f"cuDNN {tag}")
                ax.set_xscale("log", base=2)
                ax.set_title(f"{dtype}, head_dim {d}")
                ax.set_xlabel("seqlen (batch x seqlen = 16k)")
                ax.set_ylabel("TFLOP/s")
                ax.grid(True, alpha=0.3)
                if i == 0 and j == 0:
                    ax.legend(fontsize=7)
        fig.suptitle(f"Forward attention on {args.device} ({args.date}, {args.commit})")
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
