#!/usr/bin/env bash
# Lead's device call 1 (session 7): verification of what main routes, then baselines.
#  A. tests in parallel (cap 115 s): flash_fwd_fp8_test (dense multi-seq fix 97b7614, never run on a
#     GPU), flash_fwd_sm90ws_test in 10 shards (paged routed), attention_cuda_test in 4 shards,
#     flash_decode_test, GPU session / server / fp8-server suites, memcheck + racecheck subsets.
#  B. decode: decode_bench (production) + split sweeps at 128x2k / 32x8k / 1x32k / 1x8k, with
#     sdpa_peer.py --decode in the same script.
#  C. fp8 vs bf16 at d 128 (attention_kernel_bench).
#  D. lone session step: default vs ATTN_LONE_ZERO_COPY=0, rotated rounds, one echo; stage means;
#     64 sessions on one stream.
set -u
T0=$SECONDS
O=$OUT/C1; mkdir -p $O
log() { echo "[$((SECONDS-T0)) s] $*"; }
tar xJf .gpu-packC1/b.tar.xz
B=$PWD/.gpuC1; export LD_LIBRARY_PATH=$B/lib; export PYTHONUNBUFFERED=1
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
log "C1 $(cat $B/COMMIT) $(nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader)"
# ---- A. tests
A=$O/tests; mkdir -p $A
cap=115
timeout -k 3 $cap $B/bin/flash_fwd_fp8_test > $A/fp8.log 2>&1 &
for i in $(seq 0 9); do
  GTEST_TOTAL_SHARDS=10 GTEST_SHARD_INDEX=$i timeout -k 3 $cap $B/bin/flash_fwd_sm90ws_test > $A/ws_$i.log 2>&1 &
done
for i in 0 1 2 3; do
  GTEST_TOTAL_SHARDS=4 GTEST_SHARD_INDEX=$i timeout -k 3 $cap $B/bin/attention_cuda_test > $A/cuda_$i.log 2>&1 &
done
timeout -k 3 $cap $B/bin/flash_decode_test --gtest_filter='-Variants/*' > $A/decode.log 2>&1 &
ATTN_TEST_BACKEND=cuda timeout -k 3 $cap $B/bin/session_integration_test > $A/session.log 2>&1 &
ATTN_TEST_BACKEND=cuda ATTN_SERVER_BINARY=$B/bin/attention_server timeout -k 3 $cap $B/bin/server_integration_test > $A/server.log 2>&1 &
ATTN_TEST_BACKEND=cuda ATTN_CUDA_FP8=on ATTN_SERVER_BINARY=$B/bin/attention_server timeout -k 3 $cap $B/bin/server_fp8_integration_test > $A/server_fp8.log 2>&1 &
if [ -n "$SAN" ]; then
  f8='*d128_s256*:*d128_ragged_gqa_causal*:*varlen_causal_gqa*:*dense*:*d256_causal_sinks*'
  timeout -k 3 $cap $SAN --tool memcheck --error-exitcode 9 $B/bin/flash_fwd_fp8_test --gtest_filter="$f8" > $A/fp8_memcheck.log 2>&1 &
  timeout -k 3 $cap $SAN --tool racecheck --error-exitcode 9 $B/bin/flash_fwd_fp8_test --gtest_filter="$f8" > $A/fp8_racecheck.log 2>&1 &
  wp='*paged_ps16_d64_causal*:*paged_key_range_ps256_causal*:*paged_fork_ps128*:*paged_dense_q_ps32*:*paged_ps64_d256_causal_sinks*'
  timeout -k 3 $cap $SAN --tool memcheck --error-exitcode 9 $B/bin/flash_fwd_sm90ws_test --gtest_filter="$wp" > $A/ws_memcheck.log 2>&1 &
  timeout -k 3 $cap $SAN --tool racecheck --error-exitcode 9 $B/bin/flash_fwd_sm90ws_test --gtest_filter="$wp" > $A/ws_racecheck.log 2>&1 &
fi
wait
log "tests done"
for f in $A/*.log; do
  n=$(basename $f .log)
  printf '%-16s ok %4s failed %3s skipped %3s %s %s\n' $n "$(grep -c '^\[       OK' $f)" "$(grep -c '^\[  FAILED  \] [A-Za-z]' $f)" \
    "$(grep -c '^\[  SKIPPED \] [A-Za-z]' $f)" "$(grep -m1 -oE '^\[  PASSED  \] [0-9]+' $f)" "$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' $f)"
done
grep -h '^\[  FAILED  \] [A-Za-z]' $A/*.log | sort -u | head -20
grep -hE 'max\|o-ref\||worst' $A/fp8.log | head -5
(cd $O && tar cJf $OUT/tests.tar.xz tests && rm -rf tests)
# ---- B. decode
D=$O/decode; mkdir -p $D
log "decode_bench production"
timeout -k 3 40 $B/bin/decode_bench --json $D/ours.jsonl > $D/bench.log 2>&1; log "rc=$?"
log "split sweeps"
timeout -k 3 30 $B/bin/decode_bench --splits-list 0,1,2,3,4,6 --rows 128x2k,32x8k --json $D/splits_big.jsonl > $D/splits_big.log 2>&1; log "rc=$?"
timeout -k 3 25 $B/bin/decode_bench --splits-list 0,12,16,20,24,32,40 --rows 1x8k,1x32k --json $D/splits_b1.jsonl > $D/splits_b1.log 2>&1; log "rc=$?"
log "peer --decode"
timeout -k 3 40 python3 - "$B" "$D/peer.jsonl" > "$D/peer.log" 2>&1 <<'PY'
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
log "peer rc=$?"
grep -E '^\|' $D/bench.log | head -40
grep -E '^\|' $D/splits_big.log $D/splits_b1.log | head -60
grep -vE '^\{' $D/peer.log | tail -5; grep -oE '"(batch|kv_len|backend|tbps|TBps|bandwidth_tbps)": ?[^,}]*' $D/peer.jsonl | paste -sd' ' | fold -w 400 | head -20
(cd $O && tar cJf $OUT/decode.tar.xz decode && rm -rf decode)
# ---- C. fp8 vs bf16
F=$O/fp8; mkdir -p $F
log "fp8 bench"
timeout -k 3 40 $B/bin/attention_kernel_bench --dtype bf16,fp8 --hdim 128 --causal 0,1 --seqlens 1024,4096,16384 --json $F/bench.jsonl > $F/bench.log 2>&1; log "rc=$?"
grep -E '^\| (fp8|bf16)|^# device' $F/bench.log | head -20
(cd $O && tar cJf $OUT/fp8.tar.xz fp8 && rm -rf fp8)
# ---- D. lone step
log "lone step"
OUT=$O bash .gpu-packC1/step.sh
(cd $O && tar cJf $OUT/step.tar.xz STEP && rm -rf STEP)
log "end"
