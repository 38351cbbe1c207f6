#!/usr/bin/env bash
# The CUDA backward's device run, in one command on a GPU machine (issue 22): its GPU tests,
# compute-sanitizer memcheck, racecheck and synccheck on a subset of them, PyTorch's SDPA backward
# (shared/peers/sdpa_peer.py --backward) and backward_bench on the same grid, and the comparison
# table (backward_compare.py). Logs and JSON lines go to $OUT (or ./backward_out).
#
#   bench/cuda/run_backward_on_gpu.sh BUNDLE
#
# BUNDLE: a folder made by shared/tools/gpu-bundle.sh with attention_backward_cuda_test and
# backward_bench, plus sdpa_peer.py.
#
# backward_bench runs with --sm90: both dK / dV kernels (mma.sync and, on an H100 / H200, the
# Hopper wgmma one) side by side in each cell.
#
# SWEEP=1 adds the dK / dV kernel's tile sweep (backward_bench --sweep, a build with
# -DATTN_BENCH_BWD_TILE_SWEEP=ON) after the rest, into $out/sweep.md and sweep.jsonl;
# SWEEP=only runs the GPU tests and the sweep alone (no sanitizers, peer or bench).
set -uo pipefail
bundle=$(cd "${1:?usage: run_backward_on_gpu.sh BUNDLE}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$PWD/backward_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader |
  tee "$out/gpu.txt"

echo "== attention_backward_cuda_test"
"$bundle/run" attention_backward_cuda_test > "$out/test.log" 2>&1
echo "test_rc=$?" | tee -a "$out/summary.txt"
grep -E "FAILED|Failure|max err" "$out/test.log" | sort -t= -k2 -g | tail -40

sweep() {
  echo "== backward_bench --sweep"
  "$bundle/run" backward_bench --sweep --hdim 64,128 --json "$out/sweep.jsonl" > "$out/sweep.md" 2>&1
  echo "sweep_rc=$?" | tee -a "$out/summary.txt"
  cat "$out/sweep.md"
}
if [ "${SWEEP:-0}" = only ]; then
  sweep
  exit 0
fi

# The sanitizers on a subset: odd head dims, packed batches with empty sequences, every option,
# GQA and both dQ modes (racecheck and synccheck are much slower, so fewer cases).
sanitize() {
  LD_LIBRARY_PATH="$bundle/lib" timeout "${SANITIZER_TIMEOUT:-300}" compute-sanitizer \
    --tool "$1" --error-exitcode 9 "$bundle/bin/attention_backward_cuda_test" \
    --gtest_filter="$2" > "$out/$1.log" 2>&1
  echo "$1_rc=$?" | tee -a "$out/summary.txt"
  tail -n 3 "$out/$1.log"
}
echo "== memcheck"
sanitize memcheck "${MEMCHECK_FILTER:-*packed*:*dim40:*dim200:*everything*:*sq_gt_sk_causal*:*sinks_bool_mask*:*mqa*}"
echo "== racecheck"
sanitize racecheck "${RACECHECK_FILTER:-*causal_dim64:*gqa*:*/dim256:*packed_general*}"
echo "== synccheck"
sanitize synccheck "${SYNCCHECK_FILTER:-*causal_dim128:*window:*packed}"

echo "== PyTorch SDPA backward"
timeout 600 python3 "$bundle/sdpa_peer.py" --backward --json "$out/peer.jsonl" > "$out/peer.log" 2>&1
echo "peer_rc=$?" | tee -a "$out/summary.txt"
echo "== backward_bench"
"$bundle/run" backward_bench --sm90 --json "$out/ours.jsonl" > "$out/bench.log" 2>&1
echo "bench_rc=$?" | tee -a "$out/summary.txt"
cat "$out/bench.log"
python3 "$here/backward_compare.py" "$out/ours.jsonl" "$out/peer.jsonl" | tee "$out/compare.md"
if [ "${SWEEP:-0}" = 1 ]; then sweep; fi
