#!/usr/bin/env bash
# Quickstart: a local example repository reconciled into three directory targets. Watch a canary
# rollout pass its steps with a "migration" hook before it and a smoke test after it, a broken
# release fail its health check and get reverted, the same releases rolled out blue/green
# beside it (the broken one caught on the preview, before any traffic reaches it), a broken
# manifest get rejected, and the journal tell the story.
# Everything happens under target/quickstart/ (override with GITOPSD_QUICKSTART_DIR).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
work=${GITOPSD_QUICKSTART_DIR:-$top/target/quickstart}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
commit() {
  git -C "$work/repo" add -A
  git -C "$work/repo" -c user.name=Quickstart -c user.email=quickstart@example.com \
    commit -q -m "$1"
  echo "committed $(git -C "$work/repo" rev-parse --short=12 HEAD): $1"
}

step "Building gitopsd"
cargo build --quiet --manifest-path "$top/Cargo.toml"
gitopsd() { "$top/target/debug/gitopsd" --config "$work/gitopsd.toml" "$@"; }

rm -rf "$work"
mkdir -p "$work"
cp -r "$here/quickstart/repo" "$work/repo"
cp "$here/quickstart/check-web.sh" "$here/quickstart/check-bluegreen.sh" \
  "$here/quickstart/migrate.sh" "$here/quickstart/smoke-test.sh" "$work/"
sed "s|@QUICKSTART@|$work|g" "$here/quickstart/gitopsd.toml" > "$work/gitopsd.toml"
git -C "$work/repo" init -q -b main
commit "staging and production: web shop 1.0.0"
cd "$work"
observed() {
  log=${1:-observed.log}
  printf 'what the health check saw, step by step:\n'; uniq "$log" | sed 's/^/    /'; : > "$log"
}
hooks() { printf 'what the hooks did:\n'; sed 's/^/    /' hooks.log 2>/dev/null; : > hooks.log; }

step "First pass: the three environments are created from git (a first deploy has no canary)"
gitopsd run --once
find live -type f | sort
: > observed.log; : > observed-bluegreen.log
hooks

step "Commit web 1.1.0 to staging (canary) and bluegreen; gitopsd diff previews both (exit 1 = changes)"
sed -i 's/web:1.0.0/web:1.1.0/' repo/environments/staging/web.yaml repo/environments/bluegreen/web.yaml
commit "staging and bluegreen: web 1.1.0"
gitopsd diff --env staging || true
gitopsd diff --env bluegreen | grep rollout: || true

step "Rollouts: staging's migration, canary 10% → 50% → promoted, smoke test; bluegreen's preview → switch → scale-down"
gitopsd run --once
echo "staging (canary):"; observed
hooks
grep -h image: live/staging/shop/Deployment.apps/web.yaml
echo "bluegreen (the Service web stays on 1.0.0 until the switch, one write):"
observed observed-bluegreen.log
gitopsd history --env bluegreen | grep -E 'preview_started|switched|scaled_down' || true
ls live/bluegreen/shop/Deployment.apps/ live/bluegreen/shop/Service/

step "Commit web 1.2.0, which is broken: staging's check fails at 50% and gitopsd reverts; bluegreen's fails on the preview, before any traffic reaches it"
sed -i 's/web:1.1.0/web:1.2.0/' repo/environments/staging/web.yaml repo/environments/bluegreen/web.yaml
commit "staging and bluegreen: web 1.2.0"
if gitopsd run --once; then echo "unexpected: the broken release was accepted"; exit 1; fi
echo "staging (canary):"; observed
hooks
echo "live staging is back at:"; grep -h image: live/staging/shop/Deployment.apps/web.yaml
ls live/staging/shop/Deployment.apps/
echo "bluegreen (nothing served changed; the preview is gone):"
observed observed-bluegreen.log
echo "live bluegreen still serves:"; grep -h image: live/bluegreen/shop/Deployment.apps/web.yaml
ls live/bluegreen/shop/Deployment.apps/ live/bluegreen/shop/Service/

step "The failed commit is held: the next pass does not retry it"
gitopsd run --once
gitopsd status --env staging
gitopsd status --env bluegreen

step "A broken manifest (a document without kind) is rejected before anything is applied"
printf 'apiVersion: v1\nmetadata:\n  name: oops\n' > repo/environments/staging/oops.yaml
commit "staging: broken manifest"
if gitopsd run --once; then echo "unexpected: the broken manifest was accepted"; exit 1; fi

step "The journal (gitopsd history --env staging)"
gitopsd history --env staging

printf '\nEverything is under %s: live/ (the directory targets), state/ (git mirror, journals).\n' "$work"
