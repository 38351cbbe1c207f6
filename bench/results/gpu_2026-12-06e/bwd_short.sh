#!/usr/bin/env bash
# The lead's trim of helper B256c's bwd_cmd.sh to ~240 s: every case against float64 (each
# variant), the long non-causal cells side by side with the peer, then memcheck on small cases.
set -uo pipefail
B=.gpuB; mkdir -p "$OUT"; S="$OUT/summary.log"; export PYTHONUNBUFFERED=1
echo "commit $(cat $B/COMMIT)" | tee "$S"
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "=== $name rc=$rc ($((SECONDS - t0)) s)" | tee -a "$S"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$name.log" | head -20 | tee -a "$S"; }
step test 75 "$B/run" attention_backward_cuda_test
grep -iE "FAIL|WRONG" "$OUT/test.log" | head -10 | tee -a "$S"
V="split bulk,split early bulk,split bulk stagger,split bulk prefetch,split bulk tma,split early bulk tma"
step bench_long 90 "$B/run" backward_bench --sm90-variants --hdim 256 --causal 0 \
  --seqlens 4096,8192,16384 --repeats 50 --variants "$V" --json "$OUT/bench_long.jsonl"
grep -E "^\|" "$OUT/bench_long.log" | tee -a "$S"
step peer 45 python3 "$B/sdpa_peer.py" --backward --hdim 256 --causal 0 --seqlens 4096,8192,16384 --json "$OUT/peer.jsonl"
grep -E "^\|" "$OUT/peer.log" | tee -a "$S"
step memcheck 30 env LD_LIBRARY_PATH="$B/lib" compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$B/bin/attention_backward_cuda_test" --gtest_filter='*/packed:*/dim200'
