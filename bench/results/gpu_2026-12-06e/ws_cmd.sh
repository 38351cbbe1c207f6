#!/usr/bin/env bash
# WS3 (issue 23, short sequences), device call 2: the warp-specialized forward's short-sequence
# variants (/q2 two Q buffers, /pf L2 prefetch of the next tile, /ts bulk-store epilogue, /x the
# next tile's first S issued in a tile's last turn, under its epilogue, /sn and /fd the snake and
# fold orders of a persistent grid's tiles) tested (in order of interest: the later ones are
# skipped when time runs short), sanitized, and timed against the default with the peers in the
# same command. Run from the repo root with the bundle .gpuF (carry it): bash .gpuF/ws_cmd.sh;
# everything lands under $OUT; under 200 s (each step has a timeout and a share of the time).
set -f  # the gtest filters below are not file globs
B=.gpuF; S=$B/bin/flash_fwd_sm90ws_test; export LD_LIBRARY_PATH=$B/lib
mkdir -p "$OUT"; T0=$(date +%s)
left() { echo $((195 - ($(date +%s) - T0))); }
log() { echo "=== $* ($(date +%T), $(left) s left)" | tee -a "$OUT/summary.log"; }
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader; echo "commit $(cat $B/COMMIT)"; } | tee -a "$OUT/summary.log"

# 1. Each variant on the cases that exercise its protocol (bf16, its bucket): ragged packed tails,
#    empty sequences, more tiles than SMs ("many": blocks run several tiles), non-finite
#    neighbours, causal, sinks. About 55 s.
F128='*varlen_d128_inf_neighbour*:*varlen_d128_one_sequence_causal*:*varlen_d128_ragged_causal*:*varlen_d128_many*:*d128_s1000*:*d128_q300_k1000_causal*:*d128_sinks*:*d128_q1000_k300_causal*'
F64='*varlen_d64_inf_neighbour_causal*:*varlen_d64_q_ne_k*:*varlen_d40_many*:*d64_s77*:*d64_s512*:*d64_q513_k129_causal*:*d64_q1000_k17*'
log "variant tests"
# Labels the bench times: the d 64 two-consumer base (tested in earlier calls) and every new
# variant whose tests pass.
PASSED="128x128/2c/4s/o"
for v in 128x128/2c/2s/q2/pf/x 128x128/2c/2s/o/fd 128x128/2c/2s/q2/pf/x/fd 128x128/2c/2s/q2/x \
         128x128/2c/2s/q2/pf 128x128/2c/2s/o/pf/ts 192x96/3c/4s/q2/pf/x 128x128/2c/4s/q2/pf/x \
         128x128/2c/4s/q2/pf/x/fd 192x96/3c/4s/o/fd 192x96/3c/4s/o/sn 128x128/2c/4s/q2/pf/x/sn \
         128x128/2c/2s/o/sn 128x128/2c/2s/q2/pf/x/sn 192x128/3c/4s/q2/pf 192x128/3c/4s/o/ts \
         128x128/2c/2s/q2 128x128/2c/2s/o/pf 128x128/2c/2s/o/ts 192x128/3c/4s/o/pf 192x96/3c/4s/q2/pf \
         128x128/2c/4s/q2/pf; do
  case $v in 192*|128x128/2c/4s*) f=$F64;; *) f=$F128;; esac
  n=test_${v//\//_}; t=$(date +%s)
  [ "$(left)" -lt 140 ] && { echo "$v skipped (time)" | tee -a "$OUT/summary.log"; continue; }
  timeout 25 $S --ws-variant=$v --gtest_filter="$f" > "$OUT/$n.log" 2>&1; rc=$?
  [ $rc -eq 0 ] && PASSED="$PASSED${PASSED:+,}$v"
  echo "$v rc=$rc ($(( $(date +%s) - t )) s) $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/$n.log" | tr '\n' ' ')" | tee -a "$OUT/summary.log"
done

# 2. Sanitizers on the most involved variant (two Q buffers, prefetch, overlap, fold) and the
#    bulk-store epilogue, cases with several tiles per block; each at most 20 s.
log "sanitizers"
for run in "128x128/2c/2s/q2/pf/x/fd *varlen_d128_many_causal*:*d128_sinks_causal_empty_rows*" \
           "128x128/2c/2s/o/pf/ts *varlen_d128_many*:*varlen_d128_inf_neighbour*"; do
  set -- $run
  for tool in memcheck racecheck; do
    [ "$(left)" -lt 100 ] && { echo "skipped $tool $1 (time)" | tee -a "$OUT/summary.log"; continue; }
    n=${tool}_${1//\//_}; t=$(date +%s)
    timeout 20 compute-sanitizer --tool $tool --error-exitcode 9 $S --ws-variant=$1 \
      --gtest_filter="$2" > "$OUT/$n.log" 2>&1; rc=$?
    echo "$tool $1 rc=$rc ($(( $(date +%s) - t )) s) $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$n.log" | tail -1)" | tee -a "$OUT/summary.log"
  done
done

# 3. The bench: every passed variant beside the default (and the default again), packed
#    batches, d 128 first.
log "bench --ws-variants --varlen"
echo "timing: $PASSED" | tee -a "$OUT/summary.log"
lim=$(( $(left) - 35 )); [ $lim -gt 70 ] && lim=70
timeout $lim $B/bin/attention_kernel_bench --ws-variants --ws-only "$PASSED" --varlen --hdim 128,64 \
  --seqlens 512,1024,2048 --causal 0,1 --json "$OUT/wsv.jsonl" > "$OUT/wsv.log" 2>&1
echo "rc=$?" | tee -a "$OUT/summary.log"

# 4. The peers on the same cells.
log "sdpa_peer"
lim=$(( $(left) - 2 )); [ $lim -gt 45 ] && lim=45
timeout $lim python3 $B/sdpa_peer.py --hdim 64,128 --seqlens 512,1024,2048 --causal 0,1 \
  --json "$OUT/peer.jsonl" > "$OUT/peer.log" 2>&1; echo "rc=$?" | tee -a "$OUT/summary.log"
log "done"
