"""Events: callbacks and iterators (router-core/src/events.rs)."""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from typing import Any

import pytest

import model_router as mr
from conftest import fleet


def test_callbacks_receive_registry_events_until_unsubscribed(router: mr.Router, clock: mr.ManualClock) -> None:
    seen: list[dict[str, Any]] = []
    sub = router.subscribe(seen.append)
    assert isinstance(sub, int)
    router.register_model({"id": "m2", "provider": "p"})
    router.register_endpoint({"id": "m2-a", "model_id": "m2", "url": "http://a"})
    router.update_head_status(head_id="m2-a", status="degraded", current_load=4)
    router.deregister_endpoint("m2-a")
    # Each accepted configuration change also says which policy version it made.
    assert [e["type"] for e in seen] == [
        "model_registered", "policy_changed", "head_registered", "policy_changed",
        "head_status_changed", "head_deregistered", "policy_changed",
    ]
    assert seen[1]["version"] == 2 and seen[1]["comment"] == "model m2 set"
    seen[:] = [e for e in seen if e["type"] != "policy_changed"]
    assert seen[1] == {"type": "head_registered", "endpoint_id": "m2-a", "model_id": "m2", "url": "http://a",
                       "at_ms": clock.now_ms()}
    assert seen[2]["from"] == "healthy" and seen[2]["to"] == "degraded" and seen[2]["current_load"] == 4
    router.route()  # no decision events unless asked for
    assert len(seen) == 4
    assert router.unsubscribe(sub) is True and router.unsubscribe(sub) is False
    router.register_model({"id": "m3"})
    assert len(seen) == 4


def test_decision_events_on_request(router: mr.Router) -> None:
    decisions: list[dict[str, Any]] = []
    router.subscribe(decisions.append, decisions=True)
    ds = [router.route(model="gpt-4") for _ in range(3)]
    assert [e["type"] for e in decisions] == ["decision"] * 3
    assert [e["decision_id"] for e in decisions] == [d.decision_id for d in ds]
    assert decisions[0]["endpoint_id"] == ds[0].endpoint_id and decisions[0]["reason"] == ds[0].reason


def test_breaker_and_expiry_events(clock: mr.ManualClock) -> None:
    r = mr.Router(fleet(3, heartbeat_ttl_ms=1_000), clock=clock)
    seen: list[str] = []
    r.subscribe(lambda e: seen.append(e["type"]))
    for _ in range(5):
        r.report_endpoint("e0", error="connection", latency_ms=1)
    assert "breaker_opened" in seen and "endpoint_ejected" in seen
    clock.advance(1_500)
    r.sweep()
    assert seen.count("head_expired") == 3
    r.heartbeat("e1")
    assert seen[-1] == "head_revived"


def test_a_failing_callback_does_not_break_the_router(router: mr.Router, monkeypatch: pytest.MonkeyPatch) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    ok: list[str] = []

    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("subscriber bug")

    router.subscribe(broken, decisions=True)
    router.subscribe(lambda e: ok.append(e["type"]), decisions=True)
    d = router.route()
    router.report(d, success=True, latency_ms=1)
    assert ok == ["decision"]
    assert len(unraisable) == 1 and isinstance(unraisable[0].exc_value, RuntimeError)


def test_iterator_form(router: mr.Router) -> None:
    with router.events(timeout=0.05) as stream:
        assert stream.poll() is None and list(stream) == []
        router.register_model({"id": "m2"})
        router.register_endpoint({"id": "m2-a", "model_id": "m2", "url": "u"})
        event = next(stream)
        assert event["type"] == "model_registered"
        assert [e["type"] for e in stream] == ["policy_changed", "head_registered", "policy_changed"]
        router.deregister_model("m2")
        assert [e["type"] for e in stream.drain()] == ["head_deregistered", "model_deregistered", "policy_changed"]
        assert stream.wait(0.01) is None
    assert stream.closed
    router.register_model({"id": "m4"})
    assert stream.poll() is None and stream.wait(0) is None and list(stream) == []


def test_full_streams_drop_and_count(router: mr.Router) -> None:
    stream = router.events(2, decisions=True, timeout=0)
    ds = [router.route() for _ in range(5)]
    assert stream.dropped == 3
    got = [e["decision_id"] for e in stream]
    assert got == [d.decision_id for d in ds[:2]]
    stream.close()
    assert stream.dropped == 3


def test_waiting_releases_the_gil_and_wakes_on_an_event(router: mr.Router) -> None:
    stream = router.events(timeout=5.0)
    got: list[dict[str, Any]] = []
    waiter = threading.Thread(target=lambda: got.extend(stream))
    waiter.start()
    time.sleep(0.05)
    # The waiting thread holds no GIL: this thread runs Python freely meanwhile.
    t0 = time.perf_counter()
    n = sum(1 for _ in range(200_000))
    busy = time.perf_counter() - t0
    assert n == 200_000 and busy < 2.0
    t0 = time.perf_counter()
    router.register_model({"id": "m9"})
    while not got and time.perf_counter() - t0 < 2.0:
        time.sleep(0.005)
    assert got and got[0]["type"] == "model_registered"
    assert time.perf_counter() - t0 < 1.0
    stream.close()  # ends the waiting iteration well before its timeout
    waiter.join(timeout=2.0)
    assert not waiter.is_alive()


def test_blocking_iteration_ends_on_close_from_another_thread(router: mr.Router) -> None:
    stream = router.events()  # no timeout: waits until closed
    done = threading.Event()

    def consume() -> None:
        for _ in stream:
            pass
        done.set()

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.1)
    assert not done.is_set()
    stream.close()
    assert done.wait(2.0)
    t.join()


def test_a_callback_that_closes_over_its_router_is_collected() -> None:
    r = mr.Router(fleet(1))
    seen: list[str] = []
    r.subscribe(lambda e: seen.append(f"{e['type']} at generation {r.generation}"))
    r.register_model({"id": "x"})
    assert seen == ["model_registered at generation 2", "policy_changed at generation 2"]
    ref = weakref.ref(r)
    del r
    gc.collect()
    assert ref() is None
