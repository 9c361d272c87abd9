"""Issue 14, item 2: the usage an upstream reports is checked before it is priced.

Through the real server, with a fake upstream reporting impossible usages: a negative
``prompt_tokens`` once gave a negative cost (the balance rose). Every impossible usage
(negative, ``cached_tokens > prompt_tokens``, more than the request can use) is now a 502
``upstream_usage_invalid`` and free, streamed or not, direct or through ``/v1/tasks``; an
answer without usage is charged its estimate (the hold); a stream without usage what it
delivered. No charge is ever above the price of ``pricing.usage_ceiling``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from faults.harness import CHAT, EMBED, estimate, gateway_for, micros, row, settled
from faults.upstream import FakeUpstream, Fault

from apimodels.providers import dispatch
from apimodels.providers.types import Usage
from support import Gateway

#: Impossible usages for CHAT (max_tokens 10, gpt-4o-mini: 128,000 tokens of context), and
#: the error code each is refused with.
IMPOSSIBLE: dict[str, tuple[dict[str, Any], str]] = {
    "negative_prompt": (
        {"prompt_tokens": -1_000_000_000, "completion_tokens": 5},
        "upstream_usage_invalid",
    ),
    "negative_completion": (
        {"prompt_tokens": 12, "completion_tokens": -5},
        "upstream_usage_invalid",
    ),
    "cached_above_prompt": (
        {
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 50},
        },
        "upstream_usage_invalid",
    ),
    "negative_cached": (
        {
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": -1},
        },
        "upstream_usage_invalid",
    ),
    "huge_completion": (
        {"prompt_tokens": 10, "completion_tokens": 10**15},
        "upstream_usage_invalid",
    ),
    "completion_over_max_tokens": (
        {"prompt_tokens": 10, "completion_tokens": 11},
        "upstream_usage_invalid",
    ),
    "prompt_over_context": (
        {"prompt_tokens": 128_001, "completion_tokens": 1},
        "upstream_usage_invalid",
    ),
    "huge_float": ({"prompt_tokens": 1e300, "completion_tokens": 1}, "upstream_usage_invalid"),
    "not_a_number": ({"prompt_tokens": "lots", "completion_tokens": 1}, "upstream_usage_invalid"),
    "fraction": ({"prompt_tokens": 10.5, "completion_tokens": 1}, "upstream_usage_invalid"),
    "nan": ({"prompt_tokens": float("nan"), "completion_tokens": 1}, "upstream_usage_invalid"),
    "infinity": (
        {"prompt_tokens": 12, "completion_tokens": float("inf")},
        "upstream_usage_invalid",
    ),
    "completion_only": ({"completion_tokens": 10**15}, "upstream_usage_invalid"),
}
#: The most CHAT can be charged: 128,000 input tokens at $0.15/1M and 10 output at $0.60/1M.
CEILING = {"prompt_tokens": 128_000, "completion_tokens": 10}
CEILING_MICROS = 19_206


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with gateway_for(upstream, tmp_path_factory.mktemp("usage")) as gateway:
        yield gateway


@pytest.fixture
def account(gw: Gateway, request: pytest.FixtureRequest) -> tuple[str, str]:
    """A fresh account with $1 (its id and key)."""
    return gw.new_account(f"{request.node.name}@example.com", 1_000_000)


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)


def free(gw: Gateway, account_id: str, request_id: str, code: str) -> None:
    """The call cost nothing, held nothing, and its usage row says why."""
    assert settled(gw, account_id) == (1_000_000, 0)
    r = row(gw, request_id)
    assert (r["status"], r["cost_micros"], r["hold_state"]) == ("failed", 0, "released")
    assert r["error_code"] == code
    assert gw.ledger.check() == []


def wait_task(http: httpx.Client, task_id: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (task := http.get(f"/v1/tasks/{task_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, task
        time.sleep(0.02)
    return task


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_an_impossible_usage_is_refused_and_free(
    gw: Gateway, upstream: FakeUpstream, account: tuple[str, str], case: str
) -> None:
    usage, code = IMPOSSIBLE[case]
    account_id, key = account
    upstream.queue(Fault(usage=usage))
    with sdk(gw, key) as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**CHAT)
    assert info.value.status_code == 502 and info.value.code == code
    free(gw, account_id, info.value.response.headers["x-request-id"], code)


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_a_stream_with_an_impossible_usage_ends_in_error_and_is_free(
    gw: Gateway, upstream: FakeUpstream, account: tuple[str, str], case: str
) -> None:
    usage, code = IMPOSSIBLE[case]
    account_id, key = account
    upstream.queue(Fault(usage=usage))
    received = []
    with sdk(gw, key) as client:
        raw = client.chat.completions.with_raw_response.create(**CHAT, stream=True)
        with pytest.raises(openai.APIError) as info:
            received.extend(raw.parse())
    assert raw.http_response.status_code == 200
    assert info.value.code == code and len(received) == 7  # every chunk came before the usage
    assert (
        "".join(c.choices[0].delta.content or "" for c in received)
        == "Hello from the fake upstream"
    )
    assert upstream.log[-1].body["stream_options"] == {"include_usage": True}  # asked, always
    free(gw, account_id, raw.headers["x-request-id"], code)


@pytest.mark.parametrize("case", ["negative_prompt", "cached_above_prompt", "huge_completion"])
def test_a_task_with_an_impossible_usage_fails_and_is_free(
    gw: Gateway, upstream: FakeUpstream, account: tuple[str, str], case: str
) -> None:
    usage, code = IMPOSSIBLE[case]
    account_id, key = account
    upstream.queue(Fault(usage=usage))
    body = {"model": CHAT["model"], "input": {"messages": CHAT["messages"], "max_tokens": 10}}
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {key}"}) as http:
        r = http.post("/v1/tasks", json=body)
        assert r.status_code == 202, r.text
        task = wait_task(http, r.json()["id"])
    assert task["status"] == "failed" and task["error"]["code"] == code
    assert task["cost"] == 0
    free(gw, account_id, task["id"], code)


def test_a_usage_at_the_ceiling_is_charged_and_no_more(
    gw: Gateway, upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    """The most a request can use is priced (an overrun of its hold, which the ledger's
    floor allows); one token more is refused."""
    account_id, key = account
    _, hold = estimate(gw, "/v1/chat/completions", CHAT)
    upstream.queue(Fault(usage=CEILING), Fault(usage=CEILING))
    with sdk(gw, key) as client:
        raw = client.chat.completions.with_raw_response.create(**CHAT)
        chunks = list(
            client.chat.completions.create(
                **CHAT, stream=True, stream_options={"include_usage": True}
            )
        )
    assert micros(raw.headers["x-apimodels-cost"]) == CEILING_MICROS > hold
    assert micros(raw.parse().usage.model_extra["cost"]) == CEILING_MICROS
    assert micros(chunks[-1].usage.model_extra["cost"]) == CEILING_MICROS
    assert row(gw, raw.headers["x-request-id"])["cost_micros"] == CEILING_MICROS
    assert settled(gw, account_id) == (1_000_000 - 2 * CEILING_MICROS, 0)
    assert gw.ledger.check() == []


@pytest.mark.parametrize(
    "fault",
    [Fault(no_usage=True), Fault(usage={}), Fault(usage={"total_tokens": 10**15})],
    ids=["no_usage", "empty_usage", "no_token_counts"],
)
@pytest.mark.parametrize("path,body", [("/v1/chat/completions", CHAT), ("/v1/embeddings", EMBED)])
def test_an_answer_without_usage_is_charged_its_estimate(
    gw: Gateway,
    upstream: FakeUpstream,
    account: tuple[str, str],
    fault: Fault,
    path: str,
    body: dict[str, Any],
) -> None:
    account_id, key = account
    guess, hold = estimate(gw, path, body)
    upstream.queue(fault)
    r = httpx.post(f"{gw.url}{path}", json=body, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert micros(r.headers["x-apimodels-cost"]) == hold > 0
    charged = row(gw, r.headers["x-request-id"])
    assert (charged["status"], charged["cost_micros"]) == ("succeeded", hold)
    assert (charged["input_tokens"], charged["output_tokens"]) == (
        guess.input_tokens,
        guess.output_tokens,
    )
    assert settled(gw, account_id) == (1_000_000 - hold, 0)
    assert gw.ledger.check() == []


def test_a_stream_without_usage_is_charged_its_input_estimate_and_one_token_per_chunk(
    gw: Gateway, upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    account_id, key = account
    body = CHAT | {"model": "openai/gpt-4o", "max_tokens": 1000}  # prices that round visibly
    guess, hold = estimate(gw, "/v1/chat/completions", body)
    upstream.queue(Fault(no_usage=True))
    with sdk(gw, key) as client:
        raw = client.chat.completions.with_raw_response.create(**body, stream=True)
        chunks = list(raw.parse())
    assert len(chunks) == 7 and all(c.usage is None for c in chunks)
    delivered = Usage(input_tokens=guess.input_tokens, output_tokens=7)
    cost = dispatch.price(gw.server.gateway.routes[body["model"]], delivered)
    # 13 input tokens at $2.50/1M and 7 output at $10/1M: $0.0001025, rounded half up
    assert cost == 103 < hold
    headers = {"authorization": f"Bearer {key}"}
    generation = httpx.get(f"{gw.url}/v1/generation/{raw.headers['x-request-id']}", headers=headers)
    assert Decimal(str(generation.json()["cost"])) == Decimal("0.000103")
    assert generation.json()["usage"]["output_tokens"] == 7
    assert settled(gw, account_id) == (1_000_000 - cost, 0)
    assert gw.ledger.check() == []


def test_a_client_that_left_before_an_impossible_usage_pays_what_was_delivered(
    gw: Gateway, upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    account_id, key = account
    _, hold = estimate(gw, "/v1/chat/completions", CHAT)
    upstream.queue(Fault(usage=IMPOSSIBLE["negative_prompt"][0], drip=0.1))
    with httpx.stream(
        "POST",
        f"{gw.url}/v1/chat/completions",
        json=CHAT | {"stream": True},
        headers={"authorization": f"Bearer {key}"},
    ) as r:
        request_id = r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk, then hang up
    deadline = time.monotonic() + 5
    while not (
        found := list(gw.db.query("SELECT * FROM usage WHERE request_id = ?", [request_id]))
    ):
        assert time.monotonic() < deadline, "the stream was never settled"
        time.sleep(0.02)
    [found] = found
    assert found["status"] == "succeeded"
    assert 1 <= found["output_tokens"] < 7  # the chunks relayed before the client left
    delivered = Usage(input_tokens=found["input_tokens"], output_tokens=found["output_tokens"])
    assert found["cost_micros"] == min(
        dispatch.price(gw.server.gateway.routes[CHAT["model"]], delivered), hold
    )
    assert 0 < found["cost_micros"] <= hold
    assert settled(gw, account_id) == (1_000_000 - found["cost_micros"], 0)
    assert gw.ledger.check() == []
