"""repr, pickling and the module's surface."""

from __future__ import annotations

import pickle
import re

import model_router as mr
from model_router import _native


def test_reprs(router: mr.Router, clock: mr.ManualClock) -> None:
    assert repr(router) == "Router(generation=1, models=2, endpoints=3, rules=0, default_strategy='power_of_two')"
    d = router.route(model="gpt-4", strategy="round_robin")
    assert re.fullmatch(
        r"Decision\(decision_id='[0-9a-f]{16}', model_id='gpt-4', endpoint_id='gpt4-(east|west)', "
        r"url='http://10\.0\.0\.[12]/v1', strategy='round_robin', degraded=False, attempt=1\)",
        repr(d),
    ), repr(d)
    assert repr(clock) == f"ManualClock(now_ms={clock.now_ms()})"
    cm = router.routed(model="gpt-4")
    assert repr(cm) == "Routed(stage='ready')"
    with cm:
        assert repr(cm) == "Routed(stage='entered')"
    assert repr(cm) == "Routed(stage='done')"
    s = router.events(8, decisions=True, timeout=0.5)
    assert repr(s) == "EventStream(capacity=8, decisions=True, timeout=0.5, closed=False, dropped=0)"
    e = mr.NotFound("model `x` not found")
    assert repr(e) == "NotFound('model `x` not found')"


def test_exceptions_pickle_with_their_fields(router: mr.Router) -> None:
    try:
        router.register_endpoint({"id": "x", "model_id": "gpt-4", "url": "u", "weight": -2})
    except mr.InvalidConfig as e:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is mr.InvalidConfig
        assert (back.field, back.reason, back.kind, str(back)) == (e.field, e.reason, "invalid_config", str(e))


def test_module_surface() -> None:
    assert set(mr.__all__) == set(_native.__all__)
    assert mr.__version__ == _native.__version__ and re.fullmatch(r"\d+\.\d+\.\d+.*", mr.__version__)
    assert mr.ERROR_CLASSES == ("timeout", "connection", "rate_limited", "server", "client")
    for name in mr.__all__:
        obj = getattr(mr, name)
        if callable(obj):
            assert obj.__doc__, name
    for cls in (mr.Router, mr.Decision, mr.Routed, mr.EventStream, mr.ManualClock):
        assert cls.__module__ == "model_router"
        for attr, value in vars(cls).items():
            if not attr.startswith("_"):
                assert getattr(value, "__doc__", None), f"{cls.__name__}.{attr}"
