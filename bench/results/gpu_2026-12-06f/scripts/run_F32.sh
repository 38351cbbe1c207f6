#!/usr/bin/env bash
# Device call 3 (helper F32, issue 24): float32 FULL at d 256 with one step body routed
# (DefaultFp32TileConfig(256) = kFp32OneBody since call 2).
#  1. PyTorch's float32 SDPA at d 256 (sdpa_peer.py --dtype fp32 --hdim 256), 12 cells.
#  2. fp32_bench --precision full,tf32 --hdim 256 --variants: the routed default beside "none"
#     (the two-copy kernel it replaced) and the other variants, o checked against the default.
#     Then buckets 64 / 128 (not compiled into this build's dispatch): their routed shape (two
#     copies, "none") beside one body, --variants --no-grid (compare "none" with the FULL figures
#     of bench/results/gpu_2026-12-06c.md: the options refactor moved ptxas's spills slightly).
#  3. attention_fp32_test (bucket-256-only build: every case runs the routed bucket-256 kernel).
#  4. compute-sanitizer memcheck / racecheck on a subset of attention_fp32_test (routed kernel:
#     issue 24's cases, windows, packed batches, sinks, masks, every level).
# Success: test PASSED, 0 sanitizer errors, variants' o identical / close in every cell, the
# routed FULL >= 1.0x the peer in all 12 cells and >= "none" in every cell.
set -u
T0=$SECONDS
tar xJf .gpu-packF32/b.tar.xz
V=$PWD/.gpuF32
O=$OUT/F32; mkdir -p $O
echo "=== F32 start $(date -u +%T) commit $(cat $V/COMMIT) $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader > $O/gpu.txt 2>&1
export LD_LIBRARY_PATH=$V/lib PYTHONUNBUFFERED=1
t() { local name=$1 secs=$2; shift 2; local t0=$SECONDS; timeout -k 3 $secs "$@" > "$O/$name.log" 2>&1; local rc=$?; echo "=== $name rc=$rc ($((SECONDS-t0)) s)"; grep -E "^\[  PASSED|^\[  FAILED|^\[  SKIPPED \] [0-9]|ERROR SUMMARY|RACECHECK SUMMARY|^Failure|DIFFERS|failed" "$O/$name.log" | head -8; }
t peer 15 python3 $V/sdpa_peer.py --dtype fp32 --hdim 256 --json $O/peer.jsonl
t bench 30 $V/bin/fp32_bench --precision full,tf32 --hdim 256 --variants --json $O/ours.jsonl
t bench64 15 $V/bin/fp32_bench --variants --no-grid --hdim 64,128 --json $O/ours.jsonl
python3 $V/fp32_compare.py $O/ours.jsonl $O/peer.jsonl > $O/compare.md 2>&1
cat $O/compare.md
t test 15 $V/bin/attention_fp32_test
grep -A4 "worst error" $O/test.log | head -5
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$SAN" ]; then
  t memcheck 10 $SAN --tool memcheck --error-exitcode 9 $V/bin/attention_fp32_test --gtest_filter='*issue*:*varlen_everything*:*sinks_varlen_window*:*/hdim256:*causal_d256_q_gt_k*:*window_100_50*:*mask_key_padding*:*LevelsTest*'
  LEFT=$((88 - (SECONDS - T0))); [ $LEFT -lt 5 ] && LEFT=5
  t racecheck $LEFT $SAN --tool racecheck --error-exitcode 9 $V/bin/attention_fp32_test --gtest_filter='*issue_causal_gqa*:*causal_d256_q_gt_k*:*sinks_varlen_window*'
else
  echo "=== no compute-sanitizer"
fi
echo "=== F32 end $(date -u +%T) ($((SECONDS-T0)) s)"
