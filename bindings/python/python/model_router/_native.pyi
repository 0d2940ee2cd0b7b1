# Type stubs of the native module (Rust, pyo3). Checked against the built module by
# `python -m mypy.stubtest model_router` (scripts/test).
import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal, TypedDict, Union, final

from typing_extensions import Self

__all__ = [
    "Router",
    "Decision",
    "Routed",
    "EventStream",
    "ManualClock",
    "ModelRouterError",
    "InvalidConfig",
    "InvalidRequest",
    "ParseError",
    "NotFound",
    "AlreadyExists",
    "NoCandidateModel",
    "NoHealthyEndpoint",
    "AlreadyReported",
    "FallbacksExhausted",
    "BudgetExceeded",
    "RateLimited",
    "InvalidPolicy",
    "StoreError",
    "seed_thread",
    "STRATEGIES",
    "ERROR_CLASSES",
    "__version__",
]

__version__: Final[str]
STRATEGIES: Final[tuple[str, ...]]
ERROR_CLASSES: Final[tuple[str, ...]]

# A document: a mapping read as JSON, or JSON text.
_Document = Union[Mapping[str, Any], str, bytes]
# A policy: a document, or the path of a JSON file.
_Policy = Union[Mapping[str, Any], str, bytes, os.PathLike[str]]

class _Fallback(TypedDict):
    model_id: str
    endpoint_id: str
    url: str

class _ProbeTarget(TypedDict):
    endpoint_id: str
    url: str

class _ModelHealth(TypedDict):
    model_id: str
    endpoints: int
    healthy: int
    degraded: int
    unavailable: int

class _BudgetStatus(TypedDict):
    scope: Literal["workspace", "model", "provider"]
    id: str
    window: Literal["daily", "weekly", "monthly"]
    limit: float
    spent: float
    resets_at_ms: int
    mode: Literal["reject", "downgrade", "shadow"]

_Dimension = Literal["model", "endpoint", "workspace", "agent_type", "user"]
_BudgetScope = Literal["workspace", "model", "provider"]

def seed_thread(seed: int) -> None: ...
@final
class ManualClock:
    def __new__(cls, start_ms: int | None = None) -> Self: ...
    def now_ms(self) -> int: ...
    def advance(self, ms: int) -> None: ...
    def set(self, ms: int) -> None: ...

@final
class Decision:
    @property
    def decision_id(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def endpoint_id(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def strategy(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def panic(self) -> bool: ...
    @property
    def probe(self) -> bool: ...
    @property
    def rule_id(self) -> str | None: ...
    @property
    def attempt(self) -> int: ...
    @property
    def fallbacks(self) -> list[_Fallback]: ...
    @property
    def region(self) -> str | None: ...
    @property
    def routed_at_ms(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def released(self) -> bool: ...
    def release(self) -> bool: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Routed:
    def __enter__(self) -> Decision: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> Literal[False]: ...

@final
class EventStream:
    def __iter__(self) -> Self: ...
    def __next__(self) -> dict[str, Any]: ...
    def poll(self) -> dict[str, Any] | None: ...
    def wait(self, timeout: float | None = None) -> dict[str, Any] | None: ...
    def drain(self) -> list[dict[str, Any]]: ...
    @property
    def dropped(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> Literal[False]: ...

@final
class Router:
    def __new__(
        cls,
        policy: _Policy | None = None,
        *,
        clock: ManualClock | None = None,
        redis_url: str | None = None,
        redis_prefix: str | None = None,
        redis_timeout_ms: int | None = None,
    ) -> Self: ...
    def store_health(self) -> dict[str, Any] | None: ...
    @staticmethod
    def from_file(path: str | os.PathLike[str], *, clock: ManualClock | None = None) -> Router: ...
    @property
    def generation(self) -> int: ...
    @property
    def clock(self) -> ManualClock | None: ...

    # ---- the decision loop
    def route(
        self,
        request: _Document | None = None,
        *,
        model: str | None = ...,
        model_type: str | None = ...,
        agent_type: str | None = ...,
        request_type: str | None = ...,
        workspace_id: str | None = ...,
        user_id: str | None = ...,
        region_preference: str | None = ...,
        strategy: str | None = ...,
        affinity_key: str | None = ...,
        api_key: str | None = ...,
        content_length: int | None = ...,
        estimated_tokens: int | None = ...,
        required_capabilities: Sequence[str] = ...,
        metadata: Mapping[str, Any] = ...,
        request_id: str | None = ...,
    ) -> Decision: ...
    def report(
        self,
        decision: Decision,
        *,
        latency_ms: float,
        success: bool | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        error: str | None = None,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        ttft_ms: float | None = None,
    ) -> None: ...
    def report_endpoint(
        self,
        endpoint_id: str,
        *,
        latency_ms: float,
        success: bool | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        error: str | None = None,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        ttft_ms: float | None = None,
    ) -> None: ...
    def next_fallback(
        self,
        decision: Decision,
        *,
        latency_ms: float,
        success: bool | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        error: str | None = None,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        ttft_ms: float | None = None,
    ) -> tuple[Decision, int]: ...
    def routed(
        self,
        request: _Document | None = None,
        *,
        model: str | None = ...,
        model_type: str | None = ...,
        agent_type: str | None = ...,
        request_type: str | None = ...,
        workspace_id: str | None = ...,
        user_id: str | None = ...,
        region_preference: str | None = ...,
        strategy: str | None = ...,
        affinity_key: str | None = ...,
        api_key: str | None = ...,
        content_length: int | None = ...,
        estimated_tokens: int | None = ...,
        required_capabilities: Sequence[str] = ...,
        metadata: Mapping[str, Any] = ...,
        request_id: str | None = ...,
    ) -> Routed: ...
    def explain(
        self,
        request: _Document | None = None,
        *,
        model: str | None = ...,
        model_type: str | None = ...,
        agent_type: str | None = ...,
        request_type: str | None = ...,
        workspace_id: str | None = ...,
        user_id: str | None = ...,
        region_preference: str | None = ...,
        strategy: str | None = ...,
        affinity_key: str | None = ...,
        api_key: str | None = ...,
        content_length: int | None = ...,
        estimated_tokens: int | None = ...,
        required_capabilities: Sequence[str] = ...,
        metadata: Mapping[str, Any] = ...,
        request_id: str | None = ...,
    ) -> dict[str, Any]: ...

    # ---- usage, budgets, experiments
    def recent_requests(self, limit: int = 100) -> list[dict[str, Any]]: ...
    def analytics(self, dimension: _Dimension, key: str, time_range: str = "24h") -> dict[str, Any]: ...
    def usage_keys(self, dimension: _Dimension) -> list[str]: ...
    def health_overview(self) -> list[_ModelHealth]: ...
    def budget_status(self, scope: _BudgetScope, id: str) -> list[_BudgetStatus]: ...
    def experiment_results(self, experiment_id: str) -> dict[str, Any]: ...

    # ---- registry
    def register_model(self, model: _Document) -> str: ...
    def update_model(self, model: _Document) -> str: ...
    def deregister_model(self, model_id: str) -> None: ...
    def set_model_statuses(self, updates: Sequence[Mapping[str, Any]] | str | bytes) -> None: ...
    def register_endpoint(self, endpoint: _Document) -> str: ...
    def register_endpoints(self, endpoints: Sequence[Mapping[str, Any]] | str | bytes) -> list[str]: ...
    def update_endpoint(self, endpoint: _Document) -> str: ...
    def deregister_endpoint(self, endpoint_id: str) -> None: ...
    def model(self, model_id: str) -> dict[str, Any] | None: ...
    def endpoint(self, endpoint_id: str) -> dict[str, Any] | None: ...
    def list_models(
        self,
        *,
        provider: str | None = ...,
        status: str | None = ...,
        model_type: str | None = ...,
        tag: str | None = ...,
        region: str | None = ...,
    ) -> list[dict[str, Any]]: ...
    def list_endpoints(
        self,
        *,
        model_id: str | None = ...,
        region: str | None = ...,
        kind: str | None = ...,
        status: str | None = ...,
        provider: str | None = ...,
    ) -> list[dict[str, Any]]: ...
    def endpoint_status(self, endpoint_id: str) -> dict[str, Any]: ...
    def endpoint_statuses(self) -> list[dict[str, Any]]: ...

    # ---- rules
    def add_rule(self, rule: _Document) -> str: ...
    def update_rule(self, rule: _Document) -> str: ...
    def delete_rule(self, rule_id: str) -> None: ...
    def rules(self) -> list[dict[str, Any]]: ...

    # ---- agents and workspaces
    def set_agent_preferences(self, agent_type: str, preferences: _Document) -> None: ...
    def remove_agent_preferences(self, agent_type: str) -> None: ...
    def agent_preferences(self, agent_type: str) -> dict[str, Any] | None: ...
    def set_workspace_config(self, workspace_id: str, config: _Document) -> None: ...
    def remove_workspace_config(self, workspace_id: str) -> None: ...
    def workspace_config(self, workspace_id: str) -> dict[str, Any] | None: ...
    def models_for_agent(self, agent_type: str) -> list[dict[str, Any]]: ...

    # ---- policy and settings
    def policy(self) -> dict[str, Any]: ...
    def load_policy(self, policy: _Policy, comment: str | None = None) -> int: ...
    @property
    def policy_version(self) -> int: ...
    def policy_versions(self) -> list[dict[str, Any]]: ...
    def policy_at(self, version: int) -> dict[str, Any]: ...
    def rollback(self, version: int) -> int: ...
    def config(self) -> dict[str, Any]: ...
    def set_config(self, config: _Document) -> None: ...

    # ---- head status, health, heartbeats
    def update_head_status(
        self,
        update: _Document | None = None,
        *,
        head_id: str = ...,
        status: str = ...,
        current_load: int | None = ...,
        timestamp: int | None = ...,
    ) -> bool: ...
    def report_health(
        self,
        target: str,
        report: _Document | None = None,
        *,
        status: str | None = ...,
        response_time: float | None = ...,
        error_rate: float | None = ...,
        availability: float | None = ...,
    ) -> int: ...
    def probe_targets(self) -> list[_ProbeTarget]: ...
    def record_probe(self, endpoint_id: str, ok: bool, latency_ms: float) -> None: ...
    def heartbeat(self, endpoint_id: str) -> None: ...
    def sweep(self) -> list[str]: ...

    # ---- events
    def subscribe(self, callback: Callable[[dict[str, Any]], object], *, decisions: bool = False) -> int: ...
    def unsubscribe(self, subscription: int) -> bool: ...
    def events(self, capacity: int = 1024, *, decisions: bool = False, timeout: float | None = None) -> EventStream: ...

class ModelRouterError(Exception):
    kind: str
    field: str | None

class InvalidConfig(ModelRouterError, ValueError):
    field: str
    reason: str

class InvalidPolicy(ModelRouterError, ValueError):
    field: str
    problems: list[dict[str, str]]

class InvalidRequest(ModelRouterError, ValueError):
    field: str
    reason: str

class ParseError(ModelRouterError, ValueError):
    what: str
    message: str

class NotFound(ModelRouterError, LookupError):
    resource: str
    id: str

class AlreadyExists(ModelRouterError):
    resource: str
    id: str

class NoCandidateModel(ModelRouterError):
    reason: str

class NoHealthyEndpoint(ModelRouterError):
    model: str
    reason: str

class AlreadyReported(ModelRouterError):
    decision_id: str

class FallbacksExhausted(ModelRouterError):
    attempts: int
    reason: str

class BudgetExceeded(ModelRouterError):
    scope: str
    id: str
    window: str
    limit: float
    spent: float
    resets_at_ms: int

class RateLimited(ModelRouterError):
    key: str
    retry_after_ms: int

class StoreError(ModelRouterError):
    store: str
    reason: str
