#!/usr/bin/env python3
"""Draws one GPU run's decode, backward and float32 results as grouped-bar SVG charts, with the
peers measured in the same command beside ours. Standard library only (the hosts that hold the
results have no matplotlib).

Reads from RUN_DIR (the JSON lines the benches write; a chart whose files are absent is skipped):
  forward_ours.jsonl, forward_peer.jsonl   attention_kernel_bench --ws --varlen (ms_routed: the
                                           kernel the dispatch picks) and sdpa_peer.py
  decode_v2.jsonl, decode_peer_v2.jsonl    decode_bench and sdpa_peer.py --decode
  backward_ours.jsonl, backward_peer.jsonl backward_bench and sdpa_peer.py --backward
  fp32_v2.jsonl, fp32_peer_v2.jsonl        fp32_bench and sdpa_peer.py --dtype fp32
Writes to OUT_DIR:
  forward_<date>_<tag>.svg   TFLOP/s per (d, causal, seqlen): ours as routed, FA2, cuDNN
  decode_<date>_<tag>.svg    K+V TB/s per batch x kv_len: ours dense, ours paged (64), cuDNN, FA2,
                             and the device copy bandwidth as a line
  backward_<date>_<tag>.svg  TFLOP/s per (d, causal, seqlen), d 64 and 128: ours, ours
                             deterministic, FA2, cuDNN
  fp32_<date>_<tag>.svg      float32 TFLOP/s per (d, causal, seqlen): ours FULL, ours TF32,
                             PyTorch's efficient backend

A backward row that is missing from backward_ours.jsonl (a line cut short when the bench hit its
time cap) is taken from the bench's printed table when --backward-log names it: a text file, or
ARCHIVE.tar.xz:MEMBER. Such bars are marked in the chart's notes. A cell with no value has no bar.

Usage (the run of 2026-12-06):
  panels_svg.py bench/results/gpu_2026-12-06b bench/results --device "NVIDIA H100 80GB HBM3" \\
      --date 2026-12-06 --tag h100 --decode-commit 82bfd72 --backward-commit d22a9d9 \\
      --fp32-commit 82bfd72 --backward-note "Bucket 64: 128 x 128 tiles since d22a9d9 (call F)."
"""
import argparse
import json
import math
import pathlib
import tarfile
from xml.sax.saxutils import escape

# Colors: ours in blues, the peers in colors of their own, the same across the three charts.
OURS = "#1f5fa8"
OURS_LIGHT = "#79aee0"
CUDNN = "#8c8c8c"
FA2 = "#e69f00"
TORCH_EFFICIENT = "#2a9d6f"
LINE = "#c0392b"

# Layout in SVG user units (pixels).
BAR_W = 12
GROUP_GAP = 18
SECTION_GAP = 22
LEFT, RIGHT, TOP, PLOT_H = 78, 24, 96, 330
FONT = "font-family=\"DejaVu Sans, Arial, Helvetica, sans-serif\""


def load(path):
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def nice_ticks(top):
    """Tick values from 0 to at least `top`, with a step of 1, 2, 2.5 or 5 x 10^k, 4 to 8 steps."""
    raw = top / 6
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def tick_text(v):
    return f"{v:g}" if v == int(v) else f"{v:.1f}"


def text(x, y, s, size=12, anchor="middle", weight="normal", fill="#222", rotate=None, halo=False):
    transform = f" transform=\"rotate({rotate} {x:.1f} {y:.1f})\"" if rotate is not None else ""
    # A white outline under the glyphs keeps a value readable where it crosses a line.
    outline = " stroke=\"white\" stroke-width=\"2.5\" paint-order=\"stroke\"" if halo else ""
    return (f"<text x=\"{x:.1f}\" y=\"{y:.1f}\" font-size=\"{size}\" text-anchor=\"{anchor}\" "
            f"font-weight=\"{weight}\" fill=\"{fill}\"{outline} {FONT}{transform}>"
            f"{escape(s)}</text>")


def grouped_bars(title, subtitle, y_label, sections, series, hline=None, notes=(), digits=1):
    """Returns an SVG document (str).

    sections: [(section label, [(group label, [value or None per series]), ...]), ...]
    series:   [(legend name, color), ...], in bar order within a group
    hline:    (value, label) drawn across the plot, or None
    notes:    lines of text under the chart
    digits:   decimals of the value printed above each bar
    """
    n = len(series)
    n_groups = sum(len(groups) for _, groups in sections)
    # Text widths are estimated (about 0.6 em per character); the plot widens to hold the title,
    # the legend and the notes, with wider bars rather than empty margins.
    legend_w = sum(30 + 6.2 * len(name) for name, _ in series)
    legend_w += 40 + 6.6 * len(hline[1]) if hline else 0
    text_w = max([9.4 * len(title), 7.0 * len(subtitle), legend_w]
                 + [6.4 * len(note) for note in notes])
    bar_w, group_gap, section_gap = BAR_W, GROUP_GAP, SECTION_GAP
    plot_w = n_groups * (n * bar_w + group_gap) + section_gap * (len(sections) - 1)
    if plot_w < text_w:
        k = text_w / plot_w
        bar_w, group_gap, section_gap = bar_w * k, group_gap * k, section_gap * k
        plot_w = text_w
    group_w = n * bar_w + group_gap
    width = math.ceil(LEFT + plot_w + RIGHT)
    height = TOP + PLOT_H + 70 + 16 * len(notes) + 10
    values = [v for _, groups in sections for _, vs in groups for v in vs if v is not None]
    top = max(values + ([hline[0]] if hline else [])) * 1.12
    ticks = nice_ticks(top)
    y_max = ticks[-1]

    def y_of(v):
        return TOP + PLOT_H * (1 - v / y_max)

    out = [f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" "
           f"viewBox=\"0 0 {width} {height}\">",
           f"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>",
           text(LEFT, 24, title, size=15, anchor="start", weight="bold"),
           text(LEFT, 44, subtitle, size=12, anchor="start", fill="#444")]

    # Legend, one row above the plot.
    lx = LEFT
    for name, color in series:
        out.append(f"<rect x=\"{lx:.1f}\" y=\"58\" width=\"12\" height=\"12\" fill=\"{color}\"/>")
        out.append(text(lx + 17, 69, name, anchor="start"))
        lx += 30 + 6.2 * len(name)
    if hline:
        out.append(f"<line x1=\"{lx:.1f}\" y1=\"64\" x2=\"{lx + 22:.1f}\" y2=\"64\" stroke=\"{LINE}\" "
                   "stroke-width=\"2\" stroke-dasharray=\"6 3\"/>")
        out.append(text(lx + 27, 69, hline[1], anchor="start"))

    # Value axis: grid lines, ticks and the label.
    for t in ticks:
        y = y_of(t)
        out.append(f"<line x1=\"{LEFT}\" y1=\"{y:.1f}\" x2=\"{LEFT + plot_w}\" y2=\"{y:.1f}\" "
                   f"stroke=\"{'#444' if t == 0 else '#e3e3e3'}\" stroke-width=\"1\"/>")
        out.append(f"<line x1=\"{LEFT - 5}\" y1=\"{y:.1f}\" x2=\"{LEFT}\" y2=\"{y:.1f}\" "
                   "stroke=\"#444\"/>")
        out.append(text(LEFT - 8, y + 4, tick_text(t), size=11, anchor="end"))
    out.append(f"<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{TOP + PLOT_H}\" "
               "stroke=\"#444\"/>")
    out.append(text(22, TOP + PLOT_H / 2, y_label, size=12, rotate=-90))

    # The reference line goes under the bars and their values.
    if hline:
        y = y_of(hline[0])
        out.append(f"<line x1=\"{LEFT}\" y1=\"{y:.1f}\" x2=\"{LEFT + plot_w}\" y2=\"{y:.1f}\" "
                   f"stroke=\"{LINE}\" stroke-width=\"2\" stroke-dasharray=\"6 3\"/>")

    # Bars, each with its value above it; group labels; section labels under a bracket.
    x = LEFT + group_gap / 2
    for s, (section, groups) in enumerate(sections):
        if s:
            sep = x - (section_gap + group_gap) / 2
            out.append(f"<line x1=\"{sep:.1f}\" y1=\"{TOP}\" x2=\"{sep:.1f}\" "
                       f"y2=\"{TOP + PLOT_H + 44}\" stroke=\"#bbb\" stroke-dasharray=\"3 3\"/>")
        start = x
        for label, vs in groups:
            for i, v in enumerate(vs):
                if v is None:
                    continue
                bx, by = x + i * bar_w, y_of(v)
                value = f"{v:.{digits}f}"
                out.append(f"<rect x=\"{bx:.1f}\" y=\"{by:.1f}\" width=\"{bar_w - 1:.1f}\" "
                           f"height=\"{TOP + PLOT_H - by:.1f}\" fill=\"{series[i][1]}\">"
                           f"<title>{escape(f'{series[i][0]}, {label}: {value}')}</title></rect>")
                out.append(text(bx + bar_w / 2 + 3, by - 3, value, size=8, anchor="start",
                                fill="#333", rotate=-90, halo=True))
            out.append(text(x + n * bar_w / 2, TOP + PLOT_H + 16, label, size=11))
            x += group_w
        end = x - group_gap
        if section:
            yb = TOP + PLOT_H + 26
            out.append(f"<path d=\"M{start:.1f} {yb} v4 H{end:.1f} v-4\" fill=\"none\" "
                       "stroke=\"#666\"/>")
            out.append(text((start + end) / 2, yb + 18, section, size=12, weight="bold"))
        x += section_gap

    for i, note in enumerate(notes):
        out.append(text(LEFT, TOP + PLOT_H + 70 + 16 * i, note, size=11, anchor="start",
                        fill="#444"))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def kv_label(kv_len):
    return f"{kv_len // 1024}k" if kv_len % 1024 == 0 else str(kv_len)


def seq_label(seqlen):
    return f"{seqlen // 1024}k" if seqlen >= 1024 and seqlen % 1024 == 0 else str(seqlen)


def tflops_chart(title, peers, sections, series, notes):
    """A TFLOP/s chart over the standard grid's cells (16384 tokens per launch, model dim 2048);
    `peers` names what ran beside ours in the same command."""
    return grouped_bars(
        title,
        f"16384 tokens per launch, model dim 2048, x axis seqlen; ours and {peers} in the same "
        "command",
        "TFLOP/s (higher is better)",
        sections, series, notes=notes)


def forward_chart(run, args):
    ours = {}
    for r in load(run / "forward_ours.jsonl"):
        # Attention FLOPs as the peer counts them: 4 * batch * heads * seqlen^2 * d, halved when
        # causal.
        flops = 4 * r["batch"] * r["heads"] * r["seqlen"] ** 2 * r["d"] / (2 if r["causal"] else 1)
        ours[(r["d"], r["causal"], r["seqlen"])] = flops / (r["ms_routed"] * 1e-3) / 1e12
    peer = {(r["d"], r["causal"], r["seqlen"]): r for r in load(run / "forward_peer.jsonl")
            if r.get("kind") == "fwd"}
    sections = []
    for d in sorted({k[0] for k in peer}):
        for causal in (False, True):
            groups = [(seq_label(s), [ours.get((d, causal, s)), p["flash_tflops"],
                                      p["cudnn_tflops"]])
                      for (dd, c, s), p in sorted(peer.items()) if dd == d and c == causal]
            if groups:
                sections.append((f"d {d}, causal {'on' if causal else 'off'}", groups))
    notes = ["Ours: the kernel the dispatch routes to (warp-specialized TMA or wgmma), on packed "
             "(varlen) batches as the server launches them."]
    if args.forward_note:
        notes.append(args.forward_note)
    notes.append(f"Data: {run}/forward_ours.jsonl, forward_peer.jsonl.")
    return tflops_chart(
        f"Forward, bf16: {args.device}, {args.date}, commit {args.forward_commit}",
        "the peers (PyTorch SDPA)", sections, [("ours", OURS), ("FA2", FA2), ("cuDNN", CUDNN)],
        notes)


def decode_chart(run, args):
    ours = load(run / "decode_v2.jsonl")
    peer = {(r["batch"], r["kv_len"]): r for r in load(run / "decode_peer_v2.jsonl")}
    by = {(r["layout"], r["batch"], r["kv_len"]): r for r in ours}
    copy = ours[0]["copy_TBps"]
    groups = []
    for (batch, kv_len), p in peer.items():
        dense = by.get(("dense", batch, kv_len))
        paged = by.get(("paged64", batch, kv_len))
        groups.append((f"{batch} x {kv_label(kv_len)}", [
            dense and dense["ours_TBps"], paged and paged["ours_TBps"], p["cudnn_TBps"],
            p["flash_TBps"]]))
    r0 = ours[0]
    return grouped_bars(
        f"Decode, K+V bandwidth: {args.device}, {args.date}, commit {args.decode_commit}",
        f"GQA {r0['q_heads']}/{r0['kv_heads']}, head_dim {r0['d']}, bf16, one query row per "
        "sequence; ours and the peers (PyTorch SDPA) in the same command",
        "K+V read, TB/s (higher is better)",
        [("batch x kv_len", groups)],
        [("ours, dense", OURS), ("ours, pages of 64", OURS_LIGHT), ("cuDNN", CUDNN),
         ("FA2", FA2)],
        hline=(copy, f"device copy {copy:.2f} TB/s (1 GiB, read + write)"),
        notes=["Split counts come from the heuristic (dense: one block per SM; pages: two).",
               f"Data: {run}/decode_v2.jsonl, decode_peer_v2.jsonl."],
        digits=2)


def bench_table_rows(spec):
    """Rows of backward_bench's printed markdown table, keyed (d, causal, seqlen)."""
    if ":" in spec and spec.split(":", 1)[0].endswith((".tar.xz", ".tar.gz", ".tar")):
        archive, member = spec.split(":", 1)
        with tarfile.open(archive) as tar:
            body = tar.extractfile(member).read().decode()
    else:
        body = pathlib.Path(spec).read_text()
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0].isdigit():
            d, causal, seqlen = int(cells[0]), cells[1] == "1", int(cells[2])
            rows[(d, causal, seqlen)] = (float(cells[6]), float(cells[8]))
    return rows


def backward_chart(run, args):
    ours = {(r["d"], r["causal"], r["seqlen"]): r for r in load(run / "backward_ours.jsonl")}
    peer = load(run / "backward_peer.jsonl")
    logged = bench_table_rows(args.backward_log) if args.backward_log else {}
    from_log, absent = [], []
    sections = []
    for d in sorted({r["d"] for r in ours.values()}):
        for causal in (False, True):
            groups = []
            for p in sorted((r for r in peer if r["d"] == d and r["causal"] == causal),
                            key=lambda r: r["seqlen"]):
                key = (d, causal, p["seqlen"])
                mine, det = None, None
                if key in ours:
                    mine, det = ours[key]["ours_tflops"], ours[key]["ours_det_tflops"]
                elif key in logged:
                    mine, det = logged[key]
                    from_log.append(key)
                else:
                    absent.append(key)
                groups.append((seq_label(p["seqlen"]),
                               [mine, det, p["flash_tflops"], p["cudnn_tflops"]]))
            sections.append((f"d {d}, causal {'on' if causal else 'off'}", groups))

    def cells(keys):
        return ", ".join(f"d {d} causal {int(c)} {seq_label(s)}" for d, c, s in keys)

    notes = ["FLOPs as 2.5x the forward's (the peer's convention). Ours: default tiles of that "
             "commit; deterministic = dQ without atomics."]
    if from_log:
        notes.append(f"Ours at {cells(from_log)}: from the bench's printed table; their JSON "
                     "lines were cut short.")
    if absent:
        notes.append(f"No bar for ours at {cells(absent)}: the run passed the bench's time cap.")
    if args.backward_note:
        notes.append(args.backward_note)
    notes.append(f"Data: {run}/backward_ours.jsonl, backward_peer.jsonl.")
    return tflops_chart(
        f"Backward, bf16: {args.device}, {args.date}, commit {args.backward_commit}",
        "the peers (PyTorch SDPA)", sections,
        [("ours", OURS), ("ours, deterministic", OURS_LIGHT), ("FA2", FA2), ("cuDNN", CUDNN)],
        notes)


def fp32_chart(run, args):
    ours = {(r["precision"], r["d"], r["causal"], r["seqlen"]): r["ours_tflops"]
            for r in load(run / "fp32_v2.jsonl") if r.get("kind") == "fp32"}
    peer = {(r["d"], r["causal"], r["seqlen"]): r["efficient_tflops"]
            for r in load(run / "fp32_peer_v2.jsonl") if r.get("kind") == "fwd"}
    cells = sorted({k[1:] for k in ours})
    sections = []
    for d in sorted({c[0] for c in cells}):
        for causal in (False, True):
            groups = [(seq_label(s), [ours.get(("full", d, causal, s)),
                                      ours.get(("tf32", d, causal, s)),
                                      peer.get((d, causal, s))])
                      for dd, c, s in cells if dd == d and c == causal]
            sections.append((f"d {d}, causal {'on' if causal else 'off'}", groups))
    return tflops_chart(
        f"Float32 forward: {args.device}, {args.date}, commit {args.fp32_commit}",
        "PyTorch's float32 SDPA", sections,
        [("ours, FULL (3xTF32)", OURS), ("ours, TF32", OURS_LIGHT),
         ("PyTorch SDPA, efficient backend", TORCH_EFFICIENT)],
        ["FULL: three TF32 tensor-core products per product (3xTF32, each operand split in "
         "two); TF32: one. d 128: 128 x 32 tiles.",
         f"Data: {run}/fp32_v2.jsonl, fp32_peer_v2.jsonl."])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--device", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--tag", required=True, help="device tag in the file names, e.g. h100")
    p.add_argument("--forward-commit", default="?")
    p.add_argument("--decode-commit", default="?")
    p.add_argument("--backward-commit", default="?")
    p.add_argument("--fp32-commit", default="?")
    p.add_argument("--forward-note", help="one more line under the forward chart")
    p.add_argument("--backward-log", help="backward_bench's printed table: FILE or ARCHIVE:MEMBER")
    p.add_argument("--backward-note", help="one more line under the backward chart")
    args = p.parse_args()
    run, out = pathlib.Path(args.run_dir), pathlib.Path(args.out_dir)
    charts = (("forward", forward_chart, "forward_ours.jsonl"),
              ("decode", decode_chart, "decode_v2.jsonl"),
              ("backward", backward_chart, "backward_ours.jsonl"),
              ("fp32", fp32_chart, "fp32_v2.jsonl"))
    for name, chart, source in charts:
        if not (run / source).exists():
            continue
        path = out / f"{name}_{args.date}_{args.tag}.svg"
        path.write_text(chart(run, args))
        print(path)


if __name__ == "__main__":
    main()
