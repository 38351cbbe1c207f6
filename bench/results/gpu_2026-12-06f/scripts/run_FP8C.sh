#!/usr/bin/env bash
# FP8C's device check (call 3, 2026-12-06): the FLOAT8_E4M3 serving path end to end on the GPU.
# Runs server_fp8_integration_test against attention_server on the CUDA backend with the FP8
# kernel routed through ATTN_CUDA_FP8=on (kRouteFp8Kernel is still off in the code), then the
# same test on the CPU backend of the same binaries as a control. Logs under $OUT/FP8C/.
# Success: "GPU: ... PASSED" with 5 tests passed (each served request matches the float64
# reference on the dequantized inputs within 7e-2; refused ones UNIMPLEMENTED naming FLOAT8_E4M3).
set -uo pipefail
out=${OUT:?OUT must be set}/FP8C
mkdir -p "$out"
tar xJf .gpu-packFP8C/b.tar.xz || { echo "FP8C: unpack FAILED"; exit 1; }
b=$(pwd)/.gpuFP8C
echo "FP8C bundle commit $(cat "$b/COMMIT")"
summary() {  # NAME LOG RC
  local passed failed
  passed=$(grep -c '^\[       OK \]' "$2" || true)
  failed=$(grep -c '^\[  FAILED  \]' "$2" || true)
  echo "FP8C $1: rc=$3 passed=$passed failed_lines=$failed"
  grep -E '^\[  FAILED  \]|Failure$|Expected|Which is|Value of|Actual' "$2" | head -12
}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  nvidia-smi -L | head -1
  ATTN_TEST_BACKEND=cuda ATTN_CUDA_FP8=on ATTN_SERVER_BINARY="$b/srv" \
    timeout 70 "$b/run" server_fp8_integration_test >"$out/fp8_gpu.log" 2>&1
  summary GPU "$out/fp8_gpu.log" $?
else
  echo "FP8C GPU: SKIP (no CUDA device visible)"
fi
ATTN_SERVER_BINARY="$b/srv" timeout 20 "$b/run" server_fp8_integration_test \
  --gtest_filter='Fp8Test.UnaryMatchesReference:Fp8Test.HostileRequests*' >"$out/fp8_cpu.log" 2>&1
summary CPU "$out/fp8_cpu.log" $?
