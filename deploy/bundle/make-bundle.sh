#!/usr/bin/env bash
# Makes a relocatable tarball of the attention server and CLI for bare GPU hosts: the two
# executables in bin/, every shared library they load beyond the C/C++ runtime and the GPU
# driver in lib/, RUNPATH $ORIGIN/../lib on the executables and $ORIGIN on the libraries, so it
# runs from wherever it is unpacked with no LD_LIBRARY_PATH and none of the project's packages.
#
#   deploy/bundle/make-bundle.sh [--server PATH] [--cli PATH] BUILD_DIR OUT.tar.gz
#
# The executables default to BUILD_DIR/server/attention_server and
# BUILD_DIR/client/cli/attention_cli (else the only file of that name under BUILD_DIR). The
# tarball holds one folder named after OUT (OUT.tar.gz -> OUT/). With SOURCE_DATE_EPOCH set,
# file times are clamped to it and the tarball is reproducible.
#
# Left to the host: glibc, libstdc++ and libgcc_s at least as new as the build machine's (the
# README in the bundle names the versions), and the NVIDIA driver (libcuda) for the CUDA backend.
# Needs patchelf, ldd and objdump (Debian/Ubuntu: patchelf, libc-bin, binutils).
set -euo pipefail

usage() {
  echo "usage: $0 [--server PATH] [--cli PATH] BUILD_DIR OUT.tar.gz" >&2
  exit 2
}
die() {
  echo "make-bundle: $*" >&2
  exit 1
}

server=
cli=
positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --server) server=${2:?--server needs a path}; shift 2 ;;
    --server=*) server=${1#*=}; shift ;;
    --cli) cli=${2:?--cli needs a path}; shift 2 ;;
    --cli=*) cli=${1#*=}; shift ;;
    -h|--help) usage ;;
    -*) echo "make-bundle: unknown option $1" >&2; usage ;;
    *) positional+=("$1"); shift ;;
  esac
done
[ ${#positional[@]} -eq 2 ] || usage
build_dir=${positional[0]}
out=${positional[1]}
[ -d "$build_dir" ] || die "BUILD_DIR '$build_dir' is not a directory"

for tool in patchelf ldd objdump tar gzip; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is missing (apt-get install patchelf binutils)"
done

# find_exe NAME DEFAULT_PATH: the default path if it is there, else the only executable file of
# that name under BUILD_DIR.
find_exe() {
  local name=$1 default=$2 found
  if [ -x "$default" ] && [ -f "$default" ]; then
    echo "$default"
    return
  fi
  mapfile -t found < <(find "$build_dir" -type f -name "$name" -perm -u+x 2>/dev/null)
  [ ${#found[@]} -eq 1 ] ||
    die "expected one '$name' under $build_dir, found ${#found[@]}: build it, or pass its path"
  echo "${found[0]}"
}
[ -n "$server" ] || server=$(find_exe attention_server "$build_dir/server/attention_server")
[ -n "$cli" ] || cli=$(find_exe attention_cli "$build_dir/client/cli/attention_cli")
for exe in "$server" "$cli"; do
  if [ ! -f "$exe" ] || [ ! -x "$exe" ]; then die "'$exe' is not an executable file"; fi
done

case "$out" in
  *.tar.gz) name=$(basename "$out" .tar.gz) ;;
  *.tgz) name=$(basename "$out" .tgz) ;;
  *) die "OUT must end in .tar.gz or .tgz: $out" ;;
esac
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

# What every Linux host (or the NVIDIA driver) provides: glibc's libraries and loader, the C++
# runtime, and the driver's libraries, which must match the host's kernel module.
system_re='^(linux-vdso|linux-gate|ld-linux|libc\.so|libm\.so|libmvec\.so|libdl\.so|librt\.so|libpthread\.so|libresolv\.so|libutil\.so|libanl\.so|libnsl\.so|libBrokenLocale\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libnvidia-)'

stage=$(cd "$(mktemp -d)" && pwd -P)
trap 'rm -rf "$stage"' EXIT
root=$stage/$name
mkdir -p "$root/bin" "$root/lib" "$root/share/licenses"

# needed_libs FILE: "soname path" for each non-system library FILE loads, directly or not.
needed_libs() {
  local listing
  listing=$(env -u LD_LIBRARY_PATH ldd "$1") || die "ldd failed on $1"
  # The driver's libraries may be absent where it builds (a CUDA devel image has only stubs).
  local missing
  missing=$(awk '/=> not found/ {print $1}' <<<"$listing" | grep -Ev "$system_re" || true)
  [ -z "$missing" ] || die "$1 needs libraries that are not found: ${missing//$'\n'/ }"
  awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' <<<"$listing" | while read -r soname path; do
    [[ $soname =~ $system_re ]] || echo "$soname $path"
  done
}

declare -A libs=()
for exe in "$server" "$cli"; do
  install -m 0755 "$exe" "$root/bin/$(basename "$exe")"
  while read -r soname path; do
    [ -n "$soname" ] && libs[$soname]=$path
  done < <(needed_libs "$exe")
done
for soname in "${!libs[@]}"; do
  install -m 0644 "$(readlink -f "${libs[$soname]}")" "$root/lib/$soname"
done

# shellcheck disable=SC2016  # $ORIGIN is for the dynamic loader, not the shell
for f in "$root"/bin/*; do patchelf --set-rpath '$ORIGIN/../lib' "$f"; done
# shellcheck disable=SC2016
for f in "$root"/lib/*; do patchelf --set-rpath '$ORIGIN' "$f"; done

# Every non-system library must now resolve inside the bundle, from its RUNPATH alone.
for f in "$root"/bin/* "$root"/lib/*; do
  while read -r soname path; do
    [ -n "$soname" ] || continue
    case "$(readlink -f "$path")" in
      "$root/lib/"*) ;;
      *) die "$(basename "$f") resolves $soname to $path, outside the bundle" ;;
    esac
  done < <(needed_libs "$f")
done

# Licences of the redistributed libraries, from the distribution packages they came from.
manifest=$root/share/MANIFEST
{
  echo "# library  package  version  (from the build machine's package database)"
  for soname in $(printf '%s\n' "${!libs[@]}" | sort); do
    path=${libs[$soname]}
    pkg=
    if command -v dpkg-query >/dev/null 2>&1; then
      for candidate in "$path" "$(readlink -f "$path")" "/usr${path#/usr}" "${path#/usr}"; do
        pkg=$(dpkg-query -S "$candidate" 2>/dev/null | head -n 1 | cut -d: -f1) && [ -n "$pkg" ] &&
          break
      done
    fi
    if [ -n "$pkg" ]; then
      version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || echo unknown)
      echo "$soname  $pkg  $version"
      if [ -f "/usr/share/doc/$pkg/copyright" ]; then
        mkdir -p "$root/share/licenses/$pkg"
        install -m 0644 "/usr/share/doc/$pkg/copyright" "$root/share/licenses/$pkg/copyright"
      fi
    else
      echo "$soname  unknown  unknown"
    fi
  done
} >"$manifest"

# The newest symbol versions the bundle needs from the host's C and C++ runtimes.
newest_version() {  # newest_version PREFIX
  objdump -T "$root"/bin/* "$root"/lib/* 2>/dev/null | grep -o "\b$1_[0-9][0-9.]*" |
    sed "s/^$1_//" | sort -V | tail -n 1
}
glibc=$(newest_version GLIBC)
glibcxx=$(newest_version GLIBCXX)

cat >"$root/start-server.sh" <<'START'
#!/usr/bin/env bash
# Starts the attention server from this bundle. Flags come from etc/server.flags next to this
# script when it exists (one flag per line, '#' comments), then from the command line, which
# wins. ATTN_FLAGS_FILE names another flags file.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
flags_file=${ATTN_FLAGS_FILE:-$here/etc/server.flags}
file_flags=()
if [ -f "$flags_file" ]; then
  mapfile -t file_flags < <(grep -Ev '^[[:space:]]*(#|$)' "$flags_file" | sed 's/^[[:space:]]*//;s/[[:space:]]*$//')
fi
exec "$here/bin/attention_server" "${file_flags[@]}" "$@"
START
chmod 0755 "$root/start-server.sh"

mkdir -p "$root/etc"
cat >"$root/etc/server.flags.example" <<'FLAGS'
# Copy to server.flags and edit; start-server.sh passes each line to the server.
--address=0.0.0.0:50051
--metrics_address=0.0.0.0:9464
--backend=auto
--drain_timeout_s=30
--log_level=info
FLAGS

cat >"$root/README.txt" <<README
$name
$(printf '%*s' ${#name} '' | tr ' ' '=')

Attention compute as a gRPC service: the server (bin/attention_server) and the command-line
client (bin/attention_cli), with the shared libraries they need in lib/. It runs from any
folder it is unpacked into; no LD_LIBRARY_PATH, no packages to install.

Host requirements
  - Linux $(uname -m), glibc >= ${glibc:-any} and libstdc++ (GCC) with GLIBCXX_${glibcxx:-any}.
  - For the CUDA backend: an NVIDIA driver that supports CUDA 13 (>= 580). Without a GPU the
    same server runs its CPU backend (--backend=cpu, or auto).

Run
  ./start-server.sh                       # gRPC on 0.0.0.0:50051, metrics on :9464/metrics
  ./start-server.sh --backend=cpu --address=127.0.0.1:50051
  cp etc/server.flags.example etc/server.flags   # flags kept in a file, one per line
  bin/attention_cli health --target=127.0.0.1:50051
  bin/attention_cli call --target=127.0.0.1:50051 --random --batch 1 --seqlen 128 \\
      --heads 8 --head_dim 64 --dtype fp16 --check

  The server drains on SIGTERM (stops taking requests, answers those it has, up to
  --drain_timeout_s), so give a service manager at least that long before it kills it,
  e.g. for systemd: KillSignal=SIGTERM, TimeoutStopSec=45.

Contents
  bin/       attention_server, attention_cli (RUNPATH \$ORIGIN/../lib)
  lib/       bundled shared libraries (RUNPATH \$ORIGIN)
  etc/       server.flags.example
  share/     MANIFEST (each library's package and version), licenses/<package>/copyright

Operations (flags, metrics, scaling, draining, TLS): docs/operations.md in the source tree.
README

mtime_args=()
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
  mtime_args=(--mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime)
fi
tar --sort=name --owner=0 --group=0 --numeric-owner "${mtime_args[@]}" -C "$stage" -cf - "$name" |
  gzip -9n >"$out.tmp"
mv -f "$out.tmp" "$out"
echo "make-bundle: $out ($(du -h "$out" | cut -f1), ${#libs[@]} libraries," \
  "glibc >= ${glibc:-any}, GLIBCXX_${glibcxx:-any})"
