#!/bin/sh
# Runs promtool on the service's metrics and the deployment's Prometheus files.
#   promtool_check.sh metrics SCRAPE_BIN      lint one real scrape (names, units, _total, help)
#   promtool_check.sh config FILE...          check Prometheus configs (and the rules they load)
#   promtool_check.sh rules RULES TESTS       check a rule file, then run its unit tests
# Exit status: promtool's, or 77 (skip) when promtool is not installed.
set -eu
PROMTOOL=${PROMTOOL:-$(command -v promtool || true)}
if [ -z "$PROMTOOL" ]; then
  echo "promtool not found: skipping" >&2
  exit 77
fi
mode=$1
shift
case "$mode" in
  metrics)
    scrape=$(mktemp)
    trap 'rm -f "$scrape"' EXIT
    "$1" --out="$scrape"
    # An empty or truncated scrape would lint clean: insist on the service's families.
    for family in attention_requests_total attention_request_duration_seconds \
                  attention_stage_duration_seconds attention_build_info process_cpu_seconds_total; do
      if ! grep -q "^# TYPE $family " "$scrape"; then
        echo "scrape lacks $family" >&2
        exit 1
      fi
    done
    "$PROMTOOL" check metrics < "$scrape"
    echo "promtool check metrics: $(grep -c '^# TYPE ' "$scrape") families, no problems"
    ;;
  config)
    "$PROMTOOL" check config "$@"
    ;;
  rules)
    "$PROMTOOL" check rules "$1"
    "$PROMTOOL" test rules "$2"
    ;;
  *)
    echo "usage: $0 metrics SCRAPE_BIN | config FILE... | rules RULES TESTS" >&2
    exit 2
    ;;
esac
