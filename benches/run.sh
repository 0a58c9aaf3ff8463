#!/usr/bin/env bash
# Runs the benchmarks (release build). Needs git.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench diff_revisions
cargo bench --bench kube_noop
