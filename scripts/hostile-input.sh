#!/usr/bin/env bash
# Runs the hostile-input property tests (tests/it/properties.rs) for MINUTES minutes (default
# 10), in rounds of CASES cases per property (default 2000), and prints the cases run, the
# longest single case and the peak resident memory of the test process. Needs GNU time
# (/usr/bin/time, Debian's `time` package).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
cases=${CASES:-2000}
[ -x /usr/bin/time ] || { echo "scripts/hostile-input.sh: install GNU time (apt-get install time)" >&2; exit 2; }
cargo test --release --test it --no-run >/dev/null 2>&1
end=$(( $(date +%s) + minutes * 60 ))
total=0
rounds=0
longest_ns=0
longest=""
peak_kb=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
while [ "$(date +%s)" -lt "$end" ]; do
  GITOPSD_PROPTEST_CASES=$cases GITOPSD_PROPTEST_REPORT=1 /usr/bin/time -v \
    cargo test --release --test it -q properties -- --test-threads 1 --nocapture >"$log" 2>&1 || {
      cat "$log" >&2
      echo "scripts/hostile-input.sh: a property failed (above)" >&2
      exit 1
    }
  rounds=$((rounds + 1))
  while read -r name n took; do
    total=$((total + n))
    ns=$(python3 -c "import re,sys; t=sys.argv[1]; m=re.match(r'([0-9.]+)(ns|µs|us|ms|s)', t); f={'ns':1,'µs':1e3,'us':1e3,'ms':1e6,'s':1e9}[m.group(2)]; print(int(float(m.group(1))*f))" "$took")
    if [ "$ns" -gt "$longest_ns" ]; then longest_ns=$ns; longest="$took ($name)"; fi
  done < <(sed -n 's/^property \([a-z]*\): \([0-9]*\) cases, longest \(.*\)$/\1 \2 \3/p' "$log")
  kb=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$log" | sort -n | tail -1)
  [ -n "$kb" ] && [ "$kb" -gt "$peak_kb" ] && peak_kb=$kb
done
echo "rounds: $rounds (of $cases cases per property)"
echo "cases run: $total"
echo "longest case: $longest"
echo "peak RSS: $((peak_kb / 1024)) MiB (the largest process: the test binary)"
