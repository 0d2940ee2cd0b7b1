#!/usr/bin/env bash
# LiteLLM's side of docs/performance.md: time litellm.Router's routing decision (sync
# get_available_deployment) for the three strategies that have a router-core counterpart, at
# 10, 100 and 1,000 deployments, with the shared harness in ../shared/bench.
#
#   benches/run_litellm.sh [VENV_DIR] [OUT_JSONL]
#
# Defaults: VENV_DIR=/tmp/litellm-venv, OUT_JSONL=/tmp/litellm.jsonl. The venv is made (once,
# a few minutes, PyPI only) by ../shared/bench/setup_litellm.sh; nothing is written in this
# repository. Run it in the same session as `cargo bench -p router-benches --bench route` so
# both sides are measured on the same machine under the same conditions.
#
# Strategy pairs: simple-shuffle ~ weighted_random, least-busy ~ least_loaded,
# latency-based-routing ~ latency_based.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHARED=${SHARED_BENCH:-$HERE/../../shared/bench}
V=${1:-/tmp/litellm-venv}
OUT=${2:-/tmp/litellm.jsonl}
[ -f "$SHARED/litellm_decision.py" ] || { echo "no $SHARED/litellm_decision.py (set SHARED_BENCH)" >&2; exit 1; }
[ -x "$V/bin/python" ] || "$SHARED/setup_litellm.sh" "$V"
"$V/bin/python" "$SHARED/litellm_decision.py" --modes sync \
  --strategies simple-shuffle,least-busy,latency-based-routing --n 10,100,1000 --seconds 1.5 \
  --out "$OUT"
