"""Two OpenAI-compatible servers configured at once, end to end: the official OpenAI SDK ->
apimodels (uvicorn, 127.0.0.1) -> two simulators of apimodels-openai-compatible, each at its
own base URL with its own key, headers and quirks, plus a third instance without a key.

- ``alpha``: as close to OpenAI as vLLM or Ollama (usage asked for in streams, base64
  embeddings passed through);
- ``beta``: Mistral's and Groq's quirks (no ``stream_options``, ``logit_bias`` and
  ``encoding_format`` refused), a static body field, served under ``/openai/v1``;
- ``gamma``: its key is not set, so its models answer 503 and nothing else does.

Prices are whole micro-USD per token, so every cost is checked to the micro-dollar."""

from __future__ import annotations

import base64
import json
import struct
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

import apimodels_openai_compatible as plugin
from apimodels import ChatRequest
from apimodels.server import assemble
from apimodels.store.accounts import create_account, create_key
from apimodels.testing import serve
from apimodels_openai_compatible import Settings
from apimodels_openai_compatible.simulator import create_app
from support import Gateway, Simulator, registry_for

KEY_A = "sk-alpha-" + "a" * 24
KEY_B = "gsk_beta_" + "b" * 24  # not key-shaped for the redactor: only the scrubbing hides it
CREDITS = 10_000_000
#: micro-USD per token (prices per 1M tokens in USD, the same numbers).
ALPHA_IN, ALPHA_OUT, BETA_IN, BETA_OUT, EMBED_IN = 2, 3, 3, 5, 1

INSTANCES = """
[providers.alpha]
package = "apimodels-openai-compatible"
kind = "openai-compatible"
base_url = "{alpha}/v1"
api_key_env = "ALPHA_API_KEY"
headers = {{ "x-tenant" = "alpha", "x-alpha-only" = "1" }}

[providers.beta]
package = "apimodels-openai-compatible"
kind = "openai-compatible"
base_url = "{beta}/openai/v1"
api_key_env = "BETA_API_KEY"
headers = {{ "x-tenant" = "beta" }}

[providers.beta.settings]
stream_usage = false
drop_params = ["logit_bias", "encoding_format"]
extra_body = {{ "safe_prompt" = false }}

[providers.gamma]
package = "apimodels-openai-compatible"
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "GAMMA_API_KEY"

[models."alpha/llama"]
provider = "alpha"
upstream = "meta-llama/Llama-3.3-70B-Instruct"
modality = "chat"
max_output_tokens = 1024
pricing = {{ input_per_1m = "{alpha_in}", output_per_1m = "{alpha_out}" }}

[models."alpha/embed"]
provider = "alpha"
upstream = "BAAI/bge-m3"
modality = "embedding"
pricing = {{ input_per_1m = "{embed_in}" }}

[models."beta/small"]
provider = "beta"
upstream = "small-latest"
modality = "chat"
max_output_tokens = 1024
pricing = {{ input_per_1m = "{beta_in}", output_per_1m = "{beta_out}" }}

[models."beta/embed"]
provider = "beta"
upstream = "embed"
modality = "embedding"
pricing = {{ input_per_1m = "{embed_in}" }}

[models."gamma/chat"]
provider = "gamma"
upstream = "anything"
modality = "chat"
pricing = {{ input_per_1m = "1", output_per_1m = "1" }}
"""


@dataclass
class Setup:
    gateway: Gateway
    alpha: Simulator
    beta: Simulator


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("compat")
    # The beta simulator acts out the quirks the gateway reads from the same table.
    with (
        serve(create_app(api_key=KEY_A)) as alpha_url,
        serve(create_app(api_key=KEY_B, settings=_beta_settings())) as beta_url,
    ):
        extra = INSTANCES.format(
            alpha=alpha_url,
            beta=beta_url,
            alpha_in=ALPHA_IN,
            alpha_out=ALPHA_OUT,
            beta_in=BETA_IN,
            beta_out=BETA_OUT,
            embed_in=EMBED_IN,
        )
        registry = registry_for("http://127.0.0.1:9", tmp, extra)
        environ = {"ALPHA_API_KEY": KEY_A, "BETA_API_KEY": KEY_B}
        server = assemble(registry, tmp / "gateway.db", environ=environ)
        account = create_account(server.db, "compat@example.com")
        _, key = create_key(server.db, account["id"])
        server.ledger.post(account["id"], CREDITS, kind="grant", reason="t", actor="tests")
        with serve(server.app) as url:
            gateway = Gateway(url, server, key, account["id"])
            yield Setup(gateway, Simulator(alpha_url), Simulator(beta_url))


def _beta_settings() -> Settings:
    table = tomllib.loads(INSTANCES.replace("{{", "{").replace("}}", "}"))
    return Settings.model_validate(table["providers"]["beta"]["settings"])


@pytest.fixture
def sims(setup: Setup) -> Iterator[Setup]:
    for sim in (setup.alpha, setup.beta):
        sim.reset()
        httpx.delete(f"{sim.url}/_sim/requests")
    yield setup


@pytest.fixture
def client(sims: Setup) -> Iterator[openai.OpenAI]:
    gateway = sims.gateway
    with openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=20
    ) as c:
        yield c


def generation(setup: Setup, request_id: str) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {setup.gateway.key}"}
    return httpx.get(f"{setup.gateway.url}/v1/generation/{request_id}", headers=headers).json()


def usd(micros: int) -> Decimal:
    return Decimal(micros) / 1_000_000


MESSAGES = [{"role": "user", "content": "Tell me about the two lighthouses."}]


def test_each_instance_gets_its_own_key_headers_and_quirks(
    client: openai.OpenAI, sims: Setup
) -> None:
    alpha = client.chat.completions.create(model="alpha/llama", messages=MESSAGES, max_tokens=40)
    beta = client.chat.completions.with_raw_response.create(
        model="beta/small", messages=MESSAGES, max_completion_tokens=40, logit_bias={"42": 1}
    )
    assert alpha.model == "alpha/llama" and alpha.choices[0].message.content
    completion = beta.parse()
    assert completion.model == "beta/small"
    for done, (price_in, price_out) in (
        (alpha, (ALPHA_IN, ALPHA_OUT)),
        (completion, (BETA_IN, BETA_OUT)),
    ):
        usage = done.usage
        assert usage is not None
        cost = usd(usage.prompt_tokens * price_in + usage.completion_tokens * price_out)
        assert Decimal(str(usage.model_extra["cost"])) == cost
    assert Decimal(beta.headers["x-apimodels-cost"]) == Decimal(
        str(completion.usage.model_extra["cost"])
    )

    (seen_a,) = sims.alpha.requests()
    (seen_b,) = sims.beta.requests()
    assert (
        seen_a["path"] == "/v1/chat/completions" and seen_b["path"] == "/openai/v1/chat/completions"
    )
    assert seen_a["headers"]["x-tenant"] == "alpha" and seen_a["headers"]["x-alpha-only"] == "1"
    assert seen_b["headers"]["x-tenant"] == "beta" and "x-alpha-only" not in seen_b["headers"]
    assert seen_a["json"]["model"] == "meta-llama/Llama-3.3-70B-Instruct"
    assert seen_a["json"]["max_tokens"] == 40 and "safe_prompt" not in seen_a["json"]
    assert seen_b["json"]["max_tokens"] == 40 and "max_completion_tokens" not in seen_b["json"]
    assert "logit_bias" not in seen_b["json"] and seen_b["json"]["safe_prompt"] is False
    # Each simulator demands its own key (a wrong one is a 401); neither ever saw the other's.
    assert KEY_B not in json.dumps(sims.alpha.requests())
    assert KEY_A not in json.dumps(sims.beta.requests())


def test_a_stream_asks_for_usage_and_its_cost_is_exact(client: openai.OpenAI, sims: Setup) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="alpha/llama",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    cost = usd(last.usage.prompt_tokens * ALPHA_IN + last.usage.completion_tokens * ALPHA_OUT)
    assert Decimal(str(last.usage.model_extra["cost"])) == cost
    row = generation(sims, raw.headers["x-request-id"])
    assert row["status"] == "succeeded" and Decimal(str(row["cost"])) == cost
    (seen,) = sims.alpha.requests()
    assert seen["json"]["stream_options"] == {"include_usage": True}


def test_a_stream_without_usage_is_charged_what_it_delivered(
    client: openai.OpenAI, sims: Setup
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="beta/small", messages=MESSAGES, stream=True, max_tokens=64
    )
    chunks = list(raw.parse())
    assert chunks and all(c.usage is None for c in chunks)
    (seen,) = sims.beta.requests()
    assert "stream_options" not in seen["json"]  # the server would refuse it (422)
    # The estimated input, and one output token per chunk relayed (docs/api.md, "Streams").
    request = ChatRequest.model_validate({"model": "beta/small", "messages": MESSAGES})
    route = sims.gateway.server.gateway.routes["beta/small"]
    estimated_input = plugin.estimate_usage(route.model, request).input_tokens
    cost = usd(estimated_input * BETA_IN + len(chunks) * BETA_OUT)
    assert Decimal(str(generation(sims, raw.headers["x-request-id"])["cost"])) == cost


def test_the_same_stream_is_priced_exactly_when_the_server_sends_usage_unasked(
    client: openai.OpenAI, sims: Setup
) -> None:
    sims.beta.knobs(usage_unasked=True)  # Mistral's last chunk carries the usage
    raw = client.chat.completions.with_raw_response.create(
        model="beta/small", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    last = list(raw.parse())[-1]
    assert last.usage is not None and last.choices[0].finish_reason == "stop"
    cost = usd(last.usage.prompt_tokens * BETA_IN + last.usage.completion_tokens * BETA_OUT)
    assert Decimal(str(last.usage.model_extra["cost"])) == cost
    assert Decimal(str(generation(sims, raw.headers["x-request-id"])["cost"])) == cost


def floats_of(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@pytest.mark.parametrize(
    ("model", "passed_through"), [("alpha/embed", True), ("beta/embed", False)]
)
def test_embeddings_in_float_and_base64(
    client: openai.OpenAI, sims: Setup, model: str, passed_through: bool
) -> None:
    texts = ["first text", "second text"]
    floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
    encoded = client.embeddings.with_raw_response.create(
        model=model, input=texts, encoding_format="base64"
    )
    parsed = encoded.parse()
    assert floats.model == parsed.model == model
    for plain, packed in zip(floats.data, parsed.data, strict=True):
        assert isinstance(packed.embedding, str)  # the client asked for base64: it gets it
        assert floats_of(packed.embedding) == pytest.approx(plain.embedding, rel=1e-6)
    assert Decimal(encoded.headers["x-apimodels-cost"]) == usd(
        parsed.usage.prompt_tokens * EMBED_IN
    )
    sim = sims.alpha if passed_through else sims.beta
    sent = [r["json"].get("encoding_format") for r in sim.requests()]
    # alpha's server encodes base64 itself; beta's has none: the plugin encoded its floats.
    assert sent == (["float", "base64"] if passed_through else [None, None])


def balance(setup: Setup) -> int:
    return setup.gateway.ledger.balance(setup.gateway.account_id).balance_micros


def test_an_error_in_a_200_body_is_its_status_and_costs_nothing(
    client: openai.OpenAI, sims: Setup
) -> None:
    before = balance(sims)
    sims.alpha.knobs(fail=[{"kind": "error_in_body", "status": 429}])
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="alpha/llama", messages=MESSAGES)
    assert limited.value.status_code == 429
    sims.beta.knobs(fail=[{"kind": "error_in_body", "status": 400}])
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="beta/embed", input="x")
    assert "simulated status 400" in refused.value.message
    sims.beta.knobs(fail=[{"kind": "error_in_stream", "status": 503}])
    stream = client.chat.completions.create(model="beta/small", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="overloaded"):
        for _ in stream:
            pass
    assert balance(sims) == before
    for raised in (limited.value, refused.value):
        assert KEY_A not in str(raised.body) and KEY_B not in str(raised.body)


def test_an_instance_without_a_key_answers_503_for_its_models_only(
    client: openai.OpenAI, sims: Setup
) -> None:
    with pytest.raises(openai.APIStatusError) as unavailable:
        client.chat.completions.create(model="gamma/chat", messages=MESSAGES)
    assert unavailable.value.status_code == 503
    assert "GAMMA_API_KEY" in unavailable.value.message
    assert client.chat.completions.create(model="alpha/llama", messages=MESSAGES).choices
    assert client.chat.completions.create(model="beta/small", messages=MESSAGES).choices
    listed = {m.id for m in client.models.list()}
    assert {"alpha/llama", "beta/small", "gamma/chat"} <= listed
