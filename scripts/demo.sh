#!/usr/bin/env bash
# make demo / make dev-up / make dev-down.
#
#   demo  start a local control plane (etcd + kube-apiserver), the webhook and
#         its registration; create three nodes and the overlay Calico objects;
#         turn the guard on; show a held switch, the routes arriving one by one,
#         and the switch going through by itself; then calico-node restarting
#         on a node without overwriting its route condition; then clean up.
#   up    the same environment, left running; prints `export KUBECONFIG=...`.
#   down  stops what `up` started.
#
# Everything lives in .dev/ (git-ignored); only loopback addresses are used.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dev="$root/.dev"
bin="$root/target/debug/overlay-switch-webhook"
fixtures="$root/tests/fixtures/gardener-calico"
GUARD=calico.networking.extensions.gardener.cloud/seamless-overlay-switch
CALICO_NODE=system:serviceaccount:kube-system:calico-node

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '\033[36m$ %s\033[0m\n' "$*"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what" >&2; return 1
}

kc() { "$cp/kubectl" --kubeconfig "$dev/kubeconfig" "$@"; }

up() {
  if [[ -f "$dev/pids" ]]; then echo "already up (make dev-down first)"; exit 1; fi
  cp="$("$root/tests/controlplane/build.sh")"
  mkdir -p "$dev/pki"
  echo "$cp" > "$dev/bindir"
  local etcd_port peer_port api_port hook_port metrics_port token
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  hook_port=$(free_port); metrics_port=$(free_port)
  token="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  echo "$token,admin,admin,system:masters" > "$dev/tokens.csv"
  openssl genrsa -out "$dev/pki/sa.key" 2048 2>/dev/null

  "$cp/etcd" --name dev --data-dir "$dev/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "dev=http://127.0.0.1:$peer_port" --unsafe-no-fsync >"$dev/etcd.log" 2>&1 &
  echo $! >> "$dev/pids"
  "$cp/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$dev/pki" --token-auth-file "$dev/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$dev/pki/sa.key" --service-account-signing-key-file "$dev/pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true >"$dev/kube-apiserver.log" 2>&1 &
  echo $! >> "$dev/pids"

  # kube-apiserver writes a self-signed serving cert for 127.0.0.1: trust exactly it.
  wait_for "kube-apiserver serving cert" 60 test -s "$dev/pki/apiserver.crt"
  cat > "$dev/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: dev
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $dev/pki/apiserver.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: dev
  context: {cluster: dev, user: admin}
current-context: dev
KC
  wait_for "kube-apiserver" 60 kc get --raw /readyz
  wait_for "namespace kube-system" 30 kc get namespace kube-system

  "$bin" certs --out-dir "$dev/certs" >/dev/null 2>&1
  "$bin" --log-format text serve --kubeconfig "$dev/kubeconfig" \
    --tls-cert-file "$dev/certs/tls.crt" --tls-key-file "$dev/certs/tls.key" \
    --listen-addr "127.0.0.1:$hook_port" --metrics-addr "127.0.0.1:$metrics_port" \
    --settle-time "${SETTLE_TIME:-3s}" --shutdown-delay 0s >"$dev/webhook.log" 2>&1 &
  echo $! >> "$dev/pids"
  echo "$metrics_port" > "$dev/metrics_port"
  wait_for "webhook /readyz" 30 curl -sf "http://127.0.0.1:$metrics_port/readyz"
  "$bin" webhook-config --mode url --ca-file "$dev/certs/ca.crt" \
    --url "https://127.0.0.1:$hook_port/mutate" | kc apply -f - >/dev/null
}

down() {
  [[ -f "$dev/pids" ]] || { echo "nothing running"; return 0; }
  # webhook first, then kube-apiserver, then etcd
  tac "$dev/pids" | while read -r pid; do
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$dev"
}

show_ds() {
  kc -n kube-system get daemonset calico-node -o jsonpath='{range .spec.template.spec.containers[?(@.name=="calico-node")].env[?(@.name=="CALICO_IPV4POOL_IPIP")]}CALICO_IPV4POOL_IPIP={.value}{end}{"\n"}'
}

node() { # name status reason
  kc create -f - >/dev/null <<N
apiVersion: v1
kind: Node
metadata: {name: $1}
N
  [[ -n "${2:-}" ]] && cond "$@"
  return 0
}

cond() { # name status reason
  local now; now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  kc patch node "$1" --subresource=status --type=merge -p \
    "{\"status\":{\"conditions\":[{\"type\":\"NetworkUnavailable\",\"status\":\"$2\",\"reason\":\"$3\",\"message\":\"demo\",\"lastTransitionTime\":\"$now\",\"lastHeartbeatTime\":\"$now\"}]}}" >/dev/null
}

demo() {
  trap down EXIT
  bold "Starting a local control plane (etcd, kube-apiserver), the webhook, and its registration"
  up
  cp="$(cat "$dev/bindir")"
  kc apply -f "$fixtures/crd-ippools.yaml" >/dev/null
  kc wait --for condition=established crd/ippools.crd.projectcalico.org >/dev/null
  bold "A cluster running Calico with IPIP: three nodes, one route created so far"
  node node-a False RouteCreated
  node node-b
  node node-c True NoRouteCreated
  for f in configmap-calico-config daemonset-calico-node ippool-default-ipv4; do
    kc apply -f "$fixtures/overlay-ipip/$f.yaml" >/dev/null
  done
  say "kubectl get nodes -o custom-columns=NODE:.metadata.name,REASON:'.status.conditions[?(@.type==\"NetworkUnavailable\")].reason'"
  kc get nodes -o custom-columns='NODE:.metadata.name,REASON:.status.conditions[?(@.type=="NetworkUnavailable")].reason'
  bold "Turn the guard on for this cluster"
  say "kubectl annotate namespace kube-system $GUARD=true"
  kc annotate namespace kube-system "$GUARD=true" >/dev/null
  sleep 1

  bold "Switch to native routing (server-side dry run): held, with a warning"
  say "kubectl apply --dry-run=server -f native/daemonset-calico-node.yaml -o yaml | grep CALICO_IPV4POOL_IPIP -A1"
  kc apply --dry-run=server -f "$fixtures/native/daemonset-calico-node.yaml" -o yaml | grep -A1 'name: CALICO_IPV4POOL_IPIP' || true

  bold "Now for real: the native configuration is held, and recorded"
  for f in configmap-calico-config ippool-default-ipv4 daemonset-calico-node; do
    say "kubectl apply -f native/$f.yaml"
    kc apply -f "$fixtures/native/$f.yaml" 2>&1 | grep -v last-applied-configuration || true
  done
  say "calico-node now:"; show_ds
  say "overlay-switch-webhook status"
  KUBECONFIG="$dev/kubeconfig" "$bin" status --settle-time "${SETTLE_TIME:-3s}" || true

  bold "The route controller creates the missing routes, one by one"
  say "node-b: NetworkUnavailable=False RouteCreated"; cond node-b False RouteCreated; sleep 1; show_ds
  say "node-c: NetworkUnavailable=False RouteCreated"; cond node-c False RouteCreated
  local start=$SECONDS
  bold "Every node has its route: after the settle time (${SETTLE_TIME:-3s}) the held switch goes through by itself"
  for _ in $(seq 300); do
    [[ "$(show_ds)" == "CALICO_IPV4POOL_IPIP=Never" ]] && break
    sleep 0.1
  done
  show_ds
  echo "released $((SECONDS - start))s after the last route appeared"
  say "kubectl get configmap calico-config -o jsonpath={.data.calico_backend}"
  kc -n kube-system get configmap calico-config -o jsonpath='{.data.calico_backend}{"\n"}'
  say "kubectl get ippool default-ipv4-ippool -o jsonpath={.spec.ipipMode}"
  kc get ippool default-ipv4-ippool -o jsonpath='{.spec.ipipMode}{"\n"}'
  say "kubectl describe daemonset calico-node | tail -n 4"
  kc -n kube-system describe daemonset calico-node | tail -n 4
  say "overlay-switch-webhook status"
  KUBECONFIG="$dev/kubeconfig" "$bin" status --settle-time "${SETTLE_TIME:-3s}" && echo "(exit 0: nothing held)"

  bold "The same apply now goes straight through"
  kc apply --dry-run=server -f "$fixtures/native/daemonset-calico-node.yaml"

  bold "calico-node restarts with the new template: its NetworkUnavailable writes leave the route condition alone"
  # calico-node's own ClusterRole lets it patch nodes/status (kubectl also gets it first).
  kc apply -f - >/dev/null <<RBAC
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: demo-calico-node-status}
rules:
- {apiGroups: [""], resources: [nodes/status], verbs: [get, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: demo-calico-node-status}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: demo-calico-node-status}
subjects:
- {kind: ServiceAccount, name: calico-node, namespace: kube-system}
RBAC
  local now; now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for w in "True CalicoIsDown Calico is shutting down on this node" "False CalicoIsUp Calico is running on this node"; do
    read -r status reason message <<<"$w"
    say "kubectl patch node node-a --subresource=status --as=$CALICO_NODE  # NetworkUnavailable=$status ($reason), as calico-node writes it"
    kc patch node node-a --subresource=status --type=strategic --as="$CALICO_NODE" -p \
      "{\"status\":{\"conditions\":[{\"type\":\"NetworkUnavailable\",\"status\":\"$status\",\"reason\":\"$reason\",\"message\":\"$message\",\"lastTransitionTime\":\"$now\",\"lastHeartbeatTime\":\"$now\"}]}}" 2>&1
  done
  kc get nodes -o custom-columns='NODE:.metadata.name,STATUS:.status.conditions[?(@.type=="NetworkUnavailable")].status,REASON:.status.conditions[?(@.type=="NetworkUnavailable")].reason'
  say "overlay-switch-webhook status --metrics-url http://127.0.0.1:$(cat "$dev/metrics_port")/metrics | grep 'calico writes'"
  KUBECONFIG="$dev/kubeconfig" "$bin" status --settle-time "${SETTLE_TIME:-3s}" \
    --metrics-url "http://127.0.0.1:$(cat "$dev/metrics_port")/metrics" | grep 'calico writes' || true
  bold "Cleaning up"
}

case "${1:-}" in
  demo) demo ;;
  up) up; echo "export KUBECONFIG=$dev/kubeconfig"; echo "webhook log: $dev/webhook.log; stop with: make dev-down" ;;
  down) down ;;
  *) echo "usage: $0 demo|up|down" >&2; exit 2 ;;
esac
