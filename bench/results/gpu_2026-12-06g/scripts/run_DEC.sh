#!/usr/bin/env bash
# Lead's decode pack (issue 21): the production decode kernel with one instantiation per K/V layout
# (dense: no page lookups in its copy loop; paged: per-tile lookups for pages of 64+, shifts for 16 / 32),
# commit in COMMIT, against the call-1 production kernel (fbfac18, bin/decode_bench_old).
#  1. flash_decode_test (production: every page size, forks, key ranges, windows, ALiBi, softcap,
#     GQA/MQA, empty contexts), memcheck + racecheck on paged cases, GPU session suite (bf16 build).
#  2. decode_bench old / new / old / new (every row, dense and paged), sdpa_peer.py --decode.
set -u
T0=$SECONDS
O=$OUT/DEC; mkdir -p $O
log() { echo "[$((SECONDS-T0)) s] $*"; }
tar xJf .gpu-packDEC/b.tar.xz
B=$PWD/.gpuDEC; export LD_LIBRARY_PATH=$B/lib; export PYTHONUNBUFFERED=1
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
log "DEC $(cat $B/COMMIT)"
timeout -k 3 45 $B/bin/flash_decode_test --gtest_filter='-Variants/*' > $O/test.log 2>&1 &
f='*small_page16*:*small_page64*:*small_page128*:*small_key_range*:*fork_page16_partial*:*small_splits3*'
timeout -k 3 45 $SAN --tool memcheck --error-exitcode 9 $B/bin/flash_decode_test --gtest_filter="$f" > $O/memcheck.log 2>&1 &
timeout -k 3 45 $SAN --tool racecheck --error-exitcode 9 $B/bin/flash_decode_test --gtest_filter="$f" > $O/racecheck.log 2>&1 &
ATTN_TEST_BACKEND=cuda timeout -k 3 45 $B/bin/session_integration_test --gtest_filter=-*InterleavedSessionsOfEveryShape*:*TruncateThenReappend* > $O/session.log 2>&1 &
wait
for n in test memcheck racecheck session; do
  printf '%-10s ok %4s failed %3s %s %s\n' $n "$(grep -c '^\[       OK' $O/$n.log)" "$(grep -c '^\[  FAILED  \] [A-Za-z]' $O/$n.log)" \
    "$(grep -m1 -oE '^\[  PASSED  \] [0-9]+' $O/$n.log)" "$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' $O/$n.log)"
done
grep -h '^\[  FAILED  \] [A-Za-z]' $O/*.log | sort -u | head
log "bench old/new x2"
for r in 1; do
  timeout -k 3 25 $B/bin/decode_bench_old --json $O/old_$r.jsonl > $O/old_$r.log 2>&1; log "old $r rc=$?"
  timeout -k 3 25 $B/bin/decode_bench --json $O/new_$r.jsonl > $O/new_$r.log 2>&1; log "new $r rc=$?"
done
timeout -k 3 30 python3 - "$B" "$O/peer.jsonl" > "$O/peer.log" 2>&1 <<'PY'
import json, sys, types
sys.path.insert(0, sys.argv[1])
import torch
import sdpa_peer
out = open(sys.argv[2], "a")
def emit(row):
    out.write(json.dumps(row) + "\n"); out.flush()
for tokens, lens in [(262144, [2048, 8192, 32768, 131072]), (8192, [8192]), (32768, [32768]), (131072, [131072])]:
    sdpa_peer.decode_grid(types.SimpleNamespace(kv_lens=lens, decode_tokens=tokens, dtype="bf16"), torch.bfloat16, emit)
PY
log "peer rc=$?"
python3 - $O <<'PY'
import json, sys, statistics, os
O = sys.argv[1]
peer = {}
for l in open(os.path.join(O, 'peer.jsonl')):
    r = json.loads(l); peer[(r['batch'], r['kv_len'])] = r['cudnn_TBps']
def load(f):
    d = {}
    for l in open(os.path.join(O, f)):
        r = json.loads(l); d.setdefault((r['layout'], r['batch'], r['kv_len']), []).append(r['ours_TBps'])
    return d
runs = {k: [load(f'{k}_{r}.jsonl') for r in (1,)] for k in ('old', 'new')}
keys = sorted(runs['new'][0], key=lambda k: (k[0], -k[1]))
print('| layout | b x len | old TB/s (2 runs) | new TB/s (2 runs) | new/old | new/cuDNN |')
for k in keys:
    o = [x for run in runs['old'] for x in run.get(k, [])]
    n = [x for run in runs['new'] for x in run.get(k, [])]
    c = peer.get((k[1], k[2]))
    print(f"| {k[0]} | {k[1]}x{k[2]//1024}k | {' '.join('%.3f'%x for x in o)} | {' '.join('%.3f'%x for x in n)} | {statistics.mean(n)/statistics.mean(o):.3f} | {statistics.mean(n)/c if c else float('nan'):.3f} |")
print('cuDNN', {f'{b}x{L//1024}k': v for (b, L), v in peer.items()})
PY
grep '^|' $O/splits.log | head -20
log "end"
