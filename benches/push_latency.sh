#!/usr/bin/env bash
# Push → live through a push receiver: a `gitopsd run` polling a `git daemon` repository every
# 10 minutes gets a signed GitHub push event after each of 10 pushes; prints the median time
# from the event to the change in the directory target, next to the poll interval.
# Needs git (with git-daemon). Release build; `cargo test --bench push_latency` runs it on a
# debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench push_latency
