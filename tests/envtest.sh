#!/usr/bin/env bash
# An API-server-only Kubernetes control plane, as controller-runtime's envtest starts one: etcd
# and kube-apiserver from KUBEBUILDER_ASSETS (the folder `setup-envtest` fills), nothing else.
#
#   tests/envtest.sh start DIR   start it with its state in DIR (made, must not exist yet) and
#                                print the kubeconfig's path (DIR/kubeconfig) on stdout
#   tests/envtest.sh stop DIR    stop exactly the processes named in DIR/run/*.pid (if their
#                                command line names DIR) and delete DIR
#
# DIR is laid out as k8s-lab's LAB_DIR is (kubeconfig, pki/, run/<name>.pid and .log), so a
# test that restarts the lab's API server from its pid file and command line works here too.
#
# Both listen on 127.0.0.1 only: etcd's client port and the API server's port are picked among
# the ports from 20000 to 32767 nothing uses (below Linux's default ephemeral range, so an
# outgoing connection does not take one between the pick and the bind) and picked again when
# the process cannot bind it; etcd's peer port is 0 (single member). The PKI is made here with
# openssl: a CA, the API server's serving certificate (127.0.0.1, localhost), the
# service-account key pair, and a static admin token in group system:masters; the kubeconfig
# embeds the CA. kubectl (for the /readyz wait) is $KUBECTL, else GITOPSD_TEST_KUBECTL, else
# KUBEBUILDER_ASSETS's, else PATH's.
#
# There is no controller manager and no kubelet: Deployments get no ReplicaSets or pods,
# deleted Namespaces stay Terminating, no ServiceAccount or token is made. tests/run.sh tells the
# real-cluster suite so (GITOPSD_E2E_CONTROL_PLANE=api-only) and the tests that need them skip.
set -euo pipefail

say() { echo "envtest.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
TIMEOUT=${ENVTEST_TIMEOUT:-120} # seconds a start may take

# Is anything bound to this TCP port on any address (listening or connected)? Reads /proc.
port_used() {
  awk -v p="$(printf '%04X' "$1")" 'FNR > 1 { n = split($2, a, ":"); if (a[n] == p) f = 1 }
    END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# A port from 20000 to 32767 that nothing uses.
free_port() {
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 12768))
    port_used "$port" || { echo "$port"; return 0; }
  done
  die "no free port found from 20000 to 32767"
}

alive() { # name: is the process in DIR/run/name.pid running, and ours (its command line names DIR)?
  local pid
  [ -s "$DIR/run/$1.pid" ] || return 1
  pid=$(<"$DIR/run/$1.pid")
  [[ $pid =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] &&
    [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/"
}

stop_one() { # name: SIGTERM, up to 10 s, then SIGKILL
  alive "$1" || return 0
  local pid
  pid=$(<"$DIR/run/$1.pid")
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do alive "$1" || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$1" || return 0; sleep 0.1; done
}

launch() { # name cmd...: in a session of its own; the pid file holds the command's own pid
  local name=$1
  shift
  rm -f "$DIR/run/$name.pid"
  setsid nohup sh -c 'echo $$ > "$0"; exec "$@"' "$DIR/run/$name.pid" "$@" >>"$DIR/run/$name.log" 2>&1 </dev/null &
  for _ in $(seq 50); do [ -s "$DIR/run/$name.pid" ] && return 0; sleep 0.1; done
  die "$name did not start (see $DIR/run/$name.log)"
}

# wait_up name command...: 0 once the command succeeds, 1 when the process exits first (a port
# taken after the pick: the caller picks again); dies after TIMEOUT seconds.
wait_up() {
  local name=$1 end=$((SECONDS + TIMEOUT))
  shift
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    alive "$name" || { sleep 0.5; alive "$name" || return 1; }
    ((SECONDS < end)) || { tail -n 20 "$DIR/run/$name.log" >&2; die "$name: not ready after ${TIMEOUT}s"; }
    sleep 0.25
  done
}

# start_retrying name ready-check: launches `start_<name> PORT` on a free port until the check
# passes; the check reads PORT.
start_retrying() {
  local name=$1
  for _ in 1 2 3 4 5; do
    PORT=$(free_port)
    "start_$name" "$PORT"
    wait_up "$name" "$2" && return 0
    say "$name could not start on port $PORT; picking another"
  done
  tail -n 20 "$DIR/run/$name.log" >&2
  die "$name did not start after 5 tries (see $DIR/run/$name.log)"
}

stop_all() {
  stop_one kube-apiserver
  stop_one etcd
  rm -rf "$DIR"
}

mkpki() (
  cd "$DIR/pki"
  umask 077
  ossl() { openssl "$@" 2>>openssl.log; }
  cat >apiserver.ext <<'X'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
X
  for k in ca apiserver sa; do ossl genrsa -out $k.key 2048; done
  ossl req -x509 -new -nodes -key ca.key -sha256 -days 30 -subj /CN=envtest-ca -out ca.crt
  ossl req -new -key apiserver.key -subj /CN=kube-apiserver -out apiserver.csr
  ossl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 \
    -extfile apiserver.ext -out apiserver.crt
  ossl rsa -in sa.key -pubout -out sa.pub
  openssl rand -hex 16 | tr -d '\n' >admin.token
  echo "$(<admin.token),envtest-admin,uid-admin,\"system:masters\"" >tokens.csv
  for f in ca.crt apiserver.crt sa.pub tokens.csv; do
    [ -s "$f" ] || { echo "openssl did not produce $f; see $DIR/pki/openssl.log" >&2; exit 1; }
  done
)

mkkubeconfig() ( # api-port
  umask 077
  cat >"$DIR/kubeconfig" <<X
apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority-data: $(base64 -w0 <"$DIR/pki/ca.crt")
users:
- name: envtest-admin
  user:
    token: $(<"$DIR/pki/admin.token")
contexts:
- name: envtest
  context:
    cluster: envtest
    user: envtest-admin
current-context: envtest
X
)

start_etcd() { # client-port
  launch etcd "$ASSETS/etcd" --name envtest --data-dir "$DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$1" --advertise-client-urls "http://127.0.0.1:$1" \
    --listen-peer-urls "http://127.0.0.1:0" --log-level warn
}
etcd_ready() { # kubectl as an HTTP client (no kubeconfig: --server names etcd)
  "$KUBECTL_BIN" --kubeconfig /dev/null --request-timeout=2s --server "http://127.0.0.1:$PORT" get --raw /health
}

start_kube-apiserver() { # port
  mkkubeconfig "$1"
  launch kube-apiserver "$ASSETS/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" --secure-port="$1" --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --egress-selector-config-file="$DIR/run/egress-selector.yaml" \
    --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$DIR/pki/sa.pub" --service-account-signing-key-file="$DIR/pki/sa.key" \
    --authorization-mode=RBAC --token-auth-file="$DIR/pki/tokens.csv" \
    --tls-cert-file="$DIR/pki/apiserver.crt" --tls-private-key-file="$DIR/pki/apiserver.key" \
    --profiling=false --v=1
}
apiserver_ready() {
  [ "$("$KUBECTL_BIN" --kubeconfig "$DIR/kubeconfig" --request-timeout=2s get --raw /readyz)" = ok ]
}

start() {
  [ -n "${KUBEBUILDER_ASSETS:-}" ] || die "KUBEBUILDER_ASSETS is not set"
  ASSETS=$(cd "$KUBEBUILDER_ASSETS" && pwd -P)
  for b in etcd kube-apiserver; do [ -x "$ASSETS/$b" ] || die "$ASSETS/$b is missing"; done
  KUBECTL_BIN=${KUBECTL:-${GITOPSD_TEST_KUBECTL:-}}
  if [ -z "$KUBECTL_BIN" ] && [ -x "$ASSETS/kubectl" ]; then KUBECTL_BIN=$ASSETS/kubectl; fi
  if [ -z "$KUBECTL_BIN" ]; then
    KUBECTL_BIN=$(command -v kubectl) || die "no kubectl: set KUBECTL or put one in $ASSETS"
  fi
  command -v openssl >/dev/null || die "openssl is missing"
  [ ! -e "$DIR" ] || die "$DIR exists"
  trap '[ $? = 0 ] || stop_all' EXIT # a start that fails leaves nothing behind
  mkdir -p "$DIR/pki" "$DIR/etcd-data" "$DIR/run"
  DIR=$(cd "$DIR" && pwd -P)
  chmod 700 "$DIR/pki" "$DIR/etcd-data"
  mkpki || die "PKI generation failed"
  # The API server reaches nodes and pods (logs, exec, proxies, Service-backed webhooks)
  # through its "cluster" egress: a Unix socket that never exists, so no packet leaves.
  cat >"$DIR/run/egress-selector.yaml" <<X
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: $DIR/run/no-cluster-network.sock
X
  start_retrying etcd etcd_ready
  ETCD_PORT=$PORT
  start_retrying kube-apiserver apiserver_ready
  say "up in $DIR: API server https://127.0.0.1:$PORT, etcd http://127.0.0.1:$ETCD_PORT"
  echo "$DIR/kubeconfig"
}

case "${1:-}/${2:-}" in
  start/?*) DIR=$2 start ;;
  stop/?*)
    DIR=$2
    [ -d "$DIR" ] || exit 0
    DIR=$(cd "$DIR" && pwd -P)
    stop_all
    ;;
  *) die "usage: $0 start|stop DIR" ;;
esac
