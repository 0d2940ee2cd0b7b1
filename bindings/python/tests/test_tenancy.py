"""Agent preferences and workspace configuration (router-core/tests/tenancy.rs)."""

import pytest

import model_router as mr


def fleet() -> dict:
    return {
        "models": [
            {"id": "gpt-4", "provider": "openai", "compliance_labels": ["gdpr", "ccpa", "hipaa"],
             "capabilities": [{"type": "text-generation"}]},
            {"id": "claude-3-sonnet", "provider": "anthropic", "compliance_labels": ["gdpr", "ccpa"],
             "capabilities": [{"type": "text-generation"}]},
            {"id": "gpt-3.5-turbo", "provider": "openai", "capabilities": [{"type": "text-generation"}]},
        ],
        "endpoints": [
            {"id": "gpt4", "model_id": "gpt-4", "url": "http://gpt4"},
            {"id": "claude", "model_id": "claude-3-sonnet", "url": "http://claude"},
            {"id": "cheap", "model_id": "gpt-3.5-turbo", "url": "http://cheap"},
        ],
    }


SEED_AGENT = {
    "preferredModels": ["gpt-4", "claude-3-sonnet"],
    "fallbackModels": ["gpt-3.5-turbo"],
    "requiredCapabilities": ["text-generation"],
    "performanceRequirements": {"maxLatency": 5000, "minSuccessRate": 0.95, "maxCostPerToken": 0.01},
}

SEED_WORKSPACE = {
    "modelRestrictions": ["gpt-4", "claude-3-sonnet"],
    "budgetLimits": {"daily": 100, "weekly": 500, "monthly": 2000},
    "qualityRequirements": {"minSuccessRate": 0.95, "maxLatency": 5000},
    "complianceRequirements": ["gdpr", "ccpa", "hipaa"],
}


def test_agent_preferences_choose_candidates() -> None:
    r = mr.Router(fleet())
    r.set_agent_preferences("creative", SEED_AGENT)
    seen = {r.route(agent_type="creative", strategy="round_robin").model_id for _ in range(50)}
    assert seen == {"gpt-4", "claude-3-sonnet"}
    assert r.agent_preferences("creative")["fallback_models"] == ["gpt-3.5-turbo"]
    assert [m["id"] for m in r.models_for_agent("creative")] == ["gpt-4", "claude-3-sonnet"]
    r.remove_agent_preferences("creative")
    assert r.agent_preferences("creative") is None


def test_workspace_config_filters_and_errors() -> None:
    r = mr.Router(fleet())
    r.set_workspace_config("ws-marketing-001", SEED_WORKSPACE)
    seen = {r.route(workspace_id="ws-marketing-001").model_id for _ in range(50)}
    assert seen == {"gpt-4"}
    with pytest.raises(mr.NoCandidateModel, match="compliance"):
        r.route(model="claude-3-sonnet", workspace_id="ws-marketing-001")
    with pytest.raises(mr.InvalidConfig) as e:
        r.set_workspace_config("ws", {"qualityRequirements": {"minSuccessRate": 2}})
    assert e.value.field == "quality_requirements.min_success_rate"
    assert r.workspace_config("ws") is None
    assert r.workspace_config("ws-marketing-001")["budget_limits"]["monthly"] == 2000
