#!/usr/bin/env bash
# attention_cli against a running server ($ATTN_TARGET, see run_with_server.sh).
#   cli_test.sh ATTENTION_CLI fake|real
# fake: the fake server echoes q, so o.npy must equal the q.npy the CLI saved.
# real: attention_server on the CPU backend; every call is --check'ed against the local backend.
set -u
cli=$1
mode=$2
python=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# expect CODE DESCRIPTION -- COMMAND...: runs COMMAND, keeps its output in $work/out.
expect() {
  local want=$1 what=$2
  shift 3
  "$@" >"$work/out" 2>&1
  local rc=$?
  if [ "$rc" != "$want" ]; then
    fail "$what: exit $rc, want $want; output:"
    sed 's/^/    /' "$work/out"
  fi
}

contains() {
  grep -qF -- "$1" "$work/out" || { fail "$2: output lacks '$1':"; sed 's/^/    /' "$work/out"; }
}

t=$ATTN_TARGET

# health. The first call also connects: a sanitizer build on a loaded 2-core host took longer than
# the default 2 s once (ASan, 2026-12-06), so it gets 20 s.
expect 0 "health" -- "$cli" health --target="$t" --timeout_ms=20000
contains "SERVING" "health"
expect 0 "health of the service" -- "$cli" health --target="$t" --service=attention.v1.AttentionService
contains "attention.v1.AttentionService: SERVING" "health of the service"
expect 1 "health of an unknown service" -- "$cli" health --target="$t" --service=no.such.Service
contains "SERVICE_UNKNOWN" "health of an unknown service"

# usage errors name the flag
expect 2 "unknown flag" -- "$cli" call --target="$t" --bogus=1
contains "--bogus: unknown flag" "unknown flag"
expect 2 "duration and requests" -- "$cli" bench --target="$t" --duration_s=1 --requests=5
contains "--requests: give --duration_s or --requests" "duration and requests"
expect 2 "missing target" -- "$cli" health
contains "--target: required" "missing target"
expect 2 "bad dtype" -- "$cli" call --target="$t" --random --dtype=int8
contains "--dtype" "bad dtype"
expect 2 "deterministic without backward" -- "$cli" call --target="$t" --random --deterministic
contains "--deterministic: needs --backward" "deterministic without backward"
expect 2 "unknown command" -- "$cli" frobnicate
expect 0 "help" -- "$cli" bench --help
contains "--concurrency" "help"

if [ "$mode" = fake ]; then
  for dtype in bf16 fp16 fp32; do
    expect 0 "call --random $dtype" -- "$cli" call --target="$t" --random --dtype=$dtype \
      --batch=2 --seqlen=33 --heads=4 --kv_heads=2 --head_dim=16 --seed=$RANDOM \
      --save_inputs="$work/$dtype-" --out="$work/$dtype-o.npy"
    contains "o: " "call --random $dtype"
    cmp -s "$work/$dtype-q.npy" "$work/$dtype-o.npy" || fail "$dtype: o.npy differs from q.npy"
    expect 0 "call from files $dtype" -- "$cli" call --target="$t" --q="$work/$dtype-q.npy" \
      --k="$work/$dtype-k.npy" --v="$work/$dtype-v.npy" --out="$work/$dtype-o2.npy"
    cmp -s "$work/$dtype-q.npy" "$work/$dtype-o2.npy" || fail "$dtype: o2.npy differs from q.npy"
  done
  # The echo is not attention: --check must catch it.
  expect 1 "call --check of a wrong answer" -- "$cli" call --target="$t" --random --seqlen=16 \
    --heads=2 --head_dim=16 --check
  contains "check FAILED" "call --check of a wrong answer"
  expect 1 "call with a missing file" -- "$cli" call --target="$t" --q="$work/none.npy" \
    --k="$work/none.npy" --v="$work/none.npy"
  contains "--q" "call with a missing file"
  # The fake server has no backward: the step fails with the server's code, naming the call.
  expect 1 "call --backward against the fake server" -- "$cli" call --target="$t" --random \
    --seqlen=16 --heads=2 --head_dim=16 --backward
  contains "UNIMPLEMENTED: AttentionBackward" "call --backward against the fake server"
else
  for dtype in bf16 fp16 fp32; do
    expect 0 "call --check $dtype" -- "$cli" call --target="$t" --random --dtype=$dtype \
      --batch=2 --seqlen=37 --seqlen_k=50 --heads=4 --kv_heads=2 --head_dim=64 --causal \
      --return_lse --seed=$RANDOM --save_inputs="$work/$dtype-" --out="$work/o.npy" \
      --lse_out="$work/lse.npy" --check
    contains "check passed" "call --check $dtype"
  done
  for dtype in bf16 fp32; do
    expect 0 "call --check $dtype" -- "$cli" call --target="$t" --random --dtype=$dtype \
      --batch=3 --seqlen=40 --heads=2 --head_dim=128 --window_left=7 --window_right=3 \
      --softcap=20 --softmax_scale=0.1 --check
    contains "check passed" "call --check window/softcap $dtype"
  done
  # Packed layout, random and from files.
  expect 0 "call --check packed random" -- "$cli" call --target="$t" --random --dtype=fp16 \
    --heads=4 --kv_heads=1 --head_dim=32 --cu_seqlens_q=0,30,74,75 --cu_seqlens_k=0,60,100,164 \
    --causal --return_lse --check --save_inputs="$work/p-"
  contains "check passed" "call --check packed random"
  expect 0 "call --check packed files" -- "$cli" call --target="$t" --q="$work/p-q.npy" \
    --k="$work/p-k.npy" --v="$work/p-v.npy" --cu_seqlens_q=0,30,74,75 \
    --cu_seqlens_k=0,60,100,164 --check
  contains "check passed" "call --check packed files"
  # FLOAT8_E4M3 (per-head descales, o bfloat16), dense and packed, checked against the local
  # CPU backend; its backward is refused before anything is sent.
  expect 0 "call --check fp8" -- "$cli" call --target="$t" --random --dtype=fp8 \
    --batch=2 --seqlen=37 --seqlen_k=50 --heads=4 --kv_heads=2 --head_dim=64 --causal \
    --return_lse --seed=$RANDOM --check
  contains "o: bfloat16" "call --check fp8"
  contains "check passed" "call --check fp8"
  expect 0 "call --check fp8 packed" -- "$cli" call --target="$t" --random --dtype=fp8 \
    --heads=4 --kv_heads=1 --head_dim=40 --cu_seqlens_q=0,30,74,75 \
    --cu_seqlens_k=0,60,100,164 --softcap=20 --check
  contains "check passed" "call --check fp8 packed"
  expect 1 "call --backward fp8" -- "$cli" call --target="$t" --random --dtype=fp8 \
    --seqlen=16 --heads=2 --head_dim=16 --backward
  contains "FLOAT8_E4M3 inputs are forward only" "call --backward fp8"
  expect 0 "bench fp8" -- "$cli" bench --target="$t" --concurrency=3 --seqlen=48 --heads=4 \
    --head_dim=32 --dtype=fp8 --requests=20 --warmup_s=0.1 --json="$work/fp8.json"
  "$python" - "$work/fp8.json" <<'PY' || fail "bench fp8: JSON check failed"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["requests_ok"] == 20 and r["requests_failed"] == 0, r
assert r["problem"]["dtype"] == "float8_e4m3", r["problem"]
# An answer's o is bfloat16: twice the bytes of the e4m3 q.
t = r["throughput"]
assert t["response_bytes_per_s"] > 48 * 4 * 32 * 2 * t["requests_per_s"] * 0.99, t
PY
  # The server's validation error comes back with its code (exit 2) and message.
  expect 2 "server rejects a bad request" -- "$cli" call --target="$t" --random --seqlen=8 \
    --heads=2 --head_dim=16 --window_left=-5
  contains "INVALID_ARGUMENT" "server rejects a bad request"
  contains "window" "server rejects a bad request"
  # The backward pass: the forward with lse, then AttentionBackward; dq, dk, dv checked against
  # the local CPU backend's backward.
  for dtype in bf16 fp32; do
    expect 0 "call --backward --check $dtype" -- "$cli" call --target="$t" --random \
      --dtype=$dtype --batch=2 --seqlen=37 --seqlen_k=50 --heads=4 --kv_heads=2 --head_dim=64 \
      --causal --seed=$RANDOM --backward --deterministic --grad_out="$work/$dtype-" --check
    contains "dk: " "call --backward --check $dtype"
    contains "backward server timings" "call --backward --check $dtype"
    contains "check of dq, dk, dv against the local CPU backend" "call --backward --check $dtype"
    [ "$(grep -c "check passed" "$work/out")" = 2 ] ||
      fail "call --backward --check $dtype: both checks (o, then dq/dk/dv) must pass"
    "$python" - "$work/$dtype-" <<'PY' || fail "call --backward $dtype: gradient files"
import sys
prefix = sys.argv[1]
for name in ("dq", "dk", "dv"):
    header = open(prefix + name + ".npy", "rb").read(128)
    want = "(2, 37, 4, 64)" if name == "dq" else "(2, 50, 2, 64)"
    assert header.startswith(b"\x93NUMPY") and want.encode() in header, (name, header)
PY
  done
  expect 0 "call --backward --check packed" -- "$cli" call --target="$t" --random --dtype=fp16 \
    --heads=4 --kv_heads=1 --head_dim=32 --cu_seqlens_q=0,30,74,75 --cu_seqlens_k=0,60,100,164 \
    --causal --window_left=20 --backward --check
  contains "check of dq, dk, dv against the local CPU backend" "call --backward --check packed"
  # Backward bench, unary (a blocking call per slot thread) and on the stream.
  for streaming in "" "--stream"; do
    expect 0 "bench --backward $streaming" -- "$cli" bench --target="$t" --concurrency=3 \
      --seqlen=48 --heads=4 --head_dim=32 --dtype=fp32 --requests=20 --warmup_s=0.1 \
      --backward $streaming --json="$work/bb.json"
    contains "backward" "bench --backward $streaming"
    "$python" - "$work/bb.json" <<'PY' || fail "bench --backward $streaming: JSON check failed"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["pass"] == "backward", r["pass"]
assert r["requests_ok"] == 20 and r["requests_failed"] == 0, r
# An answer is dq, dk, dv: three tensors of q's size, where a forward answer has one.
t = r["throughput"]
assert t["response_bytes_per_s"] > 3 * 48 * 4 * 32 * 4 * t["requests_per_s"] * 0.99, t
PY
  done
fi

# bench: counts, JSON, ordering of percentiles; no progress bar when stdout is not a terminal.
for streaming in "" "--stream"; do
  expect 0 "bench $streaming" -- "$cli" bench --target="$t" --concurrency=4 --batch=1 \
    --seqlen=64 --heads=4 --head_dim=64 --dtype=bf16 --requests=40 --warmup_s=0.2 $streaming \
    --json="$work/bench.json"
  contains "throughput" "bench $streaming"
  if grep -q $'\r' "$work/out"; then fail "bench $streaming drew a progress bar into a file"; fi
  "$python" - "$work/bench.json" "$streaming" <<'PY' || fail "bench $streaming: JSON check failed"
import json, sys
r = json.load(open(sys.argv[1]))
mode = "stream" if sys.argv[2] else "unary"
assert r["mode"] == mode, r["mode"]
assert r["pass"] == "forward", r["pass"]
assert r["requests_ok"] == 40 and r["requests_failed"] == 0, r
l = r["latency_ms"]
assert 0 < l["p50"] <= l["p90"] <= l["p99"] <= l["max"], l
t = r["throughput"]
assert t["requests_per_s"] > 0 and abs(t["tokens_per_s"] / t["requests_per_s"] - 64) < 1e-3, t
assert t["request_bytes_per_s"] > 3 * 64 * 4 * 64 * 2 * t["requests_per_s"] * 0.99, t
assert r["server_ms"]["total_p50"] > 0, r["server_ms"]
assert r["problem"]["query_tokens"] == 64 and r["problem"]["dtype"] == "bfloat16", r["problem"]
PY
done
expect 0 "bench --duration_s" -- "$cli" bench --target="$t" --concurrency=8 --seqlen=16 \
  --heads=2 --head_dim=32 --duration_s=1 --warmup_s=0.2 --channels=2 --json="$work/d.json"
"$python" -c "
import json, sys
r = json.load(open('$work/d.json'))
assert r['requests_ok'] > 0 and 0.9 < r['duration_s'] < 3, r
assert r['channels'] == 2
" || fail "bench --duration_s: JSON check failed"

if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all attention_cli checks passed ($mode server)"
