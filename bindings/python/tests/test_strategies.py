"""Strategies: distributions and behaviour of each strategy through the binding
(router-core/tests/strategies.rs)."""

from __future__ import annotations

from collections import Counter

import pytest

import model_router as mr
from conftest import fleet


def picks(router: mr.Router, n: int, **request: object) -> Counter[str]:
    """Endpoint ids of `n` decisions, each released right away (dropped)."""
    return Counter(router.route(**request).endpoint_id for _ in range(n))  # type: ignore[arg-type]


def test_every_strategy_is_named_and_selectable() -> None:
    assert mr.STRATEGIES == (
        "round_robin", "weighted_round_robin", "weighted_random", "least_loaded", "power_of_two",
        "latency_based", "cost_based", "geo_preferred", "consistent_hash", "hybrid",
    )
    r = mr.Router(fleet(3))
    for s in mr.STRATEGIES:
        d = r.route(strategy=s)
        assert d.strategy == s and "request override" in d.reason
    # LiteLLM's names are aliases.
    assert r.route(strategy="simple-shuffle").strategy == "weighted_random"
    assert r.route(strategy="least-busy").strategy == "least_loaded"
    assert r.route(strategy="latency-based-routing").strategy == "latency_based"


def test_weighted_random_follows_weights_within_two_points() -> None:
    weights = [1.0, 2.0, 3.0, 4.0]
    r = mr.Router(fleet(4, weights=weights, default_strategy="weighted_random"))
    n = 20_000
    got = picks(r, n)
    for i, w in enumerate(weights):
        share = got[f"e{i}"] / n
        assert abs(share - w / sum(weights)) < 0.02, (i, share)


def test_round_robin_is_exactly_fair() -> None:
    r = mr.Router(fleet(4, default_strategy="round_robin"))
    assert picks(r, 4_000) == {"e0": 1_000, "e1": 1_000, "e2": 1_000, "e3": 1_000}


def test_weighted_round_robin_is_exact_over_each_period() -> None:
    r = mr.Router(fleet(3, weights=[1.0, 2.0, 3.0], default_strategy="weighted_round_robin"))
    assert picks(r, 600) == {"e0": 100, "e1": 200, "e2": 300}


def test_consistent_hash_is_sticky_and_spreads_keys() -> None:
    r = mr.Router(fleet(5, default_strategy="consistent_hash"))
    for key in ("alice", "bob", "carol"):
        assert len(picks(r, 200, affinity_key=key)) == 1
    # The user id is the default affinity key, then the workspace.
    assert len(picks(r, 50, user_id="dave")) == 1
    assert picks(r, 1, user_id="dave") == picks(r, 1, affinity_key="dave")
    owners = {r.route(affinity_key=f"user-{i}").endpoint_id for i in range(500)}
    assert len(owners) == 5


@pytest.mark.parametrize("strategy", mr.STRATEGIES)
def test_weight_zero_gets_nothing(strategy: str) -> None:
    r = mr.Router(fleet(3, weights=[0.0, 1.0, 1.0]))
    got = Counter()
    for i in range(600):
        d = r.route(strategy=strategy, affinity_key=f"k{i}", region_preference="us-east")
        got[d.endpoint_id] += 1
        r.report(d, success=True, latency_ms=50 + i % 7)
    assert got["e0"] == 0 and sum(got.values()) == 600
    assert r.explain(strategy=strategy)["endpoints"][0]["verdict"] == "zero_weight"


def test_least_loaded_spreads_requests_in_flight() -> None:
    r = mr.Router(fleet(3, default_strategy="least_loaded"))
    held = [r.route() for _ in range(6)]
    assert Counter(d.endpoint_id for d in held) == {"e0": 2, "e1": 2, "e2": 2}
    assert [s["in_flight"] for s in r.endpoint_statuses()] == [2, 2, 2]
    for d in held[:2]:
        d.release()
    released = {held[0].endpoint_id, held[1].endpoint_id}
    assert r.route().endpoint_id in released


def test_capacity_is_respected() -> None:
    p = fleet(2, default_strategy="round_robin")
    p["endpoints"][0]["capacity"] = 1
    r = mr.Router(p)
    first = [r.route() for _ in range(2)]
    assert {d.endpoint_id for d in first} == {"e0", "e1"}
    assert {r.route().endpoint_id for _ in range(20)} == {"e1"}
    assert r.explain()["endpoints"][0]["verdict"] == "at_capacity"


def test_latency_based_prefers_the_fastest_reported() -> None:
    r = mr.Router(fleet(3))
    for eid, ms in (("e0", 400.0), ("e1", 40.0), ("e2", 900.0)):
        for _ in range(5):
            r.report_endpoint(eid, success=True, latency_ms=ms)
    assert picks(r, 50, strategy="latency_based") == {"e1": 50}


def test_cost_based_prefers_the_cheapest() -> None:
    p = fleet(3, default_strategy="cost_based")
    p["models"][0]["pricing"] = {"input_per_1k": 0.01, "output_per_1k": 0.03}
    p["endpoints"][2]["pricing"] = {"input_per_1k": 0.001, "output_per_1k": 0.002}
    r = mr.Router(p)
    assert picks(r, 30) == {"e2": 30}


def test_geo_preferred_prefers_the_region_and_spills(router: mr.Router) -> None:
    assert picks(router, 30, model="gpt-4", strategy="geo_preferred", region_preference="eu-west") == {"gpt4-west": 30}
    router.update_head_status(head_id="gpt4-west", status="offline")
    assert picks(router, 10, model="gpt-4", strategy="geo_preferred", region_preference="eu-west") == {"gpt4-east": 10}


def test_power_of_two_avoids_the_loaded_endpoint() -> None:
    r = mr.Router(fleet(2, default_strategy="power_of_two"))
    # Round robin alternates: keep the ten decisions on e0 in flight, release those on e1.
    held = [d for d in (r.route(strategy="round_robin") for _ in range(20)) if d.endpoint_id == "e0"]
    assert len(held) == 10 and r.endpoint_status("e1")["in_flight"] == 0
    # With two endpoints both are sampled: the idle one wins every time.
    assert picks(r, 20) == {"e1": 20}


def test_hybrid_and_model_strategy_sources() -> None:
    p = fleet(3)
    p["models"][0]["routing_strategy"] = "hybrid"
    r = mr.Router(p)
    d = r.route(model="m")
    assert d.strategy == "hybrid" and "model setting" in d.reason
    d = r.route(model="m", strategy="round_robin")
    assert d.strategy == "round_robin" and "request override" in d.reason
