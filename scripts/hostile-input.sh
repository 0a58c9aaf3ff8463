#!/usr/bin/env bash
# Runs the hostile-input property tests (tests/it/properties.rs) for MINUTES minutes (default
# 10), in rounds of CASES cases per property (default 2000), and prints the cases run, the
# longest single case and the peak resident memory of the test process. Needs GNU time
# (/usr/bin/time, Debian's `time` package) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
cases=${CASES:-2000}
[ -x /usr/bin/time ] || { echo "scripts/hostile-input.sh: install GNU time (apt-get install time)" >&2; exit 2; }
binary=$(cargo test --release --test it --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        print(m["executable"])')
[ -x "$binary" ] || { echo "scripts/hostile-input.sh: could not build the test binary" >&2; exit 2; }
end=$(( $(date +%s) + minutes * 60 ))
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rounds=0
while [ "$(date +%s)" -lt "$end" ]; do
  GITOPSD_PROPTEST_CASES=$cases GITOPSD_PROPTEST_REPORT=1 /usr/bin/time -v \
    "$binary" properties --test-threads 1 --nocapture >>"$log" 2>&1 || {
      cat "$log" >&2
      echo "scripts/hostile-input.sh: a property failed (above)" >&2
      exit 1
    }
  rounds=$((rounds + 1))
done
python3 - "$log" "$rounds" "$cases" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
units = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
cases, longest = 0, (0.0, "")
for name, n, took in re.findall(r"property (\w+): (\d+) cases, longest (\S+)", text):
    cases += int(n)
    value, unit = re.match(r"([0-9.]+)(ns|µs|us|ms|s)$", took).groups()
    seconds = float(value) * units[unit]
    if seconds > longest[0]:
        longest = (seconds, f"{took} ({name})")
peak = max(int(kb) for kb in re.findall(r"Maximum resident set size \(kbytes\): (\d+)", text))
print(f"rounds: {sys.argv[2]} (of {sys.argv[3]} cases per property)")
print(f"cases run: {cases}")
print(f"longest case: {longest[1]}")
print(f"peak RSS: {peak // 1024} MiB (the test binary)")
PY
