"""model_router: routing for AI model traffic, decided in Rust.

Which model and which endpoint (a *head*: one serving instance of a model) should take a
request, in well under a microsecond, learning from what happened::

    from model_router import Router

    router = Router({
        "models": [{"id": "gpt-4", "provider": "openai"}],
        "endpoints": [
            {"id": "east", "model_id": "gpt-4", "url": "http://10.0.0.1/v1", "region": "us-east"},
            {"id": "west", "model_id": "gpt-4", "url": "http://10.0.0.2/v1", "region": "eu-west"},
        ],
    })
    d = router.route(model="gpt-4", region_preference="eu-west", strategy="geo_preferred")
    router.report(d, success=True, latency_ms=812, prompt_tokens=25, completion_tokens=100)

Everything here is re-exported from the native module ``model_router._native`` (Rust, pyo3);
see the README for the whole API, the errors and the threading rules.
"""

from ._native import (
    ERROR_CLASSES,
    STRATEGIES,
    AlreadyExists,
    AlreadyReported,
    BudgetExceeded,
    Decision,
    EventStream,
    FallbacksExhausted,
    InvalidConfig,
    InvalidPolicy,
    InvalidRequest,
    ManualClock,
    ModelRouterError,
    NoCandidateModel,
    NoHealthyEndpoint,
    NotFound,
    ParseError,
    RateLimited,
    Routed,
    Router,
    StoreError,
    __version__,
    seed_thread,
)

__all__ = [
    "ERROR_CLASSES",
    "STRATEGIES",
    "AlreadyExists",
    "AlreadyReported",
    "BudgetExceeded",
    "Decision",
    "EventStream",
    "FallbacksExhausted",
    "InvalidConfig",
    "InvalidPolicy",
    "InvalidRequest",
    "ManualClock",
    "ModelRouterError",
    "NoCandidateModel",
    "NoHealthyEndpoint",
    "NotFound",
    "ParseError",
    "RateLimited",
    "Routed",
    "Router",
    "StoreError",
    "__version__",
    "seed_thread",
]
