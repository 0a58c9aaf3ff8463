#!/usr/bin/env bash
# Runs the whole test suite, first installing what it needs from Debian's packages when it is
# missing: git (repositories, `git daemon`), prometheus (the prometheus health check test) and
# openssh-server (fetching over ssh from an sshd on 127.0.0.1), openssl (a test certificate for
# fetching over https).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v git >/dev/null || need+=(git)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: please install ${need[*]} (apt-get install ${need[*]}), or run as root" >&2
    exit 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo test "$@"
