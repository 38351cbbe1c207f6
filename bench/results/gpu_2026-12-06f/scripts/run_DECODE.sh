#!/usr/bin/env bash
# Helper DECODE (issue 21), device call 3: the L2 evict_first hint in three forms (call 2's form
# raised an illegal instruction), each first run alone; the forms that run are timed beside the
# production kernel (base) on the issue's 7 rows, dense and pages of 64, and the page-size row
# (32 x 8k, pages 16-256), with sdpa_peer.py --decode (cuDNN / FA2) in the same script; a batch-1
# split sweep; the decode tests (production path; the working forms' reference and bitwise
# tests); compute-sanitizer memcheck / racecheck over production cases and a working form.
# Budget: 95 s wall.
set -uo pipefail
t0=$(date +%s)
out=${OUT:-/tmp/out}/DECODE
mkdir -p "$out"
left() { echo $((93 - ($(date +%s) - t0))); }
step() { echo "=== $* (t=$(( $(date +%s) - t0 ))s)" >> "$out/steps.log"; }
tar xJf .gpu-packDECODE/b.tar.xz || { echo "DECODE: unpack failed"; exit 1; }
b=.gpuDECODE
export LD_LIBRARY_PATH="$PWD/$b/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
commit=$(cat $b/COMMIT)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader > "$out/device.txt" 2>&1

# Each form alone, one row, two repeats: an illegal instruction ends only its own process.
ok_forms=()
for f in ef_const ef_const_zfill ef_inline; do
  step "smoke $f"
  timeout 12 $b/bin/decode_bench --variants $f --rows 1x8k --reps 2 > "$out/smoke_$f.log" 2>&1
  rc=$?
  echo "$f $rc" >> "$out/smoke.txt"
  [ $rc -eq 0 ] && ok_forms+=("$f")
done
VARS=base; for f in "${ok_forms[@]}"; do VARS+=",$f"; done
first=${ok_forms[0]:-}
step "decode_bench $VARS"
timeout 25 $b/bin/decode_bench --variants $VARS --json "$out/ours.jsonl" > "$out/bench.log" 2>&1
bench_rc=$?
step "sdpa_peer --decode (one process: the 4 rows of 262144 tokens, then batch 1)"
timeout 30 python3 - "$b" "$out/peer.jsonl" > "$out/peer.log" 2>&1 <<'PY'
import json, sys, types
sys.path.insert(0, sys.argv[1])
import torch
import sdpa_peer
out = open(sys.argv[2], "a")
def emit(row):
    out.write(json.dumps(row) + "\n"); out.flush(); print(json.dumps(row), flush=True)
print("# device:", torch.cuda.get_device_name(), "torch", torch.__version__,
      "cudnn", torch.backends.cudnn.version(), flush=True)
for tokens, lens in [(262144, [2048, 8192, 32768, 131072]), (8192, [8192]), (32768, [32768]),
                     (131072, [131072])]:
    sdpa_peer.decode_grid(types.SimpleNamespace(kv_lens=lens, decode_tokens=tokens, dtype="bf16"),
                          torch.bfloat16, emit)
PY
peer_rc=$?
if [ -n "$first" ]; then
  step "split sweep, batch 1: base, $first"
  timeout 8 $b/bin/decode_bench --variants base,$first --splits-list 0,16,24,32 \
    --rows 1x8k,1x32k --json "$out/splits.jsonl" > "$out/splits.log" 2>&1
  step "tests: $first on every case, the working forms bitwise"
  vfilter="Variants/FlashDecodeVariantTest.*/$first"
  for f in "${ok_forms[@]}"; do vfilter+=":Variants/FlashDecodeVariantBitwiseTest.*/$f"; done
  timeout 20 $b/bin/flash_decode_test --gtest_filter="$vfilter" > "$out/variant_test.log" 2>&1
  vtest_rc=$?
else vtest_rc=skip; fi
step "tests: production path"
if [ "$(left)" -gt 8 ]; then
  timeout $(( $(left) > 25 ? 22 : $(left) - 3 )) $b/bin/flash_decode_test \
    --gtest_filter='-Variants/*' > "$out/test.log" 2>&1
  test_rc=$?
else test_rc=skip; fi
san='Cases/FlashDecodeTest.MatchesFloat64Reference/small_page16'
san+=':Cases/FlashDecodeTest.MatchesFloat64Reference/small_splits3'
[ -n "$first" ] && san+=":Variants/FlashDecodeVariantBitwiseTest.*/$first"
step "memcheck: $san"
if [ "$(left)" -gt 8 ]; then
  timeout $(( $(left) * 6 / 10 )) compute-sanitizer --tool memcheck --error-exitcode 9 \
    $b/bin/flash_decode_test --gtest_filter="$san" > "$out/memcheck.log" 2>&1
  mc_rc=$?
else mc_rc=skip; fi
step "racecheck: $san"
if [ "$(left)" -gt 4 ]; then
  timeout $(( $(left) - 1 )) compute-sanitizer --tool racecheck --error-exitcode 9 \
    $b/bin/flash_decode_test --gtest_filter="$san" > "$out/racecheck.log" 2>&1
  rc_rc=$?
else rc_rc=skip; fi
step "done"

# Summary to stdout.
echo "DECODE ($commit, $(cat "$out/device.txt")): forms that ran: ${ok_forms[*]:-none} ($(tr '\n' ' ' < "$out/smoke.txt")); bench rc=$bench_rc peer rc=$peer_rc"
for f in test variant_test; do
  [ -f "$out/$f.log" ] && echo "  $f: $(grep -E '^\[  (PASSED|FAILED)  \]' "$out/$f.log" | head -2 | tr '\n' ' ')"
done
grep -hE '^\[  FAILED  \] ' "$out/test.log" "$out/variant_test.log" 2>/dev/null | head -4
grep -h "copy bandwidth" "$out/bench.log" 2>/dev/null | sed 's/^/  /'
echo "  test rc=$test_rc variant_test rc=$vtest_rc memcheck rc=$mc_rc ($(grep -m1 'ERROR SUMMARY' "$out/memcheck.log" 2>/dev/null)) racecheck rc=$rc_rc ($(grep -m1 'RACECHECK SUMMARY' "$out/racecheck.log" 2>/dev/null))"
python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
def load(name):
    p = os.path.join(d, name)
    return [json.loads(l) for l in open(p) if l.startswith("{")] if os.path.exists(p) else []
ours, peer, splits = load("ours.jsonl"), load("peer.jsonl"), load("splits.jsonl")
cudnn = {(r["batch"], r["kv_len"]): r.get("cudnn_TBps") for r in peer}
fa2 = {(r["batch"], r["kv_len"]): r.get("flash_TBps") for r in peer}
variants = []
for r in ours:
    if r["variant"] not in variants: variants.append(r["variant"])
rows = [(128, 2048), (32, 8192), (8, 32768), (2, 131072), (1, 8192), (1, 32768), (1, 131072)]
print("  ours / cuDNN (TB/s in brackets); cuDNN, FA2 TB/s")
for layout in ("dense", "paged64"):
    print("  " + layout + ": " + " | ".join(variants))
    for bl in rows:
        cells = []
        c = cudnn.get(bl)
        for v in variants:
            m = [r for r in ours if r["layout"] == layout and (r["batch"], r["kv_len"]) == bl
                 and r["variant"] == v]
            cells.append("%.3f (%.2f)" % (m[0]["ours_TBps"] / c, m[0]["ours_TBps"]) if m and c
                         else "-")
        print("    %d x %dk: %s | cuDNN %s FA2 %s" % (bl[0], bl[1] // 1024, " | ".join(cells), c,
                                                   fa2.get(bl)))
print("  32 x 8k page sizes (TB/s): " + "; ".join(
    v + ": " + " ".join("%d=%.2f" % (r["page_size"], r["ours_TBps"]) for r in sorted(
        [r for r in ours if r["batch"] == 32 and r["kv_len"] == 8192 and r["page_size"] > 0
         and r["variant"] == v], key=lambda r: r["page_size"])) for v in variants))
if splits:
    print("  split sweep (us; forced:used splits, forced 0 = heuristic):")
    for layout in ("dense", "paged64"):
        for bt, n in ((1, 8192), (1, 32768)):
            for v in sorted({r["variant"] for r in splits}):
                m = sorted([r for r in splits if r["layout"] == layout and r["kv_len"] == n and
                            r["batch"] == bt and r["variant"] == v], key=lambda r: r["forced_splits"])
                print("    %s %dx%dk %s: %s" % (layout, bt, n // 1024, v, " ".join(
                    "%d:%d=%.1f" % (r["forced_splits"], r["splits"], r["us"]) for r in m)))
PY
