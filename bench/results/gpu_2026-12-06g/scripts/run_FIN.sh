#!/usr/bin/env bash
# Lead's last device call of session 7 (~110 s): the routed-but-unrun changes of main, from the
# DEC (e55bd00: decode per-layout instantiations + H200 split rule), WS (13e8703: 832a647's routing)
# and FP8 (9312dcb: f3ef6ef's d 128 default) packs. Tests + sanitizer subsets in parallel, then
# decode old/new, the warp-specialized candidates' table (old defaults beside the new), FP8 bench.
set -u
T0=$SECONDS
O=$OUT/FIN; mkdir -p $O
log() { echo "[$((SECONDS-T0)) s] $*"; }
for n in DEC WS FP8; do tar xJf .gpu-pack$n/b.tar.xz & done; wait
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
D=$PWD/.gpuDEC; W=$PWD/.gpuWS; F=$PWD/.gpuFP8
log "FIN DEC $(cat $D/COMMIT) WS $(cat $W/COMMIT) FP8 $(cat $F/COMMIT) $(nvidia-smi --query-gpu=name --format=csv,noheader)"
cap=45
(export LD_LIBRARY_PATH=$D/lib
 timeout -k 3 $cap $D/bin/flash_decode_test --gtest_filter='-Variants/*' > $O/dec_test.log 2>&1 &
 f='*small_page16*:*small_page64*:*small_page128*:*small_key_range*:*fork_page16_partial*:*small_splits3*:*hdim128*:*dense_packed*'
 timeout -k 3 $cap $SAN --tool memcheck --error-exitcode 9 $D/bin/flash_decode_test --gtest_filter="$f" > $O/dec_memcheck.log 2>&1 &
 ATTN_TEST_BACKEND=cuda timeout -k 3 $cap $D/bin/session_integration_test --gtest_filter=-*InterleavedSessionsOfEveryShape*:*TruncateThenReappend* > $O/dec_session.log 2>&1 &
 wait) &
(export LD_LIBRARY_PATH=$W/lib
 for i in 0 1 2 3 4 5 6 7; do
   GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout -k 3 $cap $W/bin/flash_fwd_sm90ws_test > $O/ws_$i.log 2>&1 &
 done
 timeout -k 3 $cap $SAN --tool memcheck --error-exitcode 9 $W/bin/flash_fwd_sm90ws_test --gtest_filter='*d128_s1000_causal*:*varlen_d128_ragged*:*d64_s77*' > $O/ws_memcheck.log 2>&1 &
 wait) &
(export LD_LIBRARY_PATH=$F/lib
 timeout -k 3 $cap $F/bin/flash_fwd_fp8_test > $O/fp8_test.log 2>&1 &
 timeout -k 3 $cap $SAN --tool memcheck --error-exitcode 9 $F/bin/flash_fwd_fp8_test --gtest_filter='*d128_s256*:*d128_ragged_gqa_causal*:*varlen_causal_gqa*' > $O/fp8_memcheck.log 2>&1 &
 wait) &
wait
log "tests done"
for f in $O/*.log; do
  printf '%-14s ok %4s failed %3s %s %s\n' $(basename $f .log) "$(grep -c '^\[       OK' $f)" "$(grep -c '^\[  FAILED  \] [A-Za-z]' $f)" \
    "$(grep -m1 -oE '^\[  PASSED  \] [0-9]+' $f)" "$(grep -m1 -E 'ERROR SUMMARY' $f)"
done
grep -h '^\[  FAILED  \] [A-Za-z]' $O/*.log | sort -u | cut -c1-140 | head
(cd $OUT && tar cJf FIN_tests.tar.xz FIN && rm -f FIN/*.log)
log "decode old / new"
(export LD_LIBRARY_PATH=$D/lib
 timeout -k 3 12 $D/bin/decode_bench_old --json $O/old.jsonl > $O/old.txt 2>&1
 timeout -k 3 12 $D/bin/decode_bench --json $O/new.jsonl > $O/new.txt 2>&1)
python3 - $O <<'PY'
import json, sys, os
O = sys.argv[1]
def load(f):
    d = {}
    for l in open(os.path.join(O, f)):
        r = json.loads(l); d[(r['layout'], r['batch'], r['kv_len'])] = (r['ours_TBps'], r['splits'])
    return d
o, n = load('old.jsonl'), load('new.jsonl')
print('| layout | b x len | old TB/s (splits) | new TB/s (splits) | new/old |')
for k in sorted(n, key=lambda k: (k[0], -k[1])):
    if k in o:
        print(f"| {k[0]} | {k[1]}x{k[2]//1024}k | {o[k][0]:.3f} ({o[k][1]}) | {n[k][0]:.3f} ({n[k][1]}) | {n[k][0]/o[k][0]:.3f} |")
PY
log "ws bench"
(export LD_LIBRARY_PATH=$W/lib
 timeout -k 2 30 $W/bin/attention_kernel_bench --ws-variants --varlen --dtype bf16 --hdim 64,128 --json $O/ws_il.jsonl > $O/ws_bench.txt 2> $O/ws_bench.err)
log "ws rc=$?"
grep -E '^d c n|^[0-9]+ [01] [0-9]+ \|' $O/ws_bench.txt | head -30
log "fp8 bench"
(export LD_LIBRARY_PATH=$F/lib
 timeout -k 2 20 $F/bin/attention_kernel_bench --dtype bf16,fp8 --hdim 128 --causal 0,1 --seqlens 1024,4096,16384 --json $O/fp8.jsonl > $O/fp8_bench.txt 2>&1)
log "fp8 rc=$?"
grep -E '^\| (fp8|bf16)' $O/fp8_bench.txt | grep -v 'default |' | head -14
rm -rf .gpuDEC .gpuWS .gpuFP8
(cd $OUT && tar cJf FIN_bench.tar.xz FIN && rm -rf FIN)
log "end"
