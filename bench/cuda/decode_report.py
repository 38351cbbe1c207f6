#!/usr/bin/env python3
"""Turns one run's decode_bench JSON lines (ours.jsonl) and sdpa_peer.py --decode JSON lines
(peer.jsonl) into the markdown tables of bench/results/decode_<date>_<device>.md: K+V TB/s of
ours (dense and pages of 64) against cuDNN and FA2 on issue 21's grid with the ratios the bars
are stated in, the page-size sweep at 32 x 8k, and the device's copy bandwidth. When the run
also holds variants.jsonl / splits.jsonl (decode_bench --variants, --splits-list), a table each
gives every (variant, split count) configuration's TB/s per row, its ratio to the row's first
configuration (timed interleaved with it) and to cuDNN.

Usage: decode_report.py RUN_DIR --device NAME --commit SHA --date YYYY-MM-DD
"""
import argparse
import json
import pathlib

GRID = [(128, 2048), (32, 8192), (8, 32768), (2, 131072), (1, 8192), (1, 32768), (1, 131072)]


def load(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--device", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--date", required=True)
    args = p.parse_args()
    run = pathlib.Path(args.run_dir)
    # The production kernel's rows (older runs have no variant field).
    ours = [r for r in load(run / "ours.jsonl") if r.get("variant", "base") == "base"]
    peer = {(r["batch"], r["kv_len"]): r for r in load(run / "peer.jsonl")}
    copy = ours[0]["copy_TBps"]

    def find(layout, batch, kv_len):
        for r in ours:
            if r["layout"] == layout and r["batch"] == batch and r["kv_len"] == kv_len:
                return r
        return None

    def num(x):
        return "-" if x is None else f"{x:.2f}"

    def ratio(x, y):
        return "-" if x is None or not y else f"{x / y:.2f}"

    print(f"Device: {args.device}; date {args.date}; commit {args.commit}; copy bandwidth "
          f"(read + write) {copy:.3f} TB/s. K+V bytes read per second, TB/s.\n")
    # dense_hm: dense K/V in the peers' head-major layout (decode_bench, since 2026-12-06).
    print("| batch x kv_len | splits | ours dense | ours paged 64 | ours dense_hm | cuDNN | FA2 "
          "| dense / cuDNN | paged / cuDNN | dense_hm / cuDNN | dense / copy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for batch, kv_len in GRID:
        d = find("dense", batch, kv_len)
        g = find("paged64", batch, kv_len)
        hm = find("dense_hm", batch, kv_len)
        r = peer.get((batch, kv_len), {})
        cudnn, fa2 = r.get("cudnn_TBps"), r.get("flash_TBps")
        dt = d and d["ours_TBps"]
        gt = g and g["ours_TBps"]
        ht = hm and hm["ours_TBps"]
        print(f"| {batch} x {kv_len // 1024}k | {d['splits'] if d else '-'} | {num(dt)} | "
              f"{num(gt)} | {num(ht)} | {num(cudnn)} | {num(fa2)} | {ratio(dt, cudnn)} | "
              f"{ratio(gt, cudnn)} | {ratio(ht, cudnn)} | {ratio(dt, copy)} |")
    print("\n| 32 x 8k layout | TB/s | of copy bandwidth |")
    print("|---|---|---|")
    for r in ours:
        if r["batch"] == 32 and r["kv_len"] == 8192:
            print(f"| {r['layout']} | {r['ours_TBps']:.3f} | {r['ours_TBps'] / copy:.2f} |")
    for name in ("variants.jsonl", "splits.jsonl"):
        if (run / name).exists():
            print(f"\n{name}:")
            variants_table(load(run / name), peer)
    return 0


def variants_table(rows, peer):
    """One line per (row, configuration), in decode_bench's order; the first configuration of a
    row is the reference of its ratios."""
    print("\n| layout | batch x kv_len | variant | splits (forced) | TB/s | / first | / cuDNN |")
    print("|---|---|---|---|---|---|---|")
    first = {}
    for r in rows:
        key = (r["layout"], r["batch"], r["kv_len"])
        first.setdefault(key, r["ours_TBps"])
        cudnn = peer.get((r["batch"], r["kv_len"]), {}).get("cudnn_TBps")
        forced = r.get("forced_splits", 0)
        splits = f"{r['splits']}" + (f" ({forced})" if forced else "")
        vs_cudnn = f"{r['ours_TBps'] / cudnn:.2f}" if cudnn else "-"
        print(f"| {r['layout']} | {r['batch']} x {r['kv_len'] // 1024}k | {r['variant']} | "
              f"{splits} | {r['ours_TBps']:.3f} | {r['ours_TBps'] / first[key]:.3f} | "
              f"{vs_cudnn} |")


if __name__ == "__main__":
    raise SystemExit(main())
