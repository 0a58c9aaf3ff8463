#!/usr/bin/env bash
# The fleet benchmark (issue 20's table) in one go: 1,000 environments × 20 objects on one
# `gitopsd run` against a real API server, beside 8 parallel `kubectl apply --server-side`,
# then no-op passes, idle memory, drift and a crash loop during a bake. Prints every row.
#
#   benches/fleet.sh                      # the full fleet (kubectl alone: ~15 min on 2 cores)
#   benches/fleet.sh --environments 20    # a small one while developing
#   benches/fleet.sh --skip-kubectl       # without the kubectl floor
#   benches/fleet.sh --kubectl-environments 50   # the floor on 50 environments, extrapolated
#
# Needs git, xz and ../shared/k8s-lab. It starts a k8s-lab of its own (LAB_DIR and LAB_*_PORT
# from the environment, else its own; a pod range wide enough for the fleet's pods) and purges
# it at the end, or uses the cluster GITOPSD_E2E_KUBECONFIG names (and then deletes the
# namespaces it made, without waiting).
set -euo pipefail
cd "$(dirname "$0")/.."
lab=$(cd ../shared/k8s-lab && pwd)
work=$(mktemp -d)
cleanup() {
  if [ -n "${owned_lab:-}" ]; then "$lab/down.sh" --purge >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${GITOPSD_TEST_KUBECTL:-}" ]; then
  xz -dc "$lab/bin/kubectl.xz" >"$work/kubectl"
  chmod 755 "$work/kubectl"
  export GITOPSD_TEST_KUBECTL=$work/kubectl
fi

# Build first, so the lab does not idle (and the build does not compete with it).
cargo bench --bench fleet --no-run

if [ -z "${GITOPSD_E2E_KUBECONFIG:-}" ]; then
  export LAB_DIR=${LAB_DIR:-${TMPDIR:-/tmp}/gitopsd-fleet-lab-$$}
  export LAB_API_PORT=${LAB_API_PORT:-17643} LAB_ETCD_PORT=${LAB_ETCD_PORT:-13579}
  export LAB_ETCD_PEER_PORT=${LAB_ETCD_PEER_PORT:-13580} LAB_KCM_PORT=${LAB_KCM_PORT:-21457}
  # 100 Deployments of gitopsd's, 100 of kubectl's and the bake's canary: more pods than the
  # default /24 holds. 198.18.0.0/15 is the benchmarking range (RFC 2544), never routed.
  export LAB_POD_CIDR=${LAB_POD_CIDR:-198.18.0.0/22}
  owned_lab=1
  "$lab/up.sh" >/dev/null
  export GITOPSD_E2E_KUBECONFIG=$LAB_DIR/kubeconfig
  export FLEET_KEEP_CLUSTER_OBJECTS=1  # purged with the lab
fi
cargo bench --bench fleet -- "$@"
