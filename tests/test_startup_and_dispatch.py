"""Startup checks of the catalog against installed plugins, and dispatch through hooks."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apimodels import ChatRequest, ModelConfig, Output, ProviderSpec, Upstream, Usage, hookimpl
from apimodels.catalog import parse_catalog
from apimodels.errors import ConfigError
from apimodels.plugins import load_plugins, pm
from apimodels.providers.runtime import build_gateway
from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.testing import serve

ECHO_REGISTRY = """
[providers.echo]
package = "apimodels-echo"

[models."echo/parrot"]
provider = "echo"
upstream = "parrot-v1"
modality = "chat"
pricing = { input_per_1m = "1", output_per_1m = "2" }
"""


def echo_upstream() -> Starlette:
    async def reply(request: Request) -> JSONResponse:
        body = await request.json()
        assert request.headers["x-echo-key"] == "echo-secret"
        return JSONResponse({"said": body["say"], "in": len(body["say"]), "out": 3})

    return Starlette(routes=[Route("/api/echo", reply, methods=["POST"])])


class EchoPlugin:
    """A throwaway provider plugin: nothing installed, registered only for this test."""

    calls: ClassVar[list[str]] = []

    @hookimpl
    def register_providers(self, register: Any) -> None:
        register(
            ProviderSpec(
                "echo",
                "https://echo.invalid/api",
                "ECHO_KEY",
                simulator=lambda **_: echo_upstream(),
            )
        )

    @hookimpl
    def estimate_usage(self, request: ChatRequest) -> Usage:
        self.calls.append("estimate_usage")
        return Usage(input_tokens=100, output_tokens=3)

    @hookimpl
    def build_request(
        self, model: ModelConfig, request: ChatRequest, upstream: Upstream
    ) -> httpx.Request:
        self.calls.append("build_request")
        say = request.messages[-1].content
        return httpx.Request(
            "POST",
            f"{upstream.base_url}/echo",
            json={"say": say, "model": model.upstream},
            headers={"x-echo-key": upstream.api_key or ""},
        )

    @hookimpl
    def parse_response(self, model: ModelConfig, response: httpx.Response) -> Output:
        self.calls.append("parse_response")
        data = response.json()
        body = {
            "id": "echo-1",
            "object": "chat.completion",
            "created": 0,
            "model": model.id,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": data["said"]},
                }
            ],
            "usage": {
                "prompt_tokens": data["in"],
                "completion_tokens": data["out"],
                "total_tokens": data["in"] + data["out"],
            },
        }
        return Output(body, Usage(input_tokens=data["in"], output_tokens=data["out"]))


@pytest.fixture
def echo_plugin() -> Any:
    plugin = EchoPlugin()
    EchoPlugin.calls = []
    pm.register(plugin, name="undo-echo")
    try:
        yield plugin
    finally:
        pm.unregister(name="undo-echo")


def test_dispatch_goes_through_the_registered_plugins_hooks(
    echo_plugin: EchoPlugin, tmp_path: Path
) -> None:
    (tmp_path / "registry.toml").write_text(ECHO_REGISTRY)
    with serve(echo_upstream()) as upstream_url:
        # Point the catalog at the local upstream, as a self-hoster would with base_url.
        (tmp_path / "registry.toml").write_text(
            ECHO_REGISTRY.replace(
                'package = "apimodels-echo"',
                f'package = "apimodels-echo"\nbase_url = "{upstream_url}/api"',
            )
        )
        server = assemble(
            tmp_path / "registry.toml", tmp_path / "db.sqlite", environ={"ECHO_KEY": "echo-secret"}
        )
        acct = create_account(server.db, "echo@example.com")
        _, key = create_key(server.db, acct["id"])
        server.ledger.post(acct["id"], 1_000_000, kind="grant", reason="test", actor="tests")
        with (
            serve(server.app) as url,
            openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client,
        ):
            done = client.chat.completions.create(
                model="echo/parrot", messages=[{"role": "user", "content": "polly"}]
            )
            assert done.choices[0].message.content == "polly"
            assert Decimal(str(done.usage.model_extra["cost"])) == Decimal(
                "0.000011"
            )  # 5 * 1/1M + 3 * 2/1M
            assert [m.id for m in client.models.list()] == ["echo/parrot"]
    assert EchoPlugin.calls == ["estimate_usage", "build_request", "parse_response"]


def test_provider_hooks_only_see_their_own_provider(
    echo_plugin: EchoPlugin, tmp_path: Path
) -> None:
    """The OpenAI plugin's hooks are not asked about echo models, and vice versa."""
    load_plugins()  # the installed ones, as `apimodels serve` does
    catalog = parse_catalog(
        {
            "providers": {
                "echo": {"package": "apimodels-echo"},
                "openai": {"package": "apimodels-openai"},
            },
            "models": {
                "echo/parrot": {
                    "provider": "echo",
                    "upstream": "p",
                    "modality": "chat",
                    "pricing": {"input_per_1m": "1", "output_per_1m": "1"},
                },
            },
        }
    )
    gw = build_gateway(catalog, pm, environ={})
    echo_hooks = gw.providers["echo"].hooks.plugin_manager.hook.build_request.get_hookimpls()
    openai_hooks = gw.providers["openai"].hooks.plugin_manager.hook.build_request.get_hookimpls()
    assert [h.plugin_name for h in echo_hooks] == ["undo-echo"]
    assert [h.plugin_name for h in openai_hooks] == ["openai"]


def test_enabled_provider_without_its_plugin_names_the_package() -> None:
    catalog = parse_catalog({"providers": {"acme": {"package": "apimodels-acme"}}})
    with pytest.raises(ConfigError, match="pip install apimodels-acme"):
        build_gateway(catalog, pm, environ={})


def test_disabled_provider_needs_no_plugin_and_serves_nothing() -> None:
    catalog = parse_catalog(
        {
            "providers": {"acme": {"package": "apimodels-acme", "enabled": False}},
            "models": {
                "acme/m": {
                    "provider": "acme",
                    "upstream": "m",
                    "modality": "embedding",
                    "pricing": {"input_per_1m": "1"},
                }
            },
        }
    )
    gw = build_gateway(catalog, pm, environ={})
    assert gw.routes == {} and gw.providers == {}


def test_provider_without_its_key_answers_503(tmp_path: Path) -> None:
    registry = Path(__file__).parents[1] / "registry.toml"
    server = assemble(registry, tmp_path / "db.sqlite", environ={})
    assert any("OPENAI_API_KEY" in n for n in server.gateway.notices)
    acct = create_account(server.db, "nokey@example.com")
    _, key = create_key(server.db, acct["id"])
    with serve(server.app) as url:
        r = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        )
    assert r.status_code == 503
    assert json.loads(r.text)["error"]["message"] == (
        "provider openai is not configured on this server (its key OPENAI_API_KEY is not set)"
    )


def test_billing_off_serves_free_unrecorded_calls(tmp_path: Path) -> None:
    """``gateway.billing = false``: no credits needed, nothing held or recorded."""
    from apimodels_openai.simulator import create_app
    from support import SIM_KEY, registry_for

    with serve(create_app(api_key=SIM_KEY)) as sim:
        registry = registry_for(sim, tmp_path)
        registry.write_text(
            registry.read_text().replace("[gateway]\n", "[gateway]\nbilling = false\n")
        )
        server = assemble(registry, tmp_path / "free.db", environ={"OPENAI_API_KEY": SIM_KEY})
        acct = create_account(server.db, "free@example.com")
        _, key = create_key(server.db, acct["id"])
        with (
            serve(server.app) as url,
            openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client,
        ):
            done = client.chat.completions.create(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert done.usage.model_extra["cost"] != "0.000000"  # the price is still reported
            streamed = list(
                client.chat.completions.create(
                    model="openai/gpt-4o-mini",
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                )
            )
            assert streamed
        assert list(server.db.query("SELECT * FROM usage")) == []
