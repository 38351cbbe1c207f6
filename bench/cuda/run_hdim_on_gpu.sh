#!/usr/bin/env bash
# The device check of the Hopper forward kernel for the head-dim buckets with a trailing 32-column
# panel (32, 96, 160, 224; issue 23), in ONE command under the device tool's 10-minute limit:
# correctness of every variant on the wgmma kernel (ATTN_CUDA_KERNELS=sm90 routes those buckets to
# it; the default keeps them on mma.sync until this check passes) and on the mma.sync kernel,
# compute-sanitizer memcheck and racecheck, then the head-dim sweep of the issue (bf16, seqlen 1k
# and 4k, causal off and on, 2048 model width) on both kernels beside sdpa_peer.py's FA2 and cuDNN
# from the same command, merged by make_report.py, and (with a bundle built with
# ATTN_BENCH_TILE_SWEEP=ON) the tile sweep of those buckets. Each step is capped; a step that runs
# out is reported and the rest still run.
#
#   bench/cuda/run_hdim_on_gpu.sh COMMIT [BUNDLE_DIR] [PARTS]
#
# PARTS, comma-separated (default tests,sanitize,sweep): tests, sanitize (SANITIZER_SECONDS each,
# default 45), sweep (the head-dim sweep and its peer; HDIMS overrides its head dims, e.g.
# HDIMS=32,224 with a bundle of buckets 32 and 224), tiles (attention_kernel_bench --tiles).
#
# The bundle: every head-dim bucket (the sweep's 40 runs in bucket 64, 72 and 80 in 96, 112 in
# 128, 192 and 256 in their own), bf16, sm_90a:
#   cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
#     -DATTN_KERNEL_DTYPES=bf16 [-DATTN_BENCH_TILE_SWEEP=ON]
#   ninja -C build/gpu attention_cuda_test attention_kernel_bench
#   ../shared/tools/gpu-bundle.sh .gpu build/gpu/tests/kernels/cuda/attention_cuda_test \
#     build/gpu/bench/cuda/attention_kernel_bench; cp ../shared/peers/sdpa_peer.py .gpu/
#
# Success: every test passes on both kernels (each result line names the kernel that ran: the
# panels_* cases of buckets 32 / 96 / 160 / 224 say "sm90 (wgmma)" in the sm90 step and
# "sm80 (mma.sync)" in the sm80 one), the sanitizers report 0 errors / 0 hazards, and the report
# (hdim_sm90.md) shows ours / FA2 >= 1.0 in every cell; hdim_sm80.md is the mma.sync kernel on the
# same cells (the d = 96 row of issue 23 is 0.80-0.94x there).
# Results under $OUT: run.log, tests.log, hdim_sm90.jsonl, hdim_sm80.jsonl, hdim_peer.jsonl,
# hdim_sm90.md, hdim_sm80.md.
set -uo pipefail
commit=${1:?usage: run_hdim_on_gpu.sh COMMIT [BUNDLE_DIR] [PARTS]}
bundle=${2:-.gpu}
parts=",${3:-tests,sanitize,sweep},"
has() { [[ $parts == *",$1,"* ]]; }
out=${OUT:-/tmp/attention_hdim_check}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
bin=$bundle/bin
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
# cap SECONDS NAME CMD...: runs CMD with a time cap, appending its output to tests.log and
# printing its summary lines; a non-zero exit marks the run failed.
cap() {
  local seconds=$1 name=$2; shift 2
  step "$name"
  timeout "$seconds" "$@" > "$out/step.log" 2>&1
  local rc=$?
  { echo "=== $name (exit code $rc)"; cat "$out/step.log"; } >> "$out/tests.log"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]|ERROR SUMMARY|RACECHECK SUMMARY|Failure" \
    "$out/step.log" | head -25
  rm -f "$out/step.log"
  echo "$name exit code: $rc"
  [ "$rc" = 0 ] || status=1
}
exec > >(tee -a "$out/run.log") 2>&1

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
echo "date $(date -u +%Y-%m-%d) commit $commit"

# The new buckets' cases and the head dims that pad into them; then the whole suite.
panels='*/panels_*:*/hdim*:*/window_right_only:*/window_diagonal:*/mask_additive_full:*/varlen_window:*/varlen_everything:*/dense_everything:*/sinks_everything:*/paged_hdim96:*/fp32_varlen_window:*/hdim200_causal:*/hdim40_causal'
if has tests; then
cap 150 "forward tests, every bucket on wgmma (ATTN_CUDA_KERNELS=sm90)" \
  env ATTN_CUDA_KERNELS=sm90 "$bin/attention_cuda_test"
cap 90 "forward tests of the new buckets on mma.sync (ATTN_CUDA_KERNELS=sm80)" \
  env ATTN_CUDA_KERNELS=sm80 "$bin/attention_cuda_test" --gtest_filter="$panels"
grep -E "panels_d(24|72|96|160|224)_" "$out/tests.log" | head -20
fi
if has sanitize; then
sec=${SANITIZER_SECONDS:-45}
cap "$sec" "memcheck, new buckets on wgmma" env ATTN_CUDA_KERNELS=sm90 \
  compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/attention_cuda_test" \
  --gtest_filter='*/panels_d24_dense:*/panels_d24_paged_ps*:*/panels_d96_window:*/panels_d96_general:*/panels_d96_paged_general_ps16:*/panels_d160_paged_ps*:*/panels_d224_sliding'
cap "$sec" "racecheck, new buckets on wgmma" env ATTN_CUDA_KERNELS=sm90 \
  compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/attention_cuda_test" \
  --gtest_filter='*/panels_d24_paged_ps16:*/panels_d96_window:*/panels_d224_paged_general_ps16'
fi

device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
hdims=${HDIMS:-32,40,72,80,96,112,160,192,224,256}
sweep=(--dtype bf16 --hdim "$hdims" --seqlens 1024,4096 --causal 0,1 --model-dim 2048)
if has sweep; then
for kernels in sm90 sm80; do
  step "attention_kernel_bench, head-dim sweep, ATTN_CUDA_KERNELS=$kernels"
  rm -f "$out/hdim_$kernels.jsonl"
  ATTN_CUDA_KERNELS=$kernels timeout 120 "$bin/attention_kernel_bench" "${sweep[@]}" \
    --json "$out/hdim_$kernels.jsonl" | grep -E "^\|" | grep -v -- "---" || status=1
done
step "sdpa_peer.py, the same cells"
rm -f "$out/hdim_peer.jsonl"
timeout 180 python3 "$bundle/sdpa_peer.py" "${sweep[@]}" --json "$out/hdim_peer.jsonl" | tail -3 ||
  status=1
for kernels in sm90 sm80; do
  step "report, ATTN_CUDA_KERNELS=$kernels"
  python3 "$here/make_report.py" --ours "$out/hdim_$kernels.jsonl" --peer "$out/hdim_peer.jsonl" \
    --device "$device" --commit "$commit" --date "$(date -u +%Y-%m-%d)" \
    --md "$out/hdim_$kernels.md" && sed -n '/## Summary/,/^## bf16/p' "$out/hdim_$kernels.md"
  grep -E "^\| " "$out/hdim_$kernels.md" | grep -v -- "---" | head -45
done
fi
if has tiles; then
step "tile sweep (bundle built with ATTN_BENCH_TILE_SWEEP=ON)"
timeout 240 "$bin/attention_kernel_bench" --dtype bf16 --hdim 96 --seqlens 1024 --causal 0 \
  --tiles | sed -n '/tiles/,$p' | grep -E "sm90 128x(64|128)/2wg/(1|2)b \| (32|96|160|224) " ||
  status=1
fi
echo "overall status $status"
exit $status
