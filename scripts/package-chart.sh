#!/usr/bin/env bash
# make chart: packages charts/overlay-switch-webhook as Helm does (a gzipped
# tar with the chart folder at its top) without needing helm, and prints it
# base64-encoded, for helm.rawChart of a ControllerDeployment.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/target/overlay-switch-webhook-chart.tgz}"
mkdir -p "$(dirname "$out")"
tar -C "$root/charts" --sort=name --owner=0 --group=0 --numeric-owner --mode='a+rX,u+w,go-w' \
  --mtime='2026-01-01 00:00:00Z' -cf - overlay-switch-webhook | gzip -n > "$out"
echo "wrote $out" >&2
base64 -w0 "$out"
echo
