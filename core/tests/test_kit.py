"""The conformance kit fails plugins that break its rules (it is not a test that cannot fail)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from apimodels.hookspecs import hookimpl
from apimodels.providers.types import Usage
from apimodels.testing.kit import Kit, ProviderConformance, open_kit

REGISTRY = Path(__file__).parents[2] / "registry.toml"


class Broken:
    """Registered first in the OpenAI provider's own hooks: each method breaks one rule."""

    def __init__(self, **rules: Any) -> None:
        self.rules = rules

    @hookimpl(tryfirst=True)
    def estimate_usage(self, model: Any, request: Any) -> Usage | None:
        return Usage() if "tiny_hold" in self.rules else None

    @hookimpl(tryfirst=True)
    def price_usage(self, model: Any, pricing: Any, usage: Usage) -> Decimal | None:
        if "negative" in self.rules and usage.output_tokens:
            return Decimal("-1")
        return None

    @hookimpl(tryfirst=True)
    def parse_error(self, model: Any, response: Any) -> Any:
        from apimodels.errors import InvalidRequest

        return InvalidRequest("keys leak") if "client_401" in self.rules else None


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    with open_kit("openai", REGISTRY, tmp_path_factory.mktemp("kit")) as kit:
        yield kit


@contextmanager
def broken(kit: Kit, **rules: Any) -> Iterator[None]:
    hooks = kit.server.gateway.routes["openai/gpt-4o-mini"].provider.hooks
    plugin = Broken(**rules)
    hooks.register(plugin, name="undo-broken")
    try:
        yield
    finally:
        hooks.unregister(plugin)


@pytest.mark.parametrize(
    ("rule", "check", "message"),
    [
        ("tiny_hold", "test_the_hold_covers_the_actual_cost", "estimate_usage"),
        ("negative", "test_prices_are_non_negative_and_grow_with_quantity", "negative price"),
        ("client_401", "test_upstream_errors_map_to_documented_statuses", "upstream 401"),
    ],
)
def test_the_kit_catches_a_broken_plugin(kit: Kit, rule: str, check: str, message: str) -> None:
    suite = ProviderConformance()
    getattr(suite, check)(kit)  # the real plugin passes
    with broken(kit, **{rule: True}), pytest.raises(AssertionError, match=message):
        getattr(suite, check)(kit)
