#!/usr/bin/env bash
# Compare builds of `examples/ab` (or any binary taking the same arguments) fairly: each round
# copies each binary to a new file and runs the copy once, so that no build keeps the page
# placement its file happened to get (on the reference VM a file's speed is bimodal by 25-40 ns
# per decision, and stays so across runs for minutes; docs/performance.md, "Session 13").
#
#   benches/ab_fresh.sh <rounds> <case A> <case B> <binary>...
#   benches/ab_fresh.sh 4 route/usage/round_robin/10 route/budget_limit/round_robin/10 /tmp/ab-base /tmp/ab-new
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
rounds=$1 a=$2 b=$3
shift 3
copy=$(mktemp /tmp/ab-fresh.XXXXXX)
trap 'rm -f "$copy"' EXIT
for _ in $(seq "$rounds"); do
  for bin in "$@"; do
    cp "$bin" "$copy"
    chmod +x "$copy"
    printf '%s: %s\n' "$(basename "$bin")" "$("$copy" ab "$a" "$b" 1000 250 | tail -1)"
  done
done
