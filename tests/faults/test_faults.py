"""Transport faults of the upstream, through the real server: each one gets an honest status
(the upstream's 429 as a 429, a timeout as a 504, anything else it did wrong as a 502, or an
error event once a stream has begun), reaches the upstream exactly once (a POST that may
have arrived is never sent again), costs nothing and leaves nothing held.

The gateway under test waits 0.5 s for upstream bytes (``timeout = 0.5``) and reads at most
1 MiB of an answer (``max_response_bytes``); a second one keeps the default cap (32 MiB)
for a 50 MB answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from faults.harness import CHAT, EMBED, SPEECH, gateway_for, micros, row, settled
from faults.upstream import WAV, FakeUpstream, Fault

from support import Gateway

MIB = 1 << 20
CREDITS = 1_000_000

#: (fault, status, error code) of a call whose answer is read whole.
WHOLE: dict[str, tuple[Fault, int, str]] = {
    "status_500": (Fault(status=500), 502, "upstream_error"),
    "status_429": (Fault(status=429), 429, "rate_limit_exceeded"),
    "reset": (Fault(reset=True), 502, "upstream_connection_error"),
    "hang": (Fault(hang=True), 504, "upstream_timeout"),
    "drip_slower_than_timeout": (Fault(drip=1.0), 504, "upstream_timeout"),
    "malformed": (Fault(malformed=True), 502, "upstream_error"),
    "cut": (Fault(cut=True), 502, "upstream_connection_error"),
    "big": (Fault(big=2 * MIB), 502, "upstream_response_too_large"),
    "big_chunked": (Fault(big=2 * MIB, chunked=True), 502, "upstream_response_too_large"),
}
#: (fault, status, error code) of a streamed chat: before its first byte an ordinary error
#: answer; after it a 200 whose last event is the error.
STREAMED: dict[str, tuple[Fault, int, str]] = {
    "status_500": (Fault(status=500), 502, "upstream_error"),
    "status_429": (Fault(status=429), 429, "rate_limit_exceeded"),
    "reset": (Fault(reset=True), 502, "upstream_connection_error"),
    "hang": (Fault(hang=True), 504, "upstream_timeout"),
    "drip_slower_than_timeout": (Fault(drip=1.0), 200, "upstream_timeout"),
    "malformed": (Fault(malformed=True), 200, "upstream_error"),
    "cut": (Fault(cut=True), 200, "upstream_error"),
    "big_line": (Fault(big=2 * MIB), 200, "upstream_response_too_large"),
}


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("faults")
    with gateway_for(upstream, tmp, openai={"timeout": "0.5", "max_response_bytes": str(MIB)}) as g:
        yield g


@pytest.fixture(scope="module")
def default_gw(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with gateway_for(upstream, tmp_path_factory.mktemp("default-cap")) as g:
        yield g


@pytest.fixture
def account(gw: Gateway, request: pytest.FixtureRequest) -> tuple[str, str]:
    return gw.new_account(f"{request.node.name}@example.com", CREDITS)


def post(gw: Gateway, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gw.url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=60
    )


def assert_free(
    gw: Gateway, upstream: FakeUpstream, account_id: str, request_id: str, code: str
) -> None:
    """Sent upstream once, charged nothing, nothing left held, a failed row saying why."""
    assert upstream.received == 1
    assert settled(gw, account_id) == (CREDITS, 0)
    r = row(gw, request_id)
    assert (r["status"], r["cost_micros"], r["hold_state"], r["error_code"]) == (
        "failed",
        0,
        "released",
        code,
    )
    assert gw.ledger.check() == []


def last_event(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1].removeprefix("data: "))


@pytest.mark.parametrize(
    "case,path,body",
    [(case, "/v1/chat/completions", CHAT) for case in WHOLE]
    + [(case, "/v1/embeddings", EMBED) for case in WHOLE if not WHOLE[case][0].big],
    ids=[f"chat-{case}" for case in WHOLE]
    + [f"embeddings-{c}" for c in WHOLE if not WHOLE[c][0].big],
)
def test_a_fault_in_an_answer_read_whole(
    gw: Gateway,
    upstream: FakeUpstream,
    account: tuple[str, str],
    case: str,
    path: str,
    body: dict[str, Any],
) -> None:
    fault, status, code = WHOLE[case]  # (the fake's big answers are chat answers)
    account_id, key = account
    upstream.queue(fault)
    r = post(gw, key, path, body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    if status == 429:
        assert r.headers["retry-after"] == "1"  # the upstream's, passed on
    assert_free(gw, upstream, account_id, r.headers["x-request-id"], code)


@pytest.mark.parametrize("case", STREAMED)
def test_a_fault_in_a_stream(
    gw: Gateway, upstream: FakeUpstream, account: tuple[str, str], case: str
) -> None:
    fault, status, code = STREAMED[case]
    account_id, key = account
    upstream.queue(fault)
    r = post(gw, key, "/v1/chat/completions", CHAT | {"stream": True})
    assert r.status_code == status, r.text
    if status == 200:
        events = r.text.strip().split("\n\n")
        assert len(events) >= 2 and "[DONE]" not in r.text  # some chunks, never a clean end
        assert last_event(r.text)["error"]["code"] == code
    else:
        assert r.json()["error"]["code"] == code
    assert_free(gw, upstream, account_id, r.headers["x-request-id"], code)


@pytest.mark.parametrize("case", ["status_500", "status_429", "reset", "hang"])
def test_a_fault_before_any_audio(
    gw: Gateway, upstream: FakeUpstream, account: tuple[str, str], case: str
) -> None:
    fault, status, code = WHOLE[case]
    account_id, key = account
    upstream.queue(fault)
    r = post(gw, key, "/v1/audio/speech", SPEECH)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert_free(gw, upstream, account_id, r.headers["x-request-id"], code)


def test_audio_cut_midway_is_an_incomplete_answer_and_free(
    gw: Gateway, upstream: FakeUpstream, account: tuple[str, str]
) -> None:
    account_id, key = account
    upstream.queue(Fault(cut=True))
    got = b""
    with (
        httpx.stream(
            "POST",
            f"{gw.url}/v1/audio/speech",
            json=SPEECH,
            headers={"authorization": f"Bearer {key}"},
        ) as r,
        pytest.raises(httpx.RemoteProtocolError),  # no client takes the cut for the end
    ):
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            got += chunk
    assert 0 < len(got) < len(WAV) and WAV.startswith(got)
    assert_free(gw, upstream, account_id, r.headers["x-request-id"], "upstream_error")


@pytest.mark.parametrize(
    "path,body,stream",
    [
        ("/v1/chat/completions", CHAT, False),
        ("/v1/chat/completions", CHAT | {"stream": True}, True),
        ("/v1/embeddings", EMBED, False),
        ("/v1/audio/speech", SPEECH, False),
    ],
    ids=["chat", "stream", "embeddings", "speech"],
)
def test_a_slow_drip_within_the_timeout_completes_and_is_charged(
    gw: Gateway,
    upstream: FakeUpstream,
    account: tuple[str, str],
    path: str,
    body: dict[str, Any],
    stream: bool,
) -> None:
    """Pieces 0.2 s apart: longer in all than the 0.5 s timeout, never silent that long."""
    account_id, key = account
    upstream.queue(Fault(drip=0.2))
    r = post(gw, key, path, body)
    assert r.status_code == 200, r.text
    assert upstream.received == 1
    charged = row(gw, r.headers["x-request-id"])
    assert charged["status"] == "succeeded" and charged["cost_micros"] > 0
    if stream:
        assert r.text.endswith("data: [DONE]\n\n")
        assert (charged["input_tokens"], charged["output_tokens"]) == (12, 5)  # the upstream's
    elif path == "/v1/audio/speech":
        assert r.content == WAV and micros(r.headers["x-apimodels-cost"]) == charged["cost_micros"]
    else:
        assert micros(r.headers["x-apimodels-cost"]) == charged["cost_micros"]
        assert r.json()["usage"]["prompt_tokens"] == charged["input_tokens"]
        assert charged["input_tokens"] == (12 if path == "/v1/chat/completions" else 128)
    assert settled(gw, account_id) == (CREDITS - charged["cost_micros"], 0)
    assert gw.ledger.check() == []


@pytest.mark.parametrize(
    "fault,stream",
    [
        (Fault(big=50_000_000), False),
        (Fault(big=50_000_000, chunked=True), False),
        (Fault(big=50_000_000), True),
    ],
    ids=["content_length", "chunked", "stream_line"],
)
def test_a_50_mb_answer_stops_at_the_default_cap(
    default_gw: Gateway, upstream: FakeUpstream, fault: Fault, stream: bool
) -> None:
    gw = default_gw
    account_id, key = gw.new_account(f"big-{fault.chunked}-{stream}@example.com", CREDITS)
    upstream.queue(fault)
    r = post(gw, key, "/v1/chat/completions", CHAT | {"stream": stream})
    if stream:
        assert r.status_code == 200 and "[DONE]" not in r.text
        error = last_event(r.text)["error"]
    else:
        assert r.status_code == 502
        error = r.json()["error"]
    assert error["code"] == "upstream_response_too_large"
    assert "33554432" in error["message"]
    assert_free(gw, upstream, account_id, r.headers["x-request-id"], "upstream_response_too_large")
