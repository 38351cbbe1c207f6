#!/usr/bin/env bash
# Session 8, call A (main at COMMIT; bf16 + fp16 + fp8, buckets 64/128/256):
#  T. every GPU suite at once + sanitizer subsets: routed-but-unrun d58659d (decode per layout),
#     e55bd00 (H200 split rule), 676dae2 (sm90ws pair-major / bulk O store / persistent causal).
#  D. decode_bench + sdpa_peer --decode in the same command, split sweeps on the rows under 1.0.
#  S. lone step A/B in one process: defaults vs spin vs all four candidates; 64 sessions.
#  F. forward grid bf16 + fp16 (ours) and the peer's grid, fp8 vs bf16 at d 128.
set -u
T0=$SECONDS
export PYTHONUNBUFFERED=1
O=$OUT/A; mkdir -p $O
log() { echo "[$((SECONDS-T0)) s] $*"; }
tar xJf .gpu-packA/b.tar.xz
B=$PWD/.gpuA; export LD_LIBRARY_PATH=$B/lib
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
log "A $(cat $B/COMMIT) $(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.mem --format=csv,noheader)"
# ---- T
T=$O/tests; mkdir -p $T
cap=120
timeout -k 3 $cap $B/bin/flash_decode_test --gtest_filter='-Variants/*' > $T/decode.log 2>&1 &
for i in $(seq 0 7); do
  GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout -k 3 $cap $B/bin/flash_fwd_sm90ws_test > $T/ws_$i.log 2>&1 &
done
for i in 0 1 2; do
  GTEST_TOTAL_SHARDS=3 GTEST_SHARD_INDEX=$i timeout -k 3 $cap $B/bin/attention_cuda_test > $T/cuda_$i.log 2>&1 &
done
timeout -k 3 $cap $B/bin/flash_fwd_fp8_test > $T/fp8.log 2>&1 &
ATTN_TEST_BACKEND=cuda timeout -k 3 $cap $B/bin/session_integration_test > $T/session.log 2>&1 &
ATTN_TEST_BACKEND=cuda ATTN_SERVER_BINARY=$B/bin/attention_server ATTN_RANDOM_REQUESTS=1500 timeout -k 3 $cap $B/bin/server_integration_test > $T/server.log 2>&1 &
ATTN_TEST_BACKEND=cuda ATTN_SERVER_BINARY=$B/bin/attention_server ATTN_RANDOM_REQUESTS=1500 ATTN_RANDOM_SEED=23 timeout -k 3 $cap $B/bin/server_integration_test --gtest_filter='*RandomOption*' > $T/random23.log 2>&1 &
ATTN_TEST_BACKEND=cuda ATTN_CUDA_FP8=on ATTN_SERVER_BINARY=$B/bin/attention_server timeout -k 3 $cap $B/bin/server_fp8_integration_test > $T/server_fp8.log 2>&1 &
if [ -n "$SAN" ]; then
  df='*self_reset*:*small_page16*:*small_page64*:*small_page128*:*small_key_range*:*fork_page16_partial*:*small_splits3*:*hdim128*:*dense*'
  timeout -k 3 $cap $SAN --tool memcheck --error-exitcode 9 $B/bin/flash_decode_test --gtest_filter="$df" > $T/dec_memcheck.log 2>&1 &
  timeout -k 3 $cap $SAN --tool racecheck --error-exitcode 9 $B/bin/flash_decode_test --gtest_filter="$df" > $T/dec_racecheck.log 2>&1 &
  wf='*d128_s1000*:*varlen_d128_ragged*:*d64_s77*:*d96_s300*:*d120_s257*'
  timeout -k 3 $cap $SAN --tool memcheck --error-exitcode 9 $B/bin/flash_fwd_sm90ws_test --gtest_filter="$wf" > $T/ws_memcheck.log 2>&1 &
  timeout -k 3 $cap $SAN --tool racecheck --error-exitcode 9 $B/bin/flash_fwd_sm90ws_test --gtest_filter="$wf" > $T/ws_racecheck.log 2>&1 &
fi
wait
log "tests done"
for f in $T/*.log; do
  printf '%-14s ok %4s failed %3s skipped %3s %s %s\n' $(basename $f .log) "$(grep -c '^\[       OK' $f)" "$(grep -c '^\[  FAILED  \] [A-Za-z]' $f)" \
    "$(grep -c '^\[  SKIPPED \] [A-Za-z]' $f)" "$(grep -m1 -oE '^\[  PASSED  \] [0-9]+' $f)" "$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' $f)"
done
grep -h '^\[  FAILED  \] [A-Za-z]' $T/*.log | sort -u | cut -c1-150 | head -20
grep -h -B2 -A8 'Failure' $T/*.log | cut -c1-240 | head -40
(cd $O && tar cJf $OUT/A_tests.tar.xz tests && rm -rf tests)
# ---- D
D=$O/decode; mkdir -p $D
log "decode_bench"
timeout -k 3 40 $B/bin/decode_bench --json $D/ours.jsonl > $D/bench.log 2>&1; log "rc=$?"
log "peer --decode"
timeout -k 3 50 python3 - "$B" "$D/peer.jsonl" > "$D/peer.log" 2>&1 <<'PY'
import json, sys, types
sys.path.insert(0, sys.argv[1])
import torch
import sdpa_peer
out = open(sys.argv[2], "a")
def emit(row):
    out.write(json.dumps(row) + "\n"); out.flush(); print(json.dumps(row), flush=True)
print("# device:", torch.cuda.get_device_name(), "torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), flush=True)
for tokens, lens in [(262144, [2048, 8192, 32768, 131072]), (8192, [8192]), (32768, [32768]), (131072, [131072])]:
    sdpa_peer.decode_grid(types.SimpleNamespace(kv_lens=lens, decode_tokens=tokens, dtype="bf16"), torch.bfloat16, emit)
PY
log "rc=$?"
timeout -k 3 30 $B/bin/decode_bench --splits-list 0,1,2,3,4,6,8 --rows 128x2k,32x8k,8x32k,2x128k --json $D/splits_big.jsonl > $D/splits_big.log 2>&1; log "rc=$?"
timeout -k 3 25 $B/bin/decode_bench --splits-list 0,8,12,16,20,24,32,40,48 --rows 1x8k,1x32k,1x128k --json $D/splits_b1.jsonl > $D/splits_b1.log 2>&1; log "rc=$?"
python3 - $D <<'PY'
import json, sys, os
D = sys.argv[1]
peer = {}
for l in open(os.path.join(D, 'peer.jsonl')):
    r = json.loads(l)
    peer[(r.get('batch'), r.get('kv_len'))] = r
ours = [json.loads(l) for l in open(os.path.join(D, 'ours.jsonl'))]
print('| layout | b x len | ours TB/s (splits) | cuDNN | FA2 | ours/cuDNN |')
for r in ours:
    p = peer.get((r['batch'], r['kv_len']), {})
    c = p.get('cudnn_TBps') or p.get('cudnn_tbps') or 0
    f = p.get('flash_TBps') or p.get('fa2_TBps') or 0
    print(f"| {r['layout']} | {r['batch']}x{r['kv_len']//1024}k | {r['ours_TBps']:.3f} ({r['splits']}) | {c:.3f} | {f:.3f} | {r['ours_TBps']/c if c else 0:.3f} |")
PY
head -3 $D/peer.jsonl
(cd $O && tar cJf $OUT/A_decode.tar.xz decode)
# ---- S
S=$O/step; mkdir -p $S
declare -A envs=([old]="ATTN_X=1" [spin]="ATTN_COMPLETER_SPIN_US=1000" [new]="ATTN_COMPLETER_SPIN_US=1000 ATTN_LONE_EVENTS=0 ATTN_SLOT_WAKE_IF_WAITING=1 ATTN_ANSWER_FIRST=1")
declare -A port=([old]=50110 [spin]=50120 [new]=50130)
pids=()
for c in old spin new; do
  env ${envs[$c]} $B/bin/attention_server --address=127.0.0.1:${port[$c]} --health_address= \
    --metrics_address=127.0.0.1:$((port[$c]+1)) --session_pages=36000 --session_page_bytes=65536 \
    --device_memory_bytes=$((1<<30)) --pinned_host_bytes=$((256<<20)) --log_level=warning > $S/server_$c.log 2>&1 &
  pids+=($!)
done
$B/bin/fake_attention_server --address=127.0.0.1:50150 > $S/echo.log 2>&1 &
pids+=($!)
for c in old spin new; do for _ in $(seq 1 60); do $B/bin/attention_cli health --target=127.0.0.1:${port[$c]} >/dev/null 2>&1 && break; sleep 0.2; done; done
log "servers up"
common=(--context=8192 --heads=32 --kv_heads=8 --head_dim=128 --dtype=bf16 --layers=1)
timeout -k 3 75 $B/bin/attention_cli session-bench --ab_targets=old=127.0.0.1:50110,spin=127.0.0.1:50120,new=127.0.0.1:50130 \
  --echo_target=127.0.0.1:50150 --ab_rounds=10 --ab_block=100 --sessions=1 --steps=1000 --echo_calls=500 --warmup_steps=50 \
  "${common[@]}" --json=$S/ab.json > $S/ab.log 2>&1; log "ab rc=$?"
python3 - $S/ab.json <<'PY'
import json, sys, statistics
rows = json.load(open(sys.argv[1]))
for s in ['old', 'spin', 'new']:
    r = [x['step_p50_ms'] / x['echo_p50_ms'] for x in rows if x['server'] == s and x['echo_p50_ms'] > 0]
    p = [x['step_p50_ms'] for x in rows if x['server'] == s]
    e = [x['echo_p50_ms'] for x in rows if x['server'] == s]
    if r: print(f"{s:5s} ratios {' '.join('%.2f' % x for x in r)} median {statistics.median(r):.2f} max {max(r):.2f}; step p50 med {statistics.median(p):.3f} echo med {statistics.median(e):.3f}")
PY
for c in old new; do
  timeout -k 3 15 $B/bin/attention_cli session-bench --target=127.0.0.1:${port[$c]} "${common[@]}" \
    --sessions=64 --steps=64 --warmup_steps=4 --json=$S/many_$c.json > $S/many_$c.log 2>&1
  python3 -c "import json,sys;m=json.load(open(sys.argv[1]));print('64 sessions %s: %.0f steps/s, p50 %.2f ms, p99 %.2f ms, %.2f seq/launch, %d failed'%(sys.argv[2],m['steps_per_s'],m['step_latency_ms']['p50'],m['step_latency_ms']['p99'],m['batch_sequences_mean'],m.get('steps_failed',0)))" $S/many_$c.json $c 2>&1 | tail -1
done
kill -TERM "${pids[@]}" 2>/dev/null; sleep 1
(cd $O && tar cJf $OUT/A_step.tar.xz step)
# ---- F
F=$O/fwd; mkdir -p $F
log "fwd ours"
timeout -k 3 100 $B/bin/attention_kernel_bench --dtype bf16,fp16 --json $F/ours.jsonl > $F/ours.log 2>&1; log "rc=$?"
timeout -k 3 30 $B/bin/attention_kernel_bench --dtype bf16,fp8 --hdim 128 --causal 0,1 --seqlens 1024,4096,16384 --json $F/fp8.jsonl > $F/fp8.log 2>&1; log "rc=$?"
for dt in bf16 fp16; do
  log "peer $dt"
  timeout -k 3 100 python3 $B/sdpa_peer.py --dtype $dt --json $F/peer.jsonl > $F/peer_$dt.log 2>&1; log "rc=$?"
done
python3 - $F <<'PY'
import json, sys, os, math
F = sys.argv[1]
def rows(f):
    try: return [json.loads(l) for l in open(os.path.join(F, f))]
    except OSError: return []
o, p = rows('ours.jsonl'), rows('peer.jsonl')
print('ours keys', sorted(o[0].keys()) if o else None)
print('peer keys', sorted(p[0].keys()) if p else None)
PY
grep -E '^\| (fp8|bf16)' $F/fp8.log | head -14
(cd $O && tar cJf $OUT/A_fwd.tar.xz fwd)
rm -rf $O .gpuA
log "end"
