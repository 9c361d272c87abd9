"""Fixtures: the Replicate simulator and a webhook receiver, each served over real HTTP on
127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from apimodels.testing import serve
from apimodels_replicate.simulator import create_app

TOKEN = "r8_simulator_test_0123456789abcdefABCDEF"


@pytest.fixture(scope="session")
def origin() -> Iterator[str]:
    with serve(create_app(TOKEN)) as url:
        yield url


@pytest.fixture
def sim(origin: str) -> Iterator[httpx.Client]:
    """A client of the simulator (knobs back to their defaults), with the token."""
    httpx.delete(f"{origin}/_sim/knobs").raise_for_status()
    with httpx.Client(
        base_url=origin, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def token() -> str:
    return TOKEN


@pytest.fixture
def set_knobs(sim: httpx.Client) -> Callable[..., None]:
    """Set simulator knobs: ``set_knobs(step_seconds=0.2, ...)``."""

    def set_(**values: Any) -> None:
        sim.post("/_sim/knobs", json=values).raise_for_status()

    return set_


def _wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)
    return result


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(check, timeout=10)``: poll ``check`` until it returns something truthy."""
    return _wait_for


@dataclass
class Receiver:
    """A webhook endpoint: records every delivery, answers with the queued statuses (200
    once the queue is empty)."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        self.received.append(
            {"headers": dict(request.headers), "body": await request.body(), "at": time.time()}
        )
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture(scope="session")
def _receiver() -> Iterator[Receiver]:
    hook = Receiver()
    app = Starlette(routes=[Route("/hook", hook.endpoint, methods=["POST"])])
    with serve(app) as url:
        hook.url = f"{url}/hook"
        yield hook


@pytest.fixture
def receiver(_receiver: Receiver) -> Iterator[Receiver]:
    """A webhook endpoint on 127.0.0.1, emptied for each test."""
    _receiver.received.clear()
    _receiver.statuses.clear()
    yield _receiver
    time.sleep(0.05)  # let a late delivery of this test land before the next clears
    _receiver.received.clear()
