#!/usr/bin/env bash
# Device call E (2026-12-06, sixth session): the server on the GPU with bf16 and fp16 kernels
# (69f074b, buckets 64 / 128): the session suite and the stateless public-RPC suite against the GPU
# executor; attention_cuda_test (bf16 + fp16); the fp16 standard grid (d 64 / 128) against the
# peers in one command, bf16 beside it; a lone session step (fast path on) against the echo.
set -u
tar xJf .gpu-packE/e.tar.xz
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/x.log") 2>&1
echo "=== start $(date -u +%T)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
V=$PWD/.gpuE; C=$(cat $V/COMMIT); export LD_LIBRARY_PATH=$V/lib ATTN_SERVER_BINARY=$V/bin/attention_server
mkdir -p $OUT/e
t() { local name=$1 secs=$2; shift 2; local t0=$SECONDS; timeout -k 5 $secs "$@" > "$OUT/e/$name.log" 2>&1; local rc=$?; echo "=== $name rc=$rc ($((SECONDS-t0)) s)"; grep -E "^\[  PASSED|^\[  FAILED|^\[  SKIPPED \] [0-9]" "$OUT/e/$name.log" | head -8; }
t session 90 env ATTN_TEST_BACKEND=cuda $V/bin/session_integration_test
t server 100 env ATTN_TEST_BACKEND=cuda $V/bin/server_integration_test
t act 200 $V/bin/attention_cuda_test
echo "=== fp16 grid $(date -u +%T)"
timeout 70 $V/bin/attention_kernel_bench --dtype fp16,bf16 --hdim 64,128 --varlen --json $OUT/e/fwd_ours.jsonl > $OUT/e/fwd_ours.log 2>&1; echo ours rc=$?
timeout 100 python3 $V/sdpa_peer.py --dtype fp16 --hdim 64,128 --json $OUT/e/fwd_peer16.jsonl > $OUT/e/fwd_peer16.log 2>&1; echo peer16 rc=$?
timeout 60 python3 $V/sdpa_peer.py --dtype bf16 --hdim 64,128 --json $OUT/e/fwd_peer.jsonl > $OUT/e/fwd_peer.log 2>&1; echo peer rc=$?
grep -E "^\|" $OUT/e/fwd_ours.log | head -60
grep -E "^\|" $OUT/e/fwd_peer16.log | head -30
for i in 1 2; do
  rm -f /tmp/lone.json
  ATTN_LONE_FAST_PATH=1 LONE_ONLY=1 LONE_STEPS=1000 TAG=on_$i OUT=$OUT/e timeout 40 bash bench/serving/run_sessions_on_gpu.sh $C .gpuE bench > /dev/null 2>&1
  python3 -c "import json;o=json.load(open('/tmp/lone.json'));p=o['step_latency_ms']['p50'];e=o['echo']['p50_ms'];print('run $i: step p50 %.3f ms echo p50 %.3f ms ratio %.2f'%(p,e,p/e))" 2>&1 | tail -1
done
echo "=== end $(date -u +%T)"
grep -E "WRONG|Failure|FAILED" $OUT/e/*.log | head -20
cd $OUT && tar cJf results.tar.xz e && rm -rf e; ls -la
