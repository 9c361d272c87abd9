"""Fixtures: the Anthropic simulator served over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from apimodels.testing import serve
from apimodels_anthropic.simulator import create_app

KEY = "sk-ant-sim-0123456789abcdefghij"
VERSION = "2023-06-01"


@pytest.fixture(scope="session")
def origin() -> Iterator[str]:
    with serve(create_app(api_key=KEY)) as url:
        yield url


@pytest.fixture
def sim(origin: str) -> Iterator[httpx.Client]:
    """A client of the simulator with its key and version (knobs back to their defaults)."""
    httpx.delete(f"{origin}/_sim/knobs").raise_for_status()
    headers = {"x-api-key": KEY, "anthropic-version": VERSION}
    with httpx.Client(base_url=origin, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture
def key() -> str:
    """The key the simulator demands."""
    return KEY
