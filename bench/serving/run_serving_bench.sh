#!/usr/bin/env bash
# Serving benchmark: the four scenarios of the batching work, with attention_server and the load
# generator on one host over loopback, and the echo baseline measured in the same run.
#
#   (1) small requests (batch 1, seqlen 128, 16 heads, head_dim 64, bf16), 64 in flight:
#       throughput with batching vs --batching=false (target >= 4x), p50 / p99 latency of both
#   (2) a lone request (1 in flight): p50 latency with batching vs without (target <= 1.1x)
#   (3) large requests (seqlen 8192, 16 heads, head_dim 128, bf16): goodput vs the echo server
#       (same messages, no computation; target >= 0.8x)
#       the echo server under the same small load gives the transport's ceiling for (1)
#   (4) idle-server overhead, arrival to launch, for the lone small request (target p50 < 100 us):
#       the server's queue_wait stage (request accepted -> its batch starts on the executor),
#       read from the server's own /metrics histogram before and after scenario (2)
#
# usage: run_serving_bench.sh --server CMD --echo CMD --cli CMD --out DIR
#            [--duration_s 10] [--warmup_s 2] [--large_concurrency 4] [--commit SHA]
#            [--large_seqlen 8192 (smaller only for a smoke run on a CPU)]
#            [-- EXTRA_ATTENTION_SERVER_FLAGS...]
# LOAD_FLAGS (environment) adds flags to every load run, e.g. LOAD_FLAGS=--channels=4.
# CMD is a binary path or a command (e.g. "bundle/run attention_server" for a gpu-bundle.sh
# bundle). Writes DIR/results.json, DIR/table.md and one log / JSON per run. Needs python3.
set -euo pipefail

server_cmd="" echo_cmd="" cli_cmd="" out="" commit=""
duration=10 warmup=2 large_concurrency=4 large_seqlen=8192
extra_server_flags=()
while [ $# -gt 0 ]; do
  case $1 in
    --server) server_cmd=$2; shift 2 ;;
    --echo) echo_cmd=$2; shift 2 ;;
    --cli) cli_cmd=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --duration_s) duration=$2; shift 2 ;;
    --warmup_s) warmup=$2; shift 2 ;;
    --large_concurrency) large_concurrency=$2; shift 2 ;;
    --large_seqlen) large_seqlen=$2; shift 2 ;;
    --commit) commit=$2; shift 2 ;;
    --) shift; extra_server_flags=("$@"); break ;;
    *) echo "run_serving_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -z "$server_cmd" ] || [ -z "$echo_cmd" ] || [ -z "$cli_cmd" ] || [ -z "$out" ]; then
  sed -n '2,19p' "$0" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
read -r -a server_argv <<< "$server_cmd"
read -r -a echo_argv <<< "$echo_cmd"
read -r -a cli_argv <<< "$cli_cmd"

SMALL=(--dtype=bf16 --batch=1 --seqlen=128 --heads=16 --head_dim=64)
LARGE=(--dtype=bf16 --batch=1 --seqlen="$large_seqlen" --heads=16 --head_dim=128)

# ---- The load generator. The only code that knows attention_cli's flags and output. ----------
# run_load NAME ADDRESS CONCURRENCY SHAPE_FLAGS...: `attention_cli bench`, closed loop with
# CONCURRENCY unary requests in flight for --duration_s after --warmup_s, one random request of
# the given shape sent over and over; writes $out/NAME.json (and NAME.log).
run_load() {
  local name=$1 address=$2 concurrency=$3
  shift 3
  # LOAD_FLAGS is split into words on purpose (several flags).
  # shellcheck disable=SC2086
  "${cli_argv[@]}" bench --target="$address" --concurrency="$concurrency" \
    --duration_s="$duration" --warmup_s="$warmup" ${LOAD_FLAGS:-} "$@" --json="$out/$name.json" \
    > "$out/$name.log" 2>&1
}
thread_cpu="$(dirname "$0")/thread_cpu.py"
# run_sampled NAME ARGS...: run_load, and the server's CPU time per thread name over it in
# $out/NAME.threads.json (thread_cpu.py; $pid is the server's process).
run_sampled() {
  local name=$1
  python3 "$thread_cpu" snapshot "$pid" > "$out/$name.threads_before"
  run_load "$@"
  python3 "$thread_cpu" snapshot "$pid" > "$out/$name.threads_after"
  python3 "$thread_cpu" diff "$out/$name.threads_before" "$out/$name.threads_after" \
    > "$out/$name.threads.json"
}
# load_summary NAME: one JSON object {rps, p50_us, p99_us, errors, requests, server_queue_p50_us,
# batch_requests_mean, client_cpu_cores, server_cpu_cores} from run_load's JSON
# (throughput.requests_per_s, latency_ms, server_ms, requests_ok / requests_failed,
# server_batch_requests_mean, client_cpu_cores) and run_sampled's NAME.threads.json if there is one.
load_summary() {
  python3 - "$out/$1.json" "$out/$1.threads.json" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
threads = json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else None
print(json.dumps({"rps": r["throughput"]["requests_per_s"],
                  "p50_us": r["latency_ms"]["p50"] * 1e3, "p99_us": r["latency_ms"]["p99"] * 1e3,
                  "errors": r["requests_failed"], "requests": r["requests_ok"],
                  "server_queue_p50_us": r["server_ms"]["queue_p50"] * 1e3,
                  "batch_requests_mean": r["server_batch_requests_mean"],
                  "client_cpu_cores": r.get("client_cpu_cores"),
                  "server_cpu_cores": threads["total_cores"] if threads else None}))
PY
}
# ---------------------------------------------------------------------------------------------

pid=""
address=""
metrics_address=""
# start_server NAME ARGV...: starts a server, waits for its "listening address=" line.
start_server() {
  local name=$1
  shift
  : > "$out/$name.stdout"
  "$@" >> "$out/$name.stdout" 2> "$out/$name.stderr" &
  pid=$!
  for _ in $(seq 1 1200); do
    address=$(sed -n 's/^listening address=\(.*\)$/\1/p' "$out/$name.stdout" | head -n 1)
    [ -n "$address" ] && return 0
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.1
  done
  echo "run_serving_bench.sh: $name did not start; see $out/$name.stderr" >&2
  exit 1
}
stop_server() {
  kill -TERM "$pid"
  wait "$pid" || true
  pid=""
}
trap '[ -n "$pid" ] && kill -KILL "$pid" 2> /dev/null || true' EXIT

# Saves the server's /metrics text as $out/NAME.metrics.
scrape() {
  python3 - "http://$metrics_address/metrics" "$out/$1.metrics" <<'PY'
import sys, urllib.request
open(sys.argv[2], "w").write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
PY
}

metrics_port() { sed -n 's/.* metrics_address=[^ ]*:\([0-9]*\).*/\1/p' "$out/$1.stderr" | head -n 1; }

run_server_scenarios() {  # NAME BATCHING
  local name=$1 batching=$2
  start_server "$name" "${server_argv[@]}" --address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
    --batching="$batching" "${extra_server_flags[@]}"
  metrics_address=127.0.0.1:$(metrics_port "$name")
  echo "== $name: $address (metrics $metrics_address)" >&2
  scrape "small_c64_${name}_before"
  run_sampled "small_c64_$name" "$address" 64 "${SMALL[@]}"
  scrape "small_c64_${name}_after"
  scrape "lone_${name}_before"
  run_load "lone_$name" "$address" 1 "${SMALL[@]}"
  scrape "lone_${name}_after"
  if [ "$batching" = true ]; then
    scrape large_server_before
    run_sampled large_server "$address" "$large_concurrency" "${LARGE[@]}"
    scrape large_server_after
  fi
  stop_server
}

run_server_scenarios batched true
run_server_scenarios unbatched false
start_server echo "${echo_argv[@]}" --address=127.0.0.1:0
echo "== echo: $address" >&2
run_sampled small_c64_echo "$address" 64 "${SMALL[@]}"
run_sampled large_echo "$address" "$large_concurrency" "${LARGE[@]}"
stop_server

device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1 || true)
[ -n "$commit" ] || commit=$(git -C "$(dirname "$0")" rev-parse --short HEAD 2> /dev/null || echo unknown)
summaries=$(for run in small_c64_batched small_c64_unbatched small_c64_echo lone_batched \
                       lone_unbatched large_server large_echo; do
  printf '"%s": %s,\n' "$run" "$(load_summary "$run")"
done)

python3 - "$out" "${device:-unknown}" "$commit" "$duration" "$large_concurrency" "$large_seqlen" <<PY
import json, os, sys, datetime, platform
out, device, commit, duration, large_concurrency, large_seqlen = sys.argv[1:7]
runs = json.loads(r"""{${summaries%,}}""")  # load_summary wrote JSON (null, not None)

def queue_wait(name):
    """The queue_wait histogram over one run (after minus before): observations, share at or
    below 100 us, and the p50 interpolated linearly inside its bucket."""
    def read(path):
        buckets = {}
        for line in open(path):
            if line.startswith("attention_stage_duration_seconds_bucket") and 'stage="queue_wait"' in line:
                le = line.split('le="')[1].split('"')[0]
                buckets[float(le)] = float(line.split()[-1])  # float("+Inf") is inf
        return buckets
    before = read(f"{out}/{name}_before.metrics")
    after = read(f"{out}/{name}_after.metrics")
    cumulative = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    n = cumulative[-1][1] if cumulative else 0.0
    share = next((c for le, c in cumulative if le >= 100e-6), 0.0) / n if n else 0.0
    p50, lower, below = None, 0.0, 0.0
    for le, c in cumulative:
        if n and c >= n / 2:
            if le != float("inf"):
                p50 = (lower + (le - lower) * (n / 2 - below) / max(c - below, 1e-12)) * 1e6
            break
        lower, below = le, c
    return {"observations": n, "share_le_100us": share, "p50_us": p50}

def stage_means(name):
    """Mean seconds of each attention_stage_duration_seconds stage over one run (after minus
    before, sum / count), in us; stages not observed in the run are left out."""
    def read(path):
        sums, counts = {}, {}
        for line in open(path):
            if not line.startswith("attention_stage_duration_seconds_"):
                continue
            stage = line.split('stage="')[1].split('"')[0]
            if line.startswith("attention_stage_duration_seconds_sum"):
                sums[stage] = float(line.split()[-1])
            elif line.startswith("attention_stage_duration_seconds_count"):
                counts[stage] = float(line.split()[-1])
        return sums, counts
    (s0, c0), (s1, c1) = read(f"{out}/{name}_before.metrics"), read(f"{out}/{name}_after.metrics")
    return {st: (s1[st] - s0.get(st, 0.0)) / (c1[st] - c0.get(st, 0.0)) * 1e6
            for st in c1 if c1[st] > c0.get(st, 0.0)}

for name in ("small_c64_batched", "small_c64_unbatched", "large_server"):
    runs[name]["stage_mean_us"] = stage_means(name)

idle = queue_wait("lone_batched")
idle["server_queue_p50_us_reported"] = runs["lone_batched"]["server_queue_p50_us"]
r = runs
results = {
    "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
    "commit": commit, "device": device, "host": platform.node(),
    "duration_s": float(duration), "large_concurrency": int(large_concurrency),
    "large_seqlen": int(large_seqlen),
    "runs": runs,
    "idle_queue_wait": idle,
    "scenarios": {
        "1_small_throughput_ratio": {"value": r["small_c64_batched"]["rps"] / r["small_c64_unbatched"]["rps"], "target": ">= 4"},
        "1b_small_batched_vs_echo": {"value": r["small_c64_batched"]["rps"] / r["small_c64_echo"]["rps"], "target": "(the transport's ceiling for 1)"},
        "2_lone_latency_ratio": {"value": r["lone_batched"]["p50_us"] / r["lone_unbatched"]["p50_us"], "target": "<= 1.1"},
        "3_large_goodput_vs_echo": {"value": r["large_server"]["rps"] / r["large_echo"]["rps"], "target": ">= 0.8"},
        "4_idle_queue_wait_p50_us": {"value": idle["p50_us"], "target": "< 100 (share <= 100 us >= 0.5)"},
    },
}
s = results["scenarios"]
s["1_small_throughput_ratio"]["pass"] = s["1_small_throughput_ratio"]["value"] >= 4
s["1b_small_batched_vs_echo"]["pass"] = None
s["2_lone_latency_ratio"]["pass"] = s["2_lone_latency_ratio"]["value"] <= 1.1
s["3_large_goodput_vs_echo"]["pass"] = s["3_large_goodput_vs_echo"]["value"] >= 0.8
s["4_idle_queue_wait_p50_us"]["pass"] = idle["share_le_100us"] >= 0.5
# The CPU budget of (1): core-ms per small request on each side, and how many cores of this kind
# the 4x target would take at the batched server's and load generator's measured cost per request.
per_request = lambda cores, rps: None if cores is None or not rps else cores / rps * 1e3
budget = {name: {"server_core_ms": per_request(runs[name]["server_cpu_cores"], runs[name]["rps"]),
                 "load_core_ms": per_request(runs[name]["client_cpu_cores"], runs[name]["rps"])}
          for name in ("small_c64_batched", "small_c64_unbatched", "small_c64_echo")}
b = budget["small_c64_batched"]
if b["server_core_ms"] is not None and b["load_core_ms"] is not None:
    target_rps = 4 * r["small_c64_unbatched"]["rps"]
    budget["target_4x"] = {"rps": target_rps, "host_cores": os.cpu_count(),
                           "cores_needed": target_rps * (b["server_core_ms"] + b["load_core_ms"]) / 1e3}
results["cpu_budget"] = budget
json.dump(results, open(f"{out}/results.json", "w"), indent=2)

rows = ["| run | in flight | req/s | p50 us | p99 us | requests per launch | errors | server cores | load cores |",
        "|---|---|---|---|---|---|---|---|---|"]
cores = lambda c: "-" if c is None else f"{c:.2f}"
flight = {"small_c64_batched": 64, "small_c64_unbatched": 64, "small_c64_echo": 64, "lone_batched": 1,
          "lone_unbatched": 1, "large_server": int(large_concurrency), "large_echo": int(large_concurrency)}
for name, v in runs.items():
    rows.append(f"| {name} | {flight[name]} | {v['rps']:.1f} | {v['p50_us']:.0f} | {v['p99_us']:.0f} "
                f"| {v['batch_requests_mean']:.2f} | {v['errors']} | {cores(v['server_cpu_cores'])} "
                f"| {cores(v['client_cpu_cores'])} |")
rows += ["", "| scenario | value | target | pass |", "|---|---|---|---|"]
for name, v in s.items():
    value = "n/a" if v["value"] is None else f"{v['value']:.3g}"
    verdict = "-" if v["pass"] is None else ("yes" if v["pass"] else "NO")
    rows.append(f"| {name} | {value} | {v['target']} | {verdict} |")
ms = lambda v: "-" if v is None else f"{v:.3f}"
rows += ["", "| small run | server core-ms per request | load core-ms per request |", "|---|---|---|"]
for name in ("small_c64_batched", "small_c64_unbatched", "small_c64_echo"):
    rows.append(f"| {name} | {ms(budget[name]['server_core_ms'])} | {ms(budget[name]['load_core_ms'])} |")
if "target_4x" in budget:
    t = budget["target_4x"]
    rows.append(f"\n(1) at 4x: {t['rps']:.0f} req/s, at the batched cost per request "
                f"{t['cores_needed']:.1f} cores (server + load generator); this host has {t['host_cores']}.")
# Where a batch's time goes on the server, mean us per stage (the server's stage histograms).
stages = ["queue_wait", "staging", "host_to_device", "kernel", "device_to_host", "device",
          "scatter", "answer"]
rows += ["", "| run (mean us) | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
for name in ("small_c64_batched", "small_c64_unbatched", "large_server"):
    m = runs[name]["stage_mean_us"]
    rows.append(f"| {name} | " + " | ".join(f"{m[st]:.0f}" if st in m else "-" for st in stages) + " |")
header = f"Serving benchmark, {results['date']}, commit {commit}, device {device}, host {results['host']}, {duration} s per run\n\n"
open(f"{out}/table.md", "w").write(header + "\n".join(rows) + "\n")
print(header + "\n".join(rows))
PY
