#!/usr/bin/env bash
# The first device check of the kernels written without a GPU (issues 19, 21, 24), in ONE
# command that fits the device tool's 10-minute limit: the decode kernel (tests, sanitizers,
# decode_bench and sdpa_peer.py --decode), the forward kernels' paged and sinks variants (tests,
# memcheck, dense vs paged prefill timings) and the float32 kernel (tests, memcheck, fp32_bench and
# sdpa_peer.py --dtype fp32). Each step is capped; a step that runs out is reported, and the rest
# still run. The per-kernel scripts beside this one (run_decode_on_gpu.sh, run_paged_on_gpu.sh,
# run_fp32_on_gpu.sh) are the longer versions of each part.
#
#   bench/cuda/run_kernels_check.sh COMMIT [BUNDLE_DIR] [PARTS]
#
# PARTS, comma-separated (default all of them, in this order): tests (correctness; fp32tests for
# the float32 kernel's alone), sanitize
# (compute-sanitizer memcheck and racecheck, SANITIZER_SECONDS each, default 40), decode
# (decode_bench and its peer, the decode report), paged (paged prefill vs dense, and one request
# at the GPU work limit), fp32 (fp32_bench and its peer, the comparison).
#
# The bundle (built here, 2 cores: ~4 min with ccache warm, ~15 min cold):
#   cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
#     -DATTN_KERNEL_DTYPES=bf16 "-DATTN_KERNEL_HEAD_DIMS=64;128"
#   ninja -C build/gpu attention_fp32_test fp32_bench flash_decode_test flash_decode_host_test \
#     decode_bench attention_cuda_test attention_kernel_bench attention_server \
#     session_integration_test attention_cli fake_attention_server
#   ../shared/tools/gpu-bundle.sh .gpu build/gpu/{tests/kernels/cuda/{flash_decode_test,...},...}
#   strip .gpu/bin/* .gpu/lib/*; cp ../shared/peers/sdpa_peer.py .gpu/
#   mkdir -p .gpu-pack
#   tar cf - .gpu | xz -T1 --lzma2=preset=6,dict=192MiB > .gpu-pack/bundle.tar.xz   # ~12 MB
# (one thread and a dictionary larger than a binary: every executable holds the same kernels, and
# xz then stores them once; `xz -T2 -4` gave 50 MB)
# and on the device (carry .gpu-pack): tar xJf .gpu-pack/bundle.tar.xz && <the commands of
# docs/kernel.md, "Kernels written without a GPU, and their routing">.
#
# BUNDLE_DIR (default .gpu): shared/tools/gpu-bundle.sh of flash_decode_test,
# flash_decode_host_test, decode_bench, attention_cuda_test, attention_kernel_bench,
# attention_fp32_test and fp32_bench, plus sdpa_peer.py. Results under $OUT (at most 8 files):
# run.log, decode.jsonl, decode_peer.jsonl, paged.jsonl, fp32.jsonl, fp32_peer.jsonl, tests.log.
set -uo pipefail
commit=${1:?usage: run_kernels_check.sh COMMIT [BUNDLE_DIR]}
bundle=${2:-.gpu}
parts=",${3:-tests,sanitize,decode,paged,fp32},"
has() { [[ $parts == *",$1,"* ]]; }
out=${OUT:-/tmp/attention_kernels_check}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
bin=$bundle/bin
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
# cap SECONDS NAME CMD...: runs CMD with a time cap, appending its output to tests.log and
# printing its gtest summary lines; a non-zero exit marks the run failed.
cap() {
  local seconds=$1 name=$2; shift 2
  step "$name"
  timeout "$seconds" "$@" > "$out/step.log" 2>&1
  local rc=$?
  { echo "=== $name (exit code $rc)"; cat "$out/step.log"; } >> "$out/tests.log"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED  \]|ERROR SUMMARY|Failure|rel_err" \
    "$out/step.log" | head -25
  rm -f "$out/step.log"
  echo "$name exit code: $rc"
  [ "$rc" = 0 ] || status=1
}
exec > >(tee -a "$out/run.log") 2>&1

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
echo "date $(date -u +%Y-%m-%d) commit $commit"

# Correctness first: every new kernel against the float64 reference.
if has tests; then
cap 30 "decode host test" "$bin/flash_decode_host_test"
cap 90 "decode tests" "$bin/flash_decode_test"
cap 100 "forward tests (sinks, paged, decode shapes)" "$bin/attention_cuda_test"
cap 90 "float32 tests" "$bin/attention_fp32_test"
elif has fp32tests; then
cap 90 "float32 tests" "$bin/attention_fp32_test"
fi
if has sanitize; then
sec=${SANITIZER_SECONDS:-40}
cap "$sec" "decode memcheck" compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$bin/flash_decode_test" --gtest_filter='*small*:*Small*:PagedAppend*'
cap "$sec" "decode racecheck" compute-sanitizer --tool racecheck --error-exitcode 9 \
  "$bin/flash_decode_test" --gtest_filter='*small_page16:*small_q16_gqa16_causal:*small_splits3'
cap "$sec" "forward paged/sinks memcheck" compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$bin/attention_cuda_test" --gtest_filter='*/paged_ps16:*/paged_key_range_ps16:*/paged_shared_pages:*/paged_empty_context:*/sinks_causal_q_gt_k:*/paged_general'
cap "$sec" "forward paged/sinks racecheck" compute-sanitizer --tool racecheck --error-exitcode 9 \
  "$bin/attention_cuda_test" --gtest_filter='*/paged_key_range_ps16:*/sinks_causal_q_gt_k'
cap "$sec" "float32 memcheck" compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$bin/attention_fp32_test" --gtest_filter='*issue*:*/hdim40:*window_100_50*:*mask_key_padding*'
cap "$sec" "float32 racecheck" compute-sanitizer --tool racecheck --error-exitcode 9 \
  "$bin/attention_fp32_test" --gtest_filter='*issue_causal_gqa*:*/hdim64:*/hdim128'
fi

# Then the timings, each with its peer from this same command.
device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
if has decode; then
step "decode_bench"
timeout 90 "$bin/decode_bench" --json "$out/decode.jsonl" || status=1
step "sdpa_peer.py --decode"
timeout 100 python3 "$bundle/sdpa_peer.py" --decode --json "$out/decode_peer.jsonl" | tail -8
for n in 8192 32768 131072; do
  timeout 40 python3 "$bundle/sdpa_peer.py" --decode --decode-tokens "$n" --kv-lens "$n" \
    --json "$out/decode_peer.jsonl" | tail -1
done
step "decode report"
cp "$out/decode.jsonl" "$out/ours.jsonl" 2>/dev/null && cp "$out/decode_peer.jsonl" "$out/peer.jsonl" &&
  python3 "$here/decode_report.py" "$out" --device "$device" --commit "$commit" \
    --date "$(date -u +%Y-%m-%d)"
rm -f "$out/ours.jsonl" "$out/peer.jsonl"
fi
if has paged; then
step "paged prefill vs dense, pages of 64"
for run in new_sm90 paged_sm90; do  # the run tags paged_report.py reads
  extra=(); [ "$run" = paged_sm90 ] && extra=(--paged 64)
  timeout 45 "$bin/attention_kernel_bench" --dtype bf16 --hdim 64,128 --causal 0,1 "${extra[@]}" \
    --json "$out/paged.jsonl.$run" | grep -E "^\|" | grep -v -- "---" | tail -14
done
for f in "$out"/paged.jsonl.*; do sed "s/^{/{\"run\": \"${f##*.}\", /" "$f" >> "$out/paged.jsonl"; done
rm -f "$out"/paged.jsonl.*
python3 "$here/paged_report.py" "$out/paged.jsonl"
step "one request near the GPU work limit (--max_request_gflop default 50000): 49152 tokens, 32 heads, d 128"
timeout 60 "$bin/attention_kernel_bench" --dtype bf16 --hdim 128 --causal 0 --seqlens 49152 \
  --tokens 49152 --model-dim 4096 | grep -E "^\|" | grep -v -- "---"
fi
if has fp32; then
step "fp32_bench and sdpa_peer.py --dtype fp32"
timeout 60 "$bin/fp32_bench" --precision full,tf32 --seqlens 1024,4096,16384 \
  --json "$out/fp32.jsonl" | tail -20
timeout 100 python3 "$bundle/sdpa_peer.py" --dtype fp32 --json "$out/fp32_peer.jsonl" | tail -12
python3 "$here/fp32_compare.py" "$out/fp32.jsonl" "$out/fp32_peer.jsonl" 2>&1 | tail -30
fi
echo "overall status $status"
exit $status
