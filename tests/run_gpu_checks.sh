#!/usr/bin/env bash
# GPU checks: kernel tests, the kernel tests under compute-sanitizer memcheck and racecheck,
# server and fault suites against the GPU executor, and the server path under memcheck.
#
#   tests/run_gpu_checks.sh BUNDLE_DIR OUT_DIR
#
# BUNDLE_DIR is a gpu-bundle.sh bundle (shared/tools/gpu-bundle.sh) of attention_server,
# attention_cli, attention_cuda_test, server_integration_test and reliability_fault_test, built
# with -DCMAKE_CUDA_ARCHITECTURES=90a (or the GPU's own). Logs go to OUT_DIR. SKIP_KERNEL_TESTS=1
# leaves out the kernel tests and their sanitizer runs (a server-only change; the bundle then
# needs no attention_cuda_test).
set -u
B=$(cd "${1:?usage: run_gpu_checks.sh BUNDLE_DIR OUT_DIR}" && pwd)
OUT=${2:?usage: run_gpu_checks.sh BUNDLE_DIR OUT_DIR}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$B/lib ATTN_SERVER_BINARY=$B/bin/attention_server
status=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ "${SKIP_KERNEL_TESTS:-0}" != 1 ]; then
  echo "=== kernel tests"
  timeout 200 "$B/bin/attention_cuda_test" > "$OUT/cuda_test.log" 2>&1 || status=1
  grep -E "^\[  (PASSED|FAILED) " "$OUT/cuda_test.log"
  # Every kernel test case under both tools, side by side (about 30 s and 70 s on an H100).
  for tool in memcheck racecheck; do
    timeout 400 compute-sanitizer --tool "$tool" --error-exitcode 9 "$B/bin/attention_cuda_test" \
      > "$OUT/cuda_test_$tool.log" 2>&1 &
  done
  for _ in memcheck racecheck; do
    wait -n || status=1
  done
  for tool in memcheck racecheck; do
    echo "=== kernel tests under compute-sanitizer $tool"
    grep -E "^\[  (PASSED|FAILED) |ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/cuda_test_$tool.log"
  done
fi
echo "=== server suite on the GPU executor"
ATTN_TEST_BACKEND=cuda timeout 150 "$B/bin/server_integration_test" > "$OUT/server_gpu.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED) " "$OUT/server_gpu.log"
echo "=== fault suite on the GPU executor"
ATTN_TEST_BACKEND=cuda timeout 120 "$B/bin/reliability_fault_test" --gtest_filter='*OnGpu*' \
  > "$OUT/fault_gpu.log" 2>&1 || status=1
grep -E "^\[  (PASSED|FAILED) " "$OUT/fault_gpu.log"
echo "=== server path under compute-sanitizer memcheck"
# A sanitized server driven by attention_cli call --check, then SIGTERM to the server process
# itself (not the sanitizer) so that it drains and the sanitizer prints its summary.
compute-sanitizer --tool memcheck --error-exitcode 9 "$B/bin/attention_server" --backend=cuda \
  --address=127.0.0.1:50051 --metrics_address= --device_memory_bytes=4294967296 \
  > "$OUT/memcheck.log" 2>&1 &
sanitizer=$!
for _ in $(seq 60); do grep -q "listening address" "$OUT/memcheck.log" && break; sleep 1; done
call() {
  "$B/bin/attention_cli" call --target=127.0.0.1:50051 --random --check "$@" || status=1
}
call --batch=2 --seqlen=257 --heads=8 --head_dim=64 --dtype=bf16 --causal --return_lse
call --batch=1 --seqlen=100 --seqlen_k=300 --heads=8 --kv_heads=2 --head_dim=72 --dtype=fp16 \
  --window_left=32 --window_right=8
call --batch=3 --seqlen=33 --heads=4 --head_dim=128 --dtype=fp32 --softcap=30
call --batch=1 --seqlen=1000 --heads=2 --head_dim=256 --dtype=bf16 --causal
pkill -TERM -f "^$B/bin/attention_server"
wait "$sanitizer" || status=1
grep -E "ERROR SUMMARY" "$OUT/memcheck.log"
exit $status
