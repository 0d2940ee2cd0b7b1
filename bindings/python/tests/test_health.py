"""Health and circuit breakers through the binding (router-core/tests/health.rs, breaker.rs)."""

from __future__ import annotations

from typing import Any

import model_router as mr
from conftest import fleet


def test_consecutive_failures_open_the_breaker_and_it_recovers(clock: mr.ManualClock) -> None:
    r = mr.Router(fleet(3, breaker={"open_duration_ms": 10_000, "jitter": 0.0}), clock=clock)
    events: list[dict[str, Any]] = []
    r.subscribe(events.append)
    for _ in range(5):
        r.report_endpoint("e0", error="timeout", latency_ms=30_000)
    s = r.endpoint_status("e0")
    assert s["breaker"] == "open" and s["consecutive_failures"] == 5
    assert [e["type"] for e in events if e["type"].startswith(("breaker", "endpoint"))] == ["breaker_opened", "endpoint_ejected"]
    assert "e0" not in {r.route(strategy="round_robin").endpoint_id for _ in range(30)}
    clock.advance(10_001)
    # Half-open: probes go through; a success closes the breaker.
    probe = None
    for _ in range(30):
        d = r.route(strategy="round_robin")
        if d.endpoint_id == "e0":
            probe = d
            break
    assert probe is not None and probe.probe and "half-open probe" in probe.reason
    r.report(probe, success=True, latency_ms=50)
    for _ in range(3):
        d = r.route(model="m", strategy="round_robin")
        if d.endpoint_id == "e0":
            r.report(d, success=True, latency_ms=50)
    assert r.endpoint_status("e0")["breaker"] in ("closed", "half_open")


def test_ejection_never_takes_out_every_endpoint() -> None:
    r = mr.Router(fleet(2))
    for eid in ("e0", "e1"):
        for _ in range(5):
            r.report_endpoint(eid, error="connection", latency_ms=1)
    states = sorted(s["breaker"] for s in r.endpoint_statuses())
    assert states == ["closed", "open"]  # max_ejection_percent 50: one of two at most


def test_panic_routing_when_nothing_is_eligible() -> None:
    r = mr.Router(fleet(2, breaker={"max_ejection_percent": 100.0}))
    for eid in ("e0", "e1"):
        r.update_head_status(head_id=eid, status="unhealthy")
    d = r.route()
    assert d.panic and d.degraded and "panic" in d.reason
    c = r.config()
    c["panic_mode"] = "fail"
    r.set_config(c)
    try:
        r.route()
        raise AssertionError("expected NoHealthyEndpoint")
    except mr.NoHealthyEndpoint as e:
        assert "unhealthy" in e.reason


def test_pushed_health_reports_and_probes(clock: mr.ManualClock) -> None:
    p = fleet(2, health={"probe_interval_ms": 5_000})
    p["endpoints"][0]["health_check_url"] = "http://10.0.0.0/health"
    r = mr.Router(p, clock=clock)
    assert r.report_health("e1", {"responseTime": 80, "errorRate": 0.6}) == 1
    assert r.endpoint_status("e1")["health"] < 0.5
    assert r.report_health("m", status="degraded") == 2
    assert [s["status"] for s in r.endpoint_statuses()] == ["degraded", "degraded"]
    assert r.probe_targets() == [{"endpoint_id": "e0", "url": "http://10.0.0.0/health"}]
    assert r.probe_targets() == []  # handed out once per interval
    r.record_probe("e0", True, 42.0)
    assert r.endpoint_status("e0")["latency_ewma_ms"] == 42.0
    clock.advance(5_000)
    assert len(r.probe_targets()) == 1
