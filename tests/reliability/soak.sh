#!/usr/bin/env bash
# Bounded soak test: attention_server (CPU backend) on loopback under steady load from two
# attention_cli bench clients (unary calls, and one stream per channel) for --duration seconds,
# sampling the server's resident memory from /proc. Passes when no request failed, the server
# drained and exited 0, and resident memory grew by less than --max_growth_pct between the
# warm-up and the end.
#
#   tests/reliability/soak.sh BUILD_DIR [--duration=600] [--warmup=60] [--concurrency=8]
#                             [--cpu_threads=1] [--max_growth_pct=5] [--out=DIR]
#                             [--server_flag=--FLAG=VALUE ...]
#
# RSS at warm-up: the mean of the samples in the 30 s (or a tenth of the run) after --warmup;
# at the end: the mean of the samples of the last 30 s (or tenth). It writes DIR/rss.csv
# (seconds, kB), each client's bench JSON and DIR/summary.txt (default DIR: a temporary folder).
# Exit codes: 0 pass, 1 fail, 2 bad usage.
set -euo pipefail

usage() {
  sed -n '2,17p' "$0" >&2
  exit 2
}
[ $# -ge 1 ] || usage
build=$1
shift
duration=600 warmup=60 concurrency=8 cpu_threads=1 max_growth=5 out=
server_flags=()
for arg in "$@"; do
  case "$arg" in
    --duration=*) duration=${arg#*=} ;;
    --warmup=*) warmup=${arg#*=} ;;
    --concurrency=*) concurrency=${arg#*=} ;;
    --cpu_threads=*) cpu_threads=${arg#*=} ;;
    --max_growth_pct=*) max_growth=${arg#*=} ;;
    --out=*) out=${arg#*=} ;;
    --server_flag=*) server_flags+=("${arg#*=}") ;;
    *) usage ;;
  esac
done
server=$build/server/attention_server
cli=$build/client/cli/attention_cli
for f in "$server" "$cli"; do
  [ -x "$f" ] || { echo "soak: $f not built" >&2; exit 2; }
done
[ "$warmup" -lt "$duration" ] || { echo "soak: --warmup must be below --duration" >&2; exit 2; }
[ -n "$out" ] || out=$(mktemp -d /tmp/attention_soak.XXXXXX)
mkdir -p "$out"

server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

"$server" --address=127.0.0.1:0 --metrics_address=127.0.0.1:0 --backend=cpu \
  --cpu_threads="$cpu_threads" "${server_flags[@]}" >"$out/server.out" 2>"$out/server.log" &
server_pid=$!
for _ in $(seq 1 300); do
  grep -q '^listening address=' "$out/server.out" 2>/dev/null && break
  sleep 0.1
done
target=$(sed -n 's/^listening address=//p' "$out/server.out" | head -n 1)
[ -n "$target" ] || { echo "soak: the server did not start" >&2; cat "$out/server.log" >&2; exit 1; }

# RSS sampler: one sample every 2 s until the server exits.
(
  start=$(date +%s.%N)
  while kill -0 "$server_pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || true)
    [ -n "$rss" ] && printf '%.1f,%s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "$rss"
    sleep 2
  done
) >"$out/rss.csv" &
sampler_pid=$!

echo "soak: server $target (pid $server_pid), ${duration} s of load, warm-up ${warmup} s, output $out"
common=(--target="$target" --duration_s="$duration" --warmup_s=0 --concurrency="$concurrency"
        --retry_attempts=1)
# Two shapes and both methods, so that batches mix sizes and the stream path runs too.
"$cli" bench "${common[@]}" --batch=2 --seqlen=192 --heads=8 --kv_heads=2 --head_dim=64 \
  --dtype=bf16 --causal --json="$out/unary.json" >"$out/unary.txt" 2>&1 &
unary_pid=$!
"$cli" bench "${common[@]}" --stream --batch=1 --seqlen=96 --seqlen_k=320 --heads=4 \
  --head_dim=128 --dtype=fp16 --json="$out/stream.json" >"$out/stream.txt" 2>&1 &
stream_pid=$!
clients_ok=1
wait "$unary_pid" || clients_ok=0
wait "$stream_pid" || clients_ok=0

kill -TERM "$server_pid"
server_rc=0
wait "$server_pid" || server_rc=$?
server_pid=
wait "$sampler_pid" 2>/dev/null || true

json_field() {  # json_field FILE KEY: the first number after "KEY":
  grep -o "\"$2\": *[0-9.eE+-]*" "$1" | head -n 1 | sed 's/.*: *//'
}
requests=0 errors=0
for f in "$out/unary.json" "$out/stream.json"; do
  [ -f "$f" ] || { clients_ok=0; continue; }
  requests=$((requests + $(json_field "$f" requests_ok)))
  errors=$((errors + $(json_field "$f" requests_failed)))
done

# RSS at warm-up and at the end, from rss.csv.
window=$((duration / 10 < 30 ? duration / 10 : 30))
[ "$window" -ge 2 ] || window=2
read -r rss_warm rss_end rss_max samples < <(awk -F, -v w="$warmup" -v win="$window" -v d="$duration" '
  { t[NR] = $1; r[NR] = $2 }
  END {
    for (i = 1; i <= NR; i++) {
      if (t[i] >= w && t[i] < w + win) { sw += r[i]; nw++ }
      if (t[i] >= d - win && t[i] <= d) { se += r[i]; ne++ }
      if (t[i] >= w && r[i] > max) max = r[i]
    }
    printf "%d %d %d %d\n", nw ? sw / nw : 0, ne ? se / ne : 0, max, NR
  }' "$out/rss.csv")
growth=$(echo "scale=2; ($rss_end - $rss_warm) * 100 / $rss_warm" | bc 2>/dev/null || echo nan)

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "commit: $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "duration_s: $duration  warmup_s: $warmup  concurrency: $concurrency x 2 clients  cpu_threads: $cpu_threads"
  echo "server_flags: ${server_flags[*]:-(none)}"
  echo "requests_ok: $requests  requests_failed: $errors"
  echo "throughput_rps: $(echo "scale=1; $requests / $duration" | bc)"
  echo "rss_kb_warmup: $rss_warm  rss_kb_end: $rss_end  rss_kb_max_after_warmup: $rss_max  samples: $samples"
  echo "rss_growth_pct: $growth"
  echo "server_exit: $server_rc  clients_ok: $clients_ok"
} | tee "$out/summary.txt"

pass=1
[ "$clients_ok" -eq 1 ] || { echo "soak: FAIL: a bench client failed (see $out/*.txt)"; pass=0; }
[ "$errors" -eq 0 ] || { echo "soak: FAIL: $errors requests failed"; pass=0; }
[ "$requests" -gt 0 ] || { echo "soak: FAIL: no request succeeded"; pass=0; }
[ "$server_rc" -eq 0 ] || { echo "soak: FAIL: the server exited $server_rc"; pass=0; }
if [ "$rss_warm" -le 0 ] || [ "$(echo "$growth < $max_growth" | bc)" -ne 1 ]; then
  echo "soak: FAIL: resident memory grew ${growth}% (limit ${max_growth}%)"
  pass=0
fi
[ "$pass" -eq 1 ] && echo "soak: PASS"
[ "$pass" -eq 1 ]
