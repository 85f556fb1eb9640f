#!/usr/bin/env bash
# make demo / make dev-up / make dev-down.
#
#   demo  start a local control plane (etcd + kube-apiserver), the webhook and
#         its registration; create three nodes and the overlay Calico objects;
#         turn the guard on; show a held switch and a refused pool deletion,
#         the routes arriving one by one,
#         and the switch going through by itself; then calico-node restarting
#         on a node without overwriting its route condition; then clean up.
#   up    the same environment, left running; prints `export KUBECONFIG=...`.
#   gardener  the Gardener mode: a "seed" and a "shoot" kube-apiserver on one
#         etcd, the server in the seed (`serve --gardener`), the shoot's guard
#         turned on by its Cluster's Shoot annotation, its registration written
#         as a ManagedResource, a held switch released by itself, the guard off.
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

start_etcd() { # sets etcd_url
  local etcd_port peer_port
  etcd_port=$(free_port); peer_port=$(free_port)
  etcd_url="http://127.0.0.1:$etcd_port"
  "$cp/etcd" --name dev --data-dir "$dev/etcd" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "dev=http://127.0.0.1:$peer_port" --unsafe-no-fsync >"$dev/etcd.log" 2>&1 &
  echo $! >> "$dev/pids"
}

start_apiserver() { # dir etcd-prefix: a kube-apiserver on the shared etcd, its kubeconfig in dir/kubeconfig
  local d=$1 prefix=$2 api_port
  api_port=$(free_port)
  mkdir -p "$d/pki"
  [[ -f "$dev/tokens.csv" ]] || echo "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'),admin,admin,system:masters" > "$dev/tokens.csv"
  [[ -f "$dev/sa.key" ]] || openssl genrsa -out "$dev/sa.key" 2048 2>/dev/null
  "$cp/kube-apiserver" --etcd-servers "$etcd_url" --etcd-prefix "$prefix" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$d/pki" --token-auth-file "$dev/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$dev/sa.key" --service-account-signing-key-file "$dev/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true >"$d/kube-apiserver.log" 2>&1 &
  echo $! >> "$dev/pids"
  # kube-apiserver writes a self-signed serving cert for 127.0.0.1: trust exactly it.
  wait_for "kube-apiserver serving cert" 60 test -s "$d/pki/apiserver.crt"
  cat > "$d/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: dev
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 "$d/pki/apiserver.crt")
users:
- name: admin
  user:
    token: $(cut -d, -f1 "$dev/tokens.csv")
contexts:
- name: dev
  context: {cluster: dev, user: admin}
current-context: dev
KC
  wait_for "kube-apiserver" 60 "$cp/kubectl" --kubeconfig "$d/kubeconfig" get --raw /readyz
  wait_for "namespace kube-system" 30 "$cp/kubectl" --kubeconfig "$d/kubeconfig" get namespace kube-system
}

up() {
  if [[ -f "$dev/pids" ]]; then echo "already up (make dev-down first)"; exit 1; fi
  cp="$("$root/tests/controlplane/build.sh")"
  mkdir -p "$dev"
  echo "$cp" > "$dev/bindir"
  local hook_port metrics_port
  hook_port=$(free_port); metrics_port=$(free_port)
  start_etcd
  start_apiserver "$dev" /registry

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

  bold "Deleting a pool that still encapsulates would switch its pods too: refused (a DELETE cannot be held)"
  say "kubectl delete ippool default-ipv4-ippool --dry-run=server"
  kc delete ippool default-ipv4-ippool --dry-run=server 2>&1 | fold -s -w 120 || true

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

# ---- Gardener mode: one server in the "seed" guards the shoots ----------------
ks() { "$cp/kubectl" --kubeconfig "$dev/kubeconfig" "$@"; }        # the seed
ka() { "$cp/kubectl" --kubeconfig "$dev/shoot-a/kubeconfig" "$@"; } # shoot A
SHOOT=shoot--demo--a
EXT=calico-overlay-switch

show_condition() {
  ks -n "$SHOOT" get extension "$EXT" -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
}

cluster_of() { # namespace annotation-value: the Gardener Cluster of a shoot
  ks apply -f - >/dev/null <<CL
apiVersion: extensions.gardener.cloud/v1alpha1
kind: Cluster
metadata: {name: $1}
spec:
  cloudProfile: {apiVersion: core.gardener.cloud/v1beta1, kind: CloudProfile, metadata: {name: demo}}
  seed: {apiVersion: core.gardener.cloud/v1beta1, kind: Seed, metadata: {name: demo}}
  shoot:
    apiVersion: core.gardener.cloud/v1beta1
    kind: Shoot
    metadata: {name: a, namespace: garden-demo, annotations: {$GUARD: "$2"}}
    spec: {hibernation: {enabled: false}}
CL
}

demo_gardener() {
  trap down EXIT
  [[ -f "$dev/pids" ]] && { echo "already up (make dev-down first)"; exit 1; }
  cp="$("$root/tests/controlplane/build.sh")"
  mkdir -p "$dev/shoot-a"; echo "$cp" > "$dev/bindir"
  bold "A seed and one shoot: two kube-apiservers on one etcd (--etcd-prefix)"
  start_etcd
  start_apiserver "$dev" /registry
  start_apiserver "$dev/shoot-a" /shoot-a
  ks apply -f "$root/tests/fixtures/gardener/10-crd-extensions.gardener.cloud_clusters.yaml" \
    -f "$root/tests/fixtures/gardener/10-crd-resources.gardener.cloud_managedresources.yaml" \
    -f "$root/tests/fixtures/gardener/10-crd-extensions.gardener.cloud_extensions.yaml" >/dev/null
  ks wait --for condition=established crd/clusters.extensions.gardener.cloud crd/managedresources.resources.gardener.cloud \
    crd/extensions.extensions.gardener.cloud >/dev/null
  say "kubectl create namespace $SHOOT; kubectl -n $SHOOT create secret generic gardener-internal --from-file=kubeconfig=<shoot A's kubeconfig>"
  ks create namespace "$SHOOT" >/dev/null
  ks -n "$SHOOT" create secret generic gardener-internal --from-file=kubeconfig="$dev/shoot-a/kubeconfig" >/dev/null

  bold "Shoot A runs Calico with IPIP: two nodes, one route created so far"
  ka apply -f "$fixtures/crd-ippools.yaml" >/dev/null
  ka wait --for condition=established crd/ippools.crd.projectcalico.org >/dev/null
  for n in node-a node-b; do ka create -f - >/dev/null <<N
apiVersion: v1
kind: Node
metadata: {name: $n}
N
  done
  kc() { ka "$@"; }; cond node-a False RouteCreated
  for f in configmap-calico-config daemonset-calico-node ippool-default-ipv4; do
    ka apply -f "$fixtures/overlay-ipip/$f.yaml" >/dev/null
  done

  bold "The extension in the seed: overlay-switch-webhook serve --gardener"
  local hook_port metrics_port; hook_port=$(free_port); metrics_port=$(free_port)
  "$bin" certs --out-dir "$dev/certs" >/dev/null 2>&1
  head -c 32 /dev/urandom > "$dev/path-token.key"
  say "overlay-switch-webhook serve --gardener --webhook-base-url https://127.0.0.1:$hook_port --ca-file ca.crt --path-token-key-file path-token.key ..."
  "$bin" --log-format text serve --gardener --kubeconfig "$dev/kubeconfig" \
    --webhook-base-url "https://127.0.0.1:$hook_port" --ca-file "$dev/certs/ca.crt" \
    --path-token-key-file "$dev/path-token.key" \
    --tls-cert-file "$dev/certs/tls.crt" --tls-key-file "$dev/certs/tls.key" \
    --listen-addr "127.0.0.1:$hook_port" --metrics-addr "127.0.0.1:$metrics_port" \
    --settle-time "${SETTLE_TIME:-3s}" --shutdown-delay 0s \
    --namespace garden-osw --extension-health-interval 1s >"$dev/webhook.log" 2>&1 &
  echo $! >> "$dev/pids"
  wait_for "webhook /readyz" 30 curl -sf "http://127.0.0.1:$metrics_port/readyz"
  ks create namespace garden-osw >/dev/null

  bold "Turn the guard on for shoot A: the Shoot's annotation (here, in its Cluster)"
  say "kubectl annotate shoot a $GUARD=true"
  cluster_of "$SHOOT" true
  say "(gardenlet makes the shoot's Extension $EXT when the Shoot lists it in spec.extensions; here by hand)"
  ks apply -f - >/dev/null <<EXTENSION
apiVersion: extensions.gardener.cloud/v1alpha1
kind: Extension
metadata:
  name: $EXT
  namespace: $SHOOT
  annotations: {gardener.cloud/operation: reconcile, gardener.cloud/timestamp: "$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
spec: {type: $EXT}
EXTENSION
  wait_for "the ManagedResource" 30 ks -n "$SHOOT" get managedresource overlay-switch-webhook
  say "kubectl get managedresources -A -l app.kubernetes.io/managed-by=overlay-switch-webhook"
  ks get managedresources -A -l app.kubernetes.io/managed-by=overlay-switch-webhook
  say "(gardener-resource-manager applies its Secret into the shoot; here we do it by hand)"
  ks -n "$SHOOT" get secret managedresource-overlay-switch-webhook -o jsonpath='{.data.mutatingwebhookconfiguration\.yaml}' \
    | base64 -d | ka label --local -f - -o yaml resources.gardener.cloud/managed-by=gardener | ka apply -f - >/dev/null
  ka get mutatingwebhookconfiguration overlay-switch-webhook -o jsonpath='{range .webhooks[*]}{.clientConfig.url}{"\n"}{end}' | sort -u
  wait_for "shoot A served" 30 bash -c "curl -sf http://127.0.0.1:$metrics_port/shoots | grep -q '\"synced\":true'"

  bold "Switch shoot A to native routing: held while node-b has no route"
  say "kubectl --kubeconfig shoot-a apply -f native/ippool-default-ipv4.yaml"
  ka apply -f "$fixtures/native/ippool-default-ipv4.yaml" 2>&1 | grep -v last-applied-configuration || true
  say "kubectl --kubeconfig shoot-a get ippool default-ipv4-ippool -o jsonpath={.spec.ipipMode}"
  ka get ippool default-ipv4-ippool -o jsonpath='{.spec.ipipMode}{"\n"}'
  say "overlay-switch-webhook status --gardener --kubeconfig seed"
  "$bin" status --gardener --kubeconfig "$dev/kubeconfig" --settle-time "${SETTLE_TIME:-3s}" || true
  say "the shoot's Extension $EXT: the condition shoot care copies into the Shoot's status"
  wait_for "the condition" 10 bash -c "'$cp/kubectl' --kubeconfig '$dev/kubeconfig' -n $SHOOT get extension $EXT -o jsonpath='{.status.conditions[0].status}' | grep -q Progressing"
  show_condition

  bold "The route controller creates node-b's route: the held switch goes through by itself"
  cond node-b False RouteCreated
  wait_for "the release" 60 bash -c "[[ \$('$cp/kubectl' --kubeconfig '$dev/shoot-a/kubeconfig' get ippool default-ipv4-ippool -o jsonpath='{.spec.ipipMode}') == Never ]]"
  ka get ippool default-ipv4-ippool -o jsonpath='{.spec.ipipMode}{"\n"}'
  "$bin" status --gardener --kubeconfig "$dev/kubeconfig" --settle-time "${SETTLE_TIME:-3s}" && echo "(exit 0: nothing held)"
  wait_for "the condition" 10 bash -c "'$cp/kubectl' --kubeconfig '$dev/kubeconfig' -n $SHOOT get extension $EXT -o jsonpath='{.status.conditions[0].status}' | grep -q True"
  show_condition

  bold "Turn the guard off for shoot A: its registration goes away"
  cluster_of "$SHOOT" false
  wait_for "the ManagedResource removed" 30 bash -c "! '$cp/kubectl' --kubeconfig '$dev/kubeconfig' -n $SHOOT get managedresource overlay-switch-webhook"
  ks get managedresources -A
  bold "Cleaning up"
}

case "${1:-}" in
  demo) demo ;;
  gardener) demo_gardener ;;
  up) up; echo "export KUBECONFIG=$dev/kubeconfig"; echo "webhook log: $dev/webhook.log; stop with: make dev-down" ;;
  down) down ;;
  *) echo "usage: $0 demo|gardener|up|down" >&2; exit 2 ;;
esac
