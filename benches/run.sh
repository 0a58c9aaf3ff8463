#!/usr/bin/env bash
# Runs the benchmarks (release build). Needs git and /usr/bin/time (Debian's `time`).
#
# kube_real needs a real API server: the cluster GITOPSD_E2E_KUBECONFIG names, or else a
# k8s-lab of its own from ../shared/k8s-lab (own LAB_DIR and ports, purged at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench diff_revisions
cargo bench --bench kube_noop

lab=../shared/k8s-lab
if [ -z "${GITOPSD_E2E_KUBECONFIG:-}" ] && [ -x "$lab/up.sh" ]; then
  export LAB_DIR=${TMPDIR:-/tmp}/gitopsd-bench-lab-$$
  export LAB_API_PORT=${LAB_API_PORT:-17443} LAB_ETCD_PORT=${LAB_ETCD_PORT:-13379}
  export LAB_ETCD_PEER_PORT=${LAB_ETCD_PEER_PORT:-13380} LAB_KCM_PORT=${LAB_KCM_PORT:-21257}
  trap '"$lab/down.sh" --purge >/dev/null 2>&1 || true' EXIT
  "$lab/up.sh" >/dev/null
  export GITOPSD_E2E_KUBECONFIG=$LAB_DIR/kubeconfig
  export GITOPSD_TEST_KUBECTL=${GITOPSD_TEST_KUBECTL:-$LAB_DIR/bin/kubectl}
fi
cargo bench --bench kube_real
