#!/usr/bin/env bash
# One command on a GPU machine (the `run` device tool) for the decode kernel: the host test, the
# decode tests against the float64 reference, the forward test's decode-shaped cases (which the
# stateless path now routes to the decode kernel), decode_bench and the PyTorch peer
# (sdpa_peer.py --decode, batch 1 rows too) in the same command, compute-sanitizer memcheck +
# racecheck over the small cases, one ncu profile of the 32 x 8k launch, and the report table.
#
#   bench/cuda/run_decode_on_gpu.sh COMMIT [BUNDLE_DIR]
#
# BUNDLE_DIR (default .gpu) holds the executables packed by shared/tools/gpu-bundle.sh
# (flash_decode_test, flash_decode_host_test, attention_cuda_test, decode_bench) and a copy of
# sdpa_peer.py. Logs and results go to $OUT (default /tmp/attention_decode_run): run.log,
# ours.jsonl, peer.jsonl, decode_report.md. SKIP_TESTS=1 / SKIP_SANITIZER=1 / SKIP_NCU=1 leave
# those steps out. VARIANTS=all (or a list of kDecodeVariants names) adds decode_bench's kernel
# variants over the whole grid, timed interleaved with the production kernel, and SPLITS_LIST
# (e.g. 0,12,16,24,32) a split-count sweep on the batch-1 rows of the variants in SPLIT_VARIANTS
# (default base,pages_ahead,stages6,heads2) (variants.jsonl, splits.jsonl; the report's last two
# tables).
set -uo pipefail
commit=${1:?usage: run_decode_on_gpu.sh COMMIT [BUNDLE_DIR]}
bundle=${2:-.gpu}
out=${OUT:-/tmp/attention_decode_run}
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
exec > >(tee "$out/run.log") 2>&1

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
date -u +%Y-%m-%d

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  step "host test"
  timeout 60 "$bundle/bin/flash_decode_host_test" | tail -3 || status=1
  step "decode tests"
  timeout 300 "$bundle/bin/flash_decode_test" --gtest_filter='-Variants/*' \
    > "$out/flash_decode_test.log" 2>&1 || status=1
  grep -E "rel_err|FAILED|Failure" -A3 "$out/flash_decode_test.log" | grep -v "^--" | tail -60
  tail -3 "$out/flash_decode_test.log"
  # The kernel variants in a process of their own: a crash in one leaves the suite's results.
  step "decode tests, kernel variants"
  timeout 300 "$bundle/bin/flash_decode_test" --gtest_filter='Variants/*' \
    > "$out/flash_decode_variants_test.log" 2>&1 || status=1
  grep -E "^\[ +(OK|FAILED) +\]|rel_err|Failure" "$out/flash_decode_variants_test.log" | head -60
  tail -3 "$out/flash_decode_variants_test.log"
  step "forward test, decode-shaped cases"
  timeout 120 "$bundle/bin/attention_cuda_test" --gtest_filter='*q1_k*:*Stream*' | tail -3 ||
    status=1
fi

step "decode_bench"
timeout 240 "$bundle/bin/decode_bench" --json "$out/ours.jsonl" || status=1
if [ -n "${VARIANTS:-}" ]; then
  step "decode_bench variants: $VARIANTS"
  timeout 300 "$bundle/bin/decode_bench" --variants "$VARIANTS" --json "$out/variants.jsonl" ||
    status=1
  if [ -n "${SPLITS_LIST:-}" ]; then
    split_variants=${SPLIT_VARIANTS:-base,pages_ahead,stages6,heads2}
    step "decode_bench split sweep, batch 1: $split_variants x $SPLITS_LIST"
    timeout 300 "$bundle/bin/decode_bench" --variants "$split_variants" \
      --splits-list "$SPLITS_LIST" --rows 1x8k,1x32k,1x128k --json "$out/splits.jsonl" ||
      status=1
  fi
fi
step "peer sdpa_peer.py --decode"
timeout 240 python3 "$bundle/sdpa_peer.py" --decode --json "$out/peer.jsonl" | tail -8 || status=1
for n in 8192 32768 131072; do
  timeout 120 python3 "$bundle/sdpa_peer.py" --decode --decode-tokens "$n" --kv-lens "$n" \
    --json "$out/peer.jsonl" | tail -1 || status=1
done

if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  step "compute-sanitizer memcheck"
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$bundle/bin/flash_decode_test" --gtest_filter='*small*:*Small*:PagedAppend*' 2>&1 | tail -6
  echo "memcheck exit code: ${PIPESTATUS[0]}"
  if [ -n "${VARIANTS:-}" ]; then
    step "compute-sanitizer memcheck, variant pages_ahead (its own page addressing)"
    timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 \
      "$bundle/bin/flash_decode_test" \
      --gtest_filter='Variants/*.MatchesFloat64Reference/pages_ahead' 2>&1 | tail -6
    echo "memcheck exit code: ${PIPESTATUS[0]}"
  fi
  step "compute-sanitizer racecheck"
  subset='Cases/FlashDecodeTest.MatchesFloat64Reference/small_page16'
  subset+=':Cases/FlashDecodeTest.MatchesFloat64Reference/small_q16_gqa16_causal'
  subset+=':Cases/FlashDecodeTest.MatchesFloat64Reference/small_splits3'
  timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 \
    "$bundle/bin/flash_decode_test" --gtest_filter="$subset" 2>&1 | tail -6
  echo "racecheck exit code: ${PIPESTATUS[0]}"
fi

if [ "${SKIP_NCU:-0}" != 1 ]; then
  # decode_bench --reps 1 launches each row 5 times (a check, 3 warm-ups, 1 timed); rows come as
  # dense, paged64, dense_hm per grid entry, so skipping 15 lands on the dense 32 x 8k row.
  step "ncu, dense 32 x 8k"
  timeout 120 ncu --kernel-name regex:FlashDecodeKernel16 --launch-skip 15 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    "$bundle/bin/decode_bench" --reps 1 > "$out/ncu.txt" 2>&1
  grep -E "DRAM Throughput|Memory Throughput|Duration|Stall|Warp Cycles" "$out/ncu.txt" | head -20
fi

step "report"
python3 bench/cuda/decode_report.py "$out" --device "$(nvidia-smi --query-gpu=name \
  --format=csv,noheader | head -1)" --commit "$commit" --date "$(date -u +%Y-%m-%d)" |
  tee "$out/decode_report.md"
exit $status
