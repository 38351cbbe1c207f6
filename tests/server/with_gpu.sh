#!/usr/bin/env bash
# Runs a test command against the GPU backend: exits 77 (ctest SKIP) when no GPU is visible,
# else runs it with ATTN_TEST_BACKEND=cuda.
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  echo "SKIP: no CUDA device visible"
  exit 77
fi
ATTN_TEST_BACKEND=cuda exec "$@"
