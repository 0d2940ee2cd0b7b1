"""Shared helpers: small policies and routers, deterministic where it matters."""

from __future__ import annotations

from typing import Any

import pytest

import model_router as mr


def fleet(n: int = 3, *, model: str = "m", weights: list[float] | None = None, **settings: Any) -> dict[str, Any]:
    """A policy with one chat model and `n` endpoints `e0..e{n-1}` (weights optional)."""
    endpoints = []
    for i in range(n):
        e: dict[str, Any] = {"id": f"e{i}", "model_id": model, "url": f"http://10.0.0.{i}/v1"}
        if weights is not None:
            e["weight"] = weights[i]
        endpoints.append(e)
    return {"models": [{"id": model, "provider": "test"}], "endpoints": endpoints, **settings}


DESIGN_POLICY: dict[str, Any] = {
    "models": [
        {"id": "gpt-4", "provider": "openai", "model_type": "chat",
         "pricing": {"input_per_1k": 0.01, "output_per_1k": 0.03}},
        {"id": "claude-3-sonnet", "provider": "anthropic", "model_type": "chat",
         "pricing": {"input_per_1k": 0.003, "output_per_1k": 0.015}},
    ],
    "endpoints": [
        {"id": "gpt4-east", "model_id": "gpt-4", "url": "http://10.0.0.1/v1", "region": "us-east"},
        {"id": "gpt4-west", "model_id": "gpt-4", "url": "http://10.0.0.2/v1", "region": "eu-west"},
        {"id": "claude-east", "model_id": "claude-3-sonnet", "url": "http://10.0.0.3/v1", "region": "us-east"},
    ],
    "default_strategy": "power_of_two",
}


@pytest.fixture
def clock() -> mr.ManualClock:
    return mr.ManualClock(1_700_000_000_000)


@pytest.fixture
def router(clock: mr.ManualClock) -> mr.Router:
    """The DESIGN.md policy on a manual clock."""
    return mr.Router(DESIGN_POLICY, clock=clock)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Reproducible random picks on the test's thread."""
    mr.seed_thread(7)


def status(router: mr.Router, endpoint_id: str) -> dict[str, Any]:
    return router.endpoint_status(endpoint_id)
