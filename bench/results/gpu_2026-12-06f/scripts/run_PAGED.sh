#!/usr/bin/env bash
# Device call 3 (helper PAGED, issue 21): the warp-specialized kernel's paged K/V variant, routed
# (kRouteSm90WsPaged on, Sm90WsFasterFor).
#  1. flash_fwd_sm90ws_test, every case (dense, packed, paged: page sizes 16..256, partial pages,
#     forks, GQA 1/4/8/16 + MQA, key ranges, empty contexts, packed / dense q), 12 gtest shards in
#     parallel (the float64 reference on the host is the slow part), and beside them
#     compute-sanitizer memcheck and racecheck on paged cases.
#  2. attention_kernel_bench --paged 64 (bf16, d 64 / 128 / 256, causal 0 / 1, 512..16k): routed
#     dense vs old paged vs ws paged vs routed paged per cell, each paged o checked against the
#     old variant's on the same inputs; geometric means.
# Success: all shards PASSED, sanitizers 0 errors, bench rc 0 and its "routed" geomean >= 0.95.
set -u
T0=$SECONDS
tar xJf .gpu-packPAGED/b.tar.xz
V=$PWD/.gpuPAGED
O=$OUT/PAGED; mkdir -p $O
echo "=== PAGED start $(date -u +%T) commit $(cat $V/COMMIT) $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
export LD_LIBRARY_PATH=$V/lib
N=12
for i in $(seq 0 $((N-1))); do
  GTEST_TOTAL_SHARDS=$N GTEST_SHARD_INDEX=$i timeout -k 3 38 $V/bin/flash_fwd_sm90ws_test > $O/ws_shard$i.log 2>&1 &
done
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$SAN" ]; then
  timeout -k 3 38 $SAN --tool memcheck --error-exitcode 9 $V/bin/flash_fwd_sm90ws_test --gtest_filter='*paged_ps16_d64_causal*:*paged_key_range_ps256_causal*:*paged_fork_ps128*:*paged_dense_q_ps32*' > $O/memcheck.log 2>&1 &
  timeout -k 3 38 $SAN --tool racecheck --error-exitcode 9 $V/bin/flash_fwd_sm90ws_test --gtest_filter='*paged_ps64_d256_causal_sinks*:*paged_fork_ps32*:*paged_key_range_ps64_d64*' > $O/racecheck.log 2>&1 &
else
  echo "=== no compute-sanitizer"
fi
wait
echo "=== ws test ($((SECONDS-T0)) s): shards passed $(grep -l '^\[  PASSED' $O/ws_shard*.log | wc -l)/$N, tests OK $(cat $O/ws_shard*.log | grep -c '^\[       OK'), failed $(cat $O/ws_shard*.log | grep -c '^\[  FAILED  \] [CF]')"
grep -h "^\[  FAILED  \] [CF]\|Failure$" $O/ws_shard*.log | head -10
for f in memcheck racecheck; do [ -f $O/$f.log ] && { echo "=== $f"; grep -E "^\[  PASSED|^\[  FAILED|ERROR SUMMARY" $O/$f.log | head -4; }; done
LEFT=$((93 - (SECONDS - T0)))
[ $LEFT -gt 55 ] && LEFT=55
t0=$SECONDS; timeout -k 3 $LEFT $V/bin/attention_kernel_bench --paged 64 --dtype bf16 --json $O/paged.jsonl > $O/bench.log 2>&1; echo "=== bench rc=$? ($((SECONDS-t0)) s)"
grep -E "^\||^#" $O/bench.log | head -45
echo "=== PAGED end $(date -u +%T) ($((SECONDS-T0)) s)"
