"""Usage and cost, budgets, rate limits, experiments and health at a glance through the binding
(router-core/tests/accounting.rs), on a manual clock."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import model_router as mr

# 2026-11-23 00:00 UTC, a Monday.
MON = 1_795_392_000_000
DAY = 86_400_000


def policy(**extra: Any) -> dict[str, Any]:
    """`big` ($0.01 in / $0.03 out per 1k tokens) and `small` ($0.001 / $0.002), one endpoint each."""
    return {
        "models": [
            {"id": "big", "provider": "openai", "model_type": "chat",
             "pricing": {"input_per_1k": 0.01, "output_per_1k": 0.03}},
            {"id": "small", "provider": "acme", "model_type": "chat",
             "pricing": {"input_per_1k": 0.001, "output_per_1k": 0.002}},
        ],
        "endpoints": [
            {"id": "big-1", "model_id": "big", "url": "http://big"},
            {"id": "small-1", "model_id": "small", "url": "http://small"},
        ],
        **extra,
    }


def router(at_ms: int = MON, **extra: Any) -> tuple[mr.Router, mr.ManualClock]:
    clock = mr.ManualClock(at_ms)
    return mr.Router(policy(**extra), clock=clock), clock


def spend_4_cents(r: mr.Router, ws: str = "ws", **kw: Any) -> None:
    """One request on `big` with 1,000 tokens in and out: $0.04."""
    d = r.route(model="big", workspace_id=ws, **kw)
    r.report(d, success=True, latency_ms=10, prompt_tokens=1000, completion_tokens=1000)


# ---- usage and cost -------------------------------------------------------------------------


def test_cost_and_recent_requests_after_reports() -> None:
    r, clock = router()
    spend_4_cents(r, agent_type="writer", user_id="ann", request_id="req-1")
    clock.advance(1_000)
    # Only a content length: 4,000 chars ~ 1,000 prompt tokens, 256 completion tokens assumed.
    d = r.route(model="big", workspace_id="ws", content_length=4_000)
    r.report(d, success=True, latency_ms=5)
    recent = r.recent_requests(10)
    assert isinstance(recent, list) and len(recent) == 2
    newest, oldest = recent
    assert newest["tokens_estimated"] is True
    assert (newest["tokens_in"], newest["tokens_out"]) == (1000, 256)
    assert newest["cost"] == pytest.approx(0.01 + 0.03 * 0.256)
    assert newest["decision_id"] == d.decision_id and newest["at_ms"] == MON + 1_000
    assert "user_id" not in newest  # absent ids are left out
    assert oldest["tokens_estimated"] is False and oldest["cost"] == pytest.approx(0.04)
    assert {k: oldest[k] for k in ("model_id", "endpoint_id", "workspace_id", "agent_type", "user_id",
                                   "request_id", "success", "attempt", "latency_ms")} == {
        "model_id": "big", "endpoint_id": "big-1", "workspace_id": "ws", "agent_type": "writer",
        "user_id": "ann", "request_id": "req-1", "success": True, "attempt": 1, "latency_ms": 10.0}
    assert len(r.recent_requests(1)) == 1 and r.recent_requests(0) == []
    assert len(r.recent_requests()) == 2


def test_analytics_totals_and_series() -> None:
    r, clock = router()
    spend_4_cents(r)
    d = r.route(model="big", workspace_id="ws")
    r.report(d, status_code=500, latency_ms=200, prompt_tokens=10, completion_tokens=0)
    clock.advance(60_000)
    a = r.analytics("workspace", "ws", "24h")
    assert a["dimension"] == "workspace" and a["key"] == "ws"
    assert a["to_ms"] == MON + 60_000 and a["from_ms"] <= MON
    t = a["totals"]
    assert (t["requests"], t["successes"], t["failures"]) == (2, 1, 1)
    assert t["success_rate"] == pytest.approx(0.5)
    assert (t["tokens_in"], t["tokens_out"]) == (1010, 1000)
    assert t["cost"] == pytest.approx(0.04 + 0.0001)
    for k in ("latency_mean_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
        assert isinstance(t[k], float), k
    assert t["latency_mean_ms"] == pytest.approx(105.0)
    # Percentiles take the lower of two neighbouring samples (rank floor(q * (n - 1))).
    assert t["latency_p50_ms"] == pytest.approx(10.0, rel=0.01)
    assert t["latency_p50_ms"] <= t["latency_p95_ms"] <= t["latency_p99_ms"] <= 200.0
    # One point per bucket: (start ms, totals).
    assert a["bucket_ms"] > 0
    assert sum(p[1]["requests"] for p in a["series"]) == 2
    assert all(len(p) == 2 and isinstance(p[0], int) for p in a["series"])
    # Other dimensions and the default range (24h); a key without usage has zero totals.
    m = r.analytics("model", "big")
    assert m["totals"]["requests"] == 2 and m["dimension"] == "model"
    assert r.analytics("endpoint", "big-1", time_range="7d")["totals"]["requests"] == 2
    assert r.analytics("user", "nobody", "30m")["totals"]["requests"] == 0
    assert r.usage_keys("endpoint") == ["big-1"]
    assert r.usage_keys("workspace") == ["ws"]
    assert r.usage_keys("agent_type") == []


# ---- budgets --------------------------------------------------------------------------------


def test_reject_budget_raises_budget_exceeded_and_rolls_over_at_utc_midnight() -> None:
    # Sunday 23:59 UTC: the daily window ends at MON.
    r, clock = router(MON - 60_000)
    r.set_workspace_config("ws", {"budget_limits": {"daily": 0.08}})
    events: list[dict[str, Any]] = []
    r.subscribe(events.append)
    spend_4_cents(r)
    spend_4_cents(r)
    with pytest.raises(mr.BudgetExceeded) as e:
        spend_4_cents(r)
    err = e.value
    assert err.kind == "budget_exceeded" and type(err) is mr.BudgetExceeded
    assert (err.scope, err.id, err.window) == ("workspace", "ws", "daily")
    assert err.resets_at_ms == MON and err.limit == pytest.approx(0.08)
    assert err.spent == pytest.approx(0.08)
    assert err.field is None and "daily budget" in str(err)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is mr.BudgetExceeded and back.__dict__ == err.__dict__
    # The event of the report that reached the limit, as a dict.
    exceeded = [ev for ev in events if ev["type"] == "budget_exceeded"]
    assert len(exceeded) == 1
    assert {k: exceeded[0][k] for k in ("scope", "id", "window", "mode")} == {
        "scope": "workspace", "id": "ws", "window": "daily", "mode": "reject"}
    assert exceeded[0]["limit"] == pytest.approx(0.08) and exceeded[0]["at_ms"] == MON - 60_000
    # Still the old window one millisecond before midnight; a fresh one at midnight.
    clock.set(MON - 1)
    with pytest.raises(mr.BudgetExceeded):
        spend_4_cents(r)
    clock.set(MON)
    spend_4_cents(r)
    [daily] = r.budget_status("workspace", "ws")
    assert daily["spent"] == pytest.approx(0.04) and daily["resets_at_ms"] == MON + DAY


def test_budget_status_per_scope() -> None:
    r, _ = router(budgets=[{"scope": "provider", "id": "openai", "weekly": 1.0, "monthly": 3.0}])
    r.set_workspace_config("ws", {"budgetLimits": {"daily": 1.0, "weekly": 5.0, "mode": "shadow"}})
    spend_4_cents(r)
    ws = r.budget_status("workspace", "ws")
    assert [s["window"] for s in ws] == ["daily", "weekly"]
    assert ws[0] == {"scope": "workspace", "id": "ws", "window": "daily", "limit": 1.0,
                     "spent": pytest.approx(0.04), "resets_at_ms": MON + DAY, "mode": "shadow"}
    assert ws[1]["resets_at_ms"] == MON + 7 * DAY
    provider = r.budget_status("provider", "openai")
    assert [(s["window"], s["mode"]) for s in provider] == [("weekly", "reject"), ("monthly", "reject")]
    assert provider[0]["spent"] == pytest.approx(0.04)
    # December 2026 starts on a Tuesday.
    assert provider[1]["resets_at_ms"] == MON + 8 * DAY
    assert r.budget_status("model", "big") == [] and r.budget_status("workspace", "other") == []


def test_downgrade_mode_chooses_the_cheaper_model_and_says_so() -> None:
    r, _ = router()
    r.set_workspace_config("ws", {"budget_limits": {"daily": 0.10, "mode": "downgrade", "downgrade_at": 0.5}})
    assert r.workspace_config("ws")["budget_limits"]["mode"] == "downgrade"
    assert {r.route(workspace_id="ws", strategy="round_robin").model_id for _ in range(10)} == {"big", "small"}
    spend_4_cents(r)
    spend_4_cents(r)
    for _ in range(10):
        d = r.route(workspace_id="ws", strategy="round_robin")
        assert d.model_id == "small"
        assert "budget downgrade" in d.reason, d.reason
    x = r.explain(workspace_id="ws", strategy="round_robin")
    assert any("cheapest models only" in n for n in x["accounting"]), x["accounting"]
    # Past the limit, downgrade still serves: it never rejects.
    for _ in range(3):
        spend_4_cents(r)
    assert r.route(workspace_id="ws").model_id == "small"


def test_shadow_budget_alerts_and_spent_model_budget() -> None:
    r, _ = router(budgets=[{"scope": "model", "id": "big", "daily": 0.04}])
    r.set_workspace_config("ws", {"budget_limits": {"daily": 0.05, "mode": "shadow", "alert_at": [0.5]}})
    with r.events(timeout=0) as stream:
        spend_4_cents(r)
        seen = [(e["type"], e["scope"], e.get("threshold")) for e in stream.drain()]
    # The workspace crossed its one alert share (0.8 of its limit spent); the model budget
    # crossed the default shares (0.5, 0.8, 0.9) and its limit.
    assert sorted(seen, key=str) == sorted([
        ("budget_threshold_crossed", "workspace", 0.5),
        ("budget_threshold_crossed", "model", 0.5),
        ("budget_threshold_crossed", "model", 0.8),
        ("budget_threshold_crossed", "model", 0.9),
        ("budget_exceeded", "model", None),
    ], key=str), seen
    # The model budget (reject) is spent: `big` is left out of routing by type, and named it fails.
    assert {r.route(strategy="round_robin").model_id for _ in range(6)} == {"small"}
    assert any("model `big` left out" in n for n in r.explain()["accounting"])
    with pytest.raises(mr.NoCandidateModel):
        r.route(model="big")


# ---- rate limits ----------------------------------------------------------------------------


def test_per_user_rpm_raises_rate_limited_then_admits_at_the_rate() -> None:
    r, clock = router(rate_limits=[{"scope": "user", "rpm": 100}])
    stream = r.events(timeout=0)
    seen: list[dict[str, Any]] = []
    r.subscribe(seen.append)
    for _ in range(100):
        r.route(model="small", user_id="bob").release()
    with pytest.raises(mr.RateLimited) as e:
        r.route(model="small", user_id="bob")
    err = e.value
    assert type(err) is mr.RateLimited and err.kind == "rate_limited"
    assert err.key == "user:bob:rpm" and err.retry_after_ms == 600 and err.field is None
    assert pickle.loads(pickle.dumps(err)).__dict__ == err.__dict__
    assert seen == [{"type": "rate_limited", "key": "user:bob:rpm", "retry_after_ms": 600, "at_ms": MON}]
    assert stream.drain() == seen
    # Another user has a limit of their own; bob waits 600 ms.
    r.route(model="small", user_id="ann").release()
    clock.advance(599)
    with pytest.raises(mr.RateLimited):
        r.route(model="small", user_id="bob")
    clock.advance(1)
    r.route(model="small", user_id="bob").release()


def test_api_key_limits_read_the_api_key_keyword() -> None:
    r, _ = router(rate_limits=[{"scope": "api_key", "rpm": 2}])
    for request in ({"api_key": "k1"}, {"apiKey": "k1"}):  # fast path, then the alias through serde
        r.route(request, model="small").release()
    with pytest.raises(mr.RateLimited) as e:
        r.route(model="small", api_key="k1")
    assert e.value.key == "api_key:k1:rpm"
    r.route(model="small", api_key="k2").release()
    r.route(model="small").release()  # no key: not counted


def test_endpoint_rpm_cap_takes_it_out_while_saturated() -> None:
    p = policy()
    p["endpoints"].append({"id": "big-2", "model_id": "big", "url": "http://big2"})
    p["endpoints"][0]["rpm"] = 2
    clock = mr.ManualClock(MON)
    r = mr.Router(p, clock=clock)
    picks = [r.route(model="big", strategy="round_robin").endpoint_id for _ in range(8)]
    assert picks.count("big-1") == 2, picks
    assert r.endpoint("big-1")["rpm"] == 2


# ---- experiments ----------------------------------------------------------------------------


def test_experiment_names_a_winner_only_when_significant() -> None:
    r, _ = router(experiments=[{
        "id": "ab", "min_samples": 200,
        "variants": [{"name": "control", "model_id": "big", "weight": 50},
                     {"name": "treatment", "model_id": "small", "weight": 50}],
    }])
    concluded: list[dict[str, Any]] = []
    r.subscribe(lambda e: concluded.append(e) if e["type"] == "experiment_concluded" else None)
    # The treatment succeeds 95% of the time, the control 80%.
    n = [0, 0]
    u = 0
    while min(n) < 400:
        u += 1
        d = r.route(user_id=f"u{u}")
        assert "experiment `ab` variant" in d.reason, d.reason
        t = int(d.model_id == "small")
        n[t] += 1
        ok = n[t] % 20 != 0 if t == 1 else n[t] % 5 != 0
        if ok:
            r.report(d, success=True, latency_ms=100 + n[t] % 7)
        else:
            r.report(d, status_code=500, latency_ms=50)
        if max(n) < 150:
            assert r.experiment_results("ab")["winner"] is None, "too early"
    res = r.experiment_results("ab")
    assert res["experiment_id"] == "ab" and res["min_samples_reached"] is True
    assert res["winner"] == "treatment", res["verdict"]
    assert [v["name"] for v in res["variants"]] == ["control", "treatment"]
    assert [v["requests"] for v in res["variants"]] == n
    c = res["comparisons"][0]["success_rate"]
    assert c["p_value"] < 0.05 and c["diff"] > 0 and c["ci_low"] > 0
    assert [(e["experiment_id"], e["winner"]) for e in concluded] == [("ab", "treatment")]
    with pytest.raises(mr.NotFound) as e:
        r.experiment_results("nope")
    assert (e.value.resource, e.value.id) == ("experiment", "nope")


# ---- health at a glance ---------------------------------------------------------------------


def test_health_overview() -> None:
    p = policy()
    p["endpoints"] += [{"id": "big-2", "model_id": "big", "url": "http://big2"},
                       {"id": "big-3", "model_id": "big", "url": "http://big3"}]
    r = mr.Router(p, clock=mr.ManualClock(MON))
    r.update_head_status(head_id="big-2", status="degraded")
    r.update_head_status(head_id="big-3", status="draining")
    assert r.health_overview() == [
        {"model_id": "big", "endpoints": 3, "healthy": 1, "degraded": 1, "unavailable": 1},
        {"model_id": "small", "endpoints": 1, "healthy": 1, "degraded": 0, "unavailable": 0},
    ]
    assert mr.Router().health_overview() == []


# ---- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda r: r.analytics("region", "x"), "dimension"),
        (lambda r: r.analytics("Model", "big"), "dimension"),
        (lambda r: r.usage_keys("users"), "dimension"),
        (lambda r: r.analytics("model", "big", "1y"), "time_range"),
        (lambda r: r.analytics("model", "big", ""), "time_range"),
        (lambda r: r.analytics("model", "big", time_range="0h"), "time_range"),
        (lambda r: r.budget_status("team", "x"), "scope"),
        (lambda r: r.recent_requests(-1), "limit"),
    ],
)
def test_bad_values_raise_invalid_request_naming_the_argument(call: Any, field: str) -> None:
    r, _ = router()
    with pytest.raises(mr.InvalidRequest) as e:
        call(r)
    assert e.value.field == field and field in str(e.value)


def test_unknown_names_list_the_accepted_ones() -> None:
    r, _ = router()
    with pytest.raises(mr.InvalidRequest) as e:
        r.analytics("region", "x")
    assert e.value.reason == ("unknown dimension `region`; expected one of: "
                              "model, endpoint, workspace, agent_type, user")
    with pytest.raises(mr.InvalidRequest) as e:
        r.budget_status("team", "x")
    assert e.value.reason == "unknown scope `team`; expected one of: workspace, model, provider"


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda r: r.analytics(3, "big"), "dimension"),
        (lambda r: r.analytics("model", None), "key"),
        (lambda r: r.analytics("model", "big", 24), "time_range"),
        (lambda r: r.budget_status(None, "ws"), "scope"),
        (lambda r: r.recent_requests("10"), "limit"),
        (lambda r: r.experiment_results(1), "experiment_id"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_argument(call: Any, arg: str) -> None:
    r, _ = router()
    with pytest.raises(TypeError, match=f"'{arg}'"):
        call(r)


def test_invalid_accounting_policies_name_their_field() -> None:
    for extra, field in [
        ({"rate_limits": [{"scope": "user"}]}, "rate_limits[0].rps"),
        ({"rate_limits": [{"scope": "user", "rpm": 0}]}, "rate_limits[0].rpm"),
        ({"budgets": [{"scope": "model", "id": "big", "daily": -1.0}]}, "budgets[0].daily"),
        ({"usage": {"max_keys": 0}}, "usage.max_keys"),
        ({"experiments": [{"id": "x", "variants": [{"name": "a", "model_id": "big", "weight": 1}]}]},
         "experiments[0].variants"),
    ]:
        with pytest.raises(mr.InvalidConfig) as e:
            mr.Router(policy(**extra))
        assert e.value.field == field, (extra, e.value)
    r, _ = router()
    with pytest.raises(mr.InvalidConfig) as e:
        r.set_workspace_config("ws", {"budget_limits": {"daily": 1.0, "downgrade_at": 2.0}})
    assert e.value.field == "budget_limits.downgrade_at"
    with pytest.raises(mr.ParseError) as p:
        r.set_workspace_config("ws", {"budget_limits": {"daily": 1.0, "mode": "refuse"}})
    assert p.value.field == "budget_limits.mode"
    with pytest.raises(mr.ParseError) as p:
        r.route(model="small", api_key=3)
    assert p.value.field == "api_key"


def test_the_accounting_settings_round_trip() -> None:
    extra = {
        "usage": {"recent_requests": 5, "default_output_tokens": 100},
        "budgets": [{"scope": "model", "id": "big", "daily": 2.0, "mode": "shadow"}],
        "rate_limits": [{"scope": "workspace", "tpm": 1000}],
        "experiments": [{"id": "ab", "variants": [{"name": "a", "model_id": "big", "weight": 1},
                                                  {"name": "b", "model_id": "small", "weight": 1}]}],
    }
    r, _ = router(**extra)
    c = r.config()
    assert c["usage"]["recent_requests"] == 5 and c["budgets"][0]["mode"] == "shadow"
    assert c["rate_limits"][0]["tpm"] == 1000 and c["experiments"][0]["id"] == "ab"
    again = mr.Router(r.policy())
    assert again.config() == c
    for _ in range(7):
        r.route(model="small").release()
    d = r.route(model="small")
    r.report(d, success=True, latency_ms=1)
    assert len(r.recent_requests(100)) == 1
