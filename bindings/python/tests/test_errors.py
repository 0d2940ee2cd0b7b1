"""Errors: one exception class per core error kind, their fields, wrong types across the
binding, and state left untouched by rejected calls (router-core/src/error.rs)."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest

import model_router as mr
from conftest import fleet

CLASSES: dict[str, tuple[type[mr.ModelRouterError], tuple[type[Exception], ...]]] = {
    "invalid_config": (mr.InvalidConfig, (ValueError,)),
    "invalid_policy": (mr.InvalidPolicy, (ValueError,)),
    "invalid_request": (mr.InvalidRequest, (ValueError,)),
    "parse": (mr.ParseError, (ValueError,)),
    "not_found": (mr.NotFound, (LookupError,)),
    "already_exists": (mr.AlreadyExists, ()),
    "no_candidate_model": (mr.NoCandidateModel, ()),
    "no_healthy_endpoint": (mr.NoHealthyEndpoint, ()),
    "already_reported": (mr.AlreadyReported, ()),
    "fallbacks_exhausted": (mr.FallbacksExhausted, ()),
    "budget_exceeded": (mr.BudgetExceeded, ()),
    "rate_limited": (mr.RateLimited, ()),
    "store": (mr.StoreError, ()),
}


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_each_class_has_its_kind_module_and_doc(kind: str) -> None:
    cls, extra = CLASSES[kind]
    assert issubclass(cls, mr.ModelRouterError) and issubclass(mr.ModelRouterError, Exception)
    assert all(issubclass(cls, b) for b in extra)
    assert cls.kind == kind and cls.__module__ == "model_router"
    assert cls.__doc__ and "Attributes" in cls.__doc__
    e = cls("hand-made")
    assert str(e) == "hand-made"
    assert pickle.loads(pickle.dumps(e)).args == ("hand-made",)


def raised(fn: Callable[[], object]) -> mr.ModelRouterError:
    with pytest.raises(mr.ModelRouterError) as e:
        fn()
    return e.value


def test_every_raisable_kind_carries_its_fields(clock: mr.ManualClock) -> None:
    r = mr.Router(fleet(2, max_fallbacks=0), clock=clock)
    cases: list[tuple[Callable[[], object], type[mr.ModelRouterError], dict[str, Any]]] = [
        (lambda: r.register_endpoint({"id": "x", "model_id": "m", "url": " "}),
         mr.InvalidConfig, {"field": "url", "reason": "must not be empty"}),
        (lambda: r.route(user_id="u" * 2000),
         mr.InvalidRequest, {"field": "user_id"}),
        (lambda: r.register_model('{"id": "m2", '),
         mr.ParseError, {"what": "model", "field": None}),
        (lambda: r.route(model="ghost"),
         mr.NotFound, {"resource": "model", "id": "ghost", "field": None}),
        (lambda: r.register_endpoint({"id": "e0", "model_id": "m", "url": "http://x"}),
         mr.AlreadyExists, {"resource": "endpoint", "id": "e0"}),
        (lambda: r.route(model_type="embedding"),
         mr.NoCandidateModel, {"reason": "no active model of type `embedding`"}),
        (lambda: r.route(required_capabilities=["vision"]),
         mr.NoCandidateModel, {}),
    ]
    for fn, cls, fields in cases:
        e = raised(fn)
        assert type(e) is cls, (e, cls)
        assert e.kind == cls.kind
        for k, v in fields.items():
            assert getattr(e, k) == v, (cls, k, getattr(e, k))
        assert type(e).__name__ in repr(e)
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is cls and back.__dict__ == e.__dict__ and str(back) == str(e)

    r.update_head_status(head_id="e0", status="offline")
    r.update_head_status(head_id="e1", status="draining")
    e = raised(lambda: r.route(model="m"))
    assert isinstance(e, mr.NoHealthyEndpoint)
    assert e.model == "m" and e.reason == "2 endpoints: 1 status offline, 1 status draining"

    r.update_head_status(head_id="e1", status="healthy")
    d = r.route()
    r.report(d, success=True, latency_ms=1)
    e = raised(lambda: r.report(d, success=True, latency_ms=1))
    assert isinstance(e, mr.AlreadyReported) and e.decision_id == d.decision_id

    d = r.route()
    e = raised(lambda: r.next_fallback(d, error="timeout", latency_ms=1))
    assert isinstance(e, mr.FallbacksExhausted) and e.attempts == 1 and e.reason == "no fallback can take traffic"


def test_errors_name_the_offending_field() -> None:
    with pytest.raises(mr.InvalidConfig) as e:
        mr.Router({"models": [{"id": "m", "pricing": {"input_per_1k": -1}}]})
    assert e.value.field == "models[0].pricing.input_per_1k" and "must be a finite number >= 0" in e.value.reason
    with pytest.raises(mr.ParseError) as p:
        mr.Router({"models": [{"id": "m"}], "endpoints": [{"id": "e", "model_id": "m", "url": "u", "capacity": "lots"}]})
    assert p.value.field == "endpoints[0].capacity" and p.value.what == "policy"
    assert "endpoints[0].capacity" in str(p.value)


# ---- wrong Python types across the binding -------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"content_length": "long"}, "content_length"),
        ({"content_length": -1}, "content_length"),
        ({"content_length": 2.5}, "content_length"),
        ({"content_length": True}, "content_length"),
        ({"estimated_tokens": 10**30}, "estimated_tokens"),
        ({"required_capabilities": "vision"}, "required_capabilities"),
        ({"required_capabilities": ["vision", 3]}, "required_capabilities[1]"),
        ({"required_capabilities": None}, "required_capabilities"),
        ({"strategy": "fastest"}, "strategy"),
        ({"strategy": 3}, "strategy"),
        ({"model": 42}, "model"),
        ({"metadata": ["not", "a", "dict"]}, "metadata"),
        ({"metadata": {"when": object()}}, "metadata.when"),
        ({"metadata": {"x": float("nan")}}, "metadata.x"),
        ({"metadata": {1: "int key"}}, "metadata"),
        ({"metadata": {"s": {1, 2}}}, "metadata.s"),
    ],
)
def test_wrong_request_types_raise_parse_errors_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    r = mr.Router(fleet(2))
    with pytest.raises(mr.ParseError) as e:
        r.route(**kwargs)
    assert e.value.field == field, e.value
    assert e.value.what == "route request"
    # The same request as a dict fails the same way.
    with pytest.raises(mr.ParseError) as e2:
        r.route(dict(kwargs))
    assert e2.value.field == field
    assert sum(s["in_flight"] for s in r.endpoint_statuses()) == 0


def test_unknown_keywords_are_type_errors_but_unknown_dict_keys_are_ignored() -> None:
    r = mr.Router(fleet(2))
    with pytest.raises(TypeError, match=r"route\(\) got an unexpected keyword argument 'modle'"):
        r.route(modle="m")
    with pytest.raises(TypeError, match=r"explain\(\) got an unexpected keyword argument 'x'"):
        r.explain(x=1)
    with pytest.raises(TypeError, match=r"routed\(\) got an unexpected keyword argument 'x'"):
        r.routed(x=1)
    with pytest.raises(TypeError, match="update_head_status"):
        r.update_head_status(head_id="e0", status="healthy", colour="red")
    assert r.route({"model": "m", "prompt": "ignored like any extra JSON field"}).model_id == "m"


@pytest.mark.parametrize(
    ("call", "exc", "field"),
    [
        (lambda r: r.register_model(5), mr.ParseError, None),
        (lambda r: r.register_model(["id", "m"]), mr.ParseError, None),
        (lambda r: r.register_model({"id": "x", "tags": "fast"}), mr.ParseError, "tags"),
        (lambda r: r.register_model({"id": "x", "status": True}), mr.ParseError, "status"),
        (lambda r: r.register_endpoint({"id": "x", "model_id": "m", "url": "u", "weight": "1"}), mr.ParseError, "weight"),
        (lambda r: r.register_endpoint({"id": "x", "model_id": "m", "url": "u", "weight": math.inf}), mr.ParseError, "weight"),
        (lambda r: r.register_endpoint({"id": "x", "model_id": "m", "url": b"u"}), mr.ParseError, "url"),
        (lambda r: r.register_endpoints({"id": "x"}), mr.ParseError, None),
        (lambda r: r.set_config({"breaker": {"enabled": "false"}}), mr.ParseError, "breaker.enabled"),
        (lambda r: r.set_model_statuses([{"model_id": "m", "status": "paused"}]), mr.ParseError, "updates[0].status"),
        (lambda r: r.register_endpoints([{"id": "x", "model_id": "m", "url": "u", "weight": None}]), mr.ParseError, "endpoints[0].weight"),
        (lambda r: r.report_health("e0", error_rate="high"), mr.ParseError, "error_rate"),
        (lambda r: r.report_health("e0", error_rate=1.5), mr.InvalidRequest, "error_rate"),
        (lambda r: r.record_probe("e0", True, -1.0), mr.InvalidRequest, "latency_ms"),
        (lambda r: r.events(capacity=0), mr.InvalidRequest, "capacity"),
        (lambda r: r.events(timeout=-1.0), mr.InvalidRequest, "timeout"),
    ],
)
def test_wrong_documents_raise_typed_errors(call: Callable[[mr.Router], object], exc: type[Exception], field: str | None) -> None:
    r = mr.Router(fleet(2))
    before, g = r.policy(), r.generation
    with pytest.raises(exc) as e:
        call(r)
    assert getattr(e.value, "field", None) == field
    assert r.policy() == before and r.generation == g


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"latency_ms": "fast", "success": True}, TypeError, "latency_ms"),
        ({"latency_ms": 1, "success": "yes"}, TypeError, "success"),
        ({"latency_ms": 1, "prompt_tokens": 1.5, "success": True}, TypeError, "prompt_tokens"),
        ({"latency_ms": 1}, TypeError, "success=, error= or status_code="),
        ({"latency_ms": 1, "error": "boom"}, mr.InvalidRequest, "error"),
        ({"latency_ms": 1, "error": "timeout", "success": True}, mr.InvalidRequest, "success"),
        ({"latency_ms": 1, "status_code": 503, "success": True}, mr.InvalidRequest, "success"),
        ({"latency_ms": 1, "status_code": 42}, mr.InvalidRequest, "status_code"),
        ({"latency_ms": 1, "success": True, "prompt_tokens": -1}, mr.InvalidRequest, "prompt_tokens"),
        ({"latency_ms": 1, "status_code": 429, "retry_after_s": -3}, mr.InvalidRequest, "retry_after_s"),
        ({"latency_ms": math.nan, "success": True}, mr.InvalidRequest, "latency_ms"),
        ({"latency_ms": 1, "success": True, "ttft_ms": -1}, mr.InvalidRequest, "ttft_ms"),
    ],
)
def test_wrong_report_arguments_keep_the_slot(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    r = mr.Router(fleet(1))
    d = r.route()
    with pytest.raises(exc, match=match) as e:
        r.report(d, **kwargs)
    if isinstance(e.value, mr.InvalidRequest):
        assert e.value.field == match
    s = r.endpoint_status("e0")
    assert (s["in_flight"], s["requests"]) == (1, 0) and not d.released
    r.report(d, success=True, latency_ms=1)


def test_non_decisions_and_non_callables_are_type_errors() -> None:
    r = mr.Router(fleet(1))
    with pytest.raises(TypeError, match="decision"):
        r.report("d-1", success=True, latency_ms=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        r.subscribe(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        r.deregister_endpoint(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mr.Router(clock=5)  # type: ignore[arg-type]
    with pytest.raises(mr.ParseError):
        mr.Router(5)  # type: ignore[arg-type]


def test_rejected_updates_leave_state_unchanged(clock: mr.ManualClock) -> None:
    # The manual clock: on the system clock the peak-EWMA latency decays between the two
    # status reads when the machine is slow (40.0 against 39.98 ms), which is no change of state.
    r = mr.Router(fleet(3), clock=clock)
    d = r.route(strategy="round_robin")
    r.report(d, success=True, latency_ms=40)
    before_policy, before_status, g = r.policy(), r.endpoint_statuses(), r.generation
    endpoint = r.endpoint("e1")
    for bad in (
        lambda: r.update_endpoint(dict(endpoint, weight=-1)),
        lambda: r.update_endpoint(dict(endpoint, model_id="ghost")),
        lambda: r.update_endpoint(dict(endpoint, weight="x")),
        lambda: r.update_model({"id": "m", "pricing": {"output_per_1k": math.nan}}),
        lambda: r.update_model({"id": "ghost"}),
        lambda: r.register_endpoints([{"id": "n1", "model_id": "m", "url": "u"}, {"id": "n1", "model_id": "m", "url": "u"}]),
        lambda: r.set_config({"consistent_hash_vnodes": 0}),
        lambda: r.load_policy({"models": [{"id": ""}]}),
        lambda: r.deregister_endpoint("ghost"),
    ):
        with pytest.raises((mr.ModelRouterError, TypeError)):
            bad()
        assert r.policy() == before_policy and r.generation == g
    now = r.endpoint_statuses()
    for a, b in zip(before_status, now):
        assert {k: v for k, v in a.items() if k != "last_seen_ms"} == {k: v for k, v in b.items() if k != "last_seen_ms"}
    assert r.route(strategy="round_robin").model_id == "m"


def test_a_policy_with_several_problems_lists_them_all(clock: mr.ManualClock) -> None:
    r = mr.Router(fleet(2), clock=clock)
    before = r.policy()
    bad = {
        "models": [{"id": "m", "provider": "p"}],
        "endpoints": [
            {"id": "a", "model_id": "m", "url": "http://a", "weight": -1},
            {"id": "b", "model_id": "ghost", "url": "http://b"},
        ],
    }
    with pytest.raises(mr.InvalidPolicy) as e:
        r.load_policy(bad)
    assert e.value.field == "endpoints[0].weight"
    assert [p["path"] for p in e.value.problems] == ["endpoints[0].weight", "endpoints[1].model_id"]
    assert r.policy() == before


def test_policy_versions_and_rollback(clock: mr.ManualClock) -> None:
    r = mr.Router(fleet(2), clock=clock)
    assert r.policy_version == 1
    first = r.policy()
    r.register_endpoint({"id": "extra", "model_id": "m", "url": "http://x"})
    p = r.policy()
    p["default_strategy"] = "least_loaded"
    assert r.load_policy(p, comment="least loaded") == 3
    assert [v["comment"] for v in r.policy_versions()] == ["initial policy", "endpoint extra set", "least loaded"]
    assert r.policy_at(1) == first
    assert r.rollback(1) == 4 and r.policy() == first
    with pytest.raises(mr.NotFound):
        r.policy_at(99)
