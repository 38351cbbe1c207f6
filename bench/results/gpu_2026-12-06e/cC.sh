#!/usr/bin/env bash
# Device call C (2026-12-06, fifth session): (1) the bucket-256 backward with its new default
# (split early bulk tma, 69f074b): every case against float64 (bf16 and fp16), memcheck,
# racecheck, synccheck, the 12 d-256 cells with FA2 / cuDNN; (2) buckets 32 / 224 of the Hopper
# forward on wgmma (.gpuH of 6150bff): tests, sanitizers, sweep with the peer; (3) helper WS3's
# short-sequence variants of the warp-specialized forward (ws_cmd.sh, .gpuF).
set -u
tar xJf .gpu-packC/c.tar.xz; tar xJf .gpu-packC/b5.tar.xz .gpuH
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/x.log") 2>&1
T0=$SECONDS; left() { echo $((560 - (SECONDS - T0))); }
echo "=== start $(date -u +%T)"; nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
mkdir -p $OUT/b $OUT/h
B=$PWD/.gpuB2; H=$PWD/.gpuH
t() { local dir=$1 name=$2 secs=$3; shift 3; local t0=$SECONDS; timeout -k 5 $secs "$@" > "$OUT/$dir/$name.log" 2>&1; local rc=$?; echo "=== $name rc=$rc ($((SECONDS-t0)) s)"; grep -E "^\[  PASSED|^\[  FAILED|ERROR SUMMARY|RACECHECK SUMMARY|SYNCCHECK SUMMARY" "$OUT/$dir/$name.log" | head -8; }
CS="compute-sanitizer --error-exitcode 9 --tool"
echo "=== backward, commit $(cat $B/COMMIT)"
t b test 80 env LD_LIBRARY_PATH=$B/lib $B/bin/attention_backward_cuda_test
grep -iE "WRONG|Failure" $OUT/b/test.log | head -5
t b memcheck 40 env LD_LIBRARY_PATH=$B/lib $CS memcheck $B/bin/attention_backward_cuda_test --gtest_filter='*/packed:*/dim200:*/gqa'
t b racecheck 60 env LD_LIBRARY_PATH=$B/lib $CS racecheck $B/bin/attention_backward_cuda_test --gtest_filter='*/packed:*/dim200'
t b synccheck 30 env LD_LIBRARY_PATH=$B/lib $CS synccheck $B/bin/attention_backward_cuda_test --gtest_filter='*/packed'
t b bench 80 env LD_LIBRARY_PATH=$B/lib $B/bin/backward_bench --hdim 256 --json $OUT/b/bench.jsonl
grep -E "^\|" $OUT/b/bench.log | head -16
t b peer 75 python3 $B/sdpa_peer.py --backward --hdim 256 --json $OUT/b/peer.jsonl
grep -E "^\|" $OUT/b/peer.log | head -16
echo "=== buckets 32 / 224 ($(date -u +%T)), $(left) s left"
t h hd_sm90 60 env ATTN_CUDA_KERNELS=sm90 LD_LIBRARY_PATH=$H/lib $H/bin/attention_cuda_test
grep -E "WRONG|Failure" $OUT/h/hd_sm90.log | head -5
t h hd_mc 30 env ATTN_CUDA_KERNELS=sm90 LD_LIBRARY_PATH=$H/lib $CS memcheck $H/bin/attention_cuda_test --gtest_filter='*/panels_d24_dense:*/panels_d24_paged_ps16:*/panels_d200*:*/panels_d224_sliding:*/panels_d224_paged_general_ps16'
t h hd_rc 30 env ATTN_CUDA_KERNELS=sm90 LD_LIBRARY_PATH=$H/lib $CS racecheck $H/bin/attention_cuda_test --gtest_filter='*/panels_d24_paged_ps16:*/panels_d224_paged_general_ps16:*/panels_d224_sliding'
for k in sm90 sm80; do
  ATTN_CUDA_KERNELS=$k timeout 25 env LD_LIBRARY_PATH=$H/lib $H/bin/attention_kernel_bench --dtype bf16 --hdim 32,200,224 --seqlens 1024,4096 --causal 0,1 --model-dim 2048 --json $OUT/h/hdim_$k.jsonl > $OUT/h/hdim_$k.log 2>&1; echo "$k rc=$?"
done
timeout 35 python3 $B/sdpa_peer.py --dtype bf16 --hdim 32,200,224 --seqlens 1024,4096 --causal 0,1 --model-dim 2048 --json $OUT/h/hdim_peer.jsonl > $OUT/h/hdim_peer.log 2>&1; echo peer rc=$?
grep -E "^\|" $OUT/h/hdim_sm90.log | head -16; grep -E "^\|" $OUT/h/hdim_peer.log | head -16
echo "=== ws ($(date -u +%T)), $(left) s left"
L=$(( $(left) - 25 )); [ $L -gt 200 ] && L=200
OUT=$OUT/w timeout -k 3 $L bash .gpu-packC/ws_cmd.sh > /dev/null 2>&1; echo "ws rc=$?"
tail -c 3000 $OUT/w/summary.log 2>/dev/null
echo "=== end $(date -u +%T)"
cd $OUT && tar cJf results.tar.xz b h w 2>/dev/null; rm -rf b h w; ls -la
