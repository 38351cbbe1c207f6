#!/usr/bin/env bash
# Installs the client component of BUILD_DIR into a temporary prefix, builds client/examples as a
# separate project with find_package(AttentionClient CONFIG) against it, and runs both examples
# against the server at $ATTN_TARGET (see run_with_server.sh).
#   install_test.sh BUILD_DIR SOURCE_DIR
set -eu
build=$1
source=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build" --prefix "$work/prefix" --component client >"$work/install.log"
for f in include/attention/client/client.h include/attention/client/stream_session.h \
  include/attention/v1/attention.pb.h include/attention/v1/attention.grpc.pb.h \
  include/attention/v1/attention.proto bin/attention_cli; do
  [ -e "$work/prefix/$f" ] || { echo "FAIL: $f was not installed"; cat "$work/install.log"; exit 1; }
done
config=$(find "$work/prefix" -name AttentionClientConfig.cmake)
[ -n "$config" ] || { echo "FAIL: AttentionClientConfig.cmake was not installed"; exit 1; }

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$source/client/examples" -B "$work/examples" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" "${launcher[@]}" >"$work/configure.log" 2>&1 ||
  { echo "FAIL: configuring the examples against the installed package:"; cat "$work/configure.log"; exit 1; }
cmake --build "$work/examples" -j2 >"$work/build.log" 2>&1 ||
  { echo "FAIL: building the examples:"; cat "$work/build.log"; exit 1; }
# The examples must include the installed headers, not the source tree's.
if grep -rq -- "-I$source" "$work/examples/build.ninja"; then
  echo "FAIL: the examples' build uses headers from the source tree"
  exit 1
fi

"$work/examples/attention_unary_example" "$ATTN_TARGET"
"$work/examples/attention_stream_example" "$ATTN_TARGET"
"$work/prefix/bin/attention_cli" health --target="$ATTN_TARGET"
echo "installed package OK"
