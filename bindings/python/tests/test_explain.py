"""explain: the dry run of route (router-core/src/router.rs, `explain`)."""

from __future__ import annotations

import json

import model_router as mr
from conftest import fleet


def test_explain_lists_every_candidate_and_the_would_be_decision(router: mr.Router) -> None:
    router.update_head_status(head_id="gpt4-east", status="draining")
    e = router.explain(model_type="chat", workspace_id="ws-1")
    assert e["strategy"] == "power_of_two" and e["strategy_source"] == "default" and e["model_choice"] == "by_type"
    assert [(m["model_id"], m["verdict"]) for m in e["models"]] == [("gpt-4", "kept"), ("claude-3-sonnet", "kept")]
    verdicts = {x["endpoint_id"]: (x["kept"], x["verdict"], x["reason"]) for x in e["endpoints"]}
    assert verdicts["gpt4-east"] == (False, {"not_serving": "draining"}, "status draining")
    assert verdicts["gpt4-west"][0] is True and verdicts["claude-east"][0] is True
    assert e["decision"]["endpoint_id"] in ("gpt4-west", "claude-east") and e["error"] is None
    assert e["endpoints"][0]["status"]["status"] == "draining"
    json.dumps(e)  # plain data all the way down


def test_explain_changes_nothing(router: mr.Router) -> None:
    before = router.endpoint_statuses()
    for _ in range(10):
        router.explain(model="gpt-4", strategy="round_robin")
    assert router.endpoint_statuses() == before
    # Round robin's cursor did not move either: route still alternates from where it was.
    ids = [router.route(model="gpt-4", strategy="round_robin").endpoint_id for _ in range(4)]
    assert ids[0] != ids[1] and ids[0] == ids[2]


def test_explain_reports_the_error_route_would_raise(router: mr.Router) -> None:
    e = router.explain(model_type="embedding")
    assert e["decision"] is None and e["error"]["kind"] == "no_candidate_model"
    assert all(m["verdict"] == "wrong_type" for m in e["models"])
    e = router.explain({"model": "gpt-4", "required_capabilities": ["vision"]})
    assert e["error"]["kind"] == "no_candidate_model"
    assert e["models"][0]["verdict"] == "missing_capability" and e["models"][1]["verdict"] == "not_requested"
    e = router.explain(request_id="x" * 5000)
    assert e["error"]["kind"] == "invalid_request"


def test_explain_shows_why_endpoints_were_dropped() -> None:
    p = fleet(4, weights=[0.0, 1.0, 1.0, 1.0], heartbeat_ttl_ms=0)
    p["endpoints"][3]["capacity"] = 1
    r = mr.Router(p)
    held = r.route(strategy="least_loaded", model="m")
    while held.endpoint_id != "e3":
        held = r.route(strategy="round_robin", model="m")
    for _ in range(5):
        r.report_endpoint("e1", error="timeout", latency_ms=1)
    e = r.explain(model="m")
    assert [x["verdict"] for x in e["endpoints"]] == ["zero_weight", "breaker_open", "eligible", "at_capacity"]
    assert e["decision"]["endpoint_id"] == "e2"
    assert e["model_choice"] == "explicit"
