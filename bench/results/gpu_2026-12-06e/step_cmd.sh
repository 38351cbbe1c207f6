#!/usr/bin/env bash
# Issue 20, the lone decode step's bar (<= 1.3x the echo round trip), helper STEP. One device
# command, from the repo root, with $OUT set; bundle .gpuS (its commit in .gpuS/COMMIT). ~200 s.
#   1. the session suite on the GPU executor: default (lone-request fast path on), then with
#      zero-copy outputs (ATTN_LONE_ZERO_COPY=1): both must pass (suite exit code 0);
#   2. the lone session (GQA 32/8, d 128, bf16, 8k context, 1000 steps) with the echo of the same
#      bytes, alternating three configurations three times, one server binary:
#        off = ATTN_LONE_FAST_PATH=0 (the path before this change), on = the default,
#        zc  = on + ATTN_LONE_ZERO_COPY=1;
#      each run's /metrics land in $OUT/metrics_lone_<cfg>_<i>.txt (stage means: queue_wait,
#      staging, kernel, answer; a lone batch records no host_to_device / device_to_host);
#   3. 64 sessions on one stream with the default (batching must be as before: ~3.9-4.1
#      sequences per launch, ~21-24k steps/s, p99 ~2.9-7.6 ms in call C/A);
#   4. summary: per run, lone p50 / echo p50 and the ratio; per configuration, the median; the
#      stage means of each run's server;
#   5. last (can be cut if time is short): reliability_fault_test's *OnGpu* tests (the injected
#      sticky CUDA error on the first batch to complete, which is now a lone one).
set -u
B=.gpuS
C=$(cat "$B/COMMIT")
S=bench/serving/run_sessions_on_gpu.sh
: "${OUT:?set OUT}"
mkdir -p "$OUT"
note() { echo "### $* ($(date -u +%H:%M:%S))" | tee -a "$OUT/run.log"; }

note "suite: default (fast path on)"
SUITE_SECONDS=70 "$S" "$C" "$B" tests
note "suite: ATTN_LONE_ZERO_COPY=1"
ATTN_LONE_ZERO_COPY=1 SUITE_SECONDS=70 "$S" "$C" "$B" tests

tags=()
for i in 1 2 3; do
  for cfg in off on zc; do
    case $cfg in
      off) env_set=(ATTN_LONE_FAST_PATH=0) ;;
      on) env_set=(ATTN_LONE_FAST_PATH=1) ;;
      zc) env_set=(ATTN_LONE_FAST_PATH=1 ATTN_LONE_ZERO_COPY=1) ;;
    esac
    note "lone: $cfg run $i (${env_set[*]})"
    rm -f /tmp/lone.json
    env "${env_set[@]}" LONE_ONLY=1 LONE_STEPS=1000 TAG="${cfg}_$i" "$S" "$C" "$B" bench
    cp /tmp/lone.json "$OUT/lone_${cfg}_$i.json" 2>/dev/null
    tags+=("${cfg}_$i")
  done
done

note "64 sessions on one stream, default"
TAG=many_on "$S" "$C" "$B" bench

note "summary"
python3 - "$OUT" "${tags[@]}" <<'PY' | tee -a "$OUT/run.log"
import json, os, statistics, sys
out, tags = sys.argv[1], sys.argv[2:]
by = {}
for tag in tags:
    try:
        o = json.load(open(os.path.join(out, f"lone_{tag}.json")))
    except (OSError, ValueError) as e:
        print(f"{tag:6s} no result ({e})")
        continue
    p50, echo = o["step_latency_ms"]["p50"], o["echo"]["p50_ms"]
    by.setdefault(tag.split("_")[0], []).append(p50 / echo)
    print(f"{tag:6s} lone p50 {p50:.3f} ms  p99 {o['step_latency_ms']['p99']:.3f}  "
          f"echo p50 {echo:.3f} ms  ratio {p50 / echo:.2f}")
for cfg, r in by.items():
    print(f"{cfg:4s} ratios {', '.join(f'{x:.2f}' for x in r)}  median {statistics.median(r):.2f}")
text = open(os.path.join(out, "sessions.jsonl")).read()
objs, i, dec = [], 0, json.JSONDecoder()
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    try:
        o, i = dec.raw_decode(text, i)
    except ValueError:
        break
    objs.append(o)
many = [o for o in objs if o.get("sessions") == 64]
if many:
    m = many[-1]
    print(f"64 sessions: {m['steps_per_s']:.0f} steps/s, p50 {m['step_latency_ms']['p50']:.2f} "
          f"ms, p99 {m['step_latency_ms']['p99']:.2f} ms, "
          f"{m['batch_sequences_mean']:.2f} sequences per launch")
PY
for f in "$OUT"/metrics_lone_*.txt; do
  echo "== $(basename "$f")"
  python3 - "$f" <<'PY'
import re, sys
s, c = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r'attention_stage_duration_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
    if m:
        (s if m.group(1) == "sum" else c)[m.group(2)] = float(m.group(3))
print("  ".join(f"{k} {1e6 * s[k] / c[k]:.1f}" for k in sorted(s) if c.get(k)), "(us, means)")
PY
done | tee -a "$OUT/run.log"

note "reliability_fault_test *OnGpu* (default)"
LD_LIBRARY_PATH="$B/lib" ATTN_TEST_BACKEND=cuda ATTN_SERVER_BINARY="$B/bin/attention_server" \
  timeout 60 "$B/bin/reliability_fault_test" --gtest_filter='*OnGpu*' 2>&1 | tail -15 \
  | tee -a "$OUT/run.log"
