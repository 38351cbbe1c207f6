#!/usr/bin/env bash
# One command on a GPU machine (the `run` device tool) for the forward kernels' paged K/V and
# attention-sink variants (issues 19 and 21): attention_cuda_test on both kernel families (the
# sinks and paged cases against the float64 reference, with the rest of the suite on the default
# family), compute-sanitizer memcheck and racecheck over the new variants' small cases, and the
# timings: the dense forward before (an attention_kernel_bench built at an earlier commit, named
# attention_kernel_bench_base in the bundle) and after, and paged prefill (64-key pages in random
# order) against the dense kernel cell by cell, then the report (paged_report.py).
#
#   bench/cuda/run_paged_on_gpu.sh COMMIT [BUNDLE_DIR]
#
# BUNDLE_DIR (default .gpu) holds the executables packed by shared/tools/gpu-bundle.sh
# (attention_cuda_test, attention_kernel_bench, attention_kernel_bench_base). Logs and results
# go to $OUT (default /tmp/attention_paged_run), at most 8 files: run.log, test_default.log,
# test_sm80.log, sanitizer.log, bench_sm90.log, bench_sm80.log, bench.jsonl (each line tagged
# with its run: base_/new_/paged_ x sm90/sm80, and a repeat of base/new on sm90), report.md.
# Every step is capped so that the whole command stays within about 4 minutes.
set -uo pipefail
commit=${1:?usage: run_paged_on_gpu.sh COMMIT [BUNDLE_DIR]}
bundle=${2:-.gpu}
out=${OUT:-/tmp/attention_paged_run}
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
test_bin=$bundle/bin/attention_cuda_test
new=$bundle/bin/attention_kernel_bench
base=$bundle/bin/attention_kernel_bench_base
grid=(--dtype bf16 --hdim "${BENCH_HDIMS:-64,128}" --causal "0,1")
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
exec > >(tee "$out/run.log") 2>&1

step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
date -u +%Y-%m-%d
echo "commit $commit"

step "attention_cuda_test, default kernels (wgmma where compiled)"
timeout 90 "$test_bin" > "$out/test_default.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED|SKIPPED)|^\[  FAILED  \]" "$out/test_default.log" | head -20

# bench: RUN_TAG BINARY [ARGS...] -> bench.jsonl.RUN_TAG
bench() {
  local tag=$1 bin=$2; shift 2
  timeout 45 "$bin" "${grid[@]}" "$@" --json "$out/bench.jsonl.$tag" || status=1
}
step "benchmark, default kernels: dense before, dense after, paged vs dense"
{
  bench base_sm90 "$base"
  bench new_sm90 "$new"
  bench paged_sm90 "$new" --paged 64
} > "$out/bench_sm90.log" 2>&1
grep -E "^\|" "$out/bench_sm90.log" | grep -v -- "---" | tail -26

step "attention_cuda_test, mma.sync kernels: the new cases and a few others"
ATTN_CUDA_KERNELS=sm80 timeout 60 "$test_bin" \
  --gtest_filter='*/sinks*:*/paged*:*/d128_s257:*/causal_q_gt_k:*/varlen*:*/long_causal' \
  > "$out/test_sm80.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED|SKIPPED)|^\[  FAILED  \]" "$out/test_sm80.log" | head -20

mem='*/paged_ps16:*/paged_ps128_d64_noncausal:*/paged_key_range_ps16:*/paged_shared_pages'
mem+=':*/paged_empty_context:*/paged_sinks_key_range:*/sinks_causal_q_gt_k:*/sinks_varlen_causal'
mem+=':*/paged_general:*/paged_hdim96:*/paged_hdim256_key_range:*/paged_window'
race='*/paged_key_range_ps16:*/paged_hdim256_key_range:*/sinks_causal_q_gt_k'
sanitize() {  # TOOL FILTER SECONDS FAMILY
  local env=()
  [ "$4" = sm80 ] && env=(ATTN_CUDA_KERNELS=sm80)
  step "compute-sanitizer $1, $4 kernels"
  env "${env[@]}" timeout "$3" compute-sanitizer --tool "$1" --error-exitcode 9 "$test_bin" \
    --gtest_filter="$2" 2>&1 | grep -E "SUMMARY|PASSED|FAILED|SKIPPED|Invalid|hazard" | head -20
  local rc=${PIPESTATUS[0]}
  echo "compute-sanitizer $1 $4 exit code: $rc"
  [ "$rc" = 0 ] || status=1
}
{
  sanitize memcheck "$mem" 50 default
  sanitize memcheck "$mem" 50 sm80
} > "$out/sanitizer.log" 2>&1
cat "$out/sanitizer.log"

step "benchmark, mma.sync kernels"
{
  ATTN_CUDA_KERNELS=sm80 bench base_sm80 "$base"
  ATTN_CUDA_KERNELS=sm80 bench new_sm80 "$new"
  ATTN_CUDA_KERNELS=sm80 bench paged_sm80 "$new" --paged 64
} > "$out/bench_sm80.log" 2>&1
grep -E "^\|" "$out/bench_sm80.log" | grep -v -- "---" | tail -26

{
  sanitize racecheck "$race" 35 default
  sanitize racecheck "$race" 35 sm80
} >> "$out/sanitizer.log" 2>&1
tail -12 "$out/sanitizer.log"

step "benchmark repeat, default kernels (run-to-run spread of before / after)"
{
  bench base_sm90_2 "$base"
  bench new_sm90_2 "$new"
} >> "$out/bench_sm90.log" 2>&1

for f in "$out"/bench.jsonl.*; do
  sed "s/^{/{\"run\": \"${f##*.}\", /" "$f" >> "$out/bench.jsonl"
done
rm -f "$out"/bench.jsonl.*
step "report"
python3 "$(dirname "$0")/paged_report.py" "$out/bench.jsonl" | tee "$out/report.md"
exit "$status"
