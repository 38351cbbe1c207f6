#!/usr/bin/env bash
# The container image, built and run as a user would on a host without Docker, from Debian
# packages only (no registry):
#   1. a Debian base image made locally: debootstrap --variant=minbase from the mirror in this
#      machine's apt sources, then podman import (cached in podman's storage, one per day and
#      mirror);
#   2. deploy/docker/Dockerfile built with podman, CPU only (BUILD_IMAGE and RUNTIME_IMAGE set to
#      that base, ATTN_CUDA=OFF);
#   3. the image itself: nothing added to the base but /opt/attention-service, no compiler, no
#      build tree, its size;
#   4. the server run as the kustomize base's Deployment runs it (its args with the flags
#      ConfigMap's values, its user, read-only root filesystem with an emptyDir-like /tmp, all
#      capabilities dropped), on ports published to 127.0.0.1 only: every probe answers, the
#      ServiceMonitor's path answers, an exact call checked against the CPU reference,
#      the uid of the process, the preStop command, then SIGTERM with calls in flight: every
#      call answered, exit 0.
#
#   tests/deploy/container_test.sh REPO_ROOT CLI WORK_DIR
#
# CLI is attention_cli of the calling build (it drives the server from outside the container);
# WORK_DIR holds the logs and the temporary root filesystem. Podman reads the settings this kind
# of host needs from deploy/docker/containers.conf (CONTAINERS_CONF; docs/operations.md).
# Exit 77 (SKIP) without root, podman, debootstrap or node, or where podman cannot run a
# container; 1 on any failed check. Runs of this test on one machine take turns (a lock).
set -euo pipefail
repo=$(cd "${1:?usage: container_test.sh REPO_ROOT CLI WORK_DIR}" && pwd)
cli=${2:?attention_cli executable}
work_dir=${3:?work dir}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
note() { echo "note $*"; }
finish() {
  echo "$passed passed, $failed failed ($SECONDS s)"
  if [ "$failed" -eq 0 ]; then exit 0; fi
  exit 1
}
skip() {
  echo "SKIP: $*"
  exit 77
}

# --- Prerequisites -------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, and podman import of a root filesystem)"
for tool in podman debootstrap node; do
  command -v "$tool" >/dev/null 2>&1 ||
    skip "'$tool' not found (Debian: apt-get install podman runc debootstrap nodejs)"
done
[ -x "$cli" ] || { fail "attention_cli not found at $cli"; finish; }
status=0
"$here/npm_setup.sh" >/dev/null || status=$?
[ "$status" -ne 77 ] || skip "npm not found: the Deployment is read with the yaml package"
[ "$status" -eq 0 ] || { fail "npm_setup.sh (tools for reading the Deployment)"; finish; }

export CONTAINERS_CONF=$repo/deploy/docker/containers.conf
if ! info=$(podman info 2>&1); then
  skip "podman cannot run here: $(tail -n 3 <<<"$info")"
fi

# One run at a time on this machine: the runs share the cached base and build-stage images.
exec 9>"${TMPDIR:-/tmp}/attention-container-test.lock"
flock 9
mkdir -p "$work_dir"
work=$(cd "$work_dir" && pwd)/container-test
rm -rf "$work"
mkdir -p "$work"

image=localhost/attention-service-test:cpu-$$
build_cache=localhost/attention-service-test:build-stage
name=attention-container-test-$$
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  podman rmi "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
# What a run killed before its cleanup (a ctest timeout) left behind; under the lock, no other
# run's.
for old in $(podman ps -a --format '{{.Names}}' --filter name='^attention-container-test-'); do
  podman rm -f -t 0 "$old" >/dev/null 2>&1 || true
done
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' localhost/attention-service-test); do
  if [[ $old == *:cpu-* ]]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
done

# --- 1. The Debian base --------------------------------------------------------------------------
# This machine's apt sources, as "URI SUITE COMPONENT..." lines: the one-line format and deb822.
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [OPTIONS] URI SUITE COMPONENT...: the options (signed-by=...) in the first column.
    awk '$1 == "deb" {
      line = $0; opts = ""
      sub(/^[ \t]*deb[ \t]+/, "", line)
      if (match(line, /^\[[^]]*\][ \t]*/)) {
        opts = substr(line, 1, RLENGTH); line = substr(line, RLENGTH + 1)
      }
      sub(/[ \t]*#.*/, "", line)
      print opts "\t" line }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'function flush(   i, j, n, m, u, s) {
           if (types ~ /(^| )deb( |$)/ && enabled != "no") {
             n = split(uris, u, " "); m = split(suites, s, " ")
             for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
               print (signed == "" ? "" : "[signed-by=" signed "]") "\t" u[i] " " s[j] " " comps
           }
           types = uris = suites = comps = signed = enabled = ""
         }
         /^[ \t]*#/ { next }
         /^[ \t]*$/ { flush(); next }
         { key = tolower($1); sub(/^[^:]*:[ \t]*/, "") }
         key == "types:" { types = $0 }
         key == "uris:" { uris = $0 }
         key == "suites:" { suites = $0 }
         key == "components:" { comps = $0 } key == "signed-by:" { signed = $0 }
         key == "enabled:" { enabled = tolower($0) }
         END { flush() }' "$f"
  done
}
# shellcheck disable=SC1091
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || skip "no VERSION_CODENAME in /etc/os-release: no release to debootstrap"
[ -e "/usr/share/debootstrap/scripts/$codename" ] || skip "debootstrap does not know $codename"
# The distribution's own archives only (the release, its updates and security suites, signed by
# the distribution's keyring or by none named): a third-party source's key is not in the base.
sources=$(apt_sources | awk -F'\t' -v c="$codename" '
  { split($2, w, " ") }
  w[2] !~ ("^" c "(-updates|-security)?$") { next }
  $1 ~ /signed-by=/ &&
    $1 !~ /signed-by=\/usr\/share\/keyrings\/(debian|ubuntu)-archive-keyring\.gpg/ { next }
  { print $2 }')
mirror=$(awk -v c="$codename" '$2 == c { print $1; exit }' <<<"$sources")
[ -n "$mirror" ] || skip "no $codename source of the distribution in this machine's apt sources"
base_repo=localhost/attention-test-base
# A new base each day (the day's security updates) and for another set of sources.
base=$base_repo:$codename-$(date -u +%Y%m%d)-$(sha256sum <<<"$sources" | cut -c1-8)
if podman image exists "$base"; then
  ok "Debian base $base (cached in podman's storage)"
else
  start=$SECONDS
  include=()
  # apt inside the image speaks https to an https mirror only with the CA certificates.
  grep -q '^https:' <<<"$sources" && include=(--include=ca-certificates)
  rootfs=$work/rootfs
  if ! debootstrap --variant=minbase "${include[@]}" "$codename" "$rootfs" "$mirror" \
      >"$work/debootstrap.log" 2>&1; then
    fail "debootstrap --variant=minbase $codename $mirror: $(tail -n 5 "$work/debootstrap.log")"
    finish
  fi
  awk '{ print "deb " $0 }' <<<"$sources" >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/*
  if ! tar -C "$rootfs" -c . | podman import - "$base" >"$work/import.log" 2>&1; then
    fail "podman import of the root filesystem: $(tail -n 5 "$work/import.log")"
    finish
  fi
  rm -rf "$rootfs"
  ok "Debian base $base made from $mirror: debootstrap, podman import ($((SECONDS - start)) s)"
fi

# Podman's settings for this host, and whether it can start a container at all.
if ! out=$(podman run --rm --network=none "$base" /bin/true 2>&1); then
  skip "podman cannot run containers here: $(tail -n 3 <<<"$out")"
fi

# --- 2. The build --------------------------------------------------------------------------------
# The context is filtered by deploy/docker/Dockerfile.dockerignore, which podman reads as BuildKit
# does (the Dockerfile's name + .dockerignore).
build_args=(--format docker --isolation=chroot -f "$repo/deploy/docker/Dockerfile"
  --build-arg "BUILD_IMAGE=$base" --build-arg "RUNTIME_IMAGE=$base" --build-arg ATTN_CUDA=OFF)
old_cache=$(podman image inspect -f '{{.Id}}' "$build_cache" 2>/dev/null || true)
start=$SECONDS
# The build stage is tagged too, so that its layers stay as the next run's cache and nothing
# else of earlier runs does (the previous build stage is removed below).
if podman build "${build_args[@]}" --target build -t "$build_cache" "$repo" \
     >"$work/build.log" 2>&1 &&
   podman build "${build_args[@]}" -t "$image" "$repo" >>"$work/build.log" 2>&1; then
  ok "podman build (CPU, base $base) in $((SECONDS - start)) s"
else
  fail "podman build: $(tail -n 30 "$work/build.log")"
  finish
fi
new_cache=$(podman image inspect -f '{{.Id}}' "$build_cache")
if [ -n "$old_cache" ] && [ "$old_cache" != "$new_cache" ]; then
  podman rmi "$old_cache" >/dev/null 2>&1 || note "the previous build stage $old_cache is in use"
fi
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "$base_repo"); do
  [ "$old" = "$base" ] || podman rmi "$old" >/dev/null 2>&1 || true
done

# --- 3. The image --------------------------------------------------------------------------------
size=$(podman image inspect -f '{{.Size}}' "$image")
base_size=$(podman image inspect -f '{{.Size}}' "$base")
mb() { echo "$(($1 / 1000000)) MB"; }
ok "image size $(mb "$size"): the base's $(mb "$base_size") + $(mb $((size - base_size)))"
# What the image adds to its base, path by path (A added, C changed, D deleted).
diff_out=$(podman image diff "$image" "$base" | sort)
outside=$(awk '$2 != "/opt" && $2 !~ "^/opt/attention-service(/|$)"' <<<"$diff_out")
if [ -n "$diff_out" ] && [ -z "$outside" ]; then
  ok "the image adds only /opt/attention-service to its base ($(grep -c '^A' <<<"$diff_out") paths)"
else
  fail "the image changes its base outside /opt/attention-service: $(head -n 20 <<<"$outside")"
fi
for f in bin/attention_server bin/attention_cli share/MANIFEST; do
  if grep -q "^A /opt/attention-service/$f$" <<<"$diff_out"; then
    ok "image has $f"
  else
    fail "image lacks $f"
  fi
done
# No compiler or build tool, no build tree (CMake's or ninja's files, objects, the sources).
found=$(podman run --rm --network=none --user 0 --entrypoint /bin/sh "$image" -c '
  for tool in cc c++ gcc g++ cpp clang clang++ nvcc ld as cmake ninja make ccache; do
    command -v "$tool"
  done
  find / -xdev \( -name CMakeCache.txt -o -name build.ninja -o -name CMakeFiles \
    -o -name "*.o" -o -name "*.a" -o -path /src \) -print 2>/dev/null
  true' 2>&1)
if [ -z "$found" ]; then
  ok "no compiler, build tool or build tree in the image"
else
  fail "the image holds build tools or a build tree: $(head -n 10 <<<"$found")"
fi

# --- 4. Run as the Deployment runs it ------------------------------------------------------------
if ! settings=$(node "$here/deployment_settings.mjs" "$repo" 2>&1); then
  fail "reading the kustomize base: $settings"
  finish
fi
setting() { awk -v k="$1" '$1 == k { print substr($0, length(k) + 2) }' <<<"$settings"; }
user=$(setting user)
group=$(setting group)
mapfile -t args < <(setting arg)
mapfile -t command < <(setting command)

image_user=$(podman image inspect -f '{{.Config.User}}' "$image")
if [ "$image_user" = "$user:$group" ] && [ "$user" != 0 ]; then
  ok "image USER $image_user is the Deployment's runAsUser:runAsGroup"
else
  fail "image USER '$image_user', the Deployment's securityContext $user:$group"
fi
# Every ConfigMap variable reaches a flag (a variable no argument names would be untested).
unused=$(setting env_unused)
if [ -z "$unused" ]; then
  ok "every variable of the flags ConfigMap is passed as a flag ($(setting env | wc -l))"
else
  fail "ConfigMap variables passed to no flag: $unused"
fi
# The binary refuses a flag it does not know, so starting with the ConfigMap's says they exist.
if podman run --rm --network=none "$image" --no_such_flag=1 >"$work/flags.log" 2>&1; then
  fail "the server started with --no_such_flag=1"
elif grep -q 'no_such_flag' "$work/flags.log"; then
  ok "the server refuses an unknown flag: $(grep -m 1 no_such_flag "$work/flags.log")"
else
  fail "the server failed on --no_such_flag=1 without naming it: $(tail -n 3 "$work/flags.log")"
fi

run_args=(--name "$name" -d --cap-drop=ALL --security-opt=no-new-privileges)
if [ "$(setting read_only)" = true ]; then
  run_args+=(--read-only --read-only-tmpfs=false)
fi
while read -r path limit; do
  [ -n "$path" ] || continue
  opts=rw,mode=1777
  [ "$limit" = - ] || opts+=,size=${limit/%i/}
  run_args+=(--tmpfs "$path:$opts")
done < <(setting tmpfs)
while read -r _ number; do
  [ -n "$number" ] && run_args+=(-p "127.0.0.1::$number")
done < <(setting port)
[ ${#command[@]} -eq 0 ] || run_args+=(--entrypoint "${command[0]}")
start=$SECONDS
if ! podman run "${run_args[@]}" "$image" "${command[@]:1}" "${args[@]}" >"$work/run.log" 2>&1; then
  fail "podman run: $(tail -n 5 "$work/run.log")"
  finish
fi
host_port() { podman port "$name" "$1/tcp" | head -n 1 | sed 's/.*://'; }
grpc_port=$(host_port "$(setting port | awk '$1 == "grpc" { print $2 }')")
health=
for _ in $(seq 1 300); do
  if "$cli" health --target="127.0.0.1:$grpc_port" --timeout_ms=500 >/dev/null 2>&1; then
    health=$((SECONDS - start))
    break
  fi
  [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] || break
  sleep 0.2
done
if [ -n "$health" ]; then
  ok "the server is SERVING within $health s of podman run (gRPC on 127.0.0.1:$grpc_port)"
else
  fail "the server did not become healthy: $(podman logs "$name" 2>&1 | tail -n 10)"
  finish
fi
if podman logs "$name" 2>&1 | grep -q 'event=listening.*backend=cpu'; then
  ok "--backend=$(setting env | sed -n 's/^ATTN_BACKEND=//p') chose the CPU backend"
else
  fail "no 'event=listening ... backend=cpu' line: $(podman logs "$name" 2>&1 | tail -n 5)"
fi

# http_get PORT PATH OUT: GET http://127.0.0.1:PORT/PATH into OUT (status line, headers, body)
# through bash's /dev/tcp (HTTP/1.0: the server closes the connection after the answer); fails
# unless the status is 200. No process to start per request, so that the drain check below can
# poll every 20 ms.
http_get() {
  local fd
  exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&"$fd"
  timeout 5 cat <&"$fd" >"$3" || true
  exec {fd}<&-
  head -n 1 "$3" | grep -q '^HTTP/1\.[01] 200 '
}

# The probes, on the container ports they name.
while read -r kind type port target; do
  [ -n "$kind" ] || continue
  hp=$(host_port "$port")
  case $type in
    grpc)
      service=${target/#-/}
      if out=$("$cli" health --target="127.0.0.1:$hp" --service="$service" 2>&1); then
        ok "$kind probe: gRPC health '${service}' on port $port: $(tail -n 1 <<<"$out")"
      else
        fail "$kind probe: gRPC health '${service}' on port $port: $out"
      fi
      ;;
    http)
      if http_get "$hp" "$target" "$work/probe.txt"; then
        ok "$kind probe: GET $target on port $port"
      else
        fail "$kind probe: GET $target on port $port:" \
          "$(head -n 1 "$work/probe.txt" 2>/dev/null)"
      fi
      ;;
    tcp)
      if (exec 3<>"/dev/tcp/127.0.0.1/$hp") 2>/dev/null; then
        ok "$kind probe: TCP port $port"
      else
        fail "$kind probe: TCP port $port refused"
      fi
      ;;
  esac
done < <(setting probe)

read -r scrape_port scrape_path < <(setting scrape)
metrics_port=$(host_port "$scrape_port")
metrics_get() { http_get "$metrics_port" "$scrape_path" "$work/metrics.txt"; }
metric() { awk -v m="$1" '$1 == m { print $2 + 0; exit }' "$work/metrics.txt"; }

# An exact call, checked against the CPU reference by the CLI.
if out=$("$cli" call --target="127.0.0.1:$grpc_port" --random --batch=2 --seqlen=128 --heads=8 \
    --kv_heads=2 --head_dim=64 --dtype=bf16 --causal --check 2>&1); then
  ok "attention_cli call --random --check (bf16, GQA 8/2, causal) from outside the container"
  while IFS= read -r line; do echo "     $line"; done <<<"$out"
else
  fail "attention_cli call --check: $out"
fi
answered_ok=0
if metrics_get; then
  answered_ok=$(awk '/^attention_requests_total\{/ && /code="OK"/ && /method="Attention"/ {
                       n += $2 }
                     END { print n + 0 }' "$work/metrics.txt")
fi
if [ "$answered_ok" -ge 1 ] && grep -q '^attention_build_info{' "$work/metrics.txt"; then
  ok "GET $scrape_path on port $scrape_port: attention_build_info, the call counted OK"
else
  fail "GET $scrape_path on port $scrape_port: $(head -c 300 "$work/metrics.txt" 2>/dev/null)"
fi

# The process: the image's entrypoint as PID 1 of the container, with the Deployment's ids.
pid=$(podman inspect -f '{{.State.Pid}}' "$name")
ids=$(awk '$1 == "Uid:" || $1 == "Gid:" { print $1, $2, $3, $4, $5 }' "/proc/$pid/status")
nspid=$(awk '$1 == "NSpid:" { print $NF }' "/proc/$pid/status")
exe=$(basename "$(readlink "/proc/$pid/exe")")
if [ "$ids" = "Uid: $user $user $user $user"$'\n'"Gid: $group $group $group $group" ] &&
   [ "$nspid" = 1 ] && [ "$exe" = attention_server ]; then
  ok "attention_server runs as PID 1 with uid $user, gid $group (non-root, as securityContext)"
else
  fail "process $exe (PID $nspid in the container): $(tr '\n' ' ' <<<"$ids"), want $user:$group"
fi
if [ "$(setting read_only)" = true ]; then
  if podman exec --user 0 "$name" /bin/sh -c ': >/etc/write-probe' 2>"$work/ro.err"; then
    fail "root could write /etc in the container (root filesystem not read-only)"
  elif grep -qi 'read-only' "$work/ro.err"; then
    ok "root filesystem read-only: $(tail -n 1 "$work/ro.err")"
  else
    fail "writing /etc failed, but not as read-only: $(tail -n 1 "$work/ro.err")"
  fi
  while read -r path _; do
    [ -n "$path" ] || continue
    if podman exec "$name" /bin/sh -c ": >$path/write-probe"; then
      ok "$path (the Deployment's emptyDir) is writable by uid $user"
    else
      fail "$path is not writable by uid $user"
    fi
  done < <(setting tmpfs)
fi
while read -r hook words; do
  [ -n "$hook" ] || continue
  read -ra hook_command <<<"$words"
  if timeout 60 podman exec "$name" "${hook_command[@]}"; then
    ok "$hook command runs in the container: $words"
  else
    fail "$hook command fails in the container: $words"
  fi
done < <(setting exec)

# SIGTERM with calls in flight: each is answered (and checked), the server exits 0. The calls are
# large enough (8 heads x 8192 x 8192, fp32: 2-4 s each on 2 cores, the four well within the 30 s
# drain) to be in flight together once all four have been sent, even when the clients start
# slowly: at 4096 tokens (about 0.5-1 s each) a loaded CI host once answered the first before the
# fourth arrived (2026-12-06: "never in flight together (at most 3)").
calls=4
call_pids=()
for i in $(seq 1 "$calls"); do
  "$cli" call --target="127.0.0.1:$grpc_port" --random --seed="$i" --batch=1 --seqlen=8192 \
    --heads=8 --head_dim=64 --dtype=fp32 --check --timeout_ms=120000 >"$work/drain-$i.log" 2>&1 &
  call_pids+=($!)
done
in_flight=0
most=0
for _ in $(seq 1 3000); do
  metrics_get 2>/dev/null && in_flight=$(metric attention_in_flight_requests)
  in_flight=${in_flight:-0}
  [ "$in_flight" -le "$most" ] || most=$in_flight
  [ "$in_flight" -ge "$calls" ] && break
  sleep 0.02
done
if [ "$in_flight" -ge "$calls" ]; then
  ok "$in_flight calls in flight (attention_in_flight_requests), then SIGTERM"
else
  fail "the $calls calls were never in flight together (at most $most)"
fi
podman kill --signal TERM "$name" >/dev/null
exit_code=$(timeout 120 podman wait "$name" || echo "no exit")
answered=0
for i in "${!call_pids[@]}"; do
  if wait "${call_pids[$i]}"; then
    answered=$((answered + 1))
  else
    note "call $((i + 1)): $(tail -n 2 "$work/drain-$((i + 1)).log")"
  fi
done
if [ "$answered" -eq "$calls" ]; then
  ok "all $calls calls in flight at SIGTERM answered and checked"
else
  fail "$answered of $calls calls in flight at SIGTERM answered"
fi
logs=$(podman logs "$name" 2>&1)
if [ "$exit_code" = 0 ] && grep -q 'event=draining.*signal=SIGTERM' <<<"$logs" &&
   grep -q 'event=stopped.*exit_code=0' <<<"$logs"; then
  ok "SIGTERM: drained and exited 0 ($(grep -o 'event=stopped.*' <<<"$logs"))"
else
  lines=$(grep -E 'event=(draining|stopped)' <<<"$logs" || tail -n 5 <<<"$logs")
  fail "SIGTERM: exit $exit_code; $lines"
fi
finish
