#!/usr/bin/env bash
# Device call A1 (2026-12-06, fifth session): the lone session step (helper STEP, step_cmd.sh,
# bundle .gpuS) and the bucket-256 backward's bulk-dQ / TMA variants (helper B256c, bwd_cmd.sh,
# bundle .gpuB).
set -u
tar xJf .gpu-packA/a1.tar.xz
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/x.log") 2>&1
echo "=== start $(date -u +%T)"; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
OUT=$OUT/step timeout -k 5 300 bash .gpu-packA/step_cmd.sh > /dev/null 2>&1; echo "step rc=$?"
grep -E "^###|ratio|median|64 sessions|suite exit|PASSED|FAILED|\(us, means\)|^== " $OUT/step/run.log 2>/dev/null | tail -50
echo "=== bwd $(date -u +%T)"
OUT=$OUT/bwd timeout -k 5 245 bash .gpu-packA/bwd_short.sh > /dev/null 2>&1; echo "bwd rc=$?"
tail -c 4000 $OUT/bwd/summary.log 2>/dev/null
echo "=== end $(date -u +%T)"
cd $OUT && tar cJf results.tar.xz step bwd && rm -rf step bwd; ls -la
