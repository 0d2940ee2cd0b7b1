"""The decision loop: route, report, the in-flight guard, the context manager, failover
(router-core/tests/decision_loop.rs)."""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
from typing import Any

import pytest

import model_router as mr
from conftest import fleet, status


def test_decision_attributes(router: mr.Router, clock: mr.ManualClock) -> None:
    d = router.route(model="gpt-4", region_preference="eu-west", strategy="geo_preferred", request_id="req-1")
    assert d.model_id == "gpt-4" and d.endpoint_id == "gpt4-west" and d.url == "http://10.0.0.2/v1"
    assert d.region == "eu-west" and d.strategy == "geo_preferred"
    assert "requested by id" in d.reason and "geo_preferred (request override)" in d.reason
    assert len(d.decision_id) == 16 and int(d.decision_id, 16) >= 0
    assert d.fallbacks == [{"model_id": "gpt-4", "endpoint_id": "gpt4-east", "url": "http://10.0.0.1/v1"}]
    assert d.routed_at_ms == clock.now_ms() and d.generation == router.generation
    assert (d.degraded, d.panic, d.probe, d.attempt, d.released) == (False, False, False, 1, False)
    record = d.to_dict()
    assert record["decision_id"] == d.decision_id and record["reason"] == d.reason
    assert record["fallbacks"] == d.fallbacks and json.loads(json.dumps(record)) == record
    with pytest.raises(AttributeError):
        d.model_id = "other"  # type: ignore[misc]


def test_route_takes_a_dict_json_or_keywords(router: mr.Router) -> None:
    assert router.route({"model": "claude-3-sonnet"}).model_id == "claude-3-sonnet"
    assert router.route('{"model": "claude-3-sonnet"}').model_id == "claude-3-sonnet"
    assert router.route(b'{"model": "claude-3-sonnet"}').model_id == "claude-3-sonnet"
    # Keywords win over the mapping.
    assert router.route({"model": "gpt-4"}, model="claude-3-sonnet").model_id == "claude-3-sonnet"
    # Aliases and extra fields of the routing-service body (the general path).
    d = router.route({"modelId": "gpt-4", "prompt": "hello", "workspaceId": "ws-1"})
    assert d.model_id == "gpt-4"
    assert router.route(modelType="chat").model_id in ("gpt-4", "claude-3-sonnet")
    # None means "not given".
    assert router.route(model=None, region_preference=None).model_id in ("gpt-4", "claude-3-sonnet")
    d = router.route(model="gpt-4", required_capabilities=[], metadata={"priority": "high", "n": [1, 2.5]},
                     content_length=400, estimated_tokens=100, agent_type="creative", request_type="completion",
                     workspace_id="ws-1", user_id="u-1", affinity_key="s-1")
    assert d.model_id == "gpt-4"


def test_report_frees_the_slot_and_counts(router: mr.Router) -> None:
    d = router.route(model="gpt-4")
    assert status(router, d.endpoint_id)["in_flight"] == 1
    router.report(d, success=True, latency_ms=812, prompt_tokens=25, completion_tokens=100, ttft_ms=90)
    s = status(router, d.endpoint_id)
    assert (s["in_flight"], s["requests"], s["failures"], s["tokens_in"], s["tokens_out"]) == (0, 1, 0, 25, 100)
    assert s["latency_ewma_ms"] == pytest.approx(812) and s["ttft_ewma_ms"] == pytest.approx(90)
    assert d.released


def test_double_report_raises_and_changes_nothing(router: mr.Router) -> None:
    d = router.route(model="gpt-4")
    router.report(d, success=True, latency_ms=10)
    with pytest.raises(mr.AlreadyReported) as e:
        router.report(d, error="timeout", latency_ms=10)
    assert e.value.decision_id == d.decision_id and e.value.kind == "already_reported"
    s = status(router, d.endpoint_id)
    assert (s["requests"], s["failures"], s["in_flight"]) == (1, 0, 0)


def test_release_and_garbage_collection_give_the_slot_back(router: mr.Router) -> None:
    d = router.route(model="gpt-4", strategy="round_robin")
    eid = d.endpoint_id
    assert d.release() is True and d.release() is False and d.released
    assert status(router, eid)["in_flight"] == 0
    with pytest.raises(mr.AlreadyReported):
        router.report(d, success=True, latency_ms=1)
    assert status(router, eid)["requests"] == 0
    held = [router.route(model="gpt-4") for _ in range(10)]
    assert sum(s["in_flight"] for s in router.endpoint_statuses()) == 10
    del held
    gc.collect()
    assert sum(s["in_flight"] for s in router.endpoint_statuses()) == 0


def test_an_invalid_report_keeps_the_slot(router: mr.Router) -> None:
    d = router.route(model="gpt-4")
    with pytest.raises(mr.InvalidRequest) as e:
        router.report(d, success=True, latency_ms=-5)
    assert e.value.field == "latency_ms"
    assert status(router, d.endpoint_id)["in_flight"] == 1 and not d.released
    router.report(d, success=True, latency_ms=5)
    assert status(router, d.endpoint_id)["in_flight"] == 0


@pytest.mark.parametrize(
    ("kwargs", "failure"),
    [
        ({"success": True}, False),
        ({"success": False}, True),
        ({"error": "timeout"}, True),
        ({"error": "connection"}, True),
        ({"error": "server", "status_code": 502}, True),
        ({"error": "client"}, False),
        ({"status_code": 200}, False),
        ({"status_code": 404}, False),
        ({"status_code": 503}, True),
        ({"status_code": 429, "retry_after_s": 2.5}, True),
        ({"error": "rate_limited"}, True),
    ],
)
def test_outcomes_classify(router: mr.Router, kwargs: dict[str, Any], failure: bool) -> None:
    d = router.route(model="gpt-4")
    router.report(d, latency_ms=30, **kwargs)
    s = status(router, d.endpoint_id)
    assert s["requests"] == 1 and s["failures"] == int(failure)


def test_a_429_cools_the_endpoint_down(router: mr.Router, clock: mr.ManualClock) -> None:
    d = router.route(model="gpt-4", strategy="round_robin")
    router.report(d, status_code=429, retry_after_s=30, latency_ms=5)
    assert status(router, d.endpoint_id)["cooldown_until_ms"] == clock.now_ms() + 30_000
    other = {"gpt4-east": "gpt4-west", "gpt4-west": "gpt4-east"}[d.endpoint_id]
    assert {router.route(model="gpt-4").endpoint_id for _ in range(20)} == {other}
    clock.advance(30_001)
    assert d.endpoint_id in {router.route(model="gpt-4", strategy="round_robin").endpoint_id for _ in range(4)}


def test_report_endpoint_counts_without_a_decision(router: mr.Router) -> None:
    router.report_endpoint("claude-east", success=True, latency_ms=100, prompt_tokens=3, completion_tokens=4)
    s = status(router, "claude-east")
    assert (s["requests"], s["tokens_in"], s["tokens_out"], s["in_flight"]) == (1, 3, 4, 0)
    with pytest.raises(mr.NotFound):
        router.report_endpoint("ghost", success=True, latency_ms=1)


# ---- the context manager --------------------------------------------------------------


def test_routed_reports_success_with_the_measured_latency(router: mr.Router) -> None:
    with router.routed(model="gpt-4") as d:
        assert isinstance(d, mr.Decision) and status(router, d.endpoint_id)["in_flight"] == 1
    s = status(router, d.endpoint_id)
    assert (s["requests"], s["failures"], s["in_flight"]) == (1, 0, 0)
    assert s["latency_ewma_ms"] is not None and s["latency_ewma_ms"] < 1_000
    assert d.released


class HTTPError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class Response:
    status_code = 503


class HTTPStatusError(Exception):
    response = Response()


class ReadTimeout(Exception):
    pass


class APIConnectionError(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "failures", "cooldown"),
    [
        (TimeoutError("slow"), 1, False),
        (asyncio.TimeoutError(), 1, False),
        (ReadTimeout(), 1, False),
        (ConnectionRefusedError(), 1, False),
        (APIConnectionError(), 1, False),
        (ValueError("bad payload"), 1, False),
        (HTTPError(429), 1, True),
        (HTTPError(400), 0, False),
        (HTTPStatusError(), 1, False),
    ],
)
def test_routed_maps_exceptions_and_reraises(router: mr.Router, exc: Exception, failures: int, cooldown: bool) -> None:
    with pytest.raises(type(exc)):
        with router.routed(model="gpt-4") as d:
            raise exc
    s = status(router, d.endpoint_id)
    assert (s["requests"], s["failures"], s["in_flight"]) == (1, failures, 0)
    assert (s["cooldown_until_ms"] > 0) == cooldown


def test_routed_releases_without_an_outcome_on_cancellation(router: mr.Router) -> None:
    for exc in (KeyboardInterrupt(), asyncio.CancelledError()):
        with pytest.raises(type(exc)):
            with router.routed(model="gpt-4") as d:
                raise exc
        s = status(router, d.endpoint_id)
        assert (s["requests"], s["in_flight"]) == (0, 0) and d.released


def test_routed_leaves_a_decision_reported_inside_the_block_alone(router: mr.Router) -> None:
    with router.routed(model="gpt-4") as d:
        router.report(d, status_code=200, latency_ms=700, prompt_tokens=11, completion_tokens=22)
    s = status(router, d.endpoint_id)
    assert (s["requests"], s["tokens_in"], s["tokens_out"]) == (1, 11, 22)
    assert s["latency_ewma_ms"] == pytest.approx(700)


def test_routed_raises_routing_errors_on_entry_and_enters_once(router: mr.Router) -> None:
    cm = router.routed(model="ghost")
    with pytest.raises(mr.NotFound):
        with cm:
            pytest.fail("not reached")
    cm = router.routed({"model": "gpt-4"})
    with cm:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        cm.__enter__()


def test_routed_works_inside_async_code(router: mr.Router) -> None:
    async def call() -> str:
        with router.routed(model="gpt-4") as d:
            await asyncio.sleep(0)
            return d.endpoint_id

    eid = asyncio.run(call())
    assert status(router, eid)["requests"] == 1


# ---- failover ---------------------------------------------------------------------------


def test_next_fallback_walks_the_chain(clock: mr.ManualClock) -> None:
    r = mr.Router(fleet(3, max_fallbacks=2), clock=clock)
    d = r.route()
    chain = [f["endpoint_id"] for f in d.fallbacks]
    assert len(chain) == 2 and d.endpoint_id not in chain
    d2, delay = r.next_fallback(d, error="timeout", latency_ms=30_000)
    assert d2.attempt == 2 and d2.endpoint_id == chain[0] and 50 <= delay <= 100
    assert [f["endpoint_id"] for f in d2.fallbacks] == chain[1:]
    assert "attempt 2" in d2.reason
    d3, delay = r.next_fallback(d2, status_code=503, latency_ms=10)
    assert d3.attempt == 3 and d3.endpoint_id == chain[1] and 100 <= delay <= 200
    with pytest.raises(mr.FallbacksExhausted) as e:
        r.next_fallback(d3, error="connection", latency_ms=1)
    assert e.value.attempts == 3 and e.value.reason == "max attempts reached"
    # Every failed attempt was recorded; the decisions in flight are the last one only.
    statuses = {s["endpoint_id"]: s for s in r.endpoint_statuses()}
    assert sum(s["failures"] for s in statuses.values()) == 3
    assert sum(s["in_flight"] for s in statuses.values()) == 0


def test_decisions_do_not_pickle_or_construct(router: mr.Router) -> None:
    d = router.route()
    with pytest.raises(TypeError):
        pickle.dumps(d)
    with pytest.raises(TypeError):
        mr.Decision()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        pickle.dumps(router)
