#!/usr/bin/env bash
# Installs the deploy tests' npm tools (package-lock.json) into tests/deploy/node_modules when
# they are missing or older than the lock file: `npm ci` from the npm registry, which CI and
# developer machines reach. Serialised with flock, since several ctest runs may start at once.
# Exit 77 (SKIP) when node or npm is not installed; 1 when the install fails.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: '$tool' not found (Debian: apt-get install nodejs npm)"
    exit 77
  fi
done

stamp=$here/node_modules/.package-lock.json
up_to_date() { [ -f "$stamp" ] && [ "$stamp" -nt "$here/package-lock.json" ]; }
up_to_date && exit 0

exec 9>"$here/node_modules.lock"
flock 9
if ! up_to_date; then
  echo "npm ci --prefix $here (tools for the deploy tests)"
  # Scripts stay off: dockerlinter's postinstall downloads ShellCheck from outside the npm
  # registry; the tests use the distribution's shellcheck when it is installed.
  npm ci --prefix "$here" --ignore-scripts --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi
