#!/usr/bin/env bash
# One command on a GPU machine (the `run` device tool): correctness tests, compute-sanitizer
# memcheck + racecheck on a small subset, the kernel benchmark (grid, tile sweep, 128k memory)
# and the peer script on the same shapes, then the report and chart.
#
#   bench/cuda/run_on_gpu.sh COMMIT [BUNDLE_DIR]
#
# BUNDLE_DIR (default .gpu) holds the executables packed by shared/tools/gpu-bundle.sh
# (attention_cuda_test, attention_kernel_bench) and a copy of sdpa_peer.py. Logs and results go
# to $OUT (default /tmp/attention_gpu_run): run.log, kernel_bench.jsonl, peer.jsonl,
# kernel_report.md, kernel_chart.png, sass_summary.txt (ncu.txt with PROFILE=1). Set SKIP_TESTS=1 or
# SKIP_SANITIZER=1 to leave those steps out; BENCH_ARGS replaces the benchmark's extra flags;
# PEER_DTYPES (default "bf16 fp16", may be empty) picks the peer runs.
set -uo pipefail
commit=${1:?usage: run_on_gpu.sh COMMIT [BUNDLE_DIR]}
bundle=${2:-.gpu}
out=${OUT:-/tmp/attention_gpu_run}
mkdir -p "$out"
log=$out/run.log
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
exec > >(tee "$log") 2>&1

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
date -u +%Y-%m-%d

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  step "correctness tests"
  timeout 300 "$bundle/bin/attention_cuda_test" || status=1
fi

if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  subset='*d64_q1_k1*:*hdim40*:*hdim200_causal*:*varlen_causal*:*window_diagonal*'
  subset+=':*mask_bool_full*:*fp32_causal*:*causal_q_gt_k*:*d128_s257*'
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool"
    timeout 110 compute-sanitizer --tool "$tool" --error-exitcode 9 \
      "$bundle/bin/attention_cuda_test" --gtest_filter="$subset" 2>&1 | tail -25
    echo "compute-sanitizer $tool exit code: ${PIPESTATUS[0]}"
  done
fi

step "kernel benchmark"
timeout 300 "$bundle/bin/attention_kernel_bench" --json "$out/kernel_bench.jsonl" \
  ${BENCH_ARGS:---tiles --memory} || status=1

for dtype in ${PEER_DTYPES-bf16 fp16}; do
  step "peer sdpa_peer.py --dtype $dtype"
  timeout 240 python3 "$bundle/sdpa_peer.py" --dtype "$dtype" --json "$out/peer.jsonl" \
    | tail -40 || status=1
done

step "report"
device=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
python3 bench/cuda/make_report.py --ours "$out/kernel_bench.jsonl" --peer "$out/peer.jsonl" \
  --device "$device" --commit "$commit" --date "$(date -u +%Y-%m-%d)" \
  --md "$out/kernel_report.md" --png "$out/kernel_chart.png" && sed -n 1,20p "$out/kernel_report.md"

if [ "${PROFILE:-0}" = 1 ]; then
  # Nsight Compute on a few cells, ours and FA2's kernel on the same shape (clocks left alone).
  step "ncu profiles"
  # PROFILE_CELLS: head_dim,causal,seqlen cells separated by spaces.
  for cell in ${PROFILE_CELLS:-256,1,1024 64,0,1024}; do
    IFS=, read -r hd causal seqlen <<<"$cell"
    set -- "$hd" "$causal" "$seqlen"
    sections="--section SpeedOfLight --section Occupancy --section LaunchStats"
    sections+=" --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis"
    echo "##### ours d=$1 causal=$2 seqlen=$3"
    timeout 120 ncu --clock-control none $sections -k regex:FlashFwdKernel --launch-skip 3 \
      --launch-count 1 "$bundle/bin/attention_kernel_bench" --dtype bf16 --hdim "$1" \
      --causal "$2" --seqlens "$3"
    echo "##### FA2 d=$1 causal=$2 seqlen=$3"
    timeout 120 ncu --clock-control none $sections -k regex:flash_fwd --launch-skip 3 \
      --launch-count 1 python3 bench/cuda/sdpa_one_cell.py "$1" "$2" "$3"
  done > "$out/ncu.txt" 2>&1
  grep -E "#####|Duration|Registers Per|Achieved Occupancy|Compute \(SM\) Throughput|Issue Slots Busy|No Eligible" "$out/ncu.txt"
fi

step "SASS: spills (LDL/STL) and tensor-core instructions per kernel"
if command -v cuobjdump >/dev/null; then
  cuobjdump -sass "$bundle/bin/attention_kernel_bench" | awk '
    /Function :/ { if (name != "") printf "%s LDL=%d STL=%d HMMA=%d\n", name, ldl, stl, hmma;
                   name = $3; ldl = stl = hmma = 0 }
    /LDL/ { ldl++ } /STL/ { stl++ } /HMMA/ { hmma++ }
    END { if (name != "") printf "%s LDL=%d STL=%d HMMA=%d\n", name, ldl, stl, hmma }' \
    > "$out/sass_summary.txt"
  grep -c . "$out/sass_summary.txt"
  # The bf16 head_dim 128 dense kernel in full, to see where spills and waits sit in the loop.
  cuobjdump -sass -fun \
    _ZN9attention4cuda3fwd14FlashFwdKernelINS0_15FwdKernelTraitsILi128ELi128ELi64ELi4ELi2EEE13__nv_bfloat16LNS0_10FwdVariantE0EEEvNS_15AttentionParamsE \
    "$bundle/bin/attention_kernel_bench" > "$out/sass_hdim128_dense.txt" 2>/dev/null
fi
exit "$status"
