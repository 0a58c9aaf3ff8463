#!/usr/bin/env bash
# Quickstart: reconcile a local example repository into two directory targets, then watch a
# change land, a broken commit get rejected, and the journal tell the story.
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
cp "$here/quickstart/gitopsd.toml" "$work/gitopsd.toml"
git -C "$work/repo" init -q -b main
commit "staging and production: web shop v1.0.0"

step "First pass: both environments are created from git"
gitopsd run --once
(cd "$work" && find live -type f | sort)

step "A commit bumps staging's image and adds a ConfigMap; diff previews it (exit 1 = changes)"
sed -i 's/web:1.0.0/web:1.1.0/' "$work/repo/environments/staging/web.yaml"
cat > "$work/repo/environments/staging/feature-flags.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata:
  name: feature-flags
data:
  NEW_CHECKOUT: "true"
YAML
commit "staging: web 1.1.0 and feature flags"
gitopsd diff --env staging || true

step "Second pass: exactly those two objects change"
gitopsd run --once

step "A broken commit (a document without kind) is rejected; live state stays as it was"
printf 'apiVersion: v1\nmetadata:\n  name: oops\n' > "$work/repo/environments/staging/oops.yaml"
commit "staging: broken manifest"
if gitopsd run --once; then echo "unexpected: the broken commit was accepted"; exit 1; fi
grep -h image: "$work/live/staging/shop/Deployment.apps/web.yaml"

step "The journal (gitopsd history)"
gitopsd history

printf '\nLive folders: %s/live — config: %s/gitopsd.toml\n' "$work" "$work"
