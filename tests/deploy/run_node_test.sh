#!/usr/bin/env bash
# Runs one of the deploy tests' node scripts after making sure its npm tools are installed.
#   tests/deploy/run_node_test.sh SCRIPT.mjs [ARGS...]
# Exit 77 (SKIP) without node or npm; otherwise the script's status.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
script=${1:?usage: run_node_test.sh SCRIPT.mjs [ARGS...]}
shift
status=0
"$here/npm_setup.sh" || status=$?
[ "$status" -eq 0 ] || exit "$status"
exec node "$here/$script" "$@"
