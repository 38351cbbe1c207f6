#!/usr/bin/env bash
# Starts a server that prints "listening address=HOST:PORT" on stdout (attention_server or
# fake_attention_server), runs a command against it, and stops the server with SIGTERM.
#
#   run_with_server.sh SERVER [SERVER_FLAGS...] -- COMMAND [ARGS...]
#
# The server gets --address=127.0.0.1:0 in addition (attention_server also a free metrics port).
# "{target}" in ARGS becomes HOST:PORT, which is also exported as ATTN_TARGET. Exits with
# COMMAND's code (77, skip, passes through); 1 when the server does not come up within 60 s.
set -u
server=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  server+=("$1")
  shift
done
if [ $# -lt 2 ]; then
  echo "usage: run_with_server.sh SERVER [FLAGS...] -- COMMAND [ARGS...]" >&2
  exit 2
fi
shift

# attention_server's metrics endpoint defaults to 0.0.0.0:9464: two tests running at once (ctest
# -j) would both bind it and one server would exit. Give it a free port unless the test chose one.
if [ "$(basename "${server[0]}")" = attention_server ] &&
   [[ " ${server[*]} " != *" --metrics_address="* ]]; then
  server+=(--metrics_address=127.0.0.1:0)
fi

work=$(mktemp -d)
"${server[@]}" --address=127.0.0.1:0 >"$work/stdout" 2>"$work/stderr" &
pid=$!
stop() {
  kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap stop EXIT

target=
for _ in $(seq 600); do
  target=$(sed -n 's/^listening address=\([^ ]*\).*/\1/p' "$work/stdout" | head -n 1)
  [ -n "$target" ] && break
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "server exited before listening:" >&2
    cat "$work/stdout" "$work/stderr" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$target" ]; then
  echo "server did not print 'listening address=' within 60 s:" >&2
  cat "$work/stdout" "$work/stderr" >&2
  exit 1
fi
export ATTN_TARGET=$target
command=()
for arg in "$@"; do command+=("${arg//\{target\}/$target}"); done
"${command[@]}"
