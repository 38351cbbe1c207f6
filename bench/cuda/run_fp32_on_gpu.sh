#!/usr/bin/env bash
# The float32 kernel's device run, in one command on a GPU machine (issue 24): its GPU tests,
# compute-sanitizer memcheck and racecheck on a subset of them, PyTorch's float32 SDPA
# (shared/peers/sdpa_peer.py --dtype fp32) and fp32_bench on the same grid, and the comparison
# table (fp32_compare.py). Logs and JSON lines go to $OUT (or ./fp32_out).
#
#   bench/cuda/run_fp32_on_gpu.sh BUNDLE [--tiles]
#
# BUNDLE: a folder made by shared/tools/gpu-bundle.sh with attention_fp32_test and fp32_bench
# (--tiles needs fp32_bench built with -DATTN_BENCH_FP32_TILE_SWEEP=ON), plus sdpa_peer.py.
set -uo pipefail
bundle=$(cd "${1:?usage: run_fp32_on_gpu.sh BUNDLE [--tiles]}" && pwd)
tiles=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$PWD/fp32_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader |
  tee "$out/gpu.txt"

echo "== attention_fp32_test"
"$bundle/run" attention_fp32_test > "$out/test.log" 2>&1
echo "test_rc=$?" | tee -a "$out/summary.txt"
grep -E "FAILED|Failure|^\| |rows off|lse values" "$out/test.log" | head -40

# The sanitizers on a subset: issue 24's cases, each tile configuration and variant, packed
# batches, sinks and the layout tests (racecheck is much slower, so fewer cases).
sanitize() {
  LD_LIBRARY_PATH="$bundle/lib" timeout "${SANITIZER_TIMEOUT:-300}" compute-sanitizer --tool "$1" --error-exitcode 9 \
    "$bundle/bin/attention_fp32_test" --gtest_filter="$2" > "$out/$1.log" 2>&1
  echo "$1_rc=$?" | tee -a "$out/summary.txt"
  tail -n 3 "$out/$1.log"
}
echo "== memcheck"
sanitize memcheck "${MEMCHECK_FILTER:-*issue*:*varlen_everything*:*sinks_varlen_window*:*/hdim40:*/hdim104:*/hdim256:*window_100_50*:*mask_key_padding*:*packed_qkv*:*LevelsTest*}"
echo "== racecheck"
sanitize racecheck "${RACECHECK_FILTER:-*issue_causal_gqa*:*/hdim32:*/hdim64:*/hdim96:*/hdim128:*/hdim160:*/hdim256:*sinks_varlen_window*}"

echo "== PyTorch float32 SDPA"
timeout 300 python3 "$bundle/sdpa_peer.py" --dtype fp32 --json "$out/peer.jsonl" > "$out/peer.log" 2>&1
echo "peer_rc=$?" | tee -a "$out/summary.txt"
echo "== fp32_bench"
"$bundle/run" fp32_bench --precision full --json "$out/ours.jsonl" $tiles > "$out/bench.log" 2>&1
echo "bench_rc=$?" | tee -a "$out/summary.txt"
"$bundle/run" fp32_bench --precision tf32,bf16 --seqlens 1024,4096,16384 \
  --json "$out/ours.jsonl" >> "$out/bench.log" 2>&1
echo "bench_levels_rc=$?" | tee -a "$out/summary.txt"
python3 "$here/fp32_compare.py" "$out/ours.jsonl" "$out/peer.jsonl" | tee "$out/compare.md"
