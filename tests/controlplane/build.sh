#!/usr/bin/env bash
# Builds (once) and prints the directory holding kube-apiserver, etcd and
# kubectl for the e2e tests.
#
# - If KUBEBUILDER_ASSETS is set, its binaries are used as they are (the
#   envtest convention) and nothing is built.
# - Otherwise the binaries are built from the Go module proxy at the versions
#   pinned in go.mod, and cached outside the checkout under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/overlay-switch-webhook/controlplane/<key>,
#   where <key> is a hash of go.mod, go.sum and the Go version. A second run
#   builds nothing.
#
# Output: the directory, alone on stdout. Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  for b in kube-apiserver etcd; do
    if [[ ! -x "$KUBEBUILDER_ASSETS/$b" ]]; then
      echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable $b" >&2
      exit 1
    fi
  done
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

command -v go >/dev/null || { echo "go is needed to build the control plane" >&2; exit 1; }

k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2} $1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/go.mod")"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" <(go env GOVERSION GOOS GOARCH) | sha256sum | cut -c1-16)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/overlay-switch-webhook/controlplane/${k8s_version}-${key}"

if [[ -x "$cache/kube-apiserver" && -x "$cache/etcd" && -x "$cache/kubectl" ]]; then
  echo "$cache"
  exit 0
fi

echo "building control plane ${k8s_version} into $cache (first run only; takes several minutes)" >&2
mkdir -p "${cache%/*}"
tmp="$(mktemp -d "${cache%/*}/.tmp.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
(
  cd "$here"
  export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
  # Stamp the version, as Kubernetes' own build does (otherwise v0.0.0-master).
  minor="$(echo "$k8s_version" | cut -d. -f2)"
  kv="-X k8s.io/component-base/version.gitVersion=${k8s_version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}"
  kv="$kv -X k8s.io/client-go/pkg/version.gitVersion=${k8s_version} -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${minor}"
  go build -ldflags="-s -w $kv" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  go build -ldflags="-s -w $kv" -o "$tmp/kubectl" k8s.io/kubernetes/cmd/kubectl
  go build -ldflags="-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
) >&2
rm -rf "$cache"
mv "$tmp" "$cache"
trap - EXIT
echo "built control plane in $((SECONDS - start))s" >&2
echo "$cache"
