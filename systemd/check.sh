#!/usr/bin/env bash
# Checks the unit: `systemd-analyze verify` passes and the offline security exposure is at most
# 2.0. Verify wants ExecStart to exist, so it runs on a copy that points at the built binary.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-$PWD/target/debug/gitopsd}
[ -x "$binary" ] || cargo build --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s#/usr/bin/gitopsd#$binary#" systemd/gitopsd.service > "$work/gitopsd.service"
systemd-analyze verify "$work/gitopsd.service"
report=$(systemd-analyze security --offline=yes "$work/gitopsd.service" 2>&1)
exposure=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for gitopsd.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: exposure $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' || {
  printf '%s\n' "$report"
  echo "exposure $exposure is above 2.0" >&2
  exit 1
}
