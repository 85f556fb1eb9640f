#!/usr/bin/env bash
# Puts BENCHMARKS.md together (stdout) from the sections the benches wrote
# into target/bench-report/, with the machine and the exact commands.
# Run by `make bench`; the profiles come from benches/PROFILES.md.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/bench-report
quick=${BENCH_QUICK:-}
[ "$quick" = 0 ] && quick=
cat <<HEAD
# Benchmarks

Written by \`make bench\`${quick:+ with \`BENCH_QUICK=1\` (a fast look: fewer rounds, fewer nodes, shorter runs)} on $(date -u +%Y-%m-%d) at $(git rev-parse --short HEAD 2>/dev/null || echo unknown). Do not edit by hand: run \`make bench\` again.

## Machine

| | |
|---|---|
| CPUs (\`nproc\`) | $(nproc) |
| CPU model | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') |
| memory | $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) |
| kernel | $(uname -r) |
| Rust | $(rustc -V) |
| kube-apiserver | $(tests/controlplane/build.sh 2>/dev/null | xargs -I{} sh -c '{}/kube-apiserver --version' 2>/dev/null || echo unknown) |

These machines are noisy: every figure is compared with a baseline measured in the same run, and
most are given as min / **median** / max over several rounds. Release builds (\`cargo bench\`).

## Commands

\`\`\`
make bench                 # every bench below, then this file
BENCH_QUICK=1 make bench   # a fast look
cargo bench --bench NAME   # one of: admission, dryrun, load, scale, release_delay, gardener_server
\`\`\`

HEAD
for f in "$dir"/*.md; do
  cat "$f"
  echo
done
cat benches/PROFILES.md
