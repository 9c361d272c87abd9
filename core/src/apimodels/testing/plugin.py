"""apimodels' pytest plugin (entry point ``pytest11``): fixtures for plugin authors' tests.

- ``serve_asgi``: serve any ASGI app (a simulator, a gateway) on 127.0.0.1 for the test and
  get its origin: ``url = serve_asgi(app)``.
- The conformance kit is a base class, ``apimodels.testing.kit.ProviderConformance``:
  subclass it as ``TestConformance`` in the plugin's tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from . import serve


@pytest.fixture
def serve_asgi() -> Iterator[Callable[[Any], str]]:
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(serve(app))
