"""Threads: one router shared by eight Python threads, counters exact afterwards."""

from __future__ import annotations

import threading
from collections import Counter

import model_router as mr
from conftest import fleet

THREADS = 8
PER_THREAD = 2_000


def test_eight_threads_route_and_report_with_exact_counters() -> None:
    r = mr.Router(fleet(16, default_strategy="least_loaded"))
    decisions = Counter[str]()
    lock = threading.Lock()
    r.subscribe(lambda e: _count(e, decisions, lock), decisions=True)
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            mr.seed_thread(n)
            strategies = mr.STRATEGIES
            barrier.wait()
            for i in range(PER_THREAD):
                d = r.route(strategy=strategies[(n + i) % len(strategies)], affinity_key=f"k{i % 50}")
                if i % 10 == 0:
                    with r.routed(model="m") as d2:
                        assert d2.model_id == "m"
                r.report(d, success=i % 7 != 0, latency_ms=float(10 + i % 90), prompt_tokens=1, completion_tokens=2)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    routed_per_thread = PER_THREAD + PER_THREAD // 10
    statuses = r.endpoint_statuses()
    assert all(s["in_flight"] == 0 for s in statuses)
    assert sum(s["requests"] for s in statuses) == THREADS * routed_per_thread
    failures_per_thread = sum(1 for i in range(PER_THREAD) if i % 7 == 0)
    assert sum(s["failures"] for s in statuses) == THREADS * failures_per_thread
    assert sum(s["tokens_in"] for s in statuses) == THREADS * PER_THREAD
    assert sum(s["tokens_out"] for s in statuses) == THREADS * PER_THREAD * 2
    assert decisions["decision"] == THREADS * routed_per_thread


def _count(event: dict[str, object], counter: Counter[str], lock: threading.Lock) -> None:
    with lock:
        counter[str(event["type"])] += 1


def test_registry_writes_race_with_routing() -> None:
    r = mr.Router(fleet(4))
    stop = threading.Event()
    seen: list[str] = []

    def route_loop() -> None:
        while not stop.is_set():
            d = r.route(model="m")
            seen.append(d.endpoint_id)
            r.report(d, success=True, latency_ms=1)

    workers = [threading.Thread(target=route_loop) for _ in range(3)]
    for w in workers:
        w.start()
    for i in range(200):
        r.register_endpoint({"id": f"x{i}", "model_id": "m", "url": f"http://x{i}"})
        if i % 2:
            r.deregister_endpoint(f"x{i - 1}")
    stop.set()
    for w in workers:
        w.join()
    assert len(seen) > 0
    assert all(s["in_flight"] == 0 for s in r.endpoint_statuses())
    assert len(r.list_endpoints()) == 4 + 100
