#!/usr/bin/env bash
# Builds (once) and prints the path of the helm binary the chart test uses
# (tests/chart.rs renders charts/overlay-switch-webhook with it), at the
# version pinned in go.mod, from the Go module proxy; cached outside the
# checkout like the control plane. $HELM, if set, is used as it is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${HELM:-}" ]]; then echo "$HELM"; exit 0; fi
command -v go >/dev/null || { echo "go is needed to build helm" >&2; exit 1; }
version="$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" {print $3}' "$here/go.mod")"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" <(go env GOVERSION GOOS GOARCH) | sha256sum | cut -c1-16)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/overlay-switch-webhook/helm/${version}-${key}"
if [[ -x "$cache/helm" ]]; then echo "$cache/helm"; exit 0; fi
echo "building helm ${version} into $cache (first run only; about 2 minutes)" >&2
mkdir -p "${cache%/*}"
tmp="$(mktemp -d "${cache%/*}/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
(
  cd "$here"
  export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
  go build -ldflags="-s -w" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm
) >&2
rm -rf "$cache"
mv "$tmp" "$cache"
trap - EXIT
echo "$cache/helm"
