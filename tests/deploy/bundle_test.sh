#!/usr/bin/env bash
# The relocatable bundle, end to end: make it, unpack it into a fresh folder elsewhere, check that
# every bundled library resolves inside it through RUNPATH alone, start the server from it with
# start-server.sh (CPU backend, a flags file, no LD_LIBRARY_PATH), call it with the bundled CLI,
# then SIGTERM it and check that it drains and exits 0.
#
#   tests/deploy/bundle_test.sh MAKE_BUNDLE SERVER CLI BUILD_DIR
set -euo pipefail
make_bundle=${1:?usage: bundle_test.sh MAKE_BUNDLE SERVER CLI BUILD_DIR}
server=${2:?server executable}
cli=${3:?cli executable}
build_dir=${4:?build dir}
unset LD_LIBRARY_PATH

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
finish() {
  echo "$passed passed, $failed failed"
  if [ "$failed" -eq 0 ]; then exit 0; fi
  exit 1
}

for tool in patchelf ldd objdump readelf; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: '$tool' not found (Debian: apt-get install patchelf binutils)"
    exit 77
  fi
done

work=$(cd "$(mktemp -d)" && pwd -P)
server_pid=
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

name=attention-service-test
if "$make_bundle" --server "$server" --cli "$cli" "$build_dir" "$work/out/$name.tar.gz"; then
  ok "make-bundle.sh made $name.tar.gz"
else
  fail "make-bundle.sh"
  finish
fi

# A fresh folder with a different path from where the bundle was made.
mkdir -p "$work/fresh/elsewhere"
tar -xzf "$work/out/$name.tar.gz" -C "$work/fresh/elsewhere"
root=$work/fresh/elsewhere/$name
rm -rf "$work/out"
for f in bin/attention_server bin/attention_cli start-server.sh README.txt share/MANIFEST; do
  if [ -e "$root/$f" ]; then ok "bundle has $f"; else fail "bundle lacks $f"; fi
done
nlibs=$(find "$root/lib" -name '*.so*' | wc -l)
if [ "$nlibs" -gt 0 ]; then ok "bundle has $nlibs shared libraries in lib/"; else fail "lib/ is empty"; fi

# RUNPATH on the executables, and every non-system library found in lib/ after the move.
for exe in attention_server attention_cli; do
  # shellcheck disable=SC2016  # $ORIGIN is literal
  if readelf -d "$root/bin/$exe" | grep -q 'RUNPATH.*\[\$ORIGIN/\.\./lib\]'; then
    ok "$exe has RUNPATH \$ORIGIN/../lib"
  else
    fail "$exe RUNPATH: $(readelf -d "$root/bin/$exe" | grep -E 'RPATH|RUNPATH' || echo none)"
  fi
done
system_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec\.so|libdl\.so|librt\.so|libpthread\.so|libresolv\.so|libutil\.so|libanl\.so|libnsl\.so|libBrokenLocale\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libnvidia-)'
outside=$(for f in "$root"/bin/* "$root"/lib/*; do
  ldd "$f" | awk '$2 == "=>" {print $1, $3}' | while read -r soname path; do
    [[ $soname =~ $system_re ]] && continue
    case "$(readlink -f "$path")" in
      "$root/lib/"*) ;;
      *) echo "$(basename "$f"):$soname=>$path" ;;
    esac
  done
done)
if [ -z "$outside" ]; then
  ok "every non-system library resolves inside the unpacked bundle"
else
  fail "libraries resolved outside the bundle: $outside"
fi

# Serve from the bundle: the flags file sets the drain timeout, the command line the rest.
mkdir -p "$root/etc"
printf '# test flags\n--drain_timeout_s=7\n\n' >"$root/etc/server.flags"
cd "$work/fresh"
"$root/start-server.sh" --backend=cpu --address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
  --cpu_threads=2 >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
port=
for _ in $(seq 1 600); do
  port=$(sed -n 's/^listening address=127\.0\.0\.1:\([0-9]\+\)$/\1/p' "$work/server.out")
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -n "$port" ]; then
  ok "server from the bundle listens on 127.0.0.1:$port"
else
  fail "server did not start: $(cat "$work/server.out" "$work/server.err")"
  finish
fi

if out=$("$root/bin/attention_cli" health --target="127.0.0.1:$port" 2>&1); then
  ok "attention_cli health: $(echo "$out" | tail -n 1)"
else
  fail "attention_cli health: $out"
fi
if out=$("$root/bin/attention_cli" call --target="127.0.0.1:$port" --random --batch 1 --seqlen 16 \
  --heads 2 --head_dim 32 --dtype fp32 --check 2>&1); then
  ok "attention_cli call --check from the bundle"
  while IFS= read -r line; do echo "     $line"; done <<<"$out"
else
  fail "attention_cli call: $out"
fi

kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
if [ "$status" -eq 0 ]; then ok "server exits 0 on SIGTERM"; else fail "server exit status $status"; fi
if grep -q 'event=draining.*drain_timeout_s=7' "$work/server.err"; then
  ok "start-server.sh passed the flags file (drain_timeout_s=7)"
else
  fail "flags file not applied: $(grep 'event=draining' "$work/server.err" || echo 'no draining line')"
fi
finish
