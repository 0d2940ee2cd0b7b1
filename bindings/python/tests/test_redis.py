"""Routers in one Python process sharing state through a real redis-server (router-redis)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Callable

import pytest

import model_router as mr
from conftest import fleet


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: scripts/test installs it (apt-get install redis-server)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def eventually(check: Callable[[], bool], within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return check()


def test_two_routers_act_as_one_through_redis(redis_url: str) -> None:
    a = mr.Router(fleet(2), redis_url=redis_url, redis_prefix="py-a:")
    b = mr.Router(fleet(2), redis_url=redis_url, redis_prefix="py-a:")
    a.register_endpoint({"id": "new", "model_id": "m", "url": "http://new"})
    assert eventually(lambda: b.endpoint("new") is not None)
    b.set_workspace_config("ws", {"budgetLimits": {"daily": 5.0}})
    assert eventually(lambda: a.workspace_config("ws") is not None)
    health = a.store_health()
    assert health is not None and health["connected"] and health["status"]["status"] == "healthy"
    assert mr.Router(fleet(1)).store_health() is None


def test_redis_arguments_are_checked(redis_url: str) -> None:
    with pytest.raises(mr.InvalidRequest) as e:
        mr.Router(fleet(1), redis_prefix="x:")
    assert e.value.field == "redis_url"
    with pytest.raises(mr.ModelRouterError):
        mr.Router(fleet(1), redis_url="not a url")
