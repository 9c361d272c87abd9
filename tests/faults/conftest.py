"""Fixtures of the fault tests: the fake upstream (one per module), at rest before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faults.upstream import FakeUpstream, fake_upstream

from support import SIM_KEY


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with fake_upstream(SIM_KEY) as up:
        yield up


@pytest.fixture(autouse=True)
def _upstream_at_rest(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()
