#!/usr/bin/env python3
"""Per-call cost of routing from Python with model_router, beside LiteLLM's Router.

For each strategy and fleet size (N endpoints of one model, like the LiteLLM harness's N
deployments of one model_name) it times, from Python:

  route         d = router.route(model="bench-model")   (the decision is dropped: its slot goes back)
  route+report  d = router.route(model="bench-model"); router.report(d, success=True, latency_ms=...)

Calls are timed in batches of --batch (a single call is a few hundred nanoseconds, of the order
of the timer itself); a figure is the median over batches of the mean time per call, then the
median over --runs rounds. Then, in the same run, it times LiteLLM's
Router.get_available_deployment with the shared harness (../shared/bench/litellm_decision.py,
each strategy and N in a fresh process) for the strategies that have a counterpart:
simple-shuffle ~ weighted_random, least-busy ~ least_loaded, latency-based-routing ~
latency_based. power_of_two has none.

  target/py-venv/bin/python benches/python_route.py                      # both sides, ~3-4 min
  target/py-venv/bin/python benches/python_route.py --no-litellm --runs 1 # model_router only

The fleet: weights 1, 2, 3 in turn, regions us-east / eu-west in turn, capacity 1,000 each
(checked on every pick, never reached), and a latency sample per endpoint before timing so the
latency-aware strategies have data; reported latencies cycle through 50-450 ms.
Prints a markdown table and writes every figure to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from typing import Any, Callable

import model_router as mr

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("SHARED_BENCH", os.path.join(HERE, "..", "..", "shared", "bench"))
MODEL = "bench-model"
LITELLM_PAIRS = {
    "weighted_random": "simple-shuffle",
    "least_loaded": "least-busy",
    "latency_based": "latency-based-routing",
}


def make_router(n: int, strategy: str) -> mr.Router:
    router = mr.Router({
        "models": [{"id": MODEL, "provider": "bench"}],
        "endpoints": [
            {"id": f"e{i}", "model_id": MODEL, "url": f"http://127.0.0.1:{20000 + i}/v1",
             "weight": 1 + i % 3, "region": ("us-east", "eu-west")[i % 2], "capacity": 1000}
            for i in range(n)
        ],
        "default_strategy": strategy,
    })
    for i in range(n):
        router.report_endpoint(f"e{i}", success=True, latency_ms=50.0 + (i * 37) % 400)
    return router


def time_batches(fn: Callable[[], None], seconds: float, batch: int, warmup: float) -> dict[str, Any]:
    """Median / min / max over batches of the mean time per call, in microseconds."""
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        fn()
    means: list[float] = []
    pc = time.perf_counter_ns
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(means) < 20:
        t = pc()
        for _ in range(batch):
            fn()
        means.append((pc() - t) / batch / 1000.0)
    means.sort()
    return {
        "median_us": statistics.median(means),
        "p10_us": means[len(means) // 10],
        "p90_us": means[(len(means) * 9) // 10],
        "batches": len(means),
        "calls": len(means) * batch,
    }


def bench_model_router(strategies: list[str], ns: list[int], a: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for run in range(1, a.runs + 1):
        for strategy in strategies:
            for n in ns:
                router = make_router(n, strategy)
                route = router.route
                report = router.report
                lat = [50.0 + 10.0 * k for k in range(41)]
                state = {"k": 0}

                def route_only() -> None:
                    route(model=MODEL)

                def route_report() -> None:
                    d = route(model=MODEL)
                    k = state["k"] = (state["k"] + 1) % 41
                    report(d, success=True, latency_ms=lat[k])

                for mode, fn in (("route", route_only), ("route+report", route_report)):
                    r = time_batches(fn, a.seconds, a.batch, a.warmup)
                    row = {"run": run, "strategy": strategy, "n": n, "mode": mode, **r}
                    rows.append(row)
                    print(f"  run{run} {strategy:16s} N={n:<5d} {mode:13s} median {r['median_us']:7.3f} us"
                          f"  (p10 {r['p10_us']:.3f}, p90 {r['p90_us']:.3f}, {r['calls']} calls)", flush=True)
                statuses = router.endpoint_statuses()
                assert all(s["in_flight"] == 0 for s in statuses), "a decision leaked its slot"
    return rows


def bench_litellm(ns: list[int], a: argparse.Namespace) -> list[dict[str, Any]]:
    py = os.path.join(a.litellm_venv, "bin", "python")
    script = os.path.join(SHARED, "litellm_decision.py")
    if not os.path.exists(script):
        print(f"# no {script}: skipping LiteLLM (set SHARED_BENCH)", flush=True)
        return []
    if not os.access(py, os.X_OK):
        setup = os.path.join(SHARED, "setup_litellm.sh")
        print(f"# creating the LiteLLM venv: {setup} {a.litellm_venv}", flush=True)
        subprocess.run([setup, a.litellm_venv], check=True)
    fd, out = tempfile.mkstemp(suffix=".jsonl", prefix="litellm-")
    os.close(fd)
    cmd = [py, script, "--modes", "sync", "--strategies", ",".join(LITELLM_PAIRS.values()),
           "--n", ",".join(map(str, ns)), "--seconds", str(a.litellm_seconds), "--runs", str(a.litellm_runs),
           "--out", out]
    print("# " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False, timeout=3600)
    with open(out) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    os.unlink(out)
    return [r for r in rows if r.get("mode") == "sync" and "median_us" in r]


def fmt_us(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f} µs"
    if x >= 10:
        return f"{x:.1f} µs"
    return f"{x:.2f} µs"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:,.0f}×"


def summarize(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], strategies: list[str], ns: list[int]) -> str:
    def med(rows: list[dict[str, Any]]) -> float | None:
        xs = [r["median_us"] for r in rows]
        return statistics.median(xs) if xs else None

    lines = [
        "| strategy | N | `route` | route + report | LiteLLM (≈ strategy) | LiteLLM / `route` | LiteLLM / (route + report) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in strategies:
        for n in ns:
            r = med([x for x in ours if x["strategy"] == s and x["n"] == n and x["mode"] == "route"])
            rr = med([x for x in ours if x["strategy"] == s and x["n"] == n and x["mode"] == "route+report"])
            lname = LITELLM_PAIRS.get(s)
            lit = med([x for x in theirs if x["strategy"] == lname and x["n"] == n]) if lname else None
            label = f"{fmt_us(lit)} (`{lname}`)" if lit is not None else "-"
            lines.append(f"| `{s}` | {n:,} | {fmt_us(r)} | {fmt_us(rr)} | {label} | {fmt_ratio(lit, r)} | {fmt_ratio(lit, rr)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default="weighted_random,least_loaded,latency_based,power_of_two")
    ap.add_argument("--n", default="10,100,1000")
    ap.add_argument("--runs", type=int, default=3, help="rounds of the whole model_router matrix")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed window per (strategy, N, mode)")
    ap.add_argument("--warmup", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=200, help="calls per timed batch")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--litellm-venv", default="/tmp/litellm-venv")
    ap.add_argument("--litellm-seconds", type=float, default=1.5)
    ap.add_argument("--litellm-runs", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "target", "python_route.json"))
    a = ap.parse_args()
    strategies = [s for s in a.strategies.split(",") if s]
    ns = [int(x) for x in a.n.split(",") if x]
    meta = {
        "model_router": mr.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "batch": a.batch,
        "seconds": a.seconds,
        "runs": a.runs,
    }
    print(f"# model_router {meta['model_router']}, Python {meta['python']}, {meta['cpus']} CPUs", flush=True)
    ours = bench_model_router(strategies, ns, a)
    theirs = [] if a.no_litellm else bench_litellm(ns, a)
    if theirs:
        meta["litellm"] = theirs[0].get("litellm_version")
    table = summarize(ours, theirs, strategies, ns)
    print("\n" + table)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "model_router": ours, "litellm": theirs, "table": table}, f, indent=1)
    print(f"\n# figures written to {os.path.abspath(a.out)}")


if __name__ == "__main__":
    main()
