#!/usr/bin/env bash
# FP8K device script, call 3 (helper FP8K, session 6): run from the repo root as
#   OUT=<dir> bash .gpu-packFP8K/run.sh
# Unpacks .gpuFP8K (flash_fwd_fp8_test, attention_kernel_bench, COMMIT), then (about 75 s):
#   1. flash_fwd_fp8_test, every case on the default configuration
#   2. compute-sanitizer memcheck and racecheck on a subset (default configuration)
#   3. attention_kernel_bench: bf16 and fp8 at d 128, causal 0 / 1, 1k..16k, with the FP8
#      candidates timed beside the default (--fp8-variants)
#   4. the peer script (sdpa_peer.py: FA2 / cuDNN bf16) on the d 128 shapes
#   5. the candidates' correctness (ATTN_FP8_VARIANT=LABEL, a subset of cases)
#   6. fp8 at d 64 / 256 with their candidates
# Logs under $OUT/FP8K/; a summary on stdout.
set -uo pipefail
out=${OUT:-/tmp/fp8k_out}/FP8K
mkdir -p "$out"
start=$(date +%s)
t() { echo "[$(( $(date +%s) - start )) s] $*"; }
# cap N: N seconds, or what is left of the script's 86 s if less (at least 1).
cap() { local left=$(( 86 - ($(date +%s) - start) )); [ $left -lt 1 ] && left=1; echo $(( $1 < left ? $1 : left )); }
timeout 20 tar xJf .gpu-packFP8K/b.tar.xz || { echo "FP8K: unpack failed"; exit 1; }
b=.gpuFP8K
echo "FP8K bundle commit: $(cat $b/COMMIT 2>/dev/null)"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader > "$out/device.txt" 2>&1
cat "$out/device.txt"
export LD_LIBRARY_PATH="$b/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
summary() { grep -E "^\[  PASSED|^\[  FAILED  \] [0-9]|elements off|tests ran" "$1" | head -12; }

t "test (default configuration)"
timeout $(cap 30) "$b/bin/flash_fwd_fp8_test" > "$out/test.log" 2>&1
echo "test exit: $?"
summary "$out/test.log"
grep -E "max\|o-ref\|" "$out/test.log"

for tool in memcheck racecheck; do
  t "compute-sanitizer $tool"
  subset='*d128_s256*:*d128_ragged_gqa_causal*:*varlen_causal_gqa*:*d64_causal_gqa*:*d256_causal_sinks*:*varlen_nan_unread*'
  timeout $(cap 25) compute-sanitizer --tool "$tool" --error-exitcode 9 "$b/bin/flash_fwd_fp8_test" \
    --gtest_filter="$subset" > "$out/$tool.log" 2>&1
  echo "$tool exit: $? ($(grep -cE '^\[       OK' "$out/$tool.log") cases ok)"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$out/$tool.log" | head -3
done

best() {
  echo "best FP8 variant per cell (speed against the default):"
  grep -E "default \|" "$1" | awk -F'|' '{split($10, a, ", "); key=$3"|"$4"|"$5; r=a[2]+0;
    if (r > best[key]) {best[key]=r; name[key]=a[1]}} END {for (k in best) printf "  d|causal|seqlen %s: %s %.3fx\n", k, name[k], best[k]}' | sort -t'|' -k1,1n -k2,2n -k3,3n
}
t "bench d 128: bf16, fp8 and the FP8 tile variants"
timeout $(cap 40) "$b/run" attention_kernel_bench --dtype bf16,fp8 --hdim 128 --causal 0,1 \
  --seqlens 1024,2048,4096,8192,16384 --fp8-variants --json "$out/bench.jsonl" \
  > "$out/bench.log" 2>&1
echo "bench exit: $?"
grep -E "^\| (fp8|bf16)|^# device" "$out/bench.log" | grep -v "default |"
best "$out/bench.log"
t "peer: PyTorch SDPA (FA2, cuDNN, efficient) bf16 at d 128, same shapes"
timeout $(cap 35) python3 "$b/sdpa_peer.py" --dtype bf16 --hdim 128 --seqlens 1024,4096,16384 \
  --json "$out/peer.jsonl" > "$out/peer.log" 2>&1
echo "peer exit: $?"
grep -vE '^\{' "$out/peer.log" | tail -12
t "variant tests"
d128='*d128_s256*:*d128_ragged*:*d128_per_seq*:*d128_softcap*:*varlen_causal_gqa*:*varlen_nan*'
for v in "d128 128x128/2c/4s/m:$d128" "d128 128x128/2c/4s/r/m:$d128" "d128 128x128/2c/4s/r:$d128" \
         "d128 128x192/2c/3s/r:$d128" "d128 128x192/2c/3s:$d128" "d128 192x64/3c/4s:$d128" \
         "d128 128x128/2c/3s:$d128" "d64 128x128/2c/4s/r/m:*d64*" "d64 128x128/2c/4s/r:*d64*" \
         "d64 192x64/3c/4s:*d64*" "d256 128x64/2c/2s/r:*d256*"; do
  label=${v%%:*}
  log="$out/test_variant_$(echo "$label" | tr ' /' '__').log"
  ATTN_FP8_VARIANT="$label" timeout $(cap 10) "$b/bin/flash_fwd_fp8_test" --gtest_filter="${v#*:}" \
    > "$log" 2>&1
  rc=$?
  echo "variant $label: exit $rc, $(grep -c '^\[       OK' "$log") ok, $(grep -c '^\[  SKIPPED' "$log") skipped"
  grep -m2 "elements off" "$log"
  case $label in *"/m"*) grep -E "max\|o-ref\|" "$log" | head -4 ;; esac
done

t "bench d 64 / 256: fp8 and its variants"
timeout $(cap 30) "$b/run" attention_kernel_bench --dtype fp8 --hdim 64,256 --causal 0,1 \
  --seqlens 1024,4096,16384 --fp8-variants --json "$out/bench.jsonl" > "$out/bench_d64_d256.log" 2>&1
echo "bench exit: $?"
grep -E "^\| fp8" "$out/bench_d64_d256.log" | grep -v "default |"
best "$out/bench_d64_d256.log"
t "done"
