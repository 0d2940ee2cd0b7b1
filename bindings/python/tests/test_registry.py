"""Registry: models, endpoints, filters, policy import/export, settings, head status, heartbeats
(router-core/tests/registry.rs)."""

from __future__ import annotations

import json
import pathlib

import pytest

import model_router as mr
from conftest import DESIGN_POLICY, fleet


def test_register_update_deregister_models_and_endpoints(router: mr.Router) -> None:
    g = router.generation
    assert router.register_model({"id": "claude-3-haiku", "provider": "anthropic", "tags": ["fast"],
                                  "capabilities": [{"kind": "vision", "max_tokens": 200000}]}) == "claude-3-haiku"
    assert router.register_endpoint({"id": "haiku-1", "model_id": "claude-3-haiku", "url": "http://h/v1",
                                     "region": "eu-west", "capacity": 8}) == "haiku-1"
    assert router.generation == g + 2
    assert router.model("claude-3-haiku")["tags"] == ["fast"]
    assert router.endpoint("haiku-1")["capacity"] == 8
    assert router.model("nope") is None and router.endpoint("nope") is None

    updated = dict(router.endpoint("haiku-1"), weight=3.0)
    assert router.update_endpoint(updated) == "haiku-1"
    assert router.endpoint("haiku-1")["weight"] == 3.0
    m = router.model("claude-3-haiku")
    m["status"] = "deprecated"
    router.update_model(m)
    assert router.model("claude-3-haiku")["status"] == "deprecated"

    router.deregister_endpoint("haiku-1")
    assert router.endpoint("haiku-1") is None
    router.deregister_model("claude-3-haiku")
    assert router.model("claude-3-haiku") is None
    with pytest.raises(mr.NotFound) as e:
        router.deregister_model("claude-3-haiku")
    assert (e.value.resource, e.value.id) == ("model", "claude-3-haiku")


def test_seed_bodies_register_as_written(router: mr.Router) -> None:
    """The routing service's camelCase bodies parse as written (aliases come from the core)."""
    mid = router.register_model({
        "name": "GPT-4 Turbo", "version": "gpt-4-1106-preview", "provider": "openai", "modelType": "chat",
        "capabilities": [{"type": "text-generation", "maxTokens": 4096}], "status": "active",
    })
    assert mid == "gpt-4-1106-preview"
    eid = router.register_endpoint('{"id": "t1", "modelId": "gpt-4-1106-preview", "url": "https://x", '
                                   '"type": "canary", "healthCheckUrl": "https://x/health"}')
    assert router.endpoint(eid)["kind"] == "canary"


def test_register_endpoints_is_all_or_none(router: mr.Router) -> None:
    g = router.generation
    with pytest.raises(mr.InvalidConfig) as e:
        router.register_endpoints([
            {"id": "ok-1", "model_id": "gpt-4", "url": "http://a"},
            {"id": "bad", "model_id": "gpt-4", "url": "http://b", "weight": -1},
        ])
    assert e.value.field == "endpoints[1].weight"
    assert router.endpoint("ok-1") is None and router.generation == g
    assert router.register_endpoints([{"id": f"n{i}", "model_id": "gpt-4", "url": f"http://n{i}"}
                                      for i in range(3)]) == ["n0", "n1", "n2"]


def test_batch_model_status_is_all_or_none(router: mr.Router) -> None:
    with pytest.raises(mr.InvalidRequest) as e:
        router.set_model_statuses([{"model_id": "gpt-4", "status": "inactive"},
                                   {"model_id": "ghost", "status": "inactive"}])
    assert e.value.field == "updates[1].model_id"
    assert router.model("gpt-4")["status"] == "active"
    router.set_model_statuses([{"modelId": "gpt-4", "status": "inactive"}])
    for _ in range(20):
        assert router.route().model_id == "claude-3-sonnet"


def test_filters(router: mr.Router) -> None:
    router.register_model({"id": "emb", "provider": "acme", "model_type": "embedding", "tags": ["cheap"]})
    router.register_endpoint({"id": "emb-0", "model_id": "emb", "url": "http://e", "region": "eu-west",
                              "kind": "fallback"})
    assert [m["id"] for m in router.list_models(provider="anthropic")] == ["claude-3-sonnet"]
    assert [m["id"] for m in router.list_models(model_type="embedding")] == ["emb"]
    assert [m["id"] for m in router.list_models(tag="cheap")] == ["emb"]
    assert [m["id"] for m in router.list_models(region="eu-west")] == ["gpt-4", "emb"]
    assert len(router.list_models()) == 3
    assert [e["id"] for e in router.list_endpoints(model_id="gpt-4")] == ["gpt4-east", "gpt4-west"]
    assert [e["id"] for e in router.list_endpoints(region="us-east", provider="anthropic")] == ["claude-east"]
    assert [e["id"] for e in router.list_endpoints(kind="fallback")] == ["emb-0"]
    router.update_head_status(head_id="gpt4-east", status="draining")
    assert [e["id"] for e in router.list_endpoints(status="draining")] == ["gpt4-east"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        router.list_models(colour="red")
    with pytest.raises(mr.ParseError) as e:
        router.list_endpoints(kind="primary-ish")
    assert e.value.field == "kind"


def test_policy_round_trips_through_export(router: mr.Router, tmp_path: pathlib.Path) -> None:
    exported = router.policy()
    assert [m["id"] for m in exported["models"]] == ["gpt-4", "claude-3-sonnet"]
    assert exported["default_strategy"] == "power_of_two"
    assert mr.Router(exported).policy() == exported
    assert mr.Router(json.dumps(exported)).policy() == exported
    assert mr.Router(json.dumps(exported).encode()).policy() == exported
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(exported))
    assert mr.Router(path).policy() == exported
    assert mr.Router(str(path)).policy() == exported
    assert mr.Router.from_file(path).policy() == exported
    assert mr.Router().policy()["models"] == []


def test_policy_files_fail_the_python_way(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        mr.Router.from_file(tmp_path / "missing.json")
    assert e.value.filename == str(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError):
        mr.Router(str(tmp_path / "missing.json"))
    yaml = tmp_path / "policy.yaml"
    yaml.write_text("models:\n  - {id: m, provider: p}\nendpoints:\n  - {id: e, model_id: m, url: 'http://e'}\n")
    assert mr.Router(yaml).route().endpoint_id == "e"
    yaml.write_text("models:\n  - id: [1]\n")
    with pytest.raises(mr.ParseError) as ye:
        mr.Router(yaml)
    assert "models[0]" in str(ye.value)
    broken = tmp_path / "broken.json"
    broken.write_text('{"endpoints": [{"id": "e", "model_id": "m", "url": "u", "weight": "heavy"}]}')
    with pytest.raises(mr.ParseError) as pe:
        mr.Router.from_file(broken)
    assert pe.value.field == "endpoints[0].weight" and pe.value.what == "policy"


def test_load_policy_replaces_everything_or_nothing(router: mr.Router) -> None:
    d = router.route(model="gpt-4")
    router.report(d, success=True, latency_ms=120)
    before = router.policy()
    g = router.generation
    bad = dict(before, endpoints=before["endpoints"] + [{"id": "x", "model_id": "ghost", "url": "u"}])
    with pytest.raises(mr.InvalidConfig) as e:
        router.load_policy(bad)
    assert e.value.field == "endpoints[3].model_id"
    assert router.policy() == before and router.generation == g

    smaller = dict(before, endpoints=before["endpoints"][:2], default_strategy="least_loaded")
    router.load_policy(smaller)
    assert router.config()["default_strategy"] == "least_loaded"
    assert [e["id"] for e in router.list_endpoints()] == ["gpt4-east", "gpt4-west"]
    # Endpoints that stay keep their live state.
    assert router.endpoint_status(d.endpoint_id)["requests"] == 1


def test_config_and_set_config(router: mr.Router) -> None:
    c = router.config()
    assert c["default_strategy"] == "power_of_two" and c["failover"]["max_attempts"] == 3
    c["default_strategy"] = "round_robin"
    router.set_config(c)
    assert router.route().strategy == "round_robin"
    g = router.generation
    with pytest.raises(mr.InvalidConfig) as e:
        router.set_config(dict(c, breaker=dict(c["breaker"], failure_rate_threshold=2.0)))
    assert e.value.field == "breaker.failure_rate_threshold"
    assert router.config() == c and router.generation == g


def test_head_status_updates_apply_in_order(router: mr.Router) -> None:
    assert router.update_head_status(head_id="gpt4-east", status="draining", current_load=3,
                                     timestamp=1_700_000_000) is True
    for _ in range(20):
        assert router.route(model="gpt-4").endpoint_id == "gpt4-west"
    # An older report is ignored.
    assert router.update_head_status({"head_id": "gpt4-east", "status": "healthy", "timestamp": 1_600_000_000}) is False
    assert router.endpoint_status("gpt4-east")["status"] == "draining"
    assert router.update_head_status({"head_id": "gpt4-east", "status": "healthy"}, timestamp=1_700_000_001) is True
    assert router.endpoint_status("gpt4-east")["status"] == "healthy"
    with pytest.raises(mr.NotFound):
        router.update_head_status(head_id="ghost", status="healthy")
    with pytest.raises(mr.ParseError) as e:
        router.update_head_status(head_id="gpt4-east", status="sleepy")
    assert e.value.field == "status"
    with pytest.raises(mr.ParseError) as e:
        router.update_head_status(head_id="gpt4-east", status="healthy", current_load=-1)
    assert e.value.field == "current_load"


def test_heartbeats_expire_heads_and_revive_them(clock: mr.ManualClock) -> None:
    r = mr.Router(fleet(3, heartbeat_ttl_ms=1_000), clock=clock)
    assert r.clock is clock
    clock.advance(500)
    r.heartbeat("e1")
    clock.advance(700)
    assert r.sweep() == ["e0", "e2"]
    assert r.sweep() == []
    for _ in range(10):
        assert r.route().endpoint_id == "e1"
    clock.advance(2_000)
    assert sorted(r.sweep()) == ["e1"]
    with pytest.raises(mr.NoHealthyEndpoint) as e:
        r.route()
    assert e.value.model == "type chat" and "heartbeat" in e.value.reason
    r.heartbeat("e2")
    assert r.route().endpoint_id == "e2"
    with pytest.raises(mr.NotFound):
        r.heartbeat("ghost")


def test_design_policy_loads(router: mr.Router) -> None:
    assert router.policy()["endpoints"] == [dict(e, kind="primary", weight=1.0) for e in DESIGN_POLICY["endpoints"]]
