#!/usr/bin/env bash
# Lone step: default vs ATTN_LONE_ZERO_COPY=0 (from gpu_2026-12-06f/scripts/run_STEP.sh).
set -u
T0=$SECONDS
: "${OUT:?set OUT}"
B=$PWD/.gpuC1
O=$OUT/STEP
mkdir -p "$O"
export LD_LIBRARY_PATH=$B/lib
echo "=== STEP $(cat "$B/COMMIT") $(date -u +%T) $(nvidia-smi --query-gpu=name --format=csv,noheader)"
uptime

cfgs=(def nozc)
declare -A port=([def]=50110 [nozc]=50120)
declare -A pages=([def]=36000 [nozc]=4096)
declare -A envs=([def]="ATTN_X=1" [nozc]="ATTN_LONE_ZERO_COPY=0")
pids=()
for c in "${cfgs[@]}"; do
  # shellcheck disable=SC2086
  env ${envs[$c]} "$B/bin/attention_server" --address=127.0.0.1:${port[$c]} --health_address= \
    --metrics_address=127.0.0.1:$((port[$c] + 1)) --session_pages=${pages[$c]} \
    --session_page_bytes=65536 --device_memory_bytes=$((1 << 30)) \
    --pinned_host_bytes=$((256 << 20)) --log_level=warning > "$O/server_$c.log" 2>&1 &
  pids+=($!)
done
"$B/bin/fake_attention_server" --address=127.0.0.1:50150 > "$O/echo.log" 2>&1 &
echo_pid=$!
for c in "${cfgs[@]}"; do
  for _ in $(seq 1 60); do
    "$B/bin/attention_cli" health --target=127.0.0.1:${port[$c]} > /dev/null 2>&1 && break
    sleep 0.2
  done
done
echo "=== servers up ($((SECONDS - T0)) s)"
common=(--context=${STEP_CONTEXT:-8192} --heads=32 --kv_heads=8 --head_dim=128 --dtype=bf16
        --layers=1)
# python3 -S: no site-packages at start-up (fast on a host whose Python imports a lot at start).
py() { python3 -S "$@"; }
for r in $(seq 1 "${STEP_ROUNDS:-4}"); do
  for i in 0 1; do
    c=${cfgs[$(( (i + r) % 2 ))]}
    [ $((SECONDS - T0)) -gt 60 ] && { echo "(time: round $r cut)"; break 2; }
    s0=$(date +%s.%N)
    timeout 12 "$B/bin/attention_cli" session-bench --target=127.0.0.1:${port[$c]} "${common[@]}" \
      --sessions=1 --steps=${STEP_STEPS:-800} --warmup_steps=50 --echo_target=127.0.0.1:50150 \
      --echo_calls=${STEP_ECHO:-400} --json="$O/lone_${c}_$r.json" > "$O/lone_${c}_$r.log" 2>&1
    s1=$(date +%s.%N)
    py -c "import json,sys;o=json.load(open(sys.argv[1]));p=o['step_latency_ms']['p50'];e=o['echo']['p50_ms'];print('%-4s run %s: step p50 %.3f ms, echo p50 %.3f ms, ratio %.2f  (step p99 %.3f; run %.1f s)'%(sys.argv[2],sys.argv[3],p,e,p/e,o['step_latency_ms']['p99'],float(sys.argv[5])-float(sys.argv[4])))" \
      "$O/lone_${c}_$r.json" "$c" "$r" "$s0" "$s1" 2>&1 | tail -1
  done
done
for c in "${cfgs[@]}"; do
  py - "$((port[$c] + 1))" > "$O/metrics_$c.txt" 2>&1 <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
print("\n".join(l for l in text.splitlines()
                if ("stage_duration" in l or "session_call" in l) and "_bucket" not in l))
PY
done
py - "$O" "${cfgs[@]}" <<'PY'
import glob, json, os, re, statistics, sys
out, cfgs = sys.argv[1], sys.argv[2:]
for c in cfgs:
    r, p = [], []
    for f in sorted(glob.glob(os.path.join(out, f"lone_{c}_*.json"))):
        try:
            o = json.load(open(f))
            r.append(o["step_latency_ms"]["p50"] / o["echo"]["p50_ms"])
            p.append(o["step_latency_ms"]["p50"])
        except (OSError, ValueError, KeyError, ZeroDivisionError):
            pass
    s, n = {}, {}
    try:
        for line in open(os.path.join(out, f"metrics_{c}.txt")):
            m = re.match(r'attention_stage_duration_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
            if m:
                (s if m.group(1) == "sum" else n)[m.group(2)] = float(m.group(3))
    except OSError:
        pass
    stages = "  ".join(f"{k} {1e6 * s[k] / n[k]:.1f}" for k in sorted(s) if n.get(k))
    med = f"{statistics.median(r):.2f}" if r else "-"
    medp = f"{statistics.median(p):.3f}" if p else "-"
    print(f"{c:4s} ratios {', '.join(f'{x:.2f}' for x in r)}  median {med}  (step p50 median {medp} ms)")
    print(f"     stage means (us): {stages}")
PY
for c in def; do
  [ $((SECONDS - T0)) -gt 75 ] && { echo "(time: 64 sessions on $c cut)"; continue; }
  timeout 12 "$B/bin/attention_cli" session-bench --target=127.0.0.1:${port[$c]} "${common[@]}" \
    --sessions=64 --steps=${STEP_MANY_STEPS:-64} --warmup_steps=4 --json="$O/many_$c.json" \
    > "$O/many_$c.log" 2>&1
  py -c "import json,sys;m=json.load(open(sys.argv[1]));print('64 sessions %s: %.0f steps/s, p50 %.2f ms, p99 %.2f ms, %.2f sequences per launch, %d failed, fill %.1f s'%(sys.argv[2],m['steps_per_s'],m['step_latency_ms']['p50'],m['step_latency_ms']['p99'],m['batch_sequences_mean'],m.get('steps_failed',0),m.get('fill_s',0)))" \
    "$O/many_$c.json" "$c" 2>&1 | tail -1
done
kill -TERM "${pids[@]}" "$echo_pid" 2>/dev/null
for p in "${pids[@]}"; do timeout 4 tail --pid="$p" -f /dev/null; done
echo "=== STEP end ($((SECONDS - T0)) s)"
grep -l "append_by_copy_refused" "$O"/server_*.log 2>/dev/null
grep -lE "FAILED|Failure" "$O"/*.log 2>/dev/null | head
