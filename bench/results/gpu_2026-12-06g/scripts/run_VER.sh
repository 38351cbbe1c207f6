#!/usr/bin/env bash
# Lead's verification pack (commit in COMMIT; bf16 + fp16 + fp8, buckets 64 / 128 / 256): the GPU
# server through its public RPC (the stateless suite with 2 x 3000 random option mixes against
# float64, the session suite, the FP8 suite incl. the bfloat16-copies path for what the FP8 kernel
# lacks).
set -u
T0=$SECONDS
O=$OUT/VER; mkdir -p $O
log() { echo "[$((SECONDS-T0)) s] $*"; }
tar xJf .gpu-packVER/b.tar.xz
B=$PWD/.gpuVER; export LD_LIBRARY_PATH=$B/lib
log "VER $(cat $B/COMMIT) $(nvidia-smi --query-gpu=name --format=csv,noheader)"
cap=75
export ATTN_TEST_BACKEND=cuda ATTN_SERVER_BINARY=$B/bin/attention_server
ATTN_RANDOM_REQUESTS=2000 timeout -k 3 $cap $B/bin/server_integration_test > $O/server.log 2>&1 &
ATTN_RANDOM_REQUESTS=2000 ATTN_RANDOM_SEED=11 timeout -k 3 $cap $B/bin/server_integration_test --gtest_filter='*RandomOption*' > $O/random7.log 2>&1 &
timeout -k 3 $cap $B/bin/session_integration_test > $O/session.log 2>&1 &
timeout -k 3 $cap $B/bin/server_fp8_integration_test > $O/server_fp8.log 2>&1 &
wait
for f in $O/*.log; do
  n=$(basename $f .log)
  printf '%-12s ok %4s failed %3s %s\n' $n "$(grep -c '^\[       OK' $f)" "$(grep -c '^\[  FAILED  \] [A-Za-z]' $f)" "$(grep -m1 -oE '^\[  PASSED  \] [0-9]+' $f)"
done
grep -h '^\[  FAILED  \] [A-Za-z]' $O/*.log | sort -u | cut -c1-150 | head -20
grep -h -A6 'Failure' $O/server.log $O/random7.log $O/session.log $O/server_fp8.log | cut -c1-300 | head -40
log "end"
