#!/usr/bin/env bash
# Runs the benchmarks (release build). Needs git and /usr/bin/time (Debian's `time`), and xz to
# unpack k8s-lab's kubectl for the render benchmark.
#
# kube_real needs a real API server: the cluster GITOPSD_E2E_KUBECONFIG names, or else a
# k8s-lab of its own from ../shared/k8s-lab (own LAB_DIR and ports, purged at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
lab=../shared/k8s-lab
cargo bench --bench diff_revisions
cargo bench --bench kube_noop
cargo bench --bench idle
cargo bench --bench pages
cargo bench --bench push_latency

# render needs a kubectl (for `kubectl kustomize`): GITOPSD_TEST_KUBECTL, else k8s-lab's.
if [ -z "${GITOPSD_TEST_KUBECTL:-}" ] && [ -r "$lab/bin/kubectl.xz" ]; then
  kubectl_dir=$(mktemp -d)
  trap 'rm -rf "$kubectl_dir"' EXIT
  xz -dc "$lab/bin/kubectl.xz" >"$kubectl_dir/kubectl"
  chmod 755 "$kubectl_dir/kubectl"
  export GITOPSD_TEST_KUBECTL=$kubectl_dir/kubectl
fi
cargo bench --bench render

if [ -z "${GITOPSD_E2E_KUBECONFIG:-}" ] && [ -x "$lab/up.sh" ]; then
  export LAB_DIR=${TMPDIR:-/tmp}/gitopsd-bench-lab-$$
  export LAB_API_PORT=${LAB_API_PORT:-17443} LAB_ETCD_PORT=${LAB_ETCD_PORT:-13379}
  export LAB_ETCD_PEER_PORT=${LAB_ETCD_PEER_PORT:-13380} LAB_KCM_PORT=${LAB_KCM_PORT:-21257}
  trap '"$lab/down.sh" --purge >/dev/null 2>&1 || true; rm -rf "${kubectl_dir:-}"' EXIT
  "$lab/up.sh" >/dev/null
  export GITOPSD_E2E_KUBECONFIG=$LAB_DIR/kubeconfig
  export GITOPSD_TEST_KUBECTL=${GITOPSD_TEST_KUBECTL:-$LAB_DIR/bin/kubectl}
fi
cargo bench --bench kube_real
