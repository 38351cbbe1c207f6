#!/usr/bin/env bash
# Session 8, call C, the lead's part (bf16 + fp16, buckets 64 / 128, main at COMMIT):
#  T. ATTN_LONE_PULL (the append kernel pulls the lone step's inputs from mapped pinned memory):
#     PagedAppendTest (pull cases twice over one host buffer) + memcheck, the GPU session suite
#     with it on, and with main's defaults.
#  S. the lone step: defaults vs pull / ev0 / bycopy / pull+ev0, twelve rotated rounds in one
#     process; 64 sessions; step timelines.
set -u
T0=$SECONDS
export PYTHONUNBUFFERED=1
O=$OUT/M; mkdir -p $O
log() { echo "[$((SECONDS-T0)) s] $*"; }
tar xJf .gpu-packM/b.tar.xz
B=$PWD/.gpuM; export LD_LIBRARY_PATH=$B/lib
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
log "M $(cat $B/COMMIT) $(nvidia-smi --query-gpu=name --format=csv,noheader)"
T=$O/tests; mkdir -p $T
timeout -k 3 40 $B/bin/flash_decode_test --gtest_filter='PagedAppend*' > $T/append.log 2>&1 &
[ -n "$SAN" ] && timeout -k 3 60 $SAN --tool memcheck --error-exitcode 9 $B/bin/flash_decode_test --gtest_filter='PagedAppend*' > $T/append_memcheck.log 2>&1 &
ATTN_LONE_PULL=1 ATTN_TEST_BACKEND=cuda timeout -k 3 70 $B/bin/session_integration_test > $T/session_pull.log 2>&1 &
ATTN_LONE_PULL=1 ATTN_LONE_EVENTS=0 ATTN_TEST_BACKEND=cuda timeout -k 3 70 $B/bin/session_integration_test > $T/session_pull_ev0.log 2>&1 &
wait
for f in $T/*.log; do
  printf '%-18s ok %4s failed %3s %s %s\n' $(basename $f .log) "$(grep -c '^\[       OK' $f)" "$(grep -c '^\[  FAILED  \] [A-Za-z]' $f)" \
    "$(grep -m1 -oE '^\[  PASSED  \] [0-9]+' $f)" "$(grep -m1 -E 'ERROR SUMMARY' $f)"
done
grep -h '^\[  FAILED  \] [A-Za-z]' $T/*.log | sort -u | cut -c1-150 | head
grep -h -A6 'Failure' $T/*.log | cut -c1-240 | head -20
(cd $O && tar cJf $OUT/M_tests.tar.xz tests && rm -rf tests)
S=$O/step; mkdir -p $S
names=(old pull pullev0)
declare -A envs=([old]="ATTN_X=1" [pull]="ATTN_LONE_PULL=1" [ev0]="ATTN_LONE_EVENTS=0" [bycopy]="ATTN_APPEND_BY_COPY=1" [pullev0]="ATTN_LONE_PULL=1 ATTN_LONE_EVENTS=0")
declare -A port
pids=()
i=0
for c in "${names[@]}"; do
  port[$c]=$((50200 + 10 * i)); i=$((i + 1))
  env ${envs[$c]} $B/bin/attention_server --address=127.0.0.1:${port[$c]} --health_address= \
    --metrics_address=127.0.0.1:$((port[$c]+1)) --session_pages=20000 --session_page_bytes=65536 \
    --device_memory_bytes=$((1<<30)) --pinned_host_bytes=$((256<<20)) --log_level=warning > $S/server_$c.log 2>&1 &
  pids+=($!)
done
$B/bin/fake_attention_server --address=127.0.0.1:50150 > $S/echo.log 2>&1 &
pids+=($!)
for c in "${names[@]}"; do for _ in $(seq 1 80); do $B/bin/attention_cli health --target=127.0.0.1:${port[$c]} >/dev/null 2>&1 && break; sleep 0.2; done; done
log "servers up"
uptime
common=(--context=8192 --heads=32 --kv_heads=8 --head_dim=128 --dtype=bf16 --layers=1)
targets=$(for c in "${names[@]}"; do printf '%s=127.0.0.1:%s,' $c ${port[$c]}; done); targets=${targets%,}
timeout -k 3 80 $B/bin/attention_cli session-bench --ab_targets=$targets \
  --echo_target=127.0.0.1:50150 --ab_rounds=10 --ab_block=100 --sessions=1 --steps=1000 --echo_calls=500 --warmup_steps=50 \
  "${common[@]}" --json=$S/ab.json > $S/ab.log 2>&1; log "ab rc=$?"
python3 - $S/ab.json "${names[@]}" <<'PY'
import json, sys, statistics
rows = json.load(open(sys.argv[1]))
for s in sys.argv[2:]:
    r = [x['step_p50_ms'] / x['echo_p50_ms'] for x in rows if x['server'] == s and x['echo_p50_ms'] > 0]
    p = [x['step_p50_ms'] for x in rows if x['server'] == s]
    e = [x['echo_p50_ms'] for x in rows if x['server'] == s]
    if r: print(f"{s:8s} ratios {' '.join('%.2f' % x for x in r)} median {statistics.median(r):.2f} max {max(r):.2f}; step p50 med {statistics.median(p):.4f} echo med {statistics.median(e):.4f}")
PY
for c in old pull; do
  timeout -k 3 15 $B/bin/attention_cli session-bench --target=127.0.0.1:${port[$c]} "${common[@]}" \
    --sessions=64 --steps=64 --warmup_steps=4 --json=$S/many_$c.json > $S/many_$c.log 2>&1
  python3 -c "import json,sys;m=json.load(open(sys.argv[1]));print('64 sessions %s: %.0f steps/s, p50 %.2f ms, p99 %.2f ms, %.2f seq/launch, %d failed'%(sys.argv[2],m['steps_per_s'],m['step_latency_ms']['p50'],m['step_latency_ms']['p99'],m['batch_sequences_mean'],m.get('steps_failed',0)))" $S/many_$c.json $c 2>&1 | tail -1
done
kill -TERM "${pids[@]}" 2>/dev/null; sleep 1
log "traces"
for c in pull; do
  env ${envs[$c]} ATTN_STEP_TRACE=1 $B/bin/attention_server --address=127.0.0.1:50400 --health_address= \
    --metrics_address= --session_pages=4096 --session_page_bytes=65536 \
    --device_memory_bytes=$((1<<30)) --pinned_host_bytes=$((256<<20)) --log_level=warning > $S/trace_$c.log 2>&1 &
  tp=$!
  for _ in $(seq 1 80); do $B/bin/attention_cli health --target=127.0.0.1:50400 >/dev/null 2>&1 && break; sleep 0.2; done
  timeout -k 3 20 $B/bin/attention_cli session-bench --target=127.0.0.1:50400 "${common[@]}" --sessions=1 --steps=1500 --warmup_steps=50 > $S/trace_bench_$c.log 2>&1
  kill -TERM $tp; timeout 4 tail --pid=$tp -f /dev/null
  echo "--- $c"; grep step_trace $S/trace_$c.log | tail -2 | cut -c1-420
done
(cd $O && tar cJf $OUT/M_step.tar.xz step && rm -rf step)
D=$O/decode; mkdir -p $D
log "decode sweep"
timeout -k 3 45 $B/bin/decode_bench --grid 1x32k,1x128k,8x32k,2x128k --page-sizes 64 --splits-list 0,16,32 --json $D/sweep.jsonl > $D/sweep.log 2>&1; log "rc=$?"
python3 - $D/sweep.jsonl <<'PY'
import json, sys
from collections import defaultdict
d = defaultdict(list)
for l in open(sys.argv[1]):
    r = json.loads(l); d[(r['layout'], r['batch'], r['kv_len'])].append((r['forced_splits'], r['splits'], r['ours_TBps']))
for k, v in d.items():
    if k[0] == 'dense_hm': continue
    best = max(v, key=lambda x: x[2])
    print(k[0], f"{k[1]}x{k[2]//1024}k", ' '.join(f"{f}:{s}:{t:.3f}" for f, s, t in v), '| best', best[1], f"{best[2]:.3f}")
PY
(cd $O && tar cJf $OUT/M_decode.tar.xz decode && rm -rf decode)
log "end"
