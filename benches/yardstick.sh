#!/usr/bin/env bash
# Per-call p50 of the working tree beside a reference commit's, in one run: how much of a
# difference from an earlier session's figures is the machine's. The reference VM's speed per
# core moves by up to ~1.6x between sessions (docs/performance.md, "Session 14"), so an absolute
# figure only compares with one measured in the same run.
#
#   benches/yardstick.sh <commit> [rounds] [strategy...]
#   benches/yardstick.sh b9ba483 2 round_robin power_of_two
#
# Builds `examples/latency` at <commit> (a temporary git worktree, its own target directory
# under target/yardstick) and in the working tree, then alternates the two for <rounds> rounds
# (2 by default), each round running a fresh copy of each binary (benches/ab_fresh.sh says why)
# over every fleet size of each strategy (round_robin and power_of_two by default). Prints one
# line per round, build, strategy and size: the p50 in ns, then p90, p99 and the mean. The
# commit's `examples/latency` must take `<strategy> <calls> <rounds> <warm-up s>` and print
# `<strategy> <size> <p50> <p90> <p99> <mean> ...` rows, as it has since it was added (`157fbc1`).
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
root=$(git rev-parse --show-toplevel)
commit=$(git -C "$root" rev-parse --short "$1")
shift
rounds=2
if [ $# -gt 0 ]; then
  rounds=$1
  shift
fi
strategies=("$@")
[ ${#strategies[@]} -gt 0 ] || strategies=(round_robin power_of_two)

work=$(mktemp -d /tmp/yardstick.XXXXXX)
cleanup() {
  git -C "$root" worktree remove --force "$work/tree" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
git -C "$root" worktree add --quiet --detach "$work/tree" "$commit" >/dev/null
(cd "$work/tree" && CARGO_TARGET_DIR="$root/target/yardstick" \
  cargo build --quiet --release -p router-benches --example latency)
cp "$root/target/yardstick/release/examples/latency" "$work/ref"
(cd "$root" && cargo build --quiet --release -p router-benches --example latency)
cp "$root/target/release/examples/latency" "$work/head"

printf '%-5s %-8s %-22s %6s %8s %8s %8s %8s\n' round build strategy size p50 p90 p99 mean
for r in $(seq "$rounds"); do
  for build in "$commit" head; do
    src=$work/head
    [ "$build" = head ] || src=$work/ref
    for s in "${strategies[@]}"; do
      cp "$src" "$work/run"
      "$work/run" "$s" 200000 3 1 | awk -v r="$r" -v b="$build" -v s="$s" \
        '$1 == s { printf "%-5s %-8s %-22s %6s %8s %8s %8s %8s\n", r, b, s, $2, $3, $4, $5, $6 }'
    done
  done
done
