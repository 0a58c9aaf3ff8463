#!/bin/sh
# Quickstart health check, run by gitopsd as an `exec` check (exit 0 = healthy).
# It stands in for a real probe: it reads what the live folder serves and pretends that
# release 1.2.0 has a bug that shows once it takes half of the traffic or more.
# Usage: check-web.sh LIVE_FOLDER LOG_FILE
live="$1"; log="$2"
d="$live/shop/Deployment.apps"
get() { [ -f "$1" ] && sed -n "s/^ *$2: //p" "$1" | head -n 1; }
stable_n=$(get "$d/web.yaml" replicas); stable_image=$(get "$d/web.yaml" image)
canary_n=$(get "$d/web-canary.yaml" replicas); canary_image=$(get "$d/web-canary.yaml" image)
if [ -n "$canary_n" ]; then
  seen="stable $stable_n x ${stable_image##*/}, canary $canary_n x ${canary_image##*/}"
else
  seen="stable $stable_n x ${stable_image##*/}, no canary"
fi
echo "$seen" >> "$log"
bad=0
case "$stable_image" in *:1.2.0) bad=$((bad + stable_n)) ;; esac
case "$canary_image" in *:1.2.0) bad=$((bad + canary_n)) ;; esac
total=$((stable_n + ${canary_n:-0}))
if [ $((bad * 2)) -ge "$total" ] && [ "$bad" -gt 0 ]; then
  echo "error rate 31% on web:1.2.0 ($seen)" >&2
  exit 1
fi
exit 0
