#!/usr/bin/env bash
# Sessions on the GPU backend (issue 20), in one command on a GPU machine: the session suite
# against the GPU executor and a device page pool (session_integration_test with
# ATTN_TEST_BACKEND=cuda: every shape, fork, truncate, windows, page sizes, eviction, against the
# float64 reference), then the benchmark: attention_server on the GPU with a pool for 64 sessions
# of 8k tokens, fake_attention_server as the echo, and attention_cli session-bench for a lone
# session (the step's p50 against the echo round trip of the same bytes) and 64 sessions on one
# stream (steps/s and p99), GQA 32/8, head_dim 128, bf16, 8k context.
#
#   bench/serving/run_sessions_on_gpu.sh COMMIT [BUNDLE_DIR] [tests|bench|all]
#   environment: SERVER (another attention_server binary), TAG (suffix of the metrics files),
#   LONE_ONLY=1 (only the lone session), LONE_STEPS (the lone session's steps, 400), LONE_ROUNDS
#   (rounds of the lone session with steps and echo calls interleaved, 8),
#   SUITE_SECONDS (the suite's time limit, 150); the server and the suite inherit the rest, e.g.
#   ATTN_LONE_FAST_PATH=0, ATTN_LONE_ZERO_COPY=0 or ATTN_APPEND_IN_STREAM=0 (docs/operations.md,
#   Environment) to compare the lone step's variants with one binary
#
# BUNDLE_DIR (default .gpu): shared/tools/gpu-bundle.sh of attention_server, attention_cli,
# fake_attention_server and session_integration_test. Results under $OUT, appended (so that the
# kernels' check of the same call can share the folder): run.log, tests.log (the suite's output)
# and sessions.jsonl (session-bench's JSON of the lone session, then of the 64).
set -uo pipefail
commit=${1:?usage: run_sessions_on_gpu.sh COMMIT [BUNDLE_DIR]}
bundle=${2:-.gpu}
part=${3:-all}
out=${OUT:-/tmp/attention_sessions_gpu}
mkdir -p "$out"
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin=$bundle/bin
status=0
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
exec > >(tee -a "$out/run.log") 2>&1
step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
echo "date $(date -u +%Y-%m-%d) commit $commit"

if [ "$part" != bench ]; then
step "session suite on the GPU executor"
ATTN_TEST_BACKEND=cuda timeout "${SUITE_SECONDS:-150}" "$bin/session_integration_test" \
  > "$out/suite.log" 2>&1
rc=$?
grep -E "^\[  (PASSED|FAILED) |^\[  FAILED  \]|Failure|rel|mismatch" "$out/suite.log" | head -40
{ echo "=== session suite on the GPU executor (exit code $rc)"; cat "$out/suite.log"; } >> "$out/tests.log"
rm -f "$out/suite.log"
echo "suite exit code: $rc"
[ "$rc" = 0 ] || status=1
fi

if [ "$part" != tests ]; then
step "servers"
# 64 sessions x (8192 + steps) tokens of 8 x 128 bf16 (4 KiB a token, K and V): 16 tokens per
# 64 KiB page, ~33k pages = 2.1 GiB of device memory.
# SERVER (default the bundle's attention_server) names the server binary, so that one call can
# compare two builds; its /metrics (127.0.0.1:50073) are saved after each run (metrics_*.txt:
# the stage and session-call histograms, where a step's time goes).
${SERVER:-"$bin/attention_server"} --address=127.0.0.1:50071 --health_address= \
  --metrics_address=127.0.0.1:50073 --session_pages=36000 --session_page_bytes=65536 \
  --log_level=warning &
server=$!
"$bin/fake_attention_server" --address=127.0.0.1:50072 &
echo_server=$!
for _ in $(seq 1 100); do
  "$bin/attention_cli" health --target=127.0.0.1:50071 >/dev/null 2>&1 && break
  sleep 0.2
done
common=(--target=127.0.0.1:50071 --context=8192 --heads=32 --kv_heads=8 --head_dim=128
        --dtype=bf16 --layers=1)

step "session-bench: a lone session, echo round trip of the same bytes"
timeout 120 "$bin/attention_cli" session-bench "${common[@]}" --sessions=1 \
  --steps="${LONE_STEPS:-400}" --warmup_steps=20 --echo_target=127.0.0.1:50072 \
  --json=/tmp/lone.json || status=1
cat /tmp/lone.json >> "$out/sessions.jsonl" 2>/dev/null; echo >> "$out/sessions.jsonl"
save_metrics() {
  python3 -c 'import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:50073/metrics", timeout=5).read().decode()
print("\n".join(l for l in text.splitlines()
                if ("stage_duration" in l or "session_call" in l) and "_bucket" not in l))' \
    > "$out/metrics_$1${TAG:+_$TAG}.txt" 2>&1
}
save_metrics lone
step "session-bench: the lone session in rounds, steps and echo calls in alternating blocks"
# The bar's figure (issue 20): the median over rounds of step p50 / echo p50, each round's steps
# and echo calls interleaved in blocks of 100 so that both see the host alike (a host's echo p50
# moved from 0.14 to 0.44 ms between runs in device call 2 of 2026-12-06's seventh session).
timeout 120 "$bin/attention_cli" session-bench --ab_targets=lone=127.0.0.1:50071 \
  "${common[@]:1}" --sessions=1 --steps=1000 --warmup_steps=50 --ab_rounds="${LONE_ROUNDS:-8}" \
  --ab_block=100 --echo_target=127.0.0.1:50072 --echo_calls=500 --json=/tmp/lone_rounds.json \
  || status=1
python3 -c 'import json, statistics, sys
rows = json.load(open(sys.argv[1]))
r = [x["step_p50_ms"] / x["echo_p50_ms"] for x in rows if x["echo_p50_ms"] > 0]
print("lone step p50 / echo p50 over %d rounds: median %.2f (%s)" % (len(r), statistics.median(r),
      " ".join("%.2f" % x for x in r)))' /tmp/lone_rounds.json 2>&1
tr -d '\n' < /tmp/lone_rounds.json >> "$out/sessions.jsonl" 2>/dev/null; echo >> "$out/sessions.jsonl"
[ -n "${LONE_ONLY:-}" ] && { kill -TERM "$server" "$echo_server"; wait "$server"; exit $status; }
step "session-bench: 64 sessions on one stream"
timeout 180 "$bin/attention_cli" session-bench "${common[@]}" --sessions=64 --steps=64 \
  --warmup_steps=4 --json=/tmp/many.json || status=1
cat /tmp/many.json >> "$out/sessions.jsonl" 2>/dev/null; echo >> "$out/sessions.jsonl"
save_metrics many

kill -TERM "$server" "$echo_server" 2>/dev/null
wait "$server"
echo "server exit code: $? (0 = drained)"
fi
echo "overall status $status"
exit $status
