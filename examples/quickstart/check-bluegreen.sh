#!/bin/sh
# Quickstart health check of the blue/green environment, run by gitopsd as an `exec` check
# (exit 0 = healthy). It reads the live folder and prints which release each Service selects:
# the active Service `web` and, while a rollout runs, the preview Service `web-preview`. A
# Service narrowed to `gitopsd.io/track: stable` selects the old pods (Deployment web),
# `canary` the preview's (Deployment web-canary). It pretends that release 1.2.0 answers
# errors, which the preview shows before any traffic reaches it.
# Usage: check-bluegreen.sh LIVE_FOLDER LOG_FILE
live="$1"; log="$2"
d="$live/shop/Deployment.apps"; s="$live/shop/Service"
image() { [ -f "$d/$1.yaml" ] && sed -n 's/^[ -]*image: .*\///p' "$d/$1.yaml" | head -n 1; }
pods() { [ -f "$d/$1.yaml" ] && sed -n 's/^ *replicas: //p' "$d/$1.yaml" | head -n 1; }
selects() {
  if [ ! -f "$s/$1.yaml" ]; then echo "(none)"; return; fi
  case "$(sed -n 's/^ *gitopsd.io\/track: //p' "$s/$1.yaml" | head -n 1)" in
    canary) echo "$(image web-canary) ($(pods web-canary) preview pods)" ;;
    stable) echo "$(image web) ($(pods web) old pods)" ;;
    *) echo "$(image web) ($(pods web) pods)" ;;
  esac
}
active=$(selects web); preview=$(selects web-preview)
echo "active Service web -> $active; preview Service web-preview -> $preview" >> "$log"
case "$preview" in
  web:1.2.0*) echo "error rate 31% on the preview, web:1.2.0" >&2; exit 1 ;;
esac
exit 0
