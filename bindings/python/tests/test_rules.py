"""Routing rules through the binding (router-core/tests/rules.rs)."""

from __future__ import annotations

import json
import pathlib
from collections import Counter
from typing import Any

import pytest

import model_router as mr

SEED_RULE = json.loads(
    (pathlib.Path(__file__).resolve().parents[3] / "router-core" / "tests" / "fixtures" / "seed_rule.json").read_text()
)


def fleet(rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "models": [{"id": "claude-3-sonnet"}, {"id": "gpt-4"}, {"id": "gpt-3.5-turbo"}],
        "endpoints": [
            {"id": "claude-a", "model_id": "claude-3-sonnet", "url": "http://claude-a"},
            {"id": "claude-b", "model_id": "claude-3-sonnet", "url": "http://claude-b"},
            {"id": "claude-canary", "model_id": "claude-3-sonnet", "url": "http://claude-canary", "kind": "canary"},
            {"id": "gpt4", "model_id": "gpt-4", "url": "http://gpt4"},
            {"id": "gpt35", "model_id": "gpt-3.5-turbo", "url": "http://gpt35"},
        ],
        "rules": rules if rules is not None else [SEED_RULE],
    }


def creative(length: int) -> dict[str, Any]:
    return {"agent_type": "creative", "request_type": "completion", "content_length": length,
            "strategy": "weighted_random"}


def test_the_seed_rule_routes_as_written() -> None:
    r = mr.Router(fleet())
    assert r.rules()[0]["id"] == "rule-1"
    n = 20_000
    eps = Counter(r.route(**creative(500)).endpoint_id for _ in range(n))
    assert "gpt35" not in eps
    assert abs(eps["claude-canary"] / n - 0.20) < 0.015
    assert abs(eps["gpt4"] / n - 0.8 * 0.3) < 0.02
    d = r.route(creative(500))
    assert d.rule_id == "rule-1" and "rule `rule-1` matched" in d.reason and d.to_dict()["rule_id"] == "rule-1"
    # Outside the condition: every active chat model, no rule.
    d = r.route(**creative(5_000))
    assert d.rule_id is None
    assert "gpt35" in {r.route(**creative(5_000)).endpoint_id for _ in range(300)}
    # A request that names a model bypasses rules.
    assert r.route(model="gpt-3.5-turbo", agent_type="creative").rule_id is None


def test_rule_crud_priority_and_disable() -> None:
    r = mr.Router(fleet([]))
    assert r.rules() == []
    low = {"id": "to-gpt35", "target_models": [{"model_id": "gpt-3.5-turbo"}], "priority": 1}
    high = {"id": "to-gpt4", "targetModels": [{"modelId": "gpt-4"}], "priority": 10,
            "condition": {"agent_type": ["coder"]}}
    assert r.add_rule(low) == "to-gpt35"
    assert r.add_rule(json.dumps(high)) == "to-gpt4"
    assert r.route(agent_type="coder").model_id == "gpt-4"
    assert r.route(agent_type="writer").model_id == "gpt-3.5-turbo"
    r.update_rule(dict(high, enabled=False))
    assert r.route(agent_type="coder").model_id == "gpt-3.5-turbo"
    assert [x["enabled"] for x in r.rules()] == [True, False]
    r.delete_rule("to-gpt35")
    assert [x["id"] for x in r.rules()] == ["to-gpt4"]
    assert r.route(agent_type="writer").rule_id is None
    assert r.policy()["rules"] == r.rules()
    assert "rules=1" in repr(r)
    with pytest.raises(mr.NotFound):
        r.delete_rule("to-gpt35")
    with pytest.raises(mr.AlreadyExists):
        r.add_rule(dict(high, enabled=True))


def test_bad_rules_are_rejected_naming_the_field() -> None:
    r = mr.Router(fleet([]))
    g = r.generation
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"target_models": [{"model_id": "ghost"}]}, mr.InvalidConfig, "target_models[0].model_id"),
        ({"target_models": [{"model_id": "gpt-4", "weight": -1}]}, mr.InvalidConfig, "target_models[0].weight"),
        ({"target_models": [{"model_id": "gpt-4"}], "traffic_split": {"primary": 50, "canary": 10}},
         mr.InvalidConfig, "traffic_split"),
        ({"target_models": [{"model_id": "gpt-4"}], "priority": "high"}, mr.ParseError, "priority"),
        ({"target_models": "gpt-4"}, mr.ParseError, "target_models"),
    ]
    for rule, exc, field in cases:
        with pytest.raises(exc) as e:
            r.add_rule(rule)
        assert e.value.field == field, (rule, e.value)
    assert r.rules() == [] and r.generation == g
    r.add_rule({"id": "x", "target_models": [{"model_id": "gpt-4"}]})
    with pytest.raises(mr.ModelRouterError):
        r.deregister_model("gpt-4")  # a rule targets it


def test_explain_shows_rules() -> None:
    r = mr.Router(fleet())
    e = r.explain(**creative(500))
    assert e["matched_rule"] == "rule-1"
    assert [x["matched"] for x in e["rules"]] == [True]
    e = r.explain(**creative(5_000))
    assert e["matched_rule"] is None and e["rules"][0]["mismatch"]
